"""A client's connection-level error closes that client alone: the same
error reaching the shared upstream connection would close every other client
on it (amqproxy's measured failure)."""
import pika
import pytest

from conftest import connect

MISBEHAVIOURS = {
    "unknown exchange type": lambda ch: ch.exchange_declare("iso.bad", exchange_type="fanoutt"),
    "channel.flow active=false": lambda ch: ch.flow(False),
    "basic.recover requeue=false": lambda ch: ch.basic_recover(requeue=False),
    "basic.qos prefetch_size": lambda ch: ch.basic_qos(prefetch_size=1024),
}


@pytest.mark.parametrize("name", sorted(MISBEHAVIOURS))
def test_offender_gets_the_brokers_error_and_the_bystander_sees_nothing(broker, warren, queue, name):
    misbehave = MISBEHAVIOURS[name]
    seen = []
    for port in (broker.port, warren.port):
        offender = connect(port)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            misbehave(offender.channel())
        seen.append((closed.value.reply_code, closed.value.reply_text))
    assert seen[0] == seen[1], seen

    bystander = warren.connect()
    ch = bystander.channel()
    ch.confirm_delivery()
    offender = warren.connect()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        misbehave(offender.channel())
    ch.basic_publish("", queue, b"still here")
    assert ch.basic_get(queue, auto_ack=True)[2] == b"still here"
    assert bystander.is_open
    assert len(broker.warren_connections(user="guest")) == 1, "the shared upstream survived"
    bystander.close()


def test_a_consumer_that_stops_reading_is_disconnected_and_its_messages_requeue(broker, warren, queue):
    """A consumer that stops reading fills its 16 MiB write queue in warren: it
    is disconnected (counted as slow_client), the broker requeues what it had
    not acknowledged, and a bystander on the same upstream connection keeps
    publishing and consuming throughout."""
    import socket
    import struct
    import urllib.request
    from conftest import wait_until
    from rawamqp import Channel, RawClient, method, shortstr, table

    body = b"x" * 65536
    count = 600  # about 39 MB: more than the queue, the socket buffers and the kernel hold
    with connect(broker.port) as filler:
        ch = filler.channel()
        ch.confirm_delivery()
        for _ in range(count):
            ch.basic_publish("", queue, body)

    bystander = warren.connect()
    by_channel = bystander.channel()
    by_queue = by_channel.queue_declare("", exclusive=True).method.queue

    stalled = RawClient(warren.port, timeout=30)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.open()
    Channel(stalled, 1).open()
    # Manual acks, no prefetch limit: the broker sends everything at once.
    stalled.send(method(1, 60, 20, struct.pack("!H", 0) + shortstr(queue) + shortstr("stalled")
                        + b"\x00" + table({})))
    # ...and the client never reads again. It shares the bystander's upstream.
    assert len({c["upstream"] for c in warren.get_json("/api/clients")}) == 1

    def slow_disconnects():
        with urllib.request.urlopen(warren.http_url("/metrics"), timeout=5) as answer:
            text = answer.read().decode()
        lines = [line for line in text.splitlines()
                 if line.startswith('warren_client_disconnects_total{reason="slow_client"}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    sent = 0
    while slow_disconnects() < 1:
        assert sent < 2000, "the stalled consumer was never disconnected"
        by_channel.basic_publish("", by_queue, b"bystander-%d" % sent)
        sent += 1
        bystander.process_data_events(time_limit=0.01)
    assert "client too slow" in warren.log_text()
    # Everything it had not acknowledged is back in the queue.
    wait_until(lambda: by_channel.queue_declare(queue, passive=True).method.message_count == count,
               10, "the stalled consumer's messages to be requeued")
    # The bystander saw every message it published, in order.
    received = []
    for _ in range(sent):
        method_frame, _, payload = by_channel.basic_get(by_queue, auto_ack=True)
        received.append(payload)
    assert received == [b"bystander-%d" % i for i in range(sent)]
    bystander.close()
    stalled.close()


def _publish_method(channel):
    from rawamqp import method, shortstr
    import struct
    return method(channel, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr("nowhere") + b"\x00")


def _header(channel, size, class_id=60):
    from rawamqp import frame
    import struct
    return frame(2, channel, struct.pack("!HHQH", class_id, 0, size, 0))


def _raw_misbehaviours():
    """Name -> (bytes sent on an open connection with channel 1 open, the
    handshake's channel_max, the code expected when the broker itself drops
    the socket without a Close, else None: the broker's own code)."""
    import struct
    from rawamqp import frame, method, shortstr
    declare = method(1, 50, 10, struct.pack("!H", 0) + shortstr("iso.q") + b"\x00" + struct.pack("!I", 0))
    return {
        "unknown frame type": (frame(9, 1, b"x"), 2047, None),
        "frame larger than frame_max": (struct.pack("!BHI", 3, 1, 200000) + b"x" * 16, 2047, None),
        "bad frame end octet": (frame(1, 1, struct.pack("!HH", 60, 40))[:-1] + b"\x00", 2047, None),
        "method on a channel never opened": (method(5, 50, 10, struct.pack("!H", 0) + shortstr("q") + b"\x00"
                                                    + struct.pack("!I", 0)), 2047, None),
        "second channel.open": (method(1, 20, 10, shortstr("")), 2047, None),
        "body without a header": (_publish_method(1) + frame(3, 1, b"body"), 2047, None),
        "header without a publish": (_header(1, 4) + frame(3, 1, b"body"), 2047, None),
        "body larger than its header said": (_publish_method(1) + _header(1, 2) + frame(3, 1, b"toolong")
                                             + declare, 2047, None),
        "heartbeat on a channel": (frame(8, 1, b""), 2047, None),
        # RabbitMQ drops the socket without a Close; warren says why.
        "unknown method": (method(1, 60, 999), 2047, 540),
        "server-only method": (method(1, 60, 60, struct.pack("!B", 0) + struct.pack("!QB", 1, 0)
                                      + shortstr("") + shortstr("q")) + _header(1, 1) + frame(3, 1, b"x"),
                               2047, None),
        "method on channel 0 after open": (method(0, 60, 10, struct.pack("!IHB", 0, 1, 0)), 2047, None),
        "more channels than channel_max": (method(2, 20, 10, shortstr("")), 1, None),
    }


RAW = sorted(_raw_misbehaviours())


def _close_after(port, payload, channel_max):
    """Opens a raw connection with channel 1, sends `payload`, and returns the
    (code, text) of the Connection.Close that follows (None if the socket
    just closes)."""
    from rawamqp import Channel, RawClient
    raw = RawClient(port, timeout=10)
    raw.open(channel_max=channel_max)
    Channel(raw, 1).open()
    raw.send(payload)
    try:
        while True:
            f = raw.read_method()
            if f.method == (10, 50):
                return f.close_reply()
    except (EOFError, ConnectionError):
        return None
    finally:
        raw.close()


@pytest.mark.parametrize("name", RAW)
def test_raw_misbehaviour_closes_the_offender_alone_with_the_brokers_code(broker, warren, queue, name):
    """A client's malformed traffic is stopped in warren: the offender gets
    the reply code RabbitMQ itself sends for it, and a bystander on the SAME
    upstream connection, publishing and consuming around it, sees nothing."""
    payload, channel_max, own_code = _raw_misbehaviours()[name]
    direct = _close_after(broker.port, payload, channel_max)
    expected = own_code if own_code is not None else direct and direct[0]
    assert expected, f"the broker did not close the connection: {direct}"

    bystander = warren.connect()
    ch = bystander.channel()
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"before")
    through = _close_after(warren.port, payload, channel_max)
    ch.basic_publish("", queue, b"after")
    bodies = [ch.basic_get(queue, auto_ack=True)[2] for _ in range(2)]

    assert through is not None, "warren did not close the offender"
    assert through[0] == expected, (direct, through)
    assert bodies == [b"before", b"after"]
    assert bystander.is_open
    assert len(broker.warren_connections(user="guest")) == 1, "the shared upstream survived"
    bystander.close()


def test_a_flooding_publisher_does_not_starve_a_client_on_the_same_upstream(broker, warren):
    """Clients share an upstream connection's write queue: one publishing
    64 KiB messages as fast as it can must not hold a light client's
    requests back for more than a moment (each waits its turn for the
    queue's credit, in order)."""
    import threading
    import time
    from conftest import wait_until
    flood_queue = f"iso.flood.{time.monotonic_ns()}"
    with connect(broker.port) as setup:
        setup.channel().queue_declare(flood_queue, arguments={"x-max-length": 100})
    stop = threading.Event()
    published = []

    def flood():
        with warren.connect() as conn:
            ch = conn.channel()
            body = b"f" * 65536
            while not stop.is_set() and len(published) < 200000:
                ch.basic_publish("", flood_queue, body)
                published.append(1)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        wait_until(lambda: len(published) > 200, 10, "the flood to start")
        light = warren.connect()
        ch = light.channel()
        assert len({c["upstream"] for c in warren.get_json("/api/clients")}) == 1
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            ch.queue_declare(flood_queue, passive=True)
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, f"a round trip took {slowest:.2f}s behind the flood"
        light.close()
    finally:
        stop.set()
        flooder.join(timeout=30)
        with connect(broker.port) as cleanup:
            cleanup.channel().queue_delete(flood_queue)
    assert len(published) > 200


@pytest.mark.parametrize("flags,channels,limit_text", [
    # Unfinished 100 MiB messages, 75 MiB sent of each: over the 128 MiB
    # shared budget at the second...
    (["--max-held-publish-mib", "128"], 2, "its 128 MiB for partly received messages of all clients"),
    # ...or, with a large shared budget, over one client's 256 MiB at the fourth.
    (["--max-held-publish-mib", "4096"], 4, "more than 256 MiB of partly received messages held"),
])
def test_holding_too_many_partial_messages_closes_that_client_with_506(broker, warren_factory, queue,
                                                                        flags, channels, limit_text):
    """A client that starts large messages on many channels and never finishes
    them is closed before warren's memory grows without bound; nothing it
    held reaches the broker, and a bystander on the same upstream is unharmed."""
    import struct
    from rawamqp import RawClient, frame, method, shortstr
    w = warren_factory(*flags)
    bystander = w.connect()
    ch = bystander.channel()
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"before")

    raw = RawClient(w.port, timeout=30)
    raw.open()
    body = frame(3, 0, b"x" * (131072 - 8))
    closed = None
    try:
        for number in range(1, channels + 1):
            raw.send(method(number, 20, 10, shortstr(""))
                     + method(number, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr(queue) + b"\x00")
                     + frame(2, number, struct.pack("!HHQH", 60, 0, 100 << 20, 0)))
            on_channel = body[:1] + struct.pack("!H", number) + body[3:]
            raw.send(on_channel * 600)  # 75 MiB of the announced 100
    except (BrokenPipeError, ConnectionResetError):
        pass  # warren closed the socket while we were still sending
    try:
        while closed is None:
            f = raw.read_method()  # Channel.Open-Oks, then the Close
            if f.method == (10, 50):
                closed = f.close_reply()
    except (EOFError, ConnectionError):
        pass
    raw.close()
    assert closed is not None and closed[0] == 506 and limit_text in closed[1], closed

    ch.basic_publish("", queue, b"after")
    bodies = [ch.basic_get(queue, auto_ack=True)[2] for _ in range(3)]
    assert bodies == [b"before", b"after", None], "a partial message reached the queue"
    assert bystander.is_open
    bystander.close()
    metrics = w.http_get("/metrics")
    assert "\nwarren_held_publish_bytes 0\n" in metrics, "the budget was given back"
