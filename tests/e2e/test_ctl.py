"""`warren ctl`: the binary as a client of a running warren's HTTP
endpoint. `ready` is the container image's health check, so it must give a
clear answer and exit code for every state, and never hang."""
import os
import socket
import subprocess
import time

from conftest import WARREN, free_port


def ctl(*args, env=None):
    return subprocess.run([str(WARREN), "ctl", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_ready_when_a_broker_answers(warren):
    out = ctl("--admin", warren.http_url(""), "ready")
    assert (out.returncode, out.stdout) == (0, "ready\n"), out.stderr


def test_not_ready_says_why(warren_factory):
    dead = free_port()
    w = warren_factory(upstreams=[f"amqp://127.0.0.1:{dead}"])
    out = ctl("--admin", w.http_url(""), "ready")
    assert out.returncode == 1
    assert out.stderr.startswith("not ready: broker 127.0.0.1:") and str(dead) in out.stderr, out.stderr


def test_no_warren_listening():
    out = ctl("--admin", f"http://127.0.0.1:{free_port()}", "ready")
    assert out.returncode == 1
    assert "cannot connect" in out.stderr, out.stderr


def test_a_silent_endpoint_is_given_up_on_after_the_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        out = ctl("--timeout", "1", "--admin", f"http://127.0.0.1:{silent.getsockname()[1]}", "ready")
        took = time.monotonic() - started
    assert out.returncode == 1
    assert "did not answer within 1s" in out.stderr, out.stderr
    # The design bound is the timeout; the rest is process start-up.
    assert took < 20, took


def test_the_containers_environment_does_not_get_in_the_way(warren):
    # The image sets warren's own options in the environment; `ctl` takes
    # none of them and reads its endpoint from WARREN_ADMIN_URL.
    env = {"AMQP_URL": "amqp://127.0.0.1:1", "LISTEN_ADDRESS": "0.0.0.0",
           "WARREN_ADMIN_URL": warren.http_url("")}
    out = ctl("ready", env=env)
    assert (out.returncode, out.stdout) == (0, "ready\n"), out.stderr


def test_usage_errors_exit_2():
    assert ctl().returncode == 2
    out = ctl("--admin", "https://127.0.0.1:15673", "ready")
    assert out.returncode == 2 and "plain http://" in out.stderr, out.stderr
    out = subprocess.run([str(WARREN), "amqp://127.0.0.1", "ctl", "ready"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 2, out.stderr
