"""Clients see their broker's server properties (product, version,
cluster_name, platform, capabilities) through warren as they would
directly, with only the capabilities warren honours and one key, `proxy`,
naming warren. warren learns them from a node at start, so even its first
client sees them."""
import json
import subprocess

from conftest import CLIENTS, connect, wait_until

AMQPLIB_PROPERTIES = """
const amqp = require('amqplib');
amqp.connect(process.argv[1]).then(async (conn) => {
  console.log(JSON.stringify(conn.connection.serverProperties));
  await conn.close();
});
"""


def pika_properties(port):
    conn = connect(port)
    try:
        return conn._impl.server_properties
    finally:
        conn.close()


def amqplib_properties(url):
    out = subprocess.run(["node", "-e", AMQPLIB_PROPERTIES, url], capture_output=True, text=True,
                         timeout=30, cwd=CLIENTS, check=True)
    return json.loads(out.stdout)


def test_the_first_client_sees_the_brokers_properties(broker, warren_factory):
    w = warren_factory()
    wait_until(lambda: "broker server properties learned" in w.log_text(), 15,
               "warren to ask a node for its properties at start")
    assert w.get_json("/api/overview")["clients_total"] == 0, "no client had logged in"
    direct = pika_properties(broker.port)
    through = pika_properties(w.port)
    assert through.pop("proxy").startswith("warren ")
    assert through == direct
    assert list(through) == list(direct), "in the broker's order"
    assert direct["product"] == "RabbitMQ" and direct["cluster_name"]


def test_every_library_sees_the_same_properties(broker, warren):
    url_direct = f"amqp://guest:guest@127.0.0.1:{broker.port}/%2F"
    for read, direct_at, warren_at in ((pika_properties, broker.port, warren.port),
                                       (amqplib_properties, url_direct, warren.url())):
        direct, through = read(direct_at), read(warren_at)
        assert through.pop("proxy").startswith("warren "), read.__name__
        assert through == direct, read.__name__


def test_capabilities_are_those_warren_honours_that_the_broker_has(warren):
    # RabbitMQ 3.10 has each of the nine warren honours, and no other.
    capabilities = pika_properties(warren.port)["capabilities"]
    assert capabilities == {name: True for name in (
        "publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify",
        "connection.blocked", "consumer_priorities", "authentication_failure_close", "per_consumer_qos",
        "direct_reply_to")}
