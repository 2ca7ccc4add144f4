"""sshd: a real OpenSSH server on loopback with the shipped PAM stack (etc/pam.d/sshd, "Duo as
the only PAM factor") and sshd snippet (etc/sshd_config.d/pam_duo_py-kbdint.conf), logged into
with a public key and keyboard-interactive, every prompt answered by an SSH_ASKPASS script
that records what it was shown: what the person at the ssh client sees (docs/behaviour.md §3, §6)."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ENTRY, REPO, _ensure_root_dir, _write_root_file, clean_env
from .sshdkit import LoopbackSshd
from .hostkit import (host, host_env, host_lock, host_root, host_users, example_stack,  # noqa: F401
                      install_pam_file, menu)

pytestmark = pytest.mark.system

SSHD = Path("/usr/sbin/sshd")
SSHD_NAME = "sshd-pdt-host"  # the PAM service name follows the program name
PAM_FILE = Path("/etc/pam.d") / SSHD_NAME
SNIPPET = REPO / "etc" / "sshd_config.d" / "pam_duo_py-kbdint.conf"
PRESS_ENTER = "\nPress Enter to continue."
PUSHED = "Pushed a login request to your device..."
SUCCESS = "Success. Logging you in..."

# The askpass script: each call appends its prompt ($1) and a NUL to "prompts" and answers the
# next line of "answers". "!fail" exits 1 (ssh then sends an empty answer); "!interrupt" is a
# Ctrl-C at the prompt: SIGINT to ssh; "!duo-mobile:NAME" types the Verification code shown in
# the prompt into "Duo Mobile" of the simulator's user NAME (a file under $PDT_DUO_MOBILE) and
# presses Enter. A prompt beyond the answers also exits 1.
ASKPASS = r"""#!/bin/sh
d=$PDT_ASKPASS_DIR
printf '%s\000' "$1" >> "$d/prompts"
n=$(( $(cat "$d/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$d/count"
[ "$n" -le "$(wc -l < "$d/answers")" ] || exit 1
answer=$(sed -n "${n}p" "$d/answers")
case $answer in
    '!fail') exit 1 ;;
    '!interrupt') kill -INT "$PPID"; exit 1 ;;
    '!duo-mobile:'*)
        code=$(printf '%s\n' "$1" | sed -n 's/.*Verification code: \([0-9]*\)$/\1/p')
        mkdir -p "$PDT_DUO_MOBILE"
        printf '%s\n' "$code" > "$PDT_DUO_MOBILE/${answer#!duo-mobile:}"
        answer='' ;;
esac
printf '%s\n' "$answer"
"""


def snippet_directives() -> list[str]:
    lines = [line.strip() for line in SNIPPET.read_text().splitlines()]
    directives = [line for line in lines if line and not line.startswith("#")]
    assert directives == ["UsePAM yes", "KbdInteractiveAuthentication yes",
                          "AuthenticationMethods publickey,keyboard-interactive"], directives
    return directives


class HostSshd(LoopbackSshd):
    """``<dir>/sshd-pdt-host -D -e -f <dir>/sshd_config`` on a free loopback port."""

    def __init__(self, directory: Path, users: list[str]):
        super().__init__(directory, directory / SSHD_NAME)
        self.users = users

    def config_text(self) -> str:
        return "\n".join([
            "# the shipped snippet first, as Debian's Include of sshd_config.d/*.conf puts it:",
            *snippet_directives(),
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.dir / 'host_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            f"AuthorizedKeysFile {self.dir / 'keys'}/%u",
            "AllowUsers " + " ".join(self.users),
            "LogLevel VERBOSE",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxStartups 32",
        ]) + "\n"


@dataclass
class SshRun:
    returncode: int
    stdout: str
    stderr: str           # what ssh printed to the terminal besides the prompts
    prompts: list[str]    # every prompt the askpass was shown, "(user@127.0.0.1) " removed
    sshd_log: str

    def __str__(self) -> str:
        return (f"rc={self.returncode}\nprompts={self.prompts!r}\nstdout={self.stdout!r}\n"
                f"stderr={self.stderr!r}\nsshd:\n{self.sshd_log}")


class Client:
    def __init__(self, sshd: HostSshd, root: Path):
        self.sshd = sshd
        self.root = root
        self.key = root / "client_key"
        self.known_hosts = root / "known_hosts"
        self.askpass = root / "askpass"
        self.runs = 0
        self.duo_mobile: Path | None = None  # the simulator's "Duo Mobile" directory

    def login(self, user: str, answers: list[str], command: str = "echo LOGGED-IN",
              timeout: float = 60) -> SshRun:
        self.runs += 1
        work = self.root / f"askpass-{self.runs}"
        shutil.rmtree(work, ignore_errors=True)
        _ensure_root_dir(work, 0o700)
        (work / "answers").write_text("".join(answer + "\n" for answer in answers))
        env = clean_env()
        env.update({"SSH_ASKPASS": str(self.askpass), "SSH_ASKPASS_REQUIRE": "force",
                    "PDT_ASKPASS_DIR": str(work), "HOME": str(self.root)})
        if self.duo_mobile is not None:
            env["PDT_DUO_MOBILE"] = str(self.duo_mobile)
        argv = ["ssh", "-F", "/dev/null", "-p", str(self.sshd.port), "-i", str(self.key),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no", "-o", "ControlPath=none",
                "-o", "PreferredAuthentications=publickey,keyboard-interactive",
                "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10",
                f"{user}@127.0.0.1", command]
        mark = self.sshd.mark()
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, start_new_session=True)
        raw = (work / "prompts").read_bytes() if (work / "prompts").exists() else b""
        prefix = f"({user}@127.0.0.1) "
        prompts = []
        for record in raw.decode("utf-8", "replace").split("\0")[:-1]:
            assert record.startswith(prefix), record
            prompts.append(record[len(prefix):])
        if proc.returncode == 0:  # the connection ends after the command: let sshd log it
            self.sshd.wait_for(f"Disconnected from user {user}", 10, since=mark)
        else:  # refused: sshd's monitor may write the refusal to its log after ssh has exited
            self.sshd.wait_for(lambda line: _closed_before_login(line, user), 10, since=mark)
        return SshRun(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                      proc.stderr.decode("utf-8", "replace"), prompts, self.sshd.log_since(mark))


def _closed_before_login(line: str, user: str) -> bool:
    """sshd's last line for a connection that ended before the login (after its "Failed ..." line)."""
    return any(f"{event} authenticating user {user} " in line for event in ("Connection closed by", "Disconnected from")) \
        and "[preauth]" in line


@pytest.fixture(scope="module")
def ssh(host_env, host_root, host_users) -> Client:
    root = _ensure_root_dir(host_root / "sshd")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    binary = root / SSHD_NAME
    shutil.copy2(SSHD, binary)
    for name in ("host_key", "client_key"):
        for old in (root / name, root / f"{name}.pub"):
            old.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)],
                       env=clean_env(), check=True)
    keys = _ensure_root_dir(root / "keys")
    public = (root / "client_key.pub").read_text()
    for user in host_users.values():
        _write_root_file(keys / user, public, 0o644)
    _write_root_file(root / "askpass", ASKPASS, 0o755)

    install_pam_file(SSHD_NAME, example_stack("sshd", host_env.config))
    sshd = HostSshd(root, list(host_users.values()))
    try:
        sshd.start()
        host_public = (root / "host_key.pub").read_text().split()
        _write_root_file(root / "known_hosts", f"[127.0.0.1]:{sshd.port} {host_public[0]} {host_public[1]}\n", 0o644)
        client = Client(sshd, root)
        client.duo_mobile = host_env.simulator.state_dir / "duo-mobile"
        yield client
    finally:
        sshd.stop()
        PAM_FILE.unlink(missing_ok=True)


def _stderr_lines(run: SshRun) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.strip()]


# ------------------------------------------------------------------ what the user sees
def test_the_sshd_stack_is_the_shipped_example(ssh, host):
    text = PAM_FILE.read_text()
    assert text == example_stack("sshd", host.config)
    auth = [line.split() for line in text.splitlines() if line.split()[:1] == ["auth"]]
    assert auth == [["auth", "requisite", "pam_python.so", str(ENTRY), f"conf={host.config}"],
                    ["auth", "required", "pam_permit.so"]]
    assert "@include common-auth" not in [line.strip() for line in text.splitlines()]


def test_push_approved(ssh, host):
    user = host.users["alice"]
    mark = host.mark()
    run = ssh.login(user, ["1"])
    assert run.returncode == 0, run
    assert run.stdout == "LOGGED-IN\n"
    # One prompt: the menu, which says beforehand that the phone is contacted on answering.
    assert run.prompts == [menu(user, sshd=True)], run
    # The status lines are held back by sshd: they arrive only once the login is over.
    assert _stderr_lines(run) == [PUSHED, SUCCESS], run
    assert not any(PUSHED in prompt for prompt in run.prompts)
    assert host.calls(mark) == [("preauth", "alice", None), ("auth", "alice", "push"),
                                ("auth_status", "alice", "push")]
    (info,) = host.pushinfo(mark)
    assert info["Service"] == SSHD_NAME and info["Remote address"] == "127.0.0.1"
    (event,) = host.audit_events(mark)
    assert (event["outcome"], event["user"], event["factor"], event["service"], event["rhost"]) == \
        ("success", user, "push", SSHD_NAME, "127.0.0.1")
    assert f"Accepted keyboard-interactive/pam for {user}" in run.sshd_log


def test_enter_alone_is_the_default_push(ssh, host):
    user = host.users["alice"]
    mark = host.mark()
    run = ssh.login(user, [""])
    assert run.returncode == 0 and run.prompts == [menu(user, sshd=True)], run
    assert ("auth", "alice", "push") in host.calls(mark)


def test_passcode(ssh, host):
    user = host.users["alice"]
    mark = host.mark()
    run = ssh.login(user, ["123456"])
    assert run.returncode == 0 and run.stdout == "LOGGED-IN\n", run
    assert run.prompts == [menu(user, sshd=True)]
    assert host.calls(mark) == [("preauth", "alice", None), ("auth", "alice", "passcode")]
    assert PUSHED not in run.stderr and SUCCESS in run.stderr


def test_wrong_passcode_then_right_one(ssh, host):
    user = host.users["alice"]
    run = ssh.login(user, ["111111", "987654"])
    assert run.returncode == 0, run
    # The refusal was held back by sshd and rides in front of the next prompt.
    assert run.prompts == [menu(user, sshd=True),
                           "Incorrect passcode. Please try again.\n" + menu(user, sshd=True)], run


def test_token_only_user_gets_a_passcode_prompt_without_the_notice(ssh, host):
    user = host.users["tokenonly"]
    run = ssh.login(user, ["987654"])
    assert run.returncode == 0, run
    assert run.prompts == [f"Duo two-factor login for {user}\n\nPasscode: "]  # nothing will contact a phone


def test_preauth_allow_asks_nothing(ssh, host):
    mark = host.mark()
    run = ssh.login(host.users["allow"], [])
    assert run.returncode == 0 and run.stdout == "LOGGED-IN\n", run
    assert run.prompts == []
    assert host.calls(mark) == [("preauth", "allow", None)]


def test_denied_user_reads_the_reason_before_being_refused(ssh, host):
    user = host.users["deny"]
    mark = host.mark()
    run = ssh.login(user, [""])
    assert run.returncode == 255 and run.stdout == "", run
    assert run.prompts == ["Your account is disabled. Contact your administrator." + PRESS_ENTER], run
    assert _stderr_lines(run)[-1] == f"{user}@127.0.0.1: Permission denied (keyboard-interactive)."
    assert host.calls(mark) == [("preauth", "deny", None)]
    assert f"Failed keyboard-interactive/pam for {user}" in run.sshd_log


def test_enrollment_url_is_shown_in_a_prompt(ssh, host):
    user = host.users["enroll"]
    run = ssh.login(user, [""])
    assert run.returncode == 255, run
    (prompt,) = run.prompts
    assert re.fullmatch(r"You must enroll in Duo before you can log in\. Enroll at: "
                        r"https://localhost/portal\?code=[0-9a-f]{16}" + re.escape(PRESS_ENTER), prompt), prompt


def test_push_denied_on_the_phone(ssh, host):
    user = host.users["pushdeny"]
    mark = host.mark()
    run = ssh.login(user, ["1", ""])
    assert run.returncode == 255, run
    assert run.prompts == [menu(user, sshd=True), f"{PUSHED}\nLogin request denied.{PRESS_ENTER}"], run
    assert [c for c in host.calls(mark) if c[0] == "auth"] == [("auth", "pushdeny", "push")]  # no retry


@pytest.mark.parametrize("duo_user, enter", [
    ("vpush", ""),
    # The simulator approves a vpushmobile push only once its code is "entered in Duo Mobile";
    # the askpass can do that only with the code it was shown in the prompt, before the wait.
    ("vpushmobile", "!duo-mobile:vpushmobile"),
])
def test_verified_push_code_is_shown_before_the_wait(ssh, host, duo_user, enter):
    host.configure(verified_push=True)
    user = host.users[duo_user]
    mark = host.mark()
    run = ssh.login(user, ["1", enter])
    assert run.returncode == 0 and run.stdout == "LOGGED-IN\n", run
    assert len(run.prompts) == 2 and run.prompts[0] == menu(user, sshd=True), run
    assert re.fullmatch(r"Verification code: [0-9]{3}\nEnter this code in Duo Mobile to approve the login\."
                        + re.escape(PRESS_ENTER), run.prompts[1]), run.prompts[1]
    calls = host.calls(mark)
    assert calls[:2] == [("preauth", duo_user, None), ("auth", duo_user, "push")]
    assert host.requests(mark)[-1]["path"] == "/auth/v2/auth_status"
    assert host.resolved(mark) == [("allow", "allow")]
    assert host.audit_events(mark)[-1]["outcome"] == "success"


def test_unanswered_push_then_too_many_attempts(ssh, host):
    host.configure(push_timeout=1, prompts=2)
    user = host.users["pushtimeout"]
    run = ssh.login(user, ["1", "1"])
    assert run.returncode == 255, run
    late = f"{PUSHED}\nThe login request was not answered in time.\n"
    assert run.prompts == [menu(user, sshd=True), late + menu(user, sshd=True)], run
    # What was said after the last prompt reaches the client with the refusal.
    assert f"{PUSHED}\nThe login request was not answered in time.\nToo many failed attempts." in run.stderr, run


def test_autopush_shows_no_menu_and_the_notice_comes_late(ssh, host):
    host.configure(autopush=True)
    user = host.users["alice"]
    mark = host.mark()
    run = ssh.login(user, [])
    assert run.returncode == 0 and run.stdout == "LOGGED-IN\n", run
    assert run.prompts == []  # nothing was asked, so nothing could be shown before the wait
    assert _stderr_lines(run) == [PUSHED, SUCCESS], run  # printed together, once the push was approved
    assert host.calls(mark)[:2] == [("preauth", "alice", None), ("auth", "alice", "push")]


# ------------------------------------------------------------------ an interrupted conversation
def test_ctrl_c_at_the_duo_prompt_is_no_login(ssh, host):
    user = host.users["alice"]
    mark = host.mark()
    run = ssh.login(user, ["!interrupt"])
    assert run.returncode != 0 and "LOGGED-IN" not in run.stdout, run
    assert run.prompts == [menu(user, sshd=True)]
    assert host.calls(mark) == [("preauth", "alice", None)]  # nothing was sent: no push
    assert "Accepted keyboard-interactive" not in run.sshd_log
    assert not [e for e in host.audit_events(mark) if e["outcome"] == "success"]


def test_a_failing_askpass_is_an_empty_answer_and_needs_the_phone(ssh, host):
    """ssh turns a failed SSH_ASKPASS into an empty answer, which is Enter: the default push.
    Nothing gets in without the phone: here the push is not answered."""
    host.configure(push_timeout=1, prompts=1)
    user = host.users["pushtimeout"]
    mark = host.mark()
    run = ssh.login(user, ["!fail"])
    assert run.returncode == 255 and "LOGGED-IN" not in run.stdout, run
    assert run.prompts == [menu(user, sshd=True)]
    assert ("auth", "pushtimeout", "push") in host.calls(mark)
    assert [e["outcome"] for e in host.audit_events(mark)] == ["failure"]
    assert "Accepted keyboard-interactive" not in run.sshd_log
