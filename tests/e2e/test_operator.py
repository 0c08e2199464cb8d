"""Operator commands (`warren ctl list|kill|drain-node|undrain-node|pause|
resume`) against a running warren and a real broker: each does what it says
to its target and nothing to the clients beside it."""
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request

import pika
import pytest

from conftest import WARREN, connect, drain, wait_until


def ctl(w, *args, env=None):
    return subprocess.run([str(WARREN), "ctl", "--admin", w.http_url(""), *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


def ok(w, *args, env=None):
    out = ctl(w, *args, env=env)
    assert out.returncode == 0, (args, out.stderr)
    return out.stdout


def client_ids(w):
    return {c["id"] for c in w.get_json("/api/clients")}


def newest_client(w, before):
    """The one client that connected since `before` (a set of ids)."""
    new = wait_until(lambda: client_ids(w) - before, 10, "the new client in /api/clients")
    assert len(new) == 1, new
    return new.pop()


def test_list_shows_each_collection_as_a_table_and_as_json(warren, broker):
    with warren.connect(client_properties={"connection_name": "lister\x1b[2J"}) as conn:
        conn.channel()
        [client] = warren.get_json("/api/clients")
        table = ok(warren, "list", "clients").splitlines()
        assert table[0].split()[:4] == ["ID", "PEER", "USER", "VHOST"]
        row = table[1].split()
        assert (row[0], row[2], row[3]) == (str(client["id"]), "guest", "/")
        # The client's escape sequence reaches the terminal escaped.
        assert "\x1b" not in "\n".join(table) and "lister\\u{1b}[2J" in table[1], table
        assert json.loads(ok(warren, "list", "clients", "--json"))[0]["id"] == client["id"]

        pools = ok(warren, "list", "pools").splitlines()
        assert pools[1].split() == ["default", "/", "guest", "1", "1"], pools
        upstreams = ok(warren, "list", "upstreams").splitlines()
        assert upstreams[1].split()[1:3] == ["default", f"127.0.0.1:{broker.port}"], upstreams
        nodes = ok(warren, "list", "nodes").splitlines()
        assert nodes[0].split() == ["ROUTE", "NODE", "TLS", "STATE", "FAILURES", "RETRY_IN_S", "UPSTREAMS"]
        assert nodes[1].split() == ["default", f"127.0.0.1:{broker.port}", "false", "up", "0", "-", "1"], nodes


def test_kill_closes_that_client_with_320_and_spares_its_neighbour(warren, broker, queue):
    with warren.connect() as bystander:
        bystander_channel = bystander.channel()
        before = client_ids(warren)
        victim = warren.connect()
        victim_id = newest_client(warren, before)
        channel = victim.channel()
        upstreams = {c["id"]: c["upstream"] for c in warren.get_json("/api/clients")}
        assert len(set(upstreams.values())) == 1, "both on one upstream connection"

        assert ok(warren, "kill", str(victim_id)) == f"client {victim_id} closed\n"
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            victim.process_data_events(time_limit=10)
            channel.basic_publish("", queue, b"after the kill")
        assert closed.value.reply_code == 320
        assert closed.value.reply_text == "CONNECTION_FORCED - closed by an operator of warren (warren ctl kill)"

        bystander_channel.confirm_delivery()
        bystander_channel.basic_publish("", queue, b"bystander", mandatory=True)
    assert drain(broker.port, queue) == ["bystander"]
    assert "client closed by an operator" in warren.log_text()

    out = ctl(warren, "kill", str(victim_id))
    assert (out.returncode, out.stderr) == (1, f"no client {victim_id}\n")


def test_drain_node_sends_new_clients_elsewhere_and_closes_its_connections_once_clients_moved(
        warren_factory, broker, queue):
    # Two names for the one test broker: two nodes as warren sees them.
    nodes = [f"127.0.0.1:{broker.port}", f"localhost:{broker.port}"]
    w = warren_factory(upstreams=[f"amqp://{node}" for node in nodes])
    first = w.connect()
    first.channel()
    [upstream] = w.get_json("/api/upstreams")
    drained = upstream["node"]
    other = next(n for n in nodes if n != drained)

    assert ok(w, "drain-node", drained).startswith(f"node {drained} drained")
    states = {n["node"]: n["state"] for n in w.get_json("/api/nodes")}
    assert states == {drained: "drained", other: "up"}

    # A new client goes to the other node. The first, which only opened a
    # channel, moves there too (operations.md, "Drain a broker node"), and
    # the drained node's connection closes once it has no client left.
    with w.connect() as second:
        second.channel().basic_publish("", queue, b"second")
        wait_until(lambda: {u["node"] for u in w.get_json("/api/upstreams")} == {other}, 15,
                   "the first client moved and the drained node's connection closed")
        first_channel = first.channel()
        first_channel.confirm_delivery()
        first_channel.basic_publish("", queue, b"first", mandatory=True)
        first.close()
    assert sorted(drain(broker.port, queue)) == ["first", "second"]

    assert ok(w, "undrain-node", drained) == f"node {drained} takes new clients\n"
    assert {n["node"]: n["state"] for n in w.get_json("/api/nodes")}[drained] == "up"
    out = ctl(w, "drain-node", "127.0.0.1:1")
    assert out.returncode == 1 and out.stderr.startswith("no node 127.0.0.1:1"), out.stderr


def test_draining_the_only_node_keeps_serving_new_clients(warren, broker, queue):
    node = f"127.0.0.1:{broker.port}"
    with warren.connect() as first:
        first.channel()
        [first_upstream] = [c["upstream"] for c in warren.get_json("/api/clients")]
        ok(warren, "drain-node", node)
        # No other node: the drained one is the last resort. The connection
        # opened there serves, and the next client finds it.
        used = []
        for body in ("a", "b"):
            with warren.connect() as conn:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.basic_publish("", queue, body.encode(), mandatory=True)
                used += [c["upstream"] for c in warren.get_json("/api/clients") if c["upstream"] != first_upstream]
        assert len(used) == 2 and used[0] == used[1], (first_upstream, used)
        assert [n["state"] for n in warren.get_json("/api/nodes")] == ["drained"]
    assert sorted(drain(broker.port, queue)) == ["a", "b"]


def publish_in_background(w, queue, vhost="/"):
    """Connects, publishes one message with confirms in a thread; returns
    (thread, outcome list)."""
    outcome = []

    def run():
        try:
            with w.connect(vhost=vhost) as conn:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.basic_publish("", queue, b"held", mandatory=True)
                outcome.append("confirmed")
        except Exception as e:  # noqa: BLE001 - the test reports what happened
            outcome.append(repr(e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_pause_holds_publishes_and_channel_opens_of_that_vhost_until_resume(warren, broker, queue):
    app_queue = f"{queue}.app"
    with connect(broker.port, vhost="/app") as conn:
        conn.channel().queue_declare(app_queue, auto_delete=False)
    publisher = warren.connect()
    channel = publisher.channel()
    channel.confirm_delivery()

    assert "publishes and channel opens wait" in ok(warren, "pause", "--vhost", "/")
    assert warren.get_json("/api/overview")["paused"] == {"all": False, "vhosts": ["/"]}
    # A publish on an open channel and a new client's channel open both wait.
    waiting_publish = threading.Thread(target=channel.basic_publish, args=("", queue, b"open channel"),
                                       kwargs={"mandatory": True}, daemon=True)
    before = client_ids(warren)
    waiting_publish.start()
    new_client, outcome = publish_in_background(warren, queue)
    wait_until(lambda: sum(c["paused"] for c in warren.get_json("/api/clients")) == 2, 15,
               "both clients held")
    assert client_ids(warren) - before, "the new client logged in: only its channel waits"

    # Another vhost is not held.
    with warren.connect(vhost="/app") as bystander:
        ch = bystander.channel()
        ch.confirm_delivery()
        ch.basic_publish("", app_queue, b"bystander", mandatory=True)
    # Nothing of the held publishes reached the broker.
    with connect(broker.port) as direct:
        assert direct.channel().queue_declare(queue, passive=True).method.message_count == 0

    assert ok(warren, "resume", "--vhost", "/") == "vhost '/': resumed\n"
    waiting_publish.join(15)
    new_client.join(15)
    assert not waiting_publish.is_alive() and outcome == ["confirmed"], outcome
    publisher.close()
    assert sorted(drain(broker.port, queue)) == ["held", "open channel"]
    with connect(broker.port, vhost="/app") as conn:
        assert conn.channel().queue_delete(app_queue).method.message_count == 1


def test_a_paused_client_can_be_killed(warren, queue):
    ok(warren, "pause")
    try:
        before = client_ids(warren)
        thread, outcome = publish_in_background(warren, queue)
        held = wait_until(lambda: [c["id"] for c in warren.get_json("/api/clients") if c["paused"]], 15,
                          "the client held")
        assert set(held) <= client_ids(warren) - before
        ok(warren, "kill", str(held[0]))
        thread.join(15)
        assert len(outcome) == 1 and "320" in outcome[0] and "warren ctl kill" in outcome[0], outcome
    finally:
        ok(warren, "resume")


def test_pause_without_a_vhost_holds_all_until_resume_without_one(warren, queue):
    ok(warren, "pause")
    thread, outcome = publish_in_background(warren, queue)
    wait_until(lambda: any(c["paused"] for c in warren.get_json("/api/clients")), 15, "the client held")
    out = ctl(warren, "resume", "--vhost", "/")
    assert out.returncode == 1 and "resume without --vhost" in out.stderr, out.stderr
    assert ok(warren, "resume") == "every vhost: resumed\n"
    thread.join(15)
    assert outcome == ["confirmed"]
    assert ok(warren, "resume") == "every vhost: was not paused\n"


def post(w, path, headers=None):
    request = urllib.request.Request(w.http_url(path), method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_actions_are_posts_refused_to_other_sites_and_without_the_token(warren_factory):
    token = "operator-token-0123456789"
    w = warren_factory("--http-token", token)
    auth = {"Authorization": f"Bearer {token}"}
    assert post(w, "/api/pause")[0] == 401
    assert post(w, "/api/pause", {**auth, "Origin": "http://evil.example"})[0] == 403
    # A GET of an action is refused, and nothing was paused by any of it.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(w.http_url("/api/pause"), headers=auth), timeout=5)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "POST"
    overview = urllib.request.Request(w.http_url("/api/overview"), headers=auth)
    with urllib.request.urlopen(overview, timeout=5) as answer:
        assert json.load(answer)["paused"] == {"all": False, "vhosts": []}
    assert post(w, "/api/kill?client=x", auth) == (400, "give the client's id: /api/kill?client=ID\n")

    out = ctl(w, "pause")
    assert out.returncode == 1 and "needs the token" in out.stderr, out.stderr
    out = ctl(w, "pause", env={"HTTP_TOKEN": token})
    assert out.returncode == 0, out.stderr
    same_origin = {**auth, "Origin": w.http_url("").rstrip("/")}
    assert post(w, "/api/resume", same_origin) == (200, "every vhost: resumed\n")


def test_on_loopback_without_a_token_only_browsers_of_other_sites_are_refused(warren):
    assert post(warren, "/api/pause", {"Origin": "http://evil.example"})[0] == 403
    assert post(warren, "/api/pause", {"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert post(warren, "/api/pause", {"Sec-Fetch-Site": "same-site"})[0] == 403
    assert warren.get_json("/api/overview")["paused"] == {"all": False, "vhosts": []}
    assert post(warren, "/api/pause", {"Sec-Fetch-Site": "none"}) == \
        (200, "every vhost: publishes and channel opens wait until resume\n")
    assert post(warren, "/api/resume") == (200, "every vhost: resumed\n")


def test_actions_beyond_loopback_need_a_token(warren_factory):
    w = warren_factory("--http-address", "0.0.0.0")
    status, text = post(w, "/api/pause")
    assert (status, text) == (403, "operator actions on an endpoint beyond loopback need --http-token\n")
