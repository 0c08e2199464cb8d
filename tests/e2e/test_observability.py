"""The HTTP endpoint: health and readiness, Prometheus metrics, the JSON admin
API, and the logs (JSON format, rate-limited repeats)."""
import json
import re
import socket
import urllib.error
import urllib.request

import pika
import pytest

from conftest import connect, free_port, params, wait_until


def get(warren, path, method="GET"):
    """(status, body text) of an HTTP request to warren's endpoint."""
    request = urllib.request.Request(warren.http_url(path), method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def metrics(warren):
    """{(name, frozenset(labels)): value} from /metrics (Prometheus text format)."""
    status, text = get(warren, "/metrics")
    assert status == 200
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def named(pika_params, name):
    pika_params.client_properties = {"connection_name": name}
    return pika_params


def test_health_and_readiness_follow_the_broker(broker, warren):
    assert get(warren, "/healthz") == (200, "ok\n")
    assert get(warren, "/readyz")[0] == 200
    broker_back = False
    try:
        broker.stop()
        # No upstream connection is open and the node does not answer.
        status, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(get(warren, "/readyz")),
                                  10, "/readyz to say 503")
        assert "not ready" in body and str(broker.port) in body
        # Alive all the same: a restart would not help.
        assert get(warren, "/healthz")[0] == 200
        assert warren.get_json("/api/overview")["ready"] is False
        broker.start()
        broker_back = True
    finally:
        if not broker_back:
            broker.start()
    wait_until(lambda: get(warren, "/readyz")[0] == 200, 10, "/readyz to say 200 again")


def test_readiness_is_503_while_draining(broker, warren_factory):
    w = warren_factory("--term-timeout", "30")
    conn = w.connect()
    conn.channel()
    assert get(w, "/readyz")[0] == 200
    w.proc.send_signal(2)
    wait_until(lambda: get(w, "/readyz")[0] == 503, 10, "/readyz to say 503 while draining")
    assert "draining" in get(w, "/readyz")[1]
    assert w.get_json("/api/overview")["draining"] is True
    conn.close()
    assert w.proc.wait(timeout=15) == 0


def test_metrics_count_clients_messages_and_errors(broker, warren, queue):
    accepted_before = sample(metrics(warren), "warren_client_connections_accepted_total")
    clients = [pika.BlockingConnection(named(params(warren.port), f"metrics-{i}")) for i in range(3)]
    channel = clients[0].channel()
    for i in range(5):
        channel.basic_publish("", queue, f"m{i}".encode())
    channel.queue_declare(queue, passive=True)  # a round trip: the publishes are in
    for _ in range(2):
        method, _, _ = channel.basic_get(queue, auto_ack=True)
        assert method is not None
    doomed = clients[1].channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        doomed.queue_declare("no-such-queue-here", passive=True)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(warren.port, password="wrong")

    m = metrics(warren)
    root = {"vhost": "/", "user": "guest"}
    assert sample(m, "warren_client_connections", **root) == 3
    assert sample(m, "amqproxy_client_connections") == 3
    assert sample(m, "warren_upstream_connections", **root) == 1
    assert sample(m, "amqproxy_upstream_connections") == 1
    assert sample(m, "warren_pools") == 1
    assert sample(m, "warren_messages_published_total", **root) == 5
    assert sample(m, "warren_messages_delivered_total", **root) == 2
    assert sample(m, "warren_client_handshakes_total", outcome="ok") == 3
    assert sample(m, "warren_client_handshakes_total", outcome="auth_failed") == 1
    assert sample(m, "warren_client_closes_total", scope="channel", code="404") == 1
    # The channel the broker closed leaves the table once pika's Close-Ok is in.
    wait_until(lambda: sample(metrics(warren), "warren_client_channels") == 1, 5, "one channel left")
    for direction in ("from_clients", "to_clients", "from_broker", "to_broker"):
        assert sample(m, "warren_bytes_total", direction=direction, **root) > 0
    assert sample(m, "warren_client_handshake_duration_seconds_count") == 3
    assert sample(m, "warren_upstream_login_duration_seconds_count") == 2  # one refused
    assert sample(m, "warren_upstream_logins_total", outcome="auth_failed") == 1
    assert sample(m, "warren_client_connections_accepted_total") - accepted_before == 4
    for conn in clients:
        conn.close()
    after = wait_until(lambda: (lambda s: s if sample(s, "amqproxy_client_connections") == 0 else None)(
        metrics(warren)), 5, "the closed clients to be gone from the metrics")
    assert sample(after, "warren_client_disconnects_total", reason="client_closed") == 3
    # What departed clients counted stays in the totals.
    assert sample(after, "warren_messages_published_total", **root) == 5
    assert (sample(after, "warren_bytes_total", direction="from_clients", **root)
            >= sample(m, "warren_bytes_total", direction="from_clients", **root))


def test_reused_channels_show_as_kept_and_hits(broker, warren):
    for _ in range(3):
        with warren.connect() as conn:
            conn.channel().close()
    [upstream] = warren.get_json("/api/upstreams")
    assert upstream["channels"] == {"open": 0, "kept": 1, "closing": 0}
    overview = warren.get_json("/api/overview")
    assert overview["reuse"] == {"hits": 2, "misses": 1}
    assert overview["channels"]["upstream_kept"] == 1
    m = metrics(warren)
    assert sample(m, "warren_upstream_channels", state="kept") == 1
    assert sample(m, "warren_channel_reuse_total", vhost="/", user="guest", result="hit") == 2


def test_api_lists_clients_upstreams_and_pools_without_passwords(broker, warren):
    a = pika.BlockingConnection(named(params(warren.port), "api-a"))
    a.channel()
    a.channel()
    b = pika.BlockingConnection(named(params(warren.port, user="app", password="secret", vhost="/app"), "api-b"))
    b.channel()

    clients = warren.get_json("/api/clients")
    by_name = {c["connection_name"]: c for c in clients}
    assert set(by_name) == {"api-a", "api-b"}
    assert (by_name["api-a"]["user"], by_name["api-a"]["vhost"], by_name["api-a"]["channels"]) == ("guest", "/", 2)
    assert (by_name["api-b"]["user"], by_name["api-b"]["vhost"], by_name["api-b"]["channels"]) == ("app", "/app", 1)
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", c["peer"]) for c in clients)

    upstreams = {u["id"]: u for u in warren.get_json("/api/upstreams")}
    assert {by_name["api-a"]["upstream"], by_name["api-b"]["upstream"]} == set(upstreams)
    up_b = upstreams[by_name["api-b"]["upstream"]]
    assert (up_b["vhost"], up_b["user"], up_b["clients"], up_b["state"]) == ("/app", "app", 1, "open")
    assert up_b["node"] == f"127.0.0.1:{broker.port}"
    assert up_b["channels"]["open"] == 1
    # Each upstream connection names its route and the clients on it.
    assert (up_b["route"], up_b["client_ids"]) == ("default", [by_name["api-b"]["id"]])

    pools = warren.get_json("/api/pools")
    assert sorted((p["vhost"], p["user"], p["clients"]) for p in pools) == [("/", "guest", 1), ("/app", "app", 1)]

    for path in ("/api/overview", "/api/clients", "/api/upstreams", "/api/pools", "/metrics", "/"):
        status, body = get(warren, path)
        assert status == 200
        assert "secret" not in body and '"guest:guest' not in body
    # The client ids are the ones the log lines carry.
    connected = [line for line in warren.log_text().splitlines() if "client connected" in line]
    for c in clients:
        [line] = [line for line in connected if f"client={c['id']} " in line]
        assert f'connection_name="{c["connection_name"]}"' in line
    a.close()
    b.close()


def test_unknown_paths_and_methods_are_refused(warren):
    assert get(warren, "/nope")[0] == 404
    assert get(warren, "/metrics", method="POST")[0] == 405
    status, body = get(warren, "/")
    assert status == 200 and "<html" in body.lower()


def test_http_port_zero_turns_the_endpoint_off(warren_factory):
    w = warren_factory("--http-port", "0")
    with w.connect() as conn:
        conn.channel()
    assert re.search(r"warren is ready.*http=off", w.log_text())


def test_json_logs_carry_the_client_id_the_api_shows(broker, warren_factory):
    w = warren_factory("--log-format", "json")
    conn = pika.BlockingConnection(named(params(w.port), "json-logged"))
    conn.channel()
    [client] = w.get_json("/api/clients")
    conn.close()
    wait_until(lambda: "client disconnected" in w.log_text(), 5, "the disconnect to be logged")
    events = [json.loads(line) for line in w.log_text().splitlines() if line.strip()]
    mine = [e for e in events if e.get("client") == client["id"]]
    messages = [e["message"] for e in mine]
    for step in ("client accepted", "client connected", "client disconnected"):
        assert step in messages, messages
    connected = next(e for e in mine if e["message"] == "client connected")
    assert connected["connection_name"] == "json-logged" and connected["user"] == "guest"
    assert all("password" not in json.dumps(e) for e in events)


def test_repeated_errors_are_logged_once_a_second_with_a_count(warren_factory):
    dead = free_port()  # nothing listens there
    w = warren_factory(upstream_port=dead)
    for _ in range(20):
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            w.connect()
    lines = [line for line in w.log_text().splitlines() if "no upstream connection for the client" in line]
    # 20 refusals within a few seconds: a line a second at most, and the
    # lines that follow a quiet spell say how many were held back.
    assert 1 <= len(lines) < 20
    assert "suppressed=0" in lines[0]
    assert sum(int(re.search(r"suppressed=(\d+)", line).group(1)) for line in lines) <= 20 - len(lines)
    m = metrics(w)
    assert sample(m, "warren_client_handshakes_total", outcome="broker_unreachable") == 20
    assert get(w, "/readyz")[0] == 503


def test_connections_beyond_the_limit_get_503_at_once(warren):
    idle = [socket.create_connection(("127.0.0.1", warren.http_port)) for _ in range(256)]
    try:
        assert wait_until(lambda: get(warren, "/healthz")[0] == 503, 5, "the 257th connection to be refused")
        assert get(warren, "/healthz")[1] == "too many HTTP connections\r\n"
    finally:
        for s in idle:
            s.close()
    # Their slots come back as soon as they are gone.
    wait_until(lambda: get(warren, "/healthz")[0] == 200, 5, "the endpoint to serve again")
