"""Test doubles for the unit layer: a scripted Duo, a scripted user, a pam_python handle.

* :class:`FakeDuo` implements :class:`pam_duo_py.replies.DuoApi` from a script and records every
  call with its arguments, so tests can assert what was (and was not) sent to Duo.
* :class:`FakePrompter` implements the engine's ``Prompter`` from a list of answers.
* :class:`FakePamh` mimics pam_python's handle with the real Linux-PAM constants. Formatting
  it, its type, its messages or its responses raises (the real objects crash the host
  process), and every such attempt is recorded in :data:`FORMATTED`.
"""
from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from typing import Any, Callable

from pam_duo_py.duo import AuthCalls
from pam_duo_py.errors import ConversationError
from pam_duo_py.replies import AuthResult, Preauth


# -- clock -------------------------------------------------------------------------------------

class FakeClock:
    """A monotonic clock that only moves when told to; ``sleep`` advances it and is recorded."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.start = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def elapsed(self) -> float:
        return self.now - self.start


# -- Duo ---------------------------------------------------------------------------------------

@dataclass
class Call:
    name: str  # preauth | auth | auth_status | close
    args: dict[str, Any]


@dataclass
class Slow:
    """A scripted ``auth_status`` answer that takes ``seconds`` (at most the call's timeout)."""

    seconds: float
    then: Any  # AuthResult, an exception instance, or None: time out (waiting) at the deadline


WAITING = AuthResult("waiting", "pushed", "Pushed a login request to your device...")
APPROVED = AuthResult("allow", "allow", "Success. Logging you in...")
DENIED = AuthResult("deny", "deny", "Login request denied.")
FRAUD = AuthResult("deny", "fraud", "Login request reported as fraudulent.")
PASSCODE_OK = {"result": "allow", "status": "allow", "status_msg": "Success. Logging you in..."}
PASSCODE_BAD = {"result": "deny", "status": "deny", "status_msg": "Incorrect passcode. Please try again."}
SMS_SENT = {"result": "deny", "status": "sent", "status_msg": "New SMS passcodes sent."}


class FakeDuo(AuthCalls):
    """A scripted :class:`~pam_duo_py.replies.DuoApi`.

    The typed ``/auth`` calls (``start_push``, ``check_passcode``...) are the real client's
    (:class:`pam_duo_py.duo.AuthCalls`): they build Duo's parameters and parse the reply, so a
    script speaks Duo's wire format and the tests see exactly what would be sent.

    ``preauth``: a :class:`Preauth` to return or an exception instance to raise.
    ``auth``: a list consumed one entry per ``auth`` call; each entry is a dict to return,
    an exception instance to raise, or a callable ``(factor, params) -> dict``. When the list
    is empty, ``auth_default`` (a callable) answers, else the call fails the test.
    ``status``: the same for ``auth_status``, with :class:`AuthResult`, exceptions, callables
    ``(txid, timeout) -> AuthResult`` or :class:`Slow` entries; ``status_default`` answers when
    the list is empty.
    With a ``clock``, every ``auth_status`` call advances it (``status_takes`` seconds, at most
    the timeout it was given), like Duo's long poll.
    """

    def __init__(self, preauth: Any = None, auth: list | None = None, status: list | None = None, *,
                 auth_default: Callable | None = None, status_default: Callable | None = None,
                 clock: FakeClock | None = None, status_takes: float = 0.0,
                 journal: list | None = None) -> None:
        self.preauth_reply = preauth if preauth is not None else Preauth("allow", "Allowing unknown user")
        self.auth_script = list(auth or [])
        self.status_script = list(status or [])
        self.auth_default = auth_default
        self.status_default = status_default
        self.clock = clock
        self.status_takes = status_takes
        self.calls: list[Call] = []
        self.journal = journal if journal is not None else []
        self.closed = 0

    def _record(self, name: str, **args: Any) -> None:
        self.calls.append(Call(name, copy.deepcopy(args)))
        self.journal.append(("duo", name))

    # DuoApi
    def preauth(self, identity, *, ipaddr, hostname, verified_push):
        self._record("preauth", identity=identity, ipaddr=ipaddr, hostname=hostname, verified_push=verified_push)
        if isinstance(self.preauth_reply, BaseException):
            raise self.preauth_reply
        return self.preauth_reply

    def _auth_call(self, identity, factor, params):
        return self.auth(identity, factor, params)

    def auth(self, identity, factor, params):
        """One raw ``/auth`` call: recorded, answered from the script (a dict, as Duo's JSON)."""
        assert isinstance(params, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), params
        self._record("auth", identity=identity, factor=factor, params=dict(params))
        if self.auth_script:
            entry = self.auth_script.pop(0)
        elif self.auth_default is not None:
            entry = self.auth_default
        else:
            raise AssertionError(f"unexpected auth call: factor={factor} params={params}")
        if callable(entry) and not isinstance(entry, BaseException):
            entry = entry(factor, params)
        if isinstance(entry, BaseException):
            raise entry
        return copy.deepcopy(entry)

    def auth_status(self, txid, timeout):
        assert timeout > 0, timeout
        self._record("auth_status", txid=txid, timeout=timeout)
        if self.status_script:
            entry = self.status_script.pop(0)
        elif self.status_default is not None:
            entry = self.status_default
        else:
            raise AssertionError(f"unexpected auth_status call: txid={txid}")
        takes = self.status_takes
        if isinstance(entry, Slow):
            takes, entry = entry.seconds, entry.then
            if entry is None:
                takes = max(takes, timeout)
                entry = WAITING
        if self.clock is not None:
            self.clock.advance(min(takes, timeout))
        if callable(entry) and not isinstance(entry, (BaseException, AuthResult)):
            entry = entry(txid, timeout)
        if isinstance(entry, BaseException):
            raise entry
        return entry

    def close(self) -> None:
        self.closed += 1
        self.journal.append(("duo", "close"))

    # what was sent
    def named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    @property
    def auth_calls(self) -> list[Call]:
        return self.named("auth")

    @property
    def factors(self) -> list[str]:
        return [c.args["factor"] for c in self.auth_calls]

    def sent_strings(self) -> list[str]:
        """Every string value sent to Duo in any call (identity fields included)."""
        out: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)
            elif hasattr(value, "params"):
                walk(value.params())

        for call in self.calls:
            walk(call.args)
        return out


# -- the person logging in ---------------------------------------------------------------------

class _Eof:
    def __repr__(self) -> str:
        return "EOF"


EOF = _Eof()  # an answer that ends the conversation (EOF, Ctrl-C, conversation failure)


class FakePrompter:
    """A scripted :class:`~pam_duo_py.engine.Prompter`.

    ``answers`` are returned by ``ask`` in order; :data:`EOF` raises ConversationError. When the
    answers run out, ``when_empty`` is answered (EOF by default would hide bugs, so the default
    is to fail the test).
    """

    def __init__(self, answers: list | tuple = (), *, when_empty: Any = None, journal: list | None = None) -> None:
        self.answers = list(answers)
        self.when_empty = when_empty
        self.asked: list[str] = []
        self.shown: list[str] = []
        self.alerts: list[str] = []
        self.journal = journal if journal is not None else []

    def ask(self, text: str) -> str:
        assert isinstance(text, str)
        self.asked.append(text)
        self.journal.append(("ask", text))
        if self.answers:
            answer = self.answers.pop(0)
        elif self.when_empty is not None:
            answer = self.when_empty
        else:
            raise AssertionError(f"unexpected prompt: {text!r}")
        if answer is EOF:
            raise ConversationError("EOF")
        return answer

    def show(self, text: str) -> None:
        assert isinstance(text, str)
        self.shown.append(text)
        self.journal.append(("show", text))

    def alert(self, text: str) -> None:
        assert isinstance(text, str)
        self.alerts.append(text)
        self.journal.append(("alert", text))

    @property
    def everything(self) -> list[str]:
        """Every text the user was shown, prompts included."""
        return [entry[1] for entry in self.journal if entry[0] in ("ask", "show", "alert")]


# -- pam_python's handle -----------------------------------------------------------------------

FORMATTED: list[str] = []  # every attempt to format a pam object (must stay empty)


class PamObjectFormatted(AssertionError):
    pass


def _explode(what: str):
    def method(self, *args: Any) -> str:
        FORMATTED.append(what)
        raise PamObjectFormatted(f"{what} of a pam_python object (this crashes the host process)")

    return method


class _ExplosiveType(type):
    """``repr(type(pamh))`` crashes the host too."""

    __repr__ = _explode("repr of the type")  # type: ignore[assignment]
    __str__ = _explode("str of the type")  # type: ignore[assignment]


class FakeMessage(metaclass=_ExplosiveType):
    __slots__ = ("msg_style", "msg")

    def __init__(self, msg_style: int, msg: str) -> None:
        if not isinstance(msg_style, int) or not isinstance(msg, str):
            raise TypeError("Message(int, str)")
        object.__setattr__(self, "msg_style", msg_style)
        object.__setattr__(self, "msg", msg)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Message is immutable")

    __repr__ = _explode("repr of a Message")
    __str__ = _explode("str of a Message")
    __format__ = _explode("format of a Message")


class FakeResponse(metaclass=_ExplosiveType):
    __slots__ = ("resp", "resp_retcode")

    def __init__(self, resp: str | None, resp_retcode: int = 0) -> None:
        self.resp = resp
        self.resp_retcode = resp_retcode

    __repr__ = _explode("repr of a Response")
    __str__ = _explode("str of a Response")
    __format__ = _explode("format of a Response")


class PamException(Exception):
    """Like ``PamHandle.PamException``: carries ``pam_result``."""

    def __init__(self, description: str, pam_result: int) -> None:
        super().__init__(description)
        self.pam_result = pam_result


class BadUtf8:
    """An item value whose reading raises UnicodeDecodeError (invalid UTF-8 in the C string)."""

    def __init__(self, raw: bytes = b"bad\xffuser") -> None:
        self.raw = raw

    def fail(self) -> None:
        self.raw.decode("utf-8")  # raises
        raise AssertionError("BadUtf8 needs invalid UTF-8")


BAD_UTF8 = BadUtf8()
CONV_FAIL = object()  # a conversation answer: the application's conv function fails (PAM_CONV_ERR)
CONV_BAD_UTF8 = object()  # a conversation answer that is not valid UTF-8


def _item(name: str) -> property:
    def get(self: "FakePamh") -> Any:
        self.items_read.append(name)
        value = self._items.get(name)
        if isinstance(value, BadUtf8):
            value.fail()
        return value

    def set_(self: "FakePamh", value: Any) -> None:
        if value is not None and not isinstance(value, (str, BadUtf8, BaseException)):
            raise TypeError("PAM items are str or None")
        self._items[name] = value

    return property(get, set_)


class FakePamh(metaclass=_ExplosiveType):
    """pam_python's handle, with the Linux-PAM constants and a scripted conversation."""

    # return codes (Linux-PAM)
    PAM_SUCCESS = 0
    PAM_OPEN_ERR = 1
    PAM_SYMBOL_ERR = 2
    PAM_SERVICE_ERR = 3
    PAM_SYSTEM_ERR = 4
    PAM_BUF_ERR = 5
    PAM_PERM_DENIED = 6
    PAM_AUTH_ERR = 7
    PAM_CRED_INSUFFICIENT = 8
    PAM_AUTHINFO_UNAVAIL = 9
    PAM_USER_UNKNOWN = 10
    PAM_MAXTRIES = 11
    PAM_NEW_AUTHTOK_REQD = 12
    PAM_ACCT_EXPIRED = 13
    PAM_SESSION_ERR = 14
    PAM_CRED_UNAVAIL = 15
    PAM_CRED_EXPIRED = 16
    PAM_CRED_ERR = 17
    PAM_NO_MODULE_DATA = 18
    PAM_CONV_ERR = 19
    PAM_AUTHTOK_ERR = 20
    PAM_TRY_AGAIN = 24
    PAM_IGNORE = 25
    PAM_ABORT = 26
    PAM_MODULE_UNKNOWN = 28
    PAM_INCOMPLETE = 31
    # message styles
    PAM_PROMPT_ECHO_OFF = 1
    PAM_PROMPT_ECHO_ON = 2
    PAM_ERROR_MSG = 3
    PAM_TEXT_INFO = 4
    PAM_RADIO_TYPE = 5
    PAM_BINARY_PROMPT = 7
    # flags
    PAM_SILENT = 0x8000
    PAM_DISALLOW_NULL_AUTHTOK = 0x1

    exception = PamException
    Message = FakeMessage
    Response = FakeResponse

    user = _item("user")
    service = _item("service")
    rhost = _item("rhost")
    ruser = _item("ruser")
    tty = _item("tty")
    authtok = _item("authtok")

    def __init__(self, *, user: Any = "alice", service: Any = "sshd", rhost: Any = None, tty: Any = None,
                 authtok: Any = None, answers: list | tuple = ()) -> None:
        self._items: dict[str, Any] = {}
        self.items_read: list[str] = []
        self.user = user
        self.service = service
        self.rhost = rhost
        self.tty = tty
        self.authtok = authtok
        self.ruser = None
        self.answers = list(answers)
        self.messages: list[tuple[int, str]] = []  # (style, text) of every message sent
        self.get_user_prompts: list[Any] = []

    def get_user(self, prompt: Any = None) -> Any:
        self.get_user_prompts.append(prompt)
        value = self._items.get("user")
        if isinstance(value, BadUtf8):
            value.fail()
        if isinstance(value, BaseException):
            raise value
        return value

    def _answer(self, message: Any) -> FakeResponse:
        style, text = message.msg_style, message.msg
        assert isinstance(style, int) and isinstance(text, str)
        self.messages.append((style, text))
        if style not in (self.PAM_PROMPT_ECHO_ON, self.PAM_PROMPT_ECHO_OFF):
            return FakeResponse(None, 0)
        if not self.answers:
            raise PamException("Conversation error", self.PAM_CONV_ERR)  # EOF: nothing more to say
        answer = self.answers.pop(0)
        if answer is CONV_FAIL:
            raise PamException("Conversation error", self.PAM_CONV_ERR)
        if answer is CONV_BAD_UTF8:
            b"\xff\xfe".decode("utf-8")
        return FakeResponse(answer, 0)

    def conversation(self, messages: Any) -> Any:
        if isinstance(messages, (list, tuple)):
            return tuple(self._answer(m) for m in messages)
        return self._answer(messages)

    def fail_delay(self, micro_sec: int) -> None:
        pass

    def strerror(self, errnum: int) -> str:
        return f"PAM error {int(errnum)}"

    __repr__ = _explode("repr of pamh")
    __str__ = _explode("str of pamh")
    __format__ = _explode("format of pamh")

    # what the user saw
    def texts(self, style: int | None = None) -> list[str]:
        return [text for s, text in self.messages if style is None or s == style]


# -- journald ------------------------------------------------------------------------------------

def parse_journal(data: bytes) -> list[tuple[str, str]]:
    """The native protocol, read the way journald reads it."""
    fields, pos = [], 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n"
            pos = end + 10 + size
        fields.append((name.decode(), value.decode()))
    return fields
