"""The broker's wire protocol: frames, message types, limits (docs/behaviour.md §7).

The broker (:mod:`pam_duo_py.broker_server`) holds the keys so that
``pam-duo-login``, running as the logged-in user, never can read them; its
clients (:mod:`pam_duo_py.broker_client`) are that wrapper and the PAM module.
This module is on every login's path through the broker: it imports ``_socket``,
not ``socket`` (whose enum classes cost milliseconds per login), and reads and
writes JSON with the C parts of the ``json`` package that ``json.loads`` and
``json.dumps`` themselves use, without importing ``json`` (its regular
expressions cost milliseconds too).

Wire protocol, over a Unix stream socket: every frame is a 4-byte big-endian
length followed by that many bytes of UTF-8 JSON (one object, at most 64 KiB).

client -> broker, first frame::

    {"type": "login", "user": "alice", "service": "sshd", "rhost": "203.0.113.5",
     "tty": "/dev/pts/3", "interactive": true, "command": "ls", "env_passcode": null,
     "password": null, "config": "/etc/pam_duo_py/pam_duo.toml", "caller_uid": 1000}

(``caller_uid``: the real uid of the program that runs the PAM stack, taken from root callers
only; under su it is the user who ran su, who does Duo for su to root.)

broker -> client, first answer, one of::

    {"type": "accepted"}                        the broker took the login; nothing was sent to Duo yet
    {"type": "busy", "message": "..."}          too many concurrent logins for this user; then it hangs up
    {"type": "result", ...}                     a refusal before the login started (below)

A PAM client that gets no first answer within ``ACK_TIMEOUT`` (a stopped or
overloaded broker), ``busy`` (``Result.BUSY`` to the caller), ``OTHER_CONFIG``, or
a connection closed before ``accepted``, decides the login in-process: nothing was
sent to Duo. After ``accepted``, a lost broker is a refusal (a push may be on its
way). ``pam-duo-login`` has no in-process fallback: for it all of these are a refusal.

After ``accepted``, any number of::

    {"type": "ask", "text": "..."}     client answers {"type": "answer", "text": "..."} or {"type": "eof"}
    {"type": "show", "text": "..."}    client answers {"type": "ack"}
    {"type": "alert", "text": "..."}   client answers {"type": "ack"}

and last ``{"type": "result", "result": "SUCCESS", "message": "..."}`` (a name of
:class:`~pam_duo_py.result.Result`), after which the broker closes the connection.
``message`` is empty except when the broker itself refuses, and then it is text for
people (clients decide on ``result`` alone): a first frame that is not a valid
frame, or does not arrive whole within ``FIRST_FRAME_TIMEOUT``, gets ``SERVICE_ERR``
/ ``"bad request"``; a first frame of another type ``SERVICE_ERR`` / ``"expected a
login request"``; a root caller naming a config file the broker does not serve
(:mod:`pam_duo_py.broker_configs`) ``OTHER_CONFIG`` (the PAM module then decides
in-process); a config that does not load, or changed on disk and no longer loads,
``BAD_CONFIG``.

Trust (:mod:`pam_duo_py.broker_trust`): the caller's uid comes from the kernel
(``SO_PEERCRED``). Root (the PAM module inside sshd or sudo) may name any user,
address, service, password and config. Anyone else is authenticated as their own
user only, under the service ``pam-duo-login``; the address they send is logged
as claimed and never sent to Duo; ``password`` and ``config`` are ignored.

Limits, so that no caller can make the broker refuse or delay other users:
concurrent logins are capped per target user for root callers (``MAX_PER_USER``)
and per uid for others (``MAX_PER_UID``); open connections are capped in all
(``MAX_CONNECTIONS``) and per non-root uid (``MAX_CONNECTIONS_PER_UID``); over a
cap a connection is shed (closed at once). Running out of file descriptors or
threads sheds the newest connection and never ends the broker.

Before each login the broker (:mod:`pam_duo_py.broker_server`) compares the identity of its config file and of
every file the config names with what it loaded (see :mod:`pam_duo_py.watch`)
and reloads on a change.
"""

import _json
import _socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs milliseconds per login
    from typing import Any

from .result import Result

MAX_FRAME = 64 * 1024
FIRST_FRAME_TIMEOUT = 5.0  # for the whole first frame: a client that trickles bytes is cut off too
ANSWER_TIMEOUT = 180.0  # for each whole answer frame
ACK_TIMEOUT = 2.0  # a PAM client waits this long for "accepted", then decides in-process
WRAPPER_ACK_TIMEOUT = 10.0  # pam-duo-login has no fallback: it waits longer, then refuses
MAX_PER_UID = 4  # concurrent logins of one non-root caller
# Concurrent logins for one target user from root callers; more go in-process. Large enough that
# a login storm on one account stays with the broker (in-process costs 2-3x the CPU and a TLS
# handshake each), small enough that one user name holds at most an eighth of MAX_CONNECTIONS.
MAX_PER_USER = 64
MAX_CONNECTIONS = 512  # open client connections in all (further bounded by RLIMIT_NOFILE)
MAX_CONNECTIONS_PER_UID = 2 * MAX_PER_UID  # of one non-root uid, requests not yet read included
WRAPPER_SERVICE = "pam-duo-login"
# The text that goes with the broker's own answers, for people (pam-duo-login shows it).
MESSAGES = {
    Result.BUSY: "too many concurrent logins for this user",
    Result.OTHER_CONFIG: "the broker serves another config",  # it does not serve the one named
    Result.BAD_CONFIG: "configuration error (see the system log)",
}
_HEADER_SIZE = 4  # the frame length, big-endian (int.to_bytes: no struct module on the login path)
_PEERCRED_SIZE = 12  # struct ucred: pid, uid, gid, each 32 bits in the host's byte order


class _Decoding:
    """What the C scanner reads from its context: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def _unserialisable(value: object) -> None:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_scan = _json.make_scanner(_Decoding())
# json.dumps(value, ensure_ascii=True, separators=(",", ":")) without the check for cycles.
_encode = _json.make_encoder(None, _unserialisable, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
_WHITESPACE = " \t\n\r"


def dumps(value: "Any") -> str:
    return "".join(_encode(value, 0))


def loads(text: str) -> "Any":
    """``json.loads(text)``. A document it refuses is handed to ``json.loads`` itself for the error."""
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
        if not text[end:].strip(_WHITESPACE):
            return value
    except Exception:  # StopIteration or, with json.decoder not imported, SystemError
        pass
    import json

    return json.loads(text)


class ProtocolError(Exception):
    """A frame that is not what the protocol allows, or a peer that went away.

    Not one of :mod:`pam_duo_py.errors`: a login through the broker does not import that tree.
    """


class NotAccepted(ProtocolError):
    """The broker did not accept the login (no answer in time, or it hung up): nothing went to Duo."""


def send_frame(sock: "Any", message: "dict[str, Any]") -> None:
    data = dumps(message).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError("frame too large")
    try:
        sock.sendall(len(data).to_bytes(_HEADER_SIZE, "big") + data)
    except OSError as exc:
        raise ProtocolError(f"peer went away: {exc.strerror or exc}") from None


def _recv_exact(sock: "Any", size: int, deadline: float | None = None) -> bytes:
    chunks, left = [], size
    while left:
        try:
            if deadline is not None:
                # Past the deadline, what already arrived is still taken (a reader that was not
                # scheduled in time must not call an answer that is waiting for it missing).
                sock.settimeout(max(deadline - time.monotonic(), 0.0))
            chunk = sock.recv(min(left, 65536))
        except BlockingIOError:
            raise ProtocolError("peer went away: timed out") from None
        except OSError as exc:
            raise ProtocolError(f"peer went away: {exc.strerror or exc}") from None
        if not chunk:
            raise ProtocolError("peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: "Any", deadline: float | None = None) -> "dict[str, Any]":
    """One frame. ``deadline`` (``time.monotonic()``) bounds the whole frame, not each read."""
    size = int.from_bytes(_recv_exact(sock, _HEADER_SIZE, deadline), "big")
    if size > MAX_FRAME:
        raise ProtocolError("frame too large")
    try:
        message = loads(_recv_exact(sock, size, deadline).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("frame is not a typed object")
    return message


def peer_uid(sock: "Any") -> int:
    """The uid of the process at the other end of a Unix socket, from the kernel."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED_SIZE)
    return int.from_bytes(creds[4:8], sys.byteorder)
