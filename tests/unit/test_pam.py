"""The pam_python entry points with a fake handle (docs/behaviour.md §3, §5).

FakePamh carries the real Linux-PAM constants, and formatting it (or its messages) raises and is
recorded: every test here also checks that no pam object was ever formatted.
"""
from __future__ import annotations

import os
import pwd

import pytest

import fakes
from fakes import (APPROVED, BAD_UTF8, CONV_BAD_UTF8, CONV_FAIL, DENIED, PASSCODE_BAD, PASSCODE_OK, FakeDuo,
                   FakePamh, PamException)
from pam_duo_py import pam
from pam_duo_py.login import InProcess
from pam_duo_py.paths import DEFAULT_CONFIG
from pam_duo_py.errors import ConversationError, DuoRateLimited, DuoUnavailable
from pam_duo_py.pam import PamPrompter, pam_sm_authenticate
from pam_duo_py.replies import Device, Preauth

try:
    ME = pwd.getpwuid(os.geteuid()).pw_name
except KeyError:  # pragma: no cover - a uid without a passwd entry
    pytest.skip("the current uid has no passwd entry", allow_module_level=True)
ENTRY = "/usr/local/lib/pam_duo_py/pam_duo.py"
PHONE = Device("DPHONE1", "phone", "XXX-XXX-1234", ("push", "phone", "sms"))
AUTH = Preauth("auth", "", devices=(PHONE,))
SUCCESS, SERVICE_ERR, AUTH_ERR, AUTHINFO_UNAVAIL, USER_UNKNOWN, MAXTRIES, CONV_ERR, IGNORE = 0, 3, 7, 9, 10, 11, 19, 25
ECHO_OFF, ECHO_ON, ERROR_MSG, TEXT_INFO = 1, 2, 3, 4


@pytest.fixture(autouse=True)
def nothing_formatted():
    fakes.FORMATTED.clear()
    yield
    assert fakes.FORMATTED == [], f"a pam object was formatted: {fakes.FORMATTED}"


@pytest.fixture
def conf(tmp_path):
    """Write a config file (0600 in a 0700 directory) and return the module arguments for it."""
    os.chmod(tmp_path, 0o700)

    def write(extra: str = "", *, mode: int = 0o600, text: str | None = None) -> list[str]:
        path = tmp_path / "pam_duo.toml"
        if text is None:
            text = ('[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "' + "S" * 40 + '"\nhost = "api-test.duosecurity.com"\n'
                    + f'[broker]\nsocket = "{tmp_path / "none.sock"}"\n' + extra)
        path.write_text(text)
        os.chmod(path, mode)
        return [ENTRY, f"conf={path}"]

    return write


class InjectedDuo:
    """The backend every login here is decided by: in-process, with ``fake`` as Duo.

    Never a broker that may run on this machine, never the network, and never the machine's
    own config: the default path stands for ``stand_in`` (a file that does not exist).
    """

    def __init__(self, stand_in: str) -> None:
        self.fake = FakeDuo(Preauth("allow", "Allowing unknown user"))
        self.made = 0
        self.stand_in = stand_in
        self.configs: list[str] = []  # the config path each login asked for

    def factory(self, settings):
        self.made += 1
        return self.fake

    def choose(self, conf: str, debug: bool, duo_factory=None) -> InProcess:
        self.configs.append(conf)
        path = self.stand_in if conf == DEFAULT_CONFIG else conf
        return InProcess(path, debug=debug, duo_factory=duo_factory or self.factory)


@pytest.fixture
def duo(tmp_path):
    """The injected in-process backend (set ``.fake`` to script Duo)."""
    return InjectedDuo(str(tmp_path / "no-default.toml"))


@pytest.fixture
def authenticate(duo):
    """authenticate(pamh, argv, flags=0, duo_factory=None) -> PAM code, through pam_sm_authenticate."""

    def run(pamh, argv, flags=0, duo_factory=None):
        rc = pam_sm_authenticate(pamh, flags, argv, choose=lambda conf, debug: duo.choose(conf, debug, duo_factory))
        assert type(rc) is int
        return rc

    return run


# -- configuration errors --------------------------------------------------------------------

@pytest.mark.parametrize("args", [["bogus"], ["conf="], ["debug", "nullok"], ["Conf=/x"], ["conf"]])
def test_unknown_module_argument_is_a_service_error(authenticate, conf, duo, syslog_lines, args):
    argv = conf()[:1] + args
    pamh = FakePamh(user=ME, answers=["1"])
    rc = authenticate(pamh, argv)
    assert rc == SERVICE_ERR
    assert pamh.messages == [] and duo.made == 0
    assert any("invalid module argument" in text for _, text in syslog_lines)


def test_debug_argument_is_accepted(authenticate, conf, duo):
    argv = conf() + ["debug"]
    rc = authenticate(FakePamh(user=ME), argv)
    assert rc == SUCCESS


def test_missing_config_is_a_service_error(authenticate, tmp_path, duo, syslog_lines):
    missing = tmp_path / "missing.toml"
    pamh = FakePamh(user=ME, answers=["1"])
    rc = authenticate(pamh, [ENTRY, f"conf={missing}"])
    assert rc == SERVICE_ERR
    assert duo.made == 0 and pamh.messages == []
    assert any(str(missing) in text for _, text in syslog_lines)


def test_bad_config_fails_closed_even_with_failmode_safe(authenticate, conf, duo):
    argv = conf('[auth]\nfailmode = "safe"\nprompts = 99\n')
    rc = authenticate(FakePamh(user=ME), argv)
    assert rc == SERVICE_ERR
    argv = conf(text='[auth]\nfailmode = "safe"\n[duo\n')
    rc = authenticate(FakePamh(user=ME), argv)
    assert rc == SERVICE_ERR
    assert duo.made == 0


def test_config_readable_by_others_is_a_service_error(authenticate, conf, duo):
    rc = authenticate(FakePamh(user=ME), conf(mode=0o644))
    assert rc == SERVICE_ERR
    assert duo.made == 0


# -- the user ----------------------------------------------------------------------------------

@pytest.mark.parametrize("user", [BAD_UTF8, None, "", PamException("Conversation error", 19)])
def test_user_that_cannot_be_read_is_unknown(authenticate, conf, duo, user):
    rc = authenticate(FakePamh(user=user), conf())
    assert rc == USER_UNKNOWN
    assert duo.made == 0


def test_unknown_local_user(authenticate, conf, duo):
    rc = authenticate(FakePamh(user="no-such-user-pdp-7f3a"), conf())
    assert rc == USER_UNKNOWN
    assert duo.made == 0


# -- nothing escapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyboardInterrupt(), SystemExit(0), MemoryError(),
                                 UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")])
def test_an_exception_anywhere_inside_is_a_service_error(authenticate, conf, syslog_lines, exc):
    def broken(settings):  # raises deep inside the in-process login
        raise exc

    rc = authenticate(FakePamh(user=ME), conf(), duo_factory=broken)
    assert rc == SERVICE_ERR
    assert any("internal error" in text for _, text in syslog_lines)


def test_without_conf_the_default_path_is_used(authenticate, duo, syslog_lines, tmp_path):
    rc = authenticate(FakePamh(user=ME), [ENTRY])
    assert rc == SERVICE_ERR
    assert duo.configs == [DEFAULT_CONFIG]  # read from the stand-in below, never the machine's own
    assert any(str(tmp_path / "no-default.toml") in text for _, text in syslog_lines)


def test_garbage_arguments_do_not_escape(duo):
    rc = pam_sm_authenticate(FakePamh(user=ME), None, None, choose=duo.choose)
    assert rc in (SERVICE_ERR, USER_UNKNOWN)
    rc = pam_sm_authenticate(FakePamh(user=ME), "x", [ENTRY, 3, b"conf=/x"], choose=duo.choose)
    assert rc in (SERVICE_ERR, USER_UNKNOWN)


def test_other_entry_points():
    pamh = FakePamh(user=ME)
    assert pam.pam_sm_setcred(pamh, 0, [ENTRY]) == SUCCESS
    for entry in (pam.pam_sm_acct_mgmt, pam.pam_sm_open_session, pam.pam_sm_close_session, pam.pam_sm_chauthtok):
        rc = entry(pamh, 0, [ENTRY])
        assert rc == IGNORE and type(rc) is int


def test_results_are_read_from_the_handle():
    class Odd(FakePamh):
        PAM_IGNORE = 1025

    assert pam.pam_sm_acct_mgmt(Odd(user=ME), 0, [ENTRY]) == 1025


# -- full logins with a scripted Duo -----------------------------------------------------------

def test_preauth_allow(authenticate, conf, duo, syslog_lines):
    pamh = FakePamh(user=ME, service="sshd", rhost="203.0.113.5", tty="ssh")
    rc = authenticate(pamh, conf())
    assert rc == SUCCESS
    assert pamh.messages == []
    assert duo.fake.calls[0].args["ipaddr"] == "203.0.113.5"
    assert any(text.startswith(f"Skipped Duo login for '{ME}' from 203.0.113.5") for _, text in syslog_lines)


def test_push_approved(authenticate, conf, duo, syslog_lines):
    duo.fake = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[APPROVED])
    pamh = FakePamh(user=ME, service="sshd", rhost="[2001:db8::5]", tty="ssh", answers=["1"])
    rc = authenticate(pamh, conf())
    assert rc == SUCCESS
    assert pamh.messages[0][0] == ECHO_ON and pamh.messages[0][1].startswith(f"Duo two-factor login for {ME}")
    assert (TEXT_INFO, "Pushed a login request to your device...") in pamh.messages
    assert pamh.messages[-1] == (TEXT_INFO, "Success. Logging you in...")
    assert ECHO_OFF not in [style for style, _ in pamh.messages]
    assert duo.fake.calls[0].args["ipaddr"] == "2001:db8::5"
    assert duo.fake.closed == 1
    assert any(text.startswith(f"Successful Duo login for '{ME}' from [2001:db8::5]") for _, text in syslog_lines)


def test_silent_flag_suppresses_info_messages(authenticate, conf, duo):
    duo.fake = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[APPROVED])
    pamh = FakePamh(user=ME, service="sudo", tty="/dev/pts/1", answers=["1"])
    rc = authenticate(pamh, conf(), flags=FakePamh.PAM_SILENT)
    assert rc == SUCCESS
    assert [style for style, _ in pamh.messages] == [ECHO_ON]


def test_deny_under_sshd_rides_in_a_prompt(authenticate, conf, duo):
    duo.fake = FakeDuo(Preauth("deny", "Your account is disabled."))
    pamh = FakePamh(user=ME, service="sshd", tty="ssh", answers=[""])
    rc = authenticate(pamh, conf())
    assert rc == AUTH_ERR
    ((style, text),) = pamh.messages
    assert style == ECHO_ON and "Your account is disabled." in text and "Press Enter" in text


def test_deny_under_sudo_is_an_error_message(authenticate, conf, duo):
    duo.fake = FakeDuo(Preauth("deny", "Your account is disabled."))
    pamh = FakePamh(user=ME, service="sudo", tty="/dev/pts/1")
    rc = authenticate(pamh, conf())
    assert rc == AUTH_ERR
    assert pamh.messages == [(ERROR_MSG, "Your account is disabled.")]


def test_push_denied(authenticate, conf, duo):
    duo.fake = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[DENIED])
    pamh = FakePamh(user=ME, service="sudo", tty="/dev/pts/1", answers=["1", "123456"])
    rc = authenticate(pamh, conf())
    assert rc == AUTH_ERR
    assert len(pamh.texts(ECHO_ON)) == 1


@pytest.mark.parametrize("failmode,expected", [("secure", AUTHINFO_UNAVAIL), ("safe", SUCCESS)])
def test_duo_unreachable(authenticate, conf, duo, syslog_lines, failmode, expected):
    duo.fake = FakeDuo(DuoUnavailable("connection refused"))
    pamh = FakePamh(user=ME, service="sudo", tty="/dev/pts/1")
    rc = authenticate(pamh, conf(f'[auth]\nfailmode = "{failmode}"\n'))
    assert rc == expected
    if failmode == "safe":
        assert any(text.startswith(f"Failsafe Duo login for '{ME}'") for _, text in syslog_lines)


@pytest.mark.parametrize("failmode", ["secure", "safe"])
def test_rate_limited_never_fails_open(authenticate, conf, duo, failmode):
    duo.fake = FakeDuo(DuoRateLimited("HTTP 429", status=429))
    rc = authenticate(FakePamh(user=ME, tty="ssh"), conf(f'[auth]\nfailmode = "{failmode}"\n'))
    assert rc == AUTHINFO_UNAVAIL


@pytest.mark.parametrize("failmode", ["secure", "safe"])
def test_failure_after_preauth_is_auth_err(authenticate, conf, duo, failmode):
    duo.fake = FakeDuo(AUTH, auth=[DuoUnavailable("reset")])
    pamh = FakePamh(user=ME, service="sudo", tty="/dev/pts/1", answers=["1"])
    rc = authenticate(pamh, conf(f'[auth]\nfailmode = "{failmode}"\n'))
    assert rc == AUTH_ERR


def test_attempts_used_up(authenticate, conf, duo, syslog_lines):
    duo.fake = FakeDuo(AUTH, auth_default=PASSCODE_BAD)
    pamh = FakePamh(user=ME, service="sudo", tty="/dev/pts/1", answers=["111111", "222222", "333333"])
    rc = authenticate(pamh, conf())
    assert rc == MAXTRIES
    assert len(pamh.texts(ECHO_ON)) == 3
    assert any(text.startswith(f"Failed Duo login for '{ME}'") for _, text in syslog_lines)
    assert not any("111111" in text for _, text in syslog_lines)


@pytest.mark.parametrize("answer", [CONV_FAIL, CONV_BAD_UTF8, None])
def test_conversation_failure_at_the_prompt(authenticate, conf, duo, answer):
    duo.fake = FakeDuo(AUTH)
    pamh = FakePamh(user=ME, service="sudo", tty="/dev/pts/1", answers=[answer])
    rc = authenticate(pamh, conf())
    assert rc == CONV_ERR
    assert duo.fake.auth_calls == []


def test_eof_at_the_prompt(authenticate, conf, duo):
    duo.fake = FakeDuo(AUTH)
    pamh = FakePamh(user=ME, service="sshd", tty="ssh", answers=[])
    rc = authenticate(pamh, conf())
    assert rc == CONV_ERR


def test_exempt_user_is_ignored(authenticate, conf, duo, syslog_lines):
    pamh = FakePamh(user=ME, service="sshd", tty="ssh")
    rc = authenticate(pamh, conf('[users]\ngroups = ["pdp-nonexistent-group-*"]\n'))
    assert rc == IGNORE
    assert duo.made == 0
    assert any("bypassed Duo 2FA" in text for _, text in syslog_lines)


def test_the_password_in_the_stack_is_never_sent(authenticate, conf, duo):
    duo.fake = FakeDuo(AUTH, auth=[PASSCODE_OK])
    pamh = FakePamh(user=ME, service="sshd", tty="ssh", authtok="98765432", answers=["98765432", " 98765432", "123456"])
    rc = authenticate(pamh, conf())
    assert rc == SUCCESS
    assert "98765432" not in duo.fake.sent_strings()
    assert [c.args["params"]["passcode"] for c in duo.fake.auth_calls] == ["123456"]


def test_items_that_are_not_utf8_are_treated_as_unset(authenticate, conf, duo):
    duo.fake = FakeDuo(AUTH, auth=[PASSCODE_OK])
    pamh = FakePamh(user=ME, service="sshd", tty="ssh", rhost=BAD_UTF8, authtok=BAD_UTF8, answers=["123456"])
    rc = authenticate(pamh, conf())
    assert rc == SUCCESS
    assert duo.fake.calls[0].args["ipaddr"] is None


def test_non_interactive_sudo_pushes_once_without_prompting(authenticate, conf, duo):
    duo.fake = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[APPROVED])
    pamh = FakePamh(user=ME, service="sudo", tty=None)
    rc = authenticate(pamh, conf())
    assert rc == SUCCESS
    assert pamh.texts(ECHO_ON) == [] and duo.fake.factors == ["push"]


# -- the backend -------------------------------------------------------------------------------

def test_the_backend_is_chosen_by_the_effective_uid():
    backend = pam.choose_backend("/etc/x.toml", True)
    if os.geteuid() == 0:  # a broker first, then this process
        assert isinstance(backend, pam.BrokerFirst) and backend.default_socket == pam.DEFAULT_SOCKET
        backend = backend.local
    assert isinstance(backend, InProcess) and (backend.config_path, backend.debug) == ("/etc/x.toml", True)


def test_without_a_broker_the_login_is_decided_in_process(conf, duo, tmp_path, syslog_lines):
    def broker_first(config_path, debug):
        return pam.BrokerFirst(config_path, lambda: duo.choose(config_path, debug), str(tmp_path / "no-broker.sock"))

    rc = pam_sm_authenticate(FakePamh(user=ME, service="sshd", tty="ssh"), 0, conf(), choose=broker_first)
    assert rc == SUCCESS and duo.made == 1
    assert any(text.startswith(f"Skipped Duo login for '{ME}'") for _, text in syslog_lines)


# -- PamPrompter -------------------------------------------------------------------------------

def test_prompter_ask_uses_an_echoed_prompt():
    pamh = FakePamh(answers=["1"])
    assert PamPrompter(pamh, silent=False, holds_info=False).ask("Passcode or option (1-3): ") == "1"
    assert pamh.messages == [(ECHO_ON, "Passcode or option (1-3): ")]


@pytest.mark.parametrize("answer", [CONV_FAIL, CONV_BAD_UTF8, None])
def test_prompter_maps_conversation_failures_to_conversation_error(answer):
    pamh = FakePamh(answers=[answer])
    with pytest.raises(ConversationError):
        PamPrompter(pamh, silent=False, holds_info=False).ask("?")


def test_prompter_show_is_text_info_unless_silent():
    pamh = FakePamh()
    PamPrompter(pamh, silent=False, holds_info=False).show("Pushed")
    PamPrompter(pamh, silent=True, holds_info=False).show("hidden")
    PamPrompter(pamh, silent=False, holds_info=False).show("")
    assert pamh.messages == [(TEXT_INFO, "Pushed")]


def test_prompter_alert_outside_sshd_is_an_error_message():
    pamh = FakePamh()
    PamPrompter(pamh, silent=False, holds_info=False).alert("Denied")
    assert pamh.messages == [(ERROR_MSG, "Denied")]


def test_prompter_alert_under_sshd_is_an_echoed_prompt():
    pamh = FakePamh(answers=[""])
    PamPrompter(pamh, silent=False, holds_info=True).alert("Verification code: 123")
    ((style, text),) = pamh.messages
    assert style == ECHO_ON and text.startswith("Verification code: 123\n") and "Press Enter" in text


def test_prompter_show_and_alert_survive_a_failing_conversation():
    class Failing(FakePamh):
        def conversation(self, messages):
            self.messages.append((messages.msg_style, messages.msg))
            raise PamException("Conversation error", 19)

    pamh = Failing()
    PamPrompter(pamh, silent=False, holds_info=False).show("x")
    PamPrompter(pamh, silent=False, holds_info=False).alert("y")
    PamPrompter(pamh, silent=False, holds_info=True).alert("z")
    assert len(pamh.messages) == 3


def test_fake_handle_really_refuses_to_be_formatted():
    pamh = FakePamh()
    for formatter in (repr, str, lambda o: f"{o}", lambda o: "%s" % (o,)):
        with pytest.raises(fakes.PamObjectFormatted):
            formatter(pamh)
    with pytest.raises(fakes.PamObjectFormatted):
        repr(type(pamh))
    with pytest.raises(fakes.PamObjectFormatted):
        repr(pamh.Message(2, "x"))
    with pytest.raises(fakes.PamObjectFormatted):
        str(pamh.Response("x", 0))
    fakes.FORMATTED.clear()


def test_configuration_and_internal_errors_are_events(authenticate, conf, tmp_path, duo, captured_events):
    authenticate(FakePamh(user=ME), [ENTRY, "bogus"])
    missing = tmp_path / "missing.toml"
    authenticate(FakePamh(user=ME), [ENTRY, f"conf={missing}"])
    authenticate(FakePamh(user=ME), conf(), duo_factory=lambda settings: 1 / 0)
    notes = [(e["note"], e["text"]) for e in captured_events]
    assert notes[0] == ("config_error", "PAM line: invalid module argument 'bogus'")
    assert notes[1][0] == "config_error" and str(missing) in notes[1][1]
    assert notes[-1][0] == "internal_error" and "ZeroDivisionError" in notes[-1][1]
