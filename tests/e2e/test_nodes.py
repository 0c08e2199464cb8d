"""Several upstream nodes: new upstream connections spread over the nodes
that answer, a dead or silent node is skipped (with backoff) so clients do
not wait on it, and losing a node leaves the others serving."""
import signal
import socket
import time
import uuid

import pika
import pytest

from conftest import amqp_url, params, wait_until


def sample_value(metrics, series):
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(series + " ")), 0)


def upstream_nodes(warren):
    return sorted(u["node"] for u in warren.get_json("/api/upstreams"))


def hold_channels(warren, clients, channels):
    """Opens `clients` connections with `channels` channels each."""
    held = []
    for _ in range(clients):
        conn = warren.connect()
        for _ in range(channels):
            conn.channel()
        held.append(conn)
    return held


def test_upstream_connections_spread_over_the_nodes(broker, extra_broker, warren_factory):
    # Four channels fill an upstream connection, so each client needs a new one.
    w = warren_factory("--max-upstream-channels", "4", "--channel-max", "4",
                       upstreams=[f"amqp://127.0.0.1:{broker.port}", f"amqp://127.0.0.1:{extra_broker.port}"])
    held = hold_channels(w, 4, 4)
    try:
        nodes = upstream_nodes(w)
        assert nodes.count(f"127.0.0.1:{broker.port}") == 2, nodes
        assert nodes.count(f"127.0.0.1:{extra_broker.port}") == 2, nodes
        assert len(extra_broker.warren_connections(port=w.port)) == 2
    finally:
        for conn in held:
            conn.close()


def test_a_refusing_node_is_skipped(broker, warren_factory):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]  # bound, never listening: connections are refused
        w = warren_factory(upstreams=[f"amqp://127.0.0.1:{dead}", f"amqp://127.0.0.1:{broker.port}"])
        held = [w.connect(), w.connect(user="app", password="secret", vhost="/app")]
        for conn in held:
            conn.channel().queue_declare("", exclusive=True)
        assert upstream_nodes(w) == [f"127.0.0.1:{broker.port}"] * 2
        assert "broker node failed" in w.log_text()
        for conn in held:
            conn.close()


def test_a_silent_node_costs_one_connect_timeout_then_is_skipped(broker, warren_factory):
    # Accepts TCP (the kernel does, into the backlog) but never speaks AMQP.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        port = silent.getsockname()[1]
        w = warren_factory("--upstream-connect-timeout", "1", "--idle-connection-timeout", "0",
                           upstreams=[f"amqp://127.0.0.1:{port}", f"amqp://127.0.0.1:{broker.port}"])
        for _ in range(5):
            # A new login each time (idle upstreams close at once): each one
            # picks a node; the silent one is tried again only after its backoff.
            wait_until(lambda: not broker.warren_connections(), 10, "the idle upstream to close")
            started = time.monotonic()
            with w.connect() as conn:
                conn.channel()
            # At most one connect timeout (1 s) on the silent node, never more.
            assert time.monotonic() - started < 1 + 3
        metrics = w.http_get("/metrics")
        assert 'warren_upstream_logins_total{outcome="ok"} 5' in metrics, metrics
        timeouts = sample_value(metrics, 'warren_upstream_logins_total{outcome="timeout"}')
        assert 1 <= timeouts <= 3, metrics


def test_losing_a_node_carries_its_publishers_to_the_other(broker, extra_broker, warren_factory):
    """Two nodes, the first killed: its publishing clients go on on the
    second with no error, and new clients of every user get in there."""
    w = warren_factory(upstreams=[f"amqp://127.0.0.1:{extra_broker.port}", f"amqp://127.0.0.1:{broker.port}"])
    held = []
    for _ in range(2):  # the first login goes to the first node, the next to the other
        conn = w.connect(user="app", password="secret", vhost="/app") if held else w.connect()
        held.append((conn, conn.channel()))
    nodes = {u["user"]: u["node"] for u in w.get_json("/api/upstreams")}
    on_extra = [user for user, node in nodes.items() if node == f"127.0.0.1:{extra_broker.port}"]
    assert len(on_extra) == 1, nodes
    victim, victim_channel = held[0] if on_extra == ["guest"] else held[1]
    queue = f"carried.{uuid.uuid4().hex[:8]}"
    vhost = "/" if on_extra == ["guest"] else "/app"
    user, password = ("guest", "guest") if on_extra == ["guest"] else ("app", "secret")
    with pika.BlockingConnection(params(broker.port, user=user, password=password, vhost=vhost)) as direct:
        direct.channel().queue_declare(queue)
    extra_broker.stop()
    try:
        wait_until(lambda: set(upstream_nodes(w)) == {f"127.0.0.1:{broker.port}"}, 20,
                   "the victim's upstream connection on the other node")
        victim_channel.confirm_delivery()
        victim_channel.basic_publish("", queue, b"after the node died")
        for user_, password_, vhost_ in (("guest", "guest", "/"), ("app", "secret", "/app")):
            with pika.BlockingConnection(params(w.port, user=user_, password=password_, vhost=vhost_)) as conn:
                conn.channel().queue_declare("", exclusive=True)
        with pika.BlockingConnection(params(broker.port, user=user, password=password, vhost=vhost)) as direct:
            ch = direct.channel()
            method_frame, _, body = ch.basic_get(queue, auto_ack=True)
            assert body == b"after the node died"
            ch.queue_delete(queue)
    finally:
        for conn, _ in held:
            conn.close()
        extra_broker.start()


def test_several_urls_from_the_environment_and_the_file(broker, tmp_path):
    import subprocess
    from conftest import WARREN
    cfg = tmp_path / "warren.ini"
    cfg.write_text("[main]\nupstream = amqp://127.0.0.1:1, amqp://127.0.0.1:2\n")
    out = subprocess.run([str(WARREN), "--check-config", str(cfg)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert 'upstream = ["amqp://127.0.0.1:1", "amqp://127.0.0.1:2"]' in out.stdout, out.stdout
    out = subprocess.run([str(WARREN), "--check-config", str(cfg)], capture_output=True, text=True, timeout=10,
                         env={"AMQP_URL": f"{amqp_url(1)},amqps://b:5"})
    assert out.returncode == 0, out.stderr
    assert 'upstream = ["amqp://guest:redacted@127.0.0.1:1/%2F", "amqps://b:5"]' in out.stdout, out.stdout


def test_sighup_moves_new_logins_to_new_nodes_and_changes_the_log_level(broker, extra_broker, warren_factory,
                                                                        tmp_path):
    cfg = tmp_path / "warren.toml"
    cfg.write_text(f'upstream = ["amqp://127.0.0.1:{broker.port}"]\nlog_level = "info"\n')
    w = warren_factory("-c", str(cfg), upstreams=[], log_level=None)
    held = w.connect()
    held.channel()
    assert upstream_nodes(w) == [f"127.0.0.1:{broker.port}"]
    assert "client connected" in w.log_text()

    cfg.write_text(f'upstream = ["amqp://127.0.0.1:{extra_broker.port}"]\nlog_level = "warn"\n')
    w.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in w.log_text() or None, 10, "the reload")
    logged = w.log_text().count("client connected")
    # A new login (another user) goes to the new node; the open connection stays.
    with w.connect(user="app", password="secret", vhost="/app") as other:
        other.channel().queue_declare("", exclusive=True)
        assert sorted(upstream_nodes(w)) == sorted([f"127.0.0.1:{broker.port}", f"127.0.0.1:{extra_broker.port}"])
    # So does a new client of the open connection's pool: that pool was
    # retired with the old node list.
    with w.connect() as again:
        again.channel()
        newest = max(w.get_json("/api/clients"), key=lambda c: c["id"])
        nodes = {u["id"]: u["node"] for u in w.get_json("/api/upstreams")}
        assert nodes[newest["upstream"]] == f"127.0.0.1:{extra_broker.port}"
    held.channel().queue_declare("", exclusive=True)
    held.close()
    assert w.log_text().count("client connected") == logged, "info lines after the level went to warn"


def node_states(warren):
    return {n["node"]: n["state"] for n in warren.get_json("/api/nodes")}


def test_a_node_that_forces_connections_closed_is_banned_until_a_probe_finds_it_back(
        broker, extra_broker, warren_factory):
    extra, main = f"127.0.0.1:{extra_broker.port}", f"127.0.0.1:{broker.port}"
    w = warren_factory("--node-ban-seconds", "2", upstreams=[f"amqp://{extra}", f"amqp://{main}"])
    victim = w.connect()
    victim_channel = victim.channel()
    assert upstream_nodes(w) == [extra], "the first login goes to the first node"
    # An operator (or a broker shutting down) closes its connections with
    # 320: the publisher on it is carried to the other node.
    extra_broker.ctl("close_all_connections", "maintenance")
    wait_until(lambda: upstream_nodes(w) == [main], 20, "the client carried to the other node")
    victim_channel.queue_declare("", exclusive=True)
    assert node_states(w)[extra] == "banned"
    assert "broker node banned" in w.log_text()
    # Meanwhile every new client goes to the other node, however the turns fall.
    for _ in range(3):
        with w.connect(user="app", password="secret", vhost="/app") as conn:
            conn.channel().queue_declare("", exclusive=True)
            assert extra not in upstream_nodes(w)
    # The node still answers: the background probe takes it back after the ban.
    wait_until(lambda: node_states(w)[extra] == "up", 20, "the probe to take the node back")
    assert "broker node answers again" in w.log_text()


def test_a_dead_node_stays_banned_while_probes_fail(broker, warren_factory):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        w = warren_factory("--node-ban-seconds", "1", upstreams=[f"amqp://{dead}", f"amqp://127.0.0.1:{broker.port}"])
        for _ in range(2):
            with w.connect() as conn:
                conn.channel()
        failures = lambda: next(n["failures"] for n in w.get_json("/api/nodes") if n["node"] == dead)  # noqa: E731
        first = wait_until(failures, 10, "a failed login to ban the dead node")
        # Each probe after the ban time fails and bans it again.
        wait_until(lambda: failures() >= first + 2, 20, "two failed probes")
        assert node_states(w)[dead] == "banned"
