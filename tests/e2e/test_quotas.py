"""Quotas per user and per vhost (`[[quota]]`): counts are refused with the
code and words RabbitMQ uses for its own limits (530), a publish rate is
never refused but held to, and observe mode only logs and counts. Each
with a bystander of another user on the same warren."""
import subprocess
import time

import pika
import pytest

from conftest import WARREN, params
from rawamqp import Channel, RawClient


def start(warren_factory, tmp_path, quota, *args):
    cfg = tmp_path / "warren.toml"
    cfg.write_text('[[quota]]\nname = "q"\n' + quota)
    return warren_factory("-c", str(cfg), *args)


def bystander(w):
    """Another user's client: works whatever the quota does to guest."""
    with w.connect(user="app", password="secret", vhost="/app") as conn:
        conn.channel().queue_declare("", exclusive=True)


def test_clients_over_a_user_quota_get_530_at_open(warren_factory, tmp_path):
    w = start(warren_factory, tmp_path, 'users = "guest"\nmax_clients = 2\n')
    first, second = w.connect(), w.connect()
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        w.connect()
    assert "(530)" in str(refused.value) and "user connection limit (2) is reached" in str(refused.value)
    bystander(w)
    [usage] = w.get_json("/api/quotas")
    assert (usage["quota"], usage["key"], usage["clients"], usage["max_clients"]) == ("q", "guest", 2, 2)
    metrics = w.http_get("/metrics")
    assert 'warren_quota_clients{quota="q",key="guest"} 2' in metrics
    assert 'warren_quota_exceeded_total{quota="q",limit="clients",enforced="true"} 1' in metrics
    assert 'warren_client_handshakes_total{outcome="quota"} 1' in metrics
    listed = subprocess.run([str(WARREN), "ctl", "--admin", w.http_url(""), "list", "quotas"],
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:6] == \
        ["q", "user", "guest", "enforce", "2", "2"], listed.stdout + listed.stderr
    first.close()
    # The place is given back with the client.
    third = w.connect()
    for conn in (second, third):
        conn.close()


def test_clients_over_a_vhost_quota_get_rabbitmqs_vhost_words(warren_factory, tmp_path):
    w = start(warren_factory, tmp_path, 'vhosts = "/"\nmax_clients = 1\n')
    with w.connect():
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
            w.connect()
        assert "access to vhost '/' refused for user 'guest': connection limit (1) is reached" in str(refused.value)
        bystander(w)


def test_a_channel_over_the_quota_closes_that_client_only(warren_factory, tmp_path):
    w = start(warren_factory, tmp_path, 'users = "guest"\nmax_channels = 2\n')
    with w.connect() as neighbour:
        neighbour_channel = neighbour.channel()
        conn = w.connect()
        conn.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.channel()
        assert closed.value.reply_code == 530
        assert "maximum allowed user limit of (2)" in closed.value.reply_text
        # The neighbour shares the user and the upstream connection: it goes on.
        neighbour_channel.queue_declare("", exclusive=True)
        bystander(w)
        # Its channel left with the closed client: one may open again.
        neighbour.channel()


def test_upstream_connections_over_the_quota_are_refused(warren_factory, tmp_path):
    # One channel per upstream connection: each client needs its own.
    w = start(warren_factory, tmp_path, 'users = "guest"\nmax_upstream_connections = 1\n',
              "--max-upstream-channels", "1", "--guaranteed-channels", "1")
    with w.connect() as first:
        first.channel()
        with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
            w.connect().channel()
        assert "530" in str(refused.value) and "upstream connections in use" in str(refused.value)
        bystander(w)


def test_observe_mode_counts_and_logs_without_refusing(warren_factory, tmp_path):
    w = start(warren_factory, tmp_path, 'users = "*"\nmax_clients = 1\nmode = "observe"\n')
    with w.connect(), w.connect():
        pass
    assert 'warren_quota_exceeded_total{quota="q",limit="clients",enforced="false"} 1' in w.http_get("/metrics")
    assert "observe only: not enforced" in w.log_text()


@pytest.mark.parametrize("limit, size, count", [
    ('max_publish_rate = 200', 16, 500),
    ('max_publish_bytes_rate = 204800', 1024, 500),
])
def test_a_publisher_is_held_to_its_rate_and_loses_nothing(warren_factory, tmp_path, broker, queue,
                                                           limit, size, count):
    w = start(warren_factory, tmp_path, f'users = "guest"\n{limit}\n')
    with w.connect() as conn:
        channel = conn.channel()
        channel.confirm_delivery()  # each publish waits for the broker: the client feels the rate
        started = time.monotonic()
        for i in range(count):
            channel.basic_publish("", queue, bytes(size))
        elapsed = time.monotonic() - started
    # 200 messages/s, or 200 KiB/s of 1 KiB messages: 500 take about 2.5 s
    # (a tenth of a second's burst is free).
    rate = count / elapsed
    assert 180 <= rate <= 220, f"{rate:.0f}/s over {elapsed:.2f} s"
    with pika.BlockingConnection(params(broker.port)) as direct:
        assert direct.channel().queue_declare(queue, passive=True).method.message_count == count
    [usage] = w.get_json("/api/quotas")
    assert usage["throttled_seconds"] > 1.0, usage
    bystander(w)


def test_a_long_pause_is_told_with_connection_blocked(warren_factory, tmp_path, queue):
    w = start(warren_factory, tmp_path, 'users = "guest"\nmax_publish_bytes_rate = 10240\n')
    client = RawClient(w.port)
    client.open(capabilities={"connection.blocked": True, "publisher_confirms": True})
    channel = Channel(client, 1).open()
    channel.confirm_select()
    # 25 KiB at 10 KiB/s: the client is not read for about two seconds.
    channel.publish(queue, bytes(25 * 1024))
    blocked = client.read_method()
    assert blocked.method == (10, 60), blocked
    assert "quota 'q'" in blocked.payload.decode(errors="replace")
    frames = [client.read_method(), client.read_method()]
    assert sorted(f.method for f in frames) == [(10, 61), (60, 80)], frames  # Unblocked, and the ack
    client.close()


def test_a_wrong_password_takes_no_place_under_the_quota(warren_factory, tmp_path, broker):
    # A route by vhost checks the login only at Connection.Open: the quota
    # place is taken after the broker's word, so a stranger naming the user
    # hears the broker's 403, not the quota's 530.
    cfg = tmp_path / "warren.toml"
    cfg.write_text(f'[[route]]\nname = "r"\nvhosts = "/"\nupstream = "amqp://127.0.0.1:{broker.port}"\n'
                   '[[quota]]\nname = "q"\nusers = "guest"\nmax_clients = 1\n')
    w = warren_factory("-c", str(cfg))
    with w.connect():
        with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
            w.connect(password="wrong")
        assert "403" in repr(refused.value) or "ACCESS_REFUSED" in repr(refused.value), repr(refused.value)
        assert "530" not in repr(refused.value)
