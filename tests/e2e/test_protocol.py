"""Protocol details a client can observe on the wire."""
import struct

from rawamqp import PROTOCOL_HEADER, RawClient, method, shortstr


def test_other_protocol_versions_get_the_0_9_1_header_and_a_close(warren):
    raw = RawClient(warren.port)
    raw.send(b"AMQP\x01\x01\x00\x0a")
    assert raw.read_exact(8) == PROTOCOL_HEADER
    assert raw.sock.recv(1) == b""


def test_tune_offers_configured_limits_and_broker_frame_max(warren_factory):
    w = warren_factory("--channel-max", "100", "--heartbeat", "30")
    raw = RawClient(w.port)
    channel_max, frame_max, heartbeat = raw.open()
    assert (channel_max, frame_max, heartbeat) == (100, 131072, 30)
    raw.close()


def test_channel_beyond_channel_max_is_530(warren):
    raw = RawClient(warren.port)
    raw.open(channel_max=5)
    raw.send(method(6, 20, 10, shortstr("")))
    reply = raw.read_method()
    assert reply.method == (10, 50)
    code, text = reply.close_reply()
    assert code == 530 and "channel_max" in text, text


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
    """basic.deliver from a client is a connection error at the broker; on a
    shared upstream it would take every neighbour down."""
    bystander = warren.connect()
    ch = bystander.channel()
    raw = RawClient(warren.port)
    raw.open()
    raw.send(method(1, 20, 10, shortstr("")))
    assert raw.read_method().method == (20, 11)
    raw.send(method(1, 60, 60, shortstr("ctag") + struct.pack("!QB", 1, 0) + shortstr("") + shortstr("q")))
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
