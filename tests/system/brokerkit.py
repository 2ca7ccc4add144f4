"""Shared pieces of the broker and ForceCommand system tests.

* ``fc_root``: ``/run/pam_duo_py_fc/<pid>``, root-owned 0755 (a broker socket
  directory must be root's and not writable by others), removed at the end;
* :class:`BrokerProcess`: ``pam-duo-py -c CONFIG broker --socket PATH`` started
  by hand, its stdout and stderr collected line by line;
* :class:`UserClient`: a broker client that runs as a local user
  (``runuser -u USER -- /usr/bin/python3 -I client.py``), importing the
  installed package, and reports every frame as a JSON line;
* ``write_fc_config``: a config (root, 0600) from the simulator's keys.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import pytest

from .conftest import CLI, LIB_DIR, _ensure_root_dir, _write_root_file, clean_env, default_map_lines, stop_process, toml_table

FC_ROOT = Path("/run/pam_duo_py_fc")
BROKER_START_TIMEOUT = 20.0

CLIENT_SCRIPT = f'''\
"""Broker client for the system tests: runs as the user it is started as."""
import json
import sys

sys.path.insert(0, {str(LIB_DIR)!r})
from pam_duo_py.broker_client import connect, converse  # noqa: E402
from pam_duo_py.broker_protocol import ProtocolError  # noqa: E402
from pam_duo_py.errors import ConversationError  # noqa: E402


def out(event, **fields):
    sys.stdout.write(json.dumps(dict(fields, event=event)) + "\\n")
    sys.stdout.flush()


class UI:
    """Prompts are answered with JSON lines from stdin (null or end of input: EOF)."""

    def ask(self, text):
        out("ask", text=text)
        line = sys.stdin.readline()
        answer = json.loads(line) if line.strip() else None
        if answer is None:
            raise ConversationError("end of input")
        return answer

    def show(self, text):
        out("show", text=text)

    def alert(self, text):
        out("alert", text=text)


try:
    sock = connect(sys.argv[1])
except ProtocolError as exc:
    out("error", text=str(exc))
    sys.exit(3)
out("connected")
try:
    with sock:
        result, message = converse(sock, json.loads(sys.argv[2]), UI())
except ProtocolError as exc:
    out("error", text=str(exc))
    sys.exit(4)
out("result", result=result, message=message)
'''


# ------------------------------------------------------------------ directories
@pytest.fixture(scope="session")
def fc_root(_require_root) -> Iterator[Path]:
    """``/run/pam_duo_py_fc/<pid>`` (root, 0755) with ``client.py`` (0644) in it."""
    _ensure_root_dir(FC_ROOT)
    root = _ensure_root_dir(FC_ROOT / str(os.getpid()))
    _write_root_file(root / "client.py", CLIENT_SCRIPT, 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)
    try:
        FC_ROOT.rmdir()
    except OSError:
        pass


def socket_dir(fc_root: Path, name: str) -> Path:
    """A fresh root-owned 0755 directory for one broker's socket."""
    path = fc_root / name
    shutil.rmtree(path, ignore_errors=True)
    return _ensure_root_dir(path)


# ------------------------------------------------------------------ config
def fc_config_text(simulator, *, auth: Optional[dict] = None, users: Optional[dict] = None,
                   log: Optional[dict] = None, broker: Optional[dict] = None,
                   duo: Optional[dict] = None) -> str:
    duo_table = simulator.duo_settings()
    for key, value in (duo or {}).items():
        if value is None:
            duo_table.pop(key, None)
        else:
            duo_table[key] = value
    parts = [toml_table("duo", duo_table)]
    for table, values in (("auth", auth), ("users", users), ("log", log), ("broker", broker)):
        if values is not None:
            parts.append(toml_table(table, values))
    return "\n".join(parts)


def write_root_file(path: Path, text: str, mode: int = 0o600) -> Path:
    return _write_root_file(path, text, mode)


def write_map(path: Path, lines: Optional[Iterable[str]] = None) -> Path:
    lines = default_map_lines() if lines is None else list(lines)
    return _write_root_file(path, "\n".join(lines) + "\n", 0o600)


# ------------------------------------------------------------------ the broker
class BrokerProcess:
    """``pam-duo-py -c CONFIG broker --socket PATH``, as root, with clean_env() (plus ``env``)."""

    def __init__(self, config: Path, socket_path: Path, env: Optional[dict] = None, prefix: Iterable[str] = ()):
        self.config = config
        self.socket_path = socket_path
        self.env = dict(clean_env(), **(env or {}))
        self.prefix = list(prefix)  # e.g. ["prlimit", "--nofile=1024:4096", "--"]
        self.process: Optional[subprocess.Popen] = None
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = BROKER_START_TIMEOUT) -> "BrokerProcess":
        argv = self.prefix + [str(CLI), "-c", str(self.config), "broker", "--socket", str(self.socket_path)]
        self.process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True,
                                      name=f"broker-{name}")
            reader.start()
            self._readers.append(reader)
        line = self.wait_for(lambda s: "listening on" in s, timeout=timeout, exited_ok=False)
        if line is None:
            self.stop()
            raise RuntimeError(f"the broker did not report 'listening on' within {timeout} s:\n"
                               f"{self.output()}")
        return self

    def _read(self, name: str, stream) -> None:
        for raw in stream:
            with self._cond:
                self.lines[name].append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def mark(self, stream: str = "stdout") -> int:
        with self._cond:
            return len(self.lines[stream])

    def wait_for(self, predicate: Callable[[str], bool], *, stream: str = "stdout", since: int = 0,
                 timeout: float = 10.0, exited_ok: bool = True) -> Optional[str]:
        """The first line of ``stream`` from ``since`` on that satisfies ``predicate``, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[stream][since:]:
                    if predicate(line):
                        return line
                if self.process is None or self.process.poll() is not None:
                    if not exited_ok or all(not r.is_alive() for r in self._readers):
                        return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.5))

    def hup(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is None:
            return
        stop_process(proc, timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)

    def output(self) -> str:
        with self._cond:
            return ("stdout:\n" + "\n".join(self.lines["stdout"]) +
                    "\nstderr:\n" + "\n".join(self.lines["stderr"]))


# ------------------------------------------------------------------ clients
class UserClient:
    """client.py run as ``user``; events are the JSON lines it prints."""

    def __init__(self, fc_root: Path, socket_path: Path, user: str, request: dict):
        argv = ["runuser", "-u", user, "--", "/usr/bin/python3", "-I", str(fc_root / "client.py"),
                str(socket_path), json.dumps(request)]
        self.user = user
        self.process = subprocess.Popen(argv, env=clean_env(), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd="/", start_new_session=True)
        self.events: list[dict] = []
        self._queue: "queue.Queue[Optional[dict]]" = queue.Queue()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.append(self.process.stderr.read()),
                         daemon=True).start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "garbage", "text": raw.decode("utf-8", "replace")}
            self.events.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def next_event(self, timeout: float = 15.0) -> dict:
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.user}: no event within {timeout} s; so far {self.events}") from None
        if event is None:
            self._queue.put(None)
            raise AssertionError(f"{self.user}: client ended; events {self.events}; "
                                 f"stderr {self.stderr!r}")
        return event

    def wait_event(self, kind: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(deadline - time.monotonic(), 0.01))
            if event["event"] == kind:
                return event

    def answer(self, value: Optional[str]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(value) + "\n").encode())
        self.process.stdin.flush()

    def finish(self, answers: Iterable[Optional[str]] = (), timeout: float = 30.0) -> dict:
        """Feed the remaining answers, close stdin, and return the result event."""
        assert self.process.stdin is not None
        for value in answers:
            self.process.stdin.write((json.dumps(value) + "\n").encode())
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        self.process.wait(timeout=timeout)
        deadline = time.monotonic() + 5
        while True:
            try:
                event = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                event = None
            if event is None:
                break
        results = [e for e in self.events if e["event"] in ("result", "error")]
        assert results, f"{self.user}: no result; events {self.events}; stderr {self.stderr!r}"
        return results[-1]

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def kill(self) -> None:
        """SIGKILL to the whole process group this client was started in."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def texts(self) -> str:
        return "\n".join(e.get("text", "") for e in self.events)


def run_user_client(fc_root: Path, socket_path: Path, user: str, request: dict,
                    answers: Iterable[Optional[str]] = (), timeout: float = 30.0) -> tuple[dict, UserClient]:
    client = UserClient(fc_root, socket_path, user, request)
    return client.finish(answers, timeout=timeout), client
