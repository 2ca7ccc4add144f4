"""pam_duo_py.duo.DuoClient over real HTTPS (pam_duo_py.transport) against the in-process simulator.

What the Duo client layer promises (docs/behaviour.md §4, §5 and the module docstrings of
pam_duo_py.duo and pam_duo_py.transport): signatures Duo accepts, the CA always pinned, the environment
never read, the proxy only from the config, one overall deadline per call
(connect, TLS and every read included), failover between addresses inside that
deadline, 429 waits that fit into the deadline, every failure mapped to the
exception tree of pam_duo_py.errors, and one keep-alive connection per login.

No root needed; everything listens on loopback.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import pathlib
import select
import socket
import ssl
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pam_duo_py import transport as transport_module  # noqa: E402
from pam_duo_py.config import DuoIdentity, DuoSettings, Proxy  # noqa: E402
from pam_duo_py.duo import DuoClient  # noqa: E402
from pam_duo_py.errors import (  # noqa: E402
    DuoCredentialsRejected,
    DuoError,
    DuoMalformedReply,
    DuoRateLimited,
    DuoRefused,
    DuoTimeout,
    DuoUnavailable,
    DuoUnknownAnswer,
)
from pam_duo_sim.simulator import PHONE1, Simulator  # noqa: E402

pytestmark = pytest.mark.integration

# Slack for thread scheduling on a loaded 2-core machine.
SLACK = 0.5

_counter = itertools.count(1)


def uniq(base: str, *faults: str) -> str:
    """A Duo username no other test uses (the simulator counts ``xN`` faults per username)."""
    return f"{base}-{os.getpid()}-{next(_counter)}" + "".join("+" + f for f in faults)


def who(name: str) -> DuoIdentity:
    return DuoIdentity(username=name)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    s = Simulator(tmp_path_factory.mktemp("sim"), approve_delay=0.2, long_poll=10.0)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_sim(sim: Simulator, tmp_path: pathlib.Path) -> Iterator[Callable[..., Simulator]]:
    """Extra simulators (own state dir under tmp_path, the main simulator's CA and keys)."""
    started: List[Simulator] = []

    def make(**kw: Any) -> Simulator:
        state = tmp_path / f"sim{len(started)}"
        state.mkdir(mode=0o700)
        for name in ("ca.pem", "ca.key", "server.pem", "server.key", "wronghost.pem",
                     "wronghost.key", "other-ca.pem", "keys.json"):
            src = sim.state_dir / name
            (state / name).write_bytes(src.read_bytes())
            os.chmod(state / name, os.stat(src).st_mode & 0o777)
        s = Simulator(state, **kw)
        s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def settings_for(sim: Simulator, **over: Any) -> DuoSettings:
    values: dict[str, Any] = dict(ikey=sim.ikey, skey=sim.skey, host="localhost", port=sim.port,
                                  ca_file=str(sim.ca_file), proxy=None, timeout=5.0)
    values.update(over)
    return DuoSettings(**values)


@pytest.fixture
def clients() -> Iterator[Callable[..., DuoClient]]:
    """clients(settings) -> DuoClient; every client is closed at teardown."""
    made: List[DuoClient] = []

    def make(settings: DuoSettings) -> DuoClient:
        c = DuoClient(settings)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(sim: Simulator, clients: Callable[..., DuoClient]) -> Callable[..., DuoClient]:
    """client(**DuoSettings overrides) -> a DuoClient for the main simulator."""
    return lambda **over: clients(settings_for(sim, **over))


def log_since(sim: Simulator, mark: int) -> List[dict]:
    return [json.loads(line) for line in sim.request_log.read_text().splitlines()[mark:]]


def log_mark(sim: Simulator) -> int:
    return len(sim.request_log.read_text().splitlines())


def timed(fn: Callable[[], Any], limit: float = 15.0) -> tuple[Any, float]:
    """(result or exception, seconds). The call runs in a thread: one that is still running
    after ``limit`` seconds fails the test instead of hanging the suite (a missing deadline)."""
    outcome: List[Any] = []

    def target() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # returned, so that the caller asserts on type and time
            outcome.append(exc)

    start = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(limit)
    elapsed = time.monotonic() - start
    if not outcome:
        pytest.fail(f"the call was still running after {limit:g} s: no overall deadline")
    return outcome[0], elapsed


def preauth(c: DuoClient, name: str):
    return c.preauth(who(name), ipaddr="203.0.113.5", hostname="server1", verified_push=False)


def push(c: DuoClient, name: str) -> str:
    started = c.start_push(who(name), PHONE1["device"], ipaddr=None, hostname=None)
    assert isinstance(started.txid, str) and started.txid, started
    return started.txid


class Listeners:
    """Loopback test servers; every thread and socket is closed at teardown."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._sockets: List[socket.socket] = []
        self._threads: List[threading.Thread] = []

    def keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def listen(self, backlog: int = 16) -> socket.socket:
        srv = self.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(backlog)
        return srv

    def dead_port(self) -> int:
        """A port bound but never listening: connecting to it is refused at once."""
        sock = self.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

    def serve(self, srv: socket.socket, handler: Callable[[socket.socket], None]) -> None:
        def accept_loop() -> None:
            srv.settimeout(0.1)
            while not self.stop.is_set():
                try:
                    conn, _ = srv.accept()
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    return
                self.keep(conn)
                t = threading.Thread(target=self._run, args=(handler, conn), daemon=True)
                self._threads.append(t)
                t.start()

        t = threading.Thread(target=accept_loop, daemon=True)
        self._threads.append(t)
        t.start()

    @staticmethod
    def _run(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
        try:
            handler(conn)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=2)


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    ls = Listeners()
    yield ls
    ls.close()


def read_head(conn: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# ------------------------------------------------------------------ signatures
def test_real_signatures_accepted(client, sim: Simulator) -> None:
    c = client()
    assert abs(c.check() - time.time()) < 5
    name = uniq("alice")
    pre = preauth(c, name)
    assert pre.result == "auth"
    assert [d.device for d in pre.devices][:2] == ["DPFZRS9FB0D46QFTM891", "DPFZRS9FB0D46QFTM892"]
    assert "push" in pre.devices[0].capabilities
    passcode = c.check_passcode(who(name), "123456", ipaddr=None, hostname=None)
    assert passcode.result == "allow", passcode
    txid = push(c, name)
    status = c.auth_status(txid, timeout=5)
    assert (status.result, status.status) == ("allow", "allow")
    assert c.server_time_offset is not None and abs(c.server_time_offset) <= 2
    # a Duo user id is signed and sent the same way
    assert c.preauth(DuoIdentity(user_id="DU" + "A" * 18), ipaddr=None, hostname=None,
                     verified_push=False).result == "auth"


def test_wrong_skey_rejected(client) -> None:
    c = client(skey="x" * 40)
    with pytest.raises(DuoCredentialsRejected) as excinfo:
        preauth(c, uniq("alice"))
    assert excinfo.value.status == 401 and excinfo.value.code == 40103
    with pytest.raises(DuoCredentialsRejected):
        c.check()
    # a rejection is Duo's answer, never "Duo unreachable" (which failmode=safe would let in)
    assert not isinstance(excinfo.value, DuoUnavailable)


def test_clock_skew_rejected_with_measured_offset(make_sim, clients) -> None:
    skewed = make_sim(clock_offset=3600)
    c = clients(settings_for(skewed))
    with pytest.raises(DuoCredentialsRejected) as excinfo:
        preauth(c, uniq("alice"))
    exc = excinfo.value
    assert exc.status == 401 and exc.code == 40105
    assert c.server_time_offset is not None and abs(c.server_time_offset - 3600) <= 3
    assert "+3600 s" in str(exc) or "+3599 s" in str(exc) or "+3601 s" in str(exc), str(exc)
    assert "clock" in str(exc)


# ------------------------------------------------------------------ CA pinning
def test_right_ca_trusted(client) -> None:
    assert preauth(client(), uniq("allow")).result == "allow"


def test_other_ca_refused(client, sim: Simulator) -> None:
    with pytest.raises(DuoUnavailable) as excinfo:
        preauth(client(ca_file=str(sim.other_ca_file)), uniq("allow"))
    assert "TLS certificate not trusted" in str(excinfo.value)
    assert not isinstance(excinfo.value, DuoTimeout)


def test_wrong_host_name_refused(make_sim, clients) -> None:
    wrong = make_sim(tls="wronghost")
    with pytest.raises(DuoUnavailable) as excinfo:
        preauth(clients(settings_for(wrong)), uniq("allow"))
    assert "TLS certificate not trusted" in str(excinfo.value)
    assert "localhost" in str(excinfo.value) or "mismatch" in str(excinfo.value)


def test_duo_client_bundle_does_not_trust_test_ca(client) -> None:
    with pytest.raises(DuoUnavailable) as excinfo:
        preauth(client(ca_file=None), uniq("allow"))
    assert "TLS certificate not trusted" in str(excinfo.value)


# ------------------------------------------------------------------ environment
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def hostile_env(monkeypatch: pytest.MonkeyPatch, listeners: Listeners, sim: Simulator) -> None:
    """Proxies that are dead and CA settings that trust the wrong CA (or the test CA for the
    client that must refuse it): none of them may change what the client does."""
    dead = f"http://127.0.0.1:{listeners.dead_port()}"
    for name in PROXY_VARS:
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(sim.other_ca_file))
    monkeypatch.setenv("SSL_CERT_DIR", str(sim.state_dir))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sim.other_ca_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(sim.other_ca_file))


def test_environment_ignored_calls_succeed(hostile_env, client) -> None:
    c = client()
    name = uniq("alice")
    assert preauth(c, name).result == "auth"
    status = c.auth_status(push(c, name), timeout=5)
    assert status.result == "allow"
    assert c.connections_opened == 1


def test_environment_ignored_wrong_ca_still_refused(monkeypatch, hostile_env, client, sim) -> None:
    # Point every CA variable at the CA that *would* work: the pinned file still decides.
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(sim.ca_file))
    with pytest.raises(DuoUnavailable) as excinfo:
        preauth(client(ca_file=str(sim.other_ca_file)), uniq("allow"))
    assert "TLS certificate not trusted" in str(excinfo.value)
    with pytest.raises(DuoUnavailable):
        preauth(client(ca_file=None), uniq("allow"))


# ------------------------------------------------------------------ proxy from the config
class ConnectProxy:
    """A tiny HTTP CONNECT proxy on loopback that counts tunnels and can demand Basic auth."""

    def __init__(self, listeners: Listeners, user: Optional[str] = None,
                 password: Optional[str] = None) -> None:
        self.user, self.password = user, password
        self.tunnels = 0
        self.refused = 0
        self.targets: List[str] = []
        self.lock = threading.Lock()
        self.stop = listeners.stop
        srv = listeners.listen()
        self.port = srv.getsockname()[1]
        listeners.serve(srv, self.handle)

    def handle(self, conn: socket.socket) -> None:
        head = read_head(conn)
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].decode("latin-1").split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if b":" in line:
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
        if method != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        if self.user is not None:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if headers.get("proxy-authorization") != f"Basic {token}":
                with self.lock:
                    self.refused += 1
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=5)
        with self.lock:
            self.tunnels += 1
            self.targets.append(target)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            pair = {conn: upstream, upstream: conn}
            while not self.stop.is_set():
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        finally:
            upstream.close()


def test_proxy_from_config_one_tunnel_per_login(listeners: Listeners, client, sim) -> None:
    proxy = ConnectProxy(listeners, user="squid", password="s3cret")
    c = client(proxy=Proxy(host="127.0.0.1", port=proxy.port, user="squid", password="s3cret"))
    name = uniq("alice")
    mark = log_mark(sim)
    assert preauth(c, name).result == "auth"
    assert c.auth_status(push(c, name), timeout=5).result == "allow"
    assert proxy.tunnels == 1, proxy.targets
    assert proxy.targets == [f"localhost:{sim.port}"]
    assert c.connections_opened == 1
    requests = [e for e in log_since(sim, mark) if e["event"] == "request"]
    assert [r["path"] for r in requests] == ["/auth/v2/preauth", "/auth/v2/auth", "/auth/v2/auth_status"]
    assert all(r["status"] == 200 for r in requests)


def test_proxy_without_auth(listeners: Listeners, client) -> None:
    proxy = ConnectProxy(listeners)
    assert preauth(client(proxy=Proxy(host="127.0.0.1", port=proxy.port)), uniq("allow")).result == "allow"
    assert proxy.tunnels == 1


def test_proxy_wrong_password_unavailable(listeners: Listeners, client) -> None:
    proxy = ConnectProxy(listeners, user="squid", password="s3cret")
    c = client(proxy=Proxy(host="127.0.0.1", port=proxy.port, user="squid", password="wrong"))
    with pytest.raises(DuoUnavailable):
        preauth(c, uniq("allow"))
    assert proxy.tunnels == 0 and proxy.refused == 1


def test_proxy_dead_unavailable(listeners: Listeners, client) -> None:
    c = client(proxy=Proxy(host="127.0.0.1", port=listeners.dead_port()))
    with pytest.raises(DuoUnavailable) as excinfo:
        preauth(c, uniq("allow"))
    assert "connection refused" in str(excinfo.value)


# ------------------------------------------------------------------ deadline
def test_stall_at_preauth_times_out(client) -> None:
    c = client(timeout=0.5)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice", "stall@preauth")))
    assert isinstance(exc, DuoTimeout), exc
    assert 0.5 - 0.05 <= elapsed <= 1.5, elapsed


def test_slow_preauth_times_out(client) -> None:
    c = client(timeout=0.5)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice", "slow2@preauth")))
    assert isinstance(exc, DuoTimeout), exc
    assert elapsed <= 0.5 + SLACK, elapsed


def test_slow_within_deadline_succeeds(client) -> None:
    c = client(timeout=2)
    result, elapsed = timed(lambda: preauth(c, uniq("alice", "slow0.3@preauth")))
    assert not isinstance(result, BaseException), result
    assert result.result == "auth" and 0.3 <= elapsed < 2


def test_tls_handshake_stall_times_out(listeners: Listeners, client) -> None:
    srv = listeners.listen()
    listeners.serve(srv, lambda conn: listeners.stop.wait(30))  # accepts, never speaks TLS
    c = client(port=srv.getsockname()[1], timeout=0.5)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice")))
    assert isinstance(exc, DuoTimeout), exc
    assert 0.5 - 0.05 <= elapsed <= 0.5 + SLACK, elapsed


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_dripping_reply_ends_at_the_deadline(phase: str, listeners: Listeners, client, sim) -> None:
    """One byte every 0.2 s of a reply that never ends: every read is quick, the call is not.

    A per-read timeout would never fire; the deadline must be overall."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sim.state_dir / "server.pem", sim.state_dir / "server.key")

    def drip(raw: socket.socket) -> None:
        with ctx.wrap_socket(raw, server_side=True) as conn:
            read_head(conn)
            if phase == "headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000000\r\n\r\n{\"stat\": \"OK\", \"response\": ")
            while not listeners.stop.wait(0.2):
                conn.sendall(b"a" if phase == "headers" else b" ")

    srv = listeners.listen()
    listeners.serve(srv, drip)
    c = client(port=srv.getsockname()[1], timeout=1.0)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice")))
    assert isinstance(exc, DuoTimeout), exc
    assert 1.0 - 0.05 <= elapsed <= 1.0 + SLACK, elapsed


def test_connect_to_dead_port_is_unavailable_at_once(listeners: Listeners, client) -> None:
    c = client(port=listeners.dead_port(), timeout=5)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice")))
    assert isinstance(exc, DuoUnavailable) and not isinstance(exc, DuoTimeout), exc
    assert "connection refused" in str(exc)
    assert elapsed < 1, elapsed


# ------------------------------------------------------------------ failover
def _black_hole(listeners: Listeners) -> tuple[str, int]:
    """A loopback address where connect() hangs: a listener whose accept queue is full, so the
    kernel drops further SYNs (as a firewalled or dead address does)."""
    srv = listeners.listen(backlog=0)
    port = srv.getsockname()[1]
    for _ in range(4):
        filler = listeners.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
    except (TimeoutError, socket.timeout):
        return "127.0.0.1", port
    except OSError as exc:
        pytest.skip(f"cannot build a black-holed loopback address here: {exc}")
    finally:
        probe.close()
    pytest.skip("cannot build a black-holed loopback address here: connect() did not hang")


@pytest.mark.parametrize("first", ["black-holed", "refused"])
def test_failover_first_address_dead_patched_resolver(first: str, monkeypatch, listeners, client, sim) -> None:
    """The host resolves to two addresses and the first one is dead: the second one answers
    within the call's deadline (the first gets only its share of the time)."""
    dead = _black_hole(listeners) if first == "black-holed" else ("127.0.0.1", listeners.dead_port())
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in ("localhost", b"localhost") and port == sim.port:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", dead),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", sim.port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(transport_module.socket, "getaddrinfo", fake)
    c = client(timeout=2)
    result, elapsed = timed(lambda: preauth(c, uniq("allow")))
    assert not isinstance(result, BaseException), result
    assert result.result == "allow"
    assert elapsed < 2, elapsed
    if first == "black-holed":
        assert elapsed >= 0.9, f"the dead address should have had half of the deadline: {elapsed}"


# ------------------------------------------------------------------ 429
def test_429_with_retry_after_1_succeeds(client) -> None:
    c = client(timeout=5)
    result, elapsed = timed(lambda: preauth(c, uniq("alice", "429ra1x1@preauth")))
    assert not isinstance(result, BaseException), result
    assert result.result == "auth"
    assert 0.9 <= elapsed < 2.5, elapsed


def test_429_with_long_retry_after_fails_fast(client) -> None:
    c = client(timeout=2)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice", "429ra30@preauth")))
    assert isinstance(exc, DuoRateLimited), exc
    assert exc.status == 429 and exc.code == 42901
    assert elapsed < 2.5, elapsed


def test_429_without_retry_after_within_deadline(client) -> None:
    c = client(timeout=2)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice", "429@preauth")))
    assert isinstance(exc, DuoRateLimited), exc
    assert elapsed < 2 + 0.1, elapsed
    # rate limiting is Duo's answer: never failmode-eligible
    assert isinstance(exc, DuoRefused) and not isinstance(exc, DuoUnavailable)


def test_unknown_preauth_result_is_an_answer_not_an_outage(client) -> None:
    exc, _ = timed(lambda: preauth(client(timeout=3), uniq("alice", "result-bogus@preauth")))
    assert isinstance(exc, DuoUnknownAnswer) and isinstance(exc, DuoRefused), exc
    assert not isinstance(exc, DuoUnavailable), exc  # failmode = "safe" must not let this in


# ------------------------------------------------------------------ error mapping
@pytest.mark.parametrize("status", ["500", "502", "503"])
def test_5xx_unavailable(status: str, client) -> None:
    with pytest.raises(DuoUnavailable) as excinfo:
        preauth(client(), uniq("alice", f"{status}@preauth"))
    assert excinfo.value.status == int(status)


@pytest.mark.parametrize("fault", ["malformed", "html", "truncated", "close", "missing-result",
                                   "missing-devices"])
def test_bad_replies_at_preauth_unavailable(fault: str, client) -> None:
    c = client(timeout=3)
    exc, elapsed = timed(lambda: preauth(c, uniq("alice", f"{fault}@preauth")))
    assert isinstance(exc, DuoUnavailable), exc
    assert not isinstance(exc, DuoTimeout), exc
    if fault in ("malformed", "html", "missing-result", "missing-devices"):
        assert isinstance(exc, DuoMalformedReply), exc
    assert elapsed < 3, elapsed


def test_401_fault_rejected(client) -> None:
    with pytest.raises(DuoCredentialsRejected) as excinfo:
        preauth(client(), uniq("alice", "401@preauth"))
    assert excinfo.value.code == 40103


def test_other_4xx_refused(client) -> None:
    c = client()
    with pytest.raises(DuoRefused) as excinfo:  # 400 40002: a bad user_id at preauth
        c.preauth(DuoIdentity(user_id="not-a-duo-id"), ipaddr=None, hostname=None, verified_push=False)
    exc = excinfo.value
    assert exc.status == 400 and exc.code == 40002
    assert not isinstance(exc, (DuoUnavailable, DuoCredentialsRejected, DuoRateLimited))
    with pytest.raises(DuoRefused) as excinfo:  # 404 40400
        c.call("GET", "/auth/v2/nope", {})
    assert excinfo.value.status == 404
    with pytest.raises(DuoRefused) as excinfo:  # 400 at /auth for a preauth-allow user
        c.start_push(who(uniq("allow")), "auto", ipaddr=None, hostname=None)
    assert excinfo.value.status == 400


def test_every_failure_is_a_duo_error(client) -> None:
    """No raw RuntimeError/OSError/ssl.SSLError/HTTPException ever leaves the client."""
    for fault in ("500@preauth", "malformed@preauth", "close@preauth", "401@preauth", "429ra30@preauth"):
        c = client(timeout=2)
        try:
            preauth(c, uniq("alice", fault))
        except DuoError:
            pass
        else:
            pytest.fail(f"{fault}: no error")


# ------------------------------------------------------------------ one connection per login
def test_one_connection_per_login(client, sim: Simulator) -> None:
    c = client()
    name = uniq("alice")
    mark = log_mark(sim)
    assert preauth(c, name).result == "auth"
    txid = push(c, name)
    assert c.auth_status(txid, timeout=5).result == "allow"
    events = log_since(sim, mark)
    requests = [e for e in events if e["event"] == "request"]
    assert [r["path"] for r in requests] == ["/auth/v2/preauth", "/auth/v2/auth", "/auth/v2/auth_status"]
    assert len({r["conn"] for r in requests}) == 1, requests
    assert [e["event"] for e in events if e["event"] in ("connection", "tls")] == ["connection", "tls"]
    assert c.connections_opened == 1


def test_reconnects_after_server_closed_idle_connection(client, sim: Simulator) -> None:
    """A keep-alive connection the server dropped is replaced once, transparently."""
    c = client()
    name = uniq("alice")
    assert preauth(c, name).result == "auth"
    for sock in list(sim._conns.values()):  # the server hangs up every open connection
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
    # Wait (on the socket, not the clock) until the hang-up has reached the client.
    select.select([c.fileno()], [], [], 5)
    assert c.check_passcode(who(name), "123456", ipaddr=None, hostname=None).result == "allow"
    assert c.connections_opened == 2


def test_request_lost_after_sending_is_never_sent_twice(client, sim: Simulator) -> None:
    """A server that closes after reading POST /auth: an error, not a second push."""
    c = client()
    name = uniq("alice", "close@auth")
    assert preauth(c, name).result == "auth"
    mark = log_mark(sim)
    with pytest.raises(DuoUnavailable):
        c.start_push(who(name), "auto", ipaddr=None, hostname=None)
    auths = [r for r in log_since(sim, mark) if r.get("event") == "request" and r.get("path") == "/auth/v2/auth"]
    assert len(auths) == 1
