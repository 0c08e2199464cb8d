"""Before authentication every byte comes from an unknown client: sizes are
bounded as RabbitMQ bounds them, a login that fails because of what the
client sent never marks a broker node failed, pending handshakes are capped,
and client text never reaches the log or the API unescaped or uncut."""
import socket
import struct

import pytest

from conftest import wait_until
from rawamqp import PROTOCOL_HEADER, RawClient, longstr, method, shortstr, table


def start_ok(user=b"guest", password=b"guest", connection_name=None):
    properties = {"product": b"raw", "capabilities": {"authentication_failure_close": True}}
    if connection_name is not None:
        properties["connection_name"] = connection_name
    response = b"\0" + user + b"\0" + password
    return method(0, 10, 11, table(properties) + shortstr("PLAIN") + longstr(response) + shortstr("en_US"))


def login_outcome(port, **start_ok_args):
    """What the server answers to a Start-Ok: ("close", code, text), or
    ("dropped",) when it closes the socket without a word."""
    raw = RawClient(port, timeout=10)
    try:
        raw.send(PROTOCOL_HEADER)
        assert raw.read_method().method == (10, 10)
        raw.send(start_ok(**start_ok_args))
        reply = raw.read_method()
    except (EOFError, ConnectionResetError, BrokenPipeError):
        return ("dropped",)
    finally:
        raw.close()
    if reply.method == (10, 50):
        return ("close", *reply.close_reply())
    return ("method", reply.method)


@pytest.mark.parametrize("case", [
    # Fits the broker's first frame directly: refused as an unknown user.
    dict(user=b"u" * 3000),
    # Fits directly, but not once warren adds its own properties: refused
    # exactly as the broker refuses, without asking it.
    dict(user=b"u" * 4000),
    # Too large for the first frame (4096 payload bytes): the socket is dropped.
    dict(user=b"u" * 5000),
    dict(user=b"u" * 100_000),
    dict(password=b"p" * 5000),
    dict(connection_name=b"n" * 100_000),
], ids=["user-3000", "user-4000", "user-5000", "user-100k", "password-5000", "name-100k"])
def test_oversized_logins_get_the_brokers_answer_and_no_node_is_marked_failed(broker, warren, queue, case):
    bystander = warren.connect()
    ch = bystander.channel()
    direct = login_outcome(broker.port, **case)
    proxied = login_outcome(warren.port, **case)
    assert direct == proxied, (direct, proxied)
    assert "broker node failed" not in warren.log_text()
    ch.basic_publish("", queue, b"still here")
    assert ch.basic_get(queue, auto_ack=True)[2] == b"still here"
    # A new login is served at once: the node was not backed off.
    with warren.connect() as later:
        later.channel()
    bystander.close()


def test_a_newline_in_the_user_name_cannot_forge_a_log_line(warren_factory):
    w = warren_factory(log_level="info")
    forged = "2026-12-04T00:00:00.000000Z  INFO warren: forged line"
    outcome = login_outcome(w.port, user=f"evil\n{forged}\x1b[2J".encode())
    assert outcome[:2] == ("close", 403), outcome
    wait_until(lambda: "evil\\n" in w.log_text(), 10, "the refusal to be logged")
    lines = w.log_text().splitlines()
    assert not any(line.startswith(forged) for line in lines), lines
    assert "\x1b" not in w.log_text()


def handshake_with_name(port, name):
    raw = RawClient(port)
    raw.send(PROTOCOL_HEADER)
    raw.read_method()
    raw.send(start_ok(connection_name=name))
    assert raw.read_method().method == (10, 30)
    raw.send(method(0, 10, 31, struct.pack("!HIH", 2047, 131072, 0)))
    raw.send(method(0, 10, 40, shortstr("/") + shortstr("") + b"\0"))
    assert raw.read_method().method == (10, 41)
    return raw


def test_client_text_is_escaped_and_cut_in_the_api_and_the_log(warren_factory):
    w = warren_factory(log_level="info")
    name = "line one\nline two " + "x" * 2000
    raw = handshake_with_name(w.port, name.encode())
    [client] = w.get_json("/api/clients")
    shown = client["connection_name"]
    assert shown.startswith("line one\\nline two xxx"), shown
    assert shown.endswith(f"...({len(name)} bytes)"), shown
    assert len(shown) < 300
    connected = next(line for line in w.log_text().splitlines() if "client connected" in line)
    assert "line one\\nline two" in connected and len(connected) < 700, connected
    raw.close()


def silent_connection(port):
    """A connection that never sends its protocol header."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_pending_handshakes_are_capped_and_the_next_is_served_when_one_ends(warren_factory):
    w = warren_factory("--max-pending-handshakes", "3", "--client-handshake-timeout", "60")
    silent = [silent_connection(w.port) for _ in range(3)]
    waiting = RawClient(w.port, timeout=1)
    waiting.send(PROTOCOL_HEADER)
    # Three handshakes are pending: the fourth connection waits in the
    # kernel's backlog and hears nothing.
    with pytest.raises(socket.timeout):
        waiting.read_method()
    silent[0].close()
    waiting.sock.settimeout(10)
    assert waiting.read_method().method == (10, 10)
    waiting.close()
    for s in silent[1:]:
        s.close()
    # Once they are gone, clients are served as before.
    with w.connect() as conn:
        conn.channel()
