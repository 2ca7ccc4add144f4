"""The decision engine: from preauth to a result (docs/behaviour.md §5, §6).

Pure logic. It talks to the user through a :class:`Prompter` and to Duo
through a :class:`~pam_duo_py.replies.DuoApi` (typed calls; Duo's parameter
names and the wire belong to :mod:`pam_duo_py.duo`); it does no I/O of its
own, so every branch is tested with fakes.
"""
from __future__ import annotations

import enum
import re
import time
from typing import Callable, Protocol

from .record import Record
from .answers import Choice, Menu, Option, Refusal, build_menu, parse_answer
from .config import AuthSettings, DuoIdentity
from .errors import ConversationError, DuoError, DuoRefused, DuoTimeout, DuoUnavailable, DuoUnknownAnswer
from .result import Result
from .replies import AuthResult, Device, DuoApi, Preauth
from .text import for_display

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .state import PreferredDevices, Remember


class Prompter(Protocol):
    """How the engine talks to the person logging in."""

    def ask(self, text: str) -> str:
        """An echoed prompt; raises :class:`ConversationError` on EOF, Ctrl-C or failure."""

    def show(self, text: str) -> None:
        """A status line (may arrive late under sshd)."""

    def alert(self, text: str) -> None:
        """Text the user must read before acting (deny reason, enrollment URL, verification code)."""


class Login(Record, hidden=("password", "env_passcode",)):
    """What the engine needs to know about one login."""

    user: str
    identity: DuoIdentity
    service: str
    interactive: bool
    rhost: str | None = None
    ipaddr: str | None = None
    tty: str | None = None
    hostname: str | None = None
    command: str | None = None
    holds_info_messages: bool = False  # the host program shows info messages only with the next prompt (sshd)
    password: str | None = None
    env_passcode: str | None = None


class Kind(enum.Enum):
    """What happened to a login, as the events, the audit file and the metrics name it."""

    SUCCESS = "success"
    FAILURE = "failure"
    FAILSAFE = "failsafe"  # let in without a second factor: Duo unreachable and failmode = safe
    EXEMPT = "exempt"  # not in users.groups: Duo is not asked
    PREAUTH_ALLOW = "preauth_allow"  # Duo let the user in without a second factor
    ERROR = "error"


class Outcome(Record):
    """How one login ended: the PAM result, what happened, and the facts the log records."""

    result: Result
    kind: Kind
    reason: str = ""
    factor: str | None = None
    txid: str | None = None
    duo_status: str | None = None
    device: str | None = None


MSG_PUSHED = "Pushed a login request to your device..."
MSG_CALLING = "Calling your phone..."
MSG_SUCCESS = "Success. Logging you in..."
MSG_UNAVAILABLE = "Duo two-factor authentication is unavailable; login refused."
MSG_TOO_MANY = "Too many failed attempts."
MSG_TIMED_OUT = "The login request was not answered in time."
MSG_DENIED = "Login request denied."
MSG_FRAUD = "Login request reported as fraudulent."
MSG_LOCKED_OUT = "Your Duo account is locked out. Contact your administrator."
MSG_PUSH_FAILED = "The push could not be delivered to your phone: open Duo Mobile to see and approve the request."
MSG_ENROLL = "You must enroll in Duo before you can log in."
MSG_CODE = "Verification code: {}\nEnter this code in Duo Mobile to approve the login."
STATUS_LINE_LIMIT = 300
# A Verified Push code inside a waiting reply's status_msg (Duo repeats it there): digits in a
# text that speaks of a code (a status line may also hold a masked phone number). Compiled on first
# use (re caches it): only Verified Push needs it.
_CODE_IN_TEXT = r"\bcode\b\D{0,40}?(?<![0-9])([0-9]{3,8})(?![0-9])"
# Under sshd nothing reaches the user between the answer and the end of the wait (docs/platform.md),
# so the menu says beforehand what will happen.
MSG_SSHD_NOTICE = "(After Duo Push or Phone call, approve the request on your phone: nothing more is shown here until you do.)"


class _Shown:
    """What has been shown during one push or call (each text once)."""

    def __init__(self, factor: str, code: str | None) -> None:
        self.factor = factor
        self.code = code
        self.texts: set[str] = set()
        self.hinted = False


class _Tried(Record):
    """One factor's verdict inside the engine: the outcome, and whether it ends the login.

    ``final`` is True for a success and for refusals that must not be retried (fraud, a
    denied push, locked out, an unknown result); otherwise the user may try again.
    """

    outcome: Outcome
    final: bool


class _Stop(Exception):
    """Ends the factor loop with a final outcome."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def _only_option(menu: Menu, pre: Preauth) -> Option | None:
    """The one thing to do when there is nothing to choose: one method (not SMS) and no way to type a passcode."""
    if len(menu.options) != 1 or any("mobile_otp" in d.capabilities or d.type == "token" for d in pre.devices):
        return None
    only = menu.options[0]
    return None if only.factor == "sms" else only


def _preauth_failed(exc: DuoError, failmode: str) -> tuple[Outcome, bool]:
    """The outcome of a preauth that raised, and whether to tell the user Duo is unavailable."""
    if isinstance(exc, DuoUnavailable):
        if failmode == "safe":
            return Outcome(Result.SUCCESS, Kind.FAILSAFE, f"Duo unreachable at preauth: {exc}"), False
        return Outcome(Result.AUTHINFO_UNAVAIL, Kind.FAILURE, f"Failsecure: Duo unreachable at preauth: {exc}"), True
    if isinstance(exc, DuoUnknownAnswer):
        reason = f"Duo answered preauth with {exc}"
    elif isinstance(exc, DuoRefused):
        reason = f"Duo refused preauth: {exc}"
    else:  # any other Duo failure at preauth: closed, whatever failmode says
        reason = f"Duo error at preauth: {exc}"
    return Outcome(Result.AUTHINFO_UNAVAIL, Kind.ERROR, reason), True


def _used_up(last: Outcome | None) -> Outcome:
    """Every attempt was used without success."""
    reason = "attempts used up" + (f" (last: {last.reason})" if last else "")
    if last is None:
        return Outcome(Result.MAXTRIES, Kind.FAILURE, reason)
    return Outcome(Result.MAXTRIES, Kind.FAILURE, reason, factor=last.factor, txid=last.txid, device=last.device)


class Engine:
    def __init__(self, settings: AuthSettings, duo: DuoApi, ui: Prompter, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 remember: Remember | None = None, devices: PreferredDevices | None = None) -> None:
        self.settings = settings
        self.remember = remember
        self.devices = devices
        self.sleep = sleep
        self.duo = duo
        self.ui = ui
        self.clock = clock

    # -- preauth ----------------------------------------------------------------------------

    def run(self, login: Login) -> Outcome:
        try:
            pre = self.duo.preauth(login.identity, ipaddr=login.ipaddr, hostname=login.hostname,
                                   verified_push=self.settings.verified_push)
        except DuoError as exc:
            outcome, unavailable = _preauth_failed(exc, self.settings.failmode)
            if unavailable:
                self.ui.alert(MSG_UNAVAILABLE)
            return outcome
        if pre.result in ("allow", "deny", "enroll"):
            return self._decided_at_preauth(login, pre)
        self._pushes = 0
        try:
            return self._second_factor(login, pre)
        except _Stop as stop:
            return stop.outcome
        except DuoError as exc:
            return Outcome(Result.AUTH_ERR, Kind.FAILURE, f"Duo error after preauth: {exc}")

    def _decided_at_preauth(self, login: Login, pre: Preauth) -> Outcome:
        """Preauth answered allow, deny or enroll: no second factor."""
        if pre.result == "allow":
            return Outcome(Result.SUCCESS, Kind.PREAUTH_ALLOW, pre.status_msg)
        if pre.result == "deny":
            if self.remember:
                self.remember.forget_user(login.user)
            self.ui.alert(for_display(pre.status_msg) or "Login denied by Duo.")
            return Outcome(Result.AUTH_ERR, Kind.FAILURE, f"denied at preauth: {pre.status_msg}", duo_status="deny")
        url = for_display(pre.enroll_portal_url or "", limit=500).replace("\n", " ").strip()
        self.ui.alert(f"{MSG_ENROLL} Enroll at: {url}" if url else f"{MSG_ENROLL} Contact your administrator.")
        return Outcome(Result.AUTH_ERR, Kind.FAILURE, "enrollment required", duo_status="enroll")

    # -- the second factor ------------------------------------------------------------------

    def _second_factor(self, login: Login, pre: Preauth) -> Outcome:
        """The factor, with remembered logins and the preferred device around it."""
        key = self.remember.key(login.user, login.service, login.rhost, login.ipaddr) if self.remember else None
        left = self.remember.remaining(key) if self.remember and key else None
        if left:
            self.ui.show(MSG_SUCCESS)
            return Outcome(Result.SUCCESS, Kind.SUCCESS, f"remembered login, factor skipped ({left:.0f} s left)",
                           factor="remembered")
        outcome = self._factor(login, self._ordered(login, pre))
        if outcome.result is Result.SUCCESS:
            if self.remember:
                self.remember.record(key)
            if self.devices and outcome.device:
                self.devices.set(login.user, outcome.device)
        elif self.remember and (outcome.duo_status in ("fraud", "locked_out")
                                or (outcome.duo_status == "deny" and outcome.factor == "push")):
            # A timed-out push (nobody answered) keeps remembered logins; a refusal does not.
            self.remember.forget_user(login.user)
        return outcome

    def _ordered(self, login: Login, pre: Preauth) -> Preauth:
        """Put the device the user last approved with first; forget it once Duo no longer lists it."""
        if not self.devices:
            return pre
        preferred = self.devices.get(login.user)
        if preferred is None:
            return pre
        if not any(d.device == preferred for d in pre.devices):
            self.devices.drop(login.user)
            return pre
        ordered = sorted(pre.devices, key=lambda d: d.device != preferred)
        return pre.replace(devices=tuple(ordered))

    def _factor(self, login: Login, pre: Preauth) -> Outcome:
        """The mode: a passcode from the environment, autopush, the only option, or the menu."""
        menu = build_menu(login.user, pre.devices)
        if login.env_passcode is not None and self.settings.accept_env_factor:
            return self._env_passcode(login, pre, menu, login.env_passcode)
        if self.settings.autopush or not login.interactive:
            option = menu.default()
            if option is not None:
                return self._finish(self._attempt(login, pre, Choice(option.factor, option.device)))
            if not login.interactive:
                return Outcome(Result.AUTH_ERR, Kind.FAILURE, "no push-capable device for a non-interactive login")
        only = _only_option(menu, pre)
        if only is not None:
            return self._single_option(login, pre, only)
        return self._menu(login, pre, menu)

    def _env_passcode(self, login: Login, pre: Preauth, menu: Menu, passcode: str) -> Outcome:
        """``DUO_PASSCODE`` from the environment: one try, no prompt."""
        choice = parse_answer(passcode, menu, login.password)
        if not isinstance(choice, Choice) or choice.factor != "passcode":
            return Outcome(Result.AUTH_ERR, Kind.FAILURE, "DUO_PASSCODE is not a valid passcode", factor="passcode")
        return self._finish(self._attempt(login, pre, choice))

    def _single_option(self, login: Login, pre: Preauth, only: Option) -> Outcome:
        """One device with one method: start it without a menu, up to ``prompts`` times."""
        last = None
        for _ in range(self.settings.prompts):
            tried = self._attempt(login, pre, Choice(only.factor, only.device))
            if tried.final:
                return self._finish(tried)
            last = tried.outcome
        self.ui.show(MSG_TOO_MANY)
        return _used_up(last)

    def _menu(self, login: Login, pre: Preauth, menu: Menu) -> Outcome:
        """The menu, up to ``prompts`` attempts (sending SMS passcodes is not an attempt)."""
        attempts = self._sms_sent = 0
        last: Outcome | None = None
        while attempts < self.settings.prompts:
            try:
                answer = self.ui.ask(self._menu_prompt(login, menu))
            except ConversationError:
                return Outcome(Result.CONV_ERR, Kind.FAILURE, "conversation ended at the prompt")
            tried = self._answer(login, pre, parse_answer(answer, menu, login.password))
            if tried is None:
                continue
            attempts += 1
            if tried.final:
                return self._finish(tried)
            last = tried.outcome
        self.ui.show(MSG_TOO_MANY)
        return _used_up(last)

    def _answer(self, login: Login, pre: Preauth, choice: Choice | Refusal) -> _Tried | None:
        """One answer to the menu; None when it was not an attempt (SMS passcodes sent)."""
        if isinstance(choice, Choice) and choice.factor == "sms":
            if self._sms_sent < self.settings.prompts:
                self._sms_sent += 1
                return self._send_sms(login, choice.device)
            # SMS is sent synchronously only; past the cap it is refused, not started as an async auth.
            choice = Refusal("No more SMS passcodes can be sent now: enter a passcode you received.")
        if isinstance(choice, Refusal):
            self.ui.show(choice.message)
            return _Tried(Outcome(Result.MAXTRIES, Kind.FAILURE, "answer refused locally"), final=False)
        return self._attempt(login, pre, choice)

    def _menu_prompt(self, login: Login, menu: Menu) -> str:
        """The menu; under sshd with a line saying that the push (or call) goes out on answering."""
        text = menu.text()
        if not login.holds_info_messages or not any(o.factor in ("push", "phone") for o in menu.options):
            return text
        head, _, prompt = text.rpartition("\n")
        return f"{head}\n{MSG_SSHD_NOTICE}\n{prompt}"

    def _finish(self, tried: _Tried) -> Outcome:
        if tried.outcome.result is Result.SUCCESS:
            self.ui.show(MSG_SUCCESS)
        return tried.outcome

    def _pushinfo(self, login: Login) -> tuple[tuple[str, str], ...]:
        """What Duo Mobile shows with the push (label, value), when ``pushinfo`` is on."""
        if not self.settings.pushinfo:
            return ()
        info = [("Server", login.hostname or ""), ("Service", login.service)]
        if login.ipaddr or login.rhost:
            info.append(("Remote address", login.ipaddr or login.rhost or ""))
        if self.settings.pushinfo_command and login.command:
            info.append(("Command", login.command[:100]))
        return tuple((k, v) for k, v in info if v)

    def _send_sms(self, login: Login, device: Device | None) -> _Tried | None:
        """Ask Duo for SMS passcodes: None when sent (not an attempt), else Duo's verdict."""
        reply = self.duo.send_sms(login.identity, device.device if device else None, ipaddr=login.ipaddr,
                                  hostname=login.hostname)
        if reply.result == "deny" and reply.status == "sent":
            self.ui.show(for_display(reply.status_msg, limit=STATUS_LINE_LIMIT) or "New SMS passcodes sent.")
            return None
        return self._judge("sms", reply, txid=None, device=device.device if device else None)

    def _attempt(self, login: Login, pre: Preauth, choice: Choice) -> _Tried:
        """One factor, started and waited for: Duo's verdict."""
        if choice.factor == "passcode":
            reply = self.duo.check_passcode(login.identity, choice.passcode or "", ipaddr=login.ipaddr,
                                            hostname=login.hostname)
            return self._judge("passcode", reply, txid=None, device=None)

        assert choice.device is not None
        code = None
        if choice.factor == "push":
            # No custom "type": Duo Mobile shows its own wording.
            txid = None
            if self.settings.verified_push:
                txid, code = self._verified_push(login, pre)
            self._pushes += 1
            started = self.duo.start_push(login.identity, choice.device.device, ipaddr=login.ipaddr,
                                          hostname=login.hostname, pushinfo=self._pushinfo(login), txid=txid)
        else:
            assert choice.factor == "phone", choice.factor  # SMS is sent by _send_sms, never as an attempt
            started = self.duo.start_phone(login.identity, choice.device.device, ipaddr=login.ipaddr,
                                           hostname=login.hostname)
        shown = _Shown(choice.factor, code or started.verification_code)
        if shown.code:
            self._show_code(shown.code)
        first = MSG_PUSHED if choice.factor == "push" else MSG_CALLING
        shown.texts.add(first)
        self.ui.show(first)
        reply = self._wait(started.txid, lambda waiting: self._waiting(login, waiting, shown))
        return self._judge(choice.factor, reply, txid=started.txid, device=choice.device.device)

    def _verified_push(self, login: Login, pre: Preauth) -> tuple[str | None, str | None]:
        """The txid and code for this push: the preauth's for the first push, a new preauth's after that."""
        if self._pushes == 0:
            return pre.txid, pre.verification_code
        fresh = self.duo.preauth(login.identity, ipaddr=login.ipaddr, hostname=login.hostname, verified_push=True)
        if fresh.result != "auth":
            raise _Stop(Outcome(Result.AUTH_ERR, Kind.FAILURE, f"preauth before another push answered {fresh.result}",
                                factor="push", duo_status=fresh.result))
        return fresh.txid, fresh.verification_code

    def _show_code(self, code: str) -> None:
        self.ui.alert(MSG_CODE.format(for_display(code, limit=16).replace("\n", " ")))

    def _waiting(self, login: Login, reply: AuthResult, shown: _Shown) -> None:
        """A ``waiting`` reply: the Verified Push code if it comes first here, each new status_msg once."""
        text = for_display(reply.status_msg, limit=STATUS_LINE_LIMIT).strip()
        if self.settings.verified_push and shown.factor == "push" and text:
            match = re.search(_CODE_IN_TEXT, text, re.IGNORECASE)
            if match and shown.code is None:
                shown.code = match.group(1)
                shown.texts.add(text)
                self._show_code(shown.code)
                return
            if shown.code and shown.code in text:
                shown.texts.add(text)  # the code, repeated: already on the screen
        if not login.interactive:
            return
        if text and text not in shown.texts:
            shown.texts.add(text)
            self.ui.show(text)
        if reply.status == "push_failed" and not shown.hinted:
            shown.hinted = True
            self.ui.show(MSG_PUSH_FAILED)

    def _judge(self, factor: str, reply: AuthResult, *, txid: str | None, device: str | None) -> _Tried:
        """Duo's verdict on one factor, from ``result`` and ``status`` together."""
        status = reply.status or reply.result
        facts = dict(factor=factor, txid=txid, duo_status=status, device=device)
        if reply.result == "allow":
            if status == "bypass":
                facts["factor"] = "bypass"
                reason = "Duo bypass: the user is in bypass mode"
            else:
                reason = "passcode accepted" if factor == "passcode" else f"{factor} approved"
            return _Tried(Outcome(Result.SUCCESS, Kind.SUCCESS, reason, **facts), final=True)
        if reply.result == "waiting":  # our own push_timeout passed
            facts["duo_status"] = None
            self.ui.show(MSG_TIMED_OUT)
            reason, final = f"{factor} not answered in time (push_timeout)", False
        elif reply.result != "deny":
            reason, final = f"unknown Duo result {reply.result[:40]!r}", True
        else:
            reason, final = self._denied(factor, status, for_display(reply.status_msg, limit=STATUS_LINE_LIMIT))
        return _Tried(Outcome(Result.AUTH_ERR, Kind.FAILURE, reason, **facts), final=final)

    def _denied(self, factor: str, status: str, message: str) -> tuple[str, bool]:
        """Tell the user why Duo said ``deny``; the reason for the log, and whether the login ends here."""
        if status == "fraud":
            self.ui.alert(MSG_FRAUD)
            return f"{factor} reported as fraud", True
        if status == "locked_out":
            self.ui.alert(message or MSG_LOCKED_OUT)
            return "locked out by Duo (status locked_out)", True
        if status == "timeout":
            self.ui.show(MSG_TIMED_OUT)
            return f"{factor} timed out: nobody answered (Duo status timeout)", False
        if status == "deny" and factor == "push":
            self.ui.alert(message or MSG_DENIED)
            return "push denied by the user", True
        if factor == "passcode":
            self.ui.show(message or "Invalid passcode, please try again.")
            return f"passcode refused (status {status[:40]})", False
        self.ui.show(message or MSG_DENIED)
        return f"{factor} refused by Duo (status {status[:40]})", False

    def _wait(self, txid: str, on_waiting: Callable[[AuthResult], None]) -> AuthResult:
        """Long-poll ``auth_status`` until the transaction resolves or ``push_timeout`` passes.

        ``push_timeout`` only guards against a Duo that never answers: Duo itself ends an
        unanswered push after about 60 s with ``deny``/``timeout``.
        """
        deadline = self.clock() + self.settings.push_timeout
        while True:
            left = deadline - self.clock()
            if left <= 0:
                return AuthResult("waiting", "timeout", "")
            started = self.clock()
            try:
                reply = self.duo.auth_status(txid, timeout=left)
            except DuoTimeout:
                if self.clock() >= deadline - 0.05:
                    return AuthResult("waiting", "timeout", "")
                raise
            if reply.result != "waiting":
                return reply
            on_waiting(reply)
            if self.clock() - started < 0.2:
                # Duo answers at once when the status changes (pushed, answered...); pace such
                # replies so that a server that never long-polls cannot make us spin.
                self.sleep(min(0.2, max(0.0, deadline - self.clock())))
