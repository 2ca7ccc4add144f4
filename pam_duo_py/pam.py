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
import os

from .hosts import command_for, holds_info_messages
from .paths import DEFAULT_CONFIG, DEFAULT_SOCKET
from .result import Result

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs milliseconds per login
    from typing import Any, Callable

    from .login import InProcess

# Only what a login through the broker needs is imported up front (docs/architecture.md,
# "the thin path"): the login request, the config parser, the Duo client and the engine
# are imported when the login is decided here, in-process (see login.py).

SERVICE_ERR_FALLBACK = 3
PAM_SILENT = 0x8000


def _code(pamh: "Any", name: str) -> int:
    try:
        value = getattr(pamh, "PAM_" + name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    except BaseException:
        pass
    return SERVICE_ERR_FALLBACK


def _item(pamh: "Any", name: str) -> str | None:
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

    def __init__(self, pamh: "Any", *, silent: bool, holds_info: bool) -> None:
        self.pamh = pamh
        self.silent = silent
        self.holds_info = holds_info

    def _converse(self, style: int, text: str) -> "str | None | bool":
        """The answer (None when the host gave no text), or False when the conversation failed."""
        pamh = self.pamh
        try:
            response = pamh.conversation(pamh.Message(style, text))
            answer = response.resp
        except (pamh.exception, UnicodeError):  # UnicodeError: the answer is not valid UTF-8
            return False
        return answer if isinstance(answer, str) else None

    def ask(self, text: str) -> str:
        answer = self._converse(self.pamh.PAM_PROMPT_ECHO_ON, text)
        if isinstance(answer, str):
            return answer
        from .errors import ConversationError  # only now: a login through the broker does not import the tree

        raise ConversationError("conversation failed" if answer is False else "no answer")

    def show(self, text: str) -> None:
        if self.silent or not text:
            return
        self._converse(self.pamh.PAM_TEXT_INFO, text)  # a status line the host could not show is not a failure

    def alert(self, text: str) -> None:
        if self.holds_info:
            self._converse(self.pamh.PAM_PROMPT_ECHO_ON, text + "\nPress Enter to continue.")
            return
        # Not even PAM_SILENT hides an alert: sudo always sets that flag, and without the text
        # the user cannot act (Verified Push code, enrollment URL) or learn why they were refused.
        self._converse(self.pamh.PAM_ERROR_MSG, text)


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


def _sink() -> "Any":
    """Where a configuration or internal error goes (the log; imported only then)."""
    from .events import EventSink

    return EventSink()


class BrokerFirst:
    """As root: the broker at ``DEFAULT_SOCKET``, then the one the config names, then in-process.

    A broker that does not take the login (none there, no answer within 2 s, busy,
    serving another config) leaves it to the next; nothing went to Duo then.
    ``local()`` makes the in-process backend, only when it is needed: a login the broker
    takes never imports it (:mod:`pam_duo_py.login`).
    """

    def __init__(self, config_path: str, local: "Callable[[], InProcess]", default_socket: str = DEFAULT_SOCKET,
                 broker: "Any" = None) -> None:
        self.config_path = config_path
        self._local_factory = local
        self._local: "InProcess | None" = None
        self.default_socket = default_socket
        self._backend_for = broker  # (socket path, config path) -> backend; BrokerBackend when None

    @property
    def local(self) -> "InProcess":
        if self._local is None:
            self._local = self._local_factory()
        return self._local

    def _broker(self, socket_path: str, login: dict, ui: "Any") -> Result | None:
        if not os.path.exists(socket_path):
            return None
        if self._backend_for is None:
            from .broker_client import BrokerBackend

            self._backend_for = BrokerBackend
        result = self._backend_for(socket_path, self.config_path).authenticate(login, ui)
        return None if result.declined else result

    def authenticate(self, login: dict, ui: "Any") -> Result:
        # The broker serves this config file too when it can (it loads it), and declines otherwise.
        result = self._broker(self.default_socket, login, ui)
        if result is not None:
            return result
        config = self.local.config()
        if config is None:
            return Result.SERVICE_ERR
        if config.broker.socket != self.default_socket:
            result = self._broker(config.broker.socket, login, ui)
        return self.local.authenticate(login, ui) if result is None else result


def choose_backend(config_path: str, debug: bool) -> "Any":
    """Where this login is decided: in-process, or (as root) first by a broker."""

    def local() -> "InProcess":
        from .login import InProcess

        return InProcess(config_path, debug=debug)

    return BrokerFirst(config_path, local, DEFAULT_SOCKET) if os.geteuid() == 0 else local()


def pam_login(pamh: "Any") -> dict | None:
    """What PAM tells us about this login, keyed as the broker's login frame names it
    (:mod:`pam_duo_py.broker_protocol`); None when there is no usable user name.

    A plain dict: a login through the broker sends it as it is, and only a login decided
    here makes a :class:`~pam_duo_py.login.LoginRequest` of it (:func:`pam_duo_py.login.pam_request`).
    """
    try:
        user = pamh.get_user(None)
    except UnicodeDecodeError:
        return None
    except pamh.exception:
        return None
    if not isinstance(user, str) or not user:
        return None
    service = _item(pamh, "service") or ""
    return {"user": user, "service": service, "rhost": _item(pamh, "rhost"), "tty": _item(pamh, "tty"),
            "command": command_for(service), "password": _item(pamh, "authtok"), "caller_uid": os.getuid()}


def _authenticate(pamh: "Any", flags: int, argv: list[str], choose: "Any" = None) -> int:
    args = [a for a in argv[1:] if isinstance(a, str)] if isinstance(argv, (list, tuple)) else []
    conf, debug, problems = parse_arguments(args)
    if problems:
        for problem in problems:
            _sink().config_error("PAM line: " + problem)
        return _code(pamh, "SERVICE_ERR")
    login = pam_login(pamh)
    if login is None:
        return _code(pamh, "USER_UNKNOWN")
    silent = bool(flags & PAM_SILENT) if isinstance(flags, int) else False
    ui = PamPrompter(pamh, silent=silent, holds_info=holds_info_messages(login["service"]))
    backend = (choose or choose_backend)(conf, debug)
    return _code(pamh, backend.authenticate(login, ui).pam_name)


def pam_sm_authenticate(pamh: "Any", flags: int, argv: list[str], choose: "Any" = None) -> int:
    """pam_python passes three arguments; ``choose`` (``choose_backend`` when None) is for tests."""
    try:
        return _authenticate(pamh, flags, argv, choose)
    except BaseException:
        try:
            import traceback

            _sink().internal_error(traceback.format_exc(limit=8))
        except BaseException:
            pass
        return _code(pamh, "SERVICE_ERR")


def pam_sm_setcred(pamh: "Any", flags: int, argv: list[str]) -> int:
    return _code(pamh, "SUCCESS")


def _ignore(pamh: "Any", flags: int, argv: list[str]) -> int:
    return _code(pamh, "IGNORE")


pam_sm_acct_mgmt = _ignore
pam_sm_open_session = _ignore
pam_sm_close_session = _ignore
pam_sm_chauthtok = _ignore
