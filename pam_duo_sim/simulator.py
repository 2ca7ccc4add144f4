"""Local Duo Auth API v2 simulator (``pam-duo-py simulate``).

An HTTPS server on loopback that speaks the Auth API v2 endpoints the product uses
(``ping``, ``check``, ``preauth``, ``auth``, ``auth_status``), checks request signatures
the way Duo does (signature version 5: canonical request, HMAC-SHA512, ``Date`` within
300 s of its clock) and plays scripted users.  Standard library only, so it runs under
``/usr/bin/python3 -I``.  Form-encoded requests with signature v2 (date, method, host, path,
parameters; HMAC-SHA512 as duo_unix 2.x signs, or HMAC-SHA1 as duo_client's
``sig_version=2``) are accepted too, and the old REST v1 endpoints that Debian's
``login_duo`` 1.11 speaks are served by :mod:`pam_duo_sim.simulator_v1`.

State directory
---------------
``ca.pem``/``ca.key`` (test CA), ``server.pem``/``server.key`` (DNS:localhost),
``wronghost.pem``/``wronghost.key`` (DNS:wrong.example), ``other-ca.pem`` (an unrelated CA
that signed nothing), ``keys.json`` (ikey/skey, 0600), ``duo.toml`` (config snippet, 0600),
``port`` and ``requests.jsonl`` (one JSON object per line: ``connection``, ``tls``,
``tls_error``, ``request`` and ``push_resolved`` events; never the skey or a passcode;
an ``/auth`` request line carries the ``pushinfo`` it was sent with).
An existing CA and keys are reused, so a restart keeps them.

Scripted users
--------------
The Duo username chooses the behaviour::

    username := base ( "+" fault "@" endpoint )*
    endpoint := preauth | auth | auth_status | check | any
    fault    := kind [ "x" N ]          (xN: fire for the first N matching requests only)

The scenario is chosen by the prefix of ``base`` (the username up to the first ``+``):

=============  ===========================================================================
allow*         preauth ``allow`` ("Allowing unknown user")
deny*          preauth ``deny`` ("Your account is disabled. Contact your administrator.")
enroll*        preauth ``enroll`` with an ``enroll_portal_url``
pushdeny*      push and phone resolve ``deny``/``deny`` ("Login request denied.")
fraud*         push and phone resolve ``deny``/``fraud``
pushtimeout*   nobody answers: as real Duo, push and phone end ``deny``/``timeout`` ("Login
               timed out.") after the push timeout: ``pushtimeout-<S>s...`` (e.g.
               ``pushtimeout-2s``, decimals allowed) after S seconds, else after
               ``--push-timeout`` (default 60, Duo's). A sync ``/auth`` holds until then,
               or until the client gives up
pushfail*      the push first reports ``waiting``/``push_failed`` ("Push notification
               failed."), then is approved after ``approve_delay``
bypass*        a user in Duo bypass mode: preauth ``auth``; every ``/auth`` (push, phone,
               passcode, sms) ends ``allow``/``bypass`` ("Allowing user in bypass mode")
lockedout*     Duo locks the user at the first ``/auth``: it ends ``deny``/``locked_out``
               at once, and from then on preauth answers ``deny`` (locked out)
lockout-<N>*   locked out after N wrong passcodes (``lockout-3...``): wrong passcodes
               1..N-1 are ``deny``/``deny``, the Nth is ``deny``/``locked_out``, and then
               as ``lockedout``; a valid passcode before that resets the count
tokenonly*     the only device is a token: passcodes only
onedevice*     one phone with capabilities ``auto``, ``push``
vpushmobile*   as ``vpush``, but the push is approved only once its code was "entered in
               Duo Mobile": the file ``<state-dir>/duo-mobile/<username>`` holding the code
               (a wrong code denies the push); ends ``deny``/``timeout`` as ``pushtimeout``
vpush*         Verified Push as Duo does it: with ``client_supports_verified_push=1``
               preauth returns a ``txid`` and a 3-digit ``verification_code``; the push's
               first waiting ``status_msg`` repeats the code ("Enter the verification code
               NNN in Duo Mobile."); it is approved only if ``/auth`` carried that preauth
               ``txid`` (each txid once), else denied. Without the parameter: a plain push
anything else  (``alice``, ``bob``...) two phones and a token; push/phone resolve ``allow``
               after ``approve_delay``
=============  ===========================================================================

A waiting transaction's first ``auth_status`` answers at once when its status is news
(``push_failed``, a Verified Push code); otherwise ``auth_status`` long-polls until the
status changes or ``--long-poll`` seconds pass. Lock-outs and Verified Push txids are kept in
memory per username (use a fresh name per test, e.g. ``lockedout-a1``).

A ``user_id`` of ``DU`` + 18 characters maps to the username ``iduser`` (behaves like alice).
``/auth`` for allow/deny/enroll users answers 400 40002.  ``sms`` and ``passcode`` answer
synchronously whatever ``async`` says; push, phone and auto honour ``async``.  Valid passcodes:
``123456``, ``987654`` and any 44-character modhex OTP starting with ``cccccc``.

Fault kinds: ``500``, ``502``, ``503`` (that status, code 50000/50200/50300); ``401``
(401 40103); ``429`` (code 42901, no Retry-After); ``429ra<S>`` (with ``Retry-After: S``);
``429xra<S>`` (with ``X-Retry-After: S``, as Duo's own mock server sends it);
``slow<S>`` (sleep S seconds, decimals allowed, then answer normally); ``stall`` (read the
request, never answer, hold the connection); ``malformed`` (200 with a cut JSON body);
``truncated`` (Content-Length larger than the bytes sent, then close); ``close`` (close
without answering); ``missing-<field>`` (drop that key from ``response``);
``result-<value>`` (replace ``result``); ``status-<value>`` (replace ``status``: a status Duo may
add one day); ``html`` (200 with a text/html body).  A suffix that
does not parse is part of the name.  ``check`` has no username: use ``check_fault``
(``--check-fault``) with the same ``kind[xN]`` syntax.
"""
from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import http.server
import json
import os
import pathlib
import re
import secrets
import select
import shutil
import signal
import socket
import socketserver
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import timezone
from email.utils import formatdate as _formatdate
from email.utils import parsedate_to_datetime as _parsedate
from typing import Any, Callable, Dict, List, Optional, Tuple

DATE_TOLERANCE = 300.0
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0
MAX_BODY = 1 << 20

PHONE1 = {"device": "DPFZRS9FB0D46QFTM891", "type": "phone", "number": "XXX-XXX-1234",
          "name": "iPhone", "display_name": "iOS (XXX-XXX-1234)",
          "capabilities": ["auto", "push", "sms", "phone", "mobile_otp"], "sms_nextcode": "1"}
PHONE2 = {"device": "DPFZRS9FB0D46QFTM892", "type": "phone", "number": "XXX-XXX-5678",
          "name": "Android", "display_name": "Android (XXX-XXX-5678)",
          "capabilities": ["auto", "push", "phone"]}
TOKEN = {"device": "DHIXXXXXXXXXXXXXXXXX", "type": "token", "name": "", "display_name": "Token"}
ONE_PHONE = {"device": "DPFZRS9FB0D46QFTM891", "type": "phone", "number": "XXX-XXX-1234",
             "name": "iPhone", "display_name": "iOS (XXX-XXX-1234)",
             "capabilities": ["auto", "push"]}

VALID_PASSCODES = frozenset({"123456", "987654"})
OTP_RE = re.compile(r"cccccc[cbdefghijklnrtuv]{38}\Z")
SCENARIOS = ("pushtimeout", "pushdeny", "pushfail", "tokenonly", "onedevice", "allow", "deny", "enroll",
             "fraud", "vpushmobile", "vpush", "bypass", "lockedout", "lockout")
SUCCESS = ("allow", "allow", "Success. Logging you in...")
DENIED = ("deny", "deny", "Login request denied.")
FRAUD = ("deny", "fraud", "Login request reported as fraudulent.")
TIMED_OUT = ("deny", "timeout", "Login timed out.")
BYPASS = ("allow", "bypass", "Allowing user in bypass mode")
LOCKED_OUT = ("deny", "locked_out", "Your account has been locked out due to excessive authentication failures.")
WRONG_PASSCODE = ("deny", "deny", "Incorrect passcode. Please try again.")
PUSH_FAILED = ("waiting", "push_failed", "Push notification failed.")
_PUSH_TIMEOUT_RE = re.compile(r"pushtimeout-(\d+(?:\.\d+)?)s")
_LOCKOUT_RE = re.compile(r"lockout-(\d+)")

_KIND = (r"(?P<kind>50[023]|401|429(?:x?ra\d+(?:\.\d+)?)?|slow\d+(?:\.\d+)?|stall|malformed"
         r"|truncated|close|html|missing-[^@+]+?|result-[^@+]+?|status-[^@+]+?)(?:x(?P<n>\d+))?")
_FAULT_RE = re.compile(_KIND + r"@(?P<ep>preauth|auth|auth_status|check|any)\Z")
_CHECK_FAULT_RE = re.compile(_KIND + r"\Z")
_UNRESERVED = string.ascii_letters + string.digits + "_.-~"

ENDPOINTS = {"/auth/v2/ping": ("GET", "ping"), "/auth/v2/check": ("GET", "check"),
             "/auth/v2/preauth": ("POST", "preauth"), "/auth/v2/auth": ("POST", "auth"),
             "/auth/v2/auth_status": ("GET", "auth_status")}


@dataclass(frozen=True)
class Fault:
    """One ``kind[xN]@endpoint`` token from a username."""
    token: str
    kind: str
    limit: Optional[int]
    endpoint: str


def parse_faults(username: str) -> List[Fault]:
    """The faults encoded in ``username`` (suffixes that do not parse are ignored)."""
    out = []
    for part in username.split("+")[1:]:
        m = _FAULT_RE.match(part)
        if m:
            n = m.group("n")
            out.append(Fault(part, m.group("kind"), int(n) if n else None, m.group("ep")))
    return out


def scenario_of(username: str) -> str:
    base = username.split("+", 1)[0]
    for name in SCENARIOS:
        if base.startswith(name):
            return name
    return "default"


def devices_for(scenario: str) -> List[Dict[str, Any]]:
    if scenario == "tokenonly":
        return [copy.deepcopy(TOKEN)]
    if scenario == "onedevice":
        return [copy.deepcopy(ONE_PHONE)]
    return copy.deepcopy([PHONE1, PHONE2, TOKEN])


def canon_params(pairs: List[Tuple[str, str]]) -> str:
    """Duo's canonical parameter string (OAuth 1.0 style percent-encoding, sorted pairs)."""
    enc = sorted((urllib.parse.quote(k, safe="~"), urllib.parse.quote(v, safe="~"))
                 for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in enc)


def _form_encoded(req: "_Request") -> bool:
    return (req.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower() == \
        "application/x-www-form-urlencoded"


def _form_pairs(req: "_Request") -> List[Tuple[str, str]]:
    return urllib.parse.parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)


def canonical_request(date: str, method: str, host: str, path: str,
                      pairs: List[Tuple[str, str]], body: bytes,
                      duo_headers: List[Tuple[str, str]]) -> str:
    """The signature version 5 canonical request."""
    hdrs = sorted((k.lower(), v) for k, v in duo_headers)
    canon_hdrs = "\x00".join(x for kv in hdrs for x in kv)
    return "\n".join([date, method.upper(), host.lower(), path, canon_params(pairs),
                      hashlib.sha512(body).hexdigest(),
                      hashlib.sha512(canon_hdrs.encode("utf-8")).hexdigest()])


@dataclass
class _Reply:
    status: int = 200
    payload: Optional[Dict[str, Any]] = None
    raw: Optional[bytes] = None
    ctype: str = "application/json"
    headers: Dict[str, str] = field(default_factory=dict)
    action: str = "send"  # send | stall | close | truncated
    fault: Optional[str] = None

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.payload, separators=(",", ":")).encode("utf-8")


def _ok(response: Dict[str, Any]) -> _Reply:
    return _Reply(200, {"stat": "OK", "response": response})


def _fail(code: int, message: str, detail: Optional[str] = None) -> _Reply:
    payload: Dict[str, Any] = {"stat": "FAIL", "code": code, "message": message}
    if detail is not None:
        payload["message_detail"] = detail
    return _Reply(int(str(code)[:3]), payload)


@dataclass
class _Request:
    method: str
    path: str
    query: List[Tuple[str, str]]
    headers: Any
    body: bytes
    client_gone: Callable[[], bool]
    username: Optional[str] = None
    factor: Optional[str] = None
    txid: Optional[str] = None
    pushinfo: Optional[str] = None


@dataclass
class _Txn:
    txid: str
    username: str
    factor: str
    result: str
    status: str
    status_msg: str
    news: bool = False  # the status is one the client has not been told yet: answer at once
    mobile_code: Optional[str] = None  # vpushmobile: approved when this code is "entered in Duo Mobile"

    def view(self) -> Dict[str, str]:
        self.news = False
        return {"result": self.result, "status": self.status, "status_msg": self.status_msg}


def _write_private(path: pathlib.Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` atomically to ``path`` with ``mode`` (never world-readable in between)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = pam_duo_py simulator
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
subjectAltName = DNS:$ENV::PAM_DUO_SIM_SAN
"""


def _openssl(args: List[str], env: Optional[Dict[str, str]] = None) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, env=env)
    except subprocess.CalledProcessError as exc:
        msg = exc.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"openssl {args[0]} failed: {msg}") from exc


def ensure_pki(state: pathlib.Path) -> None:
    """Create the test CAs and server certificates that are missing in ``state``."""
    ca, ca_key = state / "ca.pem", state / "ca.key"
    new_ca = not (ca.exists() and ca_key.exists())
    leaves = [("server", "localhost"), ("wronghost", "wrong.example")]
    todo = [(n, san) for n, san in leaves
            if new_ca or not ((state / f"{n}.pem").exists() and (state / f"{n}.key").exists())]
    if not (new_ca or todo or not (state / "other-ca.pem").exists()):
        return
    work = pathlib.Path(tempfile.mkdtemp(dir=state, prefix=".pki-"))
    try:
        cnf = work / "openssl.cnf"
        cnf.write_text(_OPENSSL_CNF)
        env = dict(os.environ, PAM_DUO_SIM_SAN="localhost")
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def make_ca(name: str, cn: str) -> None:
            _openssl(["req", "-x509", "-config", str(cnf), "-extensions", "ca_ext", *newkey,
                      "-keyout", str(work / f"{name}.key"), "-out", str(work / f"{name}.pem"),
                      "-days", "3650", "-sha256", "-subj", f"/CN={cn}"], env)

        if new_ca:
            make_ca("ca", "pam_duo_py simulator test CA")
            for suffix in ("key", "pem"):
                os.chmod(work / f"ca.{suffix}", 0o600 if suffix == "key" else 0o644)
                os.replace(work / f"ca.{suffix}", state / f"ca.{suffix}")
        if not (state / "other-ca.pem").exists():
            make_ca("other-ca", "pam_duo_py unrelated test CA")
            os.chmod(work / "other-ca.pem", 0o644)
            os.replace(work / "other-ca.pem", state / "other-ca.pem")
        for name, san in todo:
            key, csr, pem = work / f"{name}.key", work / f"{name}.csr", work / f"{name}.pem"
            env["PAM_DUO_SIM_SAN"] = san
            _openssl(["req", "-new", "-config", str(cnf), *newkey, "-keyout", str(key),
                      "-out", str(csr), "-subj", f"/CN={san}"], env)
            _openssl(["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                      "-set_serial", "0x" + secrets.token_hex(16), "-days", "3650", "-sha256",
                      "-extfile", str(cnf), "-extensions", "leaf_ext", "-out", str(pem)], env)
            os.chmod(key, 0o600)
            os.chmod(pem, 0o644)
            os.replace(key, state / f"{name}.key")
            os.replace(pem, state / f"{name}.pem")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load_keys(state: pathlib.Path) -> Tuple[str, str]:
    path = state / "keys.json"
    try:
        data = json.loads(path.read_text())
        return str(data["ikey"]), str(data["skey"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    upper = string.digits + string.ascii_uppercase
    ikey = "DI" + "".join(secrets.choice(upper) for _ in range(18))
    skey = "".join(secrets.choice(string.digits + string.ascii_letters) for _ in range(40))
    _write_private(path, json.dumps({"ikey": ikey, "skey": skey}) + "\n")
    return ikey, skey


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pam-duo-py-simulator/1.0"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True

    def __init__(self, request: Any, client_address: Any, server: "_TLSServer",
                 conn_id: int) -> None:
        self.conn_id = conn_id
        self.sim: Simulator = server.sim
        self.timeout = self.sim.idle_timeout  # a keep-alive connection idle this long is closed
        super().__init__(request, client_address, server)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def date_time_string(self, timestamp: Optional[float] = None) -> str:
        return _formatdate(self.sim.now(), usegmt=True)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _quickack(self) -> None:
        """ACK the headers at once: a client that writes headers and body separately
        without TCP_NODELAY would otherwise wait for our delayed ACK (about 40 ms)."""
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_QUICKACK", 12), 1)
        except OSError:
            pass

    def _client_gone(self) -> bool:
        """True when the client closed (or sent something while it should be waiting)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _serve(self) -> None:
        ts_start = time.time()
        url = urllib.parse.urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            reply = _fail(40002, "Invalid request parameters", "Content-Length")
            req = _Request(self.command, url.path, [], self.headers, b"", self._client_gone)
        else:
            if length:
                self._quickack()
            body = self.rfile.read(length) if length else b""
            query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
            req = _Request(self.command, url.path, query, self.headers, body, self._client_gone)
            try:
                reply = self.sim._route(req)
            except Exception:  # a simulator bug must still produce an answer
                traceback.print_exc(file=sys.stderr)
                reply = _fail(50000, "Internal server error")
        if reply.action == "stall":
            self._stall()
        record: Dict[str, Any] = {
            "event": "request", "conn": self.conn_id, "method": self.command,
            "path": url.path, "username": req.username, "factor": req.factor,
            "status": reply.status if reply.action in ("send", "truncated") else None,
            "ts_start": ts_start, "ts_end": time.time()}
        if req.txid:
            record["txid"] = req.txid
        if req.pushinfo is not None:
            record["pushinfo"] = req.pushinfo  # what the push showed; not secret
        if reply.fault:
            record["fault"] = reply.fault
        self.sim._log(record)
        if reply.action in ("stall", "close"):
            self.close_connection = True
            return
        body = reply.body()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.ctype)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if reply.action == "truncated":  # promise the whole body, send half, hang up
            self.close_connection = True
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def _stall(self) -> None:
        """Hold the connection without answering until the client closes or we stop."""
        self.connection.settimeout(0.2)
        while not self.sim._stopping.is_set():
            try:
                if not self.connection.recv(4096):
                    return
            except (TimeoutError, socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError:
                return


class _TLSServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Threaded HTTPS server: the TLS handshake runs in each connection's own thread."""
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, sim: "Simulator", address: Tuple[str, int], ctx: ssl.SSLContext) -> None:
        self.sim = sim
        self.ctx = ctx
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip getfqdn(): no DNS look-ups
        self.server_name = "localhost"
        self.server_port = self.server_address[1]

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        conn_id = self.sim._accepted(request)
        t = threading.Thread(target=self._serve_connection, args=(request, client_address, conn_id),
                             name=f"duo-sim-conn-{conn_id}", daemon=True)
        self.sim._conn_threads[conn_id] = t
        t.start()

    def _serve_connection(self, raw: socket.socket, client_address: Any, conn_id: int) -> None:
        sim, sock = self.sim, raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(HANDSHAKE_TIMEOUT)
            sock = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            sim._conns[conn_id] = sock
            try:
                sock.do_handshake()
            except OSError as exc:
                sim._log({"event": "tls_error", "conn": conn_id,
                          "error": f"{type(exc).__name__}: {exc}", "ts": time.time()})
                return
            sim._log({"event": "tls", "conn": conn_id, "version": sock.version(),
                      "ts": time.time()})
            _Handler(sock, client_address, self, conn_id)
        except OSError:
            pass  # the client went away, or stop() closed the socket
        except Exception:
            traceback.print_exc(file=sys.stderr)
        finally:
            sim._conns.pop(conn_id, None)
            sim._conn_threads.pop(conn_id, None)
            try:
                sock.close()
            except OSError:
                pass


class Simulator:
    """A local Duo Auth API v2 server; see the module docstring for the scripted users."""

    host = "localhost"

    def __init__(self, state_dir: pathlib.Path, port: int = 0, approve_delay: float = 0.2,
                 long_poll: float = 10.0, clock_offset: float = 0.0, tls: str = "good",
                 check_fault: Optional[str] = None, admin_fault: Optional[str] = None,
                 push_timeout: float = 60.0, idle_timeout: float = IDLE_TIMEOUT) -> None:
        if tls not in ("good", "wronghost"):
            raise ValueError("tls must be 'good' or 'wronghost'")
        if check_fault is not None and not _CHECK_FAULT_RE.match(check_fault):
            raise ValueError(f"invalid check fault: {check_fault!r}")
        self.state_dir = pathlib.Path(state_dir).resolve()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.requested_port = port
        self.approve_delay = approve_delay
        self.long_poll = long_poll
        self.push_timeout = push_timeout
        self.clock_offset = clock_offset
        self.tls = tls
        self.check_fault = check_fault
        self.idle_timeout = idle_timeout
        ensure_pki(self.state_dir)
        self.ikey, self.skey = _load_keys(self.state_dir)
        self.ca_file = self.state_dir / "ca.pem"
        self.other_ca_file = self.state_dir / "other-ca.pem"
        self.config_path = self.state_dir / "duo.toml"
        self.request_log = self.state_dir / "requests.jsonl"
        self.port = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._log_lock = threading.Lock()
        self._logf: Optional[Any] = None
        self._server: Optional[_TLSServer] = None
        self._thread: Optional[threading.Thread] = None
        self._next_conn = 0
        self._conns: Dict[int, socket.socket] = {}
        self._conn_threads: Dict[int, threading.Thread] = {}
        self._txns: Dict[str, _Txn] = {}
        self._timers: List[threading.Timer] = []
        self._fault_counts: Dict[Tuple[str, str], int] = {}
        self._vp_txids: Dict[str, Dict[str, str]] = {}  # username -> {preauth txid: code}
        self._failures: Dict[str, int] = {}  # username -> wrong passcodes in a row
        self._locked: set = set()  # usernames Duo has locked out
        from .simulator_admin import AdminApi

        self.admin = AdminApi(self, admin_fault)
        from .simulator_v1 import RestV1

        self.rest_v1 = RestV1(self)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Bind, write the snippet and start serving; returns once the socket listens."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        leaf = "server" if self.tls == "good" else "wronghost"
        ctx.load_cert_chain(self.state_dir / f"{leaf}.pem", self.state_dir / f"{leaf}.key")
        fd = os.open(self.request_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._logf = os.fdopen(fd, "a", encoding="utf-8")
        self._server = _TLSServer(self, ("127.0.0.1", self.requested_port), ctx)
        self.port = self._server.server_address[1]
        snippet = (f"[duo]\nikey = {json.dumps(self.ikey)}\nskey = {json.dumps(self.skey)}\n"
                   f"host = {json.dumps(f'{self.host}:{self.port}')}\n"
                   f"ca_file = {json.dumps(str(self.ca_file))}\n")
        _write_private(self.config_path, snippet)
        self.admin.write_snippets(f"{self.host}:{self.port}", str(self.ca_file))
        _write_private(self.state_dir / "port", f"{self.port}\n", 0o644)
        self._log({"event": "start", "port": self.port, "ts": time.time()})
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="duo-sim-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, wake every waiter, close all connections and join the threads."""
        if self._server is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        for sock in list(self._conns.values()):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not SSLSocket.shutdown
            except (OSError, TypeError):
                pass
        deadline = time.monotonic() + 3.0
        for t in [self._thread, *list(self._conn_threads.values())]:
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        self._server = None
        with self._log_lock:
            if self._logf is not None:
                self._logf.close()
                self._logf = None

    def __enter__(self) -> "Simulator":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def now(self) -> float:
        """The simulator's clock (real time plus ``clock_offset``)."""
        return time.time() + self.clock_offset

    # -- bookkeeping --------------------------------------------------------------------
    def _log(self, record: Dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._log_lock:
            if self._logf is not None:
                self._logf.write(line)
                self._logf.flush()

    def _accepted(self, sock: socket.socket) -> int:
        with self._lock:
            self._next_conn += 1
            conn_id = self._next_conn
        self._conns[conn_id] = sock
        self._log({"event": "connection", "conn": conn_id, "ts": time.time()})
        return conn_id

    def _fired_faults(self, username: str, endpoint: str) -> List[Fault]:
        if endpoint == "check":
            m = _CHECK_FAULT_RE.match(self.check_fault or "")
            n = m.group("n") if m else None
            faults = [Fault(self.check_fault or "", m.group("kind"), int(n) if n else None,
                            "check")] if m else []
        else:
            faults = [f for f in parse_faults(username) if f.endpoint in (endpoint, "any")]
        fired = []
        with self._lock:
            for f in faults:
                key = (username, f.token)
                count = self._fault_counts.get(key, 0)
                self._fault_counts[key] = count + 1
                if f.limit is None or count < f.limit:
                    fired.append(f)
        return fired

    def _with_faults(self, username: str, endpoint: str,
                     produce: Callable[[], _Reply]) -> _Reply:
        fired = self._fired_faults(username, endpoint)
        for f in fired:
            if f.kind.startswith("slow"):
                self._stopping.wait(float(f.kind[4:]))
        tokens = ",".join(f.token for f in fired) or None
        for f in fired:
            reply = self._terminal_fault(f.kind)
            if reply is not None:
                reply.fault = tokens
                return reply
        reply = produce()
        if reply.status == 200 and reply.payload and isinstance(reply.payload.get("response"), dict):
            resp = reply.payload["response"]
            for f in fired:
                if f.kind.startswith("missing-"):
                    resp.pop(f.kind[len("missing-"):], None)
                elif f.kind.startswith("result-"):
                    resp["result"] = f.kind[len("result-"):]
                elif f.kind.startswith("status-"):
                    resp["status"] = f.kind[len("status-"):]
        reply.fault = tokens
        return reply

    @staticmethod
    def _terminal_fault(kind: str) -> Optional[_Reply]:
        if kind in ("500", "502", "503"):
            return _fail(int(kind) * 100, {"500": "Internal server error", "502": "Bad gateway",
                                           "503": "Service unavailable"}[kind])
        if kind == "401":
            return _fail(40103, "Invalid signature in request credentials")
        if kind.startswith("429"):
            reply = _fail(42901, "Too many requests")
            if kind.startswith("429ra"):
                reply.headers["Retry-After"] = kind[5:]
            elif kind.startswith("429xra"):
                reply.headers["X-Retry-After"] = kind[6:]
            return reply
        if kind in ("stall", "close"):
            return _Reply(action=kind, status=0)
        if kind == "malformed":
            return _Reply(200, raw=b'{"stat":"OK","response":')
        if kind == "truncated":
            return _Reply(200, {"stat": "OK", "response": {"result": "allow", "status": "allow",
                                                           "status_msg": "x" * 64}},
                          action="truncated")
        if kind == "html":
            return _Reply(200, raw=b"<html><body><h1>502 Bad Gateway</h1></body></html>\n",
                          ctype="text/html; charset=utf-8")
        return None

    # -- request handling ---------------------------------------------------------------
    def _route(self, req: _Request) -> _Reply:
        if req.path.startswith("/admin/"):
            return self.admin.route(req)
        if req.path.startswith("/rest/v1/"):
            return self.rest_v1.route(req)
        spec = ENDPOINTS.get(req.path)
        if spec is None:
            return _fail(40400, "Resource not found")
        method, name = spec
        if req.method != method:
            return _fail(40501, "Method not allowed")
        if name == "ping":
            return _ok({"time": int(self.now())})
        params: Dict[str, Any] = dict(req.query)
        if method == "POST" and _form_encoded(req):
            params = dict(_form_pairs(req))  # duo_unix 2.x and signature v2 clients
        elif method == "POST":
            try:
                params = json.loads(req.body.decode("utf-8") or "{}")
            except (UnicodeDecodeError, ValueError):
                params = None  # type: ignore[assignment]
        if isinstance(params, dict) and isinstance(params.get("username"), str):
            req.username = params["username"]
        error = self._verify(req)
        if error is not None:
            return error
        if not isinstance(params, dict):
            return _fail(40002, "Invalid request parameters", "body")
        if name == "check":
            return self._with_faults("", "check", lambda: _ok({"time": int(self.now())}))
        if name == "auth_status":
            return self._auth_status(req, params)
        user = self._user_of(params)
        if isinstance(user, _Reply):
            return user
        req.username = user
        if name == "preauth":
            return self._with_faults(user, "preauth", lambda: self._preauth(user, params))
        factor = params.get("factor")
        req.factor = factor if isinstance(factor, str) else None
        pushinfo = params.get("pushinfo")
        req.pushinfo = pushinfo if isinstance(pushinfo, str) else None
        return self._with_faults(user, "auth", lambda: self.admin.passcode_reply(params)
                                 or self._auth(req, user, params))

    def _verify(self, req: _Request, ikey_: Optional[str] = None, skey_: Optional[str] = None) -> Optional[_Reply]:
        """Check ``Date`` and the v5 signature exactly as Duo does (with the Auth API keys by default)."""
        own_ikey, own_skey = ikey_ or self.ikey, skey_ or self.skey
        auth = req.headers.get("Authorization")
        if not auth:
            return _fail(40101, "Missing request credentials")
        scheme, _, b64 = auth.strip().partition(" ")
        try:
            ikey, sep, sig = base64.b64decode(b64.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            sep, ikey, sig = "", "", ""
        if scheme.lower() != "basic" or not sep:
            return _fail(40101, "Missing request credentials", "Authorization")
        date = req.headers.get("Date") or req.headers.get("X-Duo-Date")
        if not date:
            return _fail(40104, "Missing request timestamp")
        try:
            when = _parsedate(date)
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            stamp = when.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return _fail(40104, "Missing request timestamp", "Date")
        if not hmac.compare_digest(ikey.encode("utf-8"), own_ikey.encode("utf-8")):
            return _fail(40102, "Invalid integration key in request credentials")
        if abs(stamp - self.now()) > DATE_TOLERANCE:
            return _fail(40105, "Request timestamp too far from server time",
                         f"{int(stamp - self.now())} s")
        host = (req.headers.get("Host") or self.host).strip()
        host = host[1:].split("]", 1)[0] if host.startswith("[") else host.split(":", 1)[0]
        duo_headers = [(k, v) for k, v in req.headers.items() if k.lower().startswith("x-duo-")]
        canonical = canonical_request(date, req.method, host, req.path, req.query, req.body,
                                      duo_headers)
        expected = [hmac.new(own_skey.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha512).hexdigest()]
        if req.method != "POST" or _form_encoded(req):
            # Signature v2 (duo_unix 2.x: HMAC-SHA512; duo_client sig_version=2: HMAC-SHA1):
            # date, method, host, path and the sorted parameters, no body hash.
            pairs = _form_pairs(req) if req.method == "POST" else req.query
            v2 = "\n".join([date, req.method.upper(), host.lower(), req.path, canon_params(pairs)]).encode("utf-8")
            expected += [hmac.new(own_skey.encode("utf-8"), v2, digest).hexdigest()
                         for digest in (hashlib.sha512, hashlib.sha1)]
        if not any(hmac.compare_digest(sig.lower().encode("utf-8"), e.encode("utf-8")) for e in expected):
            return _fail(40103, "Invalid signature in request credentials")
        return None

    @staticmethod
    def _user_of(params: Dict[str, Any]) -> Any:
        username, user_id = params.get("username"), params.get("user_id")
        if isinstance(username, str) and username:
            return username
        if isinstance(user_id, str) and user_id:
            if len(user_id) == 20 and user_id.startswith("DU"):
                return "iduser"
            return _fail(40002, "Invalid request parameters", "user_id")
        return _fail(40001, "Missing required request parameters", "username")

    def _preauth(self, user: str, params: Dict[str, Any]) -> _Reply:
        kind = scenario_of(user)
        if kind == "allow":
            return _ok({"result": "allow", "status_msg": "Allowing unknown user"})
        if kind == "deny":
            return _ok({"result": "deny",
                        "status_msg": "Your account is disabled. Contact your administrator."})
        if kind == "enroll":
            return _ok({"result": "enroll",
                        "status_msg": "Enroll an authentication device to proceed",
                        "enroll_portal_url": "https://localhost/portal?code="
                                             + secrets.token_hex(8)})
        with self._lock:
            locked = user in self._locked
        if locked:
            return _ok({"result": "deny", "status_msg": LOCKED_OUT[2]})
        resp: Dict[str, Any] = {"result": "auth", "status_msg": "Account is active",
                                "devices": devices_for(kind)}
        if kind in ("vpush", "vpushmobile") and str(params.get("client_supports_verified_push")) in ("1", "True"):
            txid, code = str(uuid.uuid4()), f"{secrets.randbelow(1000):03d}"
            with self._lock:
                self._vp_txids.setdefault(user, {})[txid] = code
            resp["txid"], resp["verification_code"] = txid, code
        return _ok(resp)

    @staticmethod
    def _pick(devices: List[Dict[str, Any]], device: Any, caps: Tuple[str, ...]) -> Any:
        """The device for a factor, or an error reply."""
        if not isinstance(device, str) or not device:
            return _fail(40001, "Missing required request parameters", "device")
        for cap in caps:
            for d in devices:
                if (device in ("auto", d["device"])) and cap in d.get("capabilities", []):
                    return d, cap
        return _fail(40002, "Invalid request parameters", "device")

    def _auth(self, req: _Request, user: str, params: Dict[str, Any]) -> _Reply:
        kind = scenario_of(user)
        if kind in ("allow", "deny", "enroll"):
            return _fail(40002, "Invalid request parameters", "username")
        factor = params.get("factor")
        if not isinstance(factor, str) or not factor:
            return _fail(40001, "Missing required request parameters", "factor")
        devices = devices_for(kind)
        if factor == "passcode":
            code = params.get("passcode")
            if not isinstance(code, str) or not code:
                return _fail(40001, "Missing required request parameters", "passcode")
            return _ok(dict(zip(("result", "status", "status_msg"), self._passcode(user, kind, code))))
        caps = {"push": ("push",), "auto": ("push", "phone"), "phone": ("phone",),
                "sms": ("sms",)}.get(factor)
        if caps is None:
            return _fail(40002, "Invalid request parameters", "factor")
        picked = self._pick(devices, params.get("device"), caps)
        if isinstance(picked, _Reply):
            return picked
        device, method = picked
        locked = self._lock_state(user, kind)
        if method == "sms":
            if locked or kind == "bypass":
                return _ok(dict(zip(("result", "status", "status_msg"), LOCKED_OUT if locked else BYPASS)))
            return _ok({"result": "deny", "status": "sent", "status_msg": "New SMS passcodes sent."})
        outcome: Optional[Tuple[str, str, str]] = SUCCESS
        delay = self.approve_delay
        if method == "push":
            waiting = ("waiting", "pushed", "Pushed a login request to your device...")
        else:
            waiting = ("waiting", "calling", f"Dialing {device.get('number', '')}...")
        news, mobile_code = False, None
        if locked:
            outcome, delay = LOCKED_OUT, 0.0
        elif kind in ("pushtimeout", "vpushmobile"):
            outcome, delay = TIMED_OUT, self._push_timeout_of(user)
        elif kind == "fraud":
            outcome = FRAUD
        elif kind == "pushdeny":
            outcome = DENIED
        elif kind == "bypass":
            outcome = BYPASS
        elif kind == "pushfail" and method == "push":
            waiting, news = PUSH_FAILED, True
        if kind in ("vpush", "vpushmobile") and method == "push":
            with self._lock:
                issued = self._vp_txids.get(user)
                code = issued.pop(params.get("txid"), None) if issued is not None else None
            if issued is not None:  # preauth said Verified Push: only its txid can be approved
                if code is None:
                    outcome, delay = DENIED, self.approve_delay
                else:
                    waiting = ("waiting", "pushed", f"Enter the verification code {code} in Duo Mobile.")
                    news = True
                    if kind == "vpushmobile":
                        mobile_code = code
        txn = _Txn(str(uuid.uuid4()), user, method, *waiting, news=news, mobile_code=mobile_code)
        req.txid = txn.txid
        with self._lock:
            self._txns[txn.txid] = txn
            if not self._stopping.is_set():
                timer = threading.Timer(delay, self._resolve, (txn, outcome))
                timer.daemon = True
                self._timers = [t for t in self._timers if t.is_alive()] + [timer]
                timer.start()
        if str(params.get("async", "0")) in ("1", "True", "true"):
            return _ok({"txid": txn.txid})
        view = self._wait(txn, None, req.client_gone)
        return _Reply(action="close", status=0) if view is None else _ok(view)

    def _passcode(self, user: str, kind: str, code: str) -> Tuple[str, str, str]:
        """The verdict on a passcode, counting wrong ones towards a lock-out."""
        if self._lock_state(user, kind):
            return LOCKED_OUT
        if kind == "bypass":
            return BYPASS
        valid = code in VALID_PASSCODES or bool(OTP_RE.match(code))
        limit = _LOCKOUT_RE.match(user)
        with self._lock:
            if valid:
                self._failures.pop(user, None)
                return SUCCESS
            failures = self._failures.get(user, 0) + 1
            self._failures[user] = failures
            if limit and failures >= int(limit.group(1)):
                self._locked.add(user)
                return LOCKED_OUT
        return WRONG_PASSCODE

    def _lock_state(self, user: str, kind: str) -> bool:
        """Whether ``user`` is locked out now; a ``lockedout`` user becomes so at the first ``/auth``."""
        with self._lock:
            if kind == "lockedout" and user not in self._locked:
                self._locked.add(user)
            return user in self._locked

    def _push_timeout_of(self, user: str) -> float:
        match = _PUSH_TIMEOUT_RE.match(user)
        return float(match.group(1)) if match else self.push_timeout

    def _check_mobile(self, txn: _Txn) -> None:
        """vpushmobile: the code "entered in Duo Mobile" (a file) approves or denies the push."""
        path = self.state_dir / "duo-mobile" / txn.username
        try:
            entered = path.read_text(encoding="utf-8").strip()
        except OSError:
            return
        path.unlink(missing_ok=True)
        self._resolve(txn, SUCCESS if entered == txn.mobile_code else DENIED)

    def _resolve(self, txn: _Txn, outcome: Tuple[str, str, str]) -> None:
        with self._cond:
            if txn.result != "waiting":
                return  # resolved already (approved in Duo Mobile, or timed out)
            txn.result, txn.status, txn.status_msg = outcome
            txn.news = True
            self._log({"event": "push_resolved", "txid": txn.txid, "result": txn.result,
                       "status": txn.status, "ts": time.time()})
            self._cond.notify_all()

    def _wait(self, txn: _Txn, timeout: Optional[float],
              client_gone: Callable[[], bool]) -> Optional[Dict[str, str]]:
        """Block on the condition until ``txn`` resolves, ``timeout`` passes or we stop.

        Without a timeout (sync ``/auth``) it also gives up when the client goes away;
        returns None then, or when stopping.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            # A sync /auth waits for the verdict; a long poll also answers news at once.
            while txn.result == "waiting" and not (txn.news and deadline is not None):
                if self._stopping.is_set():
                    return None if deadline is None else txn.view()
                if txn.mobile_code is not None:
                    self._cond.release()
                    try:
                        self._check_mobile(txn)
                    finally:
                        self._cond.acquire()
                    if txn.result != "waiting":
                        break
                if deadline is None:
                    self._cond.wait(0.1 if txn.mobile_code else 0.25)
                    if client_gone():
                        return None
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1) if txn.mobile_code else remaining)
            return txn.view()

    def _auth_status(self, req: _Request, params: Dict[str, Any]) -> _Reply:
        txid = params.get("txid")
        if not txid:
            return _fail(40001, "Missing required request parameters", "txid")
        with self._lock:
            txn = self._txns.get(txid)
        if txn is None:
            return _fail(40002, "Invalid request parameters", "txid")
        req.username, req.factor, req.txid = txn.username, txn.factor, txn.txid
        return self._with_faults(txn.username, "auth_status",
                                 lambda: _ok(self._wait(txn, self.long_poll, req.client_gone)
                                             or txn.view()))


def main(argv: Optional[List[str]] = None) -> int:
    """``pam-duo-py simulate``: run until SIGTERM/SIGINT, then exit 0."""
    ap = argparse.ArgumentParser(prog="pam-duo-py simulate",
                                 description="Run a local Duo Auth API v2 simulator.")
    ap.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    ap.add_argument("--state-dir", help="directory for the CA, keys, snippet and request log "
                                        "(default: a new private temporary directory)")
    ap.add_argument("--approve-delay", type=float, default=0.2, metavar="S",
                    help="seconds before a scripted push or call is answered")
    ap.add_argument("--long-poll", type=float, default=10.0, metavar="S",
                    help="longest auth_status wait before answering 'waiting'")
    ap.add_argument("--push-timeout", type=float, default=60.0, metavar="S",
                    help="seconds before an unanswered push or call ends deny/timeout (Duo: about 60)")
    ap.add_argument("--clock-offset", type=float, default=0.0, metavar="S",
                    help="seconds the simulator's clock is ahead of real time")
    ap.add_argument("--tls", choices=("good", "wronghost"), default="good",
                    help="wronghost: serve a certificate for DNS:wrong.example")
    ap.add_argument("--check-fault", metavar="FAULT", help="fault for /auth/v2/check, e.g. 500x1")
    ap.add_argument("--admin-fault", metavar="FAULT", help="fault for the first Admin API requests, e.g. 429ra1x1")
    ap.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT, metavar="S",
                    help=f"close a keep-alive connection idle this long (default {IDLE_TIMEOUT:g})")
    args = ap.parse_args(argv)
    state = pathlib.Path(args.state_dir) if args.state_dir else \
        pathlib.Path(tempfile.mkdtemp(prefix="pam-duo-sim-"))
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sim = Simulator(state, port=args.port, approve_delay=args.approve_delay,
                        long_poll=args.long_poll, clock_offset=args.clock_offset,
                        push_timeout=args.push_timeout,
                        tls=args.tls, check_fault=args.check_fault, admin_fault=args.admin_fault,
                        idle_timeout=args.idle_timeout)
        sim.start()
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"pam-duo-py simulate: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"config: {sim.config_path}", flush=True)
        print(f"listening: https://{sim.host}:{sim.port}", flush=True)
        print(f"admin config: {sim.admin.config_path}", flush=True)
        while not done.wait(0.5):
            pass
    except BrokenPipeError:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
