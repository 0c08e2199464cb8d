"""The Debian package scripts/package.sh builds, installed with dpkg on this
machine: what it puts where, the user and permissions it sets up, and the
installed binary, run as that user with the installed configuration,
serving a client in front of the test broker. Then purged.

scripts/test.sh builds the packages and names their directory in
WARREN_TEST_PACKAGE_DIR. The test installs and purges the package, so it
does not run where warren is already installed from a package."""
import gzip
import grp
import os
import pwd
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import WARREN

PACKAGES = os.environ.get("WARREN_TEST_PACKAGE_DIR")
UNITS = Path("/usr/lib/systemd/system")


def run(*args, check=True):
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def installed():
    status = run("dpkg-query", "-W", "-f=${Status}", "warren", check=False)
    return "install ok installed" in status.stdout


@pytest.fixture(scope="module")
def package():
    if not PACKAGES:
        pytest.skip("scripts/test.sh builds the packages and sets WARREN_TEST_PACKAGE_DIR")
    if installed():
        pytest.skip("warren is installed here from a package; this test would purge it")
    debs = sorted(Path(PACKAGES).glob("warren_*.deb"))
    assert len(debs) == 1, f"expected one .deb in {PACKAGES}, found {debs}"
    run("dpkg", "--install", str(debs[0]))
    try:
        yield debs[0]
    finally:
        # The last test purges and checks; this only cleans up after a failure.
        if installed():
            run("dpkg", "--purge", "warren")


def test_checksums_cover_both_packages(package):
    done = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=PACKAGES,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(line.split(": ")[0] for line in done.stdout.splitlines())
    assert sorted(n.rsplit(".", 1)[1] for n in names) == ["deb", "rpm"], names


def test_installs_the_binary_docs_config_and_units(package):
    assert run("/usr/bin/warren", "--version").stdout == run(str(WARREN), "--version").stdout
    files = set(run("dpkg-query", "-L", "warren").stdout.split())
    for path in ("/usr/bin/warren", "/usr/share/man/man1/warren.1.gz",
                 "/usr/share/bash-completion/completions/warren",
                 "/usr/share/zsh/vendor-completions/_warren",
                 "/usr/share/fish/vendor_completions.d/warren.fish",
                 "/etc/warren/warren.toml", str(UNITS / "warren.service"), str(UNITS / "warren@.service"),
                 "/usr/share/doc/warren/examples/warren-alerts.yml"):
        assert path in files, f"{path} not installed"
    # The config file is a conffile: an upgrade keeps the operator's edits.
    assert "/etc/warren/warren.toml" in run("dpkg-query", "-W", "-f=${Conffiles}", "warren").stdout
    # Stripped: the package carries no debug info (the build has line tables).
    assert os.path.getsize("/usr/bin/warren") < os.path.getsize(WARREN) / 2


def test_rpm_holds_the_same_files(package):
    rpm = next(Path(PACKAGES).glob("warren-*.rpm"))
    rpm_files = set(run("rpm", "-qlp", str(rpm)).stdout.split())
    deb_files = {f for f in run("dpkg-query", "-L", "warren").stdout.split() if not os.path.isdir(f)}
    # zsh looks in a different directory on each family; the rest match.
    rename = {"/usr/share/zsh/vendor-completions/_warren": "/usr/share/zsh/site-functions/_warren"}
    assert {rename.get(f, f) for f in deb_files} - {"/usr/share/doc/warren/copyright"} == rpm_files
    scripts = run("rpm", "-qp", "--scripts", str(rpm)).stdout
    assert "useradd --system" in scripts
    config = run("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEGROUPNAME}\n]", str(rpm)).stdout
    assert "/etc/warren/warren.toml cn warren" in config.splitlines()


def test_man_page_and_completions_are_usable(package):
    page = gzip.decompress(Path("/usr/share/man/man1/warren.1.gz").read_bytes()).decode()
    assert page.startswith(".ie") or ".TH warren 1" in page, page[:200]
    assert "\\-\\-upstream\\-max\\-lifetime" in page
    done = run("bash", "-c", "source /usr/share/bash-completion/completions/warren && complete -p warren")
    assert "warren" in done.stdout


def test_creates_a_system_user_that_alone_reads_the_config(package):
    user = pwd.getpwnam("warren")
    assert user.pw_uid < 1000, "a system user"
    assert user.pw_shell.endswith("nologin")
    assert grp.getgrgid(user.pw_gid).gr_name == "warren"
    for path, mode in (("/etc/warren", 0o750), ("/etc/warren/warren.toml", 0o640)):
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == mode, f"{path}: {oct(info.st_mode)}"
        assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name) == (0, "warren"), path


def test_units_verify_against_the_installed_binary(package):
    # systemd-analyze checks the unit's syntax and that ExecStart exists.
    run("systemd-analyze", "verify", str(UNITS / "warren.service"))


def test_installed_binary_serves_clients_as_its_user(package, warren_factory, queue):
    as_warren = ("setpriv", "--reuid=warren", "--regid=warren", "--init-groups", "--",
                 "/usr/bin/warren")
    w = warren_factory("--config", "/etc/warren/warren.toml", command=as_warren)
    body = f"from the package {uuid.uuid4().hex}".encode()
    with w.connect() as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", queue, body)
        _, _, got = ch.basic_get(queue, auto_ack=True)
    assert got == body
    ready = run("/usr/bin/warren", "ctl", "--admin", w.http_url(""), "ready")
    assert ready.stdout == "ready\n"
    # Started at all means the warren user could read /etc/warren/warren.toml
    # (an unreadable file exits 2); and it runs as that user.
    status = Path(f"/proc/{w.proc.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) == pwd.getpwnam("warren").pw_uid


def test_purge_removes_what_it_installed(package):
    # Last in the file: pytest runs a module's tests in file order.
    run("dpkg", "--purge", "warren")
    assert not installed()
    for path in ("/usr/bin/warren", "/etc/warren", str(UNITS / "warren.service")):
        assert not os.path.exists(path), f"{path} left behind"
