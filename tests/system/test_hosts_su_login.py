"""su, su - and console login: the real programs on a terminal, with the shipped stacks
(etc/pam.d/su, su-l and login) in place of the system's.

su and login read /etc/pam.d/su, su-l and login, and su cannot be given another service name.
So the tests never change those files: each run starts in a mount namespace of its own
(``unshare --mount``) in which the shipped examples (with ``conf=`` pointing at the test
config) are bind-mounted over them, and a copy of /etc/shadow that gives root a test
password (su to root asks for it). Nothing outside that namespace sees any of it, and nothing
is left behind when a test dies (docs/behaviour.md §3, §6)."""
from __future__ import annotations

import grp
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from .brokerkit import BrokerProcess
from .conftest import _ensure_root_dir, _write_root_file, clean_env
from .hostkit import (Pty, example_stack, host, host_env, host_lock, host_root, host_users,  # noqa: F401
                      menu)

pytestmark = pytest.mark.system

RUNUSER = "/usr/sbin/runuser"
PUSHED = "Pushed a login request to your device..."
SUCCESS = "Success. Logging you in..."
ROOT_PASSWORD = "pw-root-in-the-test-namespace-4Kd"
REAL_FILES = [Path("/etc/pam.d/su"), Path("/etc/pam.d/su-l"), Path("/etc/pam.d/login"), Path("/etc/shadow")]
IN_NAMESPACE = ('mount --bind "$1" /etc/pam.d/su && mount --bind "$2" /etc/pam.d/su-l && '
                'mount --bind "$3" /etc/pam.d/login && mount --bind "$4" /etc/shadow && shift 4 && exec "$@"')


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Namespace:
    """Runs programs on a terminal, in a private mount namespace with the shipped stacks."""

    def __init__(self, files: list[Path]):
        self.files = files

    def pty(self, *argv: str) -> Pty:
        return Pty(["/usr/bin/unshare", "--mount", "--propagation", "private", "--",
                    "/bin/sh", "-c", IN_NAMESPACE, "sh", *map(str, self.files), *argv])


@pytest.fixture(scope="module")
def ns(host_env, host_root, host_users):
    before = {path: _sha(path) for path in REAL_FILES}
    root = _ensure_root_dir(host_root / "namespace")
    stacks = [_write_root_file(root / name, example_stack(name, host_env.config), 0o644)
              for name in ("su", "su-l", "login")]
    assert "pam_python.so" not in "".join(
        line for line in stacks[1].read_text().splitlines(True) if not line.lstrip().startswith("#")), \
        "su-l must take Duo from su (auth include su), not add it a second time"
    hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=ROOT_PASSWORD, env=clean_env(),
                            capture_output=True, text=True, check=True).stdout.strip()
    lines = []
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[1] = hashed
        lines.append(":".join(fields))
    shadow = _write_root_file(root / "shadow", "\n".join(lines) + "\n", 0o640)
    os.chown(shadow, 0, grp.getgrnam("shadow").gr_gid)
    yield Namespace([*stacks, shadow])
    assert {path: _sha(path) for path in REAL_FILES} == before, "a system file changed"


def _su(ns: Namespace, host, caller: str, target: str, login_shell: bool, password: str) -> Pty:
    argv = [RUNUSER, "-u", host.users[caller], "--", "/usr/bin/su", *(["-"] if login_shell else []),
            target, "-c", "id -un"]
    term = ns.pty(*argv)
    term.expect("Password: ")
    term.line(password)
    return term


# ------------------------------------------------------------------ su and su -
@pytest.mark.parametrize("login_shell,service", [(False, "su"), (True, "su-l")], ids=["su", "su-"])
def test_su_to_another_user_the_target_does_duo(ns, host, login_shell, service):
    bob = host.users["bob"]
    mark = host.mark()
    with _su(ns, host, "alice", bob, login_shell, host.users.password("bob")) as term:
        term.expect(menu(bob))
        term.line("1")
        assert term.finish() == 0, term.text
        # su shows the status lines as they happen.
        assert term.rest() == f"1\n{PUSHED}\n{SUCCESS}\n{bob}\n"
    assert host.calls(mark) == [("preauth", "bob", None), ("auth", "bob", "push"), ("auth_status", "bob", "push")]
    (info,) = host.pushinfo(mark)
    assert info["Service"] == service
    (event,) = host.audit_events(mark)
    assert (event["outcome"], event["user"], event["service"], event["factor"]) == ("success", bob, service, "push")
    assert event["tty"].startswith("/dev/pts/")


@pytest.mark.parametrize("login_shell,service", [(False, "su"), (True, "su-l")], ids=["su", "su-"])
def test_su_to_root_the_calling_user_does_duo(ns, host, login_shell, service):
    alice = host.users["alice"]
    mark = host.mark()
    with _su(ns, host, "alice", "root", login_shell, ROOT_PASSWORD) as term:
        term.expect(menu(alice))  # root's password, then the caller's own second factor
        term.line("123456")
        assert term.finish() == 0, term.text
        assert term.rest() == f"123456\n{SUCCESS}\nroot\n"
    assert host.calls(mark) == [("preauth", "alice", None), ("auth", "alice", "passcode")]
    (event,) = host.audit_events(mark)
    assert (event["outcome"], event["user"], event["service"]) == ("success", alice, service)


def test_a_remembered_su_is_only_for_the_same_caller(ns, host, host_root):
    """alice's own su (approved with Duo) must not let bob, who knows alice's password, "su alice"."""
    state = _ensure_root_dir(host_root / "su-state", 0o700)
    for child in state.iterdir():
        child.unlink()
    host.configure(remember={"seconds": 300, "services_without_address": ["su"], "state_dir": str(state)})
    alice = host.users["alice"]
    with _su(ns, host, "alice", "root", False, ROOT_PASSWORD) as term:
        term.expect(menu(alice))
        term.line("1")
        assert term.finish() == 0, term.text
    mark = host.mark()
    with _su(ns, host, "alice", "root", False, ROOT_PASSWORD) as term:  # alice again: remembered
        assert term.finish() == 0, term.text
    assert host.calls(mark) == [("preauth", "alice", None)]
    mark = host.mark()
    with _su(ns, host, "bob", alice, False, host.users.password("alice")) as term:
        term.expect(menu(alice))  # asked for Duo, not let in on alice's remembered login
        term.line("1")
        assert term.finish() == 0, term.text
    assert ("auth", "alice", "push") in host.calls(mark)


def test_su_to_root_through_the_broker_is_still_the_caller(ns, host, host_root):
    """The PAM module hands the login to a running broker; the caller still does Duo."""
    sock_dir = _ensure_root_dir(host_root / "broker")
    socket_path = sock_dir / "broker.sock"
    host.configure(broker_socket=socket_path)
    broker = BrokerProcess(host.config, socket_path).start()
    try:
        alice = host.users["alice"]
        mark = host.mark()
        with _su(ns, host, "alice", "root", False, ROOT_PASSWORD) as term:
            term.expect(menu(alice))
            term.line("1")
            assert term.finish() == 0, term.text
            assert term.rest() == f"1\n{PUSHED}\n{SUCCESS}\nroot\n"
        assert host.calls(mark)[:2] == [("preauth", "alice", None), ("auth", "alice", "push")]
        events = host.audit_events(mark)
        assert [(e["outcome"], e["user"], e["service"]) for e in events] == [("success", alice, "su")]
        assert events[0]["pid"] == broker.pid, "the broker, not the PAM module, decided"
    finally:
        broker.stop()


def test_wrong_root_password_never_reaches_duo(ns, host):
    mark = host.mark()
    with _su(ns, host, "alice", "root", False, "not-the-password") as term:
        assert term.finish() == 1
        assert "Authentication failure" in term.rest()
    assert host.calls(mark) == []


def test_ctrl_c_at_the_duo_prompt_is_no_su(ns, host):
    alice = host.users["alice"]
    mark = host.mark()
    with _su(ns, host, "alice", "root", True, ROOT_PASSWORD) as term:
        term.expect(menu(alice))
        term.send("\x03")
        status = term.finish()
        assert status != 0 and "root\n" not in term.rest(), (status, term.text)
    assert host.calls(mark) == [("preauth", "alice", None)]
    assert not [e for e in host.audit_events(mark) if e["outcome"] == "success"]


# ------------------------------------------------------------------ console login
def test_console_login_with_the_same_menu(ns, host):
    bob = host.users["bob"]
    mark = host.mark()
    with ns.pty("/usr/bin/login", bob) as term:  # as getty runs it: as root, with the user's name
        term.expect("Password: ")
        term.line(host.users.password("bob"))
        term.expect(menu(bob))
        term.line("")
        term.expect("$ ")  # the user's shell
        term.line("id -un; exit")
        assert term.finish() == 0, term.text
        assert f"\n{bob}\n" in term.rest()
    assert host.calls(mark) == [("preauth", "bob", None), ("auth", "bob", "push"), ("auth_status", "bob", "push")]
    (event,) = host.audit_events(mark)
    assert (event["outcome"], event["user"], event["service"]) == ("success", bob, "login")
    assert event["tty"].startswith("/dev/pts/")


def test_console_login_denied_user_reads_why(ns, host):
    deny = host.users["deny"]
    with ns.pty("/usr/bin/login", deny) as term:
        term.expect("Password: ")
        term.line(host.users.password("deny"))
        shown = term.expect("Login incorrect", timeout=30)
        assert shown == "\nYour account is disabled. Contact your administrator.\n\nLogin incorrect", shown
