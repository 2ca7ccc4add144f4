"""Who may claim what in a login request sent to the broker: a pure function, no I/O of its own.

The caller's uid comes from the kernel (``SO_PEERCRED``), never from the frame.
Root (the PAM module inside sshd, sudo, su) may name any user, service, address,
password and config file (:func:`named_config`), and the real uid of the program it runs in. Anyone else
(``pam-duo-login``) is authenticated as their own user only, under the service
``pam-duo-login``; the address they send is logged as claimed and never sent to
Duo; a password or config they send is ignored.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

from .broker_protocol import WRAPPER_SERVICE
from .login import LoginRequest, profile
from .record import Record
from .result import Result


class Refusal(Record):
    """The broker's answer to a request it does not take; ``note`` is a line for the system log."""

    result: Result
    message: str = ""
    note: str | None = None


def _text(message: dict[str, Any], key: str, limit: int = 1024) -> str | None:
    value = message.get(key)
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    return value[:limit]


def _caller_uid(message: dict[str, Any]) -> int:
    """The real uid of the host program (su runs as root for its caller), as a root client reports it."""
    value = message.get("caller_uid")
    return value if type(value) is int and 0 <= value < 2**32 else 0


def named_config(uid: int, message: dict[str, Any]) -> str | None:
    """The config file the login is to be decided with: root's choice, or None (the broker's own)."""
    return _text(message, "config") if uid == 0 else None


def login_request(uid: int, message: dict[str, Any], lookup_uid: Callable[[int], Any]) -> LoginRequest | Refusal:
    """The login the first frame ``message`` asks for, as the peer ``uid`` may ask for it, or why not.

    ``lookup_uid(uid)`` returns the passwd entry (with ``.name``) of a uid, or None.
    """
    if message.get("type") != "login":
        return Refusal(Result.SERVICE_ERR, "expected a login request")
    user = _text(message, "user", 256)
    if user is None:
        return Refusal(Result.USER_UNKNOWN, "no user named")
    interactive = message.get("interactive") if isinstance(message.get("interactive"), bool) else None
    if uid == 0:
        return LoginRequest(
            user=user, service=_text(message, "service", 64) or "", rhost=_text(message, "rhost", 256),
            tty=_text(message, "tty", 256), interactive=interactive,
            host=profile(_text(message, "service", 64) or "", _text(message, "command", 4096)),
            caller_uid=_caller_uid(message), password=_text(message, "password"),
            env_passcode=_text(message, "env_passcode", 64),
            trusted_address=True,
        )
    caller = lookup_uid(uid)
    if caller is None or caller.name != user:
        return Refusal(Result.AUTH_ERR, "you can only authenticate as yourself",
                       note=f"broker: uid {uid} asked to log in as another user; refused")
    return LoginRequest(
        user=caller.name, service=WRAPPER_SERVICE, rhost=_text(message, "rhost", 256),
        tty=_text(message, "tty", 256), interactive=interactive,
        host=profile(WRAPPER_SERVICE, _text(message, "command", 4096)),
        caller_uid=uid, env_passcode=_text(message, "env_passcode", 64), trusted_address=False,
    )
