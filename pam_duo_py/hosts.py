"""What differs between the programs that run the PAM stack (sshd, sudo, su, login).

The rules are here; :func:`pam_duo_py.login.profile` applies them once per login, as the
:class:`~pam_duo_py.login.HostProfile` that the front end (PAM module, broker) puts on the
login request. Nothing else looks at the service name to tell the host programs apart.
Plain functions only: the PAM module asks them on every login through the broker.
"""
import os

# su to root: the user who ran su does Duo, as themselves (duo_unix's rule), and
# remembered logins are kept per calling uid.
SU_SERVICES = ("su", "su-l")

# sudo options that take a value (sudo 1.9); anything after them is the command.
_SUDO_SHORT_WITH_VALUE = set("CDghpRrtTUu")
_SUDO_LONG_WITH_VALUE = {
    "--close-from", "--chdir", "--group", "--host", "--prompt", "--chroot", "--role", "--type",
    "--command-timeout", "--other-user", "--user",
}


def caller_does_duo(service: str) -> bool:
    """su: to root the user who ran su does Duo, and remembered logins are kept per calling uid."""
    return service in SU_SERVICES


def holds_info_messages(service: str) -> bool:
    """OpenSSH delivers PAM info messages only with the next prompt (docs/platform.md)."""
    return service.startswith("sshd")


def sudo_command(argv: list[str]) -> str | None:
    """The command a sudo command line runs; "(login shell)" for -i and "(shell)" for -s with no command."""
    args = argv[1:]
    shell = ""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if name in ("--login", "--shell"):
                shell = shell or ("(login shell)" if name == "--login" else "(shell)")
            if name in _SUDO_LONG_WITH_VALUE and "=" not in arg:
                index += 1
            index += 1
            continue
        if arg.startswith("-") and len(arg) > 1:
            letters = arg[1:]
            for position, letter in enumerate(letters):
                if letter in "is":
                    shell = shell or ("(login shell)" if letter == "i" else "(shell)")
                if letter in _SUDO_SHORT_WITH_VALUE:
                    if position == len(letters) - 1:
                        index += 1
                    break
            index += 1
            continue
        break
    command = args[index:]
    if command:
        return " ".join(command)
    return shell or None


def command_for(service: str) -> str | None:
    """The command being authorised, when the host program is sudo (sudo does not export it to PAM)."""
    try:
        if os.path.basename(os.readlink("/proc/self/exe")) != "sudo":
            return None
        with open("/proc/self/cmdline", "rb") as handle:
            raw = handle.read(65536)
    except OSError:
        return None
    argv = [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]
    return sudo_command(argv) if argv else None
