"""``pam-duo-login``: the SSH ``ForceCommand`` wrapper (docs/behaviour.md §7).

It runs as the logged-in user and asks the broker (which alone can read the
keys) to run the Duo login; on success it becomes the user's shell or the
command the client asked for, exactly as sshd would have run it. It reads only
``SSH_ORIGINAL_COMMAND``, ``SSH_CONNECTION``, ``SSH_TTY``, ``DUO_PASSCODE``,
``HOME``, ``SHELL`` and the passwd entry, and needs no config.
"""
from __future__ import annotations

import os
import pwd
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every SSH login milliseconds
    from typing import Sequence

from .broker_client import connect, converse
from .broker_protocol import WRAPPER_ACK_TIMEOUT, NotAccepted, ProtocolError
from .paths import DEFAULT_SOCKET
from .result import Result
from .errors import ConversationError
from .text import for_display

SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")
RESULT_MESSAGES = {  # what the user reads when the login is refused; the broker may add its reason
    Result.AUTH_ERR: "Duo login refused.",
    Result.MAXTRIES: "Duo login refused: too many attempts.",
    Result.CONV_ERR: "Duo login cancelled.",
    Result.AUTHINFO_UNAVAIL: "Duo two-factor authentication is unavailable; login refused.",
    Result.USER_UNKNOWN: "Duo login refused: unknown user.",
    Result.SERVICE_ERR: "Duo login refused: configuration or internal error (see the system log).",
    Result.BAD_CONFIG: "Duo login refused: configuration or internal error (see the system log).",
}


class TerminalPrompter:
    """Prompts on the controlling terminal; status lines on stderr. Never writes to stdout.

    The terminal is used through a raw file descriptor, read one byte at a time:
    a tty is not seekable (so Python's buffered "r+" mode cannot open it), and
    whatever the user typed after the answer must be left for the shell.
    """

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self._fd: int | None = None
        if interactive:
            try:
                self._fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError:
                self._fd = None
                self.interactive = False

    def ask(self, text: str) -> str:
        if self._fd is None:
            raise ConversationError("no terminal")
        try:
            self._put(text)
            line = self._readline()
        except (OSError, KeyboardInterrupt):
            raise ConversationError("terminal closed") from None
        if line is None:
            raise ConversationError("end of input")
        return line.rstrip("\r\n")

    def _readline(self, limit: int = 4096) -> str | None:
        """One line from the terminal; None at end of input (^D on an empty line, hang-up)."""
        assert self._fd is not None
        data = bytearray()
        while len(data) < limit:
            byte = os.read(self._fd, 1)
            if not byte:
                if not data:
                    return None
                break
            data += byte
            if byte == b"\n":
                break
        return data.decode("utf-8", "replace")

    def _put(self, text: str) -> None:
        assert self._fd is not None
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(self._fd, data):]

    def show(self, text: str) -> None:
        if self.interactive and text:
            self._write(text)

    def alert(self, text: str) -> None:
        if text:
            self._write(text)

    def _write(self, text: str) -> None:
        try:
            if self._fd is not None:
                self._put(text + "\n")
            else:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        except OSError:
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def command_argv(shell: str, command: str | None) -> list[str]:
    """What sshd would exec: the login shell, or ``shell -c command`` (``internal-sftp`` -> sftp-server)."""
    name = os.path.basename(shell)
    if command is None:
        return [shell, "-" + name]
    words = command.split(None, 1)
    if words and words[0] == "internal-sftp":
        server = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), SFTP_SERVERS[0])
        command = server + (" " + words[1] if len(words) > 1 else "")
    return [shell, name, "-c", command]


def _socket_option(args: Sequence[str]) -> str:
    """The broker socket from the command line (``--socket PATH``; ``--help`` exits).

    Without arguments (how the shipped ForceCommand runs it) this is the default, and argparse
    (with the regular expressions, gettext and locale it loads: milliseconds on every SSH login)
    is not imported.
    """
    if not args:
        return DEFAULT_SOCKET
    import argparse

    parser = argparse.ArgumentParser(
        prog="pam-duo-login",
        description="Duo second factor for SSH ForceCommand: asks the pam-duo-py broker to run a Duo "
                    "login for the current user, then runs the login shell or $SSH_ORIGINAL_COMMAND.",
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"broker socket (default {DEFAULT_SOCKET})")
    return parser.parse_args(args).socket


def main(argv: Sequence[str] | None = None) -> int:
    socket_path = _socket_option(sys.argv[1:] if argv is None else argv)
    env = os.environ
    command = env.get("SSH_ORIGINAL_COMMAND")
    connection = env.get("SSH_CONNECTION", "").split()
    passcode = env.pop("DUO_PASSCODE", None)
    interactive = command is None and bool(env.get("SSH_TTY")) and os.isatty(0)
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        sys.stderr.write("pam-duo-login: unknown user\n")
        return 1
    shell = entry.pw_shell or env.get("SHELL") or "/bin/sh"

    ui = TerminalPrompter(interactive)
    request = {
        "user": entry.pw_name,
        "rhost": connection[0] if connection else None,
        "tty": env.get("SSH_TTY") if ui.interactive else None,
        "interactive": ui.interactive,
        "command": command,
        "env_passcode": passcode,
    }
    result = _ask_broker(socket_path, request, ui)
    if result is None:
        return 1
    if result[0] not in (Result.SUCCESS, Result.IGNORE):
        sys.stderr.write(_refusal(*result) + "\n")
        return 1
    return _run(shell, command)


def _ask_broker(socket_path: str, request: dict, ui: TerminalPrompter) -> tuple[Result, str] | None:
    """The broker's verdict and reason; None when there is none (the reason is already on stderr)."""
    try:
        sock = connect(socket_path, timeout=WRAPPER_ACK_TIMEOUT)
    except ProtocolError as exc:
        sys.stderr.write(f"pam-duo-login: {exc}; login refused.\n")
        return None
    try:
        with sock:
            return converse(sock, request, ui, ack_timeout=WRAPPER_ACK_TIMEOUT)
    except NotAccepted as exc:
        sys.stderr.write(f"pam-duo-login: the broker did not take the login: {exc}; login refused.\n")
    except (ProtocolError, OSError) as exc:
        sys.stderr.write(f"pam-duo-login: lost the broker: {exc}; login refused.\n")
    except KeyboardInterrupt:  # Ctrl-C while a push is pending: no traceback, nothing runs
        sys.stderr.write(RESULT_MESSAGES[Result.CONV_ERR] + "\n")
    finally:
        ui.close()
    return None


def _refusal(result: Result, message: str) -> str:
    """What the user reads when the login is refused."""
    text = RESULT_MESSAGES.get(result, "Duo login refused.")
    if message:  # the broker's own reason (e.g. too many concurrent logins), already plain text
        text = f"{text.rstrip('.')}: {for_display(message, limit=200).rstrip('.')}."
    return text


def _run(shell: str, command: str | None) -> int:
    """Replace this process with the login shell or the client's command, as sshd would have run it."""
    import _signal  # the C module: signal.py builds enums, and this is all that is needed of it

    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    argv_exec = command_argv(shell, command)
    try:
        os.execv(argv_exec[0], argv_exec[1:])
    except OSError as exc:
        sys.stderr.write(f"pam-duo-login: cannot run {argv_exec[0]}: {exc.strerror}\n")
        return 1
    return 1  # not reached
