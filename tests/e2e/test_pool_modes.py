"""Pool modes: with consumer_mode "dedicated", a client that starts
consuming (or declares an exclusive queue, or selects a transaction) is
moved to an upstream connection of its own before that first method
reaches the broker; publishers keep sharing. Dedicated connections are
pooled: the next such client reuses a free one."""
import pika

from conftest import wait_until


def client_upstream(w, client_id):
    return next(c["upstream"] for c in w.get_json("/api/clients") if c["id"] == client_id)


def newest_client(w):
    return max(c["id"] for c in w.get_json("/api/clients"))


def upstream_clients(w):
    return {u["id"]: u["client_ids"] for u in w.get_json("/api/upstreams")}


def test_a_consumer_keeps_its_own_connection_while_publishers_churn(broker, warren_factory, queue):
    w = warren_factory("--consumer-mode", "dedicated")
    publisher = w.connect()
    publisher.channel().basic_publish("", queue, b"before")
    shared = client_upstream(w, newest_client(w))

    consumer = w.connect()
    consumer_id = newest_client(w)
    channel = consumer.channel()
    assert client_upstream(w, consumer_id) == shared, "it shares until it consumes"
    received = []
    channel.basic_consume(queue, lambda ch, method, props, body: (received.append(body),
                                                                  ch.basic_ack(method.delivery_tag)))
    own = client_upstream(w, consumer_id)
    assert own != shared and upstream_clients(w)[own] == [consumer_id]
    kinds = {u["id"]: u["kind"] for u in w.get_json("/api/upstreams")}
    assert (kinds[own], kinds[shared]) == ("dedicated", "shared")
    assert "warren_dedicated_upstream_connections 1" in w.http_get("/metrics")

    # Publishers come and go on the shared connection; the consumer stays.
    for i in range(30):
        with w.connect() as cycle:
            cycle.channel().basic_publish("", queue, f"m{i}".encode())
            assert client_upstream(w, newest_client(w)) == shared
    deadline_reached = wait_until(lambda: consumer.process_data_events(time_limit=0.2) or len(received) >= 31,
                                  20, "the consumer to get every message")
    assert deadline_reached and received == [b"before"] + [f"m{i}".encode() for i in range(30)]
    assert client_upstream(w, consumer_id) == own
    assert len(broker.warren_connections()) == 2
    consumer.close()
    publisher.close()

    # The next consumer reuses the free dedicated connection.
    with w.connect() as again:
        again_id = newest_client(w)
        again.channel().basic_consume(queue, lambda *args: None, auto_ack=True)
        assert client_upstream(w, again_id) == own


def test_a_transaction_moves_with_its_channel_state(warren_factory, queue, broker):
    w = warren_factory("--consumer-mode", "dedicated")
    with w.connect() as sharing, w.connect() as tx_client:
        sharing.channel()
        tx_id = newest_client(w)
        channel = tx_client.channel()
        channel.basic_qos(prefetch_count=7)
        before = client_upstream(w, tx_id)
        channel.tx_select()
        assert client_upstream(w, tx_id) != before
        channel.basic_publish("", queue, b"in a transaction")
        channel.tx_commit()
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port)) as direct:
        method, _, body = direct.channel().basic_get(queue, auto_ack=True)
        assert body == b"in a transaction"


def test_shared_mode_keeps_consumers_on_the_shared_connection(warren_factory, queue):
    w = warren_factory()
    with w.connect() as publisher, w.connect() as consumer:
        publisher.channel()
        shared = client_upstream(w, newest_client(w) - 1)
        consumer_id = newest_client(w)
        consumer.channel().basic_consume(queue, lambda *args: None, auto_ack=True)
        assert client_upstream(w, consumer_id) == shared


def test_a_client_whose_move_fails_consumes_shared_and_is_not_held_again(warren_factory, tmp_path, queue):
    # Its user may hold one upstream connection: the move to a connection of
    # its own is refused by the quota, so the consumer stays shared.
    cfg = tmp_path / "warren.toml"
    cfg.write_text('[[quota]]\nname = "one"\nusers = "guest"\nmax_upstream_connections = 1\n')
    w = warren_factory("-c", str(cfg), "--consumer-mode", "dedicated")
    with w.connect() as conn:
        consumer_id = newest_client(w)
        first, second = conn.channel(), conn.channel()
        shared = client_upstream(w, consumer_id)
        first.basic_consume(queue, lambda *args: None, auto_ack=True)
        second.basic_consume(queue, lambda *args: None, auto_ack=True)
        assert client_upstream(w, consumer_id) == shared
    assert w.log_text().count("client keeps sharing its upstream connection") == 1, w.log_text()[-3000:]


def test_dedicated_mode_without_confirms_is_a_configuration_error():
    import subprocess
    from conftest import WARREN
    out = subprocess.run([str(WARREN), "--check-config", "/dev/null", "--consumer-mode", "dedicated",
                          "--hold-seconds", "0", "amqp://127.0.0.1"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "needs --hold-seconds above 0" in out.stderr, out.stderr
