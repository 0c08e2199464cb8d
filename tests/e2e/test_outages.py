"""Broker restarts, crashes and lost connections with publishers running:
they are held and carried to a new upstream connection, with no error and
no lost message (docs/operations.md, "Outages")."""
import struct
import subprocess
import threading
import time
from collections import Counter

import pika
import pytest

from conftest import params, wait_until
from rawamqp import FRAME_BODY, FRAME_HEADER, Channel, RawClient, ack_of, frame, method, shortstr
from test_clients import CLIENT_COMMANDS, run_client
from test_operator import ok
from test_stuck_clients import rss_kib

# How long a publisher waits for its next target, or to reach one.
PATIENCE = 90


def sample(warren, series):
    for line in warren.http_get("/metrics").splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


class Publisher(threading.Thread):
    """A long-lived pika publisher of persistent messages, with or without
    confirms: it publishes until it has sent `target` messages, then waits
    for a higher target (or to be stopped). Remembers what it believes sent
    and any error it got."""

    def __init__(self, port, queue, name, confirm):
        super().__init__(daemon=True)
        self.port, self.queue, self.name, self.confirm = port, queue, name, confirm
        self.sent = []
        self.error = None
        self.target = 0
        self.stop = threading.Event()

    def run(self):
        deadline = time.monotonic() + 4 * PATIENCE
        try:
            with pika.BlockingConnection(params(self.port)) as conn:
                ch = conn.channel()
                if self.confirm:
                    ch.confirm_delivery()
                while not self.stop.is_set() and time.monotonic() < deadline:
                    if len(self.sent) >= self.target:
                        conn.process_data_events(time_limit=0.05)  # heartbeats while it waits
                        continue
                    body = f"{self.name}-{len(self.sent)}"
                    ch.basic_publish("", self.queue, body.encode(), pika.BasicProperties(delivery_mode=2))
                    self.sent.append(body)
        except Exception as e:  # noqa: BLE001 - any error is what the test reports
            self.error = e

    def reach(self, more, what):
        self.target += more
        wait_until(lambda: len(self.sent) >= self.target or self.error or not self.is_alive(), PATIENCE, what)
        assert self.error is None, f"{self.name}: {self.error!r}"
        assert len(self.sent) >= self.target, f"{self.name} stopped at {len(self.sent)}"


class Churn(threading.Thread):
    """One client library's publish-and-disconnect cycles (one message per
    connection, tests/clients/publish_cycles.*), run again and again until
    stopped. Remembers what it believes sent and the runs that failed."""

    CYCLES = 5

    def __init__(self, client, url, queue):
        super().__init__(daemon=True)
        self.client, self.url, self.queue = client, url, queue
        self.sent, self.failures, self.runs = [], [], 0
        self.stop = threading.Event()

    def run(self):
        deadline = time.monotonic() + 4 * PATIENCE
        while not self.stop.is_set() and time.monotonic() < deadline:
            tag = f"{self.client}-{self.runs}"
            cmd = CLIENT_COMMANDS[self.client] + [self.url, str(self.CYCLES), self.queue, tag]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=PATIENCE)
                failure = None if out.returncode == 0 else out.stderr[:300] + " … " + out.stderr[-300:]
            except subprocess.TimeoutExpired:
                failure = f"no result within {PATIENCE}s"
            if failure is None:
                self.sent += [f"{tag}:{i}" for i in range(self.CYCLES)]
            else:
                self.failures.append(failure)
            self.runs += 1

    def another_run(self, what):
        done = self.runs
        wait_until(lambda: self.runs > done + 1 or not self.is_alive(), PATIENCE, what)


def stop_all(threads):
    """Stops publishers or churns and waits for each."""
    for thread in threads:
        thread.stop.set()
    for thread in threads:
        thread.join(PATIENCE)


def assert_no_errors(publishers):
    for p in publishers:
        assert p.error is None, f"{p.name}: {p.error!r}"
        assert not p.is_alive()


def stored(port, queue):
    """Every body in the queue (consumed with acks off, until none comes
    for two seconds)."""
    bodies = []
    with pika.BlockingConnection(params(port)) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)
        for _method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=2):
            if body is None:
                break
            bodies.append(body.decode())
        ch.cancel()
    return bodies


def check_nothing_lost(broker, warren, queue, publishers):
    sent = [body for p in publishers for body in p.sent]
    bodies = stored(broker.port, queue)
    counts = Counter(bodies)
    missing = [b for b in sent if b not in counts]
    assert not missing, f"{len(missing)} of {len(sent)} messages lost, e.g. {missing[:3]}"
    duplicates = len(bodies) - len(counts)
    republished = sample(warren, "warren_republished_messages_total")
    assert duplicates <= republished, (duplicates, republished)
    return republished


def run_through(warren, queue, lose, restore=lambda: None):
    """Publishers with and without confirms are under way when `lose()`
    takes their upstream connection; they publish while held, `restore()`
    brings a broker back, and they go on without an error."""
    publishers = [Publisher(warren.port, queue, "confirmed", True),
                  Publisher(warren.port, queue, "unconfirmed", False)]
    for p in publishers:
        p.start()
    try:
        for p in publishers:
            p.reach(100, f"{p.name} under way")
        lose()
        for p in publishers:
            # Sent while held: a confirmed publish waits for the broker, the others go on.
            p.target += 100
        restore()
        for p in publishers:
            p.reach(100, f"{p.name} to go on after the outage")
    finally:
        stop_all(publishers)
    assert_no_errors(publishers)
    return publishers


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "sigkill"])
def test_publishers_go_on_through_a_broker_restart_and_lose_nothing(broker, warren_factory, queue, graceful):
    """Long-lived publishers and every client library's one-message
    connections, through a broker restart: the long-lived ones are held and
    carried, the short ones connect, publish and leave while the broker is
    away (admitted on the credentials their pool verified), and nothing is
    lost."""
    w = warren_factory()
    churns = [Churn(client, w.url(), queue) for client in sorted(CLIENT_COMMANDS)]
    broker_up = True

    def stop():
        nonlocal broker_up
        broker_up = False
        broker.stop(graceful=graceful)
        wait_until(lambda: sample(w, "warren_holding_clients") >= 2, 20, "the publishers held")
        for churn in churns:
            churn.another_run(f"{churn.client} to connect and publish while the broker is away")

    def start():
        nonlocal broker_up
        broker.start(keep_data=True)
        broker_up = True

    for churn in churns:
        churn.start()
    try:
        for churn in churns:
            churn.another_run(f"{churn.client} under way")
        publishers = run_through(w, queue, stop, start)
        for churn in churns:
            churn.another_run(f"{churn.client} after the restart")
    finally:
        if not broker_up:
            broker.start(keep_data=True)
        stop_all(churns)
    for churn in churns:
        assert not churn.failures, f"{churn.client}: {churn.failures}"
    wait_until(lambda: sample(w, "warren_hold_buffer_bytes") == 0, 60, "the broker to confirm everything")
    check_nothing_lost(broker, w, queue, publishers + churns)
    assert sample(w, "warren_holding_clients") == 0
    assert sample(w, "warren_dropped_held_messages_total") == 0


def test_what_departed_clients_published_is_published_again_after_a_crash(broker, warren_factory, queue):
    """The product's usual client publishes one message and disconnects,
    long before the broker confirms it. Here the broker cannot confirm (its
    VM is frozen) while every client library publishes and leaves, then it
    is killed and restarted: warren publishes their messages again. A
    direct client's messages would be lost in the dead broker's socket."""
    w = warren_factory()
    run_client("pika", w.url(), 1, queue, "warm")  # the pool is known; no login needs the broker
    cycles = 3
    try:
        broker.freeze()
        for client in sorted(CLIENT_COMMANDS):
            run_client(client, w.url(), cycles, queue, client)
        lingering = sample(w, "warren_hold_buffer_bytes")
    finally:
        broker.stop()
        broker.start(keep_data=True)
    assert lingering > 0, "nothing was kept for the departed clients"
    sent = len(CLIENT_COMMANDS) * cycles
    wait_until(lambda: sample(w, "warren_hold_buffer_bytes") == 0, 60, "the broker to confirm the replayed messages")
    bodies = Counter(stored(broker.port, queue))
    missing = [f"{client}:{i}" for client in CLIENT_COMMANDS for i in range(cycles)
               if f"{client}:{i}" not in bodies]
    assert not missing, f"{len(missing)} of {sent} lost: {missing}"
    assert sample(w, "warren_republished_messages_total") >= sent
    assert sample(w, "warren_dropped_held_messages_total") == 0
    # The held clients share their pool's attempts to connect again: a
    # handful of retry rounds, not one attempt per client and round.
    attempts = w.log_text().count("broker node failed")
    assert attempts < 3 * sent, attempts


def test_during_an_outage_only_credentials_a_pool_verified_are_admitted(broker, warren_factory, queue):
    """While no node answers, a client whose user, password and vhost a pool
    verified (and lost within the hold time) is admitted and held; any other
    is refused as before, never let in unverified."""
    w = warren_factory()
    with w.connect() as conn:
        conn.channel()
    with w.connect(user="app", password="secret", vhost="/app") as conn:
        conn.channel()
    refusals = []
    try:
        broker.stop()
        admitted = w.connect()
        admitted.channel().basic_publish("", queue, b"published during the outage")
        admitted.close()
        for who in ({"password": "wrong"}, {"user": "app", "password": "secret", "vhost": "/"},
                    {"user": "nobody", "password": "guest"}):
            with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
                w.connect(**who)
            refusals.append(str(refused.value))
    finally:
        broker.start(keep_data=True)
    assert all("cannot reach the broker" in text for text in refusals), refusals
    wait_until(lambda: sample(w, "warren_hold_buffer_bytes") == 0, 60, "the held publish confirmed")
    assert stored(broker.port, queue) == ["published during the outage"]


def test_drain_node_moves_long_lived_publishers_without_an_error(broker, warren_factory, queue):
    """`warren ctl drain-node` with long-lived publishers running: they move
    to the other node at a message boundary, once the broker confirmed what
    they sent (nothing is sent twice), without an error; a consumer, whose
    deliveries cannot move, stays on the drained node and keeps working."""
    nodes = [f"127.0.0.1:{broker.port}", f"localhost:{broker.port}"]
    w = warren_factory(upstreams=[f"amqp://{node}" for node in nodes])
    consumer = w.connect()
    consumer_channel = consumer.channel()
    idle_queue = consumer_channel.queue_declare("", exclusive=True).method.queue
    consumer_channel.basic_consume(idle_queue, lambda *a: None)
    [consumer_client] = w.get_json("/api/clients")
    publishers = [Publisher(w.port, queue, "confirmed", True), Publisher(w.port, queue, "unconfirmed", False)]
    for p in publishers:
        p.start()

    def node_of_each_client():
        node = {u["id"]: u["node"] for u in w.get_json("/api/upstreams")}
        return {c["id"]: node.get(c["upstream"]) for c in w.get_json("/api/clients")}

    try:
        for p in publishers:
            p.reach(100, f"{p.name} under way")
        drained = node_of_each_client()[consumer_client["id"]]
        other = next(n for n in nodes if n != drained)
        assert set(node_of_each_client().values()) == {drained}
        ok(w, "drain-node", drained)
        wait_until(lambda: list(node_of_each_client().values()).count(other) == 2, 20,
                   "both publishers on the other node")
        for p in publishers:
            p.reach(100, f"{p.name} to go on after the move")
        assert node_of_each_client()[consumer_client["id"]] == drained
        consumer.process_data_events(time_limit=0.2)
        consumer_channel.basic_publish("", idle_queue, b"to the consumer that stayed")
    finally:
        stop_all(publishers)
    assert_no_errors(publishers)
    assert sample(w, "warren_republished_messages_total") == 0
    # No duplicates: at most the republished count, which is 0.
    check_nothing_lost(broker, w, queue, publishers)
    consumer.close()
    assert w.log_text().count("client moved off a drained node") == 2


def test_a_reset_upstream_connection_carries_its_publishers_and_closes_its_consumer(broker, warren, queue):
    """An upstream TCP connection reset under load (ss -K aborts it and sends
    a RST): the consumer on it gets 320 (its deliveries cannot move), the
    publishers go on on a new connection and nothing is lost."""
    consumer = warren.connect()
    consumer_channel = consumer.channel()
    idle_queue = consumer_channel.queue_declare("", exclusive=True).method.queue
    consumer_channel.basic_consume(idle_queue, lambda *a: None)

    def reset():
        wait_until(lambda: broker.warren_channel_count() >= 3, 10, "the clients' channels")
        pid = warren.proc.pid
        lines = subprocess.run(["ss", "-tnpH", "state", "established", "dport", f"= :{broker.port}"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        ports = [line.split()[2].rsplit(":", 1)[1] for line in lines if f"pid={pid}," in line]
        assert len(ports) == 1, lines
        subprocess.run(["ss", "-K", "dport", f"= :{broker.port}", "sport", f"= :{ports[0]}"],
                       capture_output=True, check=True)

    publishers = run_through(warren, queue, reset)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(50):
            consumer.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == 320
    check_nothing_lost(broker, warren, queue, publishers)
    log = warren.log_text()
    assert "client held until a broker node answers" in log
    assert "held client carried to a new upstream connection" in log


def test_when_the_hold_time_runs_out_held_publishes_are_nacked_and_counted(broker, warren_factory, queue):
    w = warren_factory("--hold-seconds", "5")
    confirmed = RawClient(w.port, timeout=30)
    confirmed.open()
    confirmed_channel = Channel(confirmed, 1).open()
    confirmed_channel.confirm_select()
    unconfirmed = w.connect()
    unconfirmed_channel = unconfirmed.channel()
    # The broker's stop script takes a while after the kill: the clients are
    # held from the moment warren sees the connection go.
    stopping = threading.Thread(target=broker.stop)
    try:
        stopping.start()
        wait_until(lambda: sample(w, "warren_holding_clients") == 2, 20, "both clients held")
        held_at = time.monotonic()
        for i in range(3):
            unconfirmed_channel.basic_publish("", queue, b"held %d" % i)
        confirmed_channel.publish(queue, b"never confirmed")
        # The held publish is nacked when the hold time runs out, then the
        # connection is closed, as the broker would close it.
        nack = confirmed.read_method()
        assert nack.method == (60, 120) and ack_of(nack) == (1, False), nack
        assert time.monotonic() - held_at >= 4.0, "nacked before the hold time ran out"
        close = confirmed.read_method()
        assert close.method == (10, 50), close
        code, text = close.close_reply()
        assert code == 320 and "could not connect again within 5s" in text, text
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(100):
                unconfirmed.process_data_events(time_limit=0.1)
        assert closed.value.reply_code == 320
        assert sample(w, "warren_dropped_held_messages_total") == 4
        assert sample(w, "warren_holding_clients") == 0
        assert sample(w, "warren_hold_buffer_bytes") == 0
    finally:
        stopping.join()
        broker.start()


def big_publish(channel, queue, body, frame_max=131072):
    """A publish whose body is split into frames of the negotiated size."""
    step = frame_max - 8
    return (method(channel, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr(queue) + b"\0")
            + frame(FRAME_HEADER, channel, struct.pack("!HHQH", 60, 0, len(body), 0))
            + b"".join(frame(FRAME_BODY, channel, body[i:i + step]) for i in range(0, len(body), step)))


def test_a_held_client_that_fills_its_share_is_blocked_not_read_and_loses_nothing(broker, warren_factory, queue):
    """While held, a publisher of large messages fills its 16 MiB share of
    the hold buffer: it is told Connection.Blocked and not read any more
    (warren's memory stays within the bound), another client of the same
    pool goes on, and once the broker is back everything is delivered."""
    w = warren_factory("--hold-buffer-mib", "64")
    share = 16 << 20
    message = 1 << 20
    count = 48
    filler = RawClient(w.port, timeout=120)
    filler.open(capabilities={"connection.blocked": True})
    Channel(filler, 1).open()
    bystander = w.connect()
    bystander_channel = bystander.channel()
    sent = []

    def fill():
        for i in range(count):
            filler.send(big_publish(1, queue, bytes([i]) * message))
            sent.append(i)

    sender = threading.Thread(target=fill, daemon=True)
    broker_up = True
    try:
        broker.stop()
        broker_up = False
        wait_until(lambda: sample(w, "warren_holding_clients") == 2, 20, "both clients held")
        before = rss_kib(w.proc.pid)
        sender.start()
        blocked = filler.read_method()
        assert blocked.method == (10, 60), blocked
        assert b"fill its share" in blocked.payload
        wait_until(lambda: sample(w, "warren_hold_buffer_bytes") >= share - message, 30, "the share to fill")
        bystander_channel.basic_publish("", queue, b"bystander")
        held = sample(w, "warren_hold_buffer_bytes")
        assert share - message <= held <= share + 2 * message, held
        assert sample(w, "warren_held_messages") >= 15
        outages = w.get_json("/api/overview")["outages"]
        assert outages["holding_clients"] == 2 and outages["held_messages"] >= 15, outages
        assert len(sent) < count, "warren read everything: no backpressure"
        grown_mib = (rss_kib(w.proc.pid) - before) / 1024
        assert grown_mib < 40, f"warren grew {grown_mib:.0f} MiB for a 16 MiB share"
        broker.start(keep_data=True)
        broker_up = True
        unblocked = filler.read_method()
        assert unblocked.method == (10, 61), unblocked
        sender.join(PATIENCE)
        assert len(sent) == count
    finally:
        if not broker_up:
            broker.start(keep_data=True)
    wait_until(lambda: sample(w, "warren_hold_buffer_bytes") == 0, 60, "the broker to confirm everything")
    bystander.close()
    filler.close()
    with pika.BlockingConnection(params(broker.port)) as conn:
        ch = conn.channel()
        bodies = []
        for _method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=2):
            if body is None:
                break
            bodies.append(body[:1] if len(body) == message else body)
        ch.cancel()
    assert sorted(b for b in bodies if b != b"bystander") == [bytes([i]) for i in range(count)]
    assert bodies.count(b"bystander") == 1
    assert sample(w, "warren_dropped_held_messages_total") == 0
    assert sample(w, "warren_held_messages") == 0

