"""Lifecycle: --check-config, SIGHUP reload, a rolling restart on the same
port (SO_REUSEPORT) that refuses nobody, and the Unix socket listener."""
import os
import signal
import stat
import subprocess
import threading

import pika
import pytest

from conftest import CLIENTS, WARREN, Warren, free_port, params, wait_until
from rawamqp import Channel, RawClient


def check_config(path, env=None):
    return subprocess.run([str(WARREN), "--check-config", str(path)], capture_output=True, text=True,
                          timeout=10, env=env or {})


def test_check_config_prints_every_setting_with_secrets_hidden(tmp_path):
    cfg = tmp_path / "warren.toml"
    cfg.write_text('upstream = ["amqps://user:hunter2@broker-a", "amqp://broker-b:5673"]\n'
                   'max_clients = 100\nlisten = "unix:/run/warren/amqp.sock"\n')
    out = check_config(cfg)
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout
    assert 'upstream = ["amqps://user:redacted@broker-a", "amqp://broker-b:5673"]' in out.stdout, out.stdout
    assert "max_clients = 100\n" in out.stdout
    # Every setting is listed with its effective value, defaults included.
    keys = {line.split(" = ")[0] for line in out.stdout.splitlines() if " = " in line}
    help_text = subprocess.run([str(WARREN), "--help"], capture_output=True, text=True, timeout=10).stdout
    for key in ("socket_mode", "upstream_max_lifetime", "max_upstream_connections", "term_timeout"):
        assert key in keys and f"--{key.replace('_', '-')}" in help_text, key
    assert len(keys) >= 25, keys


def test_check_config_reads_amqproxy_ini_and_names_a_bad_line(tmp_path):
    ini = tmp_path / "amqproxy.ini"
    ini.write_text("[main]\nupstream = amqp://127.0.0.1:5672\nidle_connection_timeout = 7\n"
                   "[listen]\nbind = 0.0.0.0\nport = 5673\n")
    out = check_config(ini)
    assert out.returncode == 0, out.stderr
    assert 'listen = "0.0.0.0"' in out.stdout and "idle_connection_timeout = 7" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('upstream = ["amqp://a"]\n\nmax_clients = "lots"\n')
    out = check_config(bad)
    assert out.returncode == 2 and out.stdout == ""
    assert "line 3" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def wait_for_log(warren, text, count=1):
    wait_until(lambda: warren.log_text().count(text) >= count, 10, f"log line {text!r}")


def refused(port):
    try:
        pika.BlockingConnection(params(port)).close()
        return None
    except pika.exceptions.AMQPConnectionError as e:
        return str(e)


def test_sighup_applies_new_limits_and_a_bad_file_keeps_the_running_config(broker, warren_factory, tmp_path):
    cfg = tmp_path / "warren.toml"
    upstream = f'upstream = ["amqp://127.0.0.1:{broker.port}"]\n'
    cfg.write_text(upstream + "max_clients = 1\n")
    w = warren_factory("-c", str(cfg), upstreams=[])
    first = w.connect()
    assert "(530)" in (refused(w.port) or "")

    cfg.write_text(upstream + 'max_clients = 2\nhttp_address = "0.0.0.0"\n')
    w.proc.send_signal(signal.SIGHUP)
    wait_for_log(w, "configuration reloaded")
    assert "http_address" in w.log_text() and "change only at a restart" in w.log_text()
    second = w.connect()

    cfg.write_text(upstream + "max_clients = -3\n")
    w.proc.send_signal(signal.SIGHUP)
    wait_for_log(w, "reload failed")
    assert "(530)" in (refused(w.port) or ""), "the limit of 2 still holds"
    for conn in (first, second):
        conn.channel().queue_declare("", exclusive=True)
        conn.close()
    assert w.proc.poll() is None


@pytest.mark.parametrize("stopped", ["old", "new"])
def test_rolling_restart_on_the_same_port_refuses_no_client(broker, stopped):
    """Two warrens on one port; whichever gets SIGTERM (the old one in an
    upgrade, the new one in a rollback) hands new connections to the other
    and drains, while clients keep connecting: none is refused or reset."""
    port = free_port()
    old = Warren(["--term-timeout", "30"], broker.port, port=port)
    new = None
    served = {"count": 0}
    errors = []
    done = threading.Event()

    def cycle_until_done():
        for _ in range(5000):  # bounded; the test ends it much sooner
            if done.is_set():
                return
            try:
                with pika.BlockingConnection(params(port)) as conn:
                    conn.channel().basic_publish("", "no-such-queue", b"x")
                served["count"] += 1
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                errors.append(repr(e))

    threads = [threading.Thread(target=cycle_until_done, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: served["count"] >= 50, 30, "clients cycling through the old warren")
        new = Warren(["--term-timeout", "30"], broker.port, port=port)
        leaving, staying = (old, new) if stopped == "old" else (new, old)
        before = served["count"]
        leaving.proc.send_signal(signal.SIGTERM)
        assert leaving.proc.wait(timeout=40) == 0
        wait_until(lambda: served["count"] >= before + 200, 60, "clients cycling through the remaining warren")
    finally:
        done.set()
        for t in threads:
            t.join(30)
        if new:
            assert new.terminate() == 0
        old.terminate()
    assert errors == [], errors[:5]
    assert "stopped accepting" in leaving.log_text()


def test_unix_socket_listener_serves_real_and_raw_clients(warren_factory, tmp_path):
    path = tmp_path / "warren.sock"
    w = warren_factory("-l", f"unix:{path}", "--socket-mode", "0600")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
    out = subprocess.run(["node", str(CLIENTS / "unix_socket.js"), str(path), "unix.test"],
                         capture_output=True, text=True, timeout=60, cwd=CLIENTS)
    assert out.returncode == 0, out.stderr
    assert "RESULT body=over a unix socket" in out.stdout
    raw = RawClient(unix=str(path))
    raw.open()
    Channel(raw, 1).open().close()
    raw.close()
    assert "peer=unix" in w.log_text()
    assert w.terminate() == 0
    assert not path.exists(), "the socket file is removed at exit"


def test_a_warren_that_fails_to_start_leaves_the_running_ones_socket(broker, warren_factory, tmp_path):
    path = tmp_path / "warren.sock"
    running = warren_factory("-l", f"unix:{path}")
    inode = os.stat(path).st_ino
    # The HTTP port is taken (by the running warren): the new one exits
    # after binding its socket, which must not have replaced the path.
    out = subprocess.run([str(WARREN), "-l", f"unix:{path}", "--http-port", str(running.http_port),
                          "--no-reuse-port", f"amqp://127.0.0.1:{broker.port}"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1 and "cannot listen for HTTP" in out.stderr, out.stderr
    assert os.stat(path).st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["warren.sock"], "no staging left behind"
    raw = RawClient(unix=str(path))
    raw.open()
    raw.close()


def test_a_unix_socket_path_that_is_not_a_socket_is_refused(broker, tmp_path):
    path = tmp_path / "important.txt"
    path.write_text("keep me")
    out = subprocess.run([str(WARREN), "-l", f"unix:{path}", "--http-port", "0", f"amqp://127.0.0.1:{broker.port}"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1 and "is not a socket" in out.stderr, out.stderr
    assert path.read_text() == "keep me"


def test_a_new_warren_takes_over_a_unix_socket_without_a_gap(warren_factory, tmp_path):
    path = tmp_path / "warren.sock"
    old = warren_factory("-l", f"unix:{path}")
    old_inode = os.stat(path).st_ino
    new = warren_factory("-l", f"unix:{path}")
    assert os.stat(path).st_ino != old_inode
    assert old.terminate() == 0
    assert path.exists(), "the old warren left the new one's socket alone"
    raw = RawClient(unix=str(path))
    raw.open()
    raw.close()
    assert new.terminate() == 0
    assert not path.exists()
