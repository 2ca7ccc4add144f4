"""Shared pieces of the host-program system tests (``test_hosts_*.py``): sshd, sudo, su, login.

* ``host_lock``: one run of these tests at a time on a machine (they share fixed names:
  users ``pdt-host-*``, PAM services ``sshd-pdt-host`` and ``pdt-host-sudo*``, the file
  ``/etc/sudoers.d/pdt-host``);
* ``host_users``: local users ``pdt-host-<name>`` (home ``/``, a known password each), mapped to
  the simulator's scripted Duo user ``<name>`` by ``HostEnv.map_file``;
* ``host_env``: the config (rewritten per test with :meth:`HostEnv.configure`), the audit file
  and the simulator marks;
* :func:`example_stack`: a shipped ``etc/pam.d`` example with ``conf=`` pointing at the test
  config, so the tests run the very files the README tells administrators to copy;
* :class:`Pty`: a program on a pseudo-terminal that is its controlling terminal (``pty.fork``),
  read and answered like a person at a console would.
"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import pwd
import select
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .conftest import ENTRY, REPO, _ensure_root_dir, _write_root_file, clean_env, toml_table

LOCK_FILE = Path("/run/lock/pam_duo_py-host-tests.lock")
LOCK_TIMEOUT = 600.0
EXAMPLES = REPO / "etc" / "pam.d"
PAM_LINE = f"pam_python.so {ENTRY}"
READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine, "0")  # as /proc/PID/syscall shows it

# short name -> Duo user the simulator plays (see pam_duo_sim/simulator.py)
HOST_USERS = ("alice", "bob", "allow", "deny", "enroll", "pushdeny", "vpush", "vpushmobile", "pushtimeout",
              "tokenonly")
USER_PREFIX = "pdt-host-"

# What the simulator's default users (two phones and a token) see: docs/behaviour.md §6.
MENU_BODY = (
    "Enter a passcode or select one of the following options:\n"
    "\n"
    " 1. Duo Push to XXX-XXX-1234\n"
    " 2. Phone call to XXX-XXX-1234\n"
    " 3. SMS passcodes to XXX-XXX-1234\n"
    " 4. Duo Push to XXX-XXX-5678\n"
    " 5. Phone call to XXX-XXX-5678\n"
    "\n"
)
MENU_PROMPT = "Passcode or option (1-5): "
SSHD_NOTICE = ("(After Duo Push or Phone call, approve the request on your phone: "
               "nothing more is shown here until you do.)\n")


def menu(user: str, *, sshd: bool = False) -> str:
    """The exact menu prompt for ``user`` (a local name); under sshd with the notice line."""
    return f"Duo two-factor login for {user}\n\n{MENU_BODY}{SSHD_NOTICE if sshd else ''}{MENU_PROMPT}"


def password_of(user: str) -> str:
    return f"pw-{user}-7Qx!"


# ------------------------------------------------------------------ one run at a time
# Each test module imports these fixtures, so pytest sets them up once per module, whatever
# their scope: the lock is taken once per process and its holders counted.
_LOCK: dict[str, int] = {"fd": -1, "holders": 0}


@pytest.fixture(scope="session")
def host_lock(_require_root) -> Iterator[None]:
    """An exclusive lock for the whole run of the host tests (another run of them waits for it)."""
    if _LOCK["holders"] == 0:
        _LOCK["fd"] = _take_lock()
    _LOCK["holders"] += 1
    try:
        yield
    finally:
        _LOCK["holders"] -= 1
        if _LOCK["holders"] == 0:
            os.close(_LOCK["fd"])
            _LOCK["fd"] = -1


def _take_lock() -> int:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)

    def too_long(signum, frame):  # noqa: ARG001
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, LOCK_TIMEOUT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another run holds it
    except TimeoutError:
        os.close(fd)
        pytest.fail(f"another run of the host tests held {LOCK_FILE} for {LOCK_TIMEOUT:.0f} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return fd


# ------------------------------------------------------------------ users
class HostUsers(dict):
    """short name -> local name ("alice" -> "pdt-host-alice")."""

    def password(self, short: str) -> str:
        return password_of(self[short])

    def uid(self, short: str) -> int:
        return pwd.getpwnam(self[short]).pw_uid


def _run_admin(argv: list[str], input: Optional[str] = None) -> None:
    proc = subprocess.run(argv, env=clean_env(), input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")


@pytest.fixture(scope="session")
def host_users(host_lock) -> Iterator[HostUsers]:
    users = HostUsers({short: USER_PREFIX + short for short in HOST_USERS})
    created = []
    for name in users.values():
        try:
            pwd.getpwnam(name)
        except KeyError:
            _run_admin(["useradd", "-M", "-d", "/", "-s", "/bin/bash", name])
            created.append(name)
    _run_admin(["chpasswd"], input="".join(f"{name}:{password_of(name)}\n" for name in users.values()))
    try:
        yield users
    finally:
        if not os.environ.get("PDT_KEEP_USERS"):
            for name in created:
                subprocess.run(["userdel", name], env=clean_env(), capture_output=True)


# ------------------------------------------------------------------ config, audit, simulator
class HostEnv:
    """The test config (one path, rewritten per test), its map and audit files, the simulator."""

    def __init__(self, root: Path, simulator, users: HostUsers):
        self.root = root
        self.simulator = simulator
        self.users = users
        self.config = root / "host.toml"
        self.audit = root / "host-audit.jsonl"
        self.map_file = _write_root_file(
            root / "host-map.txt", "".join(f"{local} {short}\n" for short, local in users.items()), 0o600)
        self.configure()

    def configure(self, broker_socket: Optional[Path] = None, remember: Optional[dict] = None, **auth) -> Path:
        """Write the config with these ``[auth]`` settings (quick pushes, pushinfo with the command)."""
        settings = {"push_timeout": 10, "pushinfo_command": True}
        settings.update(auth)
        duo = self.simulator.duo_settings()
        tables = [
            toml_table("duo", duo),
            toml_table("auth", settings),
            toml_table("users", {"map_file": str(self.map_file)}),
            toml_table("log", {"audit_file": str(self.audit)}),
        ]
        if broker_socket is not None:
            tables.append(toml_table("broker", {"socket": str(broker_socket)}))
        if remember is not None:
            tables.append(toml_table("remember", remember))
        return _write_root_file(self.config, "\n".join(tables), 0o600)

    # -- what happened
    def mark(self) -> tuple[int, int, float]:
        return self.simulator.mark(), len(self.audit_events()), time.time()

    def requests(self, mark: tuple[int, int, float]) -> list[dict]:
        """Duo API requests (not connections) made since ``mark``.

        A request is logged when its answer is sent: a long poll that an earlier login gave up on
        may be logged later, so requests that started before the mark are left out."""
        return [r for r in self.simulator.requests(since=mark[0])
                if r.get("event") == "request" and r.get("ts_start", 0) >= mark[2]]

    def resolved(self, mark: tuple[int, int, float]) -> list[tuple[str, str]]:
        """(result, status) of the pushes and calls started since ``mark`` as the simulator resolved them.

        Only this login's transactions: a push an earlier test left unanswered may be ended
        (deny/timeout) by the simulator meanwhile."""
        txids = {r.get("txid") for r in self.requests(mark) if r.get("path") == "/auth/v2/auth" and r.get("txid")}
        return [(r["result"], r["status"]) for r in self.simulator.requests(since=mark[0])
                if r.get("event") == "push_resolved" and r.get("txid") in txids]

    def calls(self, mark: tuple[int, int, float]) -> list[tuple[str, Optional[str], Optional[str]]]:
        """(endpoint, Duo user, factor) of each request since ``mark``; auth_status polls folded into one."""
        out: list[tuple[str, Optional[str], Optional[str]]] = []
        for r in self.requests(mark):
            call = (r["path"].rsplit("/", 1)[-1], r.get("username"), r.get("factor"))
            if call[0] == "auth_status" and out and out[-1] == call:
                continue
            out.append(call)
        return out

    def pushinfo(self, mark: tuple[int, int, float]) -> list[dict[str, str]]:
        """The decoded ``pushinfo`` of every /auth request since ``mark``."""
        return [dict(urllib.parse.parse_qsl(r["pushinfo"], keep_blank_values=True))
                for r in self.requests(mark) if r["path"] == "/auth/v2/auth" and "pushinfo" in r]

    def audit_events(self, mark: Optional[tuple[int, int, float]] = None) -> list[dict]:
        try:
            text = self.audit.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        return events[mark[1]:] if mark else events



@pytest.fixture(scope="session")
def host_root(test_root, host_lock) -> Iterator[Path]:
    root = _ensure_root_dir(test_root / "hosts")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def host_env(installed, simulator, host_users, host_root) -> HostEnv:
    return HostEnv(host_root, simulator, host_users)


@pytest.fixture
def host(host_env) -> HostEnv:
    """``host_env`` with the default test config written again (a test may configure() its own)."""
    host_env.configure()
    return host_env


# ------------------------------------------------------------------ the shipped PAM examples
def example_stack(name: str, conf: Path) -> str:
    """``etc/pam.d/<name>`` with ``conf=<conf>`` on its (one) pam_python line."""
    text = (EXAMPLES / name).read_text()
    lines = text.splitlines()
    active = [i for i, line in enumerate(lines) if PAM_LINE in line and not line.lstrip().startswith("#")]
    assert len(active) <= 1, f"etc/pam.d/{name}: more than one Duo line"
    for i in active:
        assert lines[i].rstrip().endswith(str(ENTRY)), f"etc/pam.d/{name}: unexpected arguments: {lines[i]}"
        lines[i] = lines[i].rstrip() + f" conf={conf}"
    return "\n".join(lines) + "\n"


def install_pam_file(name: str, text: str) -> Path:
    path = Path("/etc/pam.d") / name
    _write_root_file(path, text, 0o644)
    return path


# ------------------------------------------------------------------ a program on a terminal
class Pty:
    """``argv`` on a new pseudo-terminal that is its controlling terminal (like a console login)."""

    def __init__(self, argv: list[str], env: Optional[dict[str, str]] = None):
        self.argv = argv
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once (the parent has threads)
            try:
                os.execve(argv[0], argv, env if env is not None else clean_env())
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = b""
        self.pos = 0  # how far expect() has consumed
        self.eof = False
        self.status: Optional[int] = None

    @property
    def text(self) -> str:
        """Everything the terminal showed, with CR LF as LF."""
        return self.raw.decode("utf-8", "replace").replace("\r\n", "\n")

    def _read(self, timeout: float) -> None:
        readable, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not readable:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the last process on the terminal closed it
            data = b""
        if data:
            self.raw += data
        else:
            self.eof = True

    def expect(self, needle: str, timeout: float = 20) -> str:
        """Wait for ``needle``; returns what was shown from the previous expect() up to its end."""
        want = needle.replace("\n", "\r\n").encode()
        deadline = time.monotonic() + timeout
        while True:
            at = self.raw.find(want, self.pos)
            if at >= 0:
                seen = self.raw[self.pos:at + len(want)]
                self.pos = at + len(want)
                return seen.decode("utf-8", "replace").replace("\r\n", "\n")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"{needle!r} not shown by {self.argv}; the terminal showed:\n{self.text}")
            self._read(remaining)

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def interrupt(self, key: str = "\x03", timeout: float = 20) -> None:
        """Type a signal key (Ctrl-C) once a program on the terminal is asleep reading it.

        Programs print their prompt before they read. A signal in between is handled
        at once (sudo only notes it) and the read that follows then waits for input
        that never comes, so the key waits for the read, as a person's reaction would.
        """
        terminal = os.readlink(f"/proc/{self.pid}/fd/0")
        deadline = time.monotonic() + timeout
        while not self._someone_reads(terminal):
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing read the terminal of {self.argv}; it showed:\n{self.text}")
            time.sleep(0.01)  # polls the condition above; there is no event to wait on
        self.send(key)

    def _someone_reads(self, terminal: str) -> bool:
        """True when a process of this terminal's session is blocked in read() on it."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    session = int(f.read().rsplit(")", 1)[1].split()[3])
                if session != self.pid:
                    continue
                with open(f"/proc/{entry}/syscall") as f:
                    call = f.read().split()  # "running", or the blocking call's number and arguments
                if call[0] == READ_SYSCALL and os.readlink(f"/proc/{entry}/fd/{int(call[1], 16)}") == terminal:
                    return True  # read(2) on the terminal, asleep
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile, or not blocked in a system call
        return False

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def finish(self, timeout: float = 30) -> int:
        """Read to the end; the exit status (negative: killed by that signal)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        if self.status is None:
            pidfd = os.pidfd_open(self.pid)  # readable once the child has exited
            try:
                readable, _, _ = select.select([pidfd], [], [], max(deadline - time.monotonic(), 0.5))
            finally:
                os.close(pidfd)
            if not readable:
                self.close()
                raise AssertionError(f"{self.argv} did not exit; the terminal showed:\n{self.text}")
            _, status = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def rest(self) -> str:
        """What was shown after the last expect()."""
        return self.raw[self.pos:].decode("utf-8", "replace").replace("\r\n", "\n")

    def close(self) -> None:
        if self.status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                _, status = os.waitpid(self.pid, 0)
                self.status = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        try:
            os.close(self.fd)
        except OSError:
            pass

    def __enter__(self) -> "Pty":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
