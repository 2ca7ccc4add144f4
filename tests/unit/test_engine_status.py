"""Duo's ``result`` and ``status`` decided together, one test per row of the status table
(docs/duo-statuses.md), for push, phone call and passcode where the row applies; Verified Push."""
from __future__ import annotations

import pytest

from fakes import APPROVED, PASSCODE_OK, SMS_SENT, FakeClock, FakeDuo, FakePrompter
from pam_duo_py import engine as engine_mod
from pam_duo_py.config import AuthSettings
from pam_duo_py.engine import Engine, Kind, Result
from pam_duo_py.errors import DuoUnknownAnswer
from pam_duo_py.replies import AuthResult, Preauth
from test_engine import PHONE, Run, login, push_started

ASYNC = ["push", "phone"]  # answered through auth_status
MENU = {"push": "1", "phone": "2", "passcode": "111111"}


def reply(result: str, status: str, status_msg: str = "") -> AuthResult:
    return AuthResult(result, status, status_msg)


def as_dict(answer: AuthResult) -> dict:
    return {"result": answer.result, "status": answer.status, "status_msg": answer.status_msg}


def one(factor: str, answer: AuthResult, *, then=(), settings=None, **kw) -> Run:
    """``factor`` answered with ``answer``; ``then``: answers for the prompts that may follow."""
    answers = [MENU[factor], *then]
    if factor == "passcode":
        return Run(auth=[as_dict(answer), PASSCODE_OK], answers=answers, settings=settings, **kw)
    return Run(auth=[push_started("TX1"), PASSCODE_OK], status=[answer], answers=answers, settings=settings, **kw)


# -- allow / allow, allow / bypass, allow / anything else ---------------------------------------

@pytest.mark.parametrize("factor", ASYNC + ["passcode"])
def test_allow_allow_is_success(factor):
    run = one(factor, reply("allow", "allow", "Success. Logging you in..."))
    assert run.result is Result.SUCCESS and run.outcome.factor == factor
    assert run.outcome.duo_status == "allow" and len(run.ui.asked) == 1


@pytest.mark.parametrize("factor", ASYNC + ["passcode"])
def test_allow_bypass_is_success_logged_as_bypass(factor):
    run = one(factor, reply("allow", "bypass", "Allowing user in bypass mode"))
    assert run.result is Result.SUCCESS and run.outcome.kind is Kind.SUCCESS
    assert run.outcome.factor == "bypass" and run.outcome.duo_status == "bypass"
    assert "bypass" in run.outcome.reason


@pytest.mark.parametrize("factor", ASYNC + ["passcode"])
def test_allow_with_a_status_we_do_not_know_is_success_labelled_with_it(factor):
    run = one(factor, reply("allow", "trusted_network", "Allowed"))
    assert run.result is Result.SUCCESS and run.outcome.factor == factor
    assert run.outcome.duo_status == "trusted_network"


# -- waiting / pushed, calling, answered, push_failed, other -----------------------------------

@pytest.mark.parametrize("factor", ASYNC)
def test_waiting_statuses_keep_waiting_and_show_each_new_status_msg_once(factor):
    status = [reply("waiting", "pushed", "Pushed a login request to your device..."),
              reply("waiting", "calling", "Dialing XXX-XXX-1234..."),
              reply("waiting", "calling", "Dialing XXX-XXX-1234..."),
              reply("waiting", "answered", "Answered. Press 1 on the phone to log in.\x1b[2J"),
              reply("waiting", "something_new", "x" * 2000),
              APPROVED]
    run = Run(auth=[push_started()], status=status, answers=[MENU[factor]])
    assert run.result is Result.SUCCESS
    assert len(run.duo.named("auth_status")) == 6
    shown = run.ui.shown
    assert shown.count("Dialing XXX-XXX-1234...") == 1
    assert shown.count(engine_mod.MSG_PUSHED) == 1  # ours, or Duo's: never both
    assert any(s.startswith("Answered. Press 1 on the phone to log in.") for s in shown)
    assert not any("\x1b" in s for s in shown)
    long_lines = [s for s in shown if s.startswith("xxx")]
    assert long_lines and all(len(s) <= engine_mod.STATUS_LINE_LIMIT for s in long_lines)


def test_push_failed_tells_the_user_to_open_duo_mobile_once():
    failed = reply("waiting", "push_failed", "Push notification failed.")
    run = Run(auth=[push_started()], status=[failed, failed, APPROVED], answers=["1"])
    assert run.result is Result.SUCCESS
    assert run.ui.shown.count(engine_mod.MSG_PUSH_FAILED) == 1
    assert run.ui.shown.count("Push notification failed.") == 1
    assert "Duo Mobile" in engine_mod.MSG_PUSH_FAILED


def test_non_interactive_sessions_print_no_waiting_text():
    failed = reply("waiting", "push_failed", "Push notification failed.")
    run = Run(auth=[push_started()], status=[failed, reply("waiting", "pushed", "Still waiting"), APPROVED],
              interactive=False, tty=None)
    assert run.result is Result.SUCCESS
    assert engine_mod.MSG_PUSH_FAILED not in run.ui.shown
    assert "Push notification failed." not in run.ui.shown and "Still waiting" not in run.ui.shown


# -- deny / deny ---------------------------------------------------------------------------------

def test_deny_deny_push_ends_at_once():
    run = one("push", reply("deny", "deny", "Login request denied."), then=["123456"])
    assert run.result is Result.AUTH_ERR and len(run.ui.asked) == 1 and run.duo.factors == ["push"]
    assert run.outcome.reason == "push denied by the user"


@pytest.mark.parametrize("factor", ["phone", "passcode"])
def test_deny_deny_phone_or_passcode_is_one_failed_attempt(factor):
    run = one(factor, reply("deny", "deny", "Call ended"), then=["123456"])
    assert run.result is Result.SUCCESS and len(run.ui.asked) == 2
    assert run.duo.factors == [factor, "passcode"]


# -- deny / fraud ----------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", ASYNC)
def test_deny_fraud_ends_at_once_logged_as_fraud(factor):
    run = one(factor, reply("deny", "fraud", "Login request reported as fraudulent."), then=["123456"])
    assert run.result is Result.AUTH_ERR and len(run.ui.asked) == 1
    assert run.outcome.duo_status == "fraud" and "fraud" in run.outcome.reason
    assert engine_mod.MSG_FRAUD in run.ui.alerts


# -- deny / timeout --------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", ASYNC)
def test_deny_timeout_is_a_failed_attempt_not_a_denial(factor):
    timeout = reply("deny", "timeout", "Login timed out.")
    run = one(factor, timeout, then=["123456"])
    assert run.result is Result.SUCCESS and len(run.ui.asked) == 2  # prompted again
    assert engine_mod.MSG_TIMED_OUT in run.ui.shown
    assert not any("denied" in a.lower() for a in run.ui.alerts)


@pytest.mark.parametrize("factor", ASYNC)
def test_deny_timeout_until_attempts_are_used_up_gives_maxtries(factor):
    timeout = reply("deny", "timeout", "Login timed out.")
    run = Run(auth_default=lambda f, p: push_started(), status_default=timeout, answers=[MENU[factor]] * 2,
              settings=AuthSettings(prompts=2))
    assert run.result is Result.MAXTRIES and run.duo.factors == [factor] * 2
    assert "timed out" in run.outcome.reason and "denied" not in run.outcome.reason
    assert engine_mod.MSG_TOO_MANY in run.ui.shown


def test_deny_timeout_with_one_prompt_is_maxtries():
    run = one("push", reply("deny", "timeout", ""), settings=AuthSettings(prompts=1))
    assert run.result is Result.MAXTRIES and "timed out" in run.outcome.reason


# -- deny / locked_out -----------------------------------------------------------------------------

@pytest.mark.parametrize("factor", ASYNC + ["passcode"])
def test_deny_locked_out_ends_at_once_with_a_message(factor):
    msg = "Your account has been locked out due to excessive authentication failures."
    run = one(factor, reply("deny", "locked_out", msg), then=["123456", "123456"])
    assert run.result is Result.AUTH_ERR and run.outcome.kind is Kind.FAILURE
    assert len(run.ui.asked) == 1 and len(run.duo.auth_calls) == 1
    assert run.ui.alerts == [msg]
    assert run.outcome.duo_status == "locked_out" and "locked out" in run.outcome.reason


def test_deny_locked_out_without_a_message_still_explains():
    run = one("passcode", reply("deny", "locked_out", ""))
    assert run.result is Result.AUTH_ERR and run.ui.alerts == [engine_mod.MSG_LOCKED_OUT]


# -- deny / sent -------------------------------------------------------------------------------------

def test_deny_sent_shows_the_message_and_asks_again_without_using_an_attempt():
    run = Run(auth=[SMS_SENT, PASSCODE_OK], answers=["sms", "123456"], settings=AuthSettings(prompts=1))
    assert run.result is Result.SUCCESS and "New SMS passcodes sent." in run.ui.shown


def test_sms_answered_with_locked_out_ends_at_once():
    run = Run(auth=[{"result": "deny", "status": "locked_out", "status_msg": "Locked"}], answers=["sms", "1"])
    assert run.result is Result.AUTH_ERR and len(run.ui.asked) == 1 and run.ui.alerts == ["Locked"]


# -- deny / anything else ----------------------------------------------------------------------------

@pytest.mark.parametrize("factor", ASYNC + ["passcode"])
def test_deny_with_a_status_we_do_not_know_is_one_failed_attempt(factor):
    run = one(factor, reply("deny", "policy_violation", "Denied by policy"), then=["123456"])
    assert run.result is Result.SUCCESS and len(run.ui.asked) == 2
    assert run.duo.factors == [factor, "passcode"]
    assert "Denied by policy" in run.ui.shown


def test_deny_with_an_unknown_status_until_attempts_are_used_up():
    run = Run(auth_default={"result": "deny", "status": "new_thing", "status_msg": ""}, answers=["111111"] * 2,
              settings=AuthSettings(prompts=2))
    assert run.result is Result.MAXTRIES and "new_thing" in run.outcome.reason


# -- any other result ----------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", ASYNC)
def test_unknown_result_after_a_push_or_call_is_never_success(factor):
    run = one(factor, reply("approved", "allow", "Success"), then=["123456"])
    assert run.result is Result.AUTH_ERR and len(run.ui.asked) == 1
    assert "approved" in run.outcome.reason


@pytest.mark.parametrize("result", ["approved", "waiting", "success"])
def test_unknown_result_for_a_passcode_is_never_success(result):
    run = Run(auth=[{"result": result, "status": "allow", "status_msg": ""}], answers=["123456", "123456"],
              settings=AuthSettings(failmode="safe"))
    assert run.result is Result.AUTH_ERR and len(run.ui.asked) == 1
    assert result in run.outcome.reason


# -- Verified Push ---------------------------------------------------------------------------------------

VP = AuthSettings(verified_push=True)
CODE_ALERT = "Verification code: {}\nEnter this code in Duo Mobile to approve the login."


def vp_run(pre_code=None, auth_code=None, status=(), answers=("1",), **kw):
    pre = Preauth("auth", "", devices=(PHONE,), txid="PRE-TX1", verification_code=pre_code)
    return Run(preauth=pre, auth=[push_started("TX1", code=auth_code)], status=[*status, APPROVED],
               answers=list(answers), settings=VP, **kw)


def test_verified_push_code_from_preauth():
    run = vp_run(pre_code="417", status=[reply("waiting", "pushed", "Verification code 417 sent")])
    assert run.result is Result.SUCCESS
    assert run.ui.alerts == [CODE_ALERT.format("417")]  # once, although Duo repeats it
    journal = [e[0] if e[0] != "duo" else e[1] for e in run.journal]
    assert journal.index("alert") < journal.index("auth_status")


def test_verified_push_code_from_the_async_auth_reply():
    run = vp_run(auth_code="528")
    assert run.result is Result.SUCCESS and run.ui.alerts == [CODE_ALERT.format("528")]
    journal = [e[0] if e[0] != "duo" else e[1] for e in run.journal]
    assert journal.index("alert") < journal.index("auth_status")


def test_verified_push_code_from_a_waiting_status_msg():
    status = [reply("waiting", "pushed", "Pushed a login request to your device..."),
              reply("waiting", "pushed", "Pushed to XXX-XXX-1234"),  # digits, but no code
              reply("waiting", "pushed", "Enter the code 639 in Duo Mobile to verify it is you."),
              reply("waiting", "pushed", "Enter the code 639 in Duo Mobile to verify it is you.")]
    run = vp_run(status=status)
    assert run.result is Result.SUCCESS
    assert run.ui.alerts == [CODE_ALERT.format("639")]
    assert not any("639" in s for s in run.ui.shown)


def test_a_phone_call_status_with_digits_is_not_a_verification_code():
    pre = Preauth("auth", "", devices=(PHONE,), txid="PRE-TX1")
    run = Run(preauth=pre, auth=[push_started()], status=[reply("waiting", "calling", "Dialing code 1234..."), APPROVED],
              answers=["2"], settings=VP)
    assert run.result is Result.SUCCESS and run.ui.alerts == []
    assert "Dialing code 1234..." in run.ui.shown


def test_verified_push_code_shown_also_without_a_tty():
    run = vp_run(pre_code="417", answers=(), interactive=False, tty=None)
    assert run.result is Result.SUCCESS and run.ui.alerts == [CODE_ALERT.format("417")]


def test_the_preauth_txid_goes_with_the_first_push_only_and_a_second_push_runs_a_new_preauth():
    first = Preauth("auth", "", devices=(PHONE,), txid="PRE-TX1", verification_code="111")
    second = Preauth("auth", "", devices=(PHONE,), txid="PRE-TX2", verification_code="222")
    preauths = iter([first, second])
    duo = FakeDuo(auth_default=lambda f, p: push_started(), status=[reply("deny", "timeout", ""), APPROVED])
    duo.preauth = _recording_preauth(duo, preauths)
    clock = FakeClock()
    ui = FakePrompter(["1", "1"])
    outcome = Engine(VP, duo, ui, clock=clock, sleep=clock.sleep).run(login())
    assert outcome.result is Result.SUCCESS
    assert [c.name for c in duo.calls] == ["preauth", "auth", "auth_status", "preauth", "auth", "auth_status"]
    assert [c.args["params"].get("txid") for c in duo.auth_calls] == ["PRE-TX1", "PRE-TX2"]
    assert ui.alerts == [CODE_ALERT.format("111"), CODE_ALERT.format("222")]


def test_a_second_push_after_a_passcode_still_uses_the_first_preauth_txid():
    pre = Preauth("auth", "", devices=(PHONE,), txid="PRE-TX1", verification_code="111")
    run = Run(preauth=pre, auth=[{"result": "deny", "status": "deny", "status_msg": ""}, push_started()],
              status=[APPROVED], answers=["111111", "1"], settings=VP)
    assert run.result is Result.SUCCESS
    assert [c.name for c in run.duo.calls].count("preauth") == 1
    assert run.duo.auth_calls[1].args["params"]["txid"] == "PRE-TX1"


def test_a_new_preauth_that_no_longer_says_auth_ends_the_login():
    first = Preauth("auth", "", devices=(PHONE,), txid="PRE-TX1")
    preauths = iter([first, Preauth("deny", "Locked out")])
    duo = FakeDuo(auth_default=lambda f, p: push_started(), status=[reply("deny", "timeout", "")])
    duo.preauth = _recording_preauth(duo, preauths)
    clock = FakeClock()
    outcome = Engine(VP, duo, FakePrompter(["1", "1"]), clock=clock, sleep=clock.sleep).run(login())
    assert outcome.result is Result.AUTH_ERR and len(duo.auth_calls) == 1


def test_without_verified_push_no_txid_and_no_new_preauth():
    pre = Preauth("auth", "", devices=(PHONE,), txid="PRE-TX1")
    run = Run(preauth=pre, auth_default=lambda f, p: push_started(), status=[reply("deny", "timeout", ""), APPROVED],
              answers=["1", "1"])
    assert run.result is Result.SUCCESS
    assert [c.name for c in run.duo.calls].count("preauth") == 1
    assert all("txid" not in c.args["params"] for c in run.duo.auth_calls)


def test_pushes_carry_no_custom_type():
    run = Run(auth=[push_started()], status=[APPROVED], answers=["1"])
    assert "type" not in run.duo.auth_calls[0].args["params"]


def _recording_preauth(duo, preauths):
    def preauth(identity, *, ipaddr, hostname, verified_push):
        duo._record("preauth", identity=identity, ipaddr=ipaddr, hostname=hostname, verified_push=verified_push)
        return next(preauths)
    return preauth


# -- preauth answers ------------------------------------------------------------------------------------

def test_enroll_without_a_url_is_a_refusal_with_a_generic_message():
    run = Run(preauth=Preauth("enroll", "Enroll an authentication device to proceed"), settings=AuthSettings(failmode="safe"))
    assert run.result is Result.AUTH_ERR and run.duo.auth_calls == []
    assert run.ui.alerts == ["You must enroll in Duo before you can log in. Contact your administrator."]


@pytest.mark.parametrize("failmode", ["secure", "safe"])
def test_unknown_preauth_result_is_authinfo_unavail_in_both_modes(failmode):
    run = Run(preauth=DuoUnknownAnswer("unknown preauth result 'challenge'"), settings=AuthSettings(failmode=failmode))
    assert run.result is Result.AUTHINFO_UNAVAIL and run.outcome.kind is Kind.ERROR
    assert "challenge" in run.outcome.reason and run.duo.auth_calls == []
