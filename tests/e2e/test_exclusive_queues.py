"""Exclusive queues on a shared upstream connection behave as RabbitMQ keeps
them for separate connections: only the declaring client may use one, from
the moment its declare is sent, and it goes away when that client leaves,
whatever the timing. Each case runs against the broker directly (two
connections) and through warren (two clients on one upstream connection)."""
import struct
import uuid

import pytest

from conftest import connect, wait_until
from rawamqp import Channel, RawClient, method, publish_frames, shortstr

EMPTY_TABLE = struct.pack("!I", 0)


def declare(channel, name, exclusive=True, passive=False, nowait=False, durable=False, expires_ms=None):
    bits = passive | (durable << 1) | (exclusive << 2) | (nowait << 4)
    arguments = EMPTY_TABLE
    if expires_ms is not None:
        entry = shortstr("x-expires") + b"I" + struct.pack("!i", expires_ms)
        arguments = struct.pack("!I", len(entry)) + entry
    return method(channel, 50, 10, struct.pack("!H", 0) + shortstr(name) + bytes([bits]) + arguments)


def bind(channel, queue, nowait=False, unbind=False):
    if unbind:
        return method(channel, 50, 50, struct.pack("!H", 0) + shortstr(queue) + shortstr("amq.direct")
                      + shortstr(queue) + EMPTY_TABLE)
    return method(channel, 50, 20, struct.pack("!H", 0) + shortstr(queue) + shortstr("amq.direct")
                  + shortstr(queue) + bytes([nowait]) + EMPTY_TABLE)


def consume(channel, queue):
    return method(channel, 60, 20, struct.pack("!H", 0) + shortstr(queue) + shortstr("") + b"\0" + EMPTY_TABLE)


def get(channel, queue):
    return method(channel, 60, 70, struct.pack("!H", 0) + shortstr(queue) + b"\1")


def purge(channel, queue):
    return method(channel, 50, 30, struct.pack("!H", 0) + shortstr(queue) + b"\0")


def delete(channel, queue, if_unused=False):
    return method(channel, 50, 40, struct.pack("!H", 0) + shortstr(queue) + bytes([if_unused]))


# A request the broker answers on the channel: what comes back first tells
# whether a no-wait request before it closed the channel.
PROBE = lambda channel: method(channel, 40, 10, struct.pack("!H", 0) + shortstr("amq.direct") + shortstr("direct")
                               + b"\1" + EMPTY_TABLE)


class Client:
    """A raw client with one open channel."""

    def __init__(self, port):
        self.raw = RawClient(port, timeout=10)
        self.raw.open()
        self.channel = 1
        Channel(self.raw, 1).open()

    def answer(self, request):
        """Sends `request` on the channel and returns `reply()`."""
        self.raw.send(request(self.channel) if callable(request) else request)
        return self.reply()

    def reply(self):
        """The next reply on the channel: a method id, or ("closed", code)
        when the channel was closed (it is then reopened on the next
        number)."""
        reply = self.raw.read_method()
        while reply.channel != self.channel or reply.method == (60, 60):
            reply = self.raw.read_method()
        if reply.method == (20, 40):
            code = reply.close_reply()[0]
            self.raw.send(method(self.channel, 20, 41))
            self.channel += 1
            Channel(self.raw, self.channel).open()
            return ("closed", code)
        return reply.method

    def close(self):
        self.raw.close()


def queue_exists(port, name):
    with connect(port) as conn:
        ch = conn.channel()
        try:
            ch.queue_declare(name, passive=True)
            return True
        except Exception:
            return False


@pytest.fixture(params=["direct", "warren"])
def port(request, broker, warren):
    return broker.port if request.param == "direct" else warren.port


def name():
    return f"excl.{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("nowait", [False, True])
@pytest.mark.parametrize("unbind", [False, True])
def test_another_client_cannot_bind_or_unbind_an_exclusive_queue(port, nowait, unbind):
    a, b = Client(port), Client(port)
    q = name()
    assert a.answer(declare(a.channel, q)) == (50, 11)
    assert a.answer(bind(a.channel, q)) == (50, 21)
    if unbind:
        outcome = b.answer(bind(b.channel, q, unbind=True))
    elif nowait:
        b.raw.send(bind(b.channel, q, nowait=True))
        outcome = b.answer(PROBE)
    else:
        outcome = b.answer(bind(b.channel, q))
    assert outcome == ("closed", 405)
    # A's binding is still there: a message routed by it arrives.
    a.raw.send(publish_frames(a.channel, q, b"routed", exchange="amq.direct"))
    assert a.answer(get(a.channel, q)) == (60, 71)
    a.close()
    b.close()


@pytest.mark.parametrize("use", [
    lambda ch, q: declare(ch, q, passive=True),
    lambda ch, q: get(ch, q),
    lambda ch, q: consume(ch, q),
    lambda ch, q: purge(ch, q),
    lambda ch, q: bind(ch, q),
    lambda ch, q: delete(ch, q),
    lambda ch, q: declare(ch, q, exclusive=True),
    lambda ch, q: declare(ch, q, exclusive=False),
], ids=["passive", "get", "consume", "purge", "bind", "delete", "declare-exclusive", "declare"])
def test_a_queue_declared_with_no_wait_is_exclusive_at_once_and_goes_with_its_client(port, use):
    a, b = Client(port), Client(port)
    q = name()
    a.raw.send(declare(a.channel, q, nowait=True))
    assert a.answer(PROBE) == (40, 11)
    assert b.answer(lambda ch: use(ch, q)) == ("closed", 405)
    a.close()
    wait_until(lambda: not queue_exists(port, q), 10, "the exclusive queue to go with its client")
    b.close()


def test_a_second_client_never_gets_in_right_after_the_declare(port, warren):
    """B asks for A's queue right behind A's declare (no wait for its
    Declare-Ok): directly it gets 404 or 405, never the queue. Only B's own
    exclusive declare may win, when it reaches the broker first; then A's is
    the one refused. A race: through warren, B's check and A's claim happen
    in two tasks side by side, so it is tried many times."""
    for attempt in range(40):
        a, b = Client(port), Client(port)
        q = name()
        a.raw.send(declare(a.channel, q))
        for request in (consume, get):
            outcome = b.answer(lambda ch: request(ch, q))
            assert outcome in (("closed", 404), ("closed", 405)), (attempt, outcome)
        outcome = b.answer(lambda ch: declare(ch, q, exclusive=True))
        first = a.reply()
        if outcome == (50, 11):
            assert first == ("closed", 405), (attempt, "both declares won", first)
        else:
            assert outcome == ("closed", 405), (attempt, outcome)
            assert first == (50, 11), (attempt, first)
        a.close()
        b.close()


@pytest.mark.parametrize("server_named", [False, True])
@pytest.mark.parametrize("graceful", [False, True], ids=["reset", "close"])
def test_a_queue_whose_client_left_before_its_declare_ok_is_deleted(broker, port, server_named, graceful):
    # A bystander keeps the shared upstream connection open: the queue must
    # go when its client goes, not when the upstream connection closes.
    bystander = Client(port)
    before = broker.queue_names()
    a = Client(port)
    q = "" if server_named else name()
    a.raw.send(declare(a.channel, q) + publish_frames(a.channel, q, b"orphan"))
    if graceful:
        a.raw.send(method(0, 10, 50, struct.pack("!H", 200) + shortstr("bye") + struct.pack("!HH", 0, 0)))
    a.close()
    wait_until(lambda: broker.queue_names() <= before, 4, "the queue to go with its client")
    bystander.close()


def test_a_departing_client_never_deletes_a_queue_that_replaced_its_own(broker, warren):
    """A deletes its exclusive queue with if-unused; C, with its own
    connection, declares a durable queue of that name and publishes; A
    leaves: C's queue and messages stay."""
    a = Client(warren.port)
    q = name()
    assert a.answer(declare(a.channel, q)) == (50, 11)
    assert a.answer(delete(a.channel, q, if_unused=True)) == (50, 41)
    with connect(broker.port) as c:
        ch = c.channel()
        ch.queue_declare(q, durable=True)
        for i in range(3):
            ch.basic_publish("", q, b"%d" % i)
    a.close()
    wait_until(lambda: "client disconnected" in warren.log_text(), 10, "warren to finish with A")
    with connect(warren.port) as after:
        assert after.channel().queue_declare(q, passive=True).method.message_count == 3
        after.channel().queue_delete(q)


def test_two_clients_declaring_one_exclusive_name_get_what_two_connections_get(port):
    """Whoever comes first has the queue, the other gets 405."""
    for _ in range(10):
        a, b = Client(port), Client(port)
        q = name()
        a.raw.send(declare(a.channel, q))
        b.raw.send(declare(b.channel, q))
        outcomes = sorted([a.reply(), b.reply()], key=str)
        assert outcomes == sorted([(50, 11), ("closed", 405)], key=str), outcomes
        a.close()
        b.close()


@pytest.mark.parametrize("if_unused", [False, True])
def test_a_name_freed_by_its_owners_delete_is_free_for_others_at_once(port, if_unused):
    a, b = Client(port), Client(port)
    q = name()
    assert a.answer(declare(a.channel, q)) == (50, 11)
    assert a.answer(delete(a.channel, q, if_unused=if_unused)) == (50, 41)
    assert b.answer(declare(b.channel, q)) == (50, 11)
    assert a.answer(declare(a.channel, q, passive=True)) == ("closed", 405)
    a.close()
    b.close()


def test_a_name_whose_queue_expired_is_free_for_others(broker, port):
    """A's exclusive queue expires (x-expires) while A stays connected: B
    may declare the name, as it could directly."""
    a, b = Client(port), Client(port)
    q = name()
    assert a.answer(declare(a.channel, q, expires_ms=500)) == (50, 11)
    wait_until(lambda: q not in broker.queue_names(), 15, "the queue to expire")
    assert b.answer(declare(b.channel, q)) == (50, 11)
    assert a.answer(declare(a.channel, q, passive=True)) == ("closed", 405)
    a.close()
    b.close()
