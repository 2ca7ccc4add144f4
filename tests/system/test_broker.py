"""The broker alone (docs/behaviour.md §7): ``pam-duo-py broker`` started by hand against the simulator,
driven by clients that run as root (in this process) or as a test user (``runuser``)."""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pam_duo_py.broker_client import connect, converse
from pam_duo_py.broker_protocol import FIRST_FRAME_TIMEOUT, MAX_FRAME, MAX_PER_UID, MESSAGES, recv_frame
from pam_duo_py.errors import ConversationError
from pam_duo_py.result import Result

from .brokerkit import (
    BrokerProcess,
    UserClient,
    fc_config_text,
    fc_root,  # noqa: F401  (fixture)
    run_user_client,
    socket_dir,
    write_map,
    write_root_file,
)
from .conftest import (
    LOGIN,
    PAM_SUCCESS,
    STACK_SECOND_FACTOR,
    clean_env,
    default_map_lines,
)

pytestmark = pytest.mark.system
BAD_CONFIG = (Result.BAD_CONFIG, MESSAGES[Result.BAD_CONFIG])  # (result, message) of a broker whose config broke

PUSH_TIMEOUT = 6


# ------------------------------------------------------------------ clients
class ScriptedUI:
    """A Prompter for root clients in this process: answers from a list, records everything."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.asked: list[str] = []
        self.shown: list[str] = []
        self.alerts: list[str] = []

    def ask(self, text: str) -> str:
        self.asked.append(text)
        if not self.answers:
            raise ConversationError("no more answers")
        return self.answers.pop(0)

    def show(self, text: str) -> None:
        self.shown.append(text)

    def alert(self, text: str) -> None:
        self.alerts.append(text)


def root_login(socket_path, user, answers=(), **fields):
    """One login as a root caller (like the PAM module). Returns (result, message, ui)."""
    request = {"user": user, "service": "pdt-fc-broker", "interactive": False}
    request.update(fields)
    ui = ScriptedUI(answers)
    with connect(str(socket_path)) as sock:
        result, message = converse(sock, request, ui, frame_timeout=60)
    return result, message, ui


def raw_connect(socket_path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(socket_path))
    return sock


def frame(obj) -> bytes:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def read_reply(sock: socket.socket, timeout: float = 10.0, *, skip_accepted: bool = True):
    """The broker's next frame (past an "accepted" one, unless told), or None when it closed the connection."""
    sock.settimeout(timeout)
    try:
        message = recv_frame(sock)
        if skip_accepted and message == {"type": "accepted"}:
            message = recv_frame(sock)
        return message
    except Exception as exc:  # ProtocolError: closed
        if "closed" in str(exc) or "went away" in str(exc):
            return None
        raise


def audit_lines(path: Path, since: int = 0) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines[since:] if line.strip()]


def audit_mark(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


class Setup:
    """One broker with its own config, map file, audit file and socket."""

    def __init__(self, simulator, test_root: Path, fc_root: Path, name: str, *,
                 auth: dict | None = None, map_lines=None, prefix=()):
        self.simulator = simulator
        self.name = name
        self.dir = socket_dir(fc_root, name)
        self.socket = self.dir / "broker.sock"
        self.map_file = test_root / f"fc-{name}-map.txt"
        self.audit = test_root / f"fc-{name}-audit.jsonl"
        self.config = test_root / f"fc-{name}.toml"
        self.auth = {"push_timeout": PUSH_TIMEOUT, "prompts": 3}
        self.auth.update(auth or {})
        write_map(self.map_file, map_lines)
        self.write_config()
        self.broker = BrokerProcess(self.config, self.socket, prefix=prefix)

    def config_text(self) -> str:
        return fc_config_text(self.simulator, auth=self.auth,
                              users={"map_file": str(self.map_file)},
                              log={"audit_file": str(self.audit)},
                              broker={"socket": str(self.socket)})

    def write_config(self, text: str | None = None) -> None:
        write_root_file(self.config, self.config_text() if text is None else text)

    def close(self) -> None:
        self.broker.stop()
        for path in (self.config, self.map_file, self.audit):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


@pytest.fixture(scope="module")
def setup_factory(installed, simulator, test_users, test_root, fc_root, syslog_capture):
    made: list[Setup] = []

    def make(name: str, **kwargs) -> Setup:
        setup = Setup(simulator, test_root, fc_root, name, **kwargs)
        made.append(setup)
        setup.broker.start()
        return setup

    yield make
    for setup in made:
        setup.close()


@pytest.fixture(scope="module")
def shared(setup_factory) -> Setup:
    """The broker most tests share."""
    return setup_factory("shared")


# ------------------------------------------------------------------ socket, files, trust
def test_socket_and_files_have_the_right_owner_and_mode(shared):
    st = os.lstat(shared.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert stat.S_IMODE(st.st_mode) == 0o666  # anyone may connect; who they are comes from SO_PEERCRED
    st = os.stat(shared.dir)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    for path in (shared.config, shared.map_file):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600), path
    # Logins create the audit file 0600.
    assert root_login(shared.socket, "pdt-allow")[0] == "SUCCESS"
    st = os.stat(shared.audit)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def test_broker_refuses_to_steal_a_live_socket(shared):
    second = BrokerProcess(shared.config, shared.socket)
    with pytest.raises(RuntimeError, match="another broker is listening"):
        second.start(timeout=15)
    assert second.process.returncode == 1
    assert shared.broker.running and os.path.exists(shared.socket)
    assert root_login(shared.socket, "pdt-allow")[0] == "SUCCESS"


@pytest.mark.parametrize("target", ["pdt-allow", "pdt-bob", "root"])
def test_a_user_cannot_authenticate_as_another_user(shared, fc_root, simulator, target):
    mark = simulator.mark()
    audit = audit_mark(shared.audit)
    result, client = run_user_client(fc_root, shared.socket, "pdt-alice",
                                     {"user": target, "interactive": False})
    assert result == {"event": "result", "result": "AUTH_ERR",
                      "message": "you can only authenticate as yourself"}, client.events
    assert not [e for e in client.events if e["event"] in ("ask", "show", "alert")]
    assert simulator.requests(since=mark) == [], "no Duo request may be made for the other user"
    assert audit_lines(shared.audit, audit) == []


def test_a_user_is_authenticated_as_themselves_and_their_address_is_only_claimed(shared, fc_root, simulator):
    audit = audit_mark(shared.audit)
    result, client = run_user_client(fc_root, shared.socket, "pdt-alice",
                                     {"user": "pdt-alice", "interactive": False, "rhost": "203.0.113.9",
                                      "service": "sshd", "tty": "/dev/pts/77"})
    assert result["result"] == "SUCCESS", client.events
    (line,) = audit_lines(shared.audit, audit)
    assert line["user"] == "pdt-alice" and line["outcome"] == "success" and line["factor"] == "push"
    assert line["service"] == "pam-duo-login"  # not the service the client named
    assert line["rhost"] == "203.0.113.9 (claimed)"


def test_a_second_user_cannot_read_the_first_ones_prompts(shared, fc_root):
    alice = UserClient(fc_root, shared.socket, "pdt-alice", {"user": "pdt-alice", "interactive": True})
    other = UserClient(fc_root, shared.socket, "pdt-pushdeny", {"user": "pdt-pushdeny", "interactive": True})
    try:
        alice_menu = alice.wait_event("ask")["text"]
        other_menu = other.wait_event("ask")["text"]  # both logins now wait at their menus
        assert alice_menu.startswith("Duo two-factor login for pdt-alice\n")
        assert other_menu.startswith("Duo two-factor login for pdt-pushdeny\n")
        alice.answer("1")
        other.answer("1")
        assert alice.finish()["result"] == "SUCCESS"
        assert other.finish()["result"] == "AUTH_ERR"
    finally:
        alice.kill()
        other.kill()
    assert "pdt-pushdeny" not in alice.texts()
    assert "pdt-alice" not in other.texts()
    assert "Login request denied." in other.texts()


def test_fifty_concurrent_logins_all_get_the_right_answer(shared, simulator):
    expected = {"pdt-allow": "SUCCESS", "pdt-alice": "SUCCESS", "pdt-deny": "AUTH_ERR",
                "pdt-pushdeny": "AUTH_ERR", "pdt-enroll": "AUTH_ERR"}
    users = [list(expected)[i % len(expected)] for i in range(50)]
    audit = audit_mark(shared.audit)
    barrier = threading.Barrier(len(users))
    results: dict[int, object] = {}

    def one(index: int, user: str) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = root_login(shared.socket, user)
        except BaseException as exc:  # noqa: B036 - reported below
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i, u)) for i, u in enumerate(users)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    elapsed = time.monotonic() - start
    assert len(results) == len(users)
    wrong = {i: (users[i], results[i]) for i in range(len(users))
             if not isinstance(results[i], tuple) or results[i][0] != expected[users[i]]}
    assert not wrong, wrong
    for i, user in enumerate(users):
        _, _, ui = results[i]
        texts = "\n".join(ui.asked + ui.shown + ui.alerts)
        if user == "pdt-deny":
            assert "Your account is disabled" in texts
        if user == "pdt-enroll":
            assert "Enroll at: https://localhost/portal?code=" in texts
        if user in ("pdt-alice", "pdt-pushdeny"):
            assert "Pushed a login request to your device..." in texts
        assert not ui.asked  # non-interactive: no menu
    lines = audit_lines(shared.audit, audit)
    assert sorted(line["user"] for line in lines) == sorted(users)
    assert elapsed < 60, f"50 logins took {elapsed:.1f} s"


def test_the_per_uid_cap_refuses_the_fifth_concurrent_login(shared, fc_root, drop_dir):
    holders = [UserClient(fc_root, shared.socket, "pdt-alice", {"user": "pdt-alice", "interactive": True})
               for _ in range(MAX_PER_UID)]
    try:
        for holder in holders:
            holder.wait_event("ask")  # each of the four now holds a login at its menu
        result, client = run_user_client(fc_root, shared.socket, "pdt-alice",
                                         {"user": "pdt-alice", "interactive": False})
        assert result == {"event": "result", "result": "BUSY",
                          "message": "too many concurrent logins for this user"}, client.events
        proc = _wrapper_as("pdt-alice", shared.socket, drop_dir)  # pam-duo-login says why, runs nothing
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr == "Duo login refused: too many concurrent logins for this user.\n"
        # Another user is not affected, nor is root.
        assert run_user_client(fc_root, shared.socket, "pdt-allow",
                               {"user": "pdt-allow", "interactive": False})[0]["result"] == "SUCCESS"
        assert root_login(shared.socket, "pdt-alice")[0] == "SUCCESS"
        for holder in holders:
            assert holder.finish([None])["result"] == "CONV_ERR"
    finally:
        for holder in holders:
            holder.kill()
    # The slots are given back.
    result, client = run_user_client(fc_root, shared.socket, "pdt-alice",
                                     {"user": "pdt-alice", "interactive": False})
    assert result["result"] == "SUCCESS", client.events


def test_a_client_that_disconnects_mid_push_does_not_disturb_others(shared, fc_root, simulator):
    mark = simulator.mark()
    waiting = UserClient(fc_root, shared.socket, "pdt-pushtimeout",
                         {"user": "pdt-pushtimeout", "interactive": False})
    try:
        shown = waiting.wait_event("show")
        assert shown["text"] == "Pushed a login request to your device..."
    finally:
        waiting.kill()
    assert any(r.get("path") == "/auth/v2/auth" and r.get("username") == "pushtimeout"
               for r in simulator.requests(since=mark))
    start = time.monotonic()
    result, _, _ = root_login(shared.socket, "pdt-alice")
    assert result == "SUCCESS"
    result, client = run_user_client(fc_root, shared.socket, "pdt-alice",
                                     {"user": "pdt-alice", "interactive": False})
    assert result["result"] == "SUCCESS", client.events
    assert time.monotonic() - start < 5, "the second login must not wait for the abandoned push"
    assert shared.broker.running


# ------------------------------------------------------------------ garbage
GARBAGE = {
    "huge length": struct.pack(">I", 0xFFFFFFFF),
    "just over the limit": struct.pack(">I", MAX_FRAME + 1) + b"{" * 100,
    "not JSON": frame(b"hello"),
    "not UTF-8": frame(b'{"type": "login", "user": "\xff\xfe"}'),
    "JSON but not an object": frame([1, 2]),
    "no type": frame({"user": "pdt-alice"}),
    "type not a string": frame({"type": 5}),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_first_frames_are_refused_and_the_broker_keeps_serving(shared, name):
    with raw_connect(shared.socket) as sock:
        sock.sendall(GARBAGE[name])
        reply = read_reply(sock)
        assert reply == {"type": "result", "result": "SERVICE_ERR", "message": "bad request"}
        assert read_reply(sock) is None  # and the broker hangs up
    assert root_login(shared.socket, "pdt-allow")[0] == "SUCCESS"


@pytest.mark.parametrize("message, result, text", [
    ({"type": "answer", "text": "1"}, "SERVICE_ERR", "expected a login request"),
    ({"type": "login"}, "USER_UNKNOWN", "no user named"),
    ({"type": "login", "user": ["pdt-alice"]}, "USER_UNKNOWN", "no user named"),
    ({"type": "login", "user": "pdt-alice\x00x"}, "USER_UNKNOWN", "no user named"),
    ({"type": "login", "user": "pdt-nosuchuser"}, "USER_UNKNOWN", ""),
    ({"type": "login", "user": "pdt-allow", "config": "/etc/other.toml"}, "OTHER_CONFIG",
     "the broker serves another config"),
])
def test_wrong_requests_get_a_clean_refusal(shared, message, result, text):
    with raw_connect(shared.socket) as sock:
        sock.sendall(frame(message))
        assert read_reply(sock) == {"type": "result", "result": result, "message": text}
        assert read_reply(sock) is None


def test_garbage_in_the_middle_of_a_conversation(shared):
    with raw_connect(shared.socket) as sock:
        sock.sendall(frame({"type": "login", "user": "pdt-alice", "interactive": True}))
        ask = read_reply(sock)
        assert ask["type"] == "ask" and "pdt-alice" in ask["text"]
        sock.sendall(frame(b"not json"))
        reply = read_reply(sock)
        assert reply is None or reply["result"] == "CONV_ERR"
    with raw_connect(shared.socket) as sock:
        sock.sendall(frame({"type": "login", "user": "pdt-alice", "interactive": True}))
        assert read_reply(sock)["type"] == "ask"
        sock.sendall(frame({"type": "answer", "text": 12}))  # not a string
        assert read_reply(sock) == {"type": "result", "result": "CONV_ERR", "message": ""}
    assert root_login(shared.socket, "pdt-alice")[0] == "SUCCESS"


def test_a_slow_loris_first_frame_is_cut_off_and_does_not_block_others(shared):
    with raw_connect(shared.socket) as sock:
        start = time.monotonic()
        body = json.dumps({"type": "login", "user": "pdt-allow", "pad": "x" * 200}).encode()
        data = struct.pack(">I", len(body)) + body
        sock.sendall(data[:3])
        # Others are served while the slow client holds its connection.
        assert root_login(shared.socket, "pdt-allow")[0] == "SUCCESS"
        closed_at = None
        sent = 3
        while time.monotonic() - start < FIRST_FRAME_TIMEOUT + 5:
            readable, _, _ = select.select([sock], [], [], 0.5)  # one byte every half second
            if readable:
                closed_at = time.monotonic() - start
                break
            try:
                sock.sendall(data[sent:sent + 1])
            except OSError:
                closed_at = time.monotonic() - start
                break
            sent += 1
        assert closed_at is not None, "the broker kept a trickling client forever"
        assert FIRST_FRAME_TIMEOUT - 1 <= closed_at <= FIRST_FRAME_TIMEOUT + 3, closed_at
        assert sent < len(data)
        reply = read_reply(sock)
        assert reply is None or reply["message"] == "bad request"
    assert root_login(shared.socket, "pdt-allow")[0] == "SUCCESS"


# ------------------------------------------------------------------ broker down
def _wrapper_as(user: str, socket_path: Path, marker: Path) -> subprocess.CompletedProcess:
    env = clean_env()
    env["SSH_ORIGINAL_COMMAND"] = f"touch {marker}"
    env["SSH_CONNECTION"] = "127.0.0.1 40000 127.0.0.1 22"
    return subprocess.run(["runuser", "-u", user, "--", str(LOGIN), "--socket", str(socket_path)],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


@pytest.fixture
def drop_dir(fc_root, test_users):
    """A directory pdt-alice may write to: proves that the wrapper ran nothing."""
    path = fc_root / "drop"
    path.mkdir(exist_ok=True)
    os.chown(path, test_users.uid("pdt-alice"), 0)
    os.chmod(path, 0o755)
    marker = path / "ran"
    yield marker
    assert not marker.exists()


def test_wrapper_with_no_broker_exits_1_and_runs_nothing(installed, fc_root, drop_dir):
    missing = socket_dir(fc_root, "missing") / "broker.sock"
    proc = _wrapper_as("pdt-alice", missing, drop_dir)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"pam-duo-login: broker not reachable at {missing}" in proc.stderr
    assert proc.stderr.rstrip().endswith("login refused.")
    assert "Traceback" not in proc.stderr


def test_wrapper_without_arguments_asks_the_default_socket(installed, drop_dir):
    """As the shipped ForceCommand line runs it: no ``--socket``."""
    from pam_duo_py.paths import DEFAULT_SOCKET

    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"a broker may be serving {DEFAULT_SOCKET}")
    env = clean_env()
    env["SSH_ORIGINAL_COMMAND"] = f"touch {drop_dir}"
    proc = subprocess.run(["runuser", "-u", "pdt-alice", "--", str(LOGIN)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("pam-duo-login: broker ") and DEFAULT_SOCKET in proc.stderr
    assert proc.stderr.rstrip().endswith("login refused.") and "Traceback" not in proc.stderr


def test_wrapper_with_a_stale_socket_exits_1_and_runs_nothing(installed, fc_root, drop_dir):
    stale = socket_dir(fc_root, "stale") / "broker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # the file stays, nobody listens
    os.chmod(stale, 0o666)
    proc = _wrapper_as("pdt-alice", stale, drop_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "broker not reachable" in proc.stderr and "Connection refused" in proc.stderr


def test_wrapper_refuses_a_socket_in_a_writable_directory(installed, fc_root, drop_dir):
    unsafe = socket_dir(fc_root, "unsafe")
    os.chmod(unsafe, 0o777)
    path = unsafe / "broker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        os.chmod(path, 0o666)
        listener.listen(1)
        proc = _wrapper_as("pdt-alice", path, drop_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"{unsafe} is writable by group or others" in proc.stderr


def test_wrapper_refuses_a_broker_that_is_not_root(installed, fc_root, drop_dir, test_users):
    directory = socket_dir(fc_root, "impostor")
    path = directory / "broker.sock"
    # Bound by root in a root directory, but listen() called after dropping to pdt-deny:
    # SO_PEERCRED reports the listener's uid, so the wrapper must refuse it.
    script = ("import os, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
              f"s.bind({str(path)!r}); os.chmod({str(path)!r}, 0o666)\n"
              f"os.setgid({test_users.uid('pdt-deny')}); os.setgroups([]); os.setuid({test_users.uid('pdt-deny')})\n"
              "s.listen(4); print('ready', flush=True)\n"
              "while True:\n"
              "    c, _ = s.accept(); c.recv(65536); c.close()\n")
    impostor = subprocess.Popen(["/usr/bin/python3", "-I", "-c", script], env=clean_env(),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout.readline().strip() == "ready"
        proc = _wrapper_as("pdt-alice", path, drop_dir)
    finally:
        impostor.kill()
        impostor.wait()
    assert proc.returncode == 1 and proc.stdout == ""
    assert "is not running as root" in proc.stderr


# ------------------------------------------------------------------ PAM module and broker
def _connections(simulator, since: int, username: str) -> int:
    """Connections that carried ``username``'s requests (other brokers' keepers may connect meanwhile)."""
    return len({r["conn"] for r in simulator.requests(since=since)
                if r.get("event") == "request" and r.get("username") == username})


def _preauths(simulator, since: int, username: str) -> int:
    return sum(1 for r in simulator.requests(since=since)
               if r.get("path") == "/auth/v2/preauth" and r.get("username") == username)


def test_pam_module_hands_the_login_to_the_broker(setup_factory, simulator, pam_service, run_pam):
    setup = setup_factory("pam")
    pam_service("pdt-fc-broker", STACK_SECOND_FACTOR, conf=setup.config)
    mark = simulator.mark()
    audit = audit_mark(setup.audit)
    first = run_pam("pdt-fc-broker", "pdt-alice")
    second = run_pam("pdt-fc-broker", "pdt-alice", tty="/dev/pts/9", answers=["1"])
    assert first.code == PAM_SUCCESS, first
    assert second.code == PAM_SUCCESS, second
    # The menu came through the broker's conversation relay.
    assert second.prompts and second.prompts[0][1].startswith("Duo two-factor login for pdt-alice")
    assert _preauths(simulator, mark, "alice") == 2
    # The broker's warm connection was reused: one TCP+TLS connection for both logins.
    assert _connections(simulator, mark, "alice") == 1, simulator.requests(since=mark)
    lines = audit_lines(setup.audit, audit)
    assert [(line["user"], line["outcome"], line["service"]) for line in lines] == \
        [("pdt-alice", "success", "pdt-fc-broker")] * 2

    # Broker dead, socket still there: the module decides in-process.
    setup.broker.process.send_signal(signal.SIGKILL)
    setup.broker.process.wait(timeout=10)
    assert os.path.exists(setup.socket)
    mark = simulator.mark()
    for _ in range(2):
        result = run_pam("pdt-fc-broker", "pdt-alice")
        assert result.code == PAM_SUCCESS, result
    assert _preauths(simulator, mark, "alice") == 2
    assert _connections(simulator, mark, "alice") == 2  # one connection per in-process login
    assert len(audit_lines(setup.audit, audit)) == 4


def test_pam_module_with_a_broker_for_another_config_decides_in_process(shared, test_root, simulator,
                                                                          pam_service, run_pam):
    other = test_root / "fc-other.toml"
    write_root_file(other, shared.config.read_text())  # same socket, another file
    try:
        pam_service("pdt-fc-broker", STACK_SECOND_FACTOR, conf=other)
        mark = simulator.mark()
        audit = audit_mark(shared.audit)
        result = run_pam("pdt-fc-broker", "pdt-deny")
        assert result.code == 7, result  # PAM_AUTH_ERR, decided here
        assert "Your account is disabled" in result.text
        assert _preauths(simulator, mark, "deny") == 1
        assert len([line for line in audit_lines(shared.audit, audit) if line["user"] == "pdt-deny"]) == 1
    finally:
        other.unlink()


# ------------------------------------------------------------------ SIGHUP
def test_sighup_reloads_the_config_and_a_broken_one_refuses_logins(setup_factory, syslog_capture):
    setup = setup_factory("reload")
    broker = setup.broker
    # prompts = 3: three refused answers are asked for.
    result, _, ui = root_login(setup.socket, "pdt-alice", ["x", "x", "x"], interactive=True)
    assert result == "MAXTRIES" and len(ui.asked) == 3

    # auth.prompts = 1 and pdt-alice mapped to the Duo user "deny".
    setup.auth["prompts"] = 1
    write_map(setup.map_file, [line for line in default_map_lines() if not line.startswith("pdt-alice ")]
              + ["pdt-alice deny"])
    setup.write_config()
    since = broker.mark()
    broker.hup()
    assert broker.wait_for(lambda s: s == f"pam-duo-py broker: reloaded {setup.config}", since=since)
    result, _, ui = root_login(setup.socket, "pdt-tokenonly", ["x", "x"], interactive=True)
    assert result == "MAXTRIES" and len(ui.asked) == 1
    result, _, ui = root_login(setup.socket, "pdt-alice")
    assert result == "AUTH_ERR" and "Your account is disabled" in "\n".join(ui.alerts)

    # A broken config on SIGHUP: logged, and logins are refused until it is fixed (never the old config).
    setup.write_config("[duo]\nikey = \n")
    since = broker.mark("stderr")
    log_mark = syslog_capture.mark()
    broker.hup()
    line = broker.wait_for(lambda s: "reload failed, logins refused until the config is fixed" in s,
                           stream="stderr", since=since)
    assert line is not None, broker.output()
    assert str(setup.config) in line and "TOML syntax error" in line
    if syslog_capture.available:
        assert syslog_capture.wait_for(lambda s: "reload failed, logins refused" in s, since=log_mark, timeout=5)
    assert broker.running
    assert root_login(setup.socket, "pdt-tokenonly", ["x", "x"], interactive=True)[:2] == BAD_CONFIG
    assert root_login(setup.socket, "pdt-alice")[:2] == BAD_CONFIG

    # A config that breaks the file rule is refused the same way.
    setup.auth["prompts"] = 3
    setup.write_config()
    os.chmod(setup.config, 0o644)
    since = broker.mark("stderr")
    broker.hup()
    assert broker.wait_for(lambda s: "reload failed" in s, stream="stderr", since=since)
    assert root_login(setup.socket, "pdt-tokenonly", ["x", "x"], interactive=True)[:2] == BAD_CONFIG
    os.chmod(setup.config, 0o600)  # fixed: the next login loads it, SIGHUP or not
    assert len(root_login(setup.socket, "pdt-tokenonly", ["x", "x", "x"], interactive=True)[2].asked) == 3
