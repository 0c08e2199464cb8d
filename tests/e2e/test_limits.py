"""Limits: client connections (--max-clients), upstream connections per pool
(--max-upstream-connections), and the upstream lifetime that bounds how long
a revoked password keeps working through a pool."""
import uuid

import pika
import pytest

from conftest import connect, params, wait_until


def attempt(port, **kw):
    """None if a client gets in, else the error (with code and text) it got."""
    try:
        pika.BlockingConnection(params(port, **kw)).close()
        return None
    except pika.exceptions.AMQPConnectionError as e:
        return str(e)


def refusal(port, **kw):
    text = attempt(port, **kw)
    assert text is not None, "the client got in"
    return text


def test_clients_beyond_max_clients_get_530_and_a_freed_place_is_reused(warren_factory):
    w = warren_factory("--max-clients", "2")
    first, second = w.connect(), w.connect()
    text = refusal(w.port)
    assert "(530)" in text and "connection limit (2) is reached" in text, text
    # Those in are unharmed; a place freed is a place taken.
    first.channel().queue_declare("", exclusive=True)
    first.close()
    with w.connect() as third:
        third.channel()
    second.close()
    assert 'warren_client_handshakes_total{outcome="over_limit"} 1' in w.http_get("/metrics")


def test_a_full_pool_refuses_with_530_instead_of_opening_more(broker, warren_factory):
    w = warren_factory("--max-upstream-connections", "1", "--max-upstream-channels", "4", "--channel-max", "4")
    holder = w.connect()
    for _ in range(4):
        holder.channel()
    text = refusal(w.port)
    assert "(530)" in text and "all 1 upstream connections of user 'guest' on vhost '/' are full" in text, text
    # Another pool is not affected.
    with w.connect(user="app", password="secret", vhost="/app") as other:
        other.channel()
    holder.close()
    with w.connect() as later:
        later.channel()
    assert len(broker.warren_connections(user="guest")) == 1


@pytest.fixture
def temporary_user(broker):
    user, password = f"tmp-{uuid.uuid4().hex[:8]}", "first-password"
    broker.ctl("add_user", user, password)
    broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    yield user, password
    broker.ctl("delete_user", user, check=False)


def test_a_changed_password_stops_working_after_the_upstream_lifetime(broker, warren_factory, temporary_user):
    user, password = temporary_user
    w = warren_factory("--upstream-max-lifetime", "2")
    holder = w.connect(user=user, password=password)
    holder.channel()
    [holder_upstream] = [c["upstream"] for c in w.get_json("/api/clients")]
    broker.ctl("change_password", user, "second-password")
    # The pool vouched for the old password until its connection retired;
    # after that every new client is checked by the broker again.
    wait_until(lambda: "(403)" in (attempt(w.port, user=user, password=password) or ""), 10,
               "the old password to be refused")
    with w.connect(user=user, password="second-password") as fresh:
        fresh.channel().queue_declare("", exclusive=True)
    # The client on the retired connection keeps working, as it would on a
    # direct connection; the connection closes once it leaves.
    holder.channel().queue_declare("", exclusive=True)
    assert holder_upstream in [u["id"] for u in w.get_json("/api/upstreams")]
    holder.close()
    wait_until(lambda: holder_upstream not in [u["id"] for u in w.get_json("/api/upstreams")], 10,
               "the retired upstream to close")


def test_a_retired_upstream_closes_when_its_last_client_leaves(broker, warren_factory):
    w = warren_factory("--upstream-max-lifetime", "1", "--idle-connection-timeout", "3600")
    with w.connect() as conn:
        conn.channel()
        first = {c["name"] for c in broker.warren_connections()}
        assert len(first) == 1
    # Idle connections would stay an hour; a retired one goes at once.
    wait_until(lambda: not broker.warren_connections(), 10, "the retired upstream to close")
    with connect(w.port) as conn:
        conn.channel()


def test_a_pool_whose_connections_closed_is_forgotten(warren_factory):
    w = warren_factory("--idle-connection-timeout", "1")
    with w.connect(user="app", password="secret", vhost="/app") as conn:
        conn.channel()
        assert [(p["vhost"], p["user"]) for p in w.get_json("/api/pools")] == [("/app", "app")]
    # The idle upstream closes after 1 s; the pool, and the password it
    # kept to open more connections, go at the next prune (every 5 s).
    wait_until(lambda: w.get_json("/api/pools") == [], 15, "the empty pool to be removed")
    assert "\nwarren_pools 0\n" in w.http_get("/metrics")
