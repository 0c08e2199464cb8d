"""A catalogue of malformed and hostile frames, each sent directly to RabbitMQ
and through warren: through warren the offender gets what RabbitMQ would
have answered, and a bystander on the same upstream connection (the same
one, never reconnected) sees nothing.

The method table here is written from the AMQP 0-9-1 spec independently of
warren's own (src/spec.rs), so a mistake in one is not repeated in the other,
and the broker's answers, not either table, are the expected results."""
import struct
import uuid

import pytest

from conftest import connect
from rawamqp import FRAME_BODY, FRAME_HEADER, FRAME_METHOD, RawClient, frame, method, shortstr

# Argument types: o octet, h short, l long, L long long, b bit, s short
# string, S long string, t table.
CLIENT_METHODS = {
    (20, 10): ("channel.open", "s"),
    (20, 20): ("channel.flow", "b"),
    (20, 40): ("channel.close", "hshh"),
    (20, 41): ("channel.close-ok", ""),
    (30, 10): ("access.request", "sbbbbb"),
    (40, 10): ("exchange.declare", "hssbbbbbt"),
    (40, 20): ("exchange.delete", "hsbb"),
    (40, 30): ("exchange.bind", "hsssbt"),
    (40, 40): ("exchange.unbind", "hsssbt"),
    (50, 10): ("queue.declare", "hsbbbbbt"),
    (50, 20): ("queue.bind", "hsssbt"),
    (50, 30): ("queue.purge", "hsb"),
    (50, 40): ("queue.delete", "hsbbb"),
    (50, 50): ("queue.unbind", "hssst"),
    (60, 10): ("basic.qos", "lhb"),
    (60, 20): ("basic.consume", "hssbbbbt"),
    (60, 30): ("basic.cancel", "sb"),
    (60, 40): ("basic.publish", "hssbb"),
    (60, 70): ("basic.get", "hsb"),
    (60, 80): ("basic.ack", "Lb"),
    (60, 90): ("basic.reject", "Lb"),
    (60, 100): ("basic.recover-async", "b"),
    (60, 110): ("basic.recover", "b"),
    (60, 120): ("basic.nack", "Lbb"),
    (85, 10): ("confirm.select", "b"),
    (90, 10): ("tx.select", ""),
    (90, 20): ("tx.commit", ""),
    (90, 30): ("tx.rollback", ""),
}

RUN = uuid.uuid4().hex[:8]
NAME = f"hostile.{RUN}"
BYSTANDER_QUEUE = f"hostile.bystander.{RUN}"
EMPTY_TABLE = struct.pack("!I", 0)


def string_value(name, index):
    """A plausible short string for argument `index` of a method."""
    if name == "exchange.declare" and index == 2:
        return "direct"
    if name in ("exchange.bind", "exchange.unbind", "queue.bind", "queue.unbind") and index == 2:
        return "amq.direct"
    if name == "channel.close" or name == "channel.open":
        return ""
    return NAME


def encode(name, types, table=EMPTY_TABLE, bits=0, first_string=None):
    """Arguments of types, with every bit octet `bits`, tables `table`, and
    optionally the first short string given raw."""
    out, i, strings = b"", 0, 0
    while i < len(types):
        t = types[i]
        if t == "b":
            while i < len(types) and types[i] == "b":
                i += 1
            out += bytes([bits])
            continue
        if t == "o":
            out += b"\0"
        elif t == "h":
            out += struct.pack("!H", 0)
        elif t == "l":
            out += struct.pack("!I", 0)
        elif t == "L":
            out += struct.pack("!Q", 0)
        elif t == "s":
            if strings == 0 and first_string is not None:
                out += first_string
            else:
                out += shortstr(string_value(name, i))
            strings += 1
        elif t == "S":
            out += struct.pack("!I", 0)
        elif t == "t":
            out += table
        i += 1
    return out


def entry(key, kind, value):
    return shortstr(key) + kind + value


EVERY_TYPE = b"".join([
    entry("t", b"t", b"\x01"), entry("b", b"b", b"\xff"), entry("B", b"B", b"\xff"),
    entry("s", b"s", b"\xff\xfe"), entry("u", b"u", b"\xff\xfe"), entry("I", b"I", b"\0\0\0\1"),
    entry("i", b"i", b"\0\0\0\1"), entry("l", b"l", b"\0" * 8), entry("f", b"f", b"\0" * 4),
    entry("d", b"d", b"\0" * 8), entry("D", b"D", b"\0" * 5), entry("S", b"S", b"\0\0\0\1x"),
    entry("T", b"T", b"\0" * 8), entry("F", b"F", EMPTY_TABLE), entry("V", b"V", b""),
    entry("x", b"x", b"\0\0\0\1x"), entry("A", b"A", struct.pack("!I", 2) + b"t\x01"),
    entry("L", b"L", b"\0" * 8),
])


def mutations(class_id, method_id, name, types):
    """(case name, argument bytes) for one method."""
    base = encode(name, types)
    yield "no arguments", b""
    yield "one byte short", base[:-1]
    yield "a byte too many", base + b"\0"
    yield "junk after the arguments", base + b"\xde\xad\xbe\xef\x00"
    if "b" in types:
        yield "every bit set", encode(name, types, bits=0xFF)
    if "s" in types:
        yield "short string past the end", encode(name, types, first_string=b"\xc8abc")
        yield "short string that is not UTF-8", encode(name, types, first_string=b"\x02\xc3\x28")
    if "t" in types:
        yield "table entry of an unknown type", encode(name, types, table=struct.pack("!I", 4) + b"\x01k?\0")
        yield "table longer than its bytes", encode(name, types, table=struct.pack("!I", 40) + b"\x01kt\x01")
        yield "table value cut short", encode(name, types, table=struct.pack("!I", 5) + b"\x01kI\0\0")
        yield "table of every type", encode(name, types, table=longtable(EVERY_TYPE))
        yield "table with a NaN", encode(name, types, table=longtable(entry("n", b"d", b"\x7f\xf8" + b"\0" * 6)))
        yield "array of an unknown type", encode(
            name, types, table=longtable(entry("a", b"A", struct.pack("!I", 2) + b"?\0")))


def longtable(entries):
    return struct.pack("!I", len(entries)) + entries


def content_header(body_size, weight=0, flags=0, props=b"", class_id=60):
    return frame(FRAME_HEADER, 1, struct.pack("!HHQH", class_id, weight, body_size, flags) + props)


def publish_method(args=None):
    args = args if args is not None else struct.pack("!H", 0) + shortstr("") + shortstr(NAME) + b"\0"
    return method(1, 60, 40, args)


def generated_cases():
    cases = []
    for (class_id, method_id), (name, types) in CLIENT_METHODS.items():
        channel = 2 if (class_id, method_id) == (20, 10) else 1
        for case, args in mutations(class_id, method_id, name, types):
            wire = method(channel, class_id, method_id, args)
            if name == "basic.publish" and case in ("every bit set", "a byte too many"):
                # A publish that decodes is followed by its content.
                wire += content_header(1) + frame(FRAME_BODY, 1, b"x")
            cases.append((f"{name}: {case}", wire))
    return cases


NAMED_CASES = [
    ("method frame with an empty payload", frame(FRAME_METHOD, 1, b"")),
    ("method frame with a 2-byte payload", frame(FRAME_METHOD, 1, b"\x00\x3c")),
    ("method frame with a 3-byte payload", frame(FRAME_METHOD, 1, b"\x00\x3c\x00")),
    ("basic.ack with 4 argument bytes", method(1, 60, 80, b"\0\0\0\1")),
    ("basic.ack with 9 bytes plus junk", method(1, 60, 80, b"\0" * 8 + b"\0" + b"junk")),
    ("tx.select with stray bytes", method(1, 90, 10, b"\x01\x02")),
    ("exchange.declare of type x-nonexistent",
     method(1, 40, 10, struct.pack("!H", 0) + shortstr(NAME + ".x") + shortstr("x-nonexistent") + b"\0"
            + EMPTY_TABLE)),
    ("exchange.declare of an empty type",
     method(1, 40, 10, struct.pack("!H", 0) + shortstr(NAME + ".x") + shortstr("") + b"\0" + EMPTY_TABLE)),
    ("content header with weight 1", publish_method() + content_header(1, weight=1)
     + frame(FRAME_BODY, 1, b"x")),
    ("content header of class 50", publish_method() + content_header(1, class_id=50)
     + frame(FRAME_BODY, 1, b"x")),
    ("content header shorter than its fixed part", publish_method() + frame(FRAME_HEADER, 1, b"\x00\x3c\0\0")),
    ("content header without property flags", publish_method()
     + frame(FRAME_HEADER, 1, struct.pack("!HHQ", 60, 0, 1)) + frame(FRAME_BODY, 1, b"x")),
    ("content header whose flags name a missing property", publish_method()
     + content_header(1, flags=0x8000) + frame(FRAME_BODY, 1, b"x")),
    ("content header with bytes after its properties", publish_method()
     + content_header(1, props=b"\0\0") + frame(FRAME_BODY, 1, b"x")),
    ("content header with the continuation flag", publish_method()
     + content_header(1, flags=0x0001, props=b"\0\0") + frame(FRAME_BODY, 1, b"x")),
    ("content header with a bad headers table", publish_method()
     + content_header(1, flags=0x2000, props=struct.pack("!I", 4) + b"\x01k?\0") + frame(FRAME_BODY, 1, b"x")),
    ("content header with a valid headers table", publish_method()
     + content_header(1, flags=0x2000, props=longtable(EVERY_TYPE)) + frame(FRAME_BODY, 1, b"x")),
    ("heartbeat on a channel", frame(8, 1, b"")),
    ("body without a header", frame(FRAME_BODY, 1, b"x")),
    ("body longer than announced", publish_method() + content_header(1) + frame(FRAME_BODY, 1, b"xy")),
    ("basic.deliver from a client", method(1, 60, 60, shortstr("t") + b"\0" * 9 + shortstr("") + shortstr("q"))
     + content_header(1) + frame(FRAME_BODY, 1, b"x")),
    ("basic.deliver from a client, no content", method(1, 60, 60, shortstr("t") + b"\0" * 9 + shortstr("")
                                                      + shortstr("q"))),
    ("channel.open on an open channel", method(1, 20, 10, shortstr(""))),
    ("method on a channel never opened", method(7, 50, 10, struct.pack("!H", 0) + shortstr(NAME) + b"\0"
                                                + EMPTY_TABLE)),
    ("body on a channel never opened", frame(FRAME_BODY, 7, b"x")),
    ("method while a body is expected", publish_method() + content_header(2) + frame(FRAME_BODY, 1, b"x")
     + method(1, 90, 10)),
    ("malformed method while a header is expected", publish_method() + method(1, 60, 80, b"\0")),
    ("body past the announced size, then more bodies", publish_method() + content_header(1)
     + frame(FRAME_BODY, 1, b"xy") + frame(FRAME_BODY, 1, b"z")),
    ("unknown method id", method(1, 60, 250)),
]

def probe(channel):
    """A request the broker itself answers: a passive declare of amq.direct."""
    return method(channel, 40, 10, struct.pack("!H", 0) + shortstr("amq.direct") + shortstr("direct") + b"\x01"
                  + EMPTY_TABLE)


def outcome(port, wire):
    """What the server does with `wire` (channel 1 is open), learned with a
    probe on the channel of the first frame of `wire`, answered after it in
    order: ("connection", code, text), ("channel", code, text), ("ok",) or
    ("dropped",)."""
    channel = struct.unpack("!BHI", wire[:7])[1]
    raw = RawClient(port, timeout=10)
    try:
        raw.open()
        raw.send(method(1, 20, 10, shortstr("")))
        assert raw.read_method().method == (20, 11)
        raw.send(wire + probe(channel))
        while True:
            try:
                f = raw.read_method()
            except (EOFError, ConnectionError):
                return ("dropped",)
            if f.method == (10, 50):
                code, text = f.close_reply()
                raw.send(method(0, 10, 51))
                return ("connection", code, text)
            if f.channel == channel and f.method == (20, 40):
                code, text = f.close_reply()
                raw.send(method(channel, 20, 41))
                return ("channel", code, text)
            if f.channel == channel and f.method == (40, 11):
                return ("ok",)
    finally:
        raw.close()


def upstream_connection_names(broker):
    import json
    rows = json.loads(broker.ctl("list_connections", "name", "client_properties", "--formatter", "json", "-q")
                      or "[]")
    return {r["name"] for r in rows if {p[0]: p[2] for p in r["client_properties"]}.get("product") == "warren"}


@pytest.fixture
def cleanup(broker):
    yield
    with connect(broker.port) as conn:
        ch = conn.channel()
        ch.queue_delete(NAME)
        ch.exchange_delete(NAME)
        ch.exchange_delete(NAME + ".x")


CASES = generated_cases() + NAMED_CASES


def same_for_the_client(direct, proxied):
    """The same outcome, text included for connection errors. Where
    RabbitMQ's reader crashes and drops the socket (an unknown method id, a
    field table that does not parse), warren closes the connection with the
    code for the fault (540, 501) and says why: a documented difference."""
    if direct == ("dropped",):
        return proxied[0] == "connection" and proxied[1] in (501, 540)
    if direct[0] == "connection":
        return direct == proxied
    return direct[:2] == proxied[:2]


def test_every_case_is_new():
    names = [name for name, _ in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) > 150


def test_hostile_frames_hurt_only_their_sender(broker, warren, cleanup):
    """Every case: through warren the offender gets RabbitMQ's own answer,
    and the bystander's upstream connection survives all of them."""
    bystander = warren.connect()
    ch = bystander.channel()
    ch.confirm_delivery()
    ch.queue_declare(BYSTANDER_QUEUE, auto_delete=True)
    upstreams = upstream_connection_names(broker)
    assert len(upstreams) == 1
    differences = []
    for name, wire in CASES:
        direct = outcome(broker.port, wire)
        proxied = outcome(warren.port, wire)
        if not same_for_the_client(direct, proxied):
            differences.append(f"{name}: direct {direct}, warren {proxied}")
        ch.basic_publish("", BYSTANDER_QUEUE, name.encode())
        assert ch.basic_get(BYSTANDER_QUEUE, auto_ack=True)[2] == name.encode(), f"bystander lost after {name}"
    assert bystander.is_open
    assert upstream_connection_names(broker) == upstreams, "the shared upstream connection was replaced"
    bystander.close()
    assert not differences, "\n".join(differences)
