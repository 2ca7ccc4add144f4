"""``pam-duo-login``'s own parts: its option, the refusal lines, running the command, its imports.

The whole wrapper against a real sshd and broker is tests/system/test_forcecommand.py.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from pam_duo_py import wrapper
from pam_duo_py.paths import DEFAULT_SOCKET
from pam_duo_py.result import Result


@pytest.mark.parametrize("args,expected", [
    ([], DEFAULT_SOCKET),
    (["--socket", "/run/x.sock"], "/run/x.sock"),
    (["--socket=/run/x.sock"], "/run/x.sock"),
    (["--sock", "/run/x.sock"], "/run/x.sock"),  # argparse's prefixes still work
])
def test_socket_option(args, expected):
    assert wrapper._socket_option(args) == expected


def test_socket_option_refuses_anything_else_and_has_help(capsys):
    with pytest.raises(SystemExit) as stop:
        wrapper._socket_option(["--bogus"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        wrapper._socket_option(["--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: pam-duo-login [-h] [--socket SOCKET]")


def test_refusal_lines():
    assert wrapper._refusal(Result.AUTH_ERR, "") == "Duo login refused."
    assert wrapper._refusal(Result.BAD_CONFIG, "") == wrapper.RESULT_MESSAGES[Result.SERVICE_ERR]
    assert wrapper._refusal(Result.BUSY, "too many concurrent logins.") == \
        "Duo login refused: too many concurrent logins."
    assert wrapper._refusal(Result.MAXTRIES, "x\x1b[2Jy") == "Duo login refused: too many attempts: x[2Jy."


def test_no_broker_socket_refuses_the_login(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SSH_ORIGINAL_COMMAND", raising=False)
    assert wrapper.main(["--socket", str(tmp_path / "none" / "broker.sock")]) == 1
    err = capsys.readouterr().err
    assert err == f"pam-duo-login: broker socket {tmp_path / 'none' / 'broker.sock'}: No such file or directory; " \
                  "login refused.\n"


def test_a_command_that_cannot_run(capsys):
    # _run() gives SIGPIPE and SIGXFSZ their default action for the command it execs; when the
    # exec fails, this test process would keep that, and a later test's write to a closed
    # socket would end the whole run (exit status 141).
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGPIPE, signal.SIGXFSZ)}
    try:
        assert wrapper._run("/nonexistent/pdt-shell", "true") == 1
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert capsys.readouterr().err == "pam-duo-login: cannot run /nonexistent/pdt-shell: No such file or directory\n"


def test_the_command_runs_with_sigpipe_and_sigxfsz_restored():
    # Python ignores both; the user's shell must not inherit that (SigIgn: a hex mask, bit n-1 for signal n).
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from pam_duo_py.wrapper import _run\n"
              "_run('/bin/sh', 'grep ^SigIgn: /proc/$$/status')")
    before = subprocess.run([sys.executable, "-I", "-c", "print(open('/proc/self/status').read())"],
                            capture_output=True, text=True, timeout=60).stdout
    out = subprocess.run([sys.executable, "-I", "-c", script, ROOT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ignored_before = int(next(line for line in before.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    ignored = int(out.stdout.split()[1], 16)
    pipe, xfsz = 1 << (13 - 1), 1 << (25 - 1)
    assert ignored_before & pipe and ignored_before & xfsz
    assert not ignored & pipe and not ignored & xfsz


def test_a_login_without_arguments_imports_neither_argparse_nor_typing_nor_signal(tmp_path):
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); from pam_duo_py import wrapper\n"
              "assert wrapper._socket_option([]) == wrapper.DEFAULT_SOCKET\n"
              "assert wrapper._ask_broker(sys.argv[2], {}, wrapper.TerminalPrompter(False)) is None\n"
              "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-c", script, ROOT, str(tmp_path / "none" / "broker.sock")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.endswith("No such file or directory; login refused.\n")
    modules = json.loads(out.stdout)
    assert not set(modules) & {"argparse", "typing", "signal", "gettext", "locale", "shutil"}
