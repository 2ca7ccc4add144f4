"""The broker's protocol, trust rule and client backend over ``socket.socketpair()``: no broker, no Duo."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pam_duo_py import broker_protocol, pam
from pam_duo_py.broker_client import BrokerBackend, converse
from pam_duo_py.broker_protocol import MAX_FRAME, WRAPPER_SERVICE, ProtocolError, peer_uid, recv_frame, send_frame
from pam_duo_py.broker_trust import Refusal, login_request, named_config
from pam_duo_py.errors import ConversationError
from pam_duo_py.hosts import command_for
from pam_duo_py.login import LoginRequest, profile
from pam_duo_py.result import Result

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVED = "/etc/pam_duo_py/pam_duo.toml"


@pytest.fixture
def pair():
    client, broker = socket.socketpair()
    with client, broker:
        yield client, broker


def raw(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">I", len(data)) + data)


class UI:
    def __init__(self, answers=("1",)) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str]] = []

    def ask(self, text: str) -> str:
        self.seen.append(("ask", text))
        return self.answers.pop(0)

    def show(self, text: str) -> None:
        self.seen.append(("show", text))

    def alert(self, text: str) -> None:
        self.seen.append(("alert", text))


# ------------------------------------------------------------------ JSON without importing json
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12)


@given(JSON_VALUES)
def test_dumps_and_loads_are_json_s_own(value):
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    assert broker_protocol.dumps(value) == text
    assert broker_protocol.loads(text) == json.loads(text)
    spaced = " \n" + json.dumps(value, indent=1) + "\t "
    assert broker_protocol.loads(spaced) == json.loads(spaced)


@given(st.text(max_size=40) | st.sampled_from(['{"a": 1', '{"a": 1} x', '"\x01"', "[1,]", "NaN", "\ufeff{}", " "]))
def test_loads_refuses_what_json_refuses(text):
    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            broker_protocol.loads(text)
    else:
        value = broker_protocol.loads(text)
        assert value == expected or (value != value and expected != expected)  # NaN


# ------------------------------------------------------------------ frames
def test_a_frame_goes_through_whole(pair):
    client, broker = pair
    send_frame(client, {"type": "login", "user": "älice", "n": 3, "x": None})
    assert recv_frame(broker) == {"type": "login", "user": "älice", "n": 3, "x": None}


def test_the_peer_uid_comes_from_the_kernel(pair):
    assert peer_uid(pair[0]) == peer_uid(pair[1]) == os.getuid()


@pytest.mark.parametrize("data, why", [
    (b"hello", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1, 2]", "not a typed object"),
    (b'{"user": "a"}', "not a typed object"), (b'{"type": 5}', "not a typed object"),
])
def test_frames_that_are_not_typed_json_objects_are_refused(pair, data, why):
    raw(pair[0], data)
    with pytest.raises(ProtocolError, match=why):
        recv_frame(pair[1])


def test_an_oversized_frame_is_refused_on_both_ends(pair):
    with pytest.raises(ProtocolError, match="too large"):
        send_frame(pair[0], {"type": "x", "pad": "x" * MAX_FRAME})
    pair[0].sendall(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="too large"):
        recv_frame(pair[1])


def test_the_deadline_bounds_the_whole_frame(pair):
    pair[0].sendall(struct.pack(">I", 10) + b"{")
    with pytest.raises(ProtocolError, match="timed out"):
        recv_frame(pair[1], deadline=time.monotonic() + 0.05)


def test_an_answer_waiting_past_the_deadline_is_still_read(pair):
    """A PAM client descheduled past its wait (50 logins at once on two CPUs) takes the answer that is there."""
    send_frame(pair[0], {"type": "accepted"})
    assert recv_frame(pair[1], deadline=time.monotonic() - 1) == {"type": "accepted"}
    with pytest.raises(ProtocolError, match="timed out"):
        recv_frame(pair[1], deadline=time.monotonic() - 1)  # and nothing there: timed out at once


def test_a_closed_peer_is_a_protocol_error(pair):
    pair[0].close()
    with pytest.raises(ProtocolError, match="closed the connection"):
        recv_frame(pair[1])


# ------------------------------------------------------------------ the trust rule
class Passwd:
    def __init__(self, name: str) -> None:
        self.name = name


USERS = {1000: Passwd("alice"), 1001: Passwd("bob")}


def trust(uid: int, **message):
    return login_request(uid, dict({"type": "login"}, **message), USERS.get)


def test_root_may_name_everything():
    request = trust(0, user="bob", service="sshd", rhost="203.0.113.5", tty="ssh", password="pw",
                    config=SERVED, caller_uid=1000, command="ls", env_passcode="123456")
    assert request == LoginRequest(user="bob", service="sshd", rhost="203.0.113.5", tty="ssh",
                                   host=profile("sshd", "ls"), caller_uid=1000, password="pw", env_passcode="123456", trusted_address=True)


def test_only_root_chooses_the_config_file():
    assert named_config(0, {"type": "login", "user": "bob", "config": "/etc/other.toml"}) == "/etc/other.toml"
    assert named_config(0, {"type": "login", "user": "bob"}) is None
    assert named_config(0, {"type": "login", "user": "bob", "config": ["/etc/x"]}) is None
    assert named_config(1000, {"type": "login", "user": "alice", "config": "/etc/other.toml"}) is None


def test_a_user_is_only_themselves_under_the_wrapper_service():
    request = trust(1000, user="alice", service="sshd", rhost="203.0.113.5", password="pw", config="/etc/x.toml",
                    caller_uid=0, interactive=True)
    assert request == LoginRequest(user="alice", service=WRAPPER_SERVICE, rhost="203.0.113.5", interactive=True,
                                   host=profile(WRAPPER_SERVICE), caller_uid=1000, trusted_address=False)


@pytest.mark.parametrize("uid, user", [(1000, "bob"), (1000, "root"), (4242, "alice")])
def test_a_user_claiming_someone_else_is_refused_and_noted(uid, user):
    refusal = trust(uid, user=user)
    assert (refusal.result, refusal.message) == (Result.AUTH_ERR, "you can only authenticate as yourself")
    assert refusal.note == f"broker: uid {uid} asked to log in as another user; refused"


@pytest.mark.parametrize("message, result, text", [
    ({"type": "answer", "text": "1"}, Result.SERVICE_ERR, "expected a login request"),
    ({"type": "login"}, Result.USER_UNKNOWN, "no user named"),
    ({"type": "login", "user": ["alice"]}, Result.USER_UNKNOWN, "no user named"),
    ({"type": "login", "user": "alice\x00x"}, Result.USER_UNKNOWN, "no user named"),
])
@pytest.mark.parametrize("uid", [0, 1000])
def test_requests_that_are_not_logins_are_refused(uid, message, result, text):
    assert login_request(uid, message, USERS.get) == Refusal(result, text)


@pytest.mark.parametrize("value, expected", [(1000, 1000), (-1, 0), (2**32, 0), (True, 0), ("1000", 0), (None, 0)])
def test_only_a_plain_uid_is_taken_as_the_caller(value, expected):
    assert trust(0, user="bob", caller_uid=value).caller_uid == expected


def test_the_trust_rule_reads_the_uid_from_the_socket_not_the_frame(pair):
    send_frame(pair[0], {"type": "login", "user": "someone-else", "caller_uid": 0})
    uid = peer_uid(pair[1])
    verdict = login_request(uid, recv_frame(pair[1]), lambda u: Passwd("me") if u == uid else None)
    if uid == 0:
        assert isinstance(verdict, LoginRequest) and verdict.user == "someone-else"
    else:
        assert isinstance(verdict, Refusal) and verdict.result is Result.AUTH_ERR


# ------------------------------------------------------------------ the client's conversation
def test_converse_relays_prompts_and_returns_the_result(pair):
    client, broker = pair
    for message in ({"type": "accepted"}, {"type": "ask", "text": "menu"}, {"type": "show", "text": "Pushed"},
                    {"type": "alert", "text": "Code 1"}, {"type": "result", "result": "SUCCESS", "message": ""}):
        send_frame(broker, message)
    ui = UI()
    assert converse(client, {"user": "alice"}, ui) == (Result.SUCCESS, "")
    assert ui.seen == [("ask", "menu"), ("show", "Pushed"), ("alert", "Code 1")]
    assert [recv_frame(broker) for _ in range(4)] == [
        {"user": "alice", "type": "login"}, {"type": "answer", "text": "1"}, {"type": "ack"}, {"type": "ack"}]


class Refusing(UI):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def ask(self, text: str) -> str:
        raise self.error


def test_a_user_who_cannot_be_asked_answers_eof(pair):
    client, broker = pair
    for message in ({"type": "accepted"}, {"type": "ask", "text": "menu"},
                    {"type": "result", "result": "AUTH_ERR", "message": ""}):
        send_frame(broker, message)
    assert converse(client, {"user": "alice"}, Refusing(ConversationError("no answer")))[0] is Result.AUTH_ERR
    assert [recv_frame(broker) for _ in range(2)] == [{"user": "alice", "type": "login"}, {"type": "eof"}]


def test_a_prompter_that_breaks_otherwise_is_not_taken_for_an_answer(pair):
    send_frame(pair[1], {"type": "accepted"})
    send_frame(pair[1], {"type": "ask", "text": "menu"})
    with pytest.raises(RuntimeError):
        converse(pair[0], {"user": "alice"}, Refusing(RuntimeError("bug")))


def test_a_declining_result_after_accepted_is_a_refusal(pair):
    send_frame(pair[1], {"type": "accepted"})
    send_frame(pair[1], {"type": "result", "result": "OTHER_CONFIG", "message": ""})
    assert converse(pair[0], {"user": "alice"}, UI())[0] is Result.AUTH_ERR


# ------------------------------------------------------------------ the broker backend of the PAM module
# The PAM module's description of a login (pam.pam_login), keyed as the login frame.
REQUEST = {"user": "alice", "service": "sshd", "rhost": "203.0.113.5", "tty": "ssh", "command": "ls", "password": "pw",
           "caller_uid": 0}


def backend_on(sock: socket.socket, config: str = "pam_duo.toml") -> BrokerBackend:
    return BrokerBackend("/run/test/broker.sock", config, connector=lambda path: sock)


def test_the_backend_sends_the_request_and_returns_the_brokers_result(pair):
    send_frame(pair[1], {"type": "accepted"})
    send_frame(pair[1], {"type": "result", "result": "MAXTRIES", "message": ""})
    assert backend_on(pair[0]).authenticate(REQUEST, UI()) is Result.MAXTRIES
    assert recv_frame(pair[1]) == {"type": "login", "user": "alice", "service": "sshd", "rhost": "203.0.113.5",
                                   "tty": "ssh", "command": "ls", "password": "pw",
                                   "config": os.path.abspath("pam_duo.toml"), "caller_uid": 0}


@pytest.mark.parametrize("answer, result", [
    ({"type": "busy", "message": "too many concurrent logins for this user"}, Result.BUSY),
    ({"type": "result", "result": "OTHER_CONFIG", "message": "the broker serves another config"}, Result.OTHER_CONFIG),
    ({"type": "result", "result": "BAD_CONFIG", "message": "configuration error (see the system log)"},
     Result.BAD_CONFIG),
])
def test_the_brokers_own_answers_are_values(pair, answer, result):
    send_frame(pair[1], answer)
    assert backend_on(pair[0]).authenticate(REQUEST, UI()) is result


def test_a_broker_that_hangs_up_before_accepting_is_declined(pair):
    pair[1].close()
    assert backend_on(pair[0]).authenticate(REQUEST, UI()) is Result.NOT_ACCEPTED


def test_no_broker_is_declined():
    def unreachable(path):
        raise ProtocolError(f"broker not reachable at {path}")

    backend = BrokerBackend("/run/test/broker.sock", "c.toml", connector=unreachable)
    assert backend.authenticate(REQUEST, UI()) is Result.NOT_ACCEPTED


def test_a_broker_lost_after_accepting_is_a_refusal_and_logged(pair, syslog_lines):
    send_frame(pair[1], {"type": "accepted"})
    pair[1].shutdown(socket.SHUT_WR)
    assert backend_on(pair[0]).authenticate(REQUEST, UI()) is Result.AUTH_ERR
    assert [text for _, text in syslog_lines] == ["lost the broker during a login; refused"]


# ------------------------------------------------------------------ choosing the backend in pam.py
class FakeBackend:
    def __init__(self, result: Result) -> None:
        self.result = result
        self.requests: list[dict] = []

    def authenticate(self, request, ui):
        self.requests.append(request)
        return self.result


class FakeLocal(FakeBackend):
    def __init__(self, result: Result, broker_socket: str | None) -> None:
        super().__init__(result)
        self.broker_socket = broker_socket

    def config(self):
        if self.broker_socket is None:
            return None
        return type("Config", (), {"broker": type("Broker", (), {"socket": self.broker_socket})})()


def chain(tmp_path, default: Result | None, configured: Result | None, local: FakeLocal):
    """BrokerFirst with fake brokers at the default socket and the config's socket (None: no socket there)."""
    brokers = {}
    for name, result in (("default.sock", default), ("configured.sock", configured)):
        if result is not None:
            (tmp_path / name).touch()
            brokers[str(tmp_path / name)] = FakeBackend(result)
    first = pam.BrokerFirst("c.toml", lambda: local, str(tmp_path / "default.sock"), lambda path, conf: brokers[path])
    return first, brokers


@pytest.mark.parametrize("default, configured, expected, decided_locally", [
    (Result.SUCCESS, None, Result.SUCCESS, False),
    (Result.AUTH_ERR, Result.SUCCESS, Result.AUTH_ERR, False),  # accepted, then refused: never a second try
    (Result.BAD_CONFIG, None, Result.BAD_CONFIG, False),
    (Result.BUSY, None, Result.MAXTRIES, True),
    (Result.OTHER_CONFIG, Result.SUCCESS, Result.SUCCESS, False),
    (Result.NOT_ACCEPTED, Result.BUSY, Result.MAXTRIES, True),
    (None, Result.CONV_ERR, Result.CONV_ERR, False),
    (None, None, Result.MAXTRIES, True),
])
def test_brokers_first_then_in_process(tmp_path, default, configured, expected, decided_locally):
    local = FakeLocal(Result.MAXTRIES, str(tmp_path / "configured.sock"))
    first, _ = chain(tmp_path, default, configured, local)
    assert first.authenticate(REQUEST, UI()) is expected
    assert bool(local.requests) == decided_locally


def test_a_config_that_does_not_load_is_a_service_error_after_the_default_broker_declined(tmp_path):
    first, brokers = chain(tmp_path, Result.OTHER_CONFIG, None, FakeLocal(Result.SUCCESS, None))
    assert first.authenticate(REQUEST, UI()) is Result.SERVICE_ERR


def test_the_config_socket_is_not_asked_twice_when_it_is_the_default(tmp_path):
    local = FakeLocal(Result.SUCCESS, str(tmp_path / "default.sock"))
    first, brokers = chain(tmp_path, Result.BUSY, None, local)
    assert first.authenticate(REQUEST, UI()) is Result.SUCCESS
    assert len(brokers[str(tmp_path / "default.sock")].requests) == 1


class Pamh:
    PAM_SUCCESS, PAM_SERVICE_ERR, PAM_AUTH_ERR, PAM_USER_UNKNOWN, PAM_MAXTRIES = 0, 3, 7, 10, 11
    PAM_PROMPT_ECHO_ON, PAM_ERROR_MSG, PAM_TEXT_INFO = 2, 3, 4
    exception = RuntimeError
    service, rhost, tty, authtok = "sudo", "203.0.113.5", "/dev/pts/1", "pw"

    def get_user(self, prompt):
        return "alice"


@pytest.mark.parametrize("result, code", [(Result.SUCCESS, 0), (Result.MAXTRIES, 11), (Result.BAD_CONFIG, 3)])
def test_pam_builds_one_request_and_asks_the_chosen_backend(result, code):
    backend, chosen = FakeBackend(result), []

    def choose(conf, debug):
        chosen.append((conf, debug))
        return backend

    assert pam._authenticate(Pamh(), 0, ["pam_duo.py", "conf=/etc/x.toml", "debug"], choose) == code
    assert chosen == [("/etc/x.toml", True)]
    assert backend.requests == [{"user": "alice", "service": "sudo", "rhost": "203.0.113.5", "tty": "/dev/pts/1",
                                 "command": command_for("sudo"), "password": "pw", "caller_uid": os.getuid()}]


# ------------------------------------------------------------------ the thin client
THIN_CLIENT = r"""
import _socket, struct, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
from pam_duo_py import pam
from pam_duo_py.broker_client import BrokerBackend, BrokerSocket
a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
for d in (b'{"type": "accepted"}', b'{"type": "result", "result": "SUCCESS", "message": ""}'):
    b.sendall(struct.pack(">I", len(d)) + d)
client = BrokerSocket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, a.detach())
class Pamh:
    PAM_SUCCESS, PAM_SERVICE_ERR, PAM_TEXT_INFO = 0, 3, 4
    exception = RuntimeError
    service, rhost, tty, authtok = "sshd", "203.0.113.5", "ssh", None
    def get_user(self, prompt):
        return "root"
def choose(conf, debug):  # the "default socket" is any path that exists: the connector hands over the pair
    return pam.BrokerFirst(conf, None, sys.argv[1],  # the broker takes the login: no in-process fallback
                           lambda path, conf: BrokerBackend(path, conf, connector=lambda p: client))
code = pam._authenticate(Pamh(), 0, ["pam_duo.py", "conf=/nonexistent.toml"], choose)
modules = sorted(set(sys.modules) - before)
import json
print(json.dumps({"code": code, "modules": modules}))
"""


# What a login through the broker imports, all of it (docs/architecture.md, "the thin path"). Every
# module costs each such login its load and, at the end, its teardown: a new one belongs here only
# with its cost measured (scripts/bench --cpu-breakdown).
THIN_PATH = {"pam_duo_py", "pam_duo_py.pam", "pam_duo_py.hosts", "pam_duo_py.paths",
             "pam_duo_py.result", "pam_duo_py.broker_client", "pam_duo_py.broker_protocol", "pam_duo_py.files"}
# Of the standard library: what site imports anyway (os and its parts), and two C modules.
THIN_PATH_STDLIB = {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc", "_json",
                    "_socket"}


def test_a_login_through_the_broker_imports_only_the_thin_path():
    # -S: without site, whatever a .pth file imports does not hide what the login path imports.
    # No __future__, typing, errors, login, record, socket, struct, json or enum: each would cost every login.
    out = subprocess.run([sys.executable, "-I", "-S", "-c", THIN_CLIENT, ROOT], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["code"] == 0
    modules = set(report["modules"])
    assert {m for m in modules if m.startswith("pam_duo_py")} == THIN_PATH
    assert {m for m in modules if not m.startswith("pam_duo_py")} <= THIN_PATH_STDLIB, sorted(modules - THIN_PATH)


def test_pam_duo_login_imports_the_client_and_no_server_code():
    script = "import json, sys; sys.path.insert(0, sys.argv[1]); import pam_duo_py.wrapper; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-I", "-c", script, ROOT], capture_output=True, text=True, timeout=60)
    modules = set(json.loads(out.stdout))
    assert "pam_duo_py.broker_client" in modules
    assert not modules & {"pam_duo_py.broker_server", "pam_duo_py.broker_trust", "pam_duo_py.engine",
                          "pam_duo_py.config", "pam_duo_py.duo", "pam_duo_py.login"}


def test_loads_refuses_garbage_when_json_was_never_imported():
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from pam_duo_py.broker_protocol import loads\n"
              "for text in ['{\"a\": 1', '\"\\x01\"', '', 'x', '{} x']:\n"
              "    try:\n        loads(text)\n    except ValueError as exc:\n        print(type(exc).__name__)\n")
    out = subprocess.run([sys.executable, "-I", "-c", script, ROOT], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["JSONDecodeError"] * 5, out.stderr
