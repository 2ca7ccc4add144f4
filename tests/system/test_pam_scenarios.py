"""Login scenarios through real libpam and the real pam_python.so (docs/behaviour.md §3, §5, §6, §8).

Every test writes its own PAM service (/etc/pam.d/pdt-scn-*) with one of the
canonical stacks of docs/behaviour.md §3, drives it with pamdrive against the local Duo
simulator and checks three things: the PAM code, what the user saw (prompts,
TEXT_INFO and ERROR_MSG lines) and the decision line in the log (syslog when
this test run owns /dev/log, and always the JSON-lines audit file).

The codes observed are collected into a table "scenario | stack | PAM code"
that test_zz_print_table prints (visible with -s or -rP) and writes to
$PDT_REPORT_DIR/scenarios.txt when that variable is set.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from .conftest import (
    PAM_AUTH_ERR,
    PAM_AUTHINFO_UNAVAIL,
    PAM_CONV_ERR,
    PAM_IGNORE,
    PAM_MAXTRIES,
    PAM_PERM_DENIED,
    PAM_SERVICE_ERR,
    PAM_SUCCESS,
    PAM_USER_UNKNOWN,
    STACK_AFTER_PASSWORD,
    STACK_ONLY_FACTOR,
    STACK_SECOND_FACTOR,
    PamRun,
    default_map_lines,
)

pytestmark = pytest.mark.system

TTY = "/dev/pts/9"
RHOST = "203.0.113.5"

# The two canonical stacks of docs/behaviour.md §3 (the test version of "after the password" leaves the
# password module out, so it is a lone "auth required"), plus the real after-password stack.
STACKS = {
    "second-factor": STACK_SECOND_FACTOR,
    "only-factor": STACK_ONLY_FACTOR,
    "after-password": STACK_AFTER_PASSWORD,
}
CANONICAL = ["second-factor", "only-factor"]

CODE_NAMES = {
    PAM_SUCCESS: "PAM_SUCCESS", PAM_SERVICE_ERR: "PAM_SERVICE_ERR", PAM_PERM_DENIED: "PAM_PERM_DENIED",
    PAM_AUTH_ERR: "PAM_AUTH_ERR", PAM_AUTHINFO_UNAVAIL: "PAM_AUTHINFO_UNAVAIL",
    PAM_USER_UNKNOWN: "PAM_USER_UNKNOWN", PAM_MAXTRIES: "PAM_MAXTRIES", PAM_CONV_ERR: "PAM_CONV_ERR",
    PAM_IGNORE: "PAM_IGNORE",
}

MSG_PUSHED = "Pushed a login request to your device..."
MSG_SUCCESS = "Success. Logging you in..."
MSG_UNAVAILABLE = "Duo two-factor authentication is unavailable; login refused."
MSG_TOO_MANY = "Too many failed attempts."

# The menu for the simulator's default user (two phones and a token), in duo_unix's shape.
ALICE_MENU = "\n".join([
    "Duo two-factor login for pdt-alice",
    "",
    "Enter a passcode or select one of the following options:",
    "",
    " 1. Duo Push to XXX-XXX-1234",
    " 2. Phone call to XXX-XXX-1234",
    " 3. SMS passcodes to XXX-XXX-1234",
    " 4. Duo Push to XXX-XXX-5678",
    " 5. Phone call to XXX-XXX-5678",
    "",
    "Passcode or option (1-5): ",
])

ROWS: list[tuple[str, str, str]] = []
SYSLOG_CHECKED: list[str] = []  # services whose syslog line was checked (needs this run to own /dev/log)


def record(scenario: str, stack: str, code: int) -> None:
    ROWS.append((scenario, stack, CODE_NAMES.get(code, str(code))))


def info(text: str) -> tuple[str, str]:
    return ("TEXT_INFO", text)


def error(text: str) -> tuple[str, str]:
    return ("ERROR_MSG", text)


def menu(text: str = ALICE_MENU) -> tuple[str, str]:
    return ("PROMPT_ECHO_ON", text)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def dead_duo_port() -> Iterator[int]:
    """A loopback port that is bound but never listens: Duo "stopped", connection refused at once.

    Faster than stopping and restarting the shared simulator, and it cannot leave the
    simulator down for the tests that follow when an assertion fails."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@dataclass
class Case:
    """One PAM service with its config, audit file and the log marks taken before the run."""

    service: str
    stack: str
    conf: Path
    audit: Path
    harness: "Harness"
    sim_mark: int = 0
    log_mark: int = 0

    def run(self, user: str, answers=(), tty: Optional[str] = TTY, rhost: Optional[str] = RHOST,
            **kw) -> PamRun:
        self.sim_mark = self.harness.simulator.mark()
        self.log_mark = self.harness.syslog.mark()
        result = self.harness.run_pam(self.service, user, answers, tty=tty, rhost=rhost, **kw)
        assert not result.crashed, result
        return result

    # -- what Duo saw
    def duo_requests(self, path: Optional[str] = None) -> list[dict]:
        events = [e for e in self.harness.simulator.requests(since=self.sim_mark) if e.get("event") == "request"]
        return [e for e in events if path is None or e.get("path") == path]

    # -- what was logged
    def audit_events(self) -> list[dict]:
        try:
            text = self.audit.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        skey = str(self.harness.simulator.duo_settings()["skey"])
        assert skey not in text, "the audit file holds the skey"
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def logged(self, outcome: str, syslog_text: str, **fields) -> dict:
        """Assert the decision was logged: one audit line with ``outcome`` and ``fields``, and
        (when this run owns /dev/log) a syslog line of this service containing ``syslog_text``."""
        events = self.audit_events()
        assert len(events) == 1, events
        event = events[0]
        assert event["outcome"] == outcome, event
        assert event["service"] == self.service, event
        for key, value in fields.items():
            if callable(value):
                assert value(event.get(key)), (key, event)
            else:
                assert event.get(key) == value, (key, event)
        if self.harness.syslog.available:
            line = self.harness.syslog.wait_for(
                lambda l: f"service={self.service}" in l and "pam_duo_py[" in l, timeout=5, since=self.log_mark)
            assert line is not None, f"no syslog line for {self.service}: {self.harness.syslog.lines()[self.log_mark:]}"
            assert syslog_text in line, line
            assert str(self.harness.simulator.duo_settings()["skey"]) not in line
            SYSLOG_CHECKED.append(self.service)
        return event

    def config_error_logged(self, fragment: str) -> None:
        """A config error never reaches the audit file (the config names it); check syslog."""
        assert self.audit_events() == []
        if not self.harness.syslog.available:
            return  # another test run owns /dev/log: the PAM code is all there is to check
        line = self.harness.syslog.wait_for(
            lambda l: "configuration error" in l and str(self.conf) in l, timeout=5, since=self.log_mark)
        assert line is not None, self.harness.syslog.lines()[self.log_mark:]
        assert fragment in line, line
        SYSLOG_CHECKED.append(self.service)


@dataclass
class Harness:
    simulator: object
    syslog: object
    run_pam: Callable[..., PamRun]
    write_config: Callable[..., Path]
    write_map_file: Callable[..., Path]
    pam_service: Callable[..., Path]
    test_root: Path

    def case(self, name: str, stack: str, *, auth: Optional[dict] = None, duo: Optional[dict] = None,
             users: Optional[dict] = None, map_lines: Optional[list[str]] = None) -> Case:
        service = f"pdt-scn-{name}-{stack}"
        audit = self.test_root / f"audit-{service}.jsonl"
        if audit.exists():
            audit.unlink()
        users = dict(users or {})
        users.setdefault("map_file", str(self.write_map_file(map_lines)))
        conf = self.write_config(
            service, duo=duo, auth=auth, users=users, log={"audit_file": str(audit)},
            # a broker another test run may have started must never take these logins
            extra_text=f'[broker]\nsocket = "{self.test_root / "no-broker.sock"}"\n',
        )
        self.pam_service(service, STACKS[stack], conf=conf)
        return Case(service=service, stack=stack, conf=conf, audit=audit, harness=self)


@pytest.fixture
def harness(installed, simulator, test_users, syslog_capture, run_pam, write_config, write_map_file,
            pam_service, test_root) -> Harness:
    return Harness(simulator, syslog_capture, run_pam, write_config, write_map_file, pam_service, test_root)


# ------------------------------------------------------------------ preauth answers
@pytest.mark.parametrize("stack", CANONICAL)
def test_allow(harness: Harness, stack: str) -> None:
    case = harness.case("allow", stack)
    run = case.run("pdt-allow", ["1"])
    record("allow", stack, run.code)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == []
    case.logged("preauth_allow", "Skipped Duo login for 'allow' from 203.0.113.5: Allowing unknown user",
                user="pdt-allow", duo_user="allow", rhost=RHOST, tty=TTY)


@pytest.mark.parametrize("stack", CANONICAL)
def test_deny(harness: Harness, stack: str) -> None:
    case = harness.case("deny", stack)
    run = case.run("pdt-deny", ["1"])
    record("deny", stack, run.code)
    assert run.code == PAM_AUTH_ERR, run
    assert run.messages == [error("Your account is disabled. Contact your administrator.")]
    case.logged("failure", "Aborted Duo login for 'deny' from 203.0.113.5", duo_status="deny")
    assert case.duo_requests("/auth/v2/auth") == []


@pytest.mark.parametrize("stack", CANONICAL)
def test_enroll(harness: Harness, stack: str) -> None:
    case = harness.case("enroll", stack)
    run = case.run("pdt-enroll", ["1"])
    record("enroll", stack, run.code)
    assert run.code == PAM_AUTH_ERR, run
    assert run.prompts == []
    assert len(run.messages) == 1 and run.messages[0][0] == "ERROR_MSG", run.messages
    assert run.messages[0][1].startswith("You must enroll in Duo before you can log in. "
                                         "Enroll at: https://localhost/portal?code="), run.messages
    case.logged("failure", "Aborted Duo login for 'enroll' from 203.0.113.5", duo_status="enroll",
                reason="enrollment required")


# ------------------------------------------------------------------ the second factor
@pytest.mark.parametrize("stack", CANONICAL)
def test_push_approved(harness: Harness, stack: str) -> None:
    case = harness.case("push", stack)
    run = case.run("pdt-alice", ["1"])
    record("push approved", stack, run.code)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [menu(), info(MSG_PUSHED), info(MSG_SUCCESS)]
    case.logged("success", "Successful Duo login for 'alice' from 203.0.113.5", factor="push",
                txid=lambda v: isinstance(v, str) and len(v) > 10)
    pushes = case.duo_requests("/auth/v2/auth")
    assert [(r["factor"], r["username"]) for r in pushes] == [("push", "alice")]


@pytest.mark.parametrize("stack", CANONICAL)
def test_push_denied(harness: Harness, stack: str) -> None:
    case = harness.case("pushdeny", stack)
    run = case.run("pdt-pushdeny", ["1", "1", "1"])
    record("push denied", stack, run.code)
    assert run.code == PAM_AUTH_ERR, run
    # a denied push ends the login at once: no second prompt
    assert run.messages == [menu(ALICE_MENU.replace("pdt-alice", "pdt-pushdeny")), info(MSG_PUSHED),
                            error("Login request denied.")]
    case.logged("failure", "Failed Duo login for 'pushdeny' from 203.0.113.5", factor="push",
                reason="push denied by the user")
    assert len(case.duo_requests("/auth/v2/auth")) == 1


@pytest.mark.parametrize("stack", CANONICAL)
def test_passcode_valid(harness: Harness, stack: str) -> None:
    case = harness.case("passcode", stack)
    run = case.run("pdt-alice", ["123456"])
    record("passcode valid", stack, run.code)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [menu(), info(MSG_SUCCESS)]
    case.logged("success", "Successful Duo login for 'alice' from 203.0.113.5", factor="passcode")
    assert "123456" not in case.audit.read_text(), "a passcode was logged"
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["passcode"]


@pytest.mark.parametrize("stack", CANONICAL)
def test_passcode_invalid_until_attempts_used_up(harness: Harness, stack: str) -> None:
    case = harness.case("badpasscode", stack, auth={"prompts": 3})
    run = case.run("pdt-alice", ["000000"] * 5)
    record("passcode invalid x prompts", stack, run.code)
    assert run.code == PAM_MAXTRIES, run
    wrong = info("Incorrect passcode. Please try again.")
    assert run.messages == [menu(), wrong] * 3 + [info(MSG_TOO_MANY)]
    case.logged("failure", "Failed Duo login for 'alice' from 203.0.113.5",
                reason=lambda r: r.startswith("attempts used up"))
    assert "000000" not in case.audit.read_text()
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["passcode"] * 3


@pytest.mark.parametrize("stack", CANONICAL)
def test_autopush(harness: Harness, stack: str) -> None:
    case = harness.case("autopush", stack, auth={"autopush": True})
    run = case.run("pdt-alice", ["1"])
    record("autopush", stack, run.code)
    assert run.code == PAM_SUCCESS, run
    assert run.messages == [info(MSG_PUSHED), info(MSG_SUCCESS)]  # one push, no menu
    case.logged("success", "Successful Duo login for 'alice' from 203.0.113.5", factor="push")
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["push"]


@pytest.mark.parametrize("stack", CANONICAL)
def test_non_interactive_one_push(harness: Harness, stack: str) -> None:
    case = harness.case("notty", stack)
    run = case.run("pdt-alice", ["1"], tty=None)
    record("non-interactive (no tty)", stack, run.code)
    assert run.code == PAM_SUCCESS, run
    assert run.prompts == []  # no menu, no prompt of any kind
    assert run.messages == [info(MSG_PUSHED), info(MSG_SUCCESS)]
    case.logged("success", "Successful Duo login for 'alice' from 203.0.113.5", factor="push", tty=None)
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["push"]


@pytest.mark.parametrize("stack", CANONICAL)
def test_non_interactive_push_denied_no_retry(harness: Harness, stack: str) -> None:
    case = harness.case("nottydeny", stack)
    run = case.run("pdt-pushdeny", ["1"], tty=None)
    record("non-interactive push denied", stack, run.code)
    assert run.code == PAM_AUTH_ERR, run
    assert run.prompts == []
    assert len(case.duo_requests("/auth/v2/auth")) == 1
    case.logged("failure", "Failed Duo login for 'pushdeny'", factor="push")


@pytest.mark.parametrize("stack", CANONICAL)
def test_push_timeout_bounded(harness: Harness, stack: str) -> None:
    push_timeout, timeout = 1, 2
    case = harness.case("pushtimeout", stack, duo={"timeout": timeout},
                        auth={"push_timeout": push_timeout, "prompts": 1})
    run = case.run("pdt-pushtimeout", ["1", "1"])
    record("push unanswered (push_timeout=1, prompts=1)", stack, run.code)
    assert run.code == PAM_MAXTRIES, run
    assert run.seconds < push_timeout + timeout + 2, run.seconds
    assert run.seconds >= push_timeout, run.seconds
    assert run.messages == [menu(ALICE_MENU.replace("pdt-alice", "pdt-pushtimeout")), info(MSG_PUSHED),
                            info("The login request was not answered in time."), info(MSG_TOO_MANY)]
    case.logged("failure", "Failed Duo login for 'pushtimeout'", factor="push",
                reason=lambda r: "not answered in time" in r)


def test_push_timeout_non_interactive_bounded(harness: Harness) -> None:
    push_timeout, timeout = 1, 2
    case = harness.case("pushtimeout-notty", "only-factor", duo={"timeout": timeout},
                        auth={"push_timeout": push_timeout})
    run = case.run("pdt-pushtimeout", [], tty=None)
    record("push unanswered, no tty (push_timeout=1)", "only-factor", run.code)
    assert run.code == PAM_AUTH_ERR, run
    assert run.seconds < push_timeout + timeout + 2, run.seconds
    assert run.prompts == []


# ------------------------------------------------------------------ who does Duo
def test_exempt_user(harness: Harness, test_users) -> None:
    """A user outside users.groups: the module answers PAM_IGNORE, so the stack decides."""
    password = "Exempt-pw-4711"
    test_users.set_password("pdt-exempt", password)
    expected = {
        # A lone "auth required" module that answers PAM_IGNORE leaves libpam without any
        # module's verdict, and libpam then refuses: PAM_PERM_DENIED (docs/platform.md). This is
        # why the after-the-password stack always has the password module in front.
        "second-factor": PAM_PERM_DENIED,
        # "requisite" ignores PAM_IGNORE, and pam_permit below decides: PAM_SUCCESS.
        "only-factor": PAM_SUCCESS,
        # pam_unix accepted the password and decides; Duo's PAM_IGNORE does not count.
        "after-password": PAM_SUCCESS,
    }
    for stack, code in expected.items():
        case = harness.case("exempt", stack, users={"groups": ["pdt-duo"]})
        answers = [password] if stack == "after-password" else []
        run = case.run("pdt-exempt", answers)
        record("exempt user (not in users.groups)", stack, run.code)
        assert run.code == code, (stack, run)
        assert [m for m in run.messages if m[0] != "PROMPT_ECHO_OFF"] == [], run.messages
        assert case.duo_requests() == [], "an exempt user must not reach Duo"
        case.logged("exempt", "User pdt-exempt bypassed Duo 2FA due to user's UNIX group", user="pdt-exempt")
    # The same group rule still sends a member to Duo (the rule exempts only non-members).
    case = harness.case("exempt-member", "only-factor", users={"groups": ["pdt-duo"]})
    run = case.run("pdt-deny")
    record("member of users.groups (deny user)", "only-factor", run.code)
    assert run.code == PAM_AUTH_ERR, run
    assert len(case.duo_requests("/auth/v2/preauth")) == 1


@pytest.mark.parametrize("stack", CANONICAL)
def test_unknown_user(harness: Harness, stack: str) -> None:
    case = harness.case("unknown", stack)
    run = case.run("pdt-scn-no-such-user", ["1"])
    record("unknown local user", stack, run.code)
    assert run.code == PAM_USER_UNKNOWN, run
    assert run.messages == []
    assert case.duo_requests() == []
    case.logged("failure", "Failed Duo login for 'pdt-scn-no-such-user' from 203.0.113.5",
                reason="unknown local user")


@pytest.mark.parametrize("stack", CANONICAL)
def test_eof_at_prompt(harness: Harness, stack: str) -> None:
    case = harness.case("eof", stack)
    run = case.run("pdt-alice", ["@EOF", "123456"])
    record("EOF at the prompt", stack, run.code)
    assert run.code == PAM_CONV_ERR, run
    assert all(code != PAM_SUCCESS for code, _ in run.results)
    assert run.messages == [menu()]
    assert case.duo_requests("/auth/v2/auth") == []
    case.logged("failure", "Failed Duo login for 'alice' from 203.0.113.5",
                reason="conversation ended at the prompt")


# ------------------------------------------------------------------ Duo unreachable, failmode
@pytest.mark.parametrize("stack", CANONICAL)
def test_failmode_secure_duo_down(harness: Harness, stack: str, dead_duo_port: int) -> None:
    case = harness.case("down-secure", stack, duo={"host": f"localhost:{dead_duo_port}", "timeout": 2},
                        auth={"failmode": "secure"})
    run = case.run("pdt-alice", ["1"])
    record("Duo down, failmode secure", stack, run.code)
    assert run.code == PAM_AUTHINFO_UNAVAIL, run
    assert run.messages == [error(MSG_UNAVAILABLE)]
    case.logged("failure", "Failsecure Duo login for 'alice' from 203.0.113.5",
                reason=lambda r: "connection refused" in r)


@pytest.mark.parametrize("stack", CANONICAL)
def test_failmode_safe_duo_down(harness: Harness, stack: str, dead_duo_port: int) -> None:
    case = harness.case("down-safe", stack, duo={"host": f"localhost:{dead_duo_port}", "timeout": 2},
                        auth={"failmode": "safe"})
    run = case.run("pdt-alice", ["1"])
    record("Duo down, failmode safe", stack, run.code)
    assert run.code == PAM_SUCCESS, run
    assert run.prompts == []
    case.logged("failsafe", "Failsafe Duo login for 'alice' from 203.0.113.5: Duo unreachable at preauth")


@pytest.mark.parametrize("stack", CANONICAL)
def test_wrong_skey_failmode_safe_refused(harness: Harness, stack: str) -> None:
    # Duo answered (401): that is not "unreachable", so failmode=safe must not let anyone in.
    case = harness.case("401-safe", stack, duo={"skey": "Z" * 40}, auth={"failmode": "safe"})
    run = case.run("pdt-alice", ["1"])
    record("401 (wrong skey), failmode safe", stack, run.code)
    assert run.code == PAM_AUTHINFO_UNAVAIL, run
    assert run.messages == [error(MSG_UNAVAILABLE)]
    case.logged("error", "Error in Duo login for 'alice' from 203.0.113.5",
                reason=lambda r: "HTTP 401" in r)
    assert [r["status"] for r in case.duo_requests()] == [401]


@pytest.mark.parametrize("stack", CANONICAL)
def test_failure_after_preauth_failmode_safe(harness: Harness, stack: str) -> None:
    # preauth works, /auth answers 500: a second factor was under way, so nothing fails open.
    lines = [line for line in default_map_lines() if not line.startswith("pdt-alice ")]
    case = harness.case("500auth-safe", stack, auth={"failmode": "safe"},
                        map_lines=lines + ["pdt-alice alice+500@auth"])
    run = case.run("pdt-alice", ["1", "1"])
    record("+500@auth, failmode safe", stack, run.code)
    assert run.code == PAM_AUTH_ERR, run
    assert run.prompts == [menu()]
    case.logged("failure", "Failed Duo login for 'alice+500@auth' from 203.0.113.5",
                reason=lambda r: r.startswith("Duo error after preauth"))
    assert [r["status"] for r in case.duo_requests("/auth/v2/auth")] == [500]


# ------------------------------------------------------------------ configuration errors
@pytest.mark.parametrize("stack", CANONICAL)
@pytest.mark.parametrize("problem", ["unknown key", "mode 0644", "missing file"])
def test_config_error_failmode_safe_refused(harness: Harness, stack: str, problem: str,
                                            dead_duo_port: int) -> None:
    # Duo is down too: a config error must not be mistaken for "unreachable" under failmode=safe.
    slug = problem.replace(" ", "")
    auth = {"failmode": "safe"}
    if problem == "unknown key":
        auth["fail_open_please"] = True
    case = harness.case(f"conf-{slug}", stack, auth=auth, duo={"host": f"localhost:{dead_duo_port}"})
    fragment = {"unknown key": "auth.fail_open_please: unknown key",
                "mode 0644": "mode 0644", "missing file": "no such file"}[problem]
    if problem == "mode 0644":
        os.chmod(case.conf, 0o644)
    elif problem == "missing file":
        missing = harness.test_root / f"{case.service}-missing.toml"
        harness.pam_service(case.service, STACKS[stack], conf=missing)
        case.conf = missing
    run = case.run("pdt-alice", ["1"])
    record(f"config error ({problem}), failmode safe", stack, run.code)
    assert run.code == PAM_SERVICE_ERR, run
    assert run.prompts == []
    assert case.duo_requests() == []
    case.config_error_logged(fragment)


# ------------------------------------------------------------------ the password as the answer
def test_password_as_answer_refused_locally(harness: Harness, test_users) -> None:
    # A password that looks like a passcode (and is even one the simulator would accept):
    # if it were sent, Duo would let the login in.
    password = "123456"
    test_users.set_password("pdt-alice", password)
    case = harness.case("password-answer", "after-password", auth={"prompts": 1})
    run = case.run("pdt-alice", [password, password, "987654"])
    record("password typed at the Duo prompt", "after-password", run.code)
    assert run.code == PAM_MAXTRIES, run
    assert [style for style, _ in run.prompts] == ["PROMPT_ECHO_OFF", "PROMPT_ECHO_ON"], run.prompts
    assert run.prompts[1] == menu()
    assert info("That answer looks like your password, so it was not sent to Duo. "
                "Enter a passcode or an option number.") in run.messages
    assert run.messages[-1] == info(MSG_TOO_MANY)
    # preauth went to Duo; the password never did
    assert [r["path"] for r in case.duo_requests()] == ["/auth/v2/preauth"]
    assert not any(r.get("factor") == "passcode" for r in case.duo_requests())
    assert password not in case.audit.read_text()
    case.logged("failure", "Failed Duo login for 'alice' from 203.0.113.5")

    # Control: the same stack with a real passcode logs in (so the refusal above was the rule).
    case = harness.case("password-control", "after-password", auth={"prompts": 1})
    run = case.run("pdt-alice", [password, "987654"])
    record("passcode valid", "after-password", run.code)
    assert run.code == PAM_SUCCESS, run
    assert run.messages[1:] == [menu(), info(MSG_SUCCESS)]
    assert [r["factor"] for r in case.duo_requests("/auth/v2/auth")] == ["passcode"]


# ------------------------------------------------------------------ the table
def test_zz_print_table() -> None:
    """Print "scenario | stack | PAM code" (pytest shows it with -s or -rP) and write it to
    $PDT_REPORT_DIR/scenarios.txt when that variable is set."""
    if not ROWS:
        pytest.skip("no scenario ran")
    width = max(len(r[0]) for r in ROWS + [("scenario", "", "")])
    swidth = max(len(r[1]) for r in ROWS + [("", "stack", "")])
    lines = [f"{'scenario':<{width}} | {'stack':<{swidth}} | PAM code",
             f"{'-' * width}-|-{'-' * swidth}-|-{'-' * 20}"]
    lines += [f"{s:<{width}} | {st:<{swidth}} | {c}" for s, st, c in ROWS]
    lines += ["", f"log lines checked: audit file in every scenario; syslog in {len(SYSLOG_CHECKED)} "
                  "(0 when another test run owned /dev/log)"]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    report_dir = os.environ.get("PDT_REPORT_DIR")
    if report_dir:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / "scenarios.txt").write_text(table, encoding="utf-8")
