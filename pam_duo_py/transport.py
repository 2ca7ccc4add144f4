"""The HTTPS transport under the Duo adapter (httpx's ``handle_request`` idea).

A transport is a function ``(method, host, path, headers, body, deadline) -> (status,
headers, body)``: the request arrives signed (:mod:`pam_duo_py.duo` builds it), header
names of the reply are lower case, and ``deadline`` is a point on the caller's monotonic
clock. Unit tests pass a plain function; the real one, :func:`https_transport`, is
:class:`RateLimitWaits` around :class:`HTTPSTransport`, which keep these promises:

* the CA is always pinned: ``ca_file`` or duo-client's own bundle, never the
  environment; the proxy (HTTP ``CONNECT``) comes only from the config;
* one overall deadline per call: connect, proxy tunnel, TLS handshake, sending and
  every read included (a per-read timeout would let a dripping reply run forever); when
  the host has several addresses a dead one hands over to the next within that deadline;
* one keep-alive connection (one TCP connection, one TLS handshake) with ``TCP_NODELAY``,
  reused call after call; a request is sent again only when it cannot have reached the
  server (the idle connection was found closed, or sending failed on it);
* HTTP 429 is retried only while the wait fits into the call's deadline:
  ``Retry-After`` or ``X-Retry-After`` (Duo's own mock server sends the latter) when
  given, else 1, 2, 4 ... s, instead of duo-client's fixed 63 s loop that ignores both.

HTTP/1.1 is spoken here directly (a request line, headers, a body by length, chunks or
until close): ``http.client`` would cost every in-process login the import of the
``email`` package. Failures are raised as ``OSError``, ``ssl.SSLError`` or
:class:`BadReply`; the adapter maps them to :mod:`pam_duo_py.errors`.
"""
from __future__ import annotations

import os
import socket
import ssl
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs milliseconds per login
    from typing import Any, Callable, Protocol

    from .config import DuoSettings

    Reply = tuple[int, dict[str, str], bytes]

    class Transport(Protocol):
        def __call__(self, method: str, host: str, path: str, headers: dict[str, str], body: bytes | None,
                     deadline: float) -> Reply: ...

MAX_RATE_LIMIT_RETRIES = 6  # as duo_unix; the call's deadline usually ends the waits first
MAX_LINE = 65536  # as http.client
MAX_HEADERS = 100  # as http.client
MAX_BODY = 64 * 1024 * 1024
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class BadReply(Exception):
    """The server's bytes are not an HTTP/1.x reply we can read (or not all of it arrived)."""


# -- HTTP dates --------------------------------------------------------------------------------

def http_date(when: float) -> str:
    """``when`` (seconds since the epoch) as ``email.utils.formatdate()`` writes it: ``Wed, 02 Dec 2026 15:04:05 -0000``.

    Written out here (not with ``strftime``, whose day and month names follow the host
    process's locale) so that a login does not import the ``email`` package.
    """
    t = time.gmtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} -0000")


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch from an HTTP date, or None.

    The form servers send (``Sun, 06 Nov 1994 08:49:37 GMT``) is read here; any other form
    goes to ``email.utils`` (imported only then). A date without a zone (``-0000``) is UTC.
    """
    if not value:
        return None
    value = value.strip()
    parts = value.split(" ")
    if (len(parts) == 6 and parts[0][:-1] in _DAYS and parts[0].endswith(",") and parts[2] in _MONTHS
            and parts[5] in ("GMT", "UTC", "+0000", "-0000") and len(parts[1]) == 2 and parts[1].isdigit()
            and len(parts[3]) == 4 and parts[3].isdigit() and len(parts[4]) == 8 and parts[4][2::3] == "::"
            and (parts[4][:2] + parts[4][3:5] + parts[4][6:]).isdigit()):
        import datetime

        clock = parts[4]
        try:
            return datetime.datetime(int(parts[3]), _MONTHS.index(parts[2]) + 1, int(parts[1]), int(clock[:2]),
                                     int(clock[3:5]), int(clock[6:]), tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            return None
    import datetime
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" parses as naive, but it means UTC (RFC 5322), not local time
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (integer seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = parse_http_date(value)
    return None if when is None else max(0.0, when - now)


# -- 429 ----------------------------------------------------------------------------------------

class RateLimitWaits:
    """A transport that sends a request again after HTTP 429, while the wait fits into its deadline."""

    def __init__(self, send: Transport, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.time) -> None:
        self._send = send
        self._clock = clock
        self._sleep = sleep
        self._now = now

    def __call__(self, method: str, host: str, path: str, headers: dict[str, str], body: bytes | None,
                 deadline: float) -> Reply:
        backoff = 1.0
        for _ in range(MAX_RATE_LIMIT_RETRIES + 1):
            status, head, data = self._send(method, host, path, headers, body, deadline)
            if status != 429:
                break
            wait = retry_after_seconds(head.get("retry-after") or head.get("x-retry-after"), self._now())
            if wait is None:
                wait = backoff
                backoff *= 2
            if wait >= deadline - self._clock() - 0.05:
                break
            self._sleep(wait)
        return status, head, data


# -- name lookups and TCP -------------------------------------------------------------------------

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

    def __call__(self, host: str | bytes, port: int, remaining: Callable[[], float]) -> list:
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


def _ascii(host: str) -> str | bytes:
    """An ASCII host name as bytes: the socket and ssl modules then skip the IDNA codec (an import per login)."""
    return host.encode("ascii") if host.isascii() else host


def _open_tcp(host: str, port: int, remaining: Callable[[], float]) -> socket.socket:
    """Connect to the first address that answers; each address gets an equal share of the time left."""
    if _lookup is not None:
        infos = _lookup(_ascii(host), port, remaining)
    else:
        infos = socket.getaddrinfo(_ascii(host), port, 0, socket.SOCK_STREAM)
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


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- one connection -------------------------------------------------------------------------------

class _Connection:
    """A socket with a read buffer; every send and read is bounded by the call's deadline."""

    def __init__(self, sock: socket.socket, remaining: Callable[[], float]) -> None:
        self.sock = sock
        self._remaining = remaining
        self._buffer = bytearray()

    def _arm(self) -> None:
        left = self._remaining()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)

    def send(self, data: bytes) -> None:
        self._arm()
        self.sock.sendall(data)

    def _fill(self) -> bool:
        self._arm()
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def line(self) -> bytes:
        """One line (CRLF or LF), without its end."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > MAX_LINE:
                raise BadReply("header line too long")
            if not self._fill():
                raise BadReply("connection closed inside the reply's head")

    def exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if len(self._buffer) > MAX_BODY:
                raise BadReply("reply too large")
            if not self._fill():
                raise BadReply(f"reply body cut short ({len(self._buffer)} of {count} bytes)")
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def until_close(self) -> bytes:
        while self._fill():
            if len(self._buffer) > MAX_BODY:
                raise BadReply("reply too large")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def head(self) -> tuple[bytes, int, dict[str, str]]:
        """The status line's version and code, and the headers (names in lower case)."""
        first = self.line()
        version, _, rest = first.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
            raise BadReply("bad status line")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self.line()
            if not line:
                return version, int(code), headers
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not name or name != name.strip():
                raise BadReply("bad header line")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        raise BadReply("too many headers")

    def body(self, headers: dict[str, str], status: int, method: str) -> tuple[bytes, bool]:
        """The reply's body, and whether the connection must be closed after it."""
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return b"", False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunks(), False
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise BadReply("bad Content-Length")
            return self.exactly(int(length)), False
        return self.until_close(), True

    def _chunks(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_text = self.line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadReply("bad chunk size") from None
            if size == 0:
                while self.line():  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise BadReply("reply too large")
            parts.append(self.exactly(size))
            if self.line():
                raise BadReply("bad chunk end")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _peer_closed(sock: socket.socket | None) -> bool:
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
    if not isinstance(sock, ssl.SSLSocket):
        return True
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.recv(1)
        return True  # the close (b"") or data nobody asked for: either way not reusable
    except ssl.SSLWantReadError:
        return False
    except (OSError, ValueError):
        return True
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass


MAX_CONTEXTS = 16
_contexts: dict[tuple, ssl.SSLContext] = {}


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    """The TLS context pinned to ``ca_file``, shared while the file stays the same.

    Loading a CA bundle costs milliseconds (duo-client's own: about 5 ms); the broker
    makes a new client for every connection a burst of logins needs, so its clients
    share one context per file. The key is the file's identity: a replaced or edited
    bundle is loaded afresh on the next connection.
    """
    try:
        st = os.stat(ca_file)
    except OSError:
        return _new_ssl_context(ca_file)  # raises the loader's own error
    key = (ca_file, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    context = _contexts.get(key)
    if context is None:
        context = _new_ssl_context(ca_file)
        if len(_contexts) >= MAX_CONTEXTS:
            _contexts.clear()
        _contexts[key] = context
    return context


def _new_ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca_file)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class HTTPSTransport:
    """HTTPS to one port (optionally through an HTTP CONNECT proxy) on one keep-alive connection."""

    def __init__(self, settings: DuoSettings, *, clock: Callable[[], float] = time.monotonic,
                 default_ca_file: Callable[[], str] | None = None) -> None:
        self.port = settings.port or 443
        self.proxy = settings.proxy
        self._ca_file = settings.ca_file
        self._default_ca_file = default_ca_file  # the bundle to pin when the config names none
        self._context: ssl.SSLContext | None = None
        self._clock = clock
        self._conn: _Connection | None = None
        self._conn_host: str | None = None
        self.deadline = 0.0
        self.connections_opened = 0

    def remaining(self) -> float:
        return self.deadline - self._clock()

    # -- the connection

    def _connect(self, host: str) -> _Connection:
        if self._context is None:
            ca_file = self._ca_file or (self._default_ca_file() if self._default_ca_file else None)
            if not ca_file:
                raise ssl.SSLError("no CA bundle to verify Duo's certificate with")
            self._context = _ssl_context(ca_file)
        self.connections_opened += 1
        proxy = self.proxy
        tcp = _open_tcp(proxy.host, proxy.port, self.remaining) if proxy else _open_tcp(host, self.port, self.remaining)
        try:
            if proxy:
                self._tunnel(_Connection(tcp, self.remaining), host)
            left = self.remaining()
            if left <= 0:
                raise TimeoutError("deadline passed before the TLS handshake")
            tcp.settimeout(left)
            tls = self._context.wrap_socket(tcp, server_hostname=_ascii(host))
        except BaseException:
            tcp.close()
            raise
        self._conn_host = host
        return _Connection(tls, self.remaining)

    def _tunnel(self, conn: _Connection, host: str) -> None:
        proxy = self.proxy
        assert proxy is not None
        target = _authority(host, self.port)
        lines = [f"CONNECT {target} HTTP/1.0", f"Host: {target}"]
        if proxy.user is not None:
            import base64

            token = base64.b64encode(f"{proxy.user}:{proxy.password or ''}".encode()).decode()
            lines.append("Proxy-Authorization: Basic " + token)
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        _, status, _ = conn.head()
        if status != 200:
            raise OSError(f"Tunnel connection failed: {status}")

    def connect(self, host: str, deadline: float) -> None:
        """Open the connection (TCP, tunnel, TLS) now when none is open, sending nothing."""
        self.deadline = deadline
        if self._conn is not None and self._conn_host != host:
            self.close()
        if self._conn is None:
            self._conn = self._connect(host)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def fileno(self) -> int | None:
        """The open connection's descriptor (readable once the server closes it), or None."""
        try:
            return self._conn.sock.fileno() if self._conn is not None else None
        except OSError:
            return None

    def connected(self) -> bool:
        """An open connection the server has not closed (or written to) while idle."""
        return self._conn is not None and not _peer_closed(self._conn.sock)

    # -- one request

    def __call__(self, method: str, host: str, path: str, headers: dict[str, str], body: bytes | None,
                 deadline: float) -> Reply:
        """One request on the keep-alive connection.

        A request is sent again only when it cannot have reached the server: the idle
        connection was found closed before sending, or sending itself failed. Once the
        request is out, a lost reply is an error, never a second request (a second
        POST /auth would be a second push).
        """
        self.deadline = deadline
        if self._conn is not None and (self._conn_host != host or _peer_closed(self._conn.sock)):
            self.close()
        request = self._request_bytes(method, host, path, headers, body)
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._conn = self._conn or self._connect(host)
            try:
                conn.send(request)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                self.close()
                if reused and attempt == 1 and self.remaining() > 0:
                    continue  # the server had closed the idle connection: the request never left
                raise
            except BaseException:
                self.close()
                raise
            try:
                version, status, head = conn.head()
                while 100 <= status < 200:  # "100 Continue" and other interim replies
                    version, status, head = conn.head()
                data, must_close = conn.body(head, status, method)
            except BaseException:
                self.close()
                raise
            if must_close or "close" in head.get("connection", "").lower() or (
                    version == b"HTTP/1.0" and "keep-alive" not in head.get("connection", "").lower()):
                self.close()
            return status, head, data
        raise AssertionError("unreachable")

    def _request_bytes(self, method: str, host: str, path: str, headers: dict[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: " + (host if self.port == 443 else _authority(host, self.port)),
                 "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("a header holds a line break")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def https_transport(settings: DuoSettings, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    default_ca_file: Callable[[], str] | None = None) -> tuple[RateLimitWaits, HTTPSTransport]:
    """The real transport (429 waits around HTTPS) and its HTTPS part (the connection's upkeep)."""
    https = HTTPSTransport(settings, clock=clock, default_ca_file=default_ca_file)
    return RateLimitWaits(https, clock=clock, sleep=sleep), https
