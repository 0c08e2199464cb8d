"""TLS on both sides: clients to warren (--tls-cert/--tls-key, optional
client certificates) and warren to amqps:// brokers (verified against
--upstream-ca or the system roots, mutual TLS, --upstream-insecure).
Certificates come from scripts/test-ca.sh; the test broker listens with TLS
on BROKER_TLS_PORT."""
import json
import socket
import ssl
import subprocess
import threading

import pika
import pytest

from conftest import BROKER_TLS_PORT, TLS_DIR, WARREN, free_port, wait_until

CA = str(TLS_DIR / "ca.pem")
SERVER_CERT, SERVER_KEY = str(TLS_DIR / "server.pem"), str(TLS_DIR / "server.key")
BROKER_TLS_URL = f"amqps://localhost:{BROKER_TLS_PORT}"


def listener_args(tls_port, client_ca=None):
    args = ["--tls-port", str(tls_port), "--tls-cert", SERVER_CERT, "--tls-key", SERVER_KEY]
    return args + (["--tls-client-ca", client_ca] if client_ca else [])


def tls_params(port, cert=None, **kw):
    context = ssl.create_default_context(cafile=CA)
    if cert:
        context.load_cert_chain(str(TLS_DIR / f"{cert}.pem"), str(TLS_DIR / f"{cert}.key"))
    kw.setdefault("heartbeat", 0)
    return pika.ConnectionParameters("localhost", port, "/", pika.PlainCredentials("guest", "guest"),
                                     ssl_options=pika.SSLOptions(context, "localhost"),
                                     connection_attempts=1, socket_timeout=10, **kw)


def round_trip(params):
    """Publishes a message to a fresh queue and reads it back."""
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        name = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", name, b"over tls")
        method, _, body = ch.basic_get(name, auto_ack=True)
        assert method is not None and body == b"over tls"


def broker_tls_connections(broker):
    rows = json.loads(broker.ctl("list_connections", "ssl", "peer_cert_subject", "client_properties",
                                 "--formatter", "json", "-q") or "[]")
    return [r for r in rows
            if any(p[0] == "product" and p[2] == "warren" for p in r["client_properties"])]


def test_clients_and_broker_over_tls_end_to_end(broker, warren_factory):
    tls_port = free_port()
    w = warren_factory(*listener_args(tls_port), "--upstream-ca", CA, upstreams=[BROKER_TLS_URL])
    round_trip(tls_params(tls_port))
    # The plain listener keeps running beside the TLS one.
    with w.connect() as conn:
        conn.channel().queue_declare("", exclusive=True)
        assert [c["ssl"] for c in broker_tls_connections(broker)] == [True]


def test_plain_listener_can_be_turned_off(warren_factory):
    tls_port = free_port()
    w = warren_factory(*listener_args(tls_port), "-p", "0")
    round_trip(tls_params(tls_port))
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", w.port)) != 0


def test_client_certificates_are_demanded_with_a_client_ca(warren_factory):
    tls_port = free_port()
    w = warren_factory(*listener_args(tls_port, client_ca=CA))
    round_trip(tls_params(tls_port, cert="client"))
    for cert in (None, "untrusted-client"):
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(tls_params(tls_port, cert=cert))
    # Counted when warren's side of the handshake ends, maybe after the client's.
    wait_until(lambda: 'warren_client_handshakes_total{outcome="tls_failed"} 2' in w.http_get("/metrics"),
               5, "both failed handshakes to be counted")


def test_a_plain_client_on_the_tls_port_is_dropped_and_harms_nobody(warren_factory):
    tls_port = free_port()
    warren_factory(*listener_args(tls_port))
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        assert s.recv(100) != b"AMQP"  # a TLS alert or nothing, never AMQP
    round_trip(tls_params(tls_port))


def test_broker_certificates_are_verified_by_default(warren_factory):
    # Not signed by a system root: refused, and the client hears why.
    w = warren_factory(upstreams=[BROKER_TLS_URL])
    with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
        w.connect()
    assert "(320)" in str(refused.value) and "UnknownIssuer" in str(refused.value), refused.value


def test_broker_host_name_is_verified(warren_factory):
    # A TLS server with a certificate from the trusted CA, but for another name.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(TLS_DIR / "wrong-host.pem"), str(TLS_DIR / "wrong-host.key"))
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    port = server.getsockname()[1]

    def serve():
        # warren asks at start (for the broker's server properties), then
        # for the client's login: every attempt meets the wrong name.
        for _ in range(20):
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed by the test, or no more attempts
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # warren rejects the certificate mid-handshake

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    w = warren_factory("--upstream-ca", CA, upstreams=[f"amqps://localhost:{port}"])
    with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
        w.connect()
    server.close()
    thread.join(15)
    assert "(320)" in str(refused.value), refused.value
    assert 'not valid for name "localhost"' in str(refused.value), refused.value


def test_warren_presents_a_client_certificate_to_the_broker(broker, warren_factory):
    w = warren_factory("--upstream-ca", CA, "--upstream-cert", str(TLS_DIR / "client.pem"),
                       "--upstream-key", str(TLS_DIR / "client.key"), upstreams=[BROKER_TLS_URL])
    with w.connect() as conn:
        conn.channel()
        subjects = [c["peer_cert_subject"] for c in broker_tls_connections(broker)]
    assert subjects == ["CN=warren-test-client"], subjects


def test_upstream_insecure_works_and_says_so(warren_factory):
    w = warren_factory("--upstream-insecure", upstreams=[BROKER_TLS_URL])
    with w.connect() as conn:
        conn.channel().queue_declare("", exclusive=True)
    log = w.log_text()
    assert "NOT verified" in log and log.count("NOT verified") == 1, log[-2000:]


@pytest.mark.parametrize("args,message", [
    (["--tls-cert", "/nonexistent.pem", "--tls-key", SERVER_KEY], "--tls-cert /nonexistent.pem"),
    (["--tls-cert", SERVER_KEY, "--tls-key", SERVER_KEY], "no PEM certificate"),
    (["--tls-cert", SERVER_CERT, "--tls-key", str(TLS_DIR / "client.key")], "usable pair"),
    (["--upstream-ca", SERVER_KEY, BROKER_TLS_URL], "--upstream-ca"),
])
def test_bad_tls_files_are_one_clear_line(args, message):
    upstream = [] if any(a.startswith("amqps") for a in args) else ["amqp://127.0.0.1"]
    out = subprocess.run([str(WARREN), "-p", str(free_port()), "--http-port", "0", *args, *upstream],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2, out
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
