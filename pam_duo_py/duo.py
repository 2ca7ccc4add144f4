"""The Duo adapter: typed calls in, reply objects out; Duo's wire format lives here.

* **Typed calls** (:class:`AuthCalls`, :class:`DuoClient`): ``preauth``, ``start_push``,
  ``start_phone``, ``check_passcode``, ``send_sms``, ``auth_status`` (and ``check``, ``ping``
  for the operator and the broker) build Duo's parameters (``async``, ``device``, the
  urlencoded ``pushinfo``, a Verified Push ``txid``, ``ipaddr``, ``hostname``, ``passcode``...)
  and return the objects of :mod:`pam_duo_py.replies`.
* **Signed requests**: duo-client (pinned to 5.7.0) signs them with its public ``sign``,
  ``Client.canon_json`` and ``normalize_params``; no request signing is written here.
* **The envelope and errors**: Duo's ``{"stat": ...}`` envelope is opened here, and every
  failure (of the transport or of Duo) is mapped, here and only here, to the exception tree
  of :mod:`pam_duo_py.errors`.

The bytes travel through a transport (:mod:`pam_duo_py.transport`): the real HTTPS one, or a
plain function in unit tests.
"""
from __future__ import annotations

import _thread
import socket
import ssl
import sys
import time

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
from .transport import BadReply, http_date, parse_http_date

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs milliseconds per login
    from types import ModuleType
    from typing import Any, Callable, Sequence

    from .transport import HTTPSTransport, Transport

    Clock = Callable[[], float]


# -- duo-client, for its request signing ---------------------------------------------------------

_PRIVATE_PACKAGE = "pam_duo_py._duo_client"
# Modules duo-client's client module imports only for code this product does not run: its own
# connection and request loop (http.client, email.utils, random), its command-line demo
# (argparse), what urllib.parse needs only to split URLs with an IPv6 host (ipaddress; signing
# uses its quote and urlencode), and pytz, which it imports when installed (Debian's python3-tz
# comes with python3-babel) only to sign with a time zone other than UTC, which this product never
# does. Each costs an in-process login milliseconds (pytz about 19 ms), so they are imported on
# first use.
_UNUSED_IMPORTS = ("http", "http.client", "email", "email.utils", "argparse", "random", "ipaddress", "pytz")


class _OnFirstUse(type(sys)):  # type: ignore[misc]
    """Stands for a module until an attribute is asked for, then imports the real module."""

    def __getattr__(self, name: str) -> Any:
        import importlib

        real = importlib.import_module(self.__name__)
        if real is self:  # asked while it still stands in sys.modules: nothing to defer to
            raise AttributeError(name)
        try:
            return getattr(real, name)
        except AttributeError:
            return importlib.import_module(f"{self.__name__}.{name}")


def _https_wrapper_not_used(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("duo-client's own HTTPS connection is not used: see pam_duo_py.transport")


_client: ModuleType | None = None  # duo-client's client module, once fully imported
_loading = _thread.allocate_lock()  # _thread is built in: no import cost on the login path


def duo_client_module() -> ModuleType:
    """duo-client's ``client`` module (signing, ``DEFAULT_CA_CERTS``), loaded for as little as it needs.

    It is loaded under a private package name, without running duo-client's package
    ``__init__`` (which imports the Admin and Accounts APIs) and with its ``https_wrapper``
    (which imports ``urllib.request``) replaced by a stub: a normal ``import duo_client``
    elsewhere in the process is unaffected. The modules of :data:`_UNUSED_IMPORTS` stand in
    as :class:`_OnFirstUse` while it is imported, unless another thread could import at the
    same moment (once ``threading`` is loaded, as in the broker, they are imported normally).
    """
    global _client
    if _client is None:
        with _loading:  # the broker's login threads may all ask at once
            if _client is None:
                _client = _load_duo_client()
    return _client


def _load_duo_client() -> ModuleType:
    import importlib
    import importlib.machinery

    if _PRIVATE_PACKAGE not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec("duo_client")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("duo_client is not installed")
        package = type(sys)(_PRIVATE_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = _PRIVATE_PACKAGE
        sys.modules[_PRIVATE_PACKAGE] = package
    wrapper = type(sys)(_PRIVATE_PACKAGE + ".https_wrapper")
    wrapper.CertValidatingHTTPSConnection = _https_wrapper_not_used
    sys.modules.setdefault(wrapper.__name__, wrapper)
    placed: dict[str, Any] = {}
    if "threading" not in sys.modules:
        for name in _UNUSED_IMPORTS:
            parent = name.rpartition(".")[0]
            if name not in sys.modules and (not parent or parent in placed):
                placed[name] = sys.modules[name] = _OnFirstUse(name)
    try:
        return importlib.import_module(_PRIVATE_PACKAGE + ".client")
    finally:
        for name, stand_in in placed.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


# -- failures -----------------------------------------------------------------------------------

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
    if isinstance(exc, BadReply):
        return f"bad HTTP reply: {exc}"
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
    """The real :class:`~pam_duo_py.replies.DuoApi`: one instance per login (or per broker worker).

    ``transport`` (a function, see :mod:`pam_duo_py.transport`) replaces the HTTPS transport in
    tests; ``close`` then calls its ``close`` when it has one.
    """

    def __init__(self, settings: DuoSettings, *, clock: Clock = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, transport: Transport | None = None,
                 wall_clock: Clock = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._wall_clock = wall_clock
        self._https: HTTPSTransport | None = None
        if transport is None:
            from .transport import https_transport

            transport, self._https = https_transport(settings, clock=clock, sleep=sleep,
                                                     default_ca_file=lambda: duo_client_module().DEFAULT_CA_CERTS)
        self.transport = transport
        self._close = self._https.close if self._https is not None else getattr(transport, "close", None)
        self.server_time_offset: float | None = None  # Duo's clock minus ours (s), from the last reply's Date
        self.calls: list[tuple[str, float, str | None]] = []  # (endpoint, seconds, error kind): for metrics

    @property
    def connections_opened(self) -> int:
        return self._https.connections_opened if self._https is not None else 0

    def close(self) -> None:
        """Drop the connection (the next call opens a new one)."""
        if self._close is not None:
            self._close()

    # -- the idle keep-alive connection (the broker keeps it warm between logins) --------------

    def fileno(self) -> int | None:
        """The open connection's descriptor (readable once the server closes it), or None."""
        return self._https.fileno() if self._https is not None else None

    def connected(self) -> bool:
        """An open connection the server has not closed (or written to) while idle."""
        return self._https is not None and self._https.connected()

    def warm_up(self, timeout: float) -> bool:
        """Open the connection (TCP and TLS) now, sending nothing; False (and closed) on failure."""
        if self._https is None:
            return False
        try:
            self._https.connect(self.settings.host, self._clock() + min(timeout, self.settings.timeout))
            return True
        except Exception:
            self.close()
            return False

    def ping(self, timeout: float) -> bool:
        """Duo's ``/auth/v2/ping`` on the idle connection (not a login request); False (and closed) on failure.

        Not noted in :attr:`calls`: those belong to logins.
        """
        try:
            self._request("GET", "/auth/v2/ping", {}, self._clock() + min(timeout, self.settings.timeout))
            return True
        except Exception:
            self.close()
            return False

    # -- one call -------------------------------------------------------------------------------

    def call(self, method: str, path: str, params: dict[str, Any], timeout: float | None = None, *,
             metadata: bool = False) -> Any:
        """One API call under one deadline; every failure leaves here as a :class:`DuoError`.

        Returns Duo's ``response`` (with ``metadata``: the pair ``(response, metadata)``, for
        the Admin API's paging). Each call is noted in :attr:`calls` (endpoint, seconds, error
        kind) for the audit event.
        """
        started = self._clock()
        kind: str | None = None
        try:
            return self._call(method, path, params, timeout, started, metadata)
        except DuoError as exc:
            kind = error_kind(exc, long_poll=timeout is not None)
            raise
        finally:
            self.calls.append((path.rsplit("/", 1)[-1], self._clock() - started, kind))

    def take_calls(self) -> list[tuple[str, float, str | None]]:
        """The calls noted since the last take (a pooled client serves one login after another)."""
        calls, self.calls = self.calls, []
        return calls

    def _call(self, method: str, path: str, params: dict[str, Any], timeout: float | None, started: float,
              metadata: bool) -> Any:
        limit = self.settings.timeout if timeout is None else timeout
        deadline = started + limit
        try:
            return self._request(method, path, params, deadline, metadata)
        except DuoError:
            self.close()
            raise
        except (OSError, ssl.SSLError, BadReply, UnicodeError) as exc:
            self.close()
            if isinstance(exc, (TimeoutError, socket.timeout)) or self._clock() >= deadline:
                # Past the deadline another error may be the cause (a name lookup cannot be
                # interrupted and may outlast it): say which.
                cause = "" if isinstance(exc, (TimeoutError, socket.timeout)) else f" ({_describe(exc)})"
                raise DuoTimeout(f"{path}: timed out after {limit:g} s{cause}") from None
            raise DuoUnavailable(f"{path}: {_describe(exc)}") from None
        except BaseException:
            self.close()
            raise

    def _request(self, method: str, path: str, params: dict[str, Any], deadline: float, metadata: bool = False) -> Any:
        """Sign, send through the transport, open Duo's envelope."""
        uri, headers, body = self._signed(method, path, params)
        status, head, data = self.transport(method, self.settings.host, uri, headers, body, deadline)
        when = parse_http_date(head.get("date"))
        if when is not None:
            self.server_time_offset = when - self._wall_clock()
        return self._envelope(status, data, metadata)

    def _signed(self, method: str, path: str, params: dict[str, Any]) -> tuple[str, dict[str, str], bytes | None]:
        """The request as duo-client's ``Client.api_call`` builds it (signature version 5), ready to send."""
        client = duo_client_module()
        date = http_date(self._wall_clock())
        if method in ("POST", "PUT", "PATCH"):
            body, signed_params, uri = client.Client.canon_json(params), {}, path
        else:
            import urllib.parse

            body, signed_params = "", client.normalize_params(params)
            uri = path + "?" + urllib.parse.urlencode(signed_params, doseq=True)
        settings = self.settings
        headers = {
            "Authorization": client.sign(settings.ikey, settings.skey, method, settings.host, path, date,
                                         client.Client.sig_version, signed_params, body=body),
            "Date": date,
            "User-Agent": (f"Duo API Python/{client.__version__} ca_bundle/{client.CA_BUNDLE_VERSION} "
                           "(ca_pinning=enabled)"),
        }
        if body:
            headers["Content-Type"] = "application/json"
            return uri, headers, body.encode("utf-8")
        return uri, headers, None

    def _envelope(self, status: int, data: bytes, metadata: bool) -> Any:
        """Duo's ``response`` from ``{"stat": "OK", "response": ...}``, or the mapped error."""
        import json

        try:
            parsed: Any = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            parsed = None
        except (ValueError, RecursionError):
            parsed = data.decode("utf-8")
        if status != 200:
            raise self._http_error(status, parsed)
        if not isinstance(parsed, dict) or parsed.get("stat") != "OK" or "response" not in parsed:
            raise self._http_error(status, parsed)
        response = parsed["response"]
        if not metadata:
            return response
        meta = parsed.get("metadata", {})
        if not meta and isinstance(response, dict):
            meta = response.get("metadata", {})
        return response, meta

    def _http_error(self, status: int, data: Any) -> DuoError:
        code = data.get("code") if isinstance(data, dict) else None
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = data.get("message") if isinstance(data, dict) and isinstance(data.get("message"), str) else ""
        extra = data.get("message_detail") if isinstance(data, dict) else None
        detail = f"HTTP {status}" + (f" code {code}" if code else "") + (f": {message[:200]}" if message else "")
        if isinstance(extra, str) and extra:
            detail += f" ({extra[:200]})"  # Duo names the parameter or header it objects to
        if status == 200:
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
        """Duo's time (``/auth/v2/check``): keys, signature and clock accepted."""
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
