"""The same scenario, run directly against the broker and through warren,
must give the same transcript."""
import subprocess
import uuid

import pika
import pytest

from conftest import PYTHON, connect, wait_until


def consume_n(conn, ch, queue, n, ack):
    received = []

    def on_message(channel, method, properties, body):
        received.append((method.delivery_tag, method.redelivered, body.decode()))
        if ack:
            channel.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(queue, on_message)
    for _ in range(200):
        if len(received) >= n:
            break
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    return received


def scenario(port, suffix):
    """Exercises confirms, basic.get, nack/requeue, qos, consume with manual
    acks, tx, an exclusive queue, mandatory returns and a channel error."""
    q = f"sem.{suffix}"
    t = []
    with connect(port) as conn:
        ch = conn.channel()
        ch.queue_declare(q)
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", q, f"m{i}".encode())
        t.append(("declare-ok", ch.queue_declare(q, passive=True).method.message_count))

        method, props, body = ch.basic_get(q)
        t.append(("get", method.delivery_tag, method.redelivered, body, method.message_count))
        ch.basic_nack(method.delivery_tag, requeue=True)

        ch.basic_qos(prefetch_count=2)
        t.append(("consumed", sorted(consume_n(conn, ch, q, 3, ack=True), key=lambda m: m[2])))
        t.append(("after-consume", ch.queue_declare(q, passive=True).method.message_count))
        t.append(("get-empty", ch.basic_get(q)))

        tx = conn.channel()
        tx.tx_select()
        tx.basic_publish("", q, b"rolled-back")
        tx.tx_rollback()
        tx.basic_publish("", q, b"committed")
        tx.tx_commit()
        t.append(("after-tx", ch.queue_declare(q, passive=True).method.message_count))
        t.append(("tx-body", ch.basic_get(q, auto_ack=True)[2]))

        excl = ch.queue_declare("", exclusive=True).method.queue
        t.append(("exclusive-name", excl.startswith("amq.gen-")))
        ch.basic_publish("", excl, b"mine")
        t.append(("exclusive-consume", [m[2] for m in consume_n(conn, ch, excl, 1, ack=False)]))

        with pytest.raises(pika.exceptions.UnroutableError) as returned:
            ch.basic_publish("", f"sem.nowhere.{suffix}", b"lost", mandatory=True)
        t.append(("returned", [(m.method.reply_code, m.method.reply_text) for m in returned.value.messages]))

        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            ch.basic_publish("sem-missing-exchange", "k", b"x")
        t.append(("channel-error", closed.value.reply_code, closed.value.reply_text))
        t.append(("channel-closed", ch.is_closed, conn.is_open))

        again = conn.channel()
        t.append(("reopened", again.queue_declare(q, passive=True).method.message_count))
        again.queue_delete(q)
    return t


def test_scenario_matches_a_direct_connection(broker, warren):
    suffix = uuid.uuid4().hex[:8]
    direct = scenario(broker.port, suffix)
    proxied = scenario(warren.port, suffix)
    assert proxied == direct
    # And the transcript really covers what it claims.
    assert ("channel-error", 404, "NOT_FOUND - no exchange 'sem-missing-exchange' in vhost '/'") in direct
    assert ("after-tx", 1) in direct


HOLDER = """
import sys, pika
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = conn.channel()
got = [ch.basic_get(sys.argv[2])[2].decode() for _ in range(3)]
print(",".join(got), flush=True)
sys.stdin.read()
"""


def test_unacked_deliveries_are_requeued_when_a_client_is_killed(broker, warren, queue):
    with connect(broker.port) as conn:
        ch = conn.channel()
        for i in range(3):
            ch.basic_publish("", queue, f"u{i}".encode())
    holder = subprocess.Popen([PYTHON, "-c", HOLDER, warren.url(), queue],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "u0,u1,u2"
    assert queue_depth(broker.port, queue) == 0
    holder.kill()
    holder.wait(timeout=10)
    wait_until(lambda: queue_depth(broker.port, queue) == 3, 10, "deliveries to be requeued")
    with warren.connect() as conn:
        method, _, body = conn.channel().basic_get(queue, auto_ack=True)
        assert method.redelivered and body == b"u0"


def queue_depth(port, name):
    with connect(port) as conn:
        return conn.channel().queue_declare(name, passive=True).method.message_count


def test_exclusive_queue_is_locked_to_its_client_as_to_its_connection(broker, warren):
    """Two clients share warren's upstream connection; the broker alone would
    let the second use the first's exclusive queue."""
    owner_direct, owner_proxied = connect(broker.port), warren.connect()
    texts = []
    for port, owner in ((broker.port, owner_direct), (warren.port, owner_proxied)):
        queue = owner.channel().queue_declare("", exclusive=True).method.queue
        with connect(port) as other:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as locked:
                other.channel().queue_declare(queue, passive=True)
            assert other.is_open
        texts.append((locked.value.reply_code, locked.value.reply_text.replace(queue, "Q")))
        # The owner still uses it.
        owner.channel().basic_publish("", queue, b"mine")
        assert owner.channel().basic_get(queue, auto_ack=True)[2] == b"mine"
    assert texts[0] == texts[1]
    assert texts[0][0] == 405
    owner_direct.close()
    owner_proxied.close()


def test_publishes_written_in_one_go_keep_their_order_across_sizes_and_channels(broker, warren, queue):
    """Small publishes read together are forwarded together; a large one, a
    second channel and a Channel.Close in the same write must still go to
    the broker in the client's order, with nothing lost."""
    from conftest import drain
    from rawamqp import Channel, RawClient, method, publish_frames, shortstr
    import struct

    raw = RawClient(warren.port)
    raw.open()
    one, two = Channel(raw, 1).open(), Channel(raw, 2).open()
    burst = b""
    expected = []
    for i in range(120):
        channel = 1 if i % 3 else 2
        body = (b"big-%d-" % i) * 4000 if i % 40 == 20 else b"small-%d" % i
        burst += publish_frames(channel, queue, body)
        expected.append(body)
    # Channel 2 closes in the same write, right after its last publish.
    burst += method(2, 20, 40, struct.pack("!H", 200) + shortstr("bye") + struct.pack("!HH", 0, 0))
    raw.send(burst)
    seen = one.declare_passive(queue)
    assert seen[-1].method == (50, 11)
    if not any(f.method == (20, 41) for f in seen):
        seen.append(raw.read_method())
    assert [(f.channel, f.method) for f in seen if f.method == (20, 41)] == [(2, (20, 41))]
    got = [b.encode() for b in drain(broker.port, queue)]
    assert sorted(got) == sorted(expected)
    for channel_bodies in ([b for i, b in enumerate(expected) if i % 3], [b for i, b in enumerate(expected) if not i % 3]):
        assert [b for b in got if b in channel_bodies] == channel_bodies
    raw.close()
