"""The Duo client layer: ``duo_client.Auth`` with the guarantees a login needs.

duo-client (pinned to 5.7.0) signs requests and parses replies. On top of it
this module adds, by overriding its connection and request hooks:

* the CA is always pinned: ``ca_file`` or duo-client's own bundle, never the
  environment; the proxy comes only from the config;
* ``timeout`` is one overall deadline per API call, connect, TLS handshake and
  every read included (duo-client's own timeout applies per socket operation);
  when the host has several addresses a dead one hands over to the next within
  that deadline;
* one keep-alive connection per login (one TCP connection, one TLS handshake)
  with ``TCP_NODELAY``;
* HTTP 429 is retried only while the wait fits into the call's deadline:
  ``Retry-After`` or ``X-Retry-After`` (Duo's own mock server sends the
  latter) when given, else 1, 2, 4 ... s, instead of duo-client's fixed 63 s
  loop that ignores both headers;
* every low-level failure is mapped, here and only here, to the exception tree
  of :mod:`pam_duo_py.errors`.
"""
from __future__ import annotations

import datetime
import email.utils
import http.client
import io
import socket
import ssl
import time
from datetime import timezone
from typing import Any, Callable, Sequence

from . import replies
from .config import DuoIdentity, DuoSettings
from .errors import (
    DuoCredentialsRejected,
    DuoError,
    DuoMalformedReply,
    DuoUnknownAnswer,
    DuoRateLimited,
    DuoRefused,
    DuoTimeout,
    DuoUnavailable,
)

Clock = Callable[[], float]
MAX_RATE_LIMIT_RETRIES = 6  # as duo_unix; the call's deadline usually ends the waits first


class _DeadlineSocket:
    """A socket wrapper that arms the remaining time of the call before every send and receive."""

    def __init__(self, sock: socket.socket, remaining: Callable[[], float]) -> None:
        self._sock = sock
        self._remaining = remaining

    def _arm(self) -> None:
        left = self._remaining()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:
        pass

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _peer_closed(sock: Any) -> bool:
    """Whether an idle keep-alive connection has been closed (or written to) by the server."""
    if sock is None:
        return True
    import select

    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    # A TLS 1.3 server sends session tickets after the handshake: readable, yet no data and
    # no close. Reading without blocking consumes such records and tells the two apart.
    raw = getattr(sock, "_sock", sock)
    if not isinstance(raw, ssl.SSLSocket):
        return True
    timeout = raw.gettimeout()
    try:
        raw.setblocking(False)
        raw.recv(1)
        return True  # the close (b"") or data nobody asked for: either way not reusable
    except ssl.SSLWantReadError:
        return False
    except (OSError, ValueError):
        return True
    finally:
        try:
            raw.settimeout(timeout)
        except OSError:
            pass


class _Lookups:
    """Name lookups in worker threads, each waited for only until the call's deadline.

    Only for the broker: a PAM host process must not start threads, so in-process a
    lookup lasts as long as the system resolver's own limits allow (resolv.conf
    ``options timeout: attempts:``). A lookup that hangs keeps its thread until the
    resolver gives up; at most ``limit`` may be pending, then lookups fail at once.
    """

    def __init__(self, limit: int = 16) -> None:
        import threading

        self._threading = threading
        self._slots = threading.BoundedSemaphore(limit)

    def __call__(self, host: str, port: int, remaining: Callable[[], float]) -> list:
        if not self._slots.acquire(blocking=False):
            raise socket.gaierror(socket.EAI_AGAIN, "too many name lookups pending")
        box: dict[str, Any] = {}
        done = self._threading.Event()

        def work() -> None:
            try:
                box["infos"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except BaseException as exc:
                box["error"] = exc
            finally:
                self._slots.release()
                done.set()

        try:
            self._threading.Thread(target=work, name="dns", daemon=True).start()
        except BaseException:
            self._slots.release()
            raise socket.gaierror(socket.EAI_AGAIN, "cannot start a name lookup") from None
        if not done.wait(max(remaining(), 0.0)):
            raise socket.gaierror(socket.EAI_AGAIN, "name lookup timed out")
        if "error" in box:
            raise box["error"]
        return box["infos"]


_lookup: _Lookups | None = None  # set by bound_name_lookups() in the broker


def bound_name_lookups() -> None:
    """In a process that may start threads (the broker): bound each name lookup by the call's deadline."""
    global _lookup
    if _lookup is None:
        _lookup = _Lookups()


def _open_tcp(host: str, port: int, remaining: Callable[[], float]) -> socket.socket:
    """Connect to the first address that answers; each address gets an equal share of the time left."""
    if _lookup is not None:
        infos = _lookup(host, port, remaining)
    else:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    last: OSError | None = None
    for index, (family, kind, proto, _, address) in enumerate(infos):
        left = remaining()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left / (len(infos) - index))
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            last = exc
            sock.close()
    raise last or TimeoutError("deadline passed before connecting")


class _Connection(http.client.HTTPConnection):
    """HTTPS (optionally through an HTTP CONNECT proxy) under one deadline per call."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, remaining: Callable[[], float]) -> None:
        super().__init__(host, port)
        self._context = context
        self._remaining = remaining

    def connect(self) -> None:
        tcp = _open_tcp(self.host, self.port, self._remaining)
        try:
            if self._tunnel_host:
                self.sock = _DeadlineSocket(tcp, self._remaining)
                self._tunnel()
            left = self._remaining()
            if left <= 0:
                raise TimeoutError("deadline passed before the TLS handshake")
            tcp.settimeout(left)
            tls = self._context.wrap_socket(tcp, server_hostname=self._tunnel_host or self.host)
        except BaseException:
            tcp.close()
            raise
        self.sock = _DeadlineSocket(tls, self._remaining)


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    if ca_file is None:
        ca_file = _duo_modules()[1].DEFAULT_CA_CERTS
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca_file)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (integer seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" parses as naive, but it means UTC (RFC 5322), not local time
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


_PRIVATE_PACKAGE = "pam_duo_py._duo_client"


def _duo_modules() -> tuple[Any, Any]:
    """duo-client's ``auth`` and ``client`` modules, without running its package ``__init__``.

    The package ``__init__`` also imports the Admin and Accounts APIs (most of its
    code), which a login never uses; in pam_python every login pays for every
    import. The pinned duo-client's modules are loaded under a private package
    name, so a normal ``import duo_client`` elsewhere in the process is unaffected.
    """
    import importlib
    import importlib.machinery
    import sys
    import types

    package = sys.modules.get(_PRIVATE_PACKAGE)
    if package is None:
        spec = importlib.machinery.PathFinder.find_spec("duo_client")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("duo_client is not installed")
        package = types.ModuleType(_PRIVATE_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = _PRIVATE_PACKAGE
        sys.modules[_PRIVATE_PACKAGE] = package
    return importlib.import_module(_PRIVATE_PACKAGE + ".auth"), importlib.import_module(_PRIVATE_PACKAGE + ".client")


def _make_auth_class() -> type:
    auth_module, _ = _duo_modules()

    class DeadlineAuth(auth_module.Auth):
        """duo_client.Auth whose connection and request loop follow the rules of this module."""

        def __init__(self, settings: DuoSettings, clock: Clock, sleep: Callable[[float], None]) -> None:
            super().__init__(
                ikey=settings.ikey, skey=settings.skey, host=settings.host, port=settings.port,
                ca_certs=settings.ca_file, timeout=settings.timeout,
            )
            self._settings = settings
            self._clock = clock
            self._sleep = sleep
            self._context = _ssl_context(settings.ca_file)
            self._conn: _Connection | None = None
            self.deadline = 0.0
            self.server_time_offset: float | None = None
            self.connections_opened = 0
            if settings.proxy:
                headers = {}
                if settings.proxy.user is not None:
                    import base64

                    token = base64.b64encode(f"{settings.proxy.user}:{settings.proxy.password or ''}".encode()).decode()
                    headers["Proxy-Authorization"] = "Basic " + token
                self.set_proxy(settings.proxy.host, settings.proxy.port, headers)

        def remaining(self) -> float:
            return self.deadline - self._clock()

        def _connect(self) -> _Connection:
            port = self._settings.port or 443
            if self.proxy_type == "CONNECT":
                conn = _Connection(self.proxy_host, self.proxy_port, self._context, self.remaining)
                conn.set_tunnel(self._settings.host, port, self.proxy_headers)
            else:
                conn = _Connection(self._settings.host, port, self._context, self.remaining)
            self.connections_opened += 1
            return conn

        def close(self) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        def _send(self, method: str, uri: str, body: Any, headers: dict) -> tuple[http.client.HTTPResponse, bytes]:
            """One request on the login's keep-alive connection.

            A request is sent again only when it cannot have reached Duo: the idle
            connection was found closed before sending, or sending itself failed. Once
            the request is out, a lost reply is an error, never a second request (a
            second POST /auth would be a second push).
            """
            if self._conn is not None and _peer_closed(self._conn.sock):
                self.close()
            for attempt in (1, 2):
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                try:
                    conn.request(method, uri, body, headers)
                except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                    self.close()
                    if reused and attempt == 1 and self.remaining() > 0:
                        continue  # the server had closed the idle connection: the request never left
                    raise
                except BaseException:
                    self.close()
                    raise
                try:
                    response = conn.getresponse()
                    data = response.read()
                except BaseException:
                    self.close()
                    raise
                self._note_server_date(response.getheader("Date"))
                if response.will_close:
                    self.close()
                return response, data
            raise AssertionError("unreachable")

        def _note_server_date(self, value: str | None) -> None:
            if not value:
                return
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return
            if when is not None and when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)  # "-0000": UTC, no zone given
            if when is not None:
                self.server_time_offset = when.timestamp() - time.time()

        def _make_request(self, method: str, uri: str, body: Any, headers: dict) -> tuple[Any, bytes]:
            backoff = 1.0
            for _ in range(MAX_RATE_LIMIT_RETRIES + 1):
                response, data = self._send(method, uri, body, headers)
                if response.status != 429:
                    return response, data
                wait = retry_after_seconds(response.getheader("Retry-After")
                                           or response.getheader("X-Retry-After"), time.time())
                if wait is None:
                    wait = backoff
                    backoff *= 2
                if wait >= self.remaining() - 0.05:
                    break
                self._sleep(wait)
            return response, data

    return DeadlineAuth


_AUTH_CLASS: type | None = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {getattr(exc, 'verify_message', None) or getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP reply: {type(exc).__name__}"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
    return type(exc).__name__


def error_kind(exc: DuoError, *, long_poll: bool = False) -> str:
    """The kind of a failed call, as the metrics count it.

    ``unreachable`` (network, TLS, timeout), ``401``, ``429``, ``4xx``, ``5xx``, ``malformed``,
    ``unknown_answer`` (a well-formed reply with a ``result`` we do not know);
    ``poll_timeout`` when a long poll ran into the bound its caller set (the push was not
    answered in time: not a Duo error).
    """
    if isinstance(exc, DuoTimeout) and long_poll:
        return "poll_timeout"
    if isinstance(exc, DuoMalformedReply):
        return "malformed"
    if isinstance(exc, DuoUnknownAnswer):
        return "unknown_answer"
    status = exc.status
    if isinstance(exc, DuoRefused):
        return str(status) if status in (401, 429) else "4xx"
    if status is not None and status >= 500:
        return "5xx"
    return "unreachable"


class AuthCalls:
    """The typed ``/auth/v2/auth`` calls: Duo's parameters are built here and nowhere else.

    Built on ``_auth_call(identity, factor, params) -> raw reply`` (the real client's signed call,
    or a test's recorder); replies are checked by :mod:`pam_duo_py.replies`.
    """

    def _auth_call(self, identity: DuoIdentity, factor: str, params: dict[str, str]) -> Any:
        raise NotImplementedError

    def _parsed(self, parse: Callable[..., Any], reply: Any, **options: Any) -> Any:
        return parse(reply, **options)

    def start_push(self, identity: DuoIdentity, device: str, *, ipaddr: str | None, hostname: str | None,
                   pushinfo: Sequence[tuple[str, str]] = (), txid: str | None = None) -> replies.AuthStarted:
        params = _place(ipaddr, hostname, device=device, **{"async": "1"})
        if pushinfo:
            import urllib.parse

            params["pushinfo"] = urllib.parse.urlencode(list(pushinfo))
        if txid:
            params["txid"] = txid  # Verified Push: the transaction the preauth opened
        return self._parsed(replies.parse_auth_started, self._auth_call(identity, "push", params))

    def start_phone(self, identity: DuoIdentity, device: str, *, ipaddr: str | None,
                    hostname: str | None) -> replies.AuthStarted:
        params = _place(ipaddr, hostname, device=device, **{"async": "1"})
        return self._parsed(replies.parse_auth_started, self._auth_call(identity, "phone", params))

    def check_passcode(self, identity: DuoIdentity, passcode: str, *, ipaddr: str | None,
                       hostname: str | None) -> replies.AuthResult:
        params = _place(ipaddr, hostname, passcode=passcode, **{"async": "0"})
        return self._parsed(replies.parse_auth_result, self._auth_call(identity, "passcode", params), allow_waiting=False)

    def send_sms(self, identity: DuoIdentity, device: str | None, *, ipaddr: str | None,
                 hostname: str | None) -> replies.AuthResult:
        params = _place(ipaddr, hostname, device=device or "auto", **{"async": "0"})
        return self._parsed(replies.parse_auth_result, self._auth_call(identity, "sms", params), allow_waiting=False)


def _place(ipaddr: str | None, hostname: str | None, **params: str) -> dict[str, str]:
    """Where the login comes from (sent when known), then the call's own parameters."""
    place = {}
    if ipaddr:
        place["ipaddr"] = ipaddr
    if hostname:
        place["hostname"] = hostname
    place.update(params)
    return place


class DuoClient(AuthCalls):
    """The real :class:`~pam_duo_py.replies.DuoApi`: one instance per login (or per broker worker)."""

    def __init__(self, settings: DuoSettings, *, clock: Clock = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        global _AUTH_CLASS
        if _AUTH_CLASS is None:
            _AUTH_CLASS = _make_auth_class()
        self.settings = settings
        self._clock = clock
        self._auth = _AUTH_CLASS(settings, clock, sleep)
        self.calls: list[tuple[str, float, str | None]] = []  # (endpoint, seconds, error kind): for metrics

    @property
    def server_time_offset(self) -> float | None:
        """Duo's clock minus ours, in seconds, from the last reply's Date header (1 s resolution)."""
        return self._auth.server_time_offset

    @property
    def connections_opened(self) -> int:
        return self._auth.connections_opened

    def close(self) -> None:
        self._auth.close()

    # -- the idle keep-alive connection (the broker keeps it warm between logins) --------------

    def fileno(self) -> int | None:
        """The open connection's descriptor (readable once the server closes it), or None."""
        conn = self._auth._conn
        sock = conn.sock if conn is not None else None
        try:
            return sock.fileno() if sock is not None else None
        except OSError:
            return None

    def connected(self) -> bool:
        """An open connection the server has not closed (or written to) while idle."""
        conn = self._auth._conn
        return conn is not None and not _peer_closed(conn.sock)

    def warm_up(self, timeout: float) -> bool:
        """Open the connection (TCP and TLS) now, sending nothing; False (and closed) on failure."""
        auth = self._auth
        auth.deadline = self._clock() + min(timeout, self.settings.timeout)
        try:
            if auth._conn is None:
                auth._conn = auth._connect()
            if auth._conn.sock is None:
                auth._conn.connect()
            return True
        except Exception:
            auth.close()
            return False

    def ping(self, timeout: float) -> bool:
        """Duo's ``/auth/v2/ping`` on the idle connection (not a login request); False (and closed) on failure.

        Not noted in :attr:`calls`: those belong to logins.
        """
        auth = self._auth
        auth.deadline = self._clock() + min(timeout, self.settings.timeout)
        try:
            auth.ping()
            return True
        except Exception:
            auth.close()
            return False

    def call(self, method: str, path: str, params: dict[str, str], timeout: float | None = None) -> Any:
        """One API call under one deadline; every failure leaves here as a :class:`DuoError`.

        Each call is noted in :attr:`calls` (endpoint, seconds, error kind) for the audit event.
        """
        started = self._clock()
        kind: str | None = None
        try:
            return self._call(method, path, params, timeout, started)
        except DuoError as exc:
            kind = error_kind(exc, long_poll=timeout is not None)
            raise
        finally:
            self.calls.append((path.rsplit("/", 1)[-1], self._clock() - started, kind))

    def take_calls(self) -> list[tuple[str, float, str | None]]:
        """The calls noted since the last take (a pooled client serves one login after another)."""
        calls, self.calls = self.calls, []
        return calls

    def _call(self, method: str, path: str, params: dict[str, str], timeout: float | None, started: float) -> Any:
        self._auth.deadline = started + (self.settings.timeout if timeout is None else timeout)
        try:
            return self._auth.json_api_call(method, path, params)
        except RuntimeError as exc:
            self._auth.close()
            raise self._http_error(exc) from None
        except (OSError, ssl.SSLError, http.client.HTTPException, UnicodeError) as exc:
            self._auth.close()
            if isinstance(exc, (TimeoutError, socket.timeout)) or self._auth.remaining() <= 0:
                # Past the deadline another error may be the cause (a name lookup cannot be
                # interrupted and may outlast it): say which.
                cause = "" if isinstance(exc, (TimeoutError, socket.timeout)) else f" ({_describe(exc)})"
                raise DuoTimeout(f"{path}: timed out after {self.settings.timeout if timeout is None else timeout:g} s"
                                 f"{cause}") from None
            raise DuoUnavailable(f"{path}: {_describe(exc)}") from None
        except BaseException:
            self._auth.close()
            raise

    def _http_error(self, exc: RuntimeError) -> DuoError:
        status = getattr(exc, "status", None)
        data = getattr(exc, "data", None)
        code = data.get("code") if isinstance(data, dict) else None
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = data.get("message") if isinstance(data, dict) and isinstance(data.get("message"), str) else ""
        extra = data.get("message_detail") if isinstance(data, dict) else None
        detail = f"HTTP {status}" + (f" code {code}" if code else "") + (f": {message[:200]}" if message else "")
        if isinstance(extra, str) and extra:
            detail += f" ({extra[:200]})"  # Duo names the parameter or header it objects to
        if status == 200 or status is None:
            return DuoMalformedReply(f"malformed reply ({detail})", status=status)
        if status == 401:
            if code == 40105:
                offset = self.server_time_offset
                if offset is not None:
                    detail += f" (our clock differs from Duo's by about {offset:+.0f} s)"
            return DuoCredentialsRejected(detail, code=code, status=status)
        if status == 429:
            return DuoRateLimited(detail, code=code, status=status)
        if 400 <= status < 500:
            return DuoRefused(detail, code=code, status=status)
        return DuoUnavailable(detail, code=code, status=status)

    def _parsed(self, parse: Callable[..., Any], reply: Any, **options: Any) -> Any:
        """``parse(reply)``; a reply of the wrong shape (or with a ``result`` we do not know) marks
        the call that brought it as ``malformed`` (or ``unknown_answer``)."""
        try:
            return parse(reply, **options)
        except (DuoMalformedReply, DuoUnknownAnswer) as exc:
            if self.calls:
                kind = "unknown_answer" if isinstance(exc, DuoUnknownAnswer) else "malformed"
                self.calls[-1] = self.calls[-1][:2] + (kind,)
            raise

    # -- the endpoints a login uses ------------------------------------------------------------

    def check(self) -> int:
        return self._parsed(replies.parse_time, self.call("GET", "/auth/v2/check", {}))

    def preauth(self, identity: DuoIdentity, *, ipaddr: str | None, hostname: str | None,
                verified_push: bool) -> replies.Preauth:
        params = identity.params()
        params.update(_place(ipaddr, hostname))
        if verified_push:
            params["client_supports_verified_push"] = "1"
        return self._parsed(replies.parse_preauth, self.call("POST", "/auth/v2/preauth", params))

    def _auth_call(self, identity: DuoIdentity, factor: str, params: dict[str, str]) -> Any:
        body = identity.params()
        body.update(params)
        body["factor"] = factor
        return self.call("POST", "/auth/v2/auth", body)

    def auth_status(self, txid: str, timeout: float) -> replies.AuthResult:
        """Duo long-polls this call until the transaction changes; ``timeout`` bounds the wait."""
        reply = self.call("GET", "/auth/v2/auth_status", {"txid": txid}, timeout=timeout)
        return self._parsed(replies.parse_auth_result, reply, allow_waiting=True)
