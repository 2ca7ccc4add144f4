"""sudo and sudo -i: the real sudo 1.9 with PAM services of their own (``Defaults pam_service=``
and ``pam_login_service=`` in /etc/sudoers.d/pdt-host) holding the shipped stacks
(etc/pam.d/sudo and etc/pam.d/sudo-i), on a terminal and without one (docs/behaviour.md §3, §6)."""
from __future__ import annotations

import re
import shlex
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from .conftest import _write_root_file, clean_env
from .hostkit import (Pty, example_stack, host, host_env, host_lock, host_root, host_users,  # noqa: F401
                      install_pam_file, menu)

pytestmark = pytest.mark.system

SUDO_SERVICE = "pdt-host-sudo"
SUDO_I_SERVICE = "pdt-host-sudo-i"
SUDOERS = Path("/etc/sudoers.d/pdt-host")
RUNUSER = "/usr/sbin/runuser"
SUDO = "/usr/bin/sudo"
SUDO_USERS = ("alice", "deny", "enroll", "pushdeny", "vpush", "vpushmobile")


@pytest.fixture(scope="module")
def sudo(host_env, host_root, host_users):
    """The two PAM services and the sudoers file; all removed at the end."""
    names = ", ".join(host_users[short] for short in SUDO_USERS)
    text = (
        "# pam_duo_py system tests (tests/system/test_hosts_sudo.py); removed when they end.\n"
        f"User_Alias PDT_HOST_USERS = {names}\n"
        f"Defaults:PDT_HOST_USERS pam_service={SUDO_SERVICE}, pam_login_service={SUDO_I_SERVICE}, "
        "timestamp_timeout=0, passwd_tries=1\n"
        "PDT_HOST_USERS ALL=(ALL) ALL\n"
    )
    candidate = _write_root_file(host_root / "sudoers-pdt-host", text, 0o440)
    check = subprocess.run(["visudo", "-cf", str(candidate)], env=clean_env(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    paths = [install_pam_file(SUDO_SERVICE, example_stack("sudo", host_env.config)),
             install_pam_file(SUDO_I_SERVICE, example_stack("sudo-i", host_env.config))]
    try:
        _write_root_file(SUDOERS, text, 0o440)
        paths.append(SUDOERS)
        check = subprocess.run(["visudo", "-c"], env=clean_env(), capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        yield host_env
    finally:
        for path in reversed(paths):
            path.unlink(missing_ok=True)


def sudo_on_a_tty(host, short: str, *args: str, env: dict[str, str] | None = None) -> Pty:
    """``runuser -u pdt-host-<short> -- sudo ARGS`` on a terminal; the password already typed."""
    user = host.users[short]
    prefix = ["/usr/bin/env", *[f"{k}={v}" for k, v in (env or {}).items()]] if env else []
    term = Pty([RUNUSER, "-u", user, "--", *prefix, SUDO, *args])
    term.expect(f"[sudo] password for {user}: ")
    term.line(host.users.password(short))
    return term


def sudo_without_a_tty(host, short: str, command: str, env: dict[str, str] | None = None,
                       password: str | None = None) -> subprocess.CompletedProcess:
    """Ansible's become: ``su USER -c 'sudo -H -S -p PROMPT ...'`` with no terminal at all."""
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    line = (f"{'env ' + assigns + ' ' if assigns else ''}{SUDO} -H -S -p '[sudo via ansible, key=k1] password:' "
            f"-u root /bin/sh -c {shlex.quote(command)}")
    return subprocess.run(["su", host.users[short], "-c", line], env=clean_env(),
                          input=(password or host.users.password(short)) + "\n", capture_output=True,
                          text=True, timeout=60, start_new_session=True)


def _success(host, mark, local: str, service: str, factor: str) -> dict:
    (event,) = host.audit_events(mark)
    assert (event["outcome"], event["user"], event["service"], event["factor"]) == ("success", local, service, factor)
    return event


# ------------------------------------------------------------------ on a terminal
def test_push_approved_by_the_invoking_user(sudo, host):
    user = host.users["alice"]
    mark = host.mark()
    with sudo_on_a_tty(host, "alice", "id", "-un") as term:
        term.expect(menu(user))
        term.line("1")
        assert term.finish() == 0
        # sudo asks PAM for silence (PAM_SILENT): no status lines, just the command's output.
        assert term.rest() == "1\nroot\n"
    assert host.calls(mark) == [("preauth", "alice", None), ("auth", "alice", "push"),
                                ("auth_status", "alice", "push")]
    (info,) = host.pushinfo(mark)
    assert info == {"Server": socket.gethostname(), "Service": SUDO_SERVICE, "Command": "id -un"}
    event = _success(host, mark, user, SUDO_SERVICE, "push")
    assert event["tty"].startswith("/dev/pts/") and event["rhost"] is None


@pytest.mark.parametrize("args,command", [(("-i", "id", "-un"), "id -un"), (("-i",), "(login shell)")])
def test_sudo_i_uses_its_own_service(sudo, host, args, command):
    user = host.users["alice"]
    mark = host.mark()
    with sudo_on_a_tty(host, "alice", *args) as term:
        term.expect(menu(user))
        term.line("")
        if command == "(login shell)":
            term.expect("# ")  # root's interactive shell
            term.line("id -un; exit")
        assert term.finish() == 0
        assert "root\n" in term.rest()
    (info,) = host.pushinfo(mark)
    assert (info["Service"], info["Command"]) == (SUDO_I_SERVICE, command)
    _success(host, mark, user, SUDO_I_SERVICE, "push")


def test_pushinfo_carries_no_command_unless_configured(sudo, host):
    host.configure(pushinfo_command=False)
    mark = host.mark()
    with sudo_on_a_tty(host, "alice", "id", "-un") as term:
        term.expect(menu(host.users["alice"]))
        term.line("1")
        assert term.finish() == 0
    (info,) = host.pushinfo(mark)
    assert "Command" not in info and info["Service"] == SUDO_SERVICE


def test_passcode(sudo, host):
    user = host.users["alice"]
    mark = host.mark()
    with sudo_on_a_tty(host, "alice", "id", "-un") as term:
        term.expect(menu(user))
        term.line("123456")
        assert term.finish() == 0
        assert term.rest() == "123456\nroot\n"
    assert host.calls(mark) == [("preauth", "alice", None), ("auth", "alice", "passcode")]
    _success(host, mark, user, SUDO_SERVICE, "passcode")


def test_push_denied_shows_why(sudo, host):
    user = host.users["pushdeny"]
    mark = host.mark()
    with sudo_on_a_tty(host, "pushdeny", "id", "-un") as term:
        term.expect(menu(user))
        term.line("1")
        assert term.finish() == 1
        assert term.rest() == "1\nLogin request denied.\nsudo: 1 incorrect password attempt\n"
    assert [c for c in host.calls(mark) if c[0] == "auth"] == [("auth", "pushdeny", "push")]
    assert [e["outcome"] for e in host.audit_events(mark)] == ["failure"]


def test_denied_and_enroll_at_preauth_show_duo_s_message(sudo, host):
    with sudo_on_a_tty(host, "deny", "id", "-un") as term:
        assert term.finish() == 1
        assert term.rest() == ("\nYour account is disabled. Contact your administrator.\n"
                               "sudo: 1 incorrect password attempt\n")
    with sudo_on_a_tty(host, "enroll", "id", "-un") as term:
        assert term.finish() == 1
        assert re.fullmatch(r"\nYou must enroll in Duo before you can log in\. Enroll at: "
                            r"https://localhost/portal\?code=[0-9a-f]{16}\nsudo: 1 incorrect password attempt\n",
                            term.rest()), term.rest()


def test_verified_push_code_is_shown(sudo, host):
    host.configure(verified_push=True)
    user = host.users["vpush"]
    with sudo_on_a_tty(host, "vpush", "id", "-un") as term:
        term.expect(menu(user))
        term.line("1")
        assert term.finish() == 0
        assert re.fullmatch(r"1\nVerification code: [0-9]{3}\nEnter this code in Duo Mobile to approve the login\.\n"
                            r"root\n", term.rest()), term.rest()


def test_verified_push_approved_with_the_code_on_the_screen(sudo, host):
    """The simulator approves this push only once the code is "entered in Duo Mobile", which the
    person does here from what the terminal shows: the code is on the screen before the approval."""
    host.configure(verified_push=True)
    user = host.users["vpushmobile"]
    mark = host.mark()
    with sudo_on_a_tty(host, "vpushmobile", "id", "-un") as term:
        term.expect(menu(user))
        term.line("1")
        shown = term.expect("Enter this code in Duo Mobile to approve the login.\n")
        code = re.search(r"Verification code: ([0-9]{3})\n", shown).group(1)
        type_in_duo_mobile(host, "vpushmobile", code)
        assert term.finish() == 0
        assert term.rest() == "root\n", term.rest()
    _success(host, mark, user, SUDO_SERVICE, "push")
    assert host.resolved(mark) == [("allow", "allow")]


def type_in_duo_mobile(host, duo_user: str, code: str) -> None:
    """What the simulator's vpushmobile users read as the code typed into Duo Mobile."""
    mobile = host.simulator.state_dir / "duo-mobile"
    mobile.mkdir(mode=0o700, exist_ok=True)
    (mobile / duo_user).write_text(code + "\n")


# ------------------------------------------------------------------ no terminal (Ansible's become)
def test_no_tty_is_one_push_and_no_menu(sudo, host):
    user = host.users["alice"]
    mark = host.mark()
    proc = sudo_without_a_tty(host, "alice", "echo BECOME-SUCCESS-k1; id -un")
    assert proc.returncode == 0, proc
    assert proc.stdout == "BECOME-SUCCESS-k1\nroot\n"  # nothing of Duo's on stdout
    assert proc.stderr == "[sudo via ansible, key=k1] password:"
    assert host.calls(mark) == [("preauth", "alice", None), ("auth", "alice", "push"),
                                ("auth_status", "alice", "push")]
    (info,) = host.pushinfo(mark)
    assert info["Command"] == "/bin/sh -c echo BECOME-SUCCESS-k1; id -un"
    event = _success(host, mark, user, SUDO_SERVICE, "push")
    assert event["tty"] is None


def test_no_tty_denied_push_says_why_on_stderr(sudo, host):
    mark = host.mark()
    proc = sudo_without_a_tty(host, "pushdeny", "id -un")
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr == ("[sudo via ansible, key=k1] password:Login request denied.\n"
                           "sudo: 1 incorrect password attempt\n"), proc.stderr
    assert [c for c in host.calls(mark) if c[0] == "auth"] == [("auth", "pushdeny", "push")]


FRENCH = "fr_FR.UTF-8"


@pytest.fixture(scope="module")
def french_locale():
    """fr_FR.UTF-8, generated when missing (Debian package ``locales``)."""
    def present() -> bool:
        listed = subprocess.run(["locale", "-a"], env=clean_env(), capture_output=True, text=True).stdout.split()
        return any(name.lower().replace("-", "") == "fr_fr.utf8" for name in listed)

    if not present():
        made = subprocess.run(["localedef", "-i", "fr_FR", "-f", "UTF-8", FRENCH], env=clean_env(),
                              capture_output=True, text=True)
        assert made.returncode in (0, 1) and present(), made.stdout + made.stderr  # 1: warnings only
    return FRENCH


def test_syslog_line_starts_with_the_ident_under_a_french_locale(sudo, host, syslog_capture, french_locale):
    """sudo calls setlocale(): nothing the module writes may depend on it (journald finds the ident)."""
    if not syslog_capture.available:
        pytest.skip("a syslog daemon owns /dev/log here: the line cannot be captured")
    user = host.users["alice"]
    since = syslog_capture.mark()
    mark = host.mark()
    proc = sudo_without_a_tty(host, "alice", "id -un", env={"LANG": french_locale, "LC_ALL": french_locale})
    assert (proc.returncode, proc.stdout) == (0, "root\n"), proc
    _success(host, mark, user, SUDO_SERVICE, "push")
    line = syslog_capture.wait_for(lambda text: "Successful Duo login for 'alice'" in text, since=since)
    assert line is not None, syslog_capture.lines()[since:]
    # (the Duo user is "alice", mapped from the local user)
    assert re.match(rf"<86>pam_duo_py\[\d+\]: Successful Duo login for 'alice' \[service={SUDO_SERVICE} ", line), line


class FakeProxy:
    """A listening socket that counts the connections made to it (none are expected)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


def test_the_invoking_users_environment_changes_nothing(sudo, host, host_root):
    inject = host_root / "inject"
    inject.mkdir(mode=0o755, exist_ok=True)
    marker = host_root / "inject-marker"
    marker.unlink(missing_ok=True)
    code = f"open({str(marker)!r}, 'a').write('ran\\n')\n"
    for name in ("sitecustomize.py", "usercustomize.py", "startup.py"):
        _write_root_file(inject / name, code, 0o644)
    proxy = FakeProxy()
    other_ca = str(host.simulator.state_dir / "other-ca.pem")  # a CA that signed nothing
    env = {"HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "HTTP_PROXY": proxy.url,
           "http_proxy": proxy.url, "ALL_PROXY": proxy.url, "NO_PROXY": "", "no_proxy": "",
           "SSL_CERT_FILE": other_ca, "SSL_CERT_DIR": str(inject), "REQUESTS_CA_BUNDLE": other_ca,
           "CURL_CA_BUNDLE": other_ca, "DUO_PASSCODE": "123456", "PYTHONPATH": str(inject),
           "PYTHONSTARTUP": str(inject / "startup.py"), "PYTHONHOME": str(inject), "PYTHONINSPECT": "1",
           "PYTHONWARNINGS": "error", "PYTHONUSERBASE": str(inject)}
    try:
        baseline_mark = host.mark()
        baseline = sudo_without_a_tty(host, "alice", "id -un")
        mark = host.mark()
        injected = sudo_without_a_tty(host, "alice", "id -un", env=env)
        with sudo_on_a_tty(host, "alice", "id", "-un", env=env) as term:
            term.expect(menu(host.users["alice"]))  # DUO_PASSCODE did not answer the menu
            term.line("1")
            assert term.finish() == 0
    finally:
        proxy.close()
    assert (injected.returncode, injected.stdout, injected.stderr) == \
        (baseline.returncode, baseline.stdout, baseline.stderr) == (0, "root\n", "[sudo via ansible, key=k1] password:")
    # The same Duo calls, straight to the simulator: a push, not the passcode from the environment.
    assert host.calls(mark)[:3] == host.calls(baseline_mark)[:3] == [
        ("preauth", "alice", None), ("auth", "alice", "push"), ("auth_status", "alice", "push")]
    assert proxy.connections == 0
    assert not marker.exists(), "code from the invoking user's PYTHONPATH/PYTHONSTARTUP ran as root"
    assert [e["outcome"] for e in host.audit_events(mark)] == ["success", "success"]


# ------------------------------------------------------------------ an interrupted conversation
@pytest.mark.parametrize("key,name", [("\x04", "EOF"), ("\x03", "Ctrl-C")])
def test_interrupted_duo_prompt_is_no_sudo(sudo, host, key, name):
    user = host.users["alice"]
    mark = host.mark()
    with sudo_on_a_tty(host, "alice", "-S", "id", "-un") as term:
        term.expect(menu(user))
        term.interrupt(key)
        status = term.finish()
        rest = term.rest()
    assert status == 1 and "root" not in rest, (name, status, rest)
    assert rest.endswith("sudo: a password is required\n"), rest
    assert host.calls(mark) == [("preauth", "alice", None)]  # nothing sent after the prompt
    events = host.audit_events(mark)
    assert [e["outcome"] for e in events] == ["failure"], events
    assert events[0]["reason"] == "conversation ended at the prompt"
