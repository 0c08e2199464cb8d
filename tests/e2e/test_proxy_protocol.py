"""PROXY protocol: a load balancer named in --proxy-protocol-from opens each
connection with a header naming the client, and warren logs, limits and
shows that client; anyone else claiming an address is refused.

The balancer here is a relay in the test (a real one, HAProxy or an NLB,
does the same): it accepts real client libraries' connections, opens one to
warren from 127.0.0.1, writes the header and then copies bytes both ways."""
import socket
import struct
import threading

import pika
import pytest

from conftest import free_port, params, wait_until
from rawamqp import PROTOCOL_HEADER, RawClient

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(client_ip, client_port, local_port):
    family = "TCP6" if ":" in client_ip else "TCP4"
    dest = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {client_ip} {dest} {client_port} {local_port}\r\n".encode()


def v2(client_ip, client_port, local_port, tlvs=b""):
    addresses = socket.inet_aton(client_ip) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", client_port, local_port)
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


class Balancer:
    """Accepts on a free port; each connection is relayed to warren after
    `header(client_port)` is written."""

    def __init__(self, warren_port, header):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.warren_port = warren_port
        self.header = header
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, (_, client_port) = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.warren_port), timeout=10)
            upstream.sendall(self.header(client_port))
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._copy, args=(a, b), daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def _copy(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def publish_one(port, queue):
    with pika.BlockingConnection(params(port)) as conn:
        conn.channel().basic_publish("", queue, b"through the balancer")


def client_peers(warren):
    return [c["peer"] for c in warren.get_json("/api/clients")]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_clients_behind_a_trusted_balancer_are_shown_and_logged_by_their_own_address(
        broker, warren_factory, queue, version):
    w = warren_factory("--proxy-protocol-from", "127.0.0.1/32")
    make = {"v1": lambda port: v1("203.0.113.7", port, w.port),
            "v2": lambda port: v2("203.0.113.7", port, w.port, tlvs=b"\x04\x00\x01\xaa")}[version]
    balancer = Balancer(w.port, make)
    try:
        with pika.BlockingConnection(params(balancer.port)) as conn:
            ch = conn.channel()
            wait_until(lambda: client_peers(w), 10, "the client to be listed")
            [peer] = client_peers(w)
            assert peer.startswith("203.0.113.7:"), peer
            ch.basic_publish("", queue, b"through the balancer")
        publish_one(balancer.port, queue)
    finally:
        balancer.close()
    log = w.log_text()
    assert "peer=203.0.113.7:" in log and "client connected" in log, log[-2000:]
    with pika.BlockingConnection(params(broker.port)) as conn:
        assert conn.channel().queue_declare(queue, passive=True).method.message_count == 2


def test_a_balancer_health_check_without_an_address_is_served_as_the_balancer(warren_factory):
    w = warren_factory("--proxy-protocol-from", "127.0.0.1")
    local = V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
    for header in (local, b"PROXY UNKNOWN\r\n"):
        c = RawClient(w.port)
        c.send(header)
        c.open()
        c.close()
    assert "client connected" in w.log_text()


def test_a_trusted_balancer_must_send_the_header(warren_factory):
    w = warren_factory("--proxy-protocol-from", "127.0.0.0/8")
    c = RawClient(w.port)
    c.send(PROTOCOL_HEADER)
    with pytest.raises((EOFError, ConnectionError)):
        c.read_frame()
    wait_until(lambda: 'warren_client_handshakes_total{outcome="proxy_header"} 1' in w.http_get("/metrics"),
               10, "the refusal to be counted")
    assert "without a valid PROXY header" in w.log_text()


def test_a_header_from_an_address_not_listed_is_refused_and_direct_clients_still_work(
        broker, warren_factory, queue):
    w = warren_factory("--proxy-protocol-from", "127.0.0.2")
    c = RawClient(w.port)
    c.send(v1("203.0.113.7", 4000, w.port) + PROTOCOL_HEADER)
    # As for any non-AMQP greeting: the protocol header it should have sent.
    assert c.read_exact(8) == PROTOCOL_HEADER
    c.close()
    wait_until(lambda: "from an address --proxy-protocol-from does not list" in w.log_text(), 10,
               "the refusal to be logged")
    publish_one(w.port, queue)
    assert not [p for p in client_peers(w) if p.startswith("203.0.113.7")]


def test_the_per_source_handshake_cap_counts_the_named_client(warren_factory):
    w = warren_factory("--proxy-protocol-from", "127.0.0.1", "--max-pending-handshakes-per-source", "2")
    # Two handshakes from 198.51.100.1 stay pending: counted under that
    # address once warren answers their protocol header with Start.
    pending = []
    for port in (1001, 1002):
        c = RawClient(w.port)
        c.send(v1("198.51.100.1", port, w.port) + PROTOCOL_HEADER)
        assert c.read_method().method == (10, 10)
        pending.append(c)
    third = RawClient(w.port)
    third.send(v1("198.51.100.1", 1003, w.port) + PROTOCOL_HEADER)
    with pytest.raises((EOFError, ConnectionError)):
        third.read_frame()
    # Another client behind the same balancer is not held back.
    other = RawClient(w.port)
    other.send(v1("198.51.100.2", 1004, w.port))
    other.open()
    other.close()
    assert 'outcome="source_limit"} 1' in w.http_get("/metrics")
    for c in pending:
        c.close()


def test_the_header_comes_before_tls_on_the_tls_listener(broker, warren_factory):
    from test_tls import listener_args, round_trip, tls_params
    tls_port = free_port()
    w = warren_factory(*listener_args(tls_port), "--proxy-protocol-from", "127.0.0.1")
    balancer = Balancer(tls_port, lambda port: v2("192.0.2.44", port, tls_port))
    try:
        round_trip(tls_params(balancer.port))
    finally:
        balancer.close()
    assert "peer=192.0.2.44:" in w.log_text()


def test_a_health_check_that_sends_nothing_is_not_a_bad_header(warren_factory):
    w = warren_factory("--proxy-protocol-from", "127.0.0.1")
    import socket as plain
    plain.create_connection(("127.0.0.1", w.port), timeout=5).close()
    wait_until(lambda: 'warren_client_handshakes_total{outcome="abandoned"} 1' in w.http_get("/metrics"),
               10, "the empty connection to be counted as abandoned")
    assert 'outcome="proxy_header"} 0' in w.http_get("/metrics") or 'outcome="proxy_header"' not in w.http_get("/metrics")
    assert "without a valid PROXY header" not in w.log_text()
