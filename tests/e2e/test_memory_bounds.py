"""What a client makes warren hold is charged at the memory it really pins:
a small held frame never keeps a large read buffer alive, and the budget is
given back when the client leaves."""
import re
import struct

from conftest import wait_until
from rawamqp import RawClient, frame, method, publish_frames, shortstr
from test_stuck_clients import rss_kib

CHANNELS = 2000


def held_publish_bytes(w):
    return int(re.search(r"\nwarren_held_publish_bytes (\d+)\n", w.http_get("/metrics")).group(1))


def test_a_held_frame_per_channel_between_large_messages_costs_its_own_size(broker, warren, queue):
    """On each of 2000 channels a Basic.Publish whose header never comes,
    each read in the same buffer as a 60 KiB message that goes through: each
    held frame would pin a read buffer of up to 256 KiB (~500 MiB in all) if
    it were not moved out of it."""
    bystander = warren.connect()
    ch = bystander.channel()
    ch.confirm_delivery()
    raw = RawClient(warren.port, timeout=60)
    raw.open(channel_max=CHANNELS + 1)
    raw.send(b"".join(method(n, 20, 10, shortstr("")) for n in range(1, CHANNELS + 2)))
    for _ in range(CHANNELS + 1):
        assert raw.read_method().method == (20, 11)
    before = rss_kib(warren.proc.pid)
    passing = publish_frames(CHANNELS + 1, "no-such-queue", b"m" * 60 * 1024)
    for n in range(1, CHANNELS + 1):
        held = method(n, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr(queue) + b"\x00")
        raw.send(held + passing)
    # Everything sent was read once a reply to a later request comes back.
    raw.send(method(CHANNELS + 1, 20, 40, struct.pack("!H", 200) + shortstr("") + struct.pack("!HH", 0, 0)))
    assert raw.read_method().method == (20, 41)
    grown_mib = (rss_kib(warren.proc.pid) - before) / 1024
    held = held_publish_bytes(warren)
    # Each held 40-byte frame is charged with its allocation's overhead.
    assert CHANNELS * 40 <= held <= CHANNELS * 256, held
    assert grown_mib < 64, f"warren grew by {grown_mib:.0f} MiB"
    ch.basic_publish("", queue, b"still here")
    assert ch.basic_get(queue, auto_ack=True)[2] == b"still here"
    raw.close()
    wait_until(lambda: held_publish_bytes(warren) == 0, 10, "the held bytes to be given back")
    bystander.close()
