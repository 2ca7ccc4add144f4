"""Duo's own C client against the simulator: a cross-check that the simulator plays Duo's
protocol as Duo's code reads it, not only as ours does.

Debian 12 packages duo_unix 1.11.3 as ``login-duo`` (scripts/test installs it). That
``login_duo`` speaks the REST v1 API (form-encoded, HMAC-SHA1 signed, BSON replies), which the
simulator serves from the same scripted users (pam_duo_sim/simulator_v1.py). It is run as root
with ``-c`` (its INI config, ``cafile`` = the simulator's CA) and ``-f`` (the Duo user).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import _write_root_file, clean_env
from .hostkit import Pty

pytestmark = pytest.mark.system

LOGIN_DUO = Path("/usr/sbin/login_duo")


@pytest.fixture
def login_duo_conf(installed, simulator, test_root) -> Path:
    if not LOGIN_DUO.exists():
        pytest.skip("Duo's login_duo is not installed (Debian package login-duo; scripts/test installs it as root)")
    duo = simulator.duo_settings()
    text = (f"[duo]\nikey = {duo['ikey']}\nskey = {duo['skey']}\nhost = {duo['host']}\n"
            f"cafile = {duo['ca_file']}\nfailmode = secure\n")
    return _write_root_file(test_root / "login_duo.conf", text, 0o600)


def run_headless(conf: Path, duo_user: str):
    """No terminal: login_duo sends one synchronous push to the default device."""
    import subprocess

    return subprocess.run([str(LOGIN_DUO), "-d", "-c", str(conf), "-f", duo_user, "/bin/echo", "LOGGED-IN"],
                          env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def v1_requests(simulator, mark: int) -> list[tuple[str, str, int]]:
    return [(r["path"], r.get("username") or "", r["status"]) for r in simulator.requests(since=mark)
            if r.get("event") == "request" and r.get("path", "").startswith("/rest/v1/")]


def test_login_duo_allow(login_duo_conf, simulator) -> None:
    mark = simulator.mark()
    proc = run_headless(login_duo_conf, "allow")
    assert proc.returncode == 0 and proc.stdout == "LOGGED-IN\n", proc
    assert "Skipped Duo login for 'allow': Allowing unknown user" in proc.stderr, proc.stderr
    assert v1_requests(simulator, mark) == [("/rest/v1/preauth.bson", "allow", 200)]


def test_login_duo_deny(login_duo_conf, simulator) -> None:
    mark = simulator.mark()
    proc = run_headless(login_duo_conf, "deny")
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert "Aborted Duo login for 'deny': Your account is disabled. Contact your administrator." in proc.stderr
    assert v1_requests(simulator, mark) == [("/rest/v1/preauth.bson", "deny", 200)]


def test_login_duo_push_approved_and_denied_without_a_terminal(login_duo_conf, simulator) -> None:
    mark = simulator.mark()
    proc = run_headless(login_duo_conf, "alice")
    assert proc.returncode == 0 and proc.stdout == "LOGGED-IN\n", proc
    assert "Successful Duo login for 'alice'" in proc.stderr
    assert v1_requests(simulator, mark) == [("/rest/v1/preauth.bson", "alice", 200),
                                            ("/rest/v1/auth.bson", "alice", 200)]
    proc = run_headless(login_duo_conf, "pushdeny")
    assert proc.returncode == 1 and proc.stdout == "" and "Failed Duo login for 'pushdeny'" in proc.stderr, proc


def test_login_duo_menu_and_approved_push_on_a_terminal(login_duo_conf, simulator) -> None:
    mark = simulator.mark()
    with Pty([str(LOGIN_DUO), "-c", str(login_duo_conf), "-f", "alice", "/bin/echo", "LOGGED-IN"]) as term:
        shown = term.expect("Passcode or option (1-5): ")
        assert shown.startswith("Duo login for alice\n") and " 1. Duo Push to XXX-XXX-1234\n" in shown, shown
        term.line("1")
        term.expect("Success. Logging you in...\n")
        term.expect("LOGGED-IN\n")
        assert term.finish() == 0
    paths = [path for path, _, _ in v1_requests(simulator, mark)]
    assert paths[:2] == ["/rest/v1/preauth.bson", "/rest/v1/auth.bson"] and "/rest/v1/status.bson" in paths
