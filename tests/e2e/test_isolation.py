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
