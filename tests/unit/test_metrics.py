"""``pam-duo-py metrics``: counting decision events, the text format, counters that survive
rotation of the audit file (both logrotate namings, compression, copytruncate) without counting
a line twice, and the atomic textfile."""
from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import threading

import pytest

from pam_duo_tools import metrics
from pam_duo_py.events import event

NOW = 1_800_000_000.0


def ev(outcome: str, n: int = 0, **fields) -> dict:
    record = event(outcome, **fields)
    record["time"] = NOW - 1000 + n
    return record


def append(path: pathlib.Path, *records, tail: bytes = b"") -> None:
    with open(path, "ab") as f:
        for record in records:
            f.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
        f.write(tail)
    os.chmod(path, 0o600)


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "m"
    root.mkdir(mode=0o755)
    audit = root / "audit.jsonl"
    config = root / "pam_duo.toml"
    config.write_text(f'[log]\naudit_file = "{audit}"\n[broker]\nsocket = "{root / "run" / "broker.sock"}"\n')
    os.chmod(config, 0o600)
    state = root / "state" / "metrics-state.json"
    return root, audit, config, state


def values(text: str) -> dict[str, float]:
    """Sample lines as {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def run(setup) -> dict[str, float]:
    _, _, config, state = setup
    text, problems = metrics.collect(str(config), str(state), now=NOW)
    assert problems == []
    return values(text)


def logins(v: dict[str, float]) -> float:
    return sum(value for name, value in v.items() if name.startswith("pam_duo_py_logins_total"))


# -- counting ----------------------------------------------------------------------------------

def test_counts_outcomes_factors_calls_and_clock(setup):
    _, audit, _, _ = setup
    append(audit,
           ev("success", 1, service="sshd", factor="push",
              duo_calls=[["preauth", 0.04, None], ["auth", 0.2, None], ["auth_status", 3.0, None]], clock_offset=-1.5),
           ev("failsafe", 2, service="sshd", duo_calls=[["preauth", 2.0, "unreachable"]]),
           ev("error", 3, service="sudo", duo_calls=[["preauth", 0.01, "429"]]),
           ev("error", 4, service="sudo", duo_calls=[["preauth", 0.01, "401"]], clock_offset=2.0),
           ev("success", 5, service="sudo", factor="remembered"),
           ev("failure", 6, service="sshd", factor="push", duo_calls=[["auth_status", 1.0, "poll_timeout"]]))
    v = run(setup)
    assert v['pam_duo_py_logins_total{outcome="success",service="sshd",factor="push"}'] == 1
    assert v['pam_duo_py_logins_total{outcome="failsafe",service="sshd",factor="none"}'] == 1
    assert v['pam_duo_py_logins_total{outcome="error",service="sudo",factor="none"}'] == 2
    assert v['pam_duo_py_logins_total{outcome="success",service="sudo",factor="remembered"}'] == 1
    assert v["pam_duo_py_failsafe_logins_total"] == 1
    assert v["pam_duo_py_remembered_logins_total"] == 1
    assert v['pam_duo_py_duo_errors_total{kind="unreachable"}'] == 1
    assert v['pam_duo_py_duo_errors_total{kind="429"}'] == 1
    assert v['pam_duo_py_duo_errors_total{kind="401"}'] == 1
    assert v['pam_duo_py_duo_errors_total{kind="5xx"}'] == 0
    assert v['pam_duo_py_duo_request_duration_seconds_count{endpoint="preauth"}'] == 4
    assert v['pam_duo_py_duo_request_duration_seconds_bucket{endpoint="preauth",le="0.05"}'] == 3
    assert v['pam_duo_py_duo_request_duration_seconds_bucket{endpoint="preauth",le="+Inf"}'] == 4
    assert v['pam_duo_py_duo_request_duration_seconds_sum{endpoint="auth_status"}'] == 4.0
    assert v["pam_duo_py_duo_clock_offset_seconds"] == 2.0, "the newest measurement"
    assert v["pam_duo_py_duo_up"] == 1, "the last call (a long poll that ran out) got answers"
    assert v["pam_duo_py_broker_up"] == 0 and v["pam_duo_py_metrics_problems"] == 0


def test_duo_up_follows_the_newest_request(setup):
    _, audit, _, _ = setup
    append(audit, ev("success", 1, factor="push", duo_calls=[["preauth", 0.1, None]]),
           ev("failsafe", 2, duo_calls=[["preauth", 2.0, "unreachable"]]))
    assert run(setup)["pam_duo_py_duo_up"] == 0
    append(audit, ev("error", 3, duo_calls=[["preauth", 0.1, "5xx"]]))
    assert run(setup)["pam_duo_py_duo_up"] == 0
    append(audit, ev("preauth_allow", 4, duo_calls=[["preauth", 0.1, None]]))
    assert run(setup)["pam_duo_py_duo_up"] == 1


def test_hostile_values_cannot_break_the_format(setup):
    _, audit, _, _ = setup
    append(audit, ev("failure", 1, service='x"y\\z\nq', factor="p}\n", duo_calls=[["/evil\n", 1, "bad"], "junk", [1]]),
           {"outcome": "nope"}, [1, 2])
    audit.open("ab").write(b"not json\n\xff\xfe\n")
    v = run(setup)
    assert v['pam_duo_py_logins_total{outcome="failure",service="x\\"y\\\\z\\nq",factor="p}\\n"}'] == 1
    assert v['pam_duo_py_duo_request_duration_seconds_count{endpoint="other"}'] == 1
    assert v["pam_duo_py_audit_unreadable_lines_total"] == 4


# -- rotation ----------------------------------------------------------------------------------

def test_counters_survive_rotation_in_both_namings_without_double_counting(setup):
    root, audit, _, _ = setup
    append(audit, ev("success", 1), ev("failure", 2))
    assert logins(run(setup)) == 2
    os.rename(audit, root / "audit.jsonl.1")               # logrotate with delaycompress
    append(root / "audit.jsonl.1", ev("success", 3))       # a login that had the file open
    append(audit, ev("failsafe", 4))
    assert logins(run(setup)) == 4
    data = (root / "audit.jsonl.1").read_bytes()           # next rotation: .1 -> .2.gz, current -> .1
    (root / "audit.jsonl.2.gz").write_bytes(gzip.compress(data))
    os.chmod(root / "audit.jsonl.2.gz", 0o600)
    os.unlink(root / "audit.jsonl.1")
    os.rename(audit, root / "audit.jsonl.1")
    append(audit, ev("success", 5))
    assert logins(run(setup)) == 5
    os.rename(root / "audit.jsonl.1", root / "audit.jsonl-20261202")  # dateext naming
    os.rename(root / "audit.jsonl.2.gz", root / "audit.jsonl-20261201.gz")
    assert logins(run(setup)) == 5
    os.unlink(root / "audit.jsonl-20261201.gz")            # expired generations do not lower counters
    os.unlink(root / "audit.jsonl-20261202")
    v = run(setup)
    assert logins(v) == 5 and v["pam_duo_py_failsafe_logins_total"] == 1


def test_a_line_rotated_before_it_was_read_is_counted_once(setup):
    """compress without delaycompress: the file goes straight to .1.gz, lines unread so far included."""
    root, audit, _, _ = setup
    append(audit, ev("success", 1))
    assert logins(run(setup)) == 1
    append(audit, ev("failure", 2))
    (root / "audit.jsonl.1.gz").write_bytes(gzip.compress(audit.read_bytes()))
    os.chmod(root / "audit.jsonl.1.gz", 0o600)
    audit.unlink()
    assert logins(run(setup)) == 2
    assert logins(run(setup)) == 2


def test_copytruncate(setup):
    root, audit, _, _ = setup
    append(audit, ev("success", 1), ev("success", 2))
    assert logins(run(setup)) == 2
    shutil.copyfile(audit, root / "audit.jsonl.1")
    os.chmod(root / "audit.jsonl.1", 0o600)
    os.truncate(audit, 0)
    assert logins(run(setup)) == 2
    append(audit, ev("failure", 3))
    assert logins(run(setup)) == 3


def test_a_half_written_line_is_read_once_it_is_complete(setup):
    _, audit, _, _ = setup
    whole = (json.dumps(ev("failure", 2)) + "\n").encode()
    append(audit, ev("success", 1), tail=whole[:20])
    assert logins(run(setup)) == 1
    with open(audit, "ab") as f:
        f.write(whole[20:])
    assert logins(run(setup)) == 2


def test_an_overlong_line_is_skipped_and_the_offset_stays_right(setup):
    _, audit, _, _ = setup
    append(audit, ev("success", 1), tail=b"x" * (metrics.MAX_LINE * 2) + b"\n")
    v = run(setup)
    assert logins(v) == 1 and v["pam_duo_py_audit_unreadable_lines_total"] == 1
    append(audit, ev("success", 2))
    v = run(setup)
    assert logins(v) == 2 and v["pam_duo_py_audit_unreadable_lines_total"] == 1


def test_state_file_is_private_and_a_lost_state_restarts_from_the_files(setup):
    _, audit, _, state = setup
    append(audit, ev("success", 1))
    run(setup)
    assert oct(os.stat(state).st_mode & 0o777) == "0o600"
    assert oct(os.stat(state.parent).st_mode & 0o777) == "0o700"
    state.write_text("{garbage")
    _, _, config, _ = setup
    text, problems = metrics.collect(str(config), str(state), now=NOW)
    assert any("not a metrics state file" in p for p in problems)
    assert logins(values(text)) == 1


def test_audit_file_that_fails_the_file_rule_is_a_problem_not_a_crash(setup):
    _, audit, config, state = setup
    append(audit, ev("success", 1))
    os.chmod(audit, 0o666)
    text, problems = metrics.collect(str(config), str(state), now=NOW)
    assert problems and "writable by group or others" in problems[0]
    assert values(text)["pam_duo_py_metrics_problems"] == 1


# -- broker ------------------------------------------------------------------------------------

def test_broker_stats_fresh_stale_and_gone(setup):
    root, _, config, state = setup
    (root / "run").mkdir(mode=0o755)
    stats = root / "run" / "broker-stats.json"

    def write(age):
        stats.write_text(json.dumps({"v": 1, "pid": os.getpid(), "time": NOW - age, "started": NOW - 100,
                                     "inflight_logins": 2, "connections": 7, "busy": 4, "shed": 5, "configs": 2, "pool_idle_clients": 1,
                                     "reloads": 3, "reload_failures": 1, "interval": 5.0}))
        os.chmod(stats, 0o600)

    write(1)
    v = values(metrics.collect(str(config), str(state), now=NOW)[0])
    assert v["pam_duo_py_broker_up"] == 1 and v["pam_duo_py_broker_inflight_logins"] == 2
    assert v["pam_duo_py_broker_connections_total"] == 7 and v["pam_duo_py_broker_pool_idle_clients"] == 1
    assert v["pam_duo_py_broker_config_reloads_total"] == 3
    assert v["pam_duo_py_broker_busy_total"] == 4 and v["pam_duo_py_broker_shed_total"] == 5
    assert v["pam_duo_py_broker_configs"] == 2
    assert v["pam_duo_py_broker_config_reload_failures_total"] == 1
    write(60)  # a hung broker stops refreshing it
    v = values(metrics.collect(str(config), str(state), now=NOW)[0])
    assert v["pam_duo_py_broker_up"] == 0 and "pam_duo_py_broker_inflight_logins" not in v
    stats.unlink()
    assert values(metrics.collect(str(config), str(state), now=NOW)[0])["pam_duo_py_broker_up"] == 0


# -- the textfile ------------------------------------------------------------------------------

def test_textfile_is_replaced_atomically(tmp_path):
    """A reader that opens the file while it is being rewritten sees one whole version, never half."""
    out = tmp_path / "textfile"
    out.mkdir()
    versions = {i: "".join(f"# HELP m{i}_{j} x\n# TYPE m{i}_{j} gauge\nm{i}_{j} {j}\n" for j in range(2000))
                for i in range(2)}
    metrics.write_textfile(str(out), versions[0])
    stop = threading.Event()
    seen: list[str] = []
    torn: list[int] = []

    def reader():
        while not stop.is_set():
            text = (out / "pam_duo_py.prom").read_text()
            seen.append(text[:3])
            if text not in (versions[0], versions[1]):
                torn.append(len(text))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(200):
        metrics.write_textfile(str(out), versions[i % 2])
    stop.set()
    thread.join()
    assert torn == []
    assert len(seen) > 0
    assert sorted(p.name for p in out.iterdir()) == ["pam_duo_py.prom"], "no temporary file is left"
    assert oct(os.stat(out / "pam_duo_py.prom").st_mode & 0o777) == "0o644"


def test_main_writes_the_textfile(setup, capsys):
    root, audit, config, state = setup
    append(audit, ev("success", 1, factor="push"))
    out = root / "textfile"
    out.mkdir()
    assert metrics.main(str(config), str(out), str(state)) == 0
    assert "pam_duo_py_logins_total" in (out / "pam_duo_py.prom").read_text()
    assert capsys.readouterr().out == ""
    assert metrics.main(str(config), str(root / "missing"), str(state)) == metrics.EXIT_OUTPUT
    assert "cannot write" in capsys.readouterr().err


def test_a_state_from_an_older_version_gains_new_error_kinds(setup):
    _, audit, _, state = setup
    append(audit, ev("error", 1, duo_calls=[["preauth", 0.1, "unknown_answer"]]))
    state.parent.mkdir(mode=0o700)
    old = metrics.new_counts()
    old["errors"] = {"unreachable": 3}
    state.write_text(json.dumps({"v": 1, "sources": {}, "counts": old}))
    os.chmod(state, 0o600)
    v = run(setup)
    assert v['pam_duo_py_duo_errors_total{kind="unknown_answer"}'] == 1
    assert v['pam_duo_py_duo_errors_total{kind="unreachable"}'] == 3


def test_a_config_readable_by_its_group_is_accepted(setup):
    """A config without the skey in it may be 0640 (the key in duo.skey_file)."""
    _, audit, config, _ = setup
    os.chmod(config, 0o640)
    append(audit, ev("success", 1))
    assert logins(run(setup)) == 1
