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
