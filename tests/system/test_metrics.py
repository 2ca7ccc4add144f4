"""``pam-duo-py metrics`` after real-PAM logins against the simulator: the metrics equal what
happened, before and after logrotate rotates the audit file (numbered and dated names,
compression), the output passes ``promtool check metrics``, and decision events reach a
journald stand-in with their structured fields."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import (CLI, PAM_AUTH_ERR, PAM_AUTHINFO_UNAVAIL, PAM_SUCCESS, STACK_ONLY_FACTOR,
                       clean_env, default_map_lines)

pytestmark = pytest.mark.system

RHOST = "203.0.113.5"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
ERROR_KINDS = ("unreachable", "401", "429", "4xx", "5xx", "malformed", "unknown_answer")


def parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class Fleet:
    """One audit file shared by several PAM services, each with its own config (the scenario)."""

    def __init__(self, test_root, write_config, write_map_file, pam_service, run_pam, dead_port):
        self.root = test_root / "metrics"
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(mode=0o755)
        self.audit = self.root / "audit.jsonl"
        self.state = self.root / "state" / "metrics-state.json"
        self.remember = self.root / "remember"
        self.remember.mkdir(mode=0o700)
        self.run_pam = run_pam
        self.expected: dict[tuple[str, str, str], int] = {}
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.preauths = 0
        base_map = write_map_file()
        rate_limited_map = write_map_file([line for line in default_map_lines() if not line.startswith("pdt-alice ")]
                                          + ["pdt-alice alice+429@preauth"])
        scenarios = {
            "allow": {}, "push": {}, "deny": {},
            "timeout": {"auth": {"push_timeout": 1, "prompts": 1}, "duo": {"timeout": 2}},
            "failsafe": {"auth": {"failmode": "safe"}, "duo": {"host": f"localhost:{dead_port}", "timeout": 2}},
            "429": {"duo": {"timeout": 1}, "map": rate_limited_map},
            "401": {"duo": {"skey": "Z" * 40}, "auth": {"failmode": "safe"}},
            "remember": {"extra": f'[remember]\nseconds = 300\nstate_dir = "{self.remember}"\n'},
        }
        for name, spec in scenarios.items():
            conf = write_config(f"pdt-met-{name}", duo=spec.get("duo"), auth=spec.get("auth"),
                                users={"map_file": str(spec.get("map", base_map))},
                                log={"audit_file": str(self.audit)},
                                extra_text=spec.get("extra", "")
                                + f'[broker]\nsocket = "{self.root / "no-broker.sock"}"\n')
            pam_service(f"pdt-met-{name}", STACK_ONLY_FACTOR, conf=conf)
            if name == "allow":
                self.config = conf

    def login(self, scenario: str, user: str, code: int, outcome: str, factor: str = "none",
              error: str | None = None) -> None:
        service = f"pdt-met-{scenario}"
        run = self.run_pam(service, user, rhost=RHOST)  # no tty: non-interactive, one push
        assert run.code == code, (scenario, run)
        key = (outcome, service, factor)
        self.expected[key] = self.expected.get(key, 0) + 1
        self.preauths += 1
        if error:
            self.errors[error] += 1

    def metrics(self, *extra: str) -> str:
        proc = subprocess.run([str(CLI), "-c", str(self.config), "metrics", "--state", str(self.state), *extra],
                              env=clean_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc
        assert proc.stderr == "", proc.stderr
        return proc.stdout

    def check(self, text: str) -> dict[str, float]:
        """The metrics equal what happened, and promtool accepts them."""
        promtool = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert promtool.returncode == 0, promtool.stdout + promtool.stderr
        values = parse(text)
        logins = {tuple(k.split('"')[1::2]): v for k, v in values.items() if k.startswith("pam_duo_py_logins_total{")}
        assert logins == self.expected
        assert values["pam_duo_py_failsafe_logins_total"] == sum(
            n for (outcome, _, _), n in self.expected.items() if outcome == "failsafe")
        assert values["pam_duo_py_remembered_logins_total"] == sum(
            n for (_, _, factor), n in self.expected.items() if factor == "remembered")
        assert {k: values[f'pam_duo_py_duo_errors_total{{kind="{k}"}}'] for k in ERROR_KINDS} == self.errors
        assert values['pam_duo_py_duo_request_duration_seconds_count{endpoint="preauth"}'] == self.preauths
        assert values["pam_duo_py_metrics_problems"] == 0
        return values

    def logrotate(self, *options: str) -> None:
        conf = self.root / "logrotate.conf"
        conf.write_text(f"{self.audit} {{\n  rotate 5\n  missingok\n  create 0600 root root\n"
                        + "".join(f"  {o}\n" for o in options) + "}\n")
        proc = subprocess.run(["logrotate", "-f", "-s", str(self.root / "logrotate.state"), str(conf)],
                              capture_output=True, text=True, env=clean_env())
        assert proc.returncode == 0, proc.stderr


@pytest.fixture
def fleet(installed, simulator, test_users, test_root, write_config, write_map_file, pam_service, run_pam):
    if shutil.which("promtool") is None or shutil.which("logrotate") is None:
        pytest.fail("promtool (Debian: prometheus) and logrotate are test dependencies (scripts/test)")
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused at once
    try:
        yield Fleet(test_root, write_config, write_map_file, pam_service, run_pam, dead.getsockname()[1])
    finally:
        dead.close()


def test_metrics_equal_what_happened_across_rotations(fleet, test_users):
    alice = test_users["alice"]
    fleet.login("allow", test_users["allow"], PAM_SUCCESS, "preauth_allow")
    fleet.login("push", alice, PAM_SUCCESS, "success", "push")
    fleet.login("deny", test_users["pushdeny"], PAM_AUTH_ERR, "failure", "push")
    fleet.login("timeout", test_users["pushtimeout"], PAM_AUTH_ERR, "failure", "push")
    fleet.login("failsafe", alice, PAM_SUCCESS, "failsafe", error="unreachable")
    fleet.login("429", alice, PAM_AUTHINFO_UNAVAIL, "error", error="429")
    fleet.login("401", alice, PAM_AUTHINFO_UNAVAIL, "error", error="401")
    fleet.login("remember", alice, PAM_SUCCESS, "success", "push")
    fleet.login("remember", alice, PAM_SUCCESS, "success", "remembered")
    first = fleet.metrics()
    print("\nmetrics after the scripted logins:\n" + first)
    values = fleet.check(first)
    assert values["pam_duo_py_duo_clock_offset_seconds"] == pytest.approx(0, abs=2)
    assert values['pam_duo_py_duo_request_duration_seconds_count{endpoint="auth"}'] == 4  # the pushes
    assert fleet.check(fleet.metrics()) == values, "running it again counts nothing twice"

    # logrotate with delaycompress: audit.jsonl -> audit.jsonl.1, a new empty audit.jsonl
    fleet.logrotate("compress", "delaycompress")
    assert (fleet.root / "audit.jsonl.1").exists()
    fleet.check(fleet.metrics())
    fleet.login("allow", test_users["allow"], PAM_SUCCESS, "preauth_allow")
    fleet.login("failsafe", alice, PAM_SUCCESS, "failsafe", error="unreachable")
    fleet.check(fleet.metrics())

    # again: .1 -> .2.gz; two logins that no run has read yet go with the file to .1
    fleet.login("deny", test_users["pushdeny"], PAM_AUTH_ERR, "failure", "push")
    fleet.login("401", alice, PAM_AUTHINFO_UNAVAIL, "error", error="401")
    fleet.logrotate("compress", "delaycompress")
    assert (fleet.root / "audit.jsonl.2.gz").exists()
    fleet.check(fleet.metrics())

    # dated names, compressed at once: a login not yet read lands straight in a .gz
    fleet.login("push", alice, PAM_SUCCESS, "success", "push")
    fleet.logrotate("compress", "dateext", "dateformat -%Y%m%d-%s")
    assert any(p.name.startswith("audit.jsonl-") and p.name.endswith(".gz") for p in fleet.root.iterdir())
    out = fleet.root / "textfile"
    out.mkdir()
    assert fleet.metrics("--textfile", str(out)) == ""
    text = (out / "pam_duo_py.prom").read_text()
    values = fleet.check(text)
    assert sum(values[k] for k in values if k.startswith("pam_duo_py_logins_total")) == 14
    assert oct(os.stat(out / "pam_duo_py.prom").st_mode & 0o777) == "0o644"
    assert [p.name for p in out.iterdir()] == ["pam_duo_py.prom"]


@pytest.fixture
def journal_stand_in():
    """A datagram socket at journald's path, when no journald runs here."""
    if JOURNAL_SOCKET.exists():
        pytest.skip("a journald runs on this host: its socket is not ours to replace")
    created = [d for d in (JOURNAL_SOCKET.parent.parent, JOURNAL_SOCKET.parent) if not d.exists()]
    for directory in created:
        directory.mkdir(mode=0o755)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(JOURNAL_SOCKET))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()
        JOURNAL_SOCKET.unlink(missing_ok=True)
        for directory in reversed(created):
            directory.rmdir()


def test_decisions_reach_journald_with_structured_fields(fleet, test_users, journal_stand_in, syslog_capture):
    mark = syslog_capture.mark()
    fleet.login("deny", test_users["pushdeny"], PAM_AUTH_ERR, "failure", "push")
    data = journal_stand_in.recv(65536)
    fields = dict(line.split("=", 1) for line in data.decode().splitlines())
    print("\njournald entry:\n" + data.decode())
    assert fields["SYSLOG_IDENTIFIER"] == "pam_duo_py"
    assert fields["PAM_DUO_OUTCOME"] == "failure" and fields["PAM_DUO_FACTOR"] == "push"
    assert fields["PAM_DUO_USER"] == test_users["pushdeny"] and fields["PAM_DUO_SERVICE"] == "pdt-met-deny"
    assert fields["PAM_DUO_RHOST"] == RHOST and len(fields["PAM_DUO_TXID"]) > 0
    assert fields["MESSAGE_ID"] == "bcdb794e002140e2651c8e1f069adefd"
    assert fields["MESSAGE"].startswith("Failed Duo login for 'pushdeny' from 203.0.113.5")
    if syslog_capture.available:
        assert not [l for l in syslog_capture.lines()[mark:] if "pdt-met-deny" in l], "one entry, not two"
    record = json.loads(fleet.audit.read_text().splitlines()[-1])
    assert record["txid"] == fields["PAM_DUO_TXID"]
