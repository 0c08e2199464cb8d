"""The container image (Dockerfile) and the compose example. This machine
has no container runtime, so the image is checked by hadolint, and its
runtime stage is played on the host: the binary run the way the image runs
it (its user, environment, entrypoint, command and config file), answering
its own health check and serving a client. Where docker or podman works,
the image is also built."""
import json
import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, WARREN, BROKER_PORT

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = ROOT / ".cache" / "venv" / "bin" / "hadolint"


def instructions():
    """(INSTRUCTION, arguments) of the Dockerfile's final stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stage = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stage = []
        stage.append((keyword.upper(), rest.strip()))
    return stage


def one(keyword):
    found = [rest for k, rest in instructions() if k == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def image_env():
    env = {}
    for rest in (r for k, r in instructions() if k == "ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def warren_env_names():
    return set(re.findall(r"\[env: ([A-Z_]+)=", subprocess.run(
        [str(WARREN), "--help"], capture_output=True, text=True, timeout=10, check=True).stdout))


def test_hadolint_finds_nothing():
    out = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_runtime_stage_is_distroless_non_root_and_checks_itself():
    base = one("FROM").split()[0]
    assert base.startswith("gcr.io/distroless/"), base
    uid, _, gid = one("USER").partition(":")
    assert int(uid) != 0 and int(gid) != 0, "numeric and not root (runAsNonRoot checks the number)"
    health = one("HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    assert command[:2] == ["/usr/bin/warren", "ctl"] and command[-1] == "ready", command
    assert set(image_env()) <= warren_env_names(), "every ENV is one of warren's options"


def test_the_image_as_run_here_serves_and_is_healthy(warren_factory, queue):
    """The final stage's user, environment, entrypoint and command, with the
    config file it copies in, on the host-built binary."""
    copies = {dest: str(ROOT / source) for k, rest in instructions()
              if k == "COPY" and not rest.startswith("--from") for source, dest in [rest.split()]}
    args = [copies.get(a, a) for a in json.loads(one("CMD"))]
    uid, _, gid = one("USER").partition(":")
    as_image = ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", str(WARREN))
    env = {**image_env(), "AMQP_URL": f"amqp://127.0.0.1:{BROKER_PORT}"}
    w = warren_factory(*args, upstreams=[], env=env, command=as_image)
    health = json.loads(one("HEALTHCHECK").split("CMD", 1)[1])
    # The health check runs in the container's environment, with whatever
    # HTTP port the operator gave warren there.
    checked = subprocess.run([str(WARREN), *health[1:]], capture_output=True, text=True, timeout=30,
                             env={**os.environ, **env, "HTTP_PORT": str(w.http_port)})
    assert (checked.returncode, checked.stdout) == (0, "ready\n"), checked.stderr
    body = uuid.uuid4().hex.encode()
    with w.connect() as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", queue, body)
        assert ch.basic_get(queue, auto_ack=True)[2] == body
    # Listening on every address, as the image's file says.
    assert f"0.0.0.0:{w.port}" in w.log_text()


def test_compose_example_names_real_options():
    compose = yaml.safe_load((ROOT / "packaging" / "compose.yaml").read_text())
    warren = compose["services"]["warren"]
    assert set(warren["environment"]) <= warren_env_names()
    assert (ROOT / "packaging" / warren["build"]["context"] / warren["build"]["dockerfile"]).resolve() == DOCKERFILE
    term_timeout = int(warren["environment"]["TERM_TIMEOUT"])
    assert int(warren["stop_grace_period"].rstrip("s")) > term_timeout + 4


def container_tool():
    for tool in ("docker", "podman"):
        try:
            if subprocess.run([tool, "info"], capture_output=True, timeout=20).returncode == 0:
                return tool
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def test_image_builds_where_a_container_tool_runs():
    tool = container_tool()
    if tool is None:
        pytest.skip("no working docker or podman here")
    out = subprocess.run([str(ROOT / "scripts" / "image.sh")], capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "CONTAINER_TOOL": tool})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    version = subprocess.run([tool, "run", "--rm", "warren:latest", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.startswith("warren "), version.stdout + version.stderr
