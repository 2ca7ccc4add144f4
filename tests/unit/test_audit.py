"""``pam-duo-py audit``: the audit-file summary, and rotation-safe reading."""
from __future__ import annotations

import gzip
import json
import os
import pathlib
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pam_duo_tools import cli  # noqa: E402
from pam_duo_tools.audit import AuditReader, parse_duration, read_summary, summarise  # noqa: E402
from pam_duo_py.events import OUTCOMES, event  # noqa: E402

HOUR = 3600.0
DAY = 86400.0


def ev(outcome: str, age: float = 60.0, **fields):
    record = event(outcome, **fields)
    record["time"] = round(time.time() - age, 3)
    return record


def line(record) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def write(path: pathlib.Path, records, tail: bytes = b"", *, gz: bool = False, age: float | None = None) -> pathlib.Path:
    data = b"".join(line(r) for r in records) + tail
    path.write_bytes(gzip.compress(data) if gz else data)
    if age is not None:
        when = time.time() - age
        os.utime(path, (when, when))
    return path


def since(seconds: float = DAY) -> float:
    return time.time() - seconds


# --------------------------------------------------------------------------------------------
# parse_duration


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h", 3600), ("24h", DAY), ("2d", 2 * DAY),
                                           ("1w", 7 * DAY), ("90s", 90)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1", "1y", "-1h", "0h", "1.5h", "1 hour", "99999999w"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# --------------------------------------------------------------------------------------------
# summarise (pure)


def test_summarise_counts_outcomes_users_and_services():
    records = [
        ev("success", user="alice", service="sshd"),
        ev("success", user="alice", service="sudo"),
        ev("failure", user="bob", service="sshd", reason="push denied"),
        ev("failsafe", user="carol", service="sshd", rhost="203.0.113.5", reason="Duo unreachable at preauth: timeout"),
        ev("exempt", user="dave", service="su"),
        ev("preauth_allow", user="erin", service="sshd"),
        ev("error", user="frank", service="sshd"),
    ]
    summary = summarise(records, since())
    assert summary["total"] == 7
    assert summary["outcomes"] == {"success": 2, "failure": 1, "failsafe": 1, "exempt": 1, "preauth_allow": 1, "error": 1}
    assert list(summary["outcomes"]) == list(OUTCOMES)
    assert summary["by_user"]["alice"]["total"] == 2 and summary["by_user"]["alice"]["success"] == 2
    assert list(summary["by_user"])[0] == "alice"                   # busiest first
    assert summary["by_service"]["sshd"] == {"total": 5, "success": 1, "failure": 1, "failsafe": 1, "exempt": 0,
                                             "preauth_allow": 1, "error": 1}
    assert summary["by_service"]["su"]["exempt"] == 1
    [failsafe] = summary["failsafe_logins"]
    assert (failsafe["user"], failsafe["service"], failsafe["rhost"]) == ("carol", "sshd", "203.0.113.5")
    assert failsafe["reason"].startswith("Duo unreachable")
    assert summary["unreadable_lines"] == 0 and summary["older_records"] == 0


def test_summarise_honours_since():
    records = [ev("success", age=10), ev("failsafe", age=2 * HOUR), ev("failure", age=3 * DAY)]
    assert summarise(records, since(HOUR))["total"] == 1
    summary = summarise(records, since(DAY))
    assert summary["total"] == 2 and summary["older_records"] == 1 and len(summary["failsafe_logins"]) == 1


def test_summarise_lists_failsafe_logins_oldest_first():
    records = [ev("failsafe", age=10, user="late"), ev("failsafe", age=500, user="early")]
    assert [f["user"] for f in summarise(records, since())["failsafe_logins"]] == ["early", "late"]


def test_summarise_tolerates_junk_records():
    good = ev("success", user="alice")
    no_time = dict(good)
    del no_time["time"]                                            # falls back to "ts"
    records = [good, no_time, "text", 42, None, [], {"outcome": "success"}, {"time": "soon", "outcome": "success"},
               {"time": True, "outcome": "success"}, {"time": float("nan"), "outcome": "success"},
               {"time": time.time(), "outcome": None}, {"time": time.time(), "outcome": "brand_new", "user": 7}]
    summary = summarise(records, since())
    assert summary["total"] == 3
    assert summary["outcomes"]["success"] == 2 and summary["outcomes"]["brand_new"] == 1
    assert summary["by_user"]["7"]["brand_new"] == 1
    assert summary["unreadable_lines"] == 9


def test_summarise_unknown_user_and_service():
    summary = summarise([ev("error")], since())
    assert list(summary["by_user"]) == ["(unknown)"] and list(summary["by_service"]) == ["(unknown)"]


def test_summarise_empty():
    summary = summarise([], since())
    assert summary["total"] == 0 and summary["failsafe_logins"] == [] and summary["first_record_utc"] is None


# --------------------------------------------------------------------------------------------
# Reading files


def test_reads_rotated_file_before_current(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(tmp_path / "audit.jsonl.1", [ev("failure", age=5 * HOUR, user="old")])
    write(path, [ev("success", user="new")])
    summary, _ = read_summary(str(path), since())
    assert summary["files"] == [str(path) + ".1", str(path)]
    assert summary["total"] == 2 and summary["outcomes"]["failure"] == 1


def test_reads_compressed_rotated_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(tmp_path / "audit.jsonl.1.gz", [ev("failsafe", age=HOUR, user="gz")], gz=True)
    write(path, [ev("success")])
    summary, _ = read_summary(str(path), since())
    assert summary["files"] == [str(path) + ".1.gz", str(path)]
    assert [f["user"] for f in summary["failsafe_logins"]] == ["gz"]


def test_reads_older_generations_only_as_far_as_since_reaches(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success")])
    write(tmp_path / "audit.jsonl.1", [ev("success", age=DAY + 60)], age=DAY)
    write(tmp_path / "audit.jsonl.2.gz", [ev("failure", age=2 * DAY + 60)], gz=True, age=2 * DAY)
    write(tmp_path / "audit.jsonl.3.gz", [ev("error", age=3 * DAY + 60)], gz=True, age=3 * DAY)
    week, _ = read_summary(str(path), since(7 * DAY))
    assert week["total"] == 4 and len(week["files"]) == 4
    day, _ = read_summary(str(path), since(DAY))
    assert day["total"] == 1
    assert day["files"] == [str(path) + ".1", str(path)]       # .2.gz and older are not even opened


def test_reads_dateext_rotations_plain_and_compressed(tmp_path):
    # logrotate's dateext (the RHEL default): PATH-YYYYMMDD, compressed from the second rotation on
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success", user="today")])
    write(tmp_path / "audit.jsonl-20261201", [ev("failsafe", age=DAY, user="yesterday")], age=DAY - 60)
    write(tmp_path / "audit.jsonl-20261130.gz", [ev("failsafe", age=2 * DAY, user="before")], gz=True,
          age=2 * DAY - 60)
    summary, _ = read_summary(str(path), since(7 * DAY))
    assert summary["files"] == [str(path) + "-20261130.gz", str(path) + "-20261201", str(path)]
    assert [f["user"] for f in summary["failsafe_logins"]] == ["before", "yesterday"]
    assert summary["total"] == 3


def test_dateext_rotations_are_read_only_as_far_as_since_reaches(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success")])
    write(tmp_path / "audit.jsonl-2026120113", [ev("success", age=DAY + 60)], age=DAY)   # dateformat -%Y%m%d%H
    write(tmp_path / "audit.jsonl-20261130-1796000000.gz", [ev("failure", age=2 * DAY + 60)], gz=True,
          age=2 * DAY)                                                                       # dateformat -%Y%m%d-%s
    week, _ = read_summary(str(path), since(7 * DAY))
    assert week["total"] == 3 and len(week["files"]) == 3
    day, _ = read_summary(str(path), since(DAY))
    assert day["files"] == [str(path) + "-2026120113", str(path)]


def test_only_rotation_names_are_read(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success")])
    for name in ("audit.jsonl-old", "audit.jsonl-2026", "audit.jsonl-20261201.bak", "other.jsonl-20261201",
                 "audit.jsonl.20261201", "xaudit.jsonl-20261201"):
        write(tmp_path / name, [ev("failure")])
    summary, _ = read_summary(str(path), since())
    assert summary["files"] == [str(path)] and summary["total"] == 1


def test_both_namings_together(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success")])
    write(tmp_path / "audit.jsonl.1", [ev("failure", age=HOUR)], age=HOUR)
    write(tmp_path / "audit.jsonl-20261201.gz", [ev("failsafe", age=2 * HOUR)], gz=True, age=2 * HOUR)
    summary, _ = read_summary(str(path), since())
    assert summary["total"] == 3 and sorted(summary["outcomes"][k] for k in ("success", "failure", "failsafe")) == [1, 1, 1]


def test_partial_last_line_and_corrupted_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success"), ev("failure")],
          tail=b"not json\n\xff\xfe\n[1, 2]\n\x00\x00\x00\n\n" + line(ev("success")) + b'{"v": 1, "ts": "2026-12-0')
    summary, _ = read_summary(str(path), since())
    assert summary["total"] == 3
    assert summary["unreadable_lines"] == 5


def test_a_complete_last_line_without_newline_counts(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [], tail=line(ev("success"))[:-1])
    assert read_summary(str(path), since())[0]["total"] == 1


def test_over_long_line_is_skipped(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success")], tail=b"x" * 300_000 + b"\n" + line(ev("failure")))
    summary, _ = read_summary(str(path), since())
    assert summary["total"] == 2 and summary["unreadable_lines"] == 1


def test_corrupted_gzip_is_counted_not_fatal(tmp_path):
    path = tmp_path / "audit.jsonl"
    good = gzip.compress(b"".join(line(ev("success")) for _ in range(50)))
    (tmp_path / "audit.jsonl.1.gz").write_bytes(good[: len(good) // 2])
    write(path, [ev("failure")])
    summary, _ = read_summary(str(path), since())
    assert summary["outcomes"]["failure"] == 1
    assert summary["unreadable_lines"] >= 1
    assert any("audit.jsonl.1.gz" in p for p in summary["problems"])


def test_rotation_while_reading_counts_each_line_once(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(tmp_path / "audit.jsonl.1", [ev("failure", age=HOUR)] * 2)
    write(path, [ev("success")] * 3)
    reader = AuditReader(str(path), since())
    reader.open_all()
    # logrotate runs now: .1 -> .2, current -> .1, a new empty current file
    os.rename(tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2")
    os.rename(path, tmp_path / "audit.jsonl.1")
    write(path, [ev("error")])
    summary = summarise(reader.records(), reader.since)
    assert summary["outcomes"]["success"] == 3 and summary["outcomes"]["failure"] == 2
    assert summary["outcomes"]["error"] == 0                      # files are opened once, before reading


def test_a_file_renamed_between_opens_is_read_once(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success")] * 3)
    os.link(path, tmp_path / "audit.jsonl.1")                     # what a rename mid-listing looks like
    summary, _ = read_summary(str(path), since())
    assert summary["total"] == 3 and summary["files"] == [str(path)]


def test_no_audit_file(tmp_path):
    assert read_summary(str(tmp_path / "audit.jsonl"), since())[0] is None


def test_only_rotated_file_left(tmp_path, capsys):
    write(tmp_path / "audit.jsonl.1", [ev("success")])
    assert cli.main(["audit", "--file", str(tmp_path / "audit.jsonl"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 1 and any("no such file" in p for p in out["problems"])


def test_symlinked_or_group_writable_audit_file_is_not_read(tmp_path, capsys):
    real = write(tmp_path / "real.jsonl", [ev("success")])
    link = tmp_path / "audit.jsonl"
    link.symlink_to(real)
    assert cli.main(["audit", "--file", str(link)]) == 1
    assert "symlink" in capsys.readouterr().err
    writable = write(tmp_path / "w.jsonl", [ev("success")])
    writable.chmod(0o664)
    assert cli.main(["audit", "--file", str(writable)]) == 1
    assert "writable by group or others" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The command


def test_cli_table(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    write(path, [ev("success", user="alice", service="sshd"),
                 ev("failsafe", user="mallory\x1b[2J", service="sshd", rhost="198.51.100.7",
                    reason="Duo unreachable at preauth: timeout"),
                 ev("exempt", user="bob", service="sudo")], tail=b"junk\n")
    assert cli.main(["audit", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "mallory\\x1b[2J" in out          # user names escaped
    assert "last 24h" in out
    lines = out.splitlines()
    failsafe_at = next(i for i, text in enumerate(lines) if "FAIL-SAFE LOGINS: 1" in text)
    assert failsafe_at < next(i for i, text in enumerate(lines) if text.startswith("Logins:"))
    assert "198.51.100.7" in lines[failsafe_at + 1] and "Duo unreachable" in lines[failsafe_at + 1]
    assert "Logins: 3" in out and "By user:" in out and "By service:" in out
    assert "Unreadable lines: 1" in out


def test_cli_table_without_failsafe(tmp_path, capsys):
    path = write(tmp_path / "audit.jsonl", [ev("success")])
    assert cli.main(["audit", "--file", str(path), "--since", "30m"]) == 0
    out = capsys.readouterr().out
    assert "Fail-safe logins: none" in out and "last 30m" in out


def test_cli_json(tmp_path, capsys):
    path = write(tmp_path / "audit.jsonl", [ev("success", user="alice"), ev("failsafe", user="bob"),
                                            ev("failure", age=2 * DAY)])
    assert cli.main(["audit", "--file", str(path), "--json", "--since", "1h"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 2 and out["older_records"] == 1
    assert set(out["outcomes"]) == set(OUTCOMES)
    assert [f["user"] for f in out["failsafe_logins"]] == ["bob"]
    assert out["unreadable_lines"] == 0 and out["files"] == [str(path)] and out["path"] == str(path)
    assert cli.main(["audit", "--file", str(path), "--json", "--since", "1w"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 3


def test_cli_no_audit_file_names_the_path(tmp_path, capsys):
    missing = tmp_path / "nothing.jsonl"
    assert cli.main(["audit", "--file", str(missing)]) == 1
    captured = capsys.readouterr()
    assert str(missing) in captured.err and captured.out == ""


def test_cli_bad_since_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["audit", "--file", str(tmp_path / "a"), "--since", "yesterday"])
    assert info.value.code == 2
    assert "invalid duration" in capsys.readouterr().err


def config_file(tmp_path, body: str, mode: int = 0o600) -> pathlib.Path:
    path = tmp_path / "pam_duo.toml"
    path.write_text(body)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_cli_uses_log_audit_file_of_the_config(tmp_path, capsys, mode):
    audit = write(tmp_path / "audit.jsonl", [ev("failsafe", user="zoe")])
    config = config_file(tmp_path, f'[duo]\nikey = "DIXXXXXXXXXXXXXXXXXX"\n\n[log]\naudit_file = "{audit}"\n', mode)
    assert cli.main(["-c", str(config), "audit", "--json"]) == 0       # the rest of the config need not be valid
    assert json.loads(capsys.readouterr().out)["failsafe_logins"][0]["user"] == "zoe"


def test_cli_config_without_audit_file(tmp_path, capsys):
    config = config_file(tmp_path, "[log]\n")
    assert cli.main(["-c", str(config), "audit"]) == 1
    err = capsys.readouterr().err
    assert "log.audit_file" in err and "--file" in err


def test_cli_missing_config(tmp_path, capsys):
    assert cli.main(["-c", str(tmp_path / "none.toml"), "audit"]) == 1
    assert "none.toml" in capsys.readouterr().err


def test_cli_file_overrides_config(tmp_path, capsys):
    path = write(tmp_path / "audit.jsonl", [ev("success")])
    assert cli.main(["-c", str(tmp_path / "none.toml"), "audit", "--file", str(path)]) == 0
    assert "Logins: 1" in capsys.readouterr().out


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["audit", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--since", "--json", "--file", "30m", "1w", "24h"):
        assert word in out
