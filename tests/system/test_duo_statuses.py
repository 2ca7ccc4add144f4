"""Real Duo's statuses through real libpam and pam_python.so, against the simulator playing
them as Duo does (docs/duo-statuses.md): a push Duo times out, a user Duo locks out, a user in
bypass mode, a push that could not be delivered, an unknown preauth result.

Each test maps a local test user to a fresh simulator user name (the simulator keeps
lock-outs per name), runs one login with pamdrive and checks the PAM code, exactly what the
user saw, what Duo was sent and the decision line. TRANSCRIPTS collects what the user saw;
test_zz_print_transcripts prints it (-s or -rP).
"""
from __future__ import annotations

import uuid

import pytest

from . import test_pam_scenarios as scn
from .conftest import PAM_AUTH_ERR, PAM_AUTHINFO_UNAVAIL, PAM_MAXTRIES, PAM_SUCCESS, default_map_lines
from .test_pam_scenarios import ALICE_MENU, MSG_PUSHED, MSG_SUCCESS, MSG_TOO_MANY, MSG_UNAVAILABLE, error, info

pytestmark = pytest.mark.system

harness = scn.harness  # the fixture, shared with the scenario tests

MSG_TIMED_OUT = "The login request was not answered in time."
MSG_PUSH_FAILED = "The push could not be delivered to your phone: open Duo Mobile to see and approve the request."
LOCKED_OUT = "Your account has been locked out due to excessive authentication failures."
TRANSCRIPTS: list[tuple[str, int, list[tuple[str, str]]]] = []


def fresh(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:8]}"


def mapped(duo_name: str, local: str = "pdt-alice") -> list[str]:
    return [line for line in default_map_lines() if not line.startswith(local + " ")] + [f"{local} {duo_name}"]


def menu(local: str = "pdt-alice") -> tuple[str, str]:
    return ("PROMPT_ECHO_ON", ALICE_MENU.replace("pdt-alice", local))


def keep(name: str, run) -> None:
    scn.record(name, "only-factor", run.code)
    TRANSCRIPTS.append((name, run.code, run.messages))


# ------------------------------------------------------------------ Duo ends an unanswered push
def test_push_duo_times_out_with_one_prompt_is_maxtries(harness) -> None:
    duo = fresh("pushtimeout-1s")
    case = harness.case("duo-timeout-1", "only-factor", auth={"prompts": 1, "push_timeout": 30},
                        map_lines=mapped(duo))
    run = case.run("pdt-alice", ["1", "123456"])
    keep("Duo timed out the push, prompts=1", run)
    assert run.code == PAM_MAXTRIES, run
    assert run.messages == [menu(), info(MSG_PUSHED), info(MSG_TIMED_OUT), info(MSG_TOO_MANY)]
    case.logged("failure", f"Failed Duo login for '{duo}'", factor="push",
                reason=lambda r: "timed out" in r and "denied" not in r)
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["push"]


def test_push_duo_times_out_then_a_valid_passcode(harness) -> None:
    duo = fresh("pushtimeout-1s")
    case = harness.case("duo-timeout-2", "only-factor", auth={"prompts": 2, "push_timeout": 30},
                        map_lines=mapped(duo))
    run = case.run("pdt-alice", ["1", "123456"])
    keep("Duo timed out the push, prompts=2, then a passcode", run)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [menu(), info(MSG_PUSHED), info(MSG_TIMED_OUT), menu(), info(MSG_SUCCESS)]
    case.logged("success", f"Successful Duo login for '{duo}'", factor="passcode")
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["push", "passcode"]


def test_remembered_login_survives_a_push_duo_timed_out(harness, test_root) -> None:
    state = test_root / "state-duo-statuses"
    state.mkdir(mode=0o700, exist_ok=True)
    for child in state.iterdir():
        child.unlink()
    remember = f'[remember]\nseconds = 300\nstate_dir = "{state}"\n'
    approved = harness.case("remember-ok", "only-factor", auth={"push_timeout": 30}, map_lines=mapped("alice"))
    timed_out = harness.case("remember-timeout", "only-factor", auth={"push_timeout": 30, "prompts": 1},
                             map_lines=mapped(fresh("pushtimeout-1s")))
    for case in (approved, timed_out):  # the same remember store for both services
        text = case.conf.read_text()
        case.conf.write_text(text.replace("[broker]", remember + "[broker]"))
    assert approved.run("pdt-alice", ["1"]).code == PAM_SUCCESS
    run = timed_out.run("pdt-alice", ["1"], rhost="198.51.100.7")
    keep("Duo timed out a push (another address), remember on", run)
    assert run.code == PAM_MAXTRIES, run
    again = approved.run("pdt-alice", [])
    assert again.code == PAM_SUCCESS, again
    assert approved.duo_requests("/auth/v2/auth") == []  # still remembered: no factor asked
    assert approved.audit_events()[-1]["factor"] == "remembered"


# ------------------------------------------------------------------ locked out
def test_locked_out_at_the_first_auth_ends_at_once(harness) -> None:
    duo = fresh("lockedout")
    case = harness.case("locked-out", "only-factor", map_lines=mapped(duo))
    run = case.run("pdt-alice", ["1", "1", "123456"])
    keep("Duo locked the user out (push)", run)
    assert run.code == PAM_AUTH_ERR, run
    assert run.messages == [menu(), info(MSG_PUSHED), error(LOCKED_OUT)]
    assert len(case.duo_requests("/auth/v2/auth")) == 1
    case.logged("failure", f"Failed Duo login for '{duo}'", duo_status="locked_out",
                reason=lambda r: "locked out" in r)


def test_locked_out_after_wrong_passcodes(harness) -> None:
    duo = fresh("lockout-2")
    case = harness.case("lockout-passcodes", "only-factor", auth={"prompts": 3}, map_lines=mapped(duo))
    run = case.run("pdt-alice", ["111111", "222222", "123456"])
    keep("Duo locked the user out after 2 wrong passcodes", run)
    assert run.code == PAM_AUTH_ERR, run
    assert run.messages == [menu(), info("Incorrect passcode. Please try again."), menu(), error(LOCKED_OUT)]
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["passcode", "passcode"]
    case.logged("failure", f"Failed Duo login for '{duo}'", duo_status="locked_out")
    # the next login is refused at preauth, as Duo refuses a locked-out user
    again = case.run("pdt-alice", ["1"])
    assert again.code == PAM_AUTH_ERR and again.messages == [error(LOCKED_OUT)], again


# ------------------------------------------------------------------ bypass, push_failed
def test_bypass_user_logs_in_logged_as_bypass(harness) -> None:
    duo = fresh("bypass")
    case = harness.case("bypass", "only-factor", map_lines=mapped(duo))
    run = case.run("pdt-alice", ["1"])
    keep("user in Duo bypass mode", run)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [menu(), info(MSG_PUSHED), info(MSG_SUCCESS)]
    case.logged("success", f"Successful Duo login for '{duo}'", factor="bypass", duo_status="bypass")


def test_push_failed_hint_then_success(harness) -> None:
    duo = fresh("pushfail")
    case = harness.case("pushfail", "only-factor", map_lines=mapped(duo))
    run = case.run("pdt-alice", ["1"])
    keep("push_failed, then approved", run)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [menu(), info(MSG_PUSHED), info("Push notification failed."), info(MSG_PUSH_FAILED),
                            info(MSG_SUCCESS)]
    case.logged("success", f"Successful Duo login for '{duo}'", factor="push")


def test_push_failed_without_a_tty_prints_nothing(harness) -> None:
    case = harness.case("pushfail-notty", "only-factor", map_lines=mapped(fresh("pushfail")))
    run = case.run("pdt-alice", [], tty=None)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [info(MSG_PUSHED), info(MSG_SUCCESS)]


# ------------------------------------------------------------------ fraud, SMS, statuses Duo may add
def test_push_reported_as_fraud_ends_at_once_logged_as_fraud(harness) -> None:
    case = harness.case("fraud", "only-factor")
    run = case.run("pdt-fraud", ["1", "1"])
    keep("push reported as fraud", run)
    assert run.code == PAM_AUTH_ERR, run
    assert run.messages == [menu("pdt-fraud"), info(MSG_PUSHED), error("Login request reported as fraudulent.")]
    case.logged("failure", "Failed Duo login for 'fraud'", factor="push", duo_status="fraud",
                reason="push reported as fraud")
    assert len(case.duo_requests("/auth/v2/auth")) == 1


def test_sms_sent_is_not_an_attempt(harness) -> None:
    case = harness.case("sms", "only-factor", auth={"prompts": 1})
    run = case.run("pdt-alice", ["3", "123456"])
    keep("SMS passcodes sent, then a passcode (prompts=1)", run)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [menu(), info("New SMS passcodes sent."), menu(), info(MSG_SUCCESS)]
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["sms", "passcode"]


def test_statuses_duo_may_add(harness) -> None:
    """deny with a status we do not know is one failed attempt; allow with one is a success."""
    duo = fresh("alice") + "+status-something_new@auth"
    case = harness.case("new-status", "only-factor", auth={"prompts": 2}, map_lines=mapped(duo))
    run = case.run("pdt-alice", ["111111", "123456"])
    keep("deny/unknown status, then allow/unknown status (passcodes)", run)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [menu(), info("Incorrect passcode. Please try again."), menu(), info(MSG_SUCCESS)]
    case.logged("success", f"Successful Duo login for '{duo}'", factor="passcode", duo_status="something_new")


# ------------------------------------------------------------------ preauth
def test_unknown_preauth_result_with_failmode_safe_is_authinfo_unavail(harness) -> None:
    duo = fresh("alice") + "+result-challenge@preauth"
    case = harness.case("unknown-result", "only-factor", auth={"failmode": "safe"}, map_lines=mapped(duo))
    run = case.run("pdt-alice", ["1"])
    keep("unknown preauth result, failmode safe", run)
    assert run.code == PAM_AUTHINFO_UNAVAIL, run
    assert run.messages == [error(MSG_UNAVAILABLE)]
    case.logged("error", "Error in Duo login for", reason=lambda r: "challenge" in r)
    assert case.duo_requests("/auth/v2/auth") == []


def test_zz_print_transcripts() -> None:
    """What the user saw in each login above (pytest shows it with -s or -rP)."""
    if not TRANSCRIPTS:
        pytest.skip("no login ran")
    lines = []
    for name, code, messages in TRANSCRIPTS:
        lines.append(f"== {name}: {scn.CODE_NAMES.get(code, code)}")
        for style, text in messages:
            shown = text if style != "PROMPT_ECHO_ON" or not text.startswith("Duo two-factor") else "<menu>"
            lines.append(f"   {style:<15} {shown!r}")
    print("\n" + "\n".join(lines))
