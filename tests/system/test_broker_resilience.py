"""The broker under attack and under change: nothing a caller does may make it refuse or
delay other users, hang a login, or decide with a config the disk no longer holds.

* a stopped broker (SIGSTOP): the PAM module decides in-process after the 2 s wait for
  "accepted"; once accepted, a lost broker is a refusal;
* parked logins for one user: "busy" for that user only, and the PAM module goes in-process;
* a connection flood as ``nobody``, and running out of descriptors: connections are shed,
  the broker goes on;
* the config and the files it names, changed on disk: the next login follows the disk.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pam_duo_py.broker_protocol import MAX_PER_USER, MESSAGES
from pam_duo_py.result import Result

from .brokerkit import fc_root  # noqa: F401  (fixture)
from .brokerkit import run_user_client, write_map, write_root_file
from .conftest import LOGIN, PAM_SUCCESS, STACK_SECOND_FACTOR, clean_env, default_map_lines
from .test_broker import GARBAGE, audit_lines, audit_mark, frame, raw_connect, read_reply, root_login
from .test_broker import setup_factory  # noqa: F401  (fixture)

pytestmark = pytest.mark.system
BAD_CONFIG = (Result.BAD_CONFIG, MESSAGES[Result.BAD_CONFIG])  # (result, message) of a broker whose config broke

PAM_AUTH_ERR = 7
PAM_SERVICE_ERR = 3
SERVICE = "pdt-fc-resil"
SYSTEMD_NOFILE = ["prlimit", "--nofile=1024:", "--"]  # the soft limit a systemd service gets (hard kept)


def _requests(simulator, since: int, path: str, username: str) -> int:
    return sum(1 for r in simulator.requests(since=since) if r.get("path") == path and r.get("username") == username)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ------------------------------------------------------------------ a stopped broker
def _wrapper(user: str, socket_path: Path) -> subprocess.Popen:
    env = clean_env()
    env["SSH_ORIGINAL_COMMAND"] = "true"
    env["SSH_CONNECTION"] = "127.0.0.1 40000 127.0.0.1 22"
    return subprocess.Popen(["runuser", "-u", user, "--", str(LOGIN), "--socket", str(socket_path)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stopped_broker_does_not_hang_logins(setup_factory, simulator, pam_service, run_pam):
    setup = setup_factory("stopped")
    pam_service(SERVICE, STACK_SECOND_FACTOR, conf=setup.config)
    assert run_pam(SERVICE, "pdt-alice").code == PAM_SUCCESS
    os.kill(setup.broker.pid, signal.SIGSTOP)
    try:
        mark = simulator.mark()
        wrapper = _wrapper("pdt-alice", setup.socket)
        result = run_pam(SERVICE, "pdt-alice", timeout=60)  # before: waits up to 700 s per frame
        assert result.code == PAM_SUCCESS, result
        assert _requests(simulator, mark, "/auth/v2/preauth", "alice") == 1  # decided in-process
        out, err = wrapper.communicate(timeout=60)
        assert wrapper.returncode == 1 and out == ""  # no broker, no fallback: refused
        assert "the broker did not take the login" in err and err.rstrip().endswith("login refused.")
    finally:
        os.kill(setup.broker.pid, signal.SIGCONT)
    # Woken up, the broker finds the abandoned requests: their clients are gone, nothing goes to Duo.
    assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"
    assert _requests(simulator, mark, "/auth/v2/preauth", "alice") == 1
    assert setup.broker.running


def test_a_broker_lost_after_accepting_is_a_refusal(setup_factory, simulator, pam_service, run_pam, pamdrive):
    setup = setup_factory("lost")
    pam_service(SERVICE, STACK_SECOND_FACTOR, conf=setup.config)
    mark = simulator.mark()
    login = subprocess.Popen([str(pamdrive), "--", SERVICE, "pdt-pushtimeout"], env=clean_env(),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _requests(simulator, mark, "/auth/v2/auth", "pushtimeout"):  # the push is out
            assert time.monotonic() < deadline and login.poll() is None, "no push was sent"
            time.sleep(0.05)
        setup.broker.process.send_signal(signal.SIGKILL)
        out, _ = login.communicate(timeout=30)
    finally:
        if login.poll() is None:
            login.kill()
            login.wait()
    assert out.decode().splitlines()[-1].startswith(f"RESULT {PAM_AUTH_ERR} "), out
    assert _requests(simulator, mark, "/auth/v2/auth", "pushtimeout") == 1  # no second push in-process


# ------------------------------------------------------------------ one user's parked logins
def _wait_for_the_menu(sock, number: int) -> None:
    """Until the login is parked at the Duo menu, so that it still holds its place under the cap.

    The cap bounds the logins running at once: the "accepted" answers count against it
    only while every accepted login is still running.
    """
    while True:
        message = read_reply(sock, skip_accepted=False)
        assert message is not None and message["type"] in ("ask", "show", "alert"), \
            f"accepted login {number} ended before the menu: {message}"
        if message["type"] == "ask":
            return
        sock.sendall(frame({"type": "ack"}))


def test_parked_logins_for_one_user_do_not_touch_another_users_login(setup_factory, simulator, pam_service,
                                                                      run_pam, fc_root):
    setup = setup_factory("parked")
    pam_service(SERVICE, STACK_SECOND_FACTOR, conf=setup.config)
    parked, first = [], []
    try:
        for _ in range(70):  # root callers (sshd, sudo) parked at pdt-alice's Duo menu
            sock = raw_connect(setup.socket)
            sock.sendall(frame({"type": "login", "user": "pdt-alice", "service": SERVICE, "interactive": True,
                                "config": str(setup.config)}))
            parked.append(sock)
            first.append(read_reply(sock, skip_accepted=False)["type"])
        for number, (sock, kind) in enumerate(zip(parked, first)):
            if kind == "accepted":
                _wait_for_the_menu(sock, number)
        # Another user's login through real PAM and the broker: not refused, not delayed.
        audit = audit_mark(setup.audit)
        result = run_pam(SERVICE, "pdt-allow")
        assert result.code == PAM_SUCCESS, result
        assert run_user_client(fc_root, setup.socket, "pdt-allow",
                               {"user": "pdt-allow", "interactive": False})[0]["result"] == "SUCCESS"
        assert first.count("accepted") == MAX_PER_USER and first.count("busy") == 70 - MAX_PER_USER, first
        # pdt-alice's own next login: "busy", so the PAM module decides it in-process.
        mark = simulator.mark()
        result = run_pam(SERVICE, "pdt-alice")
        assert result.code == PAM_SUCCESS, result
        assert _requests(simulator, mark, "/auth/v2/preauth", "alice") == 1
        users = [line["user"] for line in audit_lines(setup.audit, audit)]
        assert sorted(users) == ["pdt-alice", "pdt-allow", "pdt-allow"]
    finally:
        for sock in parked:
            sock.close()
    assert setup.broker.running


# ------------------------------------------------------------------ floods
FLOOD_SCRIPT = r'''
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, failed = [], 0
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:  # blocking: waits while the broker's backlog is full
        s.connect(sys.argv[1])
        held.append(s)
    except OSError:
        failed += 1
        s.close()
print(f"connected {len(held)} failed {failed}", flush=True)
sys.stdin.read()
'''


def _flood(socket_path: Path, user: str, count: int) -> subprocess.Popen:
    argv = ["/usr/bin/python3", "-I", "-c", FLOOD_SCRIPT, str(socket_path), str(count)]
    if user != "root":
        argv = ["runuser", "-u", user, "--"] + argv
    proc = subprocess.Popen(argv, env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("connected "), line
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_a_connection_flood_by_nobody_does_not_end_the_broker(setup_factory, pam_service, run_pam):
    setup = setup_factory("flood", prefix=SYSTEMD_NOFILE)
    pam_service(SERVICE, STACK_SECOND_FACTOR, conf=setup.config)
    baseline = _fds(setup.broker.pid)
    flood = _flood(setup.socket, "nobody", 1100)
    try:
        assert setup.broker.running, setup.broker.output()
        assert _fds(setup.broker.pid) < baseline + 64  # the flood holds a bounded number
        assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"
        assert run_pam(SERVICE, "pdt-alice").code == PAM_SUCCESS
    finally:
        _end(flood)
    assert setup.broker.running
    assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"


def test_running_out_of_descriptors_sheds_connections_and_the_broker_goes_on(setup_factory, pam_service,
                                                                                run_pam, simulator):
    setup = setup_factory("emfile")
    pam_service(SERVICE, STACK_SECOND_FACTOR, conf=setup.config)
    pid = str(setup.broker.pid)
    subprocess.run(["prlimit", "--pid", pid, "--nofile=48:"], check=True)
    flood = _flood(setup.socket, "root", 200)  # root: no per-uid cap, so accept() meets EMFILE
    try:
        assert setup.broker.running, setup.broker.output()
        # The broker sheds what it cannot take; the PAM module then decides in-process.
        assert run_pam(SERVICE, "pdt-alice").code == PAM_SUCCESS
    finally:
        _end(flood)
        subprocess.run(["prlimit", "--pid", pid, "--nofile=4096:"], check=True)
    assert setup.broker.running, setup.broker.output()
    assert setup.broker.wait_for(lambda s: "shedding connections" in s, stream="stderr", timeout=5)
    assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"


# ------------------------------------------------------------------ the config on disk
def test_the_next_login_follows_the_config_on_disk(setup_factory, simulator, pam_service, run_pam, test_root):
    setup = setup_factory("disk")
    pam_service(SERVICE, STACK_SECOND_FACTOR, conf=setup.config)
    assert root_login(setup.socket, "pdt-alice")[0] == "SUCCESS"

    os.chmod(setup.config, 0o644)  # in-process logins refuse this config: so must the broker
    result = run_pam(SERVICE, "pdt-alice")
    assert result.code == PAM_SERVICE_ERR, result
    assert root_login(setup.socket, "pdt-alice")[:2] == BAD_CONFIG
    os.chmod(setup.config, 0o600)
    assert root_login(setup.socket, "pdt-alice")[0] == "SUCCESS"

    moved = setup.config.with_suffix(".moved")
    os.rename(setup.config, moved)  # deleted
    assert root_login(setup.socket, "pdt-alice")[:2] == BAD_CONFIG
    os.rename(moved, setup.config)
    assert root_login(setup.socket, "pdt-alice")[0] == "SUCCESS"

    # map_file edited: pdt-alice is now the Duo user "deny".
    lines = [line for line in default_map_lines() if not line.startswith("pdt-alice ")]
    write_map(setup.map_file, lines + ["pdt-alice deny"])
    result, _, ui = root_login(setup.socket, "pdt-alice")
    assert result == "AUTH_ERR" and "Your account is disabled" in "\n".join(ui.alerts)
    os.chmod(setup.map_file, 0o666)  # a map anyone may write: refused
    assert root_login(setup.socket, "pdt-alice")[:2] == BAD_CONFIG

    # The config names another map_file.
    other = test_root / "fc-disk-other-map.txt"
    write_map(other)
    text = setup.config.read_text().replace(str(setup.map_file), str(other))
    write_root_file(setup.config, text)
    try:
        assert root_login(setup.socket, "pdt-alice")[0] == "SUCCESS"
        other.unlink()
        assert root_login(setup.socket, "pdt-alice")[:2] == BAD_CONFIG
    finally:
        setup.write_config()
        write_map(setup.map_file)
    assert root_login(setup.socket, "pdt-alice")[0] == "SUCCESS"
    line = setup.broker.wait_for(lambda s: "reload failed" in s, stream="stderr", timeout=5)
    assert line is not None and "users.map_file" in setup.broker.output()


# ------------------------------------------------------------------ no descriptor leak
def _settled_fds(pid: int, at_most: int, timeout: float = 10.0) -> int:
    """The broker's descriptor count once it is at most ``at_most`` (connections close asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        count = _fds(pid)
        if count <= at_most or time.monotonic() >= deadline:
            return count
        time.sleep(0.05)


def test_descriptors_come_back_after_logins_a_flood_and_garbage(setup_factory):
    setup = setup_factory("fds")
    pid = setup.broker.pid
    assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"  # the pool now holds a warm connection
    baseline = _fds(pid)
    for _ in range(100):
        assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"
    for index in range(100):
        with raw_connect(setup.socket) as sock:
            sock.sendall(list(GARBAGE.values())[index % len(GARBAGE)])
            read_reply(sock)
    _end(_flood(setup.socket, "nobody", 300))
    # One more warm Duo connection may be open (the pool warms the next one in the background).
    assert _settled_fds(pid, baseline + 1) <= baseline + 1, os.listdir(f"/proc/{pid}/fd")
    assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"
    assert setup.broker.running
