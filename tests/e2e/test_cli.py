"""Command line and configuration errors are one clear line and a non-zero exit."""
import os
import subprocess

import pytest

from conftest import WARREN, free_port, wait_until, connect


def run(*args, env=None):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("AMQP_URL", "LISTEN_ADDRESS", "LISTEN_PORT", "HTTP_PORT", "LOG_LEVEL")}
    return subprocess.run([str(WARREN), *args], capture_output=True, text=True, timeout=10,
                          env={**clean, **(env or {})})


@pytest.mark.parametrize("args,message", [
    (["--no-such-flag", "amqp://x"], "--no-such-flag"),
    (["http://broker"], "scheme 'http'"),
    (["amqp://"], "no host"),
    ([], "missing upstream"),
    (["-p", "notaport", "amqp://x"], "--port"),
    (["--log-level", "loud", "amqp://x"], "invalid log level 'loud'"),
    (["--log-format", "xml", "amqp://x"], "invalid --log-format 'xml'"),
    (["--http-token", "has a space in it!", "amqp://x"], "at least 16 visible ASCII characters"),
    (["--http-token", "0123456789abcdef", "--http-token-file", "/dev/null", "amqp://x"], "not both"),
    (["--http-token-file", "/nonexistent/token", "amqp://x"], "cannot read --http-token-file"),
    (["--guaranteed-channels", "0", "amqp://x"], "--guaranteed-channels 0"),
])
def test_bad_input_is_one_line_naming_it(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr, out.stderr


def test_a_password_in_a_bad_config_value_is_not_printed(tmp_path):
    cfg = tmp_path / "warren.toml"
    cfg.write_text('upstream = ["amqp://127.0.0.1"]\nhttp_port = "amqp://user:hunter2@host"\n')
    out = run("--check-config", str(cfg))
    assert out.returncode == 2 and "line 2" in out.stderr, out.stderr
    assert "hunter2" not in out.stderr and "user:redacted@host" in out.stderr, out.stderr


def test_the_admin_token_is_never_printed(tmp_path):
    cfg = tmp_path / "warren.toml"
    cfg.write_text('upstream = ["amqp://127.0.0.1"]\nhttp_token = "0123456789-secret-token"\n')
    out = run("--check-config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "secret" not in out.stdout and 'http_token = "redacted"' in out.stdout, out.stdout


def test_bad_config_file_names_the_line(tmp_path):
    cfg = tmp_path / "warren.ini"
    cfg.write_text("[main]\nupstream = amqp://127.0.0.1\n[listen]\nport = lots\n")
    out = run("-c", str(cfg))
    assert out.returncode == 2
    assert "line 4" in out.stderr and "port" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_listen_port_taken_is_a_clear_error(broker):
    out = run("-p", str(broker.port), f"amqp://127.0.0.1:{broker.port}")
    assert out.returncode == 1
    assert "cannot listen on 127.0.0.1" in out.stderr


def test_http_port_taken_is_a_clear_error(broker):
    out = run("-p", str(free_port()), "--http-port", str(broker.port), f"amqp://127.0.0.1:{broker.port}")
    assert out.returncode == 1
    assert "cannot listen for HTTP" in out.stderr and "--http-port" in out.stderr, out.stderr


def test_environment_and_file_are_used_with_cli_precedence(broker, tmp_path):
    file_port, env_port = free_port(), free_port()
    cfg = tmp_path / "warren.ini"
    cfg.write_text(f"[main]\nupstream = amqp://127.0.0.1:1\n[listen]\nport = {file_port}\n")
    proc = subprocess.Popen([str(WARREN), "-c", str(cfg)],
                            env={**os.environ, "AMQP_URL": f"amqp://127.0.0.1:{broker.port}",
                                 "LISTEN_PORT": str(env_port), "HTTP_PORT": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The environment beats the file for both the upstream and the port.
        conn = wait_until(lambda: _try_connect(env_port), 10, "warren on the LISTEN_PORT port")
        conn.channel()
        conn.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _try_connect(port):
    try:
        return connect(port)
    except Exception:  # noqa: BLE001
        return None


def test_every_option_is_documented_with_its_flag_variable_and_key(tmp_path):
    """docs/configuration.md stays true: each flag and environment variable
    in --help, and each file key --check-config prints, appears in it; and
    the documented example file is valid."""
    import re
    from conftest import ROOT
    doc = (ROOT / "docs" / "configuration.md").read_text()
    help_text = run("--help").stdout
    flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help", "--version"}
    variables = set(re.findall(r"\[env: ([A-Z_]+)=", help_text))
    example = ROOT / "packaging" / "warren.toml"
    printed = run("--check-config", str(example))
    assert printed.returncode == 0, printed.stderr
    keys = {line.split(" = ")[0] for line in printed.stdout.splitlines() if " = " in line}
    assert len(flags) > 30 and len(variables) > 25 and len(keys) > 25, (flags, variables, keys)
    missing = sorted(name for name in flags | variables | keys if name not in doc)
    assert missing == [], f"not in docs/configuration.md: {missing}"


def test_version_names_the_commit_and_build_date():
    import re
    from conftest import ROOT
    out = run("--version")
    assert out.returncode == 0, out.stderr
    match = re.fullmatch(r"warren (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}|unknown), built (\d{4}-\d{2}-\d{2})\)\n",
                         out.stdout)
    assert match, out.stdout
    if (ROOT / ".git").exists():
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{match[2]}^{{commit}}"])
        assert known.returncode == 0, f"{match[2]} is no commit of this repository"


def test_man_page_and_completions_list_every_flag_of_help():
    import re
    help_text = run("--help").stdout
    flags = sorted(set(re.findall(r"(--[a-z][a-z-]+)", help_text)))
    assert len(flags) > 30, flags
    man = run("--generate-man")
    assert man.returncode == 0 and man.stdout.startswith(".ie"), man.stderr
    roff_flags = man.stdout.replace("\\-", "-")
    assert [f for f in flags if f not in roff_flags] == []
    bash = run("--generate-completions", "bash")
    assert bash.returncode == 0, bash.stderr
    assert [f for f in flags if f not in bash.stdout] == []
    # The script is valid bash.
    checked = subprocess.run(["bash", "-n"], input=bash.stdout, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    wrong = run("--generate-completions", "tcsh")
    assert wrong.returncode == 2 and "possible values" in wrong.stderr
