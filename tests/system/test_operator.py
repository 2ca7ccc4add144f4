"""Operator features through the installed product and real libpam, against the simulator:
remembered authentication, preferred device, Duo user ids, ``check --user``, ``audit``
and ``import-duo-unix`` as installed commands."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import (PAM_AUTH_ERR, PAM_SUCCESS, STACK_ONLY_FACTOR, clean_env)

SAMPLES = Path(__file__).resolve().parent.parent / "unit" / "data" / "duo_unix"


@pytest.fixture
def state_dir(test_root):
    path = test_root / "state"
    path.mkdir(mode=0o700, exist_ok=True)
    for child in path.iterdir():
        child.unlink()
    return path


@pytest.fixture
def remember_service(installed, test_users, write_config, write_map_file, pam_service, state_dir, test_root):
    """A Duo-only stack remembering logins for 300 s (sshd-like: remote address required; 'pdt-op-sudo' without)."""
    audit = test_root / "operator-audit.jsonl"
    conf = write_config(
        "operator-remember",
        auth={"push_timeout": 5},
        users={"map_file": str(write_map_file())},
        log={"audit_file": str(audit)},
        extra_text=f'[remember]\nseconds = 300\nservices_without_address = ["pdt-op-sudo"]\nstate_dir = "{state_dir}"\n',
    )
    pam_service("pdt-op-sshd", STACK_ONLY_FACTOR, conf=conf)
    pam_service("pdt-op-sudo", STACK_ONLY_FACTOR, conf=conf)
    pam_service("pdt-op-login", STACK_ONLY_FACTOR, conf=conf)
    return {"conf": conf, "audit": audit, "state": state_dir}


def pushes(simulator, mark):
    return [r for r in simulator.requests(since=mark) if r.get("event") == "request" and r.get("path") == "/auth/v2/auth"]


def preauths(simulator, mark):
    return [r for r in simulator.requests(since=mark) if r.get("event") == "request" and r.get("path") == "/auth/v2/preauth"]


def login(run_pam, service, user, rhost):
    return run_pam(service, user, rhost=rhost)  # no tty: one push, no menu


def test_remembered_login_skips_the_factor_for_the_same_user_address_and_service(remember_service, run_pam, test_users, simulator):
    alice = test_users["alice"]
    first_mark = simulator.mark()
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    assert len(pushes(simulator, first_mark)) == 1

    mark = simulator.mark()
    again = login(run_pam, "pdt-op-sshd", alice, "203.0.113.5")
    assert again.code == PAM_SUCCESS
    assert pushes(simulator, mark) == []  # no factor
    assert len(preauths(simulator, mark)) == 1  # but preauth still runs
    records = [json.loads(line) for line in remember_service["audit"].read_text().splitlines()]
    assert records[-1]["factor"] == "remembered" and records[-1]["outcome"] == "success"
    state = remember_service["state"]
    assert (os.stat(state).st_mode & 0o777) == 0o700
    assert (os.stat(state / "remember.json").st_mode & 0o777) == 0o600


@pytest.mark.parametrize("service, rhost, why", [
    ("pdt-op-sshd", "203.0.113.6", "another IPv4 address"),
    ("pdt-op-login", "203.0.113.5", "another service"),
    ("pdt-op-sshd", "client.example", "a host name never counts"),
    ("pdt-op-sshd", None, "no address, service not listed"),
])
def test_remembered_login_does_not_carry_over(remember_service, run_pam, test_users, simulator, service, rhost, why):
    alice = test_users["alice"]
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    mark = simulator.mark()
    assert login(run_pam, service, alice, rhost).code == PAM_SUCCESS
    assert len(pushes(simulator, mark)) == 1, why


def test_remembered_ipv6_by_64(remember_service, run_pam, test_users, simulator):
    alice = test_users["alice"]
    assert login(run_pam, "pdt-op-sshd", alice, "2001:db8:1:2::10").code == PAM_SUCCESS
    mark = simulator.mark()
    assert login(run_pam, "pdt-op-sshd", alice, "2001:db8:1:2:aaaa:bbbb:cccc:dddd").code == PAM_SUCCESS
    assert pushes(simulator, mark) == []
    mark = simulator.mark()
    assert login(run_pam, "pdt-op-sshd", alice, "2001:db8:1:3::10").code == PAM_SUCCESS
    assert len(pushes(simulator, mark)) == 1


def test_service_without_address_only_when_listed(remember_service, run_pam, test_users, simulator):
    alice = test_users["alice"]
    assert login(run_pam, "pdt-op-sudo", alice, None).code == PAM_SUCCESS
    mark = simulator.mark()
    assert login(run_pam, "pdt-op-sudo", alice, None).code == PAM_SUCCESS
    assert pushes(simulator, mark) == []


def test_expired_entry_asks_again(remember_service, run_pam, test_users, simulator):
    alice = test_users["alice"]
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    path = remember_service["state"] / "remember.json"
    data = json.loads(path.read_text())
    data["entries"] = {key: 1.0 for key in data["entries"]}  # expired long ago
    path.write_text(json.dumps(data))
    mark = simulator.mark()
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    assert len(pushes(simulator, mark)) == 1


def test_deny_clears_remembered_logins(remember_service, run_pam, test_users, write_map_file, write_config, pam_service,
                                       simulator, state_dir):
    alice = test_users["alice"]
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    # Duo now denies alice (her map line points at a denied Duo user); the same state dir.
    denied_conf = write_config(
        "operator-denied", auth={"push_timeout": 5},
        users={"map_file": str(write_map_file([f"{alice} deny"]))},
        extra_text=f'[remember]\nseconds = 300\nstate_dir = "{state_dir}"\n')
    pam_service("pdt-op-denied", STACK_ONLY_FACTOR, conf=denied_conf)
    assert login(run_pam, "pdt-op-denied", alice, "203.0.113.5").code == PAM_AUTH_ERR
    mark = simulator.mark()
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    assert len(pushes(simulator, mark)) == 1  # asked again


def test_corrupted_store_is_ignored_logged_and_never_allows(remember_service, run_pam, test_users, simulator, syslog_capture):
    alice = test_users["alice"]
    path = remember_service["state"] / "remember.json"
    path.write_text("{corrupted")
    os.chmod(path, 0o600)
    mark = simulator.mark()
    since = syslog_capture.mark() if syslog_capture.available else 0
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    assert len(pushes(simulator, mark)) == 1  # the factor was asked for
    if syslog_capture.available:
        assert syslog_capture.wait_for(lambda line: "state file ignored" in line and "corrupted" in line, since=since)


def test_a_stopped_process_holding_the_state_lock_does_not_hang_logins(remember_service, run_pam, test_users, simulator,
                                                                       syslog_capture):
    # Under su or sudo the user owns the login process and can stop it while it holds the lock.
    alice = test_users["alice"]
    lock = remember_service["state"] / "remember.json.lock"
    lock.touch(mode=0o600)
    holder = subprocess.Popen(["flock", str(lock), "sh", "-c", "echo held; kill -STOP $$"], env=clean_env(),
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert holder.stdout.readline() == b"held\n"
        since = syslog_capture.mark() if syslog_capture.available else 0
        for _ in range(2):  # not remembered (the write was skipped), so the second login asks again
            mark = simulator.mark()
            assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
            assert len(pushes(simulator, mark)) == 1
        if syslog_capture.available:
            assert syslog_capture.wait_for(lambda line: "remembering this login skipped" in line, since=since)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS  # the lock is free again: saved
    mark = simulator.mark()
    assert login(run_pam, "pdt-op-sshd", alice, "203.0.113.5").code == PAM_SUCCESS
    assert pushes(simulator, mark) == []


def test_user_id_mapping_uses_user_id(installed, test_users, write_config, write_map_file, pam_service, run_pam, simulator):
    alice = test_users["alice"]
    conf = write_config("operator-userid", auth={"push_timeout": 5},
                        users={"map_file": str(write_map_file([f"{alice} user_id=DUABCDEFGHIJKLMNOPQR"]))})
    pam_service("pdt-op-userid", STACK_ONLY_FACTOR, conf=conf)
    mark = simulator.mark()
    assert run_pam("pdt-op-userid", alice).code == PAM_SUCCESS
    assert [r["username"] for r in preauths(simulator, mark)] == ["iduser"]  # the simulator's name for any DU... id


def test_preferred_device_offered_first(installed, test_users, write_config, write_map_file, pam_service, run_pam,
                                         state_dir):
    alice = test_users["alice"]
    conf = write_config("operator-preferred", auth={"push_timeout": 5, "preferred_device": True},
                        users={"map_file": str(write_map_file())}, extra_text=f'[remember]\nstate_dir = "{state_dir}"\n')
    pam_service("pdt-op-pref", STACK_ONLY_FACTOR, conf=conf)
    first = run_pam("pdt-op-pref", alice, ["push2"], tty="/dev/pts/9")
    assert first.code == PAM_SUCCESS
    assert " 1. Duo Push to XXX-XXX-1234" in first.prompts[0][1]
    second = run_pam("pdt-op-pref", alice, ["1"], tty="/dev/pts/9")
    assert second.code == PAM_SUCCESS
    assert " 1. Duo Push to XXX-XXX-5678" in second.prompts[0][1]


def cli(*args, check_exit=None):
    proc = subprocess.run(["/usr/local/bin/pam-duo-py", *args], env=clean_env(), capture_output=True, text=True, timeout=60)
    if check_exit is not None:
        assert proc.returncode == check_exit, proc.stdout + proc.stderr
    return proc


@pytest.mark.parametrize("duo_user, expected", [
    ("alice", ["second factor required", "1. Duo Push to XXX-XXX-1234", "3. SMS passcodes to XXX-XXX-1234"]),
    ("allow", ["allowed without a second factor"]),
    ("deny", ["denied: Your account is disabled"]),
    ("enroll", ["must enroll first: https://localhost/portal"]),
])
def test_check_user_dry_run(installed, test_users, write_config, write_map_file, simulator, duo_user, expected):
    alice = test_users["alice"]
    conf = write_config(f"operator-check-{duo_user}", users={"map_file": str(write_map_file([f"{alice} {duo_user}"]))})
    mark = simulator.mark()
    proc = cli("-c", str(conf), "check", "--user", alice, check_exit=0)
    for text in expected:
        assert text in proc.stdout, proc.stdout
    assert "Config" in proc.stdout and "keys accepted" in proc.stdout and "Clock:" in proc.stdout
    assert pushes(simulator, mark) == []  # a dry run never pushes
    assert simulator.duo_settings()["skey"] not in proc.stdout + proc.stderr


def test_check_exit_codes(installed, write_config, simulator, test_root):
    good = write_config("operator-check-good")
    assert cli("-c", str(good), "check").returncode == 0
    bad = write_config("operator-check-bad", extra_text="[auth]\nprompts = 9\n")
    proc = cli("-c", str(bad), "check")
    assert proc.returncode == 1 and "auth.prompts" in proc.stderr
    wrong_key = write_config("operator-check-401", duo={"skey": "x" * 40})
    proc = cli("-c", str(wrong_key), "check")
    assert proc.returncode == 2 and "401" in proc.stderr


def test_audit_summarises_the_audit_file(remember_service, run_pam, test_users):
    for user in ("alice", "deny"):
        run_pam("pdt-op-sshd", test_users[user], rhost="203.0.113.5")
    proc = cli("-c", str(remember_service["conf"]), "audit", "--since", "1h", "--json", check_exit=0)
    summary = json.loads(proc.stdout)
    assert summary["by_user"][test_users["alice"]]["success"] >= 1
    assert summary["by_user"][test_users["deny"]]["failure"] == 1
    assert summary["by_service"]["pdt-op-sshd"]["total"] >= 2
    table = cli("-c", str(remember_service["conf"]), "audit", "--since", "1h", check_exit=0).stdout
    assert test_users["deny"] in table


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.conf")))
def test_import_duo_unix_installed_command(installed, tmp_path, sample):
    src = tmp_path / sample
    src.write_bytes((SAMPLES / sample).read_bytes())
    os.chmod(src, 0o600)
    proc = cli("import-duo-unix", str(src))
    assert proc.returncode in (0, 1)
    if proc.returncode == 0:
        assert "failmode" in proc.stdout
    else:
        assert proc.stderr.strip()
