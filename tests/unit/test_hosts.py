"""What differs between host programs: sudo's command line, sshd's held-back messages."""
from __future__ import annotations

import pytest

from pam_duo_py.hosts import caller_does_duo, command_for, holds_info_messages, sudo_command
from pam_duo_py.login import HostProfile, profile


@pytest.mark.parametrize("argv,expected", [
    (["sudo", "-S", "-p", "", "id", "-un"], "id -un"),
    (["sudo", "-u", "bob", "--", "ls", "-l"], "ls -l"),
    (["sudo", "-i"], "(login shell)"),
    (["sudo", "-s"], "(shell)"),
    (["sudo", "--login"], "(login shell)"),
    (["sudo", "--shell"], "(shell)"),
    (["sudo", "-i", "-u", "bob"], "(login shell)"),
    (["sudo", "--user=bob", "cmd"], "cmd"),
    (["sudo", "--user", "bob", "cmd", "arg"], "cmd arg"),
    (["sudo", "-Eu", "bob", "cmd"], "cmd"),
    (["sudo", "-ubob", "cmd"], "cmd"),
    (["sudo", "-uEbob", "cmd"], "cmd"),  # the value is attached: E is part of it
    (["sudo", "-E", "-H", "make", "install"], "make install"),
    (["sudo", "-g", "wheel", "-C", "5", "-D", "/tmp", "true"], "true"),
    (["sudo", "-i", "ls"], "ls"),
    (["sudo", "-s", "--", "-weird"], "-weird"),
    (["sudo", "--", "--user=x"], "--user=x"),
    (["sudo", "-u", "bob", "-i", "--", "echo", "-n", "x"], "echo -n x"),
    (["sudo", "--preserve-env=PATH", "env"], "env"),
    (["sudo", "--prompt=pw: ", "id"], "id"),
    (["sudo", "-p", "-u", "id"], "id"),  # "-u" is the prompt here, not an option
    (["sudo", "rm", "-u", "x"], "rm -u x"),  # options after the command belong to it
    (["sudo"], None),
    (["sudo", "-v"], None),
    (["sudo", "-k"], None),
    (["sudo", "-u", "bob"], None),
    (["sudo", "-u"], None),
])
def test_sudo_command(argv, expected):
    assert sudo_command(argv) == expected


@pytest.mark.parametrize("service,expected", [("sshd", True), ("sshd-duo", True), ("sudo", False), ("su", False),
                                              ("login", False), ("", False)])
def test_holds_info_messages(service, expected):
    assert holds_info_messages(service) is expected


def test_command_for_is_none_outside_sudo():
    assert command_for("sudo") is None  # this process is python, not sudo


@pytest.mark.parametrize("service,info,caller", [("sshd", True, False), ("sshd-duo", True, False), ("su", False, True),
                                                 ("su-l", False, True), ("sudo", False, False), ("sux", False, False),
                                                 ("login", False, False), ("pam-duo-login", False, False)])
def test_profile_of_a_service(service, info, caller):
    assert (holds_info_messages(service), caller_does_duo(service)) == (info, caller)
    assert profile(service) == HostProfile(holds_info_messages=info, caller_does_duo=caller)
    assert profile(service, "id -un").command == "id -un"


def test_the_engine_knows_no_host_program():
    """The engine gets the host program's facts on the login; it does not import hosts."""
    import ast
    import os

    from conftest import ROOT

    with open(os.path.join(ROOT, "pam_duo_py", "engine.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "hosts" not in imported


def test_only_hosts_tells_the_host_programs_apart_by_service_name():
    """su, sudo and sshd are named in code only in hosts.py: everything else asks the HostProfile."""
    import ast
    import os

    from conftest import ROOT

    names = {"su", "su-l", "sudo", "sshd"}
    found = []
    for package in ("pam_duo_py", "pam_duo_tools"):
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if not name.endswith(".py") or (package, name) == ("pam_duo_py", "hosts.py"):
                continue
            with open(os.path.join(ROOT, package, name), encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            found += [f"{package}/{name}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value in names]
    assert found == []
