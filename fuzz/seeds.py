#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/TARGET/NAME) from well-formed client
traffic, built with the end-to-end tests' raw AMQP helpers; the fuzzer
mutates from there. Run from anywhere: python3 fuzz/seeds.py"""
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from rawamqp import (PROTOCOL_HEADER, frame, method, publish_frames, queue_declare,  # noqa: E402
                     shortstr, longstr, table)


def start_ok(user=b"guest", password=b"guest", mechanism="PLAIN"):
    props = table({"product": b"seed", "capabilities": {"authentication_failure_close": True,
                                                         "connection.blocked": True}})
    response = b"\0" + user + b"\0" + password
    return method(0, 10, 11, props + shortstr(mechanism) + longstr(response) + shortstr("en_US"))


def amqplain_start_ok():
    fields = shortstr("LOGIN") + b"S" + longstr(b"guest") + shortstr("PASSWORD") + b"S" + longstr(b"guest")
    props = table({"product": b"seed"})
    return method(0, 10, 11, props + shortstr("AMQPLAIN") + longstr(fields) + shortstr("en_US"))


TUNE_OK = method(0, 10, 31, struct.pack("!HIH", 2047, 131072, 60))
OPEN = method(0, 10, 40, shortstr("/") + shortstr("") + b"\0")
CHANNEL_OPEN = method(1, 20, 10, shortstr(""))
QOS = method(1, 60, 10, struct.pack("!IHB", 0, 10, 0))
CONSUME = method(1, 60, 20, struct.pack("!H", 0) + shortstr("q") + shortstr("") + b"\0" + struct.pack("!I", 0))
CONFIRM = method(1, 85, 10, b"\0")
TX = method(1, 90, 10)
CLOSE = method(1, 20, 40, struct.pack("!H", 200) + shortstr("bye") + struct.pack("!HH", 0, 0))

SEEDS = {
    "handshake": {
        "plain": PROTOCOL_HEADER + start_ok() + TUNE_OK + OPEN,
        "amqplain": PROTOCOL_HEADER + amqplain_start_ok() + TUNE_OK + OPEN,
        "wrong-protocol": b"AMQP\x00\x00\x09\x00",
    },
    "frames": {
        "publish": CHANNEL_OPEN + publish_frames(1, "q", b"hello") + CLOSE,
        "heartbeat": frame(8, 0, b""),
        "split-body": publish_frames(1, "q", b"x" * 3000),
    },
    "channel": {
        "publish": publish_frames(1, "q", b"hello") + publish_frames(1, "q", b""),
        "confirm-publish": CONFIRM + publish_frames(1, "q", b"m"),
        "consume": QOS + CONSUME,
        "declare-tx": queue_declare(1, "q") + TX,
        "bodies": method(1, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr("q") + b"\0")
                  + frame(2, 1, struct.pack("!HHQH", 60, 0, 6, 0)) + frame(3, 1, b"abc") + frame(3, 1, b"def"),
    },
}


def payload(wire):
    """A method frame's class, method and arguments: the methods target's input."""
    return wire[7:-1]


ARGS = table({"x-max-length": b"10", "x-queue-type": b"classic", "flags": {"on": True}})
SEEDS["methods"] = {
    "queue-declare": payload(queue_declare(1, "q")),
    "queue-declare-args": payload(method(1, 50, 10, struct.pack("!H", 0) + shortstr("q") + b"\x02" + ARGS)),
    "exchange-declare": payload(method(1, 40, 10, struct.pack("!H", 0) + shortstr("x") + shortstr("topic")
                                       + b"\x02" + ARGS)),
    "publish": payload(method(1, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr("q") + b"\x00")),
    "consume": payload(CONSUME),
    "qos": payload(QOS),
    "ack": payload(method(1, 60, 80, struct.pack("!QB", 7, 1))),
    "close": payload(CLOSE),
}

for target, seeds in SEEDS.items():
    folder = ROOT / "fuzz" / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
print("seeds written to", ROOT / "fuzz" / "corpus")
