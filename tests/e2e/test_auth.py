"""Authentication happens at the broker, before warren answers Open-Ok, and
each (user, vhost, password) gets its own pool."""
import pika
import pytest

from conftest import connect
from rawamqp import RawClient


def test_users_and_vhosts_get_separate_pools(broker, warren):
    with warren.connect() as guest, warren.connect(user="app", password="secret", vhost="/app") as app:
        guest.channel().queue_declare("", exclusive=True)
        app.channel().queue_declare("", exclusive=True)
        assert len(broker.warren_connections(user="guest", vhost="/")) == 1
        assert len(broker.warren_connections(user="app", vhost="/app")) == 1


def test_wrong_password_is_refused_with_the_brokers_403(broker, warren):
    seen = []
    for port in (broker.port, warren.port):
        with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
            connect(port, password="wrong")
        seen.append(str(refused.value))
    assert seen[0] == seen[1] and "ACCESS_REFUSED" in seen[0], seen
    # The pooled connection for the right password is untouched, and a correct client still works.
    with warren.connect() as conn:
        conn.channel().queue_declare("", exclusive=True)


@pytest.mark.parametrize("capable", [True, False])
def test_wrong_password_is_refused_at_the_same_step_as_directly(broker, warren, capable):
    """The broker refuses a login right after Start-Ok (instead of Tune):
    with Connection.Close 403 for clients that advertise
    authentication_failure_close, by dropping the socket for the others."""
    caps = {"authentication_failure_close": capable}
    for port in (broker.port, warren.port):
        raw = RawClient(port)
        if capable:
            reply = raw.login(password="wrong", capabilities=caps)
            assert reply.method == (10, 50), (port, reply)
            code, text = reply.close_reply()
            assert code == 403 and text.startswith("ACCESS_REFUSED - Login was refused"), (port, code, text)
        else:
            with pytest.raises((EOFError, ConnectionResetError)):
                raw.login(password="wrong", capabilities=caps)
        raw.close()


@pytest.mark.parametrize("user,password,vhost,expected", [
    ("app", "secret", "/", "NOT_ALLOWED - access to vhost '/' refused for user 'app'"),
    ("guest", "guest", "/no-such-vhost", "NOT_ALLOWED - vhost /no-such-vhost not found"),
])
def test_vhost_refusal_is_the_brokers_530(broker, warren, user, password, vhost, expected):
    raw = RawClient(warren.port)
    raw.handshake(user=user, password=password, vhost=vhost)
    reply = raw.read_method()
    assert reply.method == (10, 50), reply
    assert reply.close_reply() == (530, expected)
    raw.close()
    # A client library sees the same error as with a direct connection.
    seen = []
    for port in (broker.port, warren.port):
        with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
            connect(port, user=user, password=password, vhost=vhost)
        seen.append((type(refused.value).__name__, str(refused.value)))
    assert seen[0] == seen[1] and expected in seen[0][1], seen
    with warren.connect(user="app", password="secret", vhost="/app") as conn:
        conn.channel()


def test_wrong_password_does_not_reuse_a_pool_opened_with_the_right_one(broker, warren):
    with warren.connect():
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            warren.connect(password="guest2")
    assert len(broker.warren_connections(user="guest")) == 1
    with connect(broker.port):
        pass
