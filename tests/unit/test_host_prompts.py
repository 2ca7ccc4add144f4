"""What differs per host program in what the user is told (docs/behaviour.md §6): the menu's notice
under sshd, alerts that PAM_SILENT does not hide, and su's caller through the broker."""
from __future__ import annotations

import pytest

from fakes import APPROVED, PASSCODE_OK, FakeClock, FakeDuo, FakePamh, FakePrompter
from pam_duo_py.broker_trust import _caller_uid
from pam_duo_py.config import AuthSettings, DuoIdentity
from pam_duo_py.engine import MSG_SSHD_NOTICE, Engine, Login, Result
from pam_duo_py.login import profile
from pam_duo_py.pam import PamPrompter
from pam_duo_py.replies import Device, Preauth

PHONE = Device("DPHONE1", "phone", "XXX-XXX-1234", ("push", "phone", "sms"))
SMS_ONLY = Device("DPHONE2", "phone", "XXX-XXX-5678", ("sms",))
TOKEN = Device("DTOKEN", "token", "Token", ())
ECHO_ON, ERROR_MSG, TEXT_INFO = FakePamh.PAM_PROMPT_ECHO_ON, FakePamh.PAM_ERROR_MSG, FakePamh.PAM_TEXT_INFO


def run(service: str, devices, answers=("1",)) -> FakePrompter:
    clock = FakeClock()
    auth = [PASSCODE_OK] if answers[0].isdigit() and len(answers[0]) > 2 else [{"txid": "TX1"}]
    duo = FakeDuo(Preauth("auth", "", devices=tuple(devices)), auth, [APPROVED], clock=clock)
    ui = FakePrompter(list(answers))
    login = Login(user="alice", identity=DuoIdentity(username="alice"), service=service, interactive=True,
                  tty="ssh" if service.startswith("sshd") else "/dev/pts/1",
                  holds_info_messages=profile(service).holds_info_messages)
    outcome = Engine(AuthSettings(), duo, ui, clock=clock, sleep=clock.sleep).run(login)
    assert outcome.result is Result.SUCCESS
    return ui


@pytest.mark.parametrize("service", ["sshd", "sshd-pdt-host"])
def test_under_sshd_the_menu_says_what_happens_on_answering(service):
    ui = run(service, [PHONE, TOKEN])
    lines = ui.asked[0].split("\n")
    assert lines[-2:] == [MSG_SSHD_NOTICE, "Passcode or option (1-3): "]
    assert lines[-3] == ""  # the blank line after the options stays in place
    assert ui.asked[0].startswith("Duo two-factor login for alice\n")


@pytest.mark.parametrize("service", ["sudo", "su", "login", "pam-duo-login"])
def test_elsewhere_the_menu_is_the_plain_one(service):
    ui = run(service, [PHONE, TOKEN])
    assert MSG_SSHD_NOTICE not in ui.asked[0]
    assert ui.asked[0].endswith("\n\nPasscode or option (1-3): ")


def test_no_notice_when_nothing_would_contact_the_phone():
    ui = run("sshd", [SMS_ONLY, TOKEN], answers=("123456",))
    assert MSG_SSHD_NOTICE not in ui.asked[0]
    ui = run("sshd", [TOKEN], answers=("123456",))
    assert ui.asked[0] == "Duo two-factor login for alice\n\nPasscode: "


def test_silent_hides_status_lines_but_never_an_alert():
    """sudo always sets PAM_SILENT; a Verified Push code or a refusal's reason must still show."""
    pamh = FakePamh()
    prompter = PamPrompter(pamh, silent=True, holds_info=False)
    prompter.show("Pushed a login request to your device...")
    prompter.alert("Verification code: 123")
    assert pamh.messages == [(ERROR_MSG, "Verification code: 123")]


def test_silent_under_sshd_still_prompts_for_an_alert():
    pamh = FakePamh(answers=[""])
    PamPrompter(pamh, silent=True, holds_info=True).alert("Login request denied.")
    assert pamh.messages == [(ECHO_ON, "Login request denied.\nPress Enter to continue.")]


@pytest.mark.parametrize("value,expected", [(1000, 1000), (0, 0), (None, 0), ("1000", 0), (True, 0),
                                            (-1, 0), (2**32, 0), (1.5, 0)])
def test_the_broker_takes_the_callers_uid_only_as_a_plain_number(value, expected):
    message = {"type": "login", "user": "root"}
    if value is not None:
        message["caller_uid"] = value
    assert _caller_uid(message) == expected
