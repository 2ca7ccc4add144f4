"""The broker: the privileged responder that decides logins for its clients (docs/behaviour.md §7).

It holds the keys so that ``pam-duo-login``, running as the logged-in user, never
can read them. The wire protocol and its limits are in
:mod:`pam_duo_py.broker_protocol`; who may claim what is
:func:`pam_duo_py.broker_trust.login_request`. This module accepts connections
within those limits, keeps Duo connections warm between logins (:class:`ClientPool`)
and runs each login with :func:`pam_duo_py.login.authenticate`.

It serves its own config file and, for the PAM module, others named with ``conf=``
(:mod:`pam_duo_py.broker_configs`); before each login it compares the identity of
that config file and of every file it names with what it loaded (see
:mod:`pam_duo_py.watch`) and reloads on a change.
"""
from __future__ import annotations

import os
import signal
import socket
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

from .broker_client import check_socket_dir
from .broker_protocol import (
    ANSWER_TIMEOUT,
    FIRST_FRAME_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_UID,
    MAX_PER_UID,
    MAX_PER_USER,
    MESSAGES,
    ProtocolError,
    peer_uid,
    recv_frame,
    send_frame,
)
from .broker_trust import Refusal, login_request, named_config
from .errors import ConfigError, ConversationError
from .result import Result

NOFILE_TARGET = 65536  # the soft RLIMIT_NOFILE the broker raises itself to (at most the hard limit)
TICK = 1.0  # seconds between calls of Broker.tick from the accept loop
MAX_IDLE_CLIENTS = 8
# A call with no idle client waits for one that a call in flight is about to give back, rather than
# connect anew (ClientPool.borrow), for at most WAIT_CALLS times a warm call's recent duration
# (a new connection costs a TCP and a TLS handshake before its call: about three), and never
# longer than MAX_WAIT seconds. FIRST_CALL_ESTIMATE stands in until a warm call was timed.
WAIT_CALLS = 2.0
MAX_WAIT = 1.0
FIRST_CALL_ESTIMATE = 0.05


class BrokerPrompter:
    """The engine's Prompter, relayed to the client over the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.gone = False

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.gone:
            raise ConversationError("client gone")
        try:
            self.sock.settimeout(ANSWER_TIMEOUT)
            send_frame(self.sock, message)
            return recv_frame(self.sock, deadline=time.monotonic() + ANSWER_TIMEOUT)
        except (ProtocolError, OSError):
            self.gone = True
            raise ConversationError("client gone") from None

    def ask(self, text: str) -> str:
        reply = self._exchange({"type": "ask", "text": text})
        if reply["type"] == "answer" and isinstance(reply.get("text"), str):
            return reply["text"][:1024]
        raise ConversationError("no answer")

    def _notify(self, kind: str, text: str) -> None:
        try:
            self._exchange({"type": kind, "text": text})
        except ConversationError:
            pass

    def show(self, text: str) -> None:
        self._notify("show", text)

    def alert(self, text: str) -> None:
        self._notify("alert", text)


# The Duo calls a login makes (:class:`pam_duo_py.duo.DuoClient`); each borrows a pooled client for itself alone.
_LOGIN_CALLS = frozenset({"preauth", "start_push", "start_phone", "check_passcode", "send_sms", "auth_status"})


class _Lent:
    """One login's Duo client, as the pool lends it: a warm client is borrowed for each call, not for the login.

    Between its calls a login holds no connection (it is waiting for its user, or for
    CPU), so concurrent logins share the warm connections: a burst of logins opens as
    many connections as it has calls in flight at once, not one per login. What the
    calls measured (endpoints, times, Duo's clock offset) is kept here for the login's
    event. ``close`` gives nothing back: nothing is held.
    """

    def __init__(self, pool: "ClientPool", settings: Any) -> None:
        self._pool, self.settings = pool, settings
        self.calls: list[tuple[str, float, str | None]] = []
        self.server_time_offset: float | None = None

    def __getattr__(self, name: str) -> Any:
        if name not in _LOGIN_CALLS:
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            # auth_status is Duo's long poll: it may hold its client until the user answers.
            client = self._pool.borrow(self.settings, returns_soon=name != "auth_status")
            try:
                return getattr(client, name)(*args, **kwargs)
            finally:
                take = getattr(client, "take_calls", None)
                if take is not None:
                    self.calls += take()
                offset = getattr(client, "server_time_offset", None)
                if offset is not None:
                    self.server_time_offset = offset
                self._pool.give_back(client)

        return call

    def take_calls(self) -> list[tuple[str, float, str | None]]:
        calls, self.calls = self.calls, []
        return calls

    def close(self) -> None:
        pass


class ClientPool:
    """Duo clients kept warm between calls (see :mod:`pam_duo_py.keepwarm`); one pool per served config.

    A login borrows a client for each Duo call, not for the whole login (:class:`_Lent`).
    Bounded: each admitted login has at most one call in flight, so clients in use are at
    most the logins the broker admitted (``max_connections``, ``MAX_PER_USER`` for one
    user); at most ``MAX_IDLE_CLIENTS`` wait idle, and the keeper closes idle ones beyond
    the next call's after a minute of quiet or when the server closes them. In a burst, a
    call waits for a client that a call in flight gives back rather than connecting anew
    while that is the sooner (``borrow``), so a burst opens fewer connections than it has
    calls in flight.

    ``background=False`` leaves the keeper's passes to the caller (unit tests, with a fake clock).
    """

    def __init__(self, settings: Any, factory: Callable[[Any], Any] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, background: bool = True) -> None:
        self.settings = settings
        self._factory = factory
        import threading

        from .keepwarm import Keeper

        self._idle: list[Any] = []
        self._lock = threading.Condition()  # guards the idle list and the counts below; notified on give_back
        self.keeper = Keeper(self._lock, self._idle, clock)
        self._background = background
        self._soon: dict[int, tuple[float, bool]] = {}  # id(client) -> (when lent, was warm), calls that return soon
        self._waiting = 0
        self.call_time = FIRST_CALL_ESTIMATE  # a warm call's recent duration (seconds, a moving average)
        self.waited = 0  # calls served by a client another call gave back while they waited

    def get(self, settings: Any) -> _Lent:
        """A login's Duo client (the broker's ``duo_factory``)."""
        return _Lent(self, settings)

    def _take_idle(self, settings: Any) -> Any:
        return self._idle.pop() if self._idle and settings == self.settings else None

    def borrow(self, settings: Any, *, returns_soon: bool = False) -> Any:
        """A client for one call: the warmest idle one (the last given back); else, while calls that
        return soon are in flight (one for each waiting call), the first of theirs given back, for at
        most ``WAIT_CALLS`` warm-call times; else a new one.

        ``returns_soon``: this call answers within about a round trip (every login call but
        ``auth_status``'s long poll), so other calls may wait for its client.
        """
        with self._lock:
            client = self._take_idle(settings)
            if client is None and settings == self.settings and len(self._soon) > self._waiting:
                deadline = time.monotonic() + min(MAX_WAIT, WAIT_CALLS * self.call_time)
                self._waiting += 1
                try:
                    while client is None and len(self._soon) >= self._waiting:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._lock.wait(left):
                            break
                        client = self._take_idle(settings)
                finally:
                    self._waiting -= 1
                self.waited += client is not None
            self.keeper.taken(client)
            if client is not None and returns_soon:
                self._soon[id(client)] = (time.monotonic(), True)
        if client is not None:
            return client
        if self._factory is not None:
            client = self._factory(settings)
        else:
            from .duo import DuoClient

            client = DuoClient(settings)
        if returns_soon:
            with self._lock:
                self._soon[id(client)] = (time.monotonic(), False)
        return client

    def give_back(self, client: Any) -> None:
        with self._lock:
            lent = self._soon.pop(id(client), None)
            if lent is not None and lent[1]:
                self.call_time += (time.monotonic() - lent[0] - self.call_time) / 8
            if client.settings == self.settings and len(self._idle) < MAX_IDLE_CLIENTS:
                self._idle.append(client)
                self.keeper.returned(client)
                warm = self._background and hasattr(client, "warm_up")
            else:
                warm = None
            self._lock.notify_all()  # waiting calls look again: for this client, or whether to stop waiting
        if warm is None:
            client.close()
        elif warm:
            self.keeper.start()

    def close(self) -> None:
        self.keeper.stop()
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
            for client in idle:
                self.keeper.forget(client)
        for client in idle:
            client.close()


class Broker:
    def __init__(self, config_path: str, *, socket_path: str | None = None,
                 duo_factory: Callable[[Any], Any] | None = None) -> None:
        from .broker_configs import ServedConfigs

        self.config_path = config_path
        self.configs = ServedConfigs(config_path, lambda settings: ClientPool(settings, duo_factory), self._reported)
        self.socket_path = socket_path or self.config.broker.socket
        import threading

        self._threading = threading
        from .transport import bound_name_lookups

        bound_name_lookups()  # the broker may start threads: name lookups end at the call's deadline
        self._active: dict[Any, int] = {}  # ("user", name) for root callers, ("uid", uid) for others
        self._connections: dict[int, int] = {}  # open connections per peer uid
        self._open = 0
        self.max_connections = MAX_CONNECTIONS
        self.shed = 0  # connections closed unserved (a cap, no descriptor or no thread)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hup = False
        self._listener: socket.socket | None = None
        self._spare: int | None = None
        from .broker_health import Health

        self.health = Health(self)

    # -- configuration (see :mod:`pam_duo_py.broker_configs`)

    @property
    def config(self) -> Any:
        """The default config (the broker's own), as last loaded."""
        return self.configs.default.config

    @property
    def pool(self) -> ClientPool:
        return self.configs.default.pool

    @property
    def sink(self) -> Any:
        return self.configs.default.sink

    def _reported(self, served: Any, why: str, problems: str | None) -> None:
        if why == "first use":
            self.sink.broker(f"serving {served.path} too (named by a PAM line)")
            return
        if problems is not None and served is self.configs.default:
            served.sink.error(f"broker: config {why}; reload failed, logins refused until it is fixed: {problems}")
            served.sink.broker(f"reload failed, logins refused until the config is fixed: {problems}", error=True)
        elif problems is not None:
            served.sink.error(f"broker: config {served.path} {why}; reload failed, its logins refused until it is "
                              f"fixed: {problems}")
            served.sink.broker(f"reload of {served.path} failed, its logins refused until it is fixed: {problems}",
                               error=True)
        else:
            served.sink.broker(f"reloaded {served.path}" + ("" if why == "SIGHUP" else f" ({why})"))
        self.health.reloaded(problems is None)

    def reload(self) -> bool:
        """Read every served config again (SIGHUP, from the accept loop)."""
        return self.configs.reload_all()

    def current_config(self) -> Any:
        """The default config as it is on disk now, reloading when a file changed; None when it does not load."""
        return self.configs.current(self.configs.default)

    # -- lifecycle

    def bind(self) -> socket.socket:
        listen_fds = os.environ.get("LISTEN_FDS")
        if listen_fds and os.environ.get("LISTEN_PID") == str(os.getpid()) and int(listen_fds) >= 1:
            self._listener = socket.socket(fileno=3)  # systemd socket activation
            self._spare = _open_spare()
            return self._listener
        directory = os.path.dirname(self.socket_path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)  # whatever the umask: clients must be able to reach the socket
        check_socket_dir(self.socket_path)
        try:
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                if _listening(self.socket_path):
                    raise ProtocolError(f"another broker is listening on {self.socket_path}")
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o666)  # anyone may connect; who they are comes from SO_PEERCRED
        listener.listen(128)
        self._listener = listener
        self._spare = _open_spare()
        return listener

    def raise_fd_limit(self) -> None:
        """Soft RLIMIT_NOFILE up to the hard limit (at most NOFILE_TARGET); connections fit in what we get."""
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = NOFILE_TARGET if hard == resource.RLIM_INFINITY else min(hard, NOFILE_TARGET)
        if soft != resource.RLIM_INFINITY and soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            except (ValueError, OSError):
                pass
        if soft != resource.RLIM_INFINITY:
            # Each connection may hold its socket and a Duo connection; keep room for the rest.
            self.max_connections = max(8, min(MAX_CONNECTIONS, (soft - 64) // 2))

    def serve_forever(self) -> None:
        listener = self._listener or self.bind()
        listener.settimeout(TICK)
        if self._spare is None:
            self._spare = _open_spare()
        while not self._stop.is_set():
            self.tick()
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                self._accept_failed(listener, exc)
                continue
            self._admit(conn)

    def tick(self) -> None:
        """Called from the accept loop at least every TICK seconds: watchdog ping, stats, a pending SIGHUP reload."""
        self.health.tick()  # watchdog ping and stats file, when due
        if self._hup:
            self._hup = False
            self.reload()

    def hup(self) -> None:
        """SIGHUP: reload at the next tick (not inside the signal handler)."""
        self._hup = True

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        self.configs.close()

    # -- admission: nothing a caller does may end the broker or block others

    def _accept_failed(self, listener: socket.socket, exc: OSError) -> None:
        """EMFILE/ENFILE and friends: shed the waiting connection with the spare descriptor, then go on."""
        import errno

        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.shed += 1
            if self._spare is not None:
                os.close(self._spare)
                self._spare = None
                try:
                    listener.accept()[0].close()
                except OSError:
                    pass
                self._spare = _open_spare()
            if self.shed % 100 == 1:
                self.sink.broker(f"out of file descriptors ({exc.strerror}); shedding connections", error=True)
            time.sleep(0.01)  # the descriptors come back as connections end; do not spin meanwhile

    def _admit(self, conn: socket.socket) -> None:
        try:
            uid = peer_uid(conn)
        except OSError:
            conn.close()
            return
        with self._lock:
            full = self._open >= self.max_connections or (
                uid != 0 and self._connections.get(uid, 0) >= MAX_CONNECTIONS_PER_UID)
            if not full:
                self._open += 1
                self._connections[uid] = self._connections.get(uid, 0) + 1
        if full:
            self.shed += 1
            conn.close()
            return
        self.health.connections += 1
        try:
            self._threading.Thread(target=self._handle, args=(conn, uid), daemon=True).start()
        except BaseException:  # RuntimeError "can't start new thread", MemoryError: shed, go on
            self.shed += 1
            self._closed(conn, uid)

    def _closed(self, conn: socket.socket, uid: int) -> None:
        conn.close()
        with self._lock:
            self._open -= 1
            self._connections[uid] -= 1
            if not self._connections[uid]:
                del self._connections[uid]

    def _enter(self, key: tuple) -> bool:
        limit = MAX_PER_USER if key[0] == "user" else MAX_PER_UID
        with self._lock:
            if self._active.get(key, 0) >= limit:
                return False
            self._active[key] = self._active.get(key, 0) + 1
            return True

    def _leave(self, key: tuple) -> None:
        with self._lock:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]

    # -- one connection

    def _handle(self, conn: socket.socket, uid: int) -> None:
        try:
            self._login(conn, uid)
        except BaseException as exc:  # one bad client must never take the broker down
            try:
                self.sink.error(f"broker: internal error for uid {uid}: {type(exc).__name__}: {exc}")
                self._reply(conn, Result.SERVICE_ERR, "internal error")
            except BaseException:
                pass
        finally:
            self._closed(conn, uid)

    def _send(self, conn: socket.socket, message: dict[str, Any]) -> bool:
        try:
            conn.settimeout(ANSWER_TIMEOUT)
            send_frame(conn, message)
            return True
        except (ProtocolError, OSError):
            return False

    def _reply(self, conn: socket.socket, result: Result, message: str | None = None) -> None:
        text = MESSAGES.get(result, "") if message is None else message
        self._send(conn, {"type": "result", "result": result.value, "message": text})

    def _request(self, conn: socket.socket, uid: int) -> Any:
        """The login request from the first frame and the served config it names, or None after answering a refusal."""
        from .users import lookup_uid

        try:
            message = recv_frame(conn, deadline=time.monotonic() + FIRST_FRAME_TIMEOUT)
        except (ProtocolError, OSError) as exc:
            if "closed the connection" not in str(exc):  # not a client that just went away
                self.sink.error(f"broker: bad request from uid {uid}: {exc}")
                self._reply(conn, Result.SERVICE_ERR, "bad request")
            return None
        request = login_request(uid, message, lookup_uid)
        if isinstance(request, Refusal):
            if request.note:
                self.sink.error(request.note)
            self._reply(conn, request.result, request.message)
            return None
        served = self.configs.for_login(named_config(uid, message))
        if isinstance(served, Result):
            self._reply(conn, served)  # another config it cannot serve (declined), or one that does not load
            return None
        return request, served

    def _login(self, conn: socket.socket, uid: int) -> None:
        from .login import authenticate

        asked = self._request(conn, uid)
        if asked is None:
            return
        request, served = asked
        key = ("user", request.user) if uid == 0 else ("uid", uid)
        if not self._enter(key):
            self.health.busy += 1
            self._send(conn, {"type": "busy", "message": MESSAGES[Result.BUSY]})
            return
        try:
            if not self._send(conn, {"type": "accepted"}):
                return  # the client gave up waiting (and decides in-process): nothing was sent to Duo
            config = self.configs.current(served)
            if config is None:
                self._reply(conn, Result.BAD_CONFIG)
                return
            outcome = authenticate(config, request, BrokerPrompter(conn), sink=served.sink, duo_factory=served.pool.get)
            self._reply(conn, outcome.result)
        finally:
            self._leave(key)


def _open_spare() -> int | None:
    """A descriptor kept in reserve, closed to make room for accepting (and shedding) when out of them."""
    try:
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _listening(path: str) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def main(config_path: str, socket_path: str | None = None) -> int:
    from .events import EventSink

    try:
        broker = Broker(config_path, socket_path=socket_path)
        broker.bind()
    except ConfigError as exc:
        for problem in exc.problems:
            EventSink().config_error(problem, to="stderr")
        return 1
    except (OSError, ProtocolError) as exc:
        EventSink().broker(f"cannot listen on {socket_path or 'the broker socket'}: {exc}", error=True)
        return 1
    broker.raise_fd_limit()
    signal.signal(signal.SIGHUP, lambda *_: broker.hup())
    signal.signal(signal.SIGTERM, lambda *_: broker._stop.set())
    broker.sink.broker(f"listening on {broker.socket_path}")
    broker.health.ready()
    try:
        broker.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        broker.health.stopping()
        broker.stop()
        if broker.socket_path and os.path.exists(broker.socket_path) and not os.environ.get("LISTEN_FDS"):
            try:
                os.unlink(broker.socket_path)
            except OSError:
                pass
    return 0
