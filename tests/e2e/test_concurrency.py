"""Many short-lived clients of every library at once, half of them with
confirms, sharing one upstream connection and its kept channels."""
import subprocess
import uuid

from conftest import drain
from test_clients import CLIENT_COMMANDS

PROCESSES = 8
CYCLES = 100


def test_concurrent_mixed_clients_lose_nothing_and_share_the_upstream(broker, warren, queue):
    names = sorted(CLIENT_COMMANDS)
    runs = []
    for i in range(PROCESSES):
        client = names[i % len(names)]
        tag = f"{uuid.uuid4().hex[:6]}-{i}"
        extra = ["--confirm"] if i % 2 else []
        cmd = CLIENT_COMMANDS[client] + [warren.url(), str(CYCLES), queue, tag, *extra]
        runs.append((tag, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for tag, proc in runs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{proc.args[:3]} failed:\n{err[-2000:]}"
    expected = sorted(f"{tag}:{n}" for tag, _ in runs for n in range(CYCLES))
    assert sorted(drain(broker.port, queue)) == expected
    upstreams = broker.warren_connections(user="guest")
    assert len(upstreams) == 1, upstreams
    assert upstreams[0]["channels"] <= 64, "kept channels are bounded by --max-kept-channels"
    log = warren.log_text()
    assert " WARN " not in log and " ERROR " not in log, log[-3000:]
