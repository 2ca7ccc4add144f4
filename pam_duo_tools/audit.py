"""``pam-duo-py audit``: a summary of the JSON-lines audit file (format in :mod:`pam_duo_py.events`).

Reading is rotation-safe: the rotated generations in both logrotate namings (``PATH.1`` or
``PATH.1.gz``, then ``PATH.2``/``PATH.2.gz``, ...; and with ``dateext``, ``PATH-YYYYMMDD`` or
``PATH-YYYYMMDD.gz``, newest first) as far as ``--since`` reaches, judged by their modification
time, are read before ``PATH``. Every file is opened once, newest first, before anything is read, and
a file that turns out to be one already opened (it was renamed by a rotation in between) is
skipped, so a rotation while the command runs never counts a line twice. A corrupted line, a
partial last line or a damaged compressed file is counted as ``unreadable_lines``; nothing in
the file can make the command fail.
"""
from __future__ import annotations

import errno
import gzip
import json
import math
import os
import re
import sys
import time
import zlib
from datetime import datetime, timezone
from typing import IO, Any, Iterable, Iterator

from pam_duo_py import files
from pam_duo_py.errors import FileRuleError
from pam_duo_py.events import ADMIN_OUTCOMES, OUTCOMES
from pam_duo_py.text import for_log

EXIT_OK, EXIT_NO_FILE = 0, 1
MAX_LINE = 64 * 1024
MAX_GENERATIONS = 99
MTIME_SLACK = 3600.0          # a rotated file last written this long before --since is not read
TABLE_FAILSAFE_LIMIT = 50

_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``30m``, ``1h``, ``2d``, ``1w`` (and ``90s``) to seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, e.g. 30m, 1h, 2d, 1w")
    seconds = int(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be more than zero")
    if seconds > 3650 * 86400:
        raise ValueError(f"invalid duration {text!r}: at most ten years")
    return float(seconds)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record_time(record: dict[str, Any]) -> float | None:
    value = record.get("time")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    ts = record.get("ts")
    if isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts[:-1] + "+00:00" if ts.endswith("Z") else ts)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return None


def _name(value: Any) -> str:
    if value is None or value == "":
        return "(unknown)"
    return value if isinstance(value, str) else str(value)


def _counts() -> dict[str, int]:
    return {"total": 0, **{outcome: 0 for outcome in OUTCOMES}}


def summarise(records: Iterable[Any], since: float) -> dict[str, Any]:
    """Summarise audit records with a ``time`` at or after ``since`` (seconds since the epoch).

    Anything that is not an audit record (not an object, no usable time, no outcome) counts as
    ``unreadable_lines``; records older than ``since`` count as ``older_records``.
    """
    outcomes = {outcome: 0 for outcome in OUTCOMES}
    users: dict[str, dict[str, int]] = {}
    services: dict[str, dict[str, int]] = {}
    failsafe: list[dict[str, Any]] = []
    unreadable = older = admin = 0
    first = last = None
    for record in records:
        if not isinstance(record, dict):
            unreadable += 1
            continue
        when = _record_time(record)
        outcome = record.get("outcome")
        if when is None or not isinstance(outcome, str) or not outcome:
            unreadable += 1
            continue
        if when < since:
            older += 1
            continue
        if outcome in ADMIN_OUTCOMES:  # an administrator's action, not a login
            admin += 1
            continue
        first = when if first is None else min(first, when)
        last = when if last is None else max(last, when)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        for table, key in ((users, _name(record.get("user"))), (services, _name(record.get("service")))):
            row = table.setdefault(key, _counts())
            row["total"] += 1
            row[outcome] = row.get(outcome, 0) + 1
        if outcome == "failsafe":
            failsafe.append({
                "ts": _iso(when), "time": when,
                **{name: record.get(name) for name in ("user", "duo_user", "service", "rhost", "tty", "reason", "host")},
            })
    failsafe.sort(key=lambda item: item["time"])
    return {
        "since": since,
        "since_utc": _iso(since),
        "first_record_utc": _iso(first) if first is not None else None,
        "last_record_utc": _iso(last) if last is not None else None,
        "total": sum(outcomes.values()),
        "outcomes": outcomes,
        "failsafe_logins": failsafe,
        "by_user": dict(sorted(users.items(), key=lambda item: (-item[1]["total"], item[0]))),
        "by_service": dict(sorted(services.items(), key=lambda item: (-item[1]["total"], item[0]))),
        "unreadable_lines": unreadable,
        "older_records": older,
        "admin_actions": admin,
    }


# --------------------------------------------------------------------------------------------
# Reading the files


def open_for_reading(path: str, problems: list[str]) -> tuple[IO[bytes], os.stat_result] | None:
    """An audit file (or a rotated one) opened under the file rule; None, with a problem noted, when it fails."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "is a symlink (symlinks are not followed)" if exc.errno == errno.ELOOP else f"cannot open: {exc.strerror}"
        problems.append(f"{path}: {reason}")
        return None
    try:
        st = files._check_fd(path, fd, secret=False)
    except FileRuleError as exc:
        os.close(fd)
        problems.append(f"{exc.path}: {exc.reason}")
        return None
    return os.fdopen(fd, "rb"), st


class _Source:
    def __init__(self, path: str, stream: IO[bytes]) -> None:
        self.path = path
        self.stream = stream


class AuditReader:
    """Yields the records of an audit file and its rotated generations, oldest first."""

    def __init__(self, path: str, since: float) -> None:
        self.path = path
        self.since = since
        self.unreadable_lines = 0
        self.files_read: list[str] = []
        self.problems: list[str] = []
        self._sources: list[_Source] = []

    def _open(self, path: str) -> tuple[IO[bytes], os.stat_result] | None:
        return open_for_reading(path, self.problems)

    def open_all(self) -> None:
        """Open the current file and the rotated ones, newest first, each once."""
        try:
            files.check_directories(self.path)
        except FileRuleError as exc:
            self.problems.append(f"{exc.path}: {exc.reason}")
            return
        seen: set[tuple[int, int]] = set()
        opened: list[_Source] = []

        def add(path: str, rotated: bool) -> bool:
            """Open ``path``; False when it is a rotated file written before ``since`` (older ones are too)."""
            result = self._open(path)
            if result is None:
                return True
            stream, st = result
            if rotated and st.st_mtime < self.since - MTIME_SLACK:
                stream.close()
                return False
            if (st.st_dev, st.st_ino) in seen:      # renamed by a rotation since we opened it
                stream.close()
                return True
            seen.add((st.st_dev, st.st_ino))
            opened.append(_Source(path, stream))
            return True

        add(self.path, rotated=False)
        for generation in range(1, MAX_GENERATIONS + 1):
            base = f"{self.path}.{generation}"
            present = [p for p in (base, base + ".gz") if os.path.lexists(p)]
            if not present:
                break
            recent = [add(candidate, rotated=True) for candidate in present]
            if not all(recent):
                break
        for candidate in self._dated_generations():
            if not add(candidate, rotated=True):
                break
        self._sources = list(reversed(opened))

    def _dated_generations(self) -> list[str]:
        """``PATH-YYYYMMDD[.gz]`` (logrotate's ``dateext``, any ``dateformat`` of digits), newest first."""
        directory, base = os.path.split(self.path)
        pattern = re.compile(re.escape(base) + r"-[0-9]{8}[0-9-]*(?:\.gz)?")
        try:
            names = [name for name in os.listdir(directory) if pattern.fullmatch(name)]
        except OSError:
            return []
        dated = []
        for name in names:
            try:
                dated.append((os.lstat(os.path.join(directory, name)).st_mtime, name))
            except OSError:
                continue
        dated.sort(reverse=True)
        return [os.path.join(directory, name) for _, name in dated[:MAX_GENERATIONS]]

    def _lines(self, stream: IO[bytes]) -> Iterator[bytes]:
        while True:
            line = stream.readline(MAX_LINE)
            if not line:
                return
            if not line.endswith(b"\n") and len(line) == MAX_LINE:
                while True:          # an over-long line: skip the rest of it
                    rest = stream.readline(MAX_LINE)
                    if not rest or rest.endswith(b"\n"):
                        break
                self.unreadable_lines += 1
                continue
            yield line

    def records(self) -> Iterator[dict[str, Any]]:
        for source in self._sources:
            self.files_read.append(source.path)
            stream: IO[bytes] = source.stream
            try:
                if source.path.endswith(".gz"):
                    stream = gzip.GzipFile(fileobj=source.stream, mode="rb")
                for raw in self._lines(stream):
                    if not raw.strip():
                        continue
                    try:
                        record = json.loads(raw.decode("utf-8"))
                    except (UnicodeDecodeError, ValueError, RecursionError):
                        self.unreadable_lines += 1
                        continue
                    if not isinstance(record, dict):
                        self.unreadable_lines += 1
                        continue
                    yield record
            except (OSError, EOFError, zlib.error) as exc:
                self.unreadable_lines += 1
                self.problems.append(f"{source.path}: stopped reading: {exc}")
            finally:
                stream.close()
                source.stream.close()


def read_summary(path: str, since: float) -> tuple[dict[str, Any] | None, AuditReader]:
    """(summary or None when there is no audit file at all, the reader with its problems)."""
    reader = AuditReader(path, since)
    reader.open_all()
    if not reader._sources:
        return None, reader
    summary = summarise(reader.records(), since)
    summary["unreadable_lines"] += reader.unreadable_lines
    summary["files"] = reader.files_read
    summary["problems"] = reader.problems
    return summary, reader


# --------------------------------------------------------------------------------------------
# Output


def _table(summary: dict[str, Any], path: str, window: str) -> str:
    out: list[str] = []
    out.append(f"Audit summary of {for_log(path, 300)} since {summary['since_utc']} (last {window})")
    out.append("Files read: " + ", ".join(for_log(f, 300) for f in summary.get("files", [])))
    out.append("")
    failsafe = summary["failsafe_logins"]
    if failsafe:
        out.append(f"!!! FAIL-SAFE LOGINS: {len(failsafe)} (let in WITHOUT a second factor because Duo could not be reached)")
        for item in failsafe[:TABLE_FAILSAFE_LIMIT]:
            fields = [item["ts"], for_log(_name(item.get("user")), 64), for_log(_name(item.get("service")), 32),
                      for_log(item.get("rhost") or "-", 64)]
            reason = item.get("reason")
            out.append("  " + "  ".join(fields) + (f"  {for_log(reason, 160)}" if reason else ""))
        if len(failsafe) > TABLE_FAILSAFE_LIMIT:
            out.append(f"  ... and {len(failsafe) - TABLE_FAILSAFE_LIMIT} more (all of them with --json)")
    else:
        out.append("Fail-safe logins: none")
    out.append("")
    out.append(f"Logins: {summary['total']}")
    width = max(len(name) for name in summary["outcomes"])
    for outcome, count in summary["outcomes"].items():
        out.append(f"  {for_log(outcome, 40):<{width}}  {count:>7}")
    for title, key, label in (("By user", "by_user", "USER"), ("By service", "by_service", "SERVICE")):
        rows = summary[key]
        out.append("")
        out.append(f"{title}:")
        if not rows:
            out.append("  (none)")
            continue
        names = {name: for_log(name, 40) for name in rows}
        name_width = max([len(label)] + [len(n) for n in names.values()])
        columns = ["total", *OUTCOMES]
        extra = sorted({k for row in rows.values() for k in row} - set(columns))
        columns += extra
        out.append("  " + f"{label:<{name_width}}" + "".join(f"  {for_log(c, 20):>{max(len(c), 5)}}" for c in columns))
        for name, row in rows.items():
            out.append("  " + f"{names[name]:<{name_width}}"
                       + "".join(f"  {row.get(c, 0):>{max(len(c), 5)}}" for c in columns))
    out.append("")
    out.append(f"Unreadable lines: {summary['unreadable_lines']}")
    for problem in summary.get("problems", []):
        out.append(f"Warning: {for_log(problem, 400)}")
    return "\n".join(out) + "\n"


def _configured_audit_file(config_path: str) -> tuple[str | None, str | None]:
    """(audit file from log.audit_file, or None with an error message). Only [log] is looked at."""
    from pam_duo_py.config import tomllib

    try:
        raw = files.read_checked_stat(config_path, private=True)[0]
    except FileRuleError as exc:
        return None, f"{exc.path}: {exc.reason}"
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, f"{config_path}: cannot parse: {exc}"
    log = data.get("log")
    value = log.get("audit_file", "") if isinstance(log, dict) else ""
    if not isinstance(value, str) or not value:
        return None, (f"{config_path}: log.audit_file is not set, so there is no audit file; "
                      f"set it, or name a file with --file PATH")
    if not os.path.isabs(value):
        return None, f"{config_path}: log.audit_file: must be an absolute path, not {value!r}"
    return value, None


def main(config_path: str, since: float, as_json: bool = False, file: str | None = None,
         *, window: str | None = None, now: float | None = None) -> int:
    """The ``audit`` command. ``since`` is a duration in seconds (how far back to look)."""
    path = file
    if path is None:
        path, error = _configured_audit_file(config_path)
        if path is None:
            print(f"pam-duo-py audit: {for_log(error, 600)}", file=sys.stderr)
            return EXIT_NO_FILE
    path = os.path.abspath(path)
    cutoff = (time.time() if now is None else now) - since
    summary, reader = read_summary(path, cutoff)
    if summary is None:
        if reader.problems:
            for problem in reader.problems:
                print(f"pam-duo-py audit: {for_log(problem, 600)}", file=sys.stderr)
        else:
            print(f"pam-duo-py audit: no audit file at {for_log(path, 300)}", file=sys.stderr)
        return EXIT_NO_FILE
    if not os.path.lexists(path):
        summary["problems"].append(f"{path}: no such file (only rotated generations were read)")
    summary["path"] = path
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=True, default=str))
    else:
        sys.stdout.write(_table(summary, path, window or _window_text(since)))
    return EXIT_OK


def _window_text(seconds: float) -> str:
    if seconds == 86400:
        return "24h"
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


__all__ = ["AuditReader", "main", "parse_duration", "read_summary", "summarise"]
