"""Routes: `[[route]]` tables send a vhost or a user to its own broker nodes
(here a second, independent broker), optionally under another vhost name
there; the rest goes to the default route. A reload that changes a route
while clients run drops nobody, and new clients of the changed route go
where it points now."""
import json
import signal
import subprocess
import threading
import uuid

import pika
import pytest

from conftest import WARREN, params, wait_until

ROUTED_USER = "routed-user"
ROUTED_PASSWORD = "routed-secret"


def route_table(name, broker_port, vhosts=None, users=None, upstream_vhost=None):
    lines = ["[[route]]", f'name = "{name}"', f'upstream = ["amqp://127.0.0.1:{broker_port}"]']
    if vhosts:
        lines.append(f"vhosts = {json.dumps(vhosts)}")
    if users:
        lines.append(f"users = {json.dumps(users)}")
    if upstream_vhost:
        lines.append(f'upstream_vhost = "{upstream_vhost}"')
    return "\n".join(lines) + "\n"


def write_config(path, default_port, *routes):
    path.write_text(f'upstream = ["amqp://127.0.0.1:{default_port}"]\n' + "".join(routes))


@pytest.fixture(scope="module")
def routed_user(extra_broker):
    """A user that exists only on the extra broker."""
    extra_broker.ctl("add_user", ROUTED_USER, ROUTED_PASSWORD)
    extra_broker.ctl("set_permissions", "-p", "/", ROUTED_USER, ".*", ".*", ".*")
    return ROUTED_USER


def declare_through(warren, vhost="/", user="guest", password="guest"):
    """Declares a fresh queue through warren; returns its name."""
    name = f"route.{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(params(warren.port, user=user, password=password, vhost=vhost)) as conn:
        conn.channel().queue_declare(name, auto_delete=False)
    return name


def drop_queue(broker, name):
    broker.ctl("delete_queue", name, check=False)


def test_a_vhost_route_goes_to_its_broker_under_its_upstream_vhost(broker, extra_broker, warren_factory, tmp_path):
    cfg = tmp_path / "warren.toml"
    write_config(cfg, broker.port, route_table("billing", extra_broker.port, vhosts=["billing-*"], upstream_vhost="/"))
    w = warren_factory("-c", str(cfg), upstreams=[])
    routed = declare_through(w, vhost="billing-eu")
    default = declare_through(w)
    try:
        assert routed in extra_broker.queue_names("/") and routed not in broker.queue_names("/")
        assert default in broker.queue_names("/") and default not in extra_broker.queue_names("/")
        [route] = [r for r in w.get_json("/api/routes") if r["name"] == "billing"]
        assert route["vhosts"] == ["billing-*"] and route["upstream_vhost"] == "/"
        assert route["upstream"] == [f"127.0.0.1:{extra_broker.port}"]
        metrics = w.http_get("/metrics")
        assert 'warren_route_upstream_connections{route="billing"} 1' in metrics, metrics
        assert 'warren_route_upstream_connections{route="default"} 1' in metrics
        pools = {(p["route"], p["vhost"]) for p in w.get_json("/api/pools")}
        assert {("billing", "billing-eu"), ("default", "/")} <= pools, pools
        listed = subprocess.run([str(WARREN), "ctl", "--admin", w.http_url(""), "list", "routes"],
                                capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        assert "billing" in listed.stdout and "billing-*" in listed.stdout and "default" in listed.stdout
    finally:
        drop_queue(extra_broker, routed)
        drop_queue(broker, default)


def test_a_user_route_checks_the_login_with_its_own_broker(broker, extra_broker, routed_user, warren_factory,
                                                           tmp_path):
    cfg = tmp_path / "warren.toml"
    write_config(cfg, broker.port, route_table("team", extra_broker.port, users=[routed_user]))
    w = warren_factory("-c", str(cfg), upstreams=[])
    name = declare_through(w, user=routed_user, password=ROUTED_PASSWORD)
    try:
        assert name in extra_broker.queue_names("/")
        # The default route's broker does not know the user: the route's does.
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(params(broker.port, user=routed_user, password=ROUTED_PASSWORD))
        with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                            pika.exceptions.AuthenticationError)):
            pika.BlockingConnection(params(w.port, user=routed_user, password="wrong"))
    finally:
        drop_queue(extra_broker, name)


def test_a_wrong_password_on_a_vhost_route_is_refused_by_that_broker(broker, extra_broker, routed_user,
                                                                     warren_factory, tmp_path):
    # The route depends on the vhost, so the login is checked when the
    # client names it: still the broker's own 403.
    cfg = tmp_path / "warren.toml"
    write_config(cfg, broker.port, route_table("team", extra_broker.port, vhosts=["team"], upstream_vhost="/"))
    w = warren_factory("-c", str(cfg), upstreams=[])
    with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
        pika.BlockingConnection(params(w.port, user=routed_user, password="wrong", vhost="team"))
    assert "403" in repr(refused.value) or "ACCESS_REFUSED" in repr(refused.value), repr(refused.value)
    name = declare_through(w, vhost="team", user=routed_user, password=ROUTED_PASSWORD)
    drop_queue(extra_broker, name)
    assert "broker refused the client" in w.log_text()


class Publisher(threading.Thread):
    """Publishes on one connection until stopped; counts errors."""

    def __init__(self, port, vhost, queue):
        super().__init__(daemon=True)
        self.conn = pika.BlockingConnection(params(port, vhost=vhost))
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()
        self.queue = queue
        self.sent = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set() and self.sent < 100_000:
                self.channel.basic_publish("", self.queue, b"x")
                self.sent += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(30)
        self.conn.close()


def test_a_reload_that_moves_a_route_drops_nobody(broker, extra_broker, warren_factory, tmp_path):
    cfg = tmp_path / "warren.toml"
    write_config(cfg, broker.port, route_table("moving", extra_broker.port, vhosts=["moving"], upstream_vhost="/"))
    w = warren_factory("-c", str(cfg), upstreams=[])
    on_default = declare_through(w)
    on_route = declare_through(w, vhost="moving")
    publishers = [Publisher(w.port, "/", on_default), Publisher(w.port, "moving", on_route)]
    try:
        for p in publishers:
            p.start()
        wait_until(lambda: all(p.sent > 10 for p in publishers), 30, "both publishers to run")
        # The route now points at the default broker.
        write_config(cfg, broker.port, route_table("moving", broker.port, vhosts=["moving"], upstream_vhost="/"))
        w.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in w.log_text(), 10, "the reload")
        assert "routes changed" in w.log_text() and "moving" in w.log_text()
        counts = [p.sent for p in publishers]
        wait_until(lambda: all(p.sent > c + 10 for p, c in zip(publishers, counts)), 30,
                   "both publishers to go on after the reload")
        moved = declare_through(w, vhost="moving")
        assert moved in broker.queue_names("/") and moved not in extra_broker.queue_names("/")
        drop_queue(broker, moved)
    finally:
        for p in publishers:
            p.finish()
        drop_queue(broker, on_default)
        drop_queue(extra_broker, on_route)
    assert [p.error for p in publishers] == [None, None]


def test_upstream_connections_are_named_by_the_template(broker, extra_broker, warren_factory, tmp_path):
    cfg = tmp_path / "warren.toml"
    write_config(cfg, broker.port, route_table("billing", extra_broker.port, vhosts=["billing"], upstream_vhost="/"))
    template = "app-proxy {route} {user}@{vhost} via {node} pid {pid} on {listen}"
    w = warren_factory("-c", str(cfg), "--upstream-connection-name", template, upstreams=[])
    with w.connect() as default_client, w.connect(vhost="billing") as routed_client:
        default_client.channel()
        routed_client.channel()
        names = {c["name"] for c in broker.connections() + extra_broker.connections()
                 if c["name"].startswith("app-proxy ")}
        pid = w.proc.pid
        assert names == {
            f"app-proxy default guest@/ via 127.0.0.1:{broker.port} pid {pid} on 127.0.0.1:{w.port}",
            f"app-proxy billing guest@billing via 127.0.0.1:{extra_broker.port} pid {pid} on 127.0.0.1:{w.port}",
        }, names
        # Each upstream connection lists the client on it.
        ids = {c["vhost"]: c["id"] for c in w.get_json("/api/clients")}
        on = {u["route"]: u["client_ids"] for u in w.get_json("/api/upstreams")}
        assert on == {"default": [ids["/"]], "billing": [ids["billing"]]}, on
    # A name with {vhost} is only known at Connection.Open: a wrong password
    # is refused there, with the broker's 403.
    with pytest.raises(pika.exceptions.AMQPConnectionError) as refused:
        pika.BlockingConnection(params(w.port, password="wrong"))
    assert "403" in repr(refused.value) or "ACCESS_REFUSED" in repr(refused.value), repr(refused.value)


def test_an_unknown_placeholder_is_a_clear_error():
    out = subprocess.run([str(WARREN), "--check-config", "/dev/null", "--upstream-connection-name", "w {hostname}",
                          "amqp://127.0.0.1"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "unknown placeholder '{hostname}'" in out.stderr, out.stderr
