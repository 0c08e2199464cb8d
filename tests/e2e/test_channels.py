"""Multiplexing many clients' channels over few upstream connections, and
content that does not fit one frame."""
import os
import uuid

from conftest import connect, drain
from rawamqp import RawClient, method, shortstr


def test_channels_fill_upstreams_up_to_the_limit_and_stay_with_their_client(broker, warren_factory):
    w = warren_factory("--max-upstream-channels", "20")
    clients = [w.connect(), w.connect()]
    channels = [[c.channel() for _ in range(15)] for c in clients]
    for chans in channels:
        chans[-1].queue_declare("", exclusive=True)
    upstreams = broker.warren_connections(user="guest")
    # 15 + 15 channels do not fit in one upstream of 20: two upstreams, each
    # with exactly one client's 15 channels (never 20 + 10).
    assert sorted(c["channels"] for c in upstreams) == [15, 15], upstreams
    for c in clients:
        c.close()


def test_client_channel_max_is_capped_by_the_upstream_limit(warren_factory):
    w = warren_factory("--max-upstream-channels", "20")
    with w.connect() as conn:
        assert conn._impl.params.channel_max == 20


def test_large_message_round_trips_to_a_small_frame_max_client(broker, warren, queue):
    body = os.urandom(1024 * 1024)
    with warren.connect(frame_max=4096) as small:
        small.channel().basic_publish("", queue, body)
    with warren.connect(frame_max=4096) as small:
        method, _, got = small.channel().basic_get(queue, auto_ack=True)
    assert got == body
    with warren.connect() as big:
        big.channel().basic_publish("", queue, body)
    with warren.connect(frame_max=4096) as small:
        ch = small.channel()
        received = []
        ch.basic_consume(queue, lambda c, m, p, b: received.append(b), auto_ack=True)
        for _ in range(100):
            if received:
                break
            small.process_data_events(time_limit=0.1)
    assert received == [body]


def test_many_clients_interleave_on_one_upstream(broker, warren, queue):
    tag = uuid.uuid4().hex[:6]
    conns = [warren.connect() for _ in range(10)]
    chans = [c.channel() for c in conns]
    for round_ in range(20):
        for i, ch in enumerate(chans):
            ch.basic_publish("", queue, f"{tag}:{i}:{round_}".encode())
    for c in conns:
        c.close()
    assert sorted(drain(broker.port, queue)) == sorted(f"{tag}:{i}:{r}" for i in range(10) for r in range(20))
    assert len(broker.warren_connections(user="guest")) == 1


def test_a_burst_of_new_clients_opens_one_upstream_connection(broker, warren):
    """Cold start: clients that log in at the same moment share the first
    login's upstream connection instead of opening one each."""
    import threading
    barrier = threading.Barrier(8)
    conns, errors = [], []

    def client():
        barrier.wait(timeout=10)
        try:
            conn = warren.connect()
            conn.channel()
            conns.append(conn)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(conns) == 8, errors
    assert len(broker.warren_connections(user="guest")) == 1
    for conn in conns:
        conn.close()


def test_a_client_taking_every_channel_never_takes_a_bystanders_next_one(broker, warren, queue):
    """One client opens channels by the thousand on the upstream connection a
    bystander shares: it is refused (530) once the free channels are those
    kept for the others, and the bystander still gets its guaranteed ones."""
    bystander = warren.connect()
    first = bystander.channel()
    hog = RawClient(warren.port, timeout=30)
    hog.open()
    hog.send(b"".join(method(n, 20, 10, shortstr("")) for n in range(1, 2048)))
    opened, close = 0, None
    while close is None:
        reply = hog.read_method()
        if reply.method == (20, 11):
            opened += 1
        elif reply.method == (10, 50):
            close = reply.close_reply()
    assert close[0] == 530 and "kept for the other clients" in close[1], close
    # The upstream's 2047 channels, less the bystander's guaranteed 8.
    assert 2047 - 8 - 1 <= opened <= 2047 - 8, opened
    more = [bystander.channel() for _ in range(7)]
    for ch in [first, *more]:
        ch.basic_publish("", queue, b"mine")
    assert len(broker.warren_connections(user="guest")) == 1
    hog.close()
    bystander.close()
