"""Reused upstream channels are indistinguishable from fresh ones."""
import subprocess
import uuid

import pytest

from conftest import CLIENTS, PYTHON, connect, drain, wait_until
from rawamqp import Channel, RawClient, ack_of


def raw_session(warren):
    raw = RawClient(warren.port)
    raw.open()
    return raw


def read_acks(client, count, own_tags_only=False):
    """Reads Basic.Acks until tags 1..=count are all confirmed; with
    `own_tags_only`, any other tag (foreign or unrebased) fails."""
    acked = set()
    while len(acked) < count:
        f = client.read_method()
        assert f.method == (60, 80), f
        tag, multiple = ack_of(f)
        if own_tags_only:
            assert 1 <= tag <= count, f"foreign or unrebased tag {tag}"
        acked |= set(range(1, tag + 1)) if multiple else {tag}


def leave_a_kept_confirm_channel(warren, queue):
    """A client publishes once with confirms and closes its channel cleanly:
    the upstream channel is kept, in confirm mode, with one publish numbered."""
    first = raw_session(warren)
    ch = Channel(first, 1).open()
    ch.confirm_select()
    ch.publish(queue, b"first")
    assert first.read_method().method == (60, 80)
    ch.close()
    first.close()


def test_sequential_cycles_keep_at_most_the_kept_channels_open(broker, warren, queue):
    tag = uuid.uuid4().hex[:8]
    out = subprocess.run([PYTHON, str(CLIENTS / "publish_cycles.py"), warren.url(), "1000", queue, tag],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert sorted(drain(broker.port, queue)) == sorted(f"{tag}:{i}" for i in range(1000))
    # The design bounds what stays open by --max-kept-channels (64 by
    # default), however slow the broker was to confirm each fence; how often
    # a cycle reused a channel is a rate, measured by warren-bench (churn).
    channels = broker.warren_channel_count()
    reuse = warren.get_json("/api/overview")["reuse"]
    print(f"upstream channels open after 1000 sequential cycles: {channels}, reuse: {reuse}")
    assert channels <= 64
    assert reuse["hits"] + reuse["misses"] == 1000, reuse


def test_confirm_tags_start_at_one_for_every_client(broker, warren, queue):
    first = raw_session(warren)
    ch = Channel(first, 1).open()
    ch.confirm_select()
    for i in range(3):
        ch.publish(queue, b"first")
    read_acks(first, 3)
    ch.close()
    first.close()

    second = raw_session(warren)
    ch = Channel(second, 1).open()
    ch.confirm_select()
    ch.publish(queue, b"second")
    ch.publish(queue, b"second")
    read_acks(second, 2, own_tags_only=True)
    assert broker.warren_channel_count() == 1, "the second client did not reuse the channel"
    second.close()


def test_client_without_confirms_never_sees_acks(broker, warren, queue):
    leave_a_kept_confirm_channel(warren, queue)

    second = raw_session(warren)
    ch = Channel(second, 1).open()
    for _ in range(5):
        ch.publish(queue, b"unconfirmed")
    frames = ch.declare_passive(queue)
    assert [f.method for f in frames] == [(50, 11)], frames
    assert broker.warren_channel_count() == 1
    second.close()


def test_replies_the_previous_client_left_behind_are_not_seen(broker, warren, queue):
    first = raw_session(warren)
    ch = Channel(first, 1).open()
    from rawamqp import queue_declare, method, shortstr
    import struct
    # A declare whose reply the client never waits for, then a close.
    first.send(queue_declare(1, queue, passive=True))
    first.send(method(1, 20, 40, struct.pack("!H", 200) + shortstr("") + struct.pack("!HH", 0, 0)))
    replies = [first.read_method().method for _ in range(2)]
    assert (20, 41) in replies
    first.close()

    second = raw_session(warren)
    other = f"{queue}.other"
    with connect(broker.port) as direct:
        direct.channel().queue_declare(other, auto_delete=False)
    try:
        ch = Channel(second, 1).open()
        frames = ch.declare_passive(other)
        assert len(frames) == 1 and frames[0].method == (50, 11)
        assert frames[0].payload[5:5 + frames[0].payload[4]].decode() == other
    finally:
        with connect(broker.port) as direct:
            direct.channel().queue_delete(other)
    second.close()


def test_qos_of_a_previous_client_is_not_inherited(broker, warren, queue):
    with warren.connect() as first:
        ch = first.channel()
        ch.basic_qos(prefetch_count=2)
        ch.close()
    with connect(broker.port) as direct:
        for i in range(6):
            direct.channel().basic_publish("", queue, f"m{i}".encode())
    with warren.connect() as second:
        ch = second.channel()
        got = []
        ch.basic_consume(queue, lambda c, m, p, b: got.append(m.delivery_tag))
        for _ in range(100):
            if len(got) == 6:
                break
            second.process_data_events(time_limit=0.05)
        # With the first client's prefetch of 2 it would get 2 unacked deliveries.
        assert got == [1, 2, 3, 4, 5, 6]


HALF_PUBLISH = """
import socket, struct, sys
sys.path.insert(0, sys.argv[2])
from rawamqp import RawClient, Channel, method, frame, shortstr
raw = RawClient(int(sys.argv[1]))
raw.open()
Channel(raw, 1).open()
raw.send(method(1, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr(sys.argv[3]) + b"\\x00")
         + frame(2, 1, struct.pack("!HHQH", 60, 0, 10, 0)) + frame(3, 1, b"half!"))
print("sent", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("dirty", ["consumer", "unacked get", "tx", "half-sent message"])
def test_dirty_channels_are_closed_not_reused(broker, warren, queue, dirty):
    from pathlib import Path
    with connect(broker.port) as direct:
        direct.channel().basic_publish("", queue, b"waiting")
    if dirty == "half-sent message":
        proc = subprocess.Popen([PYTHON, "-c", HALF_PUBLISH, str(warren.port), str(Path(__file__).parent), queue],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "sent"
        wait_until(lambda: broker.warren_channel_count() == 1, 10, "the channel to open")
        proc.kill()
        proc.wait(timeout=10)
    else:
        conn = warren.connect()
        ch = conn.channel()
        if dirty == "consumer":
            ch.basic_consume(queue, lambda *a: None)
        elif dirty == "unacked get":
            assert ch.basic_get(queue)[2] == b"waiting"
        else:
            ch.tx_select()
        conn.close()
    wait_until(lambda: broker.warren_channel_count() == 0, 10, f"the {dirty} channel to be closed")
    bodies = drain(broker.port, queue)
    assert bodies == ["waiting"], bodies  # nothing half-published, unacked message requeued


def test_clean_channel_is_kept_after_the_client_leaves(broker, warren):
    with warren.connect() as conn:
        conn.channel().basic_publish("", "nowhere-in-particular", b"x")
    assert broker.warren_channel_count() == 1


def test_exclusive_queues_vanish_when_their_client_leaves(broker, warren):
    named = f"excl.{uuid.uuid4().hex[:8]}"
    conn = warren.connect()
    ch = conn.channel()
    server_named = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_declare(named, exclusive=True)
    ch.close()  # the channel is kept; the queues belong to the client, not the channel
    assert {server_named, named} <= broker.queue_names()
    conn.close()
    wait_until(lambda: not ({server_named, named} & broker.queue_names()), 10, "exclusive queues to be deleted")


def test_reuse_off_closes_every_channel(broker, warren_factory, queue):
    w = warren_factory("--no-channel-reuse")
    with w.connect() as conn:
        conn.channel().basic_publish("", queue, b"x")
    wait_until(lambda: broker.warren_channel_count() == 0, 10, "the channel to close")


def test_prewarmed_channels_are_open_before_any_channel_is_asked_for(broker, warren_factory):
    w = warren_factory("--prewarm-channels", "3")
    with w.connect():
        wait_until(lambda: broker.warren_channel_count() == 3, 10, "three pre-warmed channels")


def test_confirms_asked_for_after_publishing_on_a_kept_confirm_channel(broker, warren, queue):
    leave_a_kept_confirm_channel(warren, queue)

    second = raw_session(warren)
    ch = Channel(second, 1).open()
    ch.publish(queue, b"before select")
    ch.publish(queue, b"before select")
    ch.confirm_select()
    ch.publish(queue, b"after select")
    # On a fresh channel the only confirmed publish is tag 1: the broker's
    # acks for the two earlier publishes must not show up as tags 1 and 2.
    f = second.read_method()
    assert f.method == (60, 80), f
    assert ack_of(f)[0] == 1
    frames = ch.declare_passive(queue)
    assert [x.method for x in frames] == [(50, 11)], frames
    assert broker.warren_channel_count() == 1
    second.close()


def test_tx_works_on_a_channel_that_was_kept_in_confirm_mode(broker, warren, queue):
    with warren.connect() as first:
        ch = first.channel()
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"confirmed")
        ch.close()
    with warren.connect() as second:
        ch = second.channel()
        ch.tx_select()  # RabbitMQ refuses tx on a confirm-mode channel with 406
        ch.basic_publish("", queue, b"in tx")
        ch.tx_commit()
    assert sorted(drain(broker.port, queue)) == ["confirmed", "in tx"]


def test_a_refused_exclusive_declare_never_deletes_the_existing_queue(broker, warren, queue):
    """The name belongs to a durable queue: the broker refuses the exclusive
    declare (405), and the queue must survive the client's departure."""
    import pika
    with connect(broker.port) as direct:
        direct.channel().basic_publish("", queue, b"keep me")
    conn = warren.connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        conn.channel().queue_declare(queue, durable=True, exclusive=True)
    assert refused.value.reply_code == 405
    conn.close()
    wait_until(lambda: "client disconnected" in warren.log_text(), 10, "warren to finish with the client")
    # Another client through the same warren: the name is not locked for it.
    with warren.connect() as other:
        other.channel().queue_declare(queue, durable=True, passive=True)
    assert drain(broker.port, queue) == ["keep me"]


def test_a_client_that_deletes_its_exclusive_queue_does_not_delete_a_successor(broker, warren):
    name = f"excl.reused.{uuid.uuid4().hex[:8]}"
    first = warren.connect()
    ch = first.channel()
    ch.queue_declare(name, exclusive=True)
    ch.queue_delete(name)
    with connect(broker.port) as direct:
        direct.channel().queue_declare(name, durable=True)
        direct.channel().basic_publish("", name, b"successor")
    first.close()
    wait_until(lambda: "client disconnected" in warren.log_text(), 10, "warren to finish with the client")
    try:
        assert broker.queue_names() >= {name}
        assert drain(broker.port, name) == ["successor"]
    finally:
        with connect(broker.port) as direct:
            direct.channel().queue_delete(name)


def test_an_empty_queue_name_never_reaches_the_previous_clients_queue(broker, warren):
    """RabbitMQ reads queue "" as the queue last declared on the channel: on a
    reused channel that would be the previous client's queue."""
    import pika
    with warren.connect() as first:
        ch = first.channel()
        previous = ch.queue_declare("", auto_delete=True).method.queue
        ch.basic_publish("", previous, b"not yours")
        ch.close()
    assert broker.warren_channel_count() == 1, "the channel is kept for the next client"
    seen = []
    for port in (broker.port, warren.port):
        with connect(port) as conn:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                conn.channel().basic_get("", auto_ack=True)
            seen.append((refused.value.reply_code, refused.value.reply_text))
    assert seen[0] == seen[1] == (404, "NOT_FOUND - no previously declared queue")
