"""The installed ``pam-duo-py admin`` commands against the simulator, and logins through real PAM
with what they create: bypass codes, readiness, and a login path that never reads admin.toml."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .brokerkit import (BrokerProcess, fc_config_text, fc_root, run_user_client, socket_dir, write_map,  # noqa: F401
                        write_root_file)
from .conftest import CLI, ETC_DIR, PAM_SUCCESS, STACK_ONLY_FACTOR, clean_env

TTY = "/dev/pts/9"
RHOST = "203.0.113.7"
ADMIN_CONFIG = ETC_DIR / "admin.toml"


def admin(simulator, conf: Path, *args: str, keys: str = "admin.toml") -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "-c", str(conf), "--admin-config", str(simulator.state_dir / keys),
                           "admin", *args], env=clean_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def service(installed, simulator, test_users, write_config, write_map_file, pam_service, test_root):
    """service(name, map_lines=None, groups=None) -> (config, audit file); a Duo-only PAM stack pdt-adm-NAME."""

    def make(name: str, map_lines=None, groups=None):
        audit = test_root / f"audit-adm-{name}.jsonl"
        audit.unlink(missing_ok=True)
        users = {"map_file": str(write_map_file(map_lines))}
        if groups is not None:
            users["groups"] = groups
        conf = write_config(f"adm-{name}", auth={"prompts": 1}, users=users, log={"audit_file": str(audit)},
                            extra_text=f'[broker]\nsocket = "{test_root / "no-broker.sock"}"\n')
        pam_service(f"pdt-adm-{name}", STACK_ONLY_FACTOR, conf=conf)
        return conf, audit

    return make


def test_bypass_code_logs_in_exactly_its_uses_through_pam_and_is_never_logged(service, simulator, test_users, run_pam,
                                                                             syslog_capture):
    conf, audit = service("bypass")
    alice = test_users["alice"]
    log_mark = syslog_capture.mark() if syslog_capture.available else 0

    refused = admin(simulator, conf, "bypass-code", alice)  # stdout is a pipe, no --yes: nothing is created
    assert refused.returncode == 1 and refused.stdout == "" and "not a terminal" in refused.stderr

    made = admin(simulator, conf, "bypass-code", alice, "--uses", "2", "--valid", "15m", "--yes")
    assert made.returncode == 0, made.stderr
    (code,) = [line.strip() for line in made.stdout.splitlines() if line.startswith("  ")]
    assert code.isdigit() and code.startswith("0"), "the simulator's first code starts with 0"

    results = [run_pam("pdt-adm-bypass", alice, [code], tty=TTY, rhost=RHOST).code for _ in range(3)]
    assert results[:2] == [PAM_SUCCESS, PAM_SUCCESS] and results[2] != PAM_SUCCESS, results
    assert run_pam("pdt-adm-bypass", alice, ["123456"], tty=TTY, rhost=RHOST).code == PAM_SUCCESS

    records = [json.loads(line) for line in audit.read_text().splitlines()]
    issued = [r for r in records if r["outcome"] == "admin"]
    assert len(issued) == 1 and (issued[0]["count"], issued[0]["uses"], issued[0]["valid_secs"]) == (1, 2, 900)
    assert issued[0]["user"] == alice and issued[0]["action"] == "bypass-code"
    assert [r["outcome"] for r in records if r["outcome"] != "admin"] == ["success", "success", "failure", "success"]
    places = {"audit file": audit.read_text(), "simulator request log": simulator.request_log.read_text(),
              "simulator stderr": simulator.stderr_text(), "admin stderr": made.stderr}
    if syslog_capture.available:
        assert syslog_capture.wait_for(lambda line: "Duo admin action for" in line and alice in line, since=log_mark)
        places["syslog"] = "\n".join(syslog_capture.lines()[log_mark:])
    for where, text in places.items():
        assert code not in text, f"a bypass code is in the {where}"


@pytest.mark.parametrize("duo_name, status, expected", [
    ("alice", 0, "Status:      active"),
    ("bypass", 0, "Status:      bypass"),
    ("nobody", 1, ""),
])
def test_admin_user(service, simulator, test_users, duo_name, status, expected):
    alice = test_users["alice"]
    conf, _ = service("user", map_lines=[f"{alice} {duo_name}"])
    proc = admin(simulator, conf, "user", alice)
    assert proc.returncode == status, proc.stderr
    assert expected in proc.stdout
    if status:
        assert "Duo does not know 'nobody'" in proc.stderr


def test_readiness_json_and_exit_codes(service, simulator, test_users):
    conf, _ = service("ready", groups=[test_users.group])  # pdt-enroll is in the group and not enrolled
    proc = admin(simulator, conf, "readiness", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    rows = {row["user"]: row for row in report["users"]}
    assert rows[test_users["enroll"]] == {"user": test_users["enroll"], "duo_user": "enroll",
                                          "state": "not_enrolled", "locked_out": True}
    assert rows[test_users["deny"]]["state"] == "disabled" and rows[test_users["alice"]]["state"] == "push"
    assert rows[test_users["allow"]]["state"] == "allow" and rows[test_users["tokenonly"]]["state"] == "passcode_only"
    assert test_users.exempt not in rows
    assert report["total"] == len(report["users"]) and report["locked_out"] == 2
    table = admin(simulator, conf, "readiness")
    enroll_row = next(line.split() for line in table.stdout.splitlines() if line.startswith(test_users["enroll"] + " "))
    assert table.returncode == 1 and enroll_row[:4] == [test_users["enroll"], "enroll", "not_enrolled", "YES"]
    print(table.stdout)  # the table, for the record (pytest -s)

    ready_map = [f"{name} {'alice' if short in ('enroll', 'deny') else short}" for short, name in test_users.items()]
    conf, _ = service("ready-ok", map_lines=ready_map, groups=[test_users.group])
    proc = admin(simulator, conf, "readiness", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["locked_out"] == 0, proc.stdout + proc.stderr


@pytest.fixture
def broken_admin_config():
    """/etc/pam_duo_py/admin.toml (the default path) replaced by a broken, unsafe file; restored after."""
    backup = None
    if ADMIN_CONFIG.exists() or ADMIN_CONFIG.is_symlink():
        backup = ADMIN_CONFIG.with_name(".admin.toml.pdt-backup")
        os.replace(ADMIN_CONFIG, backup)
    ADMIN_CONFIG.write_text("[admin\nthis is not TOML\n")
    os.chown(ADMIN_CONFIG, 65534, 65534)
    os.chmod(ADMIN_CONFIG, 0o666)
    try:
        yield ADMIN_CONFIG
    finally:
        ADMIN_CONFIG.unlink(missing_ok=True)
        if backup is not None:
            os.replace(backup, ADMIN_CONFIG)


def test_login_works_with_a_broken_admin_config(service, simulator, test_users, run_pam, broken_admin_config):
    conf, audit = service("broken-admin")
    alice = test_users["alice"]
    assert run_pam("pdt-adm-broken-admin", alice, ["123456"], tty=TTY, rhost=RHOST).code == PAM_SUCCESS
    check = subprocess.run([str(CLI), "-c", str(conf), "check", "--offline"], env=clean_env(),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # validating the login config never reads admin.toml
    full = subprocess.run([str(CLI), "-c", str(conf), "check"], env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    assert full.returncode == 1 and f"{broken_admin_config}: owned by nobody" in full.stderr
    os.chmod(broken_admin_config, 0)  # unreadable even for its owner
    assert run_pam("pdt-adm-broken-admin", alice, ["123456"], tty=TTY, rhost=RHOST).code == PAM_SUCCESS


def test_broker_and_wrapper_logins_work_with_a_broken_admin_config(installed, simulator, test_users, test_root,
                                                                  fc_root, broken_admin_config):
    sock_dir = socket_dir(fc_root, "adm-broken")
    conf = write_root_file(test_root / "adm-broker.toml", fc_config_text(
        simulator, auth={"push_timeout": 10}, users={"map_file": str(write_map(test_root / "adm-broker-map.txt"))},
        broker={"socket": str(sock_dir / "broker.sock")}))
    broker = BrokerProcess(conf, sock_dir / "broker.sock").start()
    try:
        os.chmod(broken_admin_config, 0)
        result, client = run_user_client(fc_root, sock_dir / "broker.sock", test_users["alice"],
                                         {"user": test_users["alice"], "interactive": False, "service": "sshd"})
        assert result["result"] == "SUCCESS", client.events
        assert "admin" not in broker.output()
    finally:
        broker.stop()

