"""Clients that send but never read: warren never waits on them. Its replies
are bounded in the memory they really take, such a client is disconnected,
a bystander on the same upstream connection keeps working, and shutdown
finishes in bounded time whatever the client does."""
import socket
import struct
import time

from rawamqp import Channel, RawClient, method

QOS = method(1, 60, 10, struct.pack("!IHB", 0, 10, 0))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def flood_without_reading(raw, frame, max_frames=3_000_000, max_seconds=60):
    """Sends `frame` over and over without reading any reply, until warren
    closes the connection or a bound is hit; returns how many were sent and
    whether warren closed the connection."""
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sock.settimeout(1)
    wire = memoryview(frame * 10_000)
    sent_bytes, deadline = 0, time.monotonic() + max_seconds
    while sent_bytes < max_frames * len(frame) and time.monotonic() < deadline:
        try:
            # send, not sendall: a timeout must not lose track of how much of
            # a frame went out.
            sent_bytes += raw.sock.send(wire[sent_bytes % len(wire):])
        except socket.timeout:
            continue  # a full socket buffer: try again until the deadline
        except (BrokenPipeError, ConnectionResetError):
            return sent_bytes // len(frame), True
    return sent_bytes // len(frame), False


def test_a_client_that_never_reads_its_replies_is_disconnected_with_bounded_memory(warren, queue):
    bystander = warren.connect()
    ch = bystander.channel()
    ch.confirm_delivery()
    raw = RawClient(warren.port)
    raw.open()
    Channel(raw, 1).open()
    before = rss_kib(warren.proc.pid)
    sent, closed = flood_without_reading(raw, QOS)
    grown_mib = (rss_kib(warren.proc.pid) - before) / 1024
    assert closed, f"warren kept a client that never reads after {sent} requests"
    # 16 MiB of queue, charged with each reply's real size, plus what the
    # allocator keeps: far from the ~195 MiB a client cost before.
    assert grown_mib < 48, f"warren grew by {grown_mib:.0f} MiB"
    ch.basic_publish("", queue, b"still here")
    assert ch.basic_get(queue, auto_ack=True)[2] == b"still here"
    assert "slow_client" in warren.http_get("/metrics")
    bystander.close()


def test_shutdown_is_bounded_with_a_client_that_never_reads(warren_factory):
    w = warren_factory("--term-timeout", "1")
    raw = RawClient(w.port)
    raw.open()
    Channel(raw, 1).open()
    # Enough replies to fill the socket buffers, not warren's queue.
    flood_without_reading(raw, QOS, max_frames=100_000)
    started = time.monotonic()
    assert w.terminate(timeout=30) == 0
    # --term-timeout, then 320 to the client and a few seconds for its
    # Close-Ok and its writer.
    assert time.monotonic() - started < 1 + 10
    raw.close()
