"""The broker's client side: connect, check, converse (``pam-duo-login`` and the PAM module).

A PAM login through the broker imports this, :mod:`~pam_duo_py.broker_protocol`,
:mod:`~pam_duo_py.result` and :mod:`~pam_duo_py.files` (docs/architecture.md, "the thin
path"): no server code, no config parser, no Duo client, not even the exception tree
(:class:`~pam_duo_py.errors.ConversationError` is imported once a prompter raised it). It
uses ``_socket`` rather than ``socket`` for the same reason.
"""

import _socket
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs milliseconds per login
    from typing import Any

from .broker_protocol import ACK_TIMEOUT, NotAccepted, ProtocolError, peer_uid, recv_frame, send_frame
from .files import socket_directory_problem
from .result import Result

RETRY_PAUSE = 0.01  # seconds between tries while the broker's listen queue is full


class BrokerSocket(_socket.socket):
    """A connected stream socket that closes at the end of a ``with`` block (``socket.socket`` without its imports)."""

    __slots__ = ()

    def __enter__(self) -> "BrokerSocket":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_socket_dir(path: str) -> None:
    """The socket's directory must be root's and not writable by others, or a user could stand in for the broker."""
    problem = socket_directory_problem(path)
    if problem:
        raise ProtocolError(problem)


def connect(path: str, timeout: float = ACK_TIMEOUT, *, pause: "Any" = time.sleep) -> BrokerSocket:
    """Connect to the broker, checking that the socket directory and the peer are root's.

    A full listen queue (a burst of connections, or one user's flood the broker is
    shedding) answers ``EAGAIN`` at once on a socket with a timeout: try again, every
    ``RETRY_PAUSE`` seconds, until ``timeout`` has passed.
    """
    try:
        check_socket_dir(path)
    except OSError as exc:
        raise ProtocolError(f"broker socket {path}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + timeout
    sock = BrokerSocket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        while True:
            try:
                sock.connect(path)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                pause(RETRY_PAUSE)
    except OSError as exc:
        sock.close()
        raise ProtocolError(f"broker not reachable at {path}: {exc.strerror or exc}") from None
    if peer_uid(sock) != 0:
        sock.close()
        raise ProtocolError(f"broker at {path} is not running as root")
    sock.settimeout(None)
    return sock


def converse(sock: "Any", request: "dict[str, Any]", ui: "Any", *, ack_timeout: float = ACK_TIMEOUT,
             frame_timeout: float = 700.0) -> tuple[Result, str]:
    """Send a login request and relay the broker's prompts to ``ui`` (a Prompter). Returns (result, message).

    Until the broker accepts the login, any failure raises :class:`NotAccepted`
    (within ``ack_timeout``); a "busy" answer returns ``(Result.BUSY, message)``. After
    that, ``frame_timeout`` bounds the wait for each broker message; it exceeds
    the longest push wait the config allows, so only a hung broker hits it.
    """
    accepted = False
    try:
        sock.settimeout(ack_timeout)
        send_frame(sock, dict(request, type="login"))
        message = recv_frame(sock, deadline=time.monotonic() + ack_timeout)
    except ProtocolError as exc:
        raise NotAccepted(str(exc)) from None
    while True:
        kind = message["type"]
        text = message.get("text") if isinstance(message.get("text"), str) else ""
        if kind == "result":
            result = message.get("result")
            if not isinstance(result, str):
                return Result.SERVICE_ERR, str(message.get("message") or "")
            named = Result.from_wire(result) or Result.AUTH_ERR
            if accepted and named.declined:  # too late to decide elsewhere: Duo may have been asked
                named = Result.AUTH_ERR
            return named, str(message.get("message") or "")
        if kind == "busy" and not accepted:
            return Result.BUSY, str(message.get("message") or "")
        if kind == "accepted" and not accepted:
            accepted = True
        elif kind == "ask":
            send_frame(sock, _answer(ui, text))
        elif kind in ("show", "alert"):
            getattr(ui, kind)(text)
            send_frame(sock, {"type": "ack"})
        else:
            raise ProtocolError(f"unexpected frame {kind[:20]!r}")
        accepted = True  # a prompt also means the broker took the login
        sock.settimeout(frame_timeout)
        message = recv_frame(sock)


def _answer(ui: "Any", text: str) -> dict:
    """The user's answer to a prompt as a frame: ``eof`` when they could not be asked."""
    try:
        return {"type": "answer", "text": ui.ask(text)}
    except Exception as exc:
        # ConversationError is imported here, once a prompter raised: a prompter that raises it has
        # imported it, and a login through the broker that is never refused an answer does not.
        from .errors import ConversationError

        if isinstance(exc, ConversationError):
            return {"type": "eof"}
        raise


class BrokerBackend:
    """A PAM login decided by the broker at ``socket_path``, which must serve ``config_path``.

    Until the broker accepts the login (within ``ACK_TIMEOUT``: a stopped or
    overloaded broker does not), or when it answers busy or serves another config,
    nothing has gone to Duo: the result is one that is :attr:`~Result.declined`.
    Once accepted, a broken connection is a refusal, never a second try elsewhere
    (a push may already be on its way).
    """

    def __init__(self, socket_path: str, config_path: str, *, connector: "Any" = connect) -> None:
        self.socket_path = socket_path
        self.config_path = config_path
        self._connect = connector

    def frame(self, login: dict) -> dict:
        """The login request as the broker reads it: the PAM module's description of the login
        (:func:`pam_duo_py.pam.pam_login`; as root it names everything) and the config file."""
        return dict(login, config=os.path.abspath(self.config_path))

    def authenticate(self, login: dict, ui: "Any") -> Result:
        try:
            sock = self._connect(self.socket_path)
        except ProtocolError:
            return Result.NOT_ACCEPTED
        try:
            with sock:
                result, _message = converse(sock, self.frame(login), ui)
        except NotAccepted:
            return Result.NOT_ACCEPTED
        except (ProtocolError, OSError):
            from .events import EventSink

            EventSink().error("lost the broker during a login; refused")
            return Result.AUTH_ERR
        return result
