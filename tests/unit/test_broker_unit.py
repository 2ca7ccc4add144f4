"""The broker's pure parts with fakes: the client's wait for "accepted", the accept loop's
load shedding (out of descriptors, no thread), and the config-on-disk comparison."""
from __future__ import annotations

import errno
import json
import os
import socket
import struct

import pytest

from pam_duo_py import broker_server as broker
from pam_duo_py import watch
from pam_duo_py.broker_client import converse
from pam_duo_py.broker_protocol import NotAccepted, ProtocolError
from pam_duo_py.broker_server import Broker
from pam_duo_py.errors import ConfigError
from pam_duo_py.result import Result


def frame(obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


class FakeSock:
    """A connected socket: reads come from ``inbound`` (then a timeout, or EOF when ``closed``)."""

    def __init__(self, *frames: dict, closed: bool = False) -> None:
        self.inbound = b"".join(frame(f) for f in frames)
        self.closed_after = closed
        self.sent: list[dict] = []
        self.closed = False

    def settimeout(self, value) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent.append(json.loads(data[4:]))

    def recv(self, size: int) -> bytes:
        if not self.inbound:
            if self.closed_after:
                return b""
            raise socket.timeout("timed out")
        chunk, self.inbound = self.inbound[:size], self.inbound[size:]
        return chunk

    def close(self) -> None:
        self.closed = True


class UI:
    def __init__(self) -> None:
        self.shown: list[str] = []

    def ask(self, text: str) -> str:
        return "1"

    def show(self, text: str) -> None:
        self.shown.append(text)

    alert = show


# ------------------------------------------------------------------ the client
def test_no_answer_from_the_broker_is_not_accepted():
    with pytest.raises(NotAccepted, match="timed out"):
        converse(FakeSock(), {"user": "alice"}, UI(), ack_timeout=0.01)


def test_a_broker_that_hangs_up_before_accepting_is_not_accepted():
    with pytest.raises(NotAccepted):
        converse(FakeSock(closed=True), {"user": "alice"}, UI())


def test_busy_is_its_own_answer():
    sock = FakeSock({"type": "busy", "message": "too many concurrent logins for this user"})
    assert converse(sock, {"user": "alice"}, UI()) == (Result.BUSY, "too many concurrent logins for this user")
    assert sock.sent == [{"user": "alice", "type": "login"}]


@pytest.mark.parametrize("wire, result", [
    ("OTHER_CONFIG", Result.OTHER_CONFIG), ("BAD_CONFIG", Result.BAD_CONFIG), ("MAXTRIES", Result.MAXTRIES),
    ("NO_SUCH_RESULT", Result.AUTH_ERR), (None, Result.SERVICE_ERR), (7, Result.SERVICE_ERR),
])
def test_the_result_is_a_value_read_from_the_wire(wire, result):
    sock = FakeSock({"type": "result", "result": wire, "message": "the broker's words"})
    assert converse(sock, {"user": "alice"}, UI()) == (result, "the broker's words")


def test_after_accepted_a_lost_broker_is_a_plain_protocol_error():
    sock = FakeSock({"type": "accepted"}, {"type": "show", "text": "Pushed"}, closed=True)
    with pytest.raises(ProtocolError) as info:
        converse(sock, {"user": "alice"}, UI())
    assert not isinstance(info.value, NotAccepted)


def test_busy_after_accepted_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unexpected frame"):
        converse(FakeSock({"type": "accepted"}, {"type": "busy"}), {"user": "alice"}, UI())


def test_a_full_login():
    sock = FakeSock({"type": "accepted"}, {"type": "ask", "text": "menu"}, {"type": "show", "text": "Pushed"},
                    {"type": "result", "result": "SUCCESS", "message": ""})
    ui = UI()
    assert converse(sock, {"user": "alice"}, ui) == ("SUCCESS", "")
    assert sock.sent[1:] == [{"type": "answer", "text": "1"}, {"type": "ack"}]
    assert ui.shown == ["Pushed"]


# ------------------------------------------------------------------ the accept loop
@pytest.fixture
def config(tmp_path):
    os.chmod(tmp_path, 0o700)
    map_file = tmp_path / "map.txt"
    map_file.write_text("alice alice\n")
    os.chmod(map_file, 0o600)
    path = tmp_path / "pam_duo.toml"
    path.write_text('[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "' + "S" * 40 + '"\nhost = "api-test.duosecurity.com"\n'
                    f'[users]\nmap_file = "{map_file}"\n[log]\naudit_file = "{tmp_path / "audit.jsonl"}"\n'
                    f'[broker]\nsocket = "{tmp_path / "none.sock"}"\n')
    os.chmod(path, 0o600)
    return path


class FakeConn:
    def __init__(self, uid: int = 1000) -> None:
        self.uid = uid
        self.closed = False

    def getsockopt(self, level, option, size):
        return struct.pack("3i", 4242, self.uid, self.uid)

    def close(self) -> None:
        self.closed = True


class FakeListener:
    """accept() plays a script of connections and errors, then stops the broker."""

    def __init__(self, broker_: Broker, script: list) -> None:
        self.broker = broker_
        self.script = list(script)

    def settimeout(self, value) -> None:
        pass

    def accept(self):
        if not self.script:
            self.broker._stop.set()
            raise socket.timeout("timed out")
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item, ""

    def close(self) -> None:
        pass


class NoThreads:
    """Stands in for the threading module: no thread can be started."""

    class Thread:
        def __init__(self, **kwargs) -> None:
            pass

        def start(self) -> None:
            raise RuntimeError("can't start new thread")


def test_out_of_descriptors_and_threads_sheds_and_goes_on(config, monkeypatch):
    monkeypatch.setattr(broker.time, "sleep", lambda s: None)
    b = Broker(str(config))
    conns = [FakeConn() for _ in range(4)]
    emfile = OSError(errno.EMFILE, "Too many open files")
    enfile = OSError(errno.ENFILE, "Too many open files in system")
    b._listener = FakeListener(b, [emfile, conns[0], enfile, conns[1], OSError(errno.ECONNABORTED, "aborted"),
                                   conns[2], conns[3]])
    b._threading = NoThreads
    b.serve_forever()  # returns only when the script ends: nothing above ended it
    assert all(c.closed for c in conns)
    assert b.shed == 4  # two shed for want of a descriptor, two for want of a thread
    assert b._open == 0 and b._connections == {}


def test_connections_are_capped_per_uid_and_in_all(config):
    b = Broker(str(config))
    started: list = []

    class Threads:
        class Thread:
            def __init__(self, target, args, daemon) -> None:
                self.args = args

            def start(self) -> None:
                started.append(self.args)

    b._threading = Threads
    b.max_connections = 12
    conns = [FakeConn(1000) for _ in range(broker.MAX_CONNECTIONS_PER_UID + 3)] + [FakeConn(0) for _ in range(6)]
    b._listener = FakeListener(b, conns)
    b.serve_forever()
    assert len(started) == 12
    assert sum(1 for c in conns if c.closed) == len(conns) - 12
    assert b._connections == {1000: broker.MAX_CONNECTIONS_PER_UID, 0: 12 - broker.MAX_CONNECTIONS_PER_UID}


def test_a_burst_of_logins_for_one_user_stays_with_the_broker(config):
    """50 simultaneous logins for one user (a deploy account, a login storm) are not sent in-process."""
    b = Broker(str(config))
    assert all(b._enter(("user", "root")) for _ in range(50))
    assert all(b._enter(("uid", 1000)) for _ in range(broker.MAX_PER_UID))
    assert not b._enter(("uid", 1000))


def test_the_tick_runs_a_pending_sighup_reload(config):
    b = Broker(str(config))
    reloads: list = []
    b.reload = lambda: reloads.append(1) or True
    b.tick()
    b.hup()
    b.tick()
    b.tick()
    assert reloads == [1]


# ------------------------------------------------------------------ the config on disk
def test_the_config_and_the_files_it_names_are_watched(config, tmp_path):
    loaded, stamps = watch.load(str(config))
    assert not watch.changed(stamps)
    (tmp_path / "audit.jsonl").write_text("appended by the broker itself\n")
    os.chmod(tmp_path / "audit.jsonl", 0o600)
    _, stamps = watch.load(str(config))
    with open(tmp_path / "audit.jsonl", "a") as audit:
        audit.write("another line\n")
    assert not watch.changed(stamps)  # the broker's own appends are no change
    os.chmod(config, 0o644)
    assert watch.changed(stamps)
    os.chmod(config, 0o600)
    _, stamps = watch.load(str(config))
    (tmp_path / "map.txt").write_text("alice deny\n")
    assert watch.changed(stamps)
    _, stamps = watch.load(str(config))
    os.unlink(tmp_path / "map.txt")
    assert watch.changed(stamps)
    with pytest.raises(ConfigError, match="map_file"):
        watch.load(str(config))


def test_a_login_after_a_failed_reload_gets_no_config(config, tmp_path):
    b = Broker(str(config))
    assert b.current_config() is b.config
    os.chmod(tmp_path / "map.txt", 0o666)
    assert b.current_config() is None
    assert b.current_config() is None  # and again: never the old config
    os.chmod(tmp_path / "map.txt", 0o600)
    assert b.current_config() is not None


# ------------------------------------------------------------------ name lookups in the broker
def test_the_broker_bounds_name_lookups_by_the_calls_deadline(config, monkeypatch):
    import threading

    from pam_duo_py import transport

    monkeypatch.setattr(transport, "_lookup", None, raising=False)  # whatever an earlier test set
    release = threading.Event()
    calls: list = []

    def hanging_resolver(host, port, *args):  # a resolver that does not answer
        calls.append(host)
        release.wait(10)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", hanging_resolver)
    Broker(str(config))
    try:
        with pytest.raises(socket.gaierror, match="name lookup timed out"):
            transport._open_tcp("api-test.duosecurity.com", 443, lambda: 0.05)
        assert calls == [b"api-test.duosecurity.com"] and not release.is_set()  # cut off, not answered
    finally:
        release.set()


def test_pending_name_lookups_are_bounded(monkeypatch):
    import threading

    from pam_duo_py import transport

    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a: release.wait(10) and [])
    lookups = transport._Lookups(limit=2)
    try:
        for _ in range(2):
            with pytest.raises(socket.gaierror, match="timed out"):
                lookups("h", 443, lambda: 0.01)
        with pytest.raises(socket.gaierror, match="too many name lookups pending"):
            lookups("h", 443, lambda: 5.0)
    finally:
        release.set()
