"""Liveness, broker failures, blocking and shutdown."""
import signal
import socket
import struct
import time

import pika
import pytest

from conftest import connect, wait_until
from rawamqp import FRAME_HEARTBEAT, RawClient, frame, method, shortstr


def test_quiet_consumer_with_short_heartbeat_survives_silence(broker, warren, queue):
    conn = warren.connect(heartbeat=2)
    ch = conn.channel()
    received = []
    ch.basic_consume(queue, lambda c, m, p, b: received.append(b), auto_ack=True)
    conn.sleep(10)  # pika answers heartbeats while it sleeps; nothing else happens
    assert conn.is_open
    with connect(broker.port) as direct:
        direct.channel().basic_publish("", queue, b"after silence")
    for _ in range(100):
        if received:
            break
        conn.process_data_events(time_limit=0.1)
    assert received == [b"after silence"]
    conn.close()


def test_client_that_stops_answering_heartbeats_is_dropped(warren):
    raw = RawClient(warren.port, timeout=15)
    raw.open(heartbeat=1)
    started = time.monotonic()
    heartbeats = 0
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            f = raw.read_frame()
            heartbeats += f.kind == FRAME_HEARTBEAT
    # Heartbeats were sent to it, and it was dropped after about two missed intervals.
    assert heartbeats >= 1
    assert time.monotonic() - started < 6


def test_without_holding_a_broker_restart_closes_clients_with_320_and_new_clients_succeed(
        broker, warren_factory):
    warren = warren_factory("--hold-seconds", "0")
    conn = warren.connect()
    conn.channel()
    broker_restarted = False
    try:
        broker.stop()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(100):
                conn.process_data_events(time_limit=0.1)
        assert closed.value.reply_code == 320
        assert "CONNECTION_FORCED" in closed.value.reply_text
        # While the broker is down, clients get a clear refusal, not a hang.
        with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
            warren.connect()
        assert "cannot reach the broker" in str(refused.value)
        broker.start()
        broker_restarted = True
    finally:
        if not broker_restarted:
            broker.start()
    with warren.connect() as fresh:
        fresh.channel().queue_declare("", exclusive=True)


def test_sigterm_closes_remaining_clients_with_320_and_exits_0(warren_factory):
    w = warren_factory("--term-timeout", "0")
    conn = w.connect()
    conn.channel()
    w.proc.send_signal(signal.SIGTERM)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(100):
            conn.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == 320
    assert w.proc.wait(timeout=10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", w.port), timeout=1)


def test_sigterm_waits_for_clients_within_the_term_timeout(warren_factory):
    w = warren_factory("--term-timeout", "30")
    conn = w.connect()
    ch = conn.channel()
    w.proc.send_signal(signal.SIGTERM)
    # New clients are refused at once, the connected one keeps working.
    wait_until(lambda: not _accepts(w.port), 5, "warren to stop accepting")
    ch.queue_declare("", exclusive=True)
    conn.close()
    assert w.proc.wait(timeout=10) == 0


def _accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_idle_upstream_connection_closes_after_the_idle_timeout(broker, warren_factory):
    w = warren_factory("-t", "1")
    with w.connect() as conn:
        conn.channel()
        assert len(broker.warren_connections()) == 1
    wait_until(lambda: not broker.warren_connections(), 15, "the idle upstream to close")
    with w.connect() as conn:
        conn.channel().queue_declare("", exclusive=True)


def test_connection_blocked_reaches_only_clients_that_asked_for_it(broker, warren, queue):
    aware, unaware = RawClient(warren.port), RawClient(warren.port)
    aware.open(capabilities={"connection.blocked": True})
    unaware.open(capabilities={})
    unaware.send(method(1, 20, 10, shortstr("")))
    assert unaware.read_method().method == (20, 11)
    publish = (method(1, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr(queue) + b"\x00")
               + frame(2, 1, struct.pack("!HHQH", 60, 0, 1, 0)) + frame(3, 1, b"x"))
    try:
        broker.ctl("set_vm_memory_high_watermark", "0.000001")
        unaware.send(publish)  # RabbitMQ blocks a connection when it publishes
        blocked = aware.read_method()
        assert blocked.method == (10, 60), blocked
    finally:
        broker.ctl("set_vm_memory_high_watermark", "0.4")
    assert aware.read_method().method == (10, 61)
    # The unaware client saw neither; its next reply is the channel close-ok.
    unaware.send(method(1, 20, 40, struct.pack("!H", 200) + shortstr("bye") + struct.pack("!HH", 0, 0)))
    assert unaware.read_method().method == (20, 41)


def test_a_client_that_stalls_in_the_handshake_is_dropped(warren_factory):
    """Slowloris: a client that sends the protocol header and then nothing is
    disconnected after the handshake timeout, and counted."""
    warren = warren_factory("--client-handshake-timeout", "2")
    sock = socket.create_connection(("127.0.0.1", warren.port), timeout=20)
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    received = b""
    started = time.monotonic()
    while True:
        chunk = sock.recv(4096)  # Connection.Start, then EOF when warren gives up
        if not chunk:
            break
        received += chunk
    assert received[:1] == b"\x01"  # it was answered, then dropped
    assert 2 <= time.monotonic() - started < 2 + 3
    assert "client handshake timed out" in warren.log_text()
    metrics = warren.http_get("/metrics")
    assert 'warren_client_handshakes_total{outcome="timeout"} 1' in metrics



def _publish_confirmed_until_closed(conn, queue, limit):
    """Publishes persistent, confirmed messages until the connection fails;
    returns (bodies the broker confirmed, the exception, when it came)."""
    ch = conn.channel()
    ch.confirm_delivery()
    confirmed = []
    for i in range(limit):
        body = b"m%d" % i
        try:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        except (pika.exceptions.AMQPError, OSError) as e:  # noqa: PERF203 - the end of the loop
            return confirmed, e, time.monotonic()
        confirmed.append(body)
    raise AssertionError(f"the connection survived {limit} publishes")


def test_without_holding_a_broker_killed_under_confirmed_publishes_loses_nothing_confirmed(
        broker, warren_factory, queue):
    import threading
    warren = warren_factory("--hold-seconds", "0")
    from conftest import drain
    conn = warren.connect()
    killed_at = []

    def kill_when_busy():
        wait_until(lambda: broker.warren_channel_count() >= 1, 10, "the publisher's channel")
        time.sleep(0.3)  # let a few hundred publishes through first; the kill is the event under test
        killed_at.append(time.monotonic())
        broker.stop()  # FAST_STOP: SIGKILL to the broker's VM

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    broker_back = False
    try:
        confirmed, error, failed_at = _publish_confirmed_until_closed(conn, queue, 10**6)
        killer.join()
        assert isinstance(error, pika.exceptions.ConnectionClosedByBroker), repr(error)
        assert error.reply_code == 320
        assert failed_at - killed_at[0] < 1.0, "the client heard of the broker's death late"
        assert len(confirmed) > 10
        broker.start(keep_data=True)
        broker_back = True
        back_at = time.monotonic()
        with warren.connect() as fresh:
            fresh.channel()
        assert time.monotonic() - back_at < 1.0, "a new client waited for the broker's return"
    finally:
        killer.join()
        if not broker_back:
            broker.start(keep_data=True)
    stored = set(drain(broker.port, queue))
    missing = [b for b in confirmed if b.decode() not in stored]
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {missing[:3]}"
