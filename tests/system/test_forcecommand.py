"""ForceCommand mode end to end (docs/behaviour.md §7): a real sshd on loopback with public-key logins,
the shipped sshd snippet, ``pam-duo-login`` as the ForceCommand and a broker started by hand,
against the local Duo simulator."""
from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from .brokerkit import BrokerProcess, fc_config_text, fc_root, socket_dir, write_map, write_root_file  # noqa: F401
from .conftest import LOGIN, REPO, clean_env
from .sshdkit import LoopbackSshd, free_port

pytestmark = pytest.mark.system

SNIPPET = REPO / "etc" / "sshd_config.d" / "pam_duo_py-forcecommand.conf"
SSHD = Path("/usr/sbin/sshd")
SSHD_NAME = "sshd-pdt-fc"  # the PAM service name follows the program name
PAM_FILE = Path("/etc/pam.d") / SSHD_NAME
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SSH_USERS = ("pdt-alice", "pdt-deny", "pdt-enroll", "pdt-pushdeny")
PUSH_TIMEOUT = 8
MARK_COMMAND = "echo MARK-$((6*7)); exit\r"

# Everything ssh, scp and sftp printed, for the check that the skey never shows.
TRANSCRIPTS: list[bytes] = []


def snippet_lines(socket_path: Path) -> list[str]:
    """The shipped snippet's directives, with the ForceCommand pointed at the test broker."""
    lines = []
    for raw in SNIPPET.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.split()[0] == "ForceCommand":
            assert line == f"ForceCommand {LOGIN}", line
            line += f" --socket {socket_path}"
        lines.append(line)
    keywords = {line.split()[0] for line in lines}
    assert {"ForceCommand", "DisableForwarding", "PermitTunnel", "PermitUserEnvironment",
            "PermitUserRC", "AcceptEnv"} <= keywords, keywords
    return lines


class Sshd(LoopbackSshd):
    """One test sshd (``<dir>/sshd-pdt-fc -D -e -f <dir>/sshd_config``)."""

    def __init__(self, directory: Path, binary: Path, host_key: Path, keys_dir: Path,
                 socket_path: Path, subsystem: str):
        super().__init__(directory, binary)
        self.host_key = host_key
        self.keys_dir = keys_dir
        self.socket_path = socket_path
        self.subsystem = subsystem

    def config_text(self) -> str:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "UsePAM yes",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"AuthorizedKeysFile {self.keys_dir}/%u",
            "AllowUsers " + " ".join(SSH_USERS),
            "LogLevel VERBOSE",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxStartups 64",
            f"Subsystem sftp {self.subsystem}",
            "# the shipped snippet, etc/sshd_config.d/pam_duo_py-forcecommand.conf:",
            *snippet_lines(self.socket_path),
        ]
        return "\n".join(lines) + "\n"


class FC:
    """Everything one ForceCommand test run needs."""

    def __init__(self, root: Path, simulator, broker: BrokerProcess, config: Path, skey_file: Path,
                 audit: Path, key: Path, known_hosts: Path, sshd: Sshd, sshd_internal: Sshd):
        self.root = root
        self.simulator = simulator
        self.broker = broker
        self.config = config
        self.skey_file = skey_file
        self.audit = audit
        self.key = key
        self.known_hosts = known_hosts
        self.sshd = sshd
        self.sshd_internal = sshd_internal

    def options(self, log_level: str = "ERROR") -> list[str]:
        opts = ["-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ControlPath=none",
                "-o", "UpdateHostKeys=no"]
        if log_level:
            opts += ["-o", f"LogLevel={log_level}"]
        return opts

    def ssh(self, user: str, command: Optional[str], *opts: str, env: Optional[dict] = None,
            input: Optional[bytes] = None, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = ["ssh", *self.options(), "-p", str(self.sshd.port), *opts, f"{user}@127.0.0.1"]
        if command is not None:
            argv.append(command)
        return self._run(argv, env=env, input=input, timeout=timeout)

    def scp(self, *args: str, legacy: bool, sshd: Optional[Sshd] = None) -> subprocess.CompletedProcess:
        sshd = sshd or self.sshd
        argv = ["scp", *self.options(), "-P", str(sshd.port), *(["-O"] if legacy else []), *args]
        return self._run(argv)

    def sftp(self, user: str, batch: str, sshd: Optional[Sshd] = None) -> subprocess.CompletedProcess:
        sshd = sshd or self.sshd
        batch_file = self.root / f"batch-{time.monotonic_ns()}"
        batch_file.write_text(batch)
        try:
            argv = ["sftp", *self.options(), "-P", str(sshd.port), "-b", str(batch_file), f"{user}@127.0.0.1"]
            return self._run(argv)
        finally:
            batch_file.unlink()

    def _run(self, argv: list[str], env: Optional[dict] = None, input: Optional[bytes] = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
        full_env = clean_env()
        full_env.update(env or {})
        proc = subprocess.run(argv, env=full_env, input=input, capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        TRANSCRIPTS.extend([proc.stdout, proc.stderr])
        return proc

    def pty(self, user: str, *opts: str) -> "PtyLogin":
        argv = ["ssh", *self.options(), "-p", str(self.sshd.port), "-tt", *opts, f"{user}@127.0.0.1"]
        return PtyLogin(argv)

    def audit_lines(self, since: int = 0) -> list[dict]:
        try:
            text = self.audit.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines()[since:] if line.strip()]

    def audit_mark(self) -> int:
        return len(self.audit_lines())

    def duo_auths(self, since: int) -> list[dict]:
        return [r for r in self.simulator.requests(since=since)
                if r.get("event") == "request" and r.get("path") == "/auth/v2/auth"]


class PtyLogin:
    """ssh -tt on a pseudo-terminal of its own, as a person at a terminal would run it."""

    def __init__(self, argv: list[str]):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=clean_env(),
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.buf = b""
        self.eof = False

    def _read(self, timeout: float) -> bool:
        readable, _, _ = select.select([self.master], [], [], timeout)
        if not readable:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave fd is closed
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def expect(self, needle: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"{needle!r} not seen; got {self.buf!r}")
            self._read(remaining)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        rc = self.proc.wait(timeout=max(deadline - time.monotonic(), 1))
        TRANSCRIPTS.append(self.buf)
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


# ------------------------------------------------------------------ the setup
@pytest.fixture(scope="module")
def fc(installed, simulator, test_users, test_root, fc_root, syslog_capture):
    root = socket_dir(fc_root, "forcecommand")
    sock_dir = socket_dir(fc_root, "fc-broker")
    socket_path = sock_dir / "broker.sock"

    # Keys: the skey in a file of its own (root, 0600), the config (root, 0600).
    duo = simulator.duo_settings()
    skey_file = write_root_file(test_root / "fc-skey", duo["skey"] + "\n", 0o600)
    map_file = write_map(test_root / "fc-map.txt")
    audit = test_root / "fc-audit.jsonl"
    config = write_root_file(test_root / "fc.toml", fc_config_text(
        simulator, duo={"skey": None, "skey_file": str(skey_file)},
        auth={"push_timeout": PUSH_TIMEOUT, "accept_env_factor": True},
        users={"map_file": str(map_file)}, log={"audit_file": str(audit)},
        broker={"socket": str(socket_path)}))

    # Home directories (the users are created without), and one ed25519 key for all of them.
    created_homes: list[Path] = []
    keys_dir = root / "authorized_keys"
    keys_dir.mkdir(mode=0o755)
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pdt-fc", "-f", str(key)],
                   env=clean_env(), check=True, capture_output=True)
    public = (root / "id_ed25519.pub").read_text()
    for user in SSH_USERS:
        entry = pwd.getpwnam(user)
        home = Path(entry.pw_dir)
        if not home.exists():
            home.mkdir(mode=0o755)
            created_homes.append(home)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        os.chmod(home, 0o755)
        write_root_file(keys_dir / user, public, 0o644)

    # sshd: its own binary name (and so PAM service), host key, port and pid file.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    binary = root / SSHD_NAME
    shutil.copy2(SSHD, binary)
    host_key = root / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                   env=clean_env(), check=True, capture_output=True)
    write_root_file(PAM_FILE, "\n".join([
        "# pam_duo_py system tests (ForceCommand): public-key logins run only account and session",
        "auth     required pam_deny.so",
        "account  required pam_permit.so",
        "session  required pam_permit.so",
        "password required pam_deny.so",
    ]) + "\n", 0o644)

    broker = BrokerProcess(config, socket_path)
    sshd = Sshd(root / "main", binary, host_key, keys_dir, socket_path, SFTP_SERVER)
    sshd_internal = Sshd(root / "internal", binary, host_key, keys_dir, socket_path, "internal-sftp")
    for instance in (sshd, sshd_internal):
        instance.dir.mkdir(mode=0o755)
    try:
        broker.start()
        sshd.start()
        sshd_internal.start()
        host_public = (root / "host_ed25519.pub").read_text().split()
        known_hosts = root / "known_hosts"
        known_hosts.write_text("".join(f"[127.0.0.1]:{s.port} {host_public[0]} {host_public[1]}\n"
                                       for s in (sshd, sshd_internal)))
        yield FC(root, simulator, broker, config, skey_file, audit, key, known_hosts, sshd, sshd_internal)
    finally:
        sshd.stop()
        sshd_internal.stop()
        broker.stop()
        for path in (PAM_FILE, config, skey_file, map_file, audit):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        for home in created_homes:
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def _debug(fc: FC) -> str:
    return f"\n--- broker\n{fc.broker.output()}\n--- sshd\n{fc.sshd.output()[-4000:]}"


# ------------------------------------------------------------------ interactive
def test_interactive_login_with_push(fc):
    mark = fc.simulator.mark()
    term = fc.pty("pdt-alice")
    try:
        term.expect(b"Duo two-factor login for pdt-alice")
        term.expect(b"Passcode or option (1-")
        term.send("1\r")
        term.expect(b"Success. Logging you in...")
        term.send(MARK_COMMAND)
        term.expect(b"MARK-42")
        assert term.finish() == 0
    finally:
        term.close()
    assert b"Pushed a login request to your device..." in term.buf
    assert [r.get("factor") for r in fc.duo_auths(mark)] == ["push"]


def test_interactive_login_with_a_passcode(fc):
    mark = fc.simulator.mark()
    term = fc.pty("pdt-alice")
    try:
        term.expect(b"Passcode or option (1-")
        term.send("123456\r")
        term.expect(b"Success. Logging you in...")
        term.send(MARK_COMMAND)
        term.expect(b"MARK-42")
        assert term.finish() == 0
    finally:
        term.close()
    assert [r.get("factor") for r in fc.duo_auths(mark)] == ["passcode"]


def test_interactive_denied_user_gets_no_shell(fc):
    term = fc.pty("pdt-deny")
    try:
        term.expect(b"Your account is disabled. Contact your administrator.")
        term.send(MARK_COMMAND)
        assert term.finish() == 1
    finally:
        term.close()
    assert b"Duo login refused." in term.buf
    assert b"MARK-42" not in term.buf


def test_interactive_wrong_answers_then_eof(fc):
    term = fc.pty("pdt-alice")
    try:
        term.expect(b"Passcode or option (1-")
        term.send("hello\r")
        term.expect(b"Invalid answer")
        term.send("\x04")  # ^D at the prompt: end of input
        assert term.finish() == 1
    finally:
        term.close()
    assert b"Duo login cancelled." in term.buf


# ------------------------------------------------------------------ non-interactive
@pytest.mark.parametrize("user, message", [
    ("pdt-deny", "Your account is disabled. Contact your administrator."),
    ("pdt-enroll", "You must enroll in Duo before you can log in. Enroll at: https://localhost/portal?code="),
    ("pdt-pushdeny", "Login request denied."),
])
def test_refused_users_get_the_message_on_stderr_and_no_shell(fc, user, message):
    proc = fc.ssh(user, "echo MARK-$((6*7))")
    assert proc.returncode == 1, proc
    assert proc.stdout == b""
    stderr = proc.stderr.decode()
    assert message in stderr
    assert "Duo login refused." in stderr
    assert "MARK-42" not in stderr


def test_command_gets_exactly_its_output(fc):
    mark = fc.simulator.mark()
    audit = fc.audit_mark()
    proc = fc.ssh("pdt-alice", "echo ok")
    assert (proc.returncode, proc.stdout) == (0, b"ok\n"), f"{proc.stderr!r}{_debug(fc)}"
    assert [r.get("factor") for r in fc.duo_auths(mark)] == ["push"]
    (line,) = fc.audit_lines(audit)
    assert line["outcome"] == "success" and line["user"] == "pdt-alice"
    assert line["service"] == "pam-duo-login" and line["rhost"] == "127.0.0.1 (claimed)"


def test_no_command_and_no_tty_runs_the_login_shell_on_stdin(fc):
    proc = fc.ssh("pdt-alice", None, "-T", input=b"echo MARK-$((6*7)) $0; shopt -q login_shell && echo login\n")
    assert (proc.returncode, proc.stdout) == (0, b"MARK-42 -bash\nlogin\n"), proc.stderr


def test_command_runs_in_the_home_directory_through_the_users_shell(fc):
    proc = fc.ssh("pdt-alice", 'echo "$PWD|$0|$SHELL|$USER|${SSH_TTY:-none}"')
    assert proc.stdout == b"/home/pdt-alice|bash|/bin/bash|pdt-alice|none\n", proc.stderr


def test_sigpipe_and_sigxfsz_are_reset_before_exec(fc):
    proc = fc.ssh("pdt-alice", "grep '^SigIgn:' /proc/self/status; yes | head -n 1")
    assert proc.returncode == 0, proc.stderr
    sig_ign_line, yes_line = proc.stdout.decode().splitlines()
    ignored = int(sig_ign_line.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), sig_ign_line
    assert not ignored & (1 << (signal.SIGXFSZ - 1)), sig_ign_line
    assert yes_line == "y"
    assert b"Broken pipe" not in proc.stderr


def test_duo_passcode_from_the_environment(fc):
    mark = fc.simulator.mark()
    audit = fc.audit_mark()
    proc = fc.ssh("pdt-alice", "env", "-o", "SendEnv=DUO_PASSCODE", env={"DUO_PASSCODE": "123456"})
    assert proc.returncode == 0, proc.stderr
    env_lines = proc.stdout.decode().splitlines()
    assert "SSH_ORIGINAL_COMMAND=env" in env_lines  # the command's own environment
    assert not [line for line in env_lines if "DUO_PASSCODE" in line or "123456" in line]
    assert [r.get("factor") for r in fc.duo_auths(mark)] == ["passcode"]  # and no push
    (line,) = fc.audit_lines(audit)
    assert line["factor"] == "passcode" and line["outcome"] == "success"
    assert "123456" not in json.dumps(line)


def test_a_wrong_duo_passcode_is_refused_without_a_push(fc):
    mark = fc.simulator.mark()
    proc = fc.ssh("pdt-alice", "echo MARK-$((6*7))", "-o", "SendEnv=DUO_PASSCODE",
                  env={"DUO_PASSCODE": "000000"})
    assert proc.returncode == 1 and proc.stdout == b""
    assert b"Duo login refused." in proc.stderr
    assert [r.get("factor") for r in fc.duo_auths(mark)] == ["passcode"]


def test_what_a_forcecommand_cannot_protect(fc):
    """README "ForceCommand mode": the user's shell startup file runs before the wrapper
    (even for a user Duo then refuses); ~/.ssh/rc does not."""
    entry = pwd.getpwnam("pdt-deny")
    home = Path(entry.pw_dir)
    bashrc, ssh_dir = home / ".bashrc", home / ".ssh"
    ran_bashrc, ran_rc = home / "bashrc-ran", home / "rc-ran"
    assert not bashrc.exists() and not ssh_dir.exists()
    try:
        bashrc.write_text(f"touch {ran_bashrc}\n")
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "rc").write_text(f"touch {ran_rc}\n")
        for path in (bashrc, ssh_dir, ssh_dir / "rc"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        proc = fc.ssh("pdt-deny", "echo MARK-$((6*7))")
        assert proc.returncode == 1 and proc.stdout == b""
        assert ran_bashrc.exists(), "the shell startup file runs before the ForceCommand"
        assert not ran_rc.exists(), "~/.ssh/rc must not run"
    finally:
        for path in (bashrc, ran_bashrc, ran_rc, ssh_dir / "rc"):
            path.unlink(missing_ok=True)
        if ssh_dir.exists():
            ssh_dir.rmdir()


# ------------------------------------------------------------------ scp and sftp
@pytest.fixture
def payload(tmp_path) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(100_000))
    return path


def _assert_uploaded(path: Path, payload: Path, user: str) -> None:
    assert path.read_bytes() == payload.read_bytes()
    assert path.stat().st_uid == pwd.getpwnam(user).pw_uid
    path.unlink()


@pytest.mark.parametrize("legacy", [True, False], ids=["scp-O", "scp-sftp"])
def test_scp_for_a_push_user(fc, payload, tmp_path, legacy):
    remote = Path("/home/pdt-alice") / f"up-{'legacy' if legacy else 'sftp'}.bin"
    proc = fc.scp(str(payload), f"pdt-alice@127.0.0.1:{remote}", legacy=legacy)
    assert proc.returncode == 0, proc.stderr
    assert remote.read_bytes() == payload.read_bytes()
    back = tmp_path / "back.bin"
    proc = fc.scp(f"pdt-alice@127.0.0.1:{remote}", str(back), legacy=legacy)
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == payload.read_bytes()
    _assert_uploaded(remote, payload, "pdt-alice")


def _assert_denied_and_audited(fc: FC, audit: int) -> None:
    (line,) = fc.audit_lines(audit)
    assert (line["user"], line["outcome"], line["duo_status"]) == ("pdt-deny", "failure", "deny")


@pytest.mark.parametrize("legacy", [True, False], ids=["scp-O", "scp-sftp"])
def test_scp_for_a_denied_user_fails_cleanly(fc, payload, legacy):
    remote = Path("/home/pdt-deny") / "up.bin"
    audit = fc.audit_mark()
    proc = fc.scp(str(payload), f"pdt-deny@127.0.0.1:{remote}", legacy=legacy)
    assert proc.returncode != 0
    if legacy:  # scp -O runs "scp -t" as a command: its stderr reaches the user
        assert b"Your account is disabled" in proc.stderr
    # (sshd discards the stderr of a subsystem such as sftp, so there the reason is only logged)
    assert not remote.exists()
    _assert_denied_and_audited(fc, audit)


@pytest.mark.parametrize("internal", [False, True], ids=["sftp-server", "internal-sftp"])
def test_sftp_batch_for_a_push_user(fc, payload, tmp_path, internal):
    sshd = fc.sshd_internal if internal else fc.sshd
    remote = Path("/home/pdt-alice/batch.bin")
    back = tmp_path / "batch-back.bin"
    proc = fc.sftp("pdt-alice", f"put {payload} {remote}\nget {remote} {back}\nls -l {remote}\n", sshd=sshd)
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == payload.read_bytes()
    _assert_uploaded(remote, payload, "pdt-alice")
    if internal:  # scp's default (SFTP) protocol goes through the same subsystem
        proc = fc.scp(str(payload), f"pdt-alice@127.0.0.1:{remote}", legacy=False, sshd=sshd)
        assert proc.returncode == 0, proc.stderr
        _assert_uploaded(remote, payload, "pdt-alice")


@pytest.mark.parametrize("internal", [False, True], ids=["sftp-server", "internal-sftp"])
def test_sftp_batch_for_a_denied_user_fails_cleanly(fc, payload, internal):
    sshd = fc.sshd_internal if internal else fc.sshd
    remote = Path("/home/pdt-deny/batch.bin")
    audit = fc.audit_mark()
    proc = fc.sftp("pdt-deny", f"put {payload} {remote}\n", sshd=sshd)
    assert proc.returncode != 0
    assert b"Connection closed" in proc.stderr
    assert not remote.exists()
    _assert_denied_and_audited(fc, audit)


# ------------------------------------------------------------------ forwarding
class Target:
    """A TCP listener on loopback that records every connection it gets."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.sendall(b"FORWARDED\n")
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def target():
    t = Target()
    yield t
    t.close()


class Background:
    """ssh -N ... with -v, its stderr collected."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, env=clean_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None and not any(text in l for l in self.lines):
                    return any(text in line for line in self.lines)
                self._cond.wait(min(remaining, 0.5))
            return True

    def stop(self) -> str:
        if self.proc.poll() is None:
            # SIGKILL: OpenSSH 9.2's client can miss a SIGTERM that arrives just before it polls.
            self.proc.kill()
            self.proc.wait()
        with self._cond:
            text = "\n".join(self.lines)
        TRANSCRIPTS.append(text.encode())
        return text


def _forward_argv(fc: FC, *args: str) -> list[str]:
    # ExitOnForwardFailure: if the local port was taken meanwhile, fail instead of testing someone else's
    return ["ssh", *fc.options(log_level=""), "-v", "-o", "ExitOnForwardFailure=yes", "-p", str(fc.sshd.port),
            *args, "pdt-alice@127.0.0.1"]


def _recv_all(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return data
        if not chunk:
            return data
        data += chunk


def _connect_local(port: int, bg: Background) -> socket.socket:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        raise AssertionError(f"cannot connect to ssh's listener: {exc}; ssh exit {bg.proc.poll()}:\n"
                             + "\n".join(bg.lines)) from None


def test_local_forwarding_is_refused(fc, target):
    local = free_port()
    bg = Background(_forward_argv(fc, "-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{target.port}"))
    try:
        assert bg.wait_for(f"Local forwarding listening on 127.0.0.1 port {local}"), bg.lines
        # (printed before bind(); the listener is up once the client loop starts)
        assert bg.wait_for("Entering interactive session."), bg.lines
        with _connect_local(local, bg) as conn:
            assert _recv_all(conn) == b""
        assert bg.wait_for("administratively prohibited")
    finally:
        log = bg.stop()
    assert target.accepted == 0, log


def test_dynamic_forwarding_is_refused(fc, target):
    local = free_port()
    bg = Background(_forward_argv(fc, "-N", "-D", f"127.0.0.1:{local}"))
    try:
        assert bg.wait_for(f"Local forwarding listening on 127.0.0.1 port {local}"), bg.lines
        # (printed before bind(); the listener is up once the client loop starts)
        assert bg.wait_for("Entering interactive session."), bg.lines
        with _connect_local(local, bg) as conn:
            conn.sendall(b"\x05\x01\x00")  # SOCKS5, no authentication
            conn.settimeout(10)
            assert conn.recv(2) == b"\x05\x00"
            conn.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", target.port))
            reply = _recv_all(conn)
            assert not reply.startswith(b"\x05\x00"), reply  # no "succeeded"
            assert b"FORWARDED" not in reply
        assert bg.wait_for("administratively prohibited")
    finally:
        log = bg.stop()
    assert target.accepted == 0, log


def test_stdio_forwarding_is_refused(fc, target):
    proc = fc._run(["ssh", *fc.options(), "-p", str(fc.sshd.port), "-W", f"127.0.0.1:{target.port}",
                    "pdt-alice@127.0.0.1"], timeout=30)
    assert proc.returncode == 255
    assert b"FORWARDED" not in proc.stdout
    assert b"administratively prohibited" in proc.stderr or b"stdio forwarding failed" in proc.stderr, proc.stderr
    assert target.accepted == 0


def test_remote_forwarding_is_refused(fc, target):
    proc = fc._run(["ssh", *fc.options(), "-p", str(fc.sshd.port), "-N", "-o", "ExitOnForwardFailure=yes",
                    "-R", f"127.0.0.1:0:127.0.0.1:{target.port}", "pdt-alice@127.0.0.1"], timeout=30)
    assert proc.returncode == 255
    assert b"remote port forwarding failed" in proc.stderr, proc.stderr
    assert target.accepted == 0


# ------------------------------------------------------------------ key material (keep last)
READ_PROBE = """
import json, sys
out = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            f.read(1)
        out[path] = "read"
    except OSError as exc:
        out[path] = type(exc).__name__
print(json.dumps(out))
"""


def test_nobody_but_root_can_read_the_key_material(fc, syslog_capture):
    skey = fc.simulator.duo_settings()["skey"]
    assert len(skey) == 40
    for path in (fc.config, fc.skey_file):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600), path
    st = os.stat(fc.broker.socket_path.parent)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)
    assert skey not in fc.config.read_text()  # it lives in skey_file only

    pid = fc.broker.pid
    probes = [str(fc.config), str(fc.skey_file), f"/proc/{pid}/environ", f"/proc/{pid}/mem",
              str(fc.simulator.state_dir / "keys.json"), str(fc.simulator.config_path)]
    proc = subprocess.run(["runuser", "-u", "pdt-alice", "--", "/usr/bin/python3", "-I", "-c", READ_PROBE,
                           *probes], env=clean_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome == {path: "PermissionError" for path in probes}, outcome

    # The skey never shows in anything a user or an administrator reads.
    assert TRANSCRIPTS, "run the whole module: the login tests fill the transcripts"
    for text in TRANSCRIPTS:
        assert skey.encode() not in text
    assert skey not in fc.broker.output()
    assert skey not in fc.sshd.output() and skey not in fc.sshd_internal.output()
    assert skey not in fc.audit.read_text()
    assert fc.audit_lines(), "the logins were audited"
    if syslog_capture.available:
        lines = syslog_capture.lines()
        assert any("pam_duo_py" in line for line in lines)
        assert not [line for line in lines if skey in line]
