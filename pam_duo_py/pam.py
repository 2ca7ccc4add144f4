"""The pam_python entry points.

Rules that keep the host process (sshd, sudo, su, login) alive and safe:

* nothing escapes: every entry point catches ``BaseException`` and answers
  ``PAM_SERVICE_ERR``;
* pam_python objects (``pamh``, messages, responses) are never formatted with
  ``repr()``/``str()``: that crashes the host. Only plain strings read from
  them are used;
* results are the ``pamh.PAM_*`` integers, never ``True``/``None``.

Module arguments: ``conf=PATH`` and ``debug``; anything else is a
configuration error.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs milliseconds per login
    from typing import Any

from .errors import ConversationError
from .logline import LOG_ERR, send_syslog
from .paths import DEFAULT_CONFIG, DEFAULT_SOCKET

# Only what a login through the broker needs is imported up front: the config
# parser, the Duo client and the engine are imported when the login is decided
# here, in-process.

SERVICE_ERR_FALLBACK = 3
PAM_SILENT = 0x8000


def _code(pamh: Any, name: str) -> int:
    try:
        value = getattr(pamh, "PAM_" + name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    except BaseException:
        pass
    return SERVICE_ERR_FALLBACK


def _item(pamh: Any, name: str) -> str | None:
    """A PAM item as a plain str, or None (unset, or not valid UTF-8)."""
    try:
        value = getattr(pamh, name)
    except UnicodeDecodeError:
        return None
    return value if isinstance(value, str) else None


class PamPrompter:
    """The PAM conversation, as the engine's Prompter.

    Under sshd, info messages are held back until the next prompt, so text the
    user must read now (``alert``) rides in an echoed prompt of its own.
    ``PAM_SILENT`` (sudo always sets it) hides status lines (``show``), never alerts.
    """

    def __init__(self, pamh: Any, *, silent: bool, holds_info: bool) -> None:
        self.pamh = pamh
        self.silent = silent
        self.holds_info = holds_info

    def _converse(self, style: int, text: str) -> str | None:
        pamh = self.pamh
        try:
            response = pamh.conversation(pamh.Message(style, text))
            answer = response.resp
        except (pamh.exception, UnicodeError):  # UnicodeError: the answer is not valid UTF-8
            raise ConversationError("conversation failed") from None
        return answer if isinstance(answer, str) else None

    def ask(self, text: str) -> str:
        answer = self._converse(self.pamh.PAM_PROMPT_ECHO_ON, text)
        if answer is None:
            raise ConversationError("no answer")
        return answer

    def show(self, text: str) -> None:
        if self.silent or not text:
            return
        try:
            self._converse(self.pamh.PAM_TEXT_INFO, text)
        except ConversationError:
            pass

    def alert(self, text: str) -> None:
        if self.holds_info:
            try:
                self._converse(self.pamh.PAM_PROMPT_ECHO_ON, text + "\nPress Enter to continue.")
            except ConversationError:
                pass
            return
        # Not even PAM_SILENT hides an alert: sudo always sets that flag, and without the text
        # the user cannot act (Verified Push code, enrollment URL) or learn why they were refused.
        try:
            self._converse(self.pamh.PAM_ERROR_MSG, text)
        except ConversationError:
            pass


def parse_arguments(argv: list[str]) -> tuple[str, bool, list[str]]:
    """(config path, debug, problems) from the PAM line's arguments after the file name."""
    conf, debug, problems = DEFAULT_CONFIG, False, []
    for arg in argv:
        if arg == "debug":
            debug = True
        elif arg.startswith("conf=") and len(arg) > 5:
            conf = arg[5:]
        else:
            problems.append(f"invalid module argument {arg!r}")
    return conf, debug, problems


def _log_error(prefix: str, text: str, limit: int = 1000) -> None:
    from .text import for_log

    send_syslog(LOG_ERR, prefix + for_log(text, limit))


def _authenticate(pamh: Any, flags: int, argv: list[str]) -> int:
    args = [a for a in argv[1:] if isinstance(a, str)] if isinstance(argv, (list, tuple)) else []
    conf, debug, problems = parse_arguments(args)
    if problems:
        for problem in problems:
            _log_error("configuration error: PAM line: ", problem)
        return _code(pamh, "SERVICE_ERR")

    try:
        user = pamh.get_user(None)
    except UnicodeDecodeError:
        return _code(pamh, "USER_UNKNOWN")
    except pamh.exception:
        return _code(pamh, "USER_UNKNOWN")
    if not isinstance(user, str) or not user:
        return _code(pamh, "USER_UNKNOWN")

    service = _item(pamh, "service") or ""
    silent = bool(flags & PAM_SILENT) if isinstance(flags, int) else False
    from .hosts import command_for, profile

    host = profile(service, command_for(service))
    fields = {
        "user": user,
        "service": service,
        "rhost": _item(pamh, "rhost"),
        "tty": _item(pamh, "tty"),
        "password": _item(pamh, "authtok"),
    }
    ui = PamPrompter(pamh, silent=silent, holds_info=host.holds_info_messages)
    as_root = os.geteuid() == 0
    if as_root and os.path.exists(DEFAULT_SOCKET):
        # The broker checks that it serves this same config file, and refuses otherwise.
        result = _via_broker(DEFAULT_SOCKET, conf, dict(fields, command=host.command), ui)
        if result is not None:
            return _code(pamh, result)

    from .config import load_config
    from .errors import ConfigError

    try:
        config = load_config(conf)
    except ConfigError as exc:
        for problem in exc.problems:
            _log_error("configuration error: ", problem)
        return _code(pamh, "SERVICE_ERR")

    socket_path = config.broker.socket
    if as_root and socket_path != DEFAULT_SOCKET and os.path.exists(socket_path):
        result = _via_broker(socket_path, conf, dict(fields, command=host.command), ui)
        if result is not None:
            return _code(pamh, result)

    from .events import EventSink
    from .login import LoginRequest, authenticate

    request = LoginRequest(caller_uid=os.getuid(), host=host, **fields)
    sink = EventSink(config.log.audit_file, debug=debug)
    outcome = authenticate(config, request, ui, sink=sink)
    return _code(pamh, outcome.result.value)


def _via_broker(socket_path: str, conf: str, fields: dict, ui: PamPrompter) -> str | None:
    """Hand the login to the broker. None: the broker did not take it, so decide in-process.

    Until the broker accepts the login (within 2 s: a stopped or overloaded broker
    does not), or when it answers "busy", nothing has gone to Duo and the login is
    decided here. Once accepted, a broken connection is a refusal, never a second
    try in-process (a push may already be on its way).
    """
    from .broker import NotAccepted, ProtocolError, connect, converse
    from .result import Result

    try:
        sock = connect(socket_path)
    except ProtocolError:
        return None
    try:
        with sock:
            result, message = converse(sock, dict(fields, config=os.path.abspath(conf), caller_uid=os.getuid()), ui)
    except NotAccepted:
        return None
    except (ProtocolError, OSError):
        send_syslog(LOG_ERR, "lost the broker during a login; refused")
        return "AUTH_ERR"
    if result in (Result.BUSY, Result.OTHER_CONFIG):
        return None  # busy, or it serves another config: decide here, with ours (nothing was sent to Duo)
    return result.pam_name


def pam_sm_authenticate(pamh: Any, flags: int, argv: list[str]) -> int:
    try:
        return _authenticate(pamh, flags, argv)
    except BaseException:
        try:
            import traceback

            _log_error("internal error: ", traceback.format_exc(limit=8), 3000)
        except BaseException:
            pass
        return _code(pamh, "SERVICE_ERR")


def pam_sm_setcred(pamh: Any, flags: int, argv: list[str]) -> int:
    return _code(pamh, "SUCCESS")


def _ignore(pamh: Any, flags: int, argv: list[str]) -> int:
    return _code(pamh, "IGNORE")


pam_sm_acct_mgmt = _ignore
pam_sm_open_session = _ignore
pam_sm_close_session = _ignore
pam_sm_chauthtok = _ignore
