"""Protocol details a client can observe on the wire."""
import struct

import pytest

from rawamqp import FRAME_BODY, FRAME_HEADER, PROTOCOL_HEADER, RawClient, frame, method, shortstr


def test_other_protocol_versions_get_the_0_9_1_header_and_a_close(warren):
    raw = RawClient(warren.port)
    raw.send(b"AMQP\x01\x01\x00\x0a")
    assert raw.read_exact(8) == PROTOCOL_HEADER
    assert raw.sock.recv(1) == b""


def test_tune_offers_configured_limits_and_broker_frame_max(warren_factory):
    w = warren_factory("--channel-max", "100", "--heartbeat", "30")
    raw = RawClient(w.port)
    channel_max, frame_max, heartbeat = raw.open(channel_max=100)
    assert (channel_max, frame_max, heartbeat) == (100, 131072, 30)
    raw.close()


@pytest.mark.parametrize("tune,expected", [
    ({"channel_max": 0}, "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"),
    ({"frame_max": 0}, "negotiated frame_max = 0 (no limit) is higher than the maximum allowed value (131072)"),
    ({"frame_max": 1024}, "negotiated frame_max = 1024 is lower than the minimum allowed value (4096)"),
])
def test_tune_ok_beyond_the_offer_is_refused_as_rabbitmq_does(warren, tune, expected):
    raw = RawClient(warren.port)
    raw.handshake(**tune)
    reply = raw.read_method()
    assert reply.close_reply() == (530, f"NOT_ALLOWED - {expected}")


def test_channels_beyond_channel_max_are_530_as_rabbitmq_counts_them(warren):
    """RabbitMQ limits how many channels are open, not their numbers: a
    channel numbered above channel_max opens, the (channel_max+1)th does not."""
    raw = RawClient(warren.port)
    raw.open(channel_max=3)
    for number in (1, 2, 9):
        raw.send(method(number, 20, 10, shortstr("")))
        assert raw.read_method().method == (20, 11)
    raw.send(method(4, 20, 10, shortstr("")))
    reply = raw.read_method()
    assert reply.method == (10, 50)
    assert reply.close_reply() == (
        530, "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)")


def test_frames_on_an_unopened_channel_are_504_for_that_client_only(warren):
    bystander = warren.connect()
    ch = bystander.channel()
    raw = RawClient(warren.port)
    raw.open()
    raw.send(method(3, 50, 10, struct.pack("!H", 0) + shortstr("q") + b"\x00" + struct.pack("!I", 0)))
    reply = raw.read_method()
    assert reply.close_reply() == (504, "CHANNEL_ERROR - expected 'channel.open'")
    ch.queue_declare("", exclusive=True)
    bystander.close()


def test_server_only_methods_close_the_sender_alone(warren):
    """basic.deliver from a client is a connection error at the broker (once
    its content arrived, as RabbitMQ assembles it first); on a shared
    upstream it would take every neighbour down."""
    bystander = warren.connect()
    ch = bystander.channel()
    raw = RawClient(warren.port)
    raw.open()
    raw.send(method(1, 20, 10, shortstr("")))
    assert raw.read_method().method == (20, 11)
    raw.send(method(1, 60, 60, shortstr("ctag") + struct.pack("!QB", 1, 0) + shortstr("") + shortstr("q"))
             + frame(FRAME_HEADER, 1, struct.pack("!HHQH", 60, 0, 1, 0)) + frame(FRAME_BODY, 1, b"x"))
    reply = raw.read_method()
    assert reply.method == (10, 50)
    assert reply.close_reply() == (503, "COMMAND_INVALID - unimplemented method")
    ch.queue_declare("", exclusive=True)
    assert bystander.is_open
    bystander.close()


def test_unknown_method_ids_are_540(warren):
    raw = RawClient(warren.port)
    raw.open()
    raw.send(method(1, 20, 10, shortstr("")))
    assert raw.read_method().method == (20, 11)
    raw.send(method(1, 60, 250))
    reply = raw.read_method()
    assert reply.close_reply() == (540, "NOT_IMPLEMENTED - unknown method 60.250")


@pytest.mark.parametrize("capable", [True, False])
def test_consumer_cancel_notification_only_for_clients_that_asked(broker, warren, capable):
    """When a queue with consumers is deleted, the broker tells a consumer
    with Basic.Cancel only if its client advertised consumer_cancel_notify."""
    import uuid
    from conftest import connect
    from rawamqp import Channel

    seen = {}
    for port in (broker.port, warren.port):
        doomed, other = f"cancel.{uuid.uuid4().hex[:8]}", f"cancel.other.{uuid.uuid4().hex[:8]}"
        with connect(broker.port) as direct:
            direct.channel().queue_declare(doomed)
            direct.channel().queue_declare(other)
        raw = RawClient(port)
        raw.open(capabilities={"consumer_cancel_notify": capable})
        ch = Channel(raw, 1).open()
        raw.send(method(1, 60, 20, struct.pack("!H", 0) + shortstr(doomed) + shortstr("ctag")
                        + b"\x00" + struct.pack("!I", 0)))
        assert raw.read_method().method == (60, 21)
        with connect(broker.port) as direct:
            direct.channel().queue_delete(doomed)
        seen[port] = [f.method for f in ch.declare_passive(other)]
        raw.close()
        with connect(broker.port) as direct:
            direct.channel().queue_delete(other)
    assert seen[warren.port] == seen[broker.port]
    assert ((60, 30) in seen[broker.port]) == capable
