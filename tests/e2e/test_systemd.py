"""systemd readiness (sd_notify): warren tells the socket in $NOTIFY_SOCKET
READY=1 once clients can connect, RELOADING=1 then READY=1 around a SIGHUP
reload (a failed one too), STOPPING=1 when it starts draining, and pings
WATCHDOG=1 when $WATCHDOG_USEC asks for it. The socket here plays systemd."""
import signal
import socket
import time

import pytest


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def messages(sock, until, limit=20):
    """Datagrams received up to and including the first containing `until`."""
    seen = []
    for _ in range(limit):
        seen.append(sock.recv(4096).decode())
        if until in seen[-1]:
            return seen
    raise AssertionError(f"no {until} among {seen}")


def test_ready_reloading_and_stopping_are_told(warren_factory, notify_socket, tmp_path):
    sock, path = notify_socket
    config = tmp_path / "warren.toml"
    config.write_text("heartbeat = 30\n")
    w = warren_factory("--config", str(config), env={"NOTIFY_SOCKET": path})
    ready = messages(sock, "READY=1")
    assert len(ready) == 1 and f"STATUS=listening on 127.0.0.1:{w.port}" in ready[0], ready
    # Ready means ready: a client can log in right away.
    with w.connect() as conn:
        conn.channel().close()

    w.proc.send_signal(signal.SIGHUP)
    assert messages(sock, "READY=1") == ["RELOADING=1", "READY=1\nSTATUS=reloaded"]
    config.write_text("this is not toml\n")
    w.proc.send_signal(signal.SIGHUP)
    assert messages(sock, "READY=1") == [
        "RELOADING=1", "READY=1\nSTATUS=reload failed; the running configuration stays"]
    with w.connect() as conn:
        conn.channel().close()

    w.proc.send_signal(signal.SIGTERM)
    assert messages(sock, "STOPPING=1") == ["STOPPING=1\nSTATUS=draining"]
    assert w.proc.wait(15) == 0


def test_the_watchdog_is_fed_at_half_its_timeout(warren_factory, notify_socket):
    sock, path = notify_socket
    warren_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    messages(sock, "READY=1")
    started = time.monotonic()
    for _ in range(3):
        assert messages(sock, "WATCHDOG=1")[-1] == "WATCHDOG=1"
    window = time.monotonic() - started
    # Never faster than every 0.2 s (a stall gives one ping, not a burst):
    # whatever was received in the window fits that pace.
    sock.settimeout(0.01)
    extra = 0
    try:
        while True:
            sock.recv(4096)
            extra += 1
    except socket.timeout:
        pass
    assert 3 + extra <= window / 0.2 + 2, (window, extra)


def test_a_watchdog_for_another_process_is_left_alone(warren_factory, notify_socket):
    sock, path = notify_socket
    warren_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    messages(sock, "READY=1")
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        sock.recv(4096)
