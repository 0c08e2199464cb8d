"""Real client libraries through warren: the short-lived publisher cycle."""
import subprocess
import uuid

import pytest

from conftest import CLIENTS, PYTHON, drain

CYCLES = 50

CLIENT_COMMANDS = {
    "php-amqplib": ["php", str(CLIENTS / "publish_cycles.php"), "--lib=amqplib"],
    "php-amqp": ["php", str(CLIENTS / "publish_cycles.php"), "--lib=ext"],
    "pika": [PYTHON, str(CLIENTS / "publish_cycles.py")],
    "amqplib": ["node", str(CLIENTS / "publish_cycles.js")],
}


def run_client(name, url, n, queue, tag, *extra):
    cmd = CLIENT_COMMANDS[name] + [url, str(n), queue, tag, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr}"
    assert "RESULT" in out.stdout, out.stdout
    return out.stdout


@pytest.mark.parametrize("client", sorted(CLIENT_COMMANDS))
def test_publish_cycles_arrive_once_over_one_upstream(client, broker, warren, queue):
    tag = uuid.uuid4().hex[:8]
    run_client(client, warren.url(), CYCLES, queue, tag)
    bodies = drain(broker.port, queue)
    assert sorted(bodies) == sorted(f"{tag}:{i}" for i in range(CYCLES))
    upstreams = broker.warren_connections(user="guest")
    assert len(upstreams) == 1, upstreams


@pytest.mark.parametrize("client", sorted(CLIENT_COMMANDS))
def test_publish_cycles_with_confirms(client, broker, warren, queue):
    tag = uuid.uuid4().hex[:8]
    run_client(client, warren.url(), 10, queue, tag, "--confirm")
    assert sorted(drain(broker.port, queue)) == sorted(f"{tag}:{i}" for i in range(10))
