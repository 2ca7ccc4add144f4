"""The decision engine against a scripted Duo and a scripted user (docs/behaviour.md §5, §6)."""
from __future__ import annotations

import unicodedata
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes import (APPROVED, DENIED, EOF, FRAUD, PASSCODE_BAD, PASSCODE_OK, SMS_SENT, WAITING, FakeClock, FakeDuo,
                   FakePrompter, Slow)
from pam_duo_py import engine as engine_mod
from pam_duo_py.config import AuthSettings, DuoIdentity
from pam_duo_py.engine import Engine, Kind, Login, Result
from pam_duo_py.errors import (DuoCredentialsRejected, DuoError, DuoMalformedReply, DuoRateLimited, DuoRefused,
                               DuoTimeout, DuoUnavailable)
from pam_duo_py.replies import AuthResult, Device, Preauth

PHONE = Device("DPHONE1", "phone", "XXX-XXX-1234", ("push", "phone", "sms"))
PHONE2 = Device("DPHONE2", "phone", "XXX-XXX-5678", ("push", "phone"))
TOKEN = Device("DTOKEN", "token", "Token", ())
AUTH = Preauth("auth", "Account is active", devices=(PHONE, PHONE2, TOKEN))
TOKEN_ONLY = Preauth("auth", "", devices=(TOKEN,))
PASSWORD = "hunter2-Secret"
DIGIT_PASSWORD = "31415926"


def login(**overrides) -> Login:
    values = dict(user="alice", identity=DuoIdentity(username="alice"), service="sshd", interactive=True,
                  rhost="203.0.113.5", ipaddr="203.0.113.5", tty="ssh", hostname="server1", password=PASSWORD)
    values.update(overrides)
    return Login(**values)


class Run:
    """One engine run with fakes; keeps them for assertions."""

    def __init__(self, *, preauth=AUTH, auth=None, status=None, answers=(), settings=None, status_takes=1.0,
                 auth_default=None, status_default=None, **login_overrides) -> None:
        self.clock = FakeClock()
        self.journal: list = []
        self.duo = FakeDuo(preauth, auth, status, clock=self.clock, status_takes=status_takes, journal=self.journal,
                           auth_default=auth_default, status_default=status_default)
        self.ui = FakePrompter(answers, journal=self.journal)
        self.settings = settings or AuthSettings()
        self.engine = Engine(self.settings, self.duo, self.ui, clock=self.clock, sleep=self.clock.sleep)
        self.login = login(**login_overrides)
        self.outcome = self.engine.run(self.login)

    @property
    def result(self) -> Result:
        return self.outcome.result


def push_started(txid="TX1", code=None):
    reply = {"txid": txid}
    if code is not None:
        reply["verification_code"] = code
    return reply


# -- preauth -----------------------------------------------------------------------------------

def test_preauth_allow_grants_without_prompting():
    run = Run(preauth=Preauth("allow", "Allowing unknown user"))
    assert run.result is Result.SUCCESS and run.outcome.kind is Kind.PREAUTH_ALLOW
    assert run.ui.asked == [] and run.duo.auth_calls == []
    call = run.duo.calls[0]
    assert call.name == "preauth"
    assert call.args == {"identity": DuoIdentity(username="alice"), "ipaddr": "203.0.113.5", "hostname": "server1",
                         "verified_push": False}


def test_preauth_deny_refuses_and_shows_the_sanitized_message():
    run = Run(preauth=Preauth("deny", "Your account is \x1b[31mdisabled\x07.\r\nCall x123"))
    assert run.result is Result.AUTH_ERR and run.outcome.kind is Kind.FAILURE
    assert run.ui.asked == [] and run.duo.auth_calls == []
    assert len(run.ui.alerts) == 1
    alert = run.ui.alerts[0]
    assert "disabled" in alert and "Call x123" in alert
    assert "\x1b" not in alert and "\x07" not in alert and "\r" not in alert


def test_preauth_deny_without_message_still_explains():
    run = Run(preauth=Preauth("deny", ""))
    assert run.result is Result.AUTH_ERR and run.ui.alerts and run.ui.alerts[0].strip()


def test_preauth_enroll_refuses_and_shows_the_url():
    url = "https://api-xxx.duosecurity.com/portal?code=abc\x1b]0;pwned\x07"
    run = Run(preauth=Preauth("enroll", "Enroll an authentication device to proceed", enroll_portal_url=url))
    assert run.result is Result.AUTH_ERR and run.outcome.kind is Kind.FAILURE
    assert run.ui.asked == [] and run.duo.auth_calls == []
    assert len(run.ui.alerts) == 1
    assert "https://api-xxx.duosecurity.com/portal?code=abc" in run.ui.alerts[0]
    assert "\x1b" not in run.ui.alerts[0] and "\x07" not in run.ui.alerts[0]


@pytest.mark.parametrize("error", [DuoUnavailable("connection refused"), DuoTimeout("timed out"),
                                   DuoMalformedReply("bad JSON"), DuoUnavailable("HTTP 503", status=503)])
def test_duo_unreachable_at_preauth_secure_refuses(error):
    run = Run(preauth=error, settings=AuthSettings(failmode="secure"))
    assert run.result is Result.AUTHINFO_UNAVAIL
    assert run.outcome.kind is Kind.FAILURE
    assert run.ui.asked == [] and run.duo.auth_calls == []
    assert run.ui.alerts  # the user is told why


@pytest.mark.parametrize("error", [DuoUnavailable("connection refused"), DuoTimeout("timed out"),
                                   DuoMalformedReply("bad JSON")])
def test_duo_unreachable_at_preauth_safe_lets_in_as_failsafe(error):
    run = Run(preauth=error, settings=AuthSettings(failmode="safe"))
    assert run.result is Result.SUCCESS and run.outcome.kind is Kind.FAILSAFE
    assert run.ui.asked == [] and run.duo.auth_calls == []


@pytest.mark.parametrize("failmode", ["secure", "safe"])
@pytest.mark.parametrize("error", [DuoCredentialsRejected("HTTP 401 code 40103", code=40103, status=401),
                                   DuoCredentialsRejected("HTTP 401 code 40105", code=40105, status=401),
                                   DuoRateLimited("HTTP 429", code=42901, status=429),
                                   DuoRefused("HTTP 403", code=40301, status=403),
                                   DuoRefused("HTTP 400", code=40002, status=400)])
def test_duo_refusing_preauth_never_fails_open(error, failmode):
    run = Run(preauth=error, settings=AuthSettings(failmode=failmode))
    assert run.result is Result.AUTHINFO_UNAVAIL
    assert run.outcome.kind is not Kind.FAILSAFE
    assert run.ui.asked == [] and run.duo.auth_calls == []


# -- push --------------------------------------------------------------------------------------

def test_push_approved():
    run = Run(auth=[push_started("TX1")], status=[WAITING, APPROVED], answers=["1"])
    assert run.result is Result.SUCCESS and run.outcome.kind is Kind.SUCCESS
    assert run.outcome.factor == "push" and run.outcome.txid == "TX1"
    assert len(run.ui.asked) == 1 and run.ui.asked[0].startswith("Duo two-factor login for alice")
    (call,) = run.duo.auth_calls
    assert call.args["factor"] == "push" and call.args["identity"] == DuoIdentity(username="alice")
    params = call.args["params"]
    assert params["device"] == "DPHONE1" and params["async"] == "1"
    assert params["ipaddr"] == "203.0.113.5" and params["hostname"] == "server1"
    assert [c.args["txid"] for c in run.duo.named("auth_status")] == ["TX1", "TX1"]
    assert engine_mod.MSG_PUSHED in run.ui.shown and run.ui.shown[-1] == engine_mod.MSG_SUCCESS


def test_push_to_the_second_device_by_word():
    run = Run(auth=[push_started()], status=[APPROVED], answers=["push2"])
    assert run.result is Result.SUCCESS
    assert run.duo.auth_calls[0].args["params"]["device"] == "DPHONE2"


def test_empty_answer_pushes_to_the_default_device():
    run = Run(auth=[push_started()], status=[APPROVED], answers=[""])
    assert run.result is Result.SUCCESS
    assert run.duo.factors == ["push"] and run.duo.auth_calls[0].args["params"]["device"] == "DPHONE1"


def test_push_denied_by_the_user_fails_at_once_without_a_second_prompt():
    run = Run(auth=[push_started()], status=[DENIED], answers=["1", "123456"])
    assert run.result is Result.AUTH_ERR and run.outcome.kind is Kind.FAILURE
    assert len(run.ui.asked) == 1
    assert run.duo.factors == ["push"]
    assert any("denied" in a.lower() for a in run.ui.alerts)


def test_push_reported_as_fraud_fails_at_once():
    run = Run(auth=[push_started()], status=[FRAUD], answers=["1", "1"])
    assert run.result is Result.AUTH_ERR
    assert len(run.ui.asked) == 1 and run.duo.factors == ["push"]
    assert engine_mod.MSG_FRAUD in run.ui.alerts


def test_phone_call_reported_as_fraud_fails_at_once():
    run = Run(auth=[push_started()], status=[AuthResult("deny", "fraud", "")], answers=["2", "1"])
    assert run.result is Result.AUTH_ERR and len(run.ui.asked) == 1 and run.duo.factors == ["phone"]


def test_unanswered_push_with_attempts_left_prompts_again():
    run = Run(auth=[push_started("TX1"), PASSCODE_OK], status_default=WAITING, answers=["1", "123456"],
              settings=AuthSettings(push_timeout=30))
    assert run.result is Result.SUCCESS and run.outcome.factor == "passcode"
    assert len(run.ui.asked) == 2
    assert engine_mod.MSG_TIMED_OUT in run.ui.shown
    assert run.duo.factors == ["push", "passcode"]


def test_unanswered_pushes_use_up_the_attempts():
    run = Run(auth_default=lambda f, p: push_started(), status_default=WAITING, answers=["1", "1", "1"],
              settings=AuthSettings(prompts=3, push_timeout=10))
    assert run.result is Result.MAXTRIES
    assert run.duo.factors == ["push"] * 3 and len(run.ui.asked) == 3


def test_phone_call_not_answered_prompts_again():
    run = Run(auth=[push_started(), PASSCODE_OK], status=[AuthResult("deny", "deny", "Call ended")],
              answers=["2", "123456"])
    assert run.result is Result.SUCCESS
    assert run.duo.factors == ["phone", "passcode"]
    assert engine_mod.MSG_CALLING in run.ui.shown


# -- passcodes ---------------------------------------------------------------------------------

def test_valid_passcode():
    run = Run(auth=[PASSCODE_OK], answers=["123456"])
    assert run.result is Result.SUCCESS and run.outcome.factor == "passcode"
    (call,) = run.duo.auth_calls
    assert call.args["factor"] == "passcode"
    assert call.args["params"]["passcode"] == "123456" and call.args["params"]["async"] == "0"
    assert run.duo.named("auth_status") == []


def test_invalid_then_valid_passcode():
    run = Run(auth=[PASSCODE_BAD, PASSCODE_OK], answers=["111111", "123456"])
    assert run.result is Result.SUCCESS
    assert [c.args["params"]["passcode"] for c in run.duo.auth_calls] == ["111111", "123456"]
    assert "Incorrect passcode. Please try again." in run.ui.shown


def test_the_outcome_is_frozen_with_an_enum_kind_and_no_loop_state():
    retried = Run(auth=[PASSCODE_BAD, PASSCODE_OK], answers=["111111", "123456"]).outcome
    used_up = Run(auth_default=PASSCODE_BAD, answers=["111111"] * 3).outcome
    fraud = Run(auth=[push_started("TX1")], status=[FRAUD], answers=["1"]).outcome
    for outcome, kind in ((retried, Kind.SUCCESS), (used_up, Kind.FAILURE), (fraud, Kind.FAILURE)):
        assert type(outcome.kind) is Kind and outcome.kind is kind
        with pytest.raises(AttributeError):
            outcome.kind = Kind.SUCCESS
        with pytest.raises(AttributeError):
            outcome.result = Result.SUCCESS
    from pam_duo_py.events import OUTCOMES

    assert tuple(k.value for k in Kind) == OUTCOMES  # the names the audit file and the metrics use


def test_modhex_otp_is_sent_as_a_passcode():
    otp = "cccccc" + "cbdefghijklnrtuv" * 2 + "cbdefg"
    run = Run(auth=[PASSCODE_OK], answers=[otp])
    assert run.result is Result.SUCCESS and run.duo.auth_calls[0].args["params"]["passcode"] == otp


@pytest.mark.parametrize("prompts", [1, 2, 3])
def test_attempts_used_up_gives_maxtries(prompts):
    run = Run(auth_default=PASSCODE_BAD, answers=["111111"] * prompts, settings=AuthSettings(prompts=prompts))
    assert run.result is Result.MAXTRIES and run.outcome.kind is Kind.FAILURE
    assert len(run.ui.asked) == prompts and len(run.duo.auth_calls) == prompts
    assert engine_mod.MSG_TOO_MANY in run.ui.shown


def test_refused_answers_count_as_attempts_and_never_reach_duo():
    run = Run(answers=["hello", "1" * 21, "push9"], settings=AuthSettings(prompts=3))
    assert run.result is Result.MAXTRIES
    assert run.duo.auth_calls == [] and len(run.ui.asked) == 3
    assert len(run.ui.shown) >= 3  # each refusal is explained


def test_token_only_user_is_asked_for_a_passcode():
    run = Run(preauth=TOKEN_ONLY, auth=[PASSCODE_OK], answers=["123456"])
    assert run.result is Result.SUCCESS
    assert run.ui.asked[0].endswith("Passcode: ")


# -- the conversation ends ---------------------------------------------------------------------

def test_eof_at_the_prompt_is_a_conversation_error():
    run = Run(answers=[EOF])
    assert run.result is Result.CONV_ERR and run.duo.auth_calls == []


def test_eof_at_the_second_prompt_is_a_conversation_error():
    run = Run(auth=[PASSCODE_BAD], answers=["111111", EOF])
    assert run.result is Result.CONV_ERR and len(run.duo.auth_calls) == 1


# -- failures after preauth --------------------------------------------------------------------

AFTER_PREAUTH_ERRORS = [DuoUnavailable("connection reset"), DuoTimeout("timed out"), DuoMalformedReply("bad JSON"),
                        DuoCredentialsRejected("HTTP 401", status=401), DuoRateLimited("HTTP 429", status=429),
                        DuoRefused("HTTP 400", status=400), DuoError("anything")]


@pytest.mark.parametrize("failmode", ["secure", "safe"])
@pytest.mark.parametrize("error", AFTER_PREAUTH_ERRORS, ids=lambda e: type(e).__name__)
def test_any_duo_error_at_auth_refuses_in_both_modes(error, failmode):
    run = Run(auth=[error], answers=["1"], settings=AuthSettings(failmode=failmode))
    assert run.result is Result.AUTH_ERR and run.outcome.kind is Kind.FAILURE
    assert len(run.ui.asked) == 1


@pytest.mark.parametrize("failmode", ["secure", "safe"])
@pytest.mark.parametrize("error", AFTER_PREAUTH_ERRORS, ids=lambda e: type(e).__name__)
def test_any_duo_error_at_passcode_auth_refuses_in_both_modes(error, failmode):
    run = Run(auth=[error], answers=["123456"], settings=AuthSettings(failmode=failmode))
    assert run.result is Result.AUTH_ERR and run.outcome.kind is Kind.FAILURE


@pytest.mark.parametrize("failmode", ["secure", "safe"])
@pytest.mark.parametrize("error", AFTER_PREAUTH_ERRORS[:1] + AFTER_PREAUTH_ERRORS[2:], ids=lambda e: type(e).__name__)
def test_any_duo_error_at_auth_status_refuses_in_both_modes(error, failmode):
    run = Run(auth=[push_started()], status=[WAITING, error], answers=["1"], settings=AuthSettings(failmode=failmode))
    assert run.result is Result.AUTH_ERR and run.outcome.kind is Kind.FAILURE
    assert len(run.ui.asked) == 1


@pytest.mark.parametrize("failmode", ["secure", "safe"])
def test_timeout_of_auth_status_before_the_push_deadline_refuses(failmode):
    run = Run(auth=[push_started()], status=[DuoTimeout("timed out")], answers=["1"],
              settings=AuthSettings(failmode=failmode, push_timeout=60), status_takes=0.0)
    assert run.result is Result.AUTH_ERR


@pytest.mark.parametrize("reply", [{}, {"txid": ""}, {"txid": 7}, {"result": "allow"}, {"txid": "x" * 200}])
def test_malformed_async_auth_reply_refuses(reply):
    run = Run(auth=[reply], answers=["1"], settings=AuthSettings(failmode="safe"))
    assert run.result is Result.AUTH_ERR and run.duo.named("auth_status") == []


@pytest.mark.parametrize("reply", [{}, {"result": "waiting"}, {"result": "maybe"}, {"result": 1}, {"txid": "T"}])
def test_malformed_passcode_reply_refuses(reply):
    run = Run(auth=[reply], answers=["123456"], settings=AuthSettings(failmode="safe"))
    assert run.result is Result.AUTH_ERR


def test_malformed_auth_status_reply_is_an_error_not_a_success():
    def bad(txid, timeout):
        raise DuoMalformedReply("unknown auth result 'yes'")

    run = Run(auth=[push_started()], status=[bad], answers=["1"], settings=AuthSettings(failmode="safe"))
    assert run.result is Result.AUTH_ERR


# -- autopush and non-interactive sessions -----------------------------------------------------

def test_autopush_sends_exactly_one_push_and_no_menu():
    run = Run(auth=[push_started()], status=[APPROVED], settings=AuthSettings(autopush=True))
    assert run.result is Result.SUCCESS
    assert run.ui.asked == [] and run.duo.factors == ["push"]
    assert run.duo.auth_calls[0].args["params"]["device"] == "DPHONE1"


@pytest.mark.parametrize("status", [WAITING, DENIED, AuthResult("deny", "timeout", "")])
def test_autopush_that_fails_is_not_retried(status):
    run = Run(auth=[push_started()], status_default=status, settings=AuthSettings(autopush=True, push_timeout=20))
    assert run.result is Result.AUTH_ERR
    assert run.ui.asked == [] and run.duo.factors == ["push"]


def test_autopush_without_a_push_device_falls_back_to_the_prompt():
    run = Run(preauth=TOKEN_ONLY, auth=[PASSCODE_OK], answers=["123456"], settings=AuthSettings(autopush=True))
    assert run.result is Result.SUCCESS and run.duo.factors == ["passcode"] and len(run.ui.asked) == 1


@pytest.mark.parametrize("status", [APPROVED, WAITING, DENIED])
def test_non_interactive_sends_one_push_without_prompting(status):
    run = Run(auth=[push_started()], status_default=status, interactive=False, tty=None,
              settings=AuthSettings(push_timeout=20))
    assert run.result is (Result.SUCCESS if status is APPROVED else Result.AUTH_ERR)
    assert run.ui.asked == [] and run.duo.factors == ["push"]


def test_non_interactive_without_a_push_device_refuses_without_prompting():
    run = Run(preauth=TOKEN_ONLY, interactive=False, tty=None)
    assert run.result is Result.AUTH_ERR
    assert run.ui.asked == [] and run.duo.auth_calls == []
    device_without_push = Preauth("auth", "", devices=(Device("DCALL", "phone", "XXX", ("phone", "sms")),))
    run = Run(preauth=device_without_push, interactive=False, tty=None)
    assert run.result is Result.AUTH_ERR and run.ui.asked == [] and run.duo.auth_calls == []


# -- SMS ---------------------------------------------------------------------------------------

def test_sms_then_passcode():
    run = Run(auth=[SMS_SENT, PASSCODE_OK], answers=["sms", "123456"], settings=AuthSettings(prompts=1))
    assert run.result is Result.SUCCESS
    sms, passcode = run.duo.auth_calls
    assert sms.args["factor"] == "sms"
    assert sms.args["params"]["device"] == "DPHONE1" and sms.args["params"]["async"] == "0"
    assert passcode.args["factor"] == "passcode" and passcode.args["params"]["passcode"] == "123456"
    assert "New SMS passcodes sent." in run.ui.shown
    assert len(run.ui.asked) == 2
    assert run.duo.named("auth_status") == []


def test_sms_by_menu_number():
    run = Run(auth=[SMS_SENT, PASSCODE_OK], answers=["3", "123456"])
    assert run.result is Result.SUCCESS and run.duo.factors == ["sms", "passcode"]


def test_sms_requests_are_capped_and_never_sent_as_an_async_auth():
    run = Run(auth_default=SMS_SENT, answers=["sms"] * 6, settings=AuthSettings(prompts=2))
    assert run.result is Result.MAXTRIES
    assert run.duo.factors == ["sms", "sms"]
    assert all(c.args["params"]["async"] == "0" for c in run.duo.auth_calls)
    assert run.duo.named("auth_status") == []


# -- the password is never sent ----------------------------------------------------------------

@pytest.mark.parametrize("password", [PASSWORD, DIGIT_PASSWORD, "push", "1"])
def test_the_password_typed_at_the_prompt_is_never_sent_to_duo(password):
    run = Run(auth=[PASSCODE_OK], answers=[password, f"  {password} ", "123456"], password=password,
              settings=AuthSettings(prompts=3))
    assert run.result is Result.SUCCESS
    assert run.duo.factors == ["passcode"]
    sent = run.duo.sent_strings()
    assert password not in sent
    if len(password) >= 4:
        assert not any(password in value for value in sent), sent
    assert all(c.args["params"].get("passcode") != password for c in run.duo.auth_calls)
    for text in run.ui.everything:
        assert password not in text or len(password) < 3


def test_only_the_password_three_times_gives_maxtries_and_nothing_sent():
    run = Run(answers=[DIGIT_PASSWORD] * 3, password=DIGIT_PASSWORD)
    assert run.result is Result.MAXTRIES and run.duo.auth_calls == []


# -- DUO_PASSCODE (accept_env_factor) ----------------------------------------------------------

def test_env_passcode_is_used_without_prompting():
    run = Run(auth=[PASSCODE_OK], env_passcode="123456", settings=AuthSettings(accept_env_factor=True))
    assert run.result is Result.SUCCESS and run.ui.asked == []
    (call,) = run.duo.auth_calls
    assert call.args["factor"] == "passcode" and call.args["params"]["passcode"] == "123456"


def test_invalid_env_passcode_refuses_without_prompting():
    run = Run(auth=[PASSCODE_BAD], env_passcode="111111", settings=AuthSettings(accept_env_factor=True))
    assert run.result is Result.AUTH_ERR and run.ui.asked == [] and len(run.duo.auth_calls) == 1


@pytest.mark.parametrize("value", ["push", "1", "", "abc", "1" * 21, PASSWORD, DIGIT_PASSWORD])
def test_env_passcode_that_is_not_a_passcode_is_never_sent(value):
    run = Run(env_passcode=value, password=DIGIT_PASSWORD, settings=AuthSettings(accept_env_factor=True))
    assert run.result is Result.AUTH_ERR
    assert run.duo.auth_calls == [] and run.ui.asked == []


def test_env_passcode_is_ignored_unless_accepted():
    run = Run(auth=[push_started()], status=[APPROVED], answers=["1"], env_passcode="123456")
    assert run.result is Result.SUCCESS and len(run.ui.asked) == 1
    assert "123456" not in run.duo.sent_strings()


# -- Verified Push -----------------------------------------------------------------------------

def test_verified_push_forwards_the_preauth_txid_and_shows_the_code():
    pre = Preauth("auth", "", devices=(PHONE,), txid="PRETXID-1")
    run = Run(preauth=pre, auth=[push_started("TX9", code="\x1b[1m123\x1b[0m")], status=[APPROVED], answers=["1"],
              settings=AuthSettings(verified_push=True))
    assert run.result is Result.SUCCESS
    assert run.duo.calls[0].args["verified_push"] is True
    assert run.duo.auth_calls[0].args["params"]["txid"] == "PRETXID-1"
    codes = [a for a in run.ui.alerts if "Verification code" in a]
    assert len(codes) == 1 and "123" in codes[0] and "\x1b" not in codes[0]
    # the code is shown before we wait for the answer
    kinds = [entry[0] if entry[0] != "duo" else entry[1] for entry in run.journal]
    assert kinds.index("alert") < kinds.index("auth_status")


def test_without_verified_push_no_txid_is_forwarded():
    pre = Preauth("auth", "", devices=(PHONE,), txid="PRETXID-1")
    run = Run(preauth=pre, auth=[push_started()], status=[APPROVED], answers=["1"])
    assert run.duo.calls[0].args["verified_push"] is False
    assert "txid" not in run.duo.auth_calls[0].args["params"]


# -- pushinfo ----------------------------------------------------------------------------------

def pushinfo_of(run):
    raw = run.duo.auth_calls[0].args["params"].get("pushinfo")
    return None if raw is None else urllib.parse.parse_qs(raw)


def test_pushinfo_has_host_service_and_remote_address_but_no_command_by_default():
    run = Run(auth=[push_started()], status=[APPROVED], answers=["1"], command="id -un")
    assert pushinfo_of(run) == {"Server": ["server1"], "Service": ["sshd"], "Remote address": ["203.0.113.5"]}
    assert "type" not in run.duo.auth_calls[0].args["params"]  # Duo Mobile's own wording


def test_pushinfo_command_is_sent_only_when_configured_and_cut_to_100():
    command = "rsync --server " + "x" * 200
    run = Run(auth=[push_started()], status=[APPROVED], answers=["1"], command=command,
              settings=AuthSettings(pushinfo_command=True))
    assert pushinfo_of(run)["Command"] == [command[:100]]


def test_no_pushinfo_when_disabled():
    run = Run(auth=[push_started()], status=[APPROVED], answers=["1"], command="id",
              settings=AuthSettings(pushinfo=False, pushinfo_command=True))
    assert pushinfo_of(run) is None


def test_pushinfo_without_rhost():
    run = Run(auth=[push_started()], status=[APPROVED], answers=["1"], rhost=None, ipaddr=None, service="sudo")
    assert pushinfo_of(run) == {"Server": ["server1"], "Service": ["sudo"]}
    assert "ipaddr" not in run.duo.auth_calls[0].args["params"]


def test_phone_calls_carry_no_pushinfo():
    run = Run(auth=[push_started()], status=[APPROVED], answers=["2"])
    assert run.duo.factors == ["phone"] and pushinfo_of(run) is None


# -- the push wait is bounded ------------------------------------------------------------------

@pytest.mark.parametrize("push_timeout,takes", [(30, 10.0), (75, 20.0), (5, 60.0), (12.5, 0.0)])
def test_push_wait_is_bounded_by_push_timeout(push_timeout, takes):
    run = Run(auth=[push_started()], status_default=WAITING, answers=["1"], status_takes=takes,
              settings=AuthSettings(prompts=1, push_timeout=push_timeout))
    assert run.result is Result.MAXTRIES
    assert run.clock.elapsed <= push_timeout + 1e-6
    assert run.clock.elapsed >= push_timeout - 0.25
    timeouts = [poll.args["timeout"] for poll in run.duo.named("auth_status")]
    # every long poll is given at most the time left
    assert timeouts and timeouts[0] <= push_timeout
    assert all(later < earlier for earlier, later in zip(timeouts, timeouts[1:]))
    if takes:
        for earlier, later in zip(timeouts, timeouts[1:]):
            assert earlier - later == pytest.approx(min(takes, earlier))
    else:
        # a server that answers at once is paced, not spun on
        assert len(timeouts) <= push_timeout / 0.2 + 2
        assert all(s <= 0.2 + 1e-9 for s in run.clock.sleeps)


def test_push_answered_after_a_slow_poll():
    run = Run(auth=[push_started()], status=[Slow(25.0, WAITING), Slow(10.0, APPROVED)], answers=["1"],
              settings=AuthSettings(push_timeout=60))
    assert run.result is Result.SUCCESS and run.clock.elapsed == pytest.approx(35.0)


def test_poll_that_times_out_at_the_deadline_counts_as_unanswered():
    run = Run(auth=[push_started(), PASSCODE_OK], status=[Slow(30.0, DuoTimeout("timed out"))],
              answers=["1", "123456"], settings=AuthSettings(push_timeout=30))
    assert run.result is Result.SUCCESS and len(run.ui.asked) == 2


def test_whole_interactive_login_is_bounded():
    settings = AuthSettings(prompts=3, push_timeout=40)
    run = Run(auth_default=lambda f, p: push_started(), status_default=WAITING, answers=["1", "2", "1"],
              status_takes=15.0, settings=settings)
    assert run.result is Result.MAXTRIES
    assert run.clock.elapsed <= settings.prompts * settings.push_timeout + 1e-6


# -- property: never raises, never shows control characters ------------------------------------

FORBIDDEN = {"\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def displayable(text: str) -> bool:
    return all(c == "\n" or (unicodedata.category(c) != "Cc" and c not in FORBIDDEN) for c in text)


any_text = st.text(max_size=200) | st.sampled_from(["\x1b[2J\x1b]0;pwned\x07", "a\r\nb", "\u202eevil", "\x00\x85\x9b"])
devices = st.builds(Device, device=st.text(min_size=1, max_size=20), type=st.sampled_from(["phone", "token", ""]),
                    label=any_text, capabilities=st.lists(st.sampled_from(["push", "phone", "sms", "mobile_otp"]),
                                                          unique=True).map(tuple))
preauths = st.one_of(
    st.builds(Preauth, result=st.just("auth"), status_msg=any_text, devices=st.lists(devices, max_size=6).map(tuple),
              txid=st.none() | st.text(max_size=20)),
    st.builds(Preauth, result=st.sampled_from(["allow", "deny"]), status_msg=any_text),
    st.builds(Preauth, result=st.just("enroll"), status_msg=any_text, enroll_portal_url=st.none() | any_text),
)
duo_errors = st.sampled_from([DuoUnavailable("x"), DuoTimeout("x"), DuoMalformedReply("x"), DuoRefused("x"),
                              DuoRateLimited("x"), DuoCredentialsRejected("x")])
sync_replies = st.one_of(
    st.fixed_dictionaries({"result": st.sampled_from(["allow", "deny"]), "status": any_text, "status_msg": any_text}),
    st.dictionaries(st.sampled_from(["result", "status", "status_msg", "txid"]), any_text | st.integers()),
    duo_errors,
)
async_replies = st.one_of(
    st.fixed_dictionaries({"txid": st.text(min_size=1, max_size=40)},
                          optional={"verification_code": any_text | st.integers()}),
    st.dictionaries(st.sampled_from(["txid", "verification_code", "result"]), any_text | st.none()),
    duo_errors,
)
status_replies = st.one_of(
    st.builds(AuthResult, result=st.sampled_from(["allow", "deny", "waiting"]),
              status=st.sampled_from(["allow", "deny", "fraud", "timeout", "pushed", "calling"]) | any_text,
              status_msg=any_text),
    duo_errors,
)
answers = st.lists(st.sampled_from(["", "1", "2", "3", "push", "phone2", "sms", "123456", "x", PASSWORD, EOF]) | any_text,
                   max_size=4)


@given(data=st.data(), preauth=preauths | duo_errors, answers=answers,
       settings=st.builds(AuthSettings, failmode=st.sampled_from(["secure", "safe"]), autopush=st.booleans(),
                          prompts=st.integers(1, 3), push_timeout=st.sampled_from([0.5, 5.0, 75.0]),
                          pushinfo=st.booleans(), pushinfo_command=st.booleans(), verified_push=st.booleans(),
                          accept_env_factor=st.booleans()),
       interactive=st.booleans(), env_passcode=st.none() | st.sampled_from(["123456", "push", "x"]),
       takes=st.sampled_from([0.0, 1.0, 30.0]))
def test_engine_never_raises_and_never_shows_control_characters(data, preauth, answers, settings, interactive,
                                                                env_passcode, takes):
    def auth(factor, params):
        return data.draw(sync_replies if params.get("async") == "0" else async_replies)

    def status(txid, timeout):
        return data.draw(status_replies)

    clock = FakeClock()
    duo = FakeDuo(preauth, auth_default=auth, status_default=status, clock=clock, status_takes=takes)
    ui = FakePrompter(answers, when_empty=EOF)
    engine = Engine(settings, duo, ui, clock=clock, sleep=clock.sleep)
    outcome = engine.run(login(interactive=interactive, env_passcode=env_passcode, command="cmd\x1b"))
    assert isinstance(outcome.result, Result)
    assert outcome.kind.value in ("success", "failure", "failsafe", "preauth_allow", "error")
    if outcome.result is Result.SUCCESS:
        assert outcome.kind.value in ("success", "failsafe", "preauth_allow")
        if outcome.kind is Kind.FAILSAFE:
            assert settings.failmode == "safe" and isinstance(preauth, DuoUnavailable)
        if outcome.kind is Kind.PREAUTH_ALLOW:
            assert isinstance(preauth, Preauth) and preauth.result == "allow"
    for text in ui.everything:
        assert displayable(text), repr(text)
    # bounded: every push waits at most push_timeout
    assert clock.elapsed <= (settings.prompts + 1) * settings.push_timeout + 1e-6
    assert len(ui.asked) <= 2 * settings.prompts  # attempts, plus at most `prompts` SMS requests
    # the password is never sent as a passcode
    assert all(c.args["params"].get("passcode") != PASSWORD for c in duo.auth_calls)
