"""Fixtures for warren's end-to-end tests: the test broker (started by
scripts/test.sh, one per run), warren processes on free ports, and helpers to
ask the broker what it sees."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pika
import pytest

ROOT = Path(__file__).resolve().parents[2]
WARREN = ROOT / "target" / "release" / "warren"
BROKER_PORT = int(os.environ.get("WARREN_TEST_BROKER_PORT", "5772"))
PYTHON = str(ROOT / ".cache" / "venv" / "bin" / "python")
CLIENTS = ROOT / "tests" / "clients"
# The throwaway CA (scripts/test-ca.sh) whose certificates the test broker's
# TLS listener (on BROKER_PORT + 10000) and the TLS tests use.
TLS_DIR = Path(os.environ.get("WARREN_TEST_TLS_DIR", ROOT / "target" / "test-ca"))
BROKER_TLS_PORT = BROKER_PORT + 10000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, what):
    """Polls `predicate` (a state on another process that has no event to
    await, such as the broker's connection list) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def amqp_url(port, user="guest", password="guest", vhost="/"):
    from urllib.parse import quote
    return f"amqp://{user}:{password}@127.0.0.1:{port}/{quote(vhost, safe='')}"


def params(port, user="guest", password="guest", vhost="/", **kw):
    kw.setdefault("heartbeat", 0)
    kw.setdefault("connection_attempts", 1)
    kw.setdefault("socket_timeout", 10)
    return pika.ConnectionParameters("127.0.0.1", port, vhost, pika.PlainCredentials(user, password), **kw)


def connect(port, **kw):
    return pika.BlockingConnection(params(port, **kw))


class Broker:
    port = BROKER_PORT
    # Restarts (fault tests) keep the TLS listener scripts/test.sh gave it.
    env = {"TLS_DIR": str(TLS_DIR)}

    def ctl(self, *args, check=True):
        out = subprocess.run([str(ROOT / "scripts" / "broker.sh"), "ctl", str(self.port), *args],
                             capture_output=True, text=True, timeout=60, env={**os.environ, **self.env})
        if check and out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args} failed: {out.stderr}")
        return out.stdout

    def connections(self):
        """Connections the broker has, with user, vhost, channel count and whether warren opened them."""
        rows = json.loads(self.ctl("list_connections", "user", "vhost", "channels", "client_properties",
                                   "--formatter", "json", "-q") or "[]")
        for row in rows:
            props = {p[0]: p[2] for p in row["client_properties"]}
            row["from_warren"] = props.get("product") == "warren"
            row["name"] = props.get("connection_name", "")
        return rows

    def warren_connections(self, user=None, vhost=None, port=None):
        """Connections opened by warren; by default by the warren of the
        running test (the last one started), not by one still closing."""
        port = port or Warren.latest_port
        return [c for c in self.connections()
                if c["from_warren"] and c["name"].endswith(f":{port}")
                and (user is None or c["user"] == user)
                and (vhost is None or c["vhost"] == vhost)]

    def warren_channel_count(self):
        """Channels open on warren's upstream connections."""
        return sum(c["channels"] for c in self.warren_connections())

    def queue_names(self, vhost="/"):
        return set(self.ctl("list_queues", "-p", vhost, "name", "--formatter", "json", "-q") and
                   [q["name"] for q in json.loads(self.ctl("list_queues", "-p", vhost, "name",
                                                           "--formatter", "json", "-q"))])

    def restart(self):
        subprocess.run([str(ROOT / "scripts" / "broker.sh"), "restart", str(self.port)],
                       check=True, timeout=180, env={**os.environ, "FAST_STOP": "1"})

    def stop(self, graceful=False):
        """graceful: the broker shuts down as for an upgrade (closing its
        connections with 320); otherwise its VM is killed (SIGKILL)."""
        subprocess.run([str(ROOT / "scripts" / "broker.sh"), "stop", str(self.port)],
                       check=True, timeout=120, env={**os.environ, "FAST_STOP": "0" if graceful else "1"})

    def freeze(self):
        """Stops the broker's VM (SIGSTOP): it reads and answers nothing,
        and its sockets stay open, until it is killed."""
        base = Path(os.environ.get("WARREN_BROKER_DIR", "/tmp/warren-broker")) / str(self.port)
        os.kill(int((base / "rabbit.pid").read_text().strip()), signal.SIGSTOP)

    def start(self, keep_data=False):
        """keep_data: recover queues and persistent messages (after a crash)."""
        env = {**os.environ, **self.env, "KEEP_DATA": "1" if keep_data else "0"}
        subprocess.run([str(ROOT / "scripts" / "broker.sh"), "start", str(self.port)],
                       check=True, timeout=180, env=env)


class ExtraBroker(Broker):
    """A second, independent broker (another node for warren), started by
    the tests that need one, on a port whose companions are free too."""

    def __init__(self):
        self.port = next(p for p in range(BROKER_PORT + 3, BROKER_PORT + 60)
                         if all(_port_free(p + d) for d in (0, 10000, 20000, 30000)))
        self.env = {"TLS_DIR": ""}


def _port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def extra_broker():
    b = ExtraBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def broker():
    b = Broker()
    try:
        connect(b.port).close()
    except Exception as e:  # noqa: BLE001
        pytest.exit(f"no test broker on 127.0.0.1:{b.port} ({e}); run scripts/test.sh", returncode=2)
    return b


class Warren:
    latest_port = None

    def __init__(self, args, upstream_port, upstreams=None, port=None, log_level="debug", env=None,
                 command=(str(WARREN),)):
        """upstreams: broker URLs instead of the test broker's ([]: none
        on the command line). port: the AMQP port, free by default.
        log_level: given on the command line unless None. env: added to
        the environment. command: what runs warren (an installed binary,
        under runuser)."""
        self.port = port or free_port()
        self.http_port = free_port()
        # A later --http-port in args wins (0 turns HTTP off).
        self.http_off = "--http-port" in args and args[args.index("--http-port") + 1] == "0"
        Warren.latest_port = self.port
        self.log_path = Path(os.environ.get("WARREN_TEST_LOGS", "/tmp")) / f"warren-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*command, "-p", str(self.port), "--http-port", str(self.http_port),
             *(["--log-level", log_level] if log_level else []), *args,
             *(upstreams if upstreams is not None else [f"amqp://127.0.0.1:{upstream_port}"])],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            wait_until(self._accepting, 10, "warren to listen")
        except BaseException:
            self.proc.kill()  # never leave a process behind a failed start
            self.proc.wait(10)
            raise

    def _accepting(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"warren exited with {self.proc.returncode}: {self.log_text()}")
        try:
            # The HTTP endpoint is bound after the AMQP listeners (which may
            # be TLS only, or a Unix socket).
            port = self.port if self.http_off else self.http_port
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def url(self, **kw):
        return amqp_url(self.port, **kw)

    def http_url(self, path="/"):
        return f"http://127.0.0.1:{self.http_port}{path}"

    def http_get(self, path):
        with urllib.request.urlopen(self.http_url(path), timeout=5) as answer:
            return answer.read().decode()

    def get_json(self, path):
        with urllib.request.urlopen(self.http_url(path), timeout=5) as answer:
            return json.load(answer)

    def connect(self, **kw):
        return connect(self.port, **kw)

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text()

    def terminate(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def warren_factory(broker):
    started = []

    def start(*args, upstream_port=None, upstreams=None, port=None, log_level="debug", env=None,
              command=(str(WARREN),)):
        w = Warren(["--term-timeout", "0", *args], upstream_port or broker.port, upstreams, port, log_level, env,
                   command)
        started.append(w)
        return w

    yield start
    for w in started:
        code = w.terminate()
        assert code == 0, f"warren exited with {code}; log:\n{w.log_text()[-3000:]}"


@pytest.fixture
def warren(warren_factory):
    return warren_factory()


@pytest.fixture
def queue(broker):
    """A fresh durable queue on "/" (deleted afterwards)."""
    name = f"test.{uuid.uuid4().hex[:10]}"
    with connect(broker.port) as conn:
        conn.channel().queue_declare(name, durable=True)
    yield name
    try:
        with connect(broker.port) as conn:
            conn.channel().queue_delete(name)
    except Exception:  # noqa: BLE001 - the broker may be down after a fault test
        pass


def drain(port, queue_name, limit=100000):
    """All message bodies in a queue (acked), read directly from the broker."""
    bodies = []
    with connect(port) as conn:
        ch = conn.channel()
        for _ in range(limit):
            method, _, body = ch.basic_get(queue_name, auto_ack=True)
            if method is None:
                break
            bodies.append(body.decode())
    return bodies
