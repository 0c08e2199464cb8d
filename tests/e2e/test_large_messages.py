"""Large messages both ways, with each client library, directly and through
warren: a consumer reading at its own pace gets every message the broker
delivers (RabbitMQ takes up to 128 MiB by default), even one larger than
warren's 16 MiB write queue per client, and several at once."""
import socket
import struct
import subprocess

import pika
import pytest

from conftest import CLIENTS, PYTHON, wait_until
from rawamqp import Channel, RawClient, method, shortstr

MIB = 1 << 20
COMMANDS = {
    "php-amqplib": ["php", "-d", "memory_limit=1G", str(CLIENTS / "large_messages.php"), "--lib=amqplib"],
    "php-amqp": ["php", "-d", "memory_limit=1G", str(CLIENTS / "large_messages.php"), "--lib=ext"],
    "pika": [PYTHON, str(CLIENTS / "large_messages.py")],
    "amqplib": ["node", str(CLIENTS / "large_messages.js")],
}
# (size, count): one message below, one beyond and one far beyond the write
# queue, and several beyond it sent back to back.
CASES = [(1 * MIB, 1), (22_000_000, 1), (100 * MIB, 1), (22_000_000, 4)]


def exchange(client, url, size, count, queue):
    out = subprocess.run(COMMANDS[client] + [url, str(size), str(count), queue], capture_output=True,
                         text=True, timeout=300)
    return out.returncode, out.stdout.strip().splitlines()[-1:] or out.stderr.strip().splitlines()[-1:]


@pytest.mark.parametrize("client", sorted(COMMANDS))
def test_large_messages_arrive_whole_as_they_do_directly(client, broker, warren, queue):
    for size, count in CASES:
        direct = exchange(client, f"amqp://guest:guest@127.0.0.1:{broker.port}/%2F", size, count, queue)
        through = exchange(client, warren.url(), size, count, queue)
        assert direct == (0, ["RESULT ok"]), (size, count, direct)
        assert through == direct, (size, count, through, warren.log_text()[-2000:])
    assert "too slow" not in warren.log_text()
    held = [line for line in warren.http_get("/metrics").splitlines()
            if line.startswith("warren_held_delivery_bytes ")]
    assert held == ["warren_held_delivery_bytes 0"], held


def held_deliveries(w):
    for line in w.http_get("/metrics").splitlines():
        if line.startswith("warren_held_delivery_bytes "):
            return int(float(line.split()[1]))
    raise AssertionError("no warren_held_delivery_bytes on /metrics")


def stuck_consumer(w, queue, heartbeat):
    """A raw client that consumes from `queue` (no-ack) and never reads."""
    before = {c["id"] for c in w.get_json("/api/clients")}
    stuck = RawClient(w.port)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.open(heartbeat=heartbeat)
    Channel(stuck, 1).open()
    stuck.send(method(1, 60, 20, struct.pack("!H", 0) + shortstr(queue) + shortstr("")
                      + struct.pack("!B", 2) + struct.pack("!I", 0)))  # Basic.Consume, no-ack
    new = wait_until(lambda: {c["id"] for c in w.get_json("/api/clients")} - before, 10,
                     "the stuck client in /api/clients")
    [client_id] = new
    return stuck, client_id


def publish_zeros(w, queue, size, count):
    with pika.BlockingConnection(pika.URLParameters(w.url())) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for _ in range(count):
            ch.basic_publish("", queue, bytes(size))


def gone(w, client_id):
    return all(c["id"] != client_id for c in w.get_json("/api/clients"))


def test_a_consumer_that_reads_nothing_pins_a_bounded_share_until_dropped(warren, queue):
    """Two 100 MiB messages for a client that never reads: warren holds
    them (within the client's 256 MiB share) until the client is dropped for
    not reading in two heartbeat intervals, which gives everything back; a
    bystander on the same upstream connection gets its own large messages
    meanwhile."""
    publish_zeros(warren, queue, 100 * MIB, 2)
    stuck, client_id = stuck_consumer(warren, queue, heartbeat=10)
    wait_until(lambda: held_deliveries(warren) > 200 * MIB, 60, "warren to hold both messages")
    assert held_deliveries(warren) <= 256 * MIB

    bystander_queue = f"{queue}.bystander"
    with pika.BlockingConnection(pika.URLParameters(warren.url())) as conn:
        conn.channel().queue_declare(bystander_queue, auto_delete=False)
    try:
        assert exchange("pika", warren.url(), 22_000_000, 2, bystander_queue) == (0, ["RESULT ok"])
        assert not gone(warren, client_id), "the stuck client outlived the bystander's exchange"
        upstreams = {c["upstream"] for c in warren.get_json("/api/clients")}
        assert len(upstreams) == 1, "the bystander shared the stuck client's upstream connection"
    finally:
        with pika.BlockingConnection(pika.URLParameters(warren.url())) as conn:
            conn.channel().queue_delete(bystander_queue)

    wait_until(lambda: gone(warren, client_id) and held_deliveries(warren) == 0, 90,
               "the stuck consumer to be dropped and its share given back")
    stuck.close()


def test_beyond_its_share_a_consumer_that_reads_nothing_is_dropped_at_once(warren, queue):
    publish_zeros(warren, queue, 100 * MIB, 3)
    stuck, client_id = stuck_consumer(warren, queue, heartbeat=60)
    # Its third message does not fit in its share: it counts against the
    # 16 MiB queue bound, long before any heartbeat or stall limit.
    wait_until(lambda: gone(warren, client_id), 30, "the stuck consumer to be dropped")
    assert "client too slow" in warren.log_text()
    wait_until(lambda: held_deliveries(warren) == 0, 30, "its share given back")
    stuck.close()
