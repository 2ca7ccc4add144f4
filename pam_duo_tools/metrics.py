"""``pam-duo-py metrics``: Prometheus text-format metrics from the audit file and the broker.

Nothing is measured on the login path beyond what a login already does: the decision
events in the audit file carry each Duo call (endpoint, seconds, error kind) and the clock
offset, and the broker keeps a small stats file (:mod:`pam_duo_py.broker_health`).

Counters survive rotation of the audit file without counting a line twice: a state file
(``/var/lib/pam_duo_py/metrics-state.json``) keeps the cumulative counts and, per audit
file, how far it has been read. A file is known by a hash of its first line, not by its
name or inode, so it is recognised after a rename (``FILE.1``, ``FILE-20261202``), after
compression (``FILE.2.gz``: the same lines, another inode) and after ``copytruncate``
(the copy keeps the first line; the emptied file gets a new one). docs/metrics.md has the
details and the metric names.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import sys
import time
import zlib
from typing import IO, Any, Iterator

from pam_duo_py import files
from .audit import open_for_reading
from pam_duo_py.errors import FileRuleError
from pam_duo_py.events import ADMIN_OUTCOMES, OUTCOMES
from pam_duo_py.text import for_log

STATE_FILE = "/var/lib/pam_duo_py/metrics-state.json"
TEXTFILE_NAME = "pam_duo_py.prom"
PREFIX = "pam_duo_py_"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENDPOINTS = ("preauth", "auth", "auth_status", "check", "ping")
ERROR_KINDS = ("unreachable", "401", "429", "4xx", "5xx", "malformed", "unknown_answer")
DOWN_KINDS = ("unreachable", "5xx")   # Duo could not serve the request (what failmode is about)
MAX_LINE = 64 * 1024
MAX_FILES = 100
SOURCE_TTL = 40 * 86400.0           # a file not seen for this long is forgotten
_ROTATED = re.compile(r"(?:\.[0-9]+|-[0-9][0-9_-]*)(?:\.gz)?\Z")

EXIT_OK, EXIT_CONFIG, EXIT_OUTPUT = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Counting decision events


def new_counts() -> dict[str, Any]:
    return {"logins": {}, "failsafe": 0, "remembered": 0, "latency": {}, "errors": {k: 0 for k in ERROR_KINDS},
            "unreadable": 0, "duo": {}, "clock": {}}


def _label(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def count(counts: dict[str, Any], record: Any) -> None:
    """Add one audit record to ``counts``."""
    outcome = record.get("outcome") if isinstance(record, dict) else None
    if outcome in ADMIN_OUTCOMES:
        return  # an administrator's Admin API action (bypass codes, enrollment): not a login
    if outcome not in OUTCOMES:
        counts["unreadable"] += 1
        return
    when = _number(record.get("time")) or 0.0
    service, factor = _label(record.get("service"), 64), _label(record.get("factor"), 32)
    by_service = counts["logins"].setdefault(outcome, {}).setdefault(service, {})
    by_service[factor] = by_service.get(factor, 0) + 1
    if outcome == "failsafe":
        counts["failsafe"] += 1
    if outcome == "success" and factor == "remembered":
        counts["remembered"] += 1
    calls = record.get("duo_calls")
    last_kind: str | None = None
    seen_call = False
    for call in calls if isinstance(calls, list) else ():
        if not (isinstance(call, list) and len(call) == 3):
            continue
        endpoint, seconds, kind = call
        seconds = _number(seconds)
        if seconds is None or seconds < 0:
            continue
        endpoint = endpoint if endpoint in ENDPOINTS else "other"
        histogram = counts["latency"].setdefault(endpoint, {"buckets": [0] * len(BUCKETS), "sum": 0.0, "count": 0})
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                histogram["buckets"][index] += 1
        histogram["sum"] = round(histogram["sum"] + seconds, 6)
        histogram["count"] += 1
        if kind in ERROR_KINDS:
            counts["errors"][kind] = counts["errors"].get(kind, 0) + 1
        seen_call, last_kind = True, kind if isinstance(kind, str) else None
    if seen_call and when >= counts["duo"].get("time", 0.0):
        counts["duo"] = {"up": 0 if last_kind in DOWN_KINDS else 1, "time": when}
    offset = _number(record.get("clock_offset"))
    if offset is not None and when >= counts["clock"].get("time", 0.0):
        counts["clock"] = {"offset": offset, "time": when}


# --------------------------------------------------------------------------------------------
# Reading the audit file and its rotated generations, each line once


def rotated_paths(path: str) -> list[str]:
    """``PATH.N[.gz]`` and ``PATH-DATE[.gz]`` next to ``PATH``: both logrotate namings."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = [name for name in names if name.startswith(base) and _ROTATED.match(name[len(base):])]
    return [os.path.join(directory, name) for name in sorted(found)[:MAX_FILES]]


class Scanner:
    """Reads new lines of the audit files into the counts of a state (see the module docstring)."""

    def __init__(self, state: dict[str, Any], now: float) -> None:
        self.state = state
        self.now = now
        self.counts: dict[str, Any] = state["counts"]
        self.sources: dict[str, dict[str, Any]] = state["sources"]
        self.known: dict[str, list[Any]] = state.setdefault("files", {})  # "dev:ino" -> [size, mtime_ns, key]
        self.problems: list[str] = []

    def scan(self, path: str) -> None:
        try:
            files.check_directories(path)
        except FileRuleError as exc:
            self.problems.append(f"{exc.path}: {exc.reason}")
            return
        opened: list[tuple[str, IO[bytes], os.stat_result]] = []
        seen: set[tuple[int, int]] = set()
        try:
            # Open everything first: a rotation while we read then moves nothing out of sight,
            # and a file renamed between two opens is the same inode, read once.
            for candidate in [path] + rotated_paths(path):
                result = open_for_reading(candidate, self.problems)
                if result is None:
                    continue
                stream, st = result
                if (st.st_dev, st.st_ino) in seen:
                    stream.close()
                    continue
                seen.add((st.st_dev, st.st_ino))
                opened.append((candidate, stream, st))
            known, self.known = self.known, {}
            for candidate, stream, st in opened:
                inode = f"{st.st_dev}:{st.st_ino}"
                size_time = [st.st_size, st.st_mtime_ns]
                previous = known.get(inode)
                if previous and previous[:2] == size_time and previous[2] in self.sources:
                    self.sources[previous[2]]["seen"] = round(self.now, 3)  # unchanged since it was read
                    self.known[inode] = previous
                    continue
                key = self._read(candidate, stream, st)
                if key:
                    self.known[inode] = size_time + [key]
            self.state["files"] = self.known
        finally:
            for _, stream, _ in opened:
                stream.close()
        for key in [k for k, v in self.sources.items() if self.now - v.get("seen", 0) > SOURCE_TTL]:
            del self.sources[key]

    def _read(self, path: str, raw: IO[bytes], st: os.stat_result) -> str | None:
        """Count the lines past this file's offset; returns its key when it was read to the end."""
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        try:
            first = stream.readline(MAX_LINE)
            if not first.endswith(b"\n"):
                return None  # empty, or its first line is still being written: next time
            key = hashlib.sha256(first).hexdigest()[:32]
            source = self.sources.setdefault(key, {"offset": 0})
            source["seen"] = round(self.now, 3)
            offset = source["offset"]
            if offset == 0:
                lines: Iterator[tuple[bytes | None, int]] = iter([(first, len(first))])
                position = 0
            else:
                if stream is raw and offset <= st.st_size:
                    raw.seek(offset)
                elif stream is raw or not _skip(stream, offset - len(first)):
                    return None  # shorter than what was read before: nothing new
                lines, position = iter(()), offset
            for line, size in _chain(lines, _lines(stream)):
                if line is not None and not line.endswith(b"\n"):
                    return None            # being written: read it next time
                position += size
                if line is None:           # a line longer than MAX_LINE, skipped whole
                    self.counts["unreadable"] += 1
                else:
                    self._count_line(line)
                source["offset"] = position
            return key
        except (OSError, EOFError, zlib.error) as exc:
            self.problems.append(f"{path}: stopped reading: {exc}")
            return None
        finally:
            if stream is not raw:
                stream.close()

    def _count_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.counts["unreadable"] += 1
            return
        count(self.counts, record)


def _skip(stream: IO[bytes], size: int) -> bool:
    """Read past ``size`` bytes (a gzip stream cannot seek cheaply); False when there are fewer."""
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            return False
        size -= len(chunk)
    return True


def _lines(stream: IO[bytes]) -> Iterator[tuple[bytes | None, int]]:
    """(line, bytes) for lines of at most MAX_LINE bytes; (None, bytes) for a longer, complete one."""
    while True:
        line = stream.readline(MAX_LINE)
        if not line:
            return
        if len(line) == MAX_LINE and not line.endswith(b"\n"):
            size = len(line)
            while True:
                rest = stream.readline(MAX_LINE)
                size += len(rest)
                if not rest:
                    yield line, size  # unfinished: stops the reading until it is complete
                    return
                if rest.endswith(b"\n"):
                    break
            yield None, size
            continue
        yield line, len(line)


def _chain(*iterables: Iterator[Any]) -> Iterator[Any]:
    for iterable in iterables:
        yield from iterable


# --------------------------------------------------------------------------------------------
# State


def load_state(path: str) -> tuple[dict[str, Any], str | None]:
    """(state, problem). A missing state file starts from zero (counters then start at what the files hold)."""
    empty = {"v": 1, "sources": {}, "counts": new_counts()}
    try:
        data = json.loads(files.read_checked(path, secret=True).decode("utf-8"))
    except FileRuleError as exc:
        if exc.reason == "no such file":
            return empty, None
        return empty, f"{exc.path}: {exc.reason}"
    except (UnicodeDecodeError, ValueError) as exc:
        return empty, f"{path}: not a metrics state file ({exc}); starting from zero"
    if not (isinstance(data, dict) and data.get("v") == 1 and isinstance(data.get("sources"), dict)
            and isinstance(data.get("counts"), dict)):
        return empty, f"{path}: not a metrics state file; starting from zero"
    counts = new_counts()
    for key, value in data["counts"].items():
        if key in counts and type(value) is type(counts[key]):
            counts[key] = value
    if not all(isinstance(v, dict) and isinstance(v.get("offset"), int) for v in data["sources"].values()):
        return empty, f"{path}: not a metrics state file; starting from zero"
    return {"v": 1, "sources": data["sources"], "counts": counts,
            "files": data["files"] if isinstance(data.get("files"), dict) else {}}, None


def save_state(path: str, state: dict[str, Any]) -> str | None:
    try:
        files.write_atomic(path, json.dumps(state, separators=(",", ":"), sort_keys=True).encode())
    except FileRuleError as exc:
        return f"{exc.path}: {exc.reason}"
    except OSError as exc:
        return f"{path}: cannot write: {exc.strerror or exc}"
    return None


def _locked(path: str) -> int | None:
    """An exclusive lock next to the state file, so that two runs never interleave (None: no lock)."""
    import fcntl

    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


# --------------------------------------------------------------------------------------------
# The broker's stats file


def broker_stats(socket_path: str, now: float) -> dict[str, Any] | None:
    """The broker's stats when they are fresh (the broker is up and its main loop turns), else None."""
    from pam_duo_py.broker_health import stats_path

    try:
        data = json.loads(files.read_checked(stats_path(socket_path)).decode("utf-8"))
    except (FileRuleError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    written, interval, pid = _number(data.get("time")), _number(data.get("interval")) or 5.0, data.get("pid")
    if written is None or not (now - 3 * interval - 5 <= written <= now + 5):
        return None
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return data


# --------------------------------------------------------------------------------------------
# The text format


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _value(value: float | int) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return repr(float(value))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]],
               suffix: str = "") -> None:
        self.lines.append(f"# HELP {PREFIX}{name} {help_text}")
        self.lines.append(f"# TYPE {PREFIX}{name} {kind}")
        for labels, value in samples:
            self.sample(name + suffix, labels, value)

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        text = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
        self.lines.append(f"{PREFIX}{name}{{{text}}} {_value(value)}" if text else f"{PREFIX}{name} {_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(counts: dict[str, Any], broker: dict[str, Any] | None, problems: int) -> str:
    out = Exposition()
    logins = [({"outcome": outcome, "service": service, "factor": factor or "none"}, n)
              for outcome, services in sorted(counts["logins"].items())
              for service, factors in sorted(services.items())
              for factor, n in sorted(factors.items())]
    out.family("logins_total", "counter", "Login decisions by outcome, PAM service and factor.", logins)
    out.family("failsafe_logins_total", "counter",
               "Logins let in without a second factor because Duo could not be reached (failmode = safe).",
               [({}, counts["failsafe"])])
    out.family("remembered_logins_total", "counter", "Logins let in by a remembered earlier login.",
               [({}, counts["remembered"])])
    out.family("duo_request_duration_seconds", "histogram", "Duo API requests by endpoint, in seconds.", [])
    for endpoint, histogram in sorted(counts["latency"].items()):
        for bound, n in zip(BUCKETS, histogram["buckets"]):
            out.sample("duo_request_duration_seconds_bucket", {"endpoint": endpoint, "le": _value(bound)}, n)
        out.sample("duo_request_duration_seconds_bucket", {"endpoint": endpoint, "le": "+Inf"}, histogram["count"])
        out.sample("duo_request_duration_seconds_sum", {"endpoint": endpoint}, histogram["sum"])
        out.sample("duo_request_duration_seconds_count", {"endpoint": endpoint}, histogram["count"])
    out.family("duo_errors_total", "counter",
               "Failed Duo requests by kind: unreachable (network, TLS, timeout), 401, 429, 4xx, 5xx, malformed, "
               "unknown_answer (a result this version does not know).",
               [({"kind": kind}, counts["errors"].get(kind, 0)) for kind in ERROR_KINDS])
    if counts["duo"]:
        out.family("duo_up", "gauge",
                   "1 when the last Duo request got an answer, 0 when Duo was unreachable or answered 5xx.",
                   [({}, counts["duo"]["up"])])
        out.family("duo_last_request_timestamp_seconds", "gauge", "When the last Duo request was made (Unix time).",
                   [({}, counts["duo"]["time"])])
    if counts["clock"]:
        out.family("duo_clock_offset_seconds", "gauge",
                   "Duo's clock minus this host's, from the Date header of the last reply (1 s resolution).",
                   [({}, counts["clock"]["offset"])])
        out.family("duo_clock_offset_timestamp_seconds", "gauge", "When the clock offset was measured (Unix time).",
                   [({}, counts["clock"]["time"])])
    out.family("audit_unreadable_lines_total", "counter", "Audit file lines that are not decision events.",
               [({}, counts["unreadable"])])
    out.family("metrics_problems", "gauge",
               "Problems this run met (an audit or state file that fails the file rule, a damaged file).",
               [({}, problems)])
    out.family("broker_up", "gauge", "1 when the broker runs and its main loop turns (its stats file is fresh).",
               [({}, 1 if broker else 0)])
    if broker:
        def gauge(key: str) -> float:
            value = _number(broker.get(key))
            return value if value is not None and value >= 0 else 0

        out.family("broker_inflight_logins", "gauge", "Logins the broker is deciding now.",
                   [({}, gauge("inflight_logins"))])
        out.family("broker_connections_total", "counter", "Connections the broker accepted since it started.",
                   [({}, gauge("connections"))])
        out.family("broker_busy_total", "counter",
                   "Logins the broker answered busy (over a per-user or per-uid cap); the PAM module decided them.",
                   [({}, gauge("busy"))])
        out.family("broker_shed_total", "counter",
                   "Connections the broker closed unserved (a connection cap, no descriptor or no thread).",
                   [({}, gauge("shed"))])
        out.family("broker_configs", "gauge", "Config files the broker serves (its own and those PAM lines named).",
                   [({}, gauge("configs"))])
        out.family("broker_pool_idle_clients", "gauge", "Warm Duo connections the broker keeps for the next logins.",
                   [({}, gauge("pool_idle_clients"))])
        out.family("broker_config_reloads_total", "counter", "Config reloads (SIGHUP) that took effect.",
                   [({}, gauge("reloads"))])
        out.family("broker_config_reload_failures_total", "counter",
                   "Config reloads that failed (the old config stayed in force).", [({}, gauge("reload_failures"))])
        out.family("broker_start_time_seconds", "gauge", "When the broker started (Unix time).",
                   [({}, gauge("started"))])
    return out.text()


def write_textfile(directory: str, text: str) -> None:
    """``DIRECTORY/pam_duo_py.prom``, replaced atomically: node_exporter never reads half a file."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{TEXTFILE_NAME}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, os.path.join(directory, TEXTFILE_NAME))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------------------------
# The command


def _config(config_path: str) -> tuple[str | None, str, str | None]:
    """(log.audit_file or None, broker.socket, problem). Only [log] and [broker] are looked at."""
    from pam_duo_py.config import tomllib
    from pam_duo_py.paths import DEFAULT_SOCKET

    try:
        data = tomllib.loads(files.read_checked_stat(config_path, private=True)[0].decode("utf-8"))
    except FileRuleError as exc:
        return None, DEFAULT_SOCKET, f"{exc.path}: {exc.reason}"
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, DEFAULT_SOCKET, f"{config_path}: cannot parse: {exc}"
    log, broker = data.get("log"), data.get("broker")
    audit = log.get("audit_file") if isinstance(log, dict) else None
    sock = broker.get("socket") if isinstance(broker, dict) else None
    sock = sock if isinstance(sock, str) and os.path.isabs(sock) else DEFAULT_SOCKET
    if audit is not None and not (isinstance(audit, str) and os.path.isabs(audit)):
        return None, sock, f"{config_path}: log.audit_file: must be an absolute path"
    return audit or None, sock, None


def collect(config_path: str, state_path: str, *, now: float | None = None) -> tuple[str, list[str]]:
    """(metrics text, problems). Reads new audit lines into the state and saves it."""
    now = time.time() if now is None else now
    audit, socket_path, problem = _config(config_path)
    problems = [problem] if problem else []
    try:
        os.makedirs(os.path.dirname(state_path), mode=0o700, exist_ok=True)
    except OSError as exc:
        problems.append(f"{os.path.dirname(state_path)}: cannot create: {exc.strerror or exc}")
    lock = _locked(state_path)
    try:
        state, problem = load_state(state_path)
        if problem:
            problems.append(problem)
        if audit:
            scanner = Scanner(state, now)
            scanner.scan(audit)
            problems += scanner.problems
        problem = save_state(state_path, state)
        if problem:
            problems.append(problem)
    finally:
        if lock is not None:
            os.close(lock)
    return render(state["counts"], broker_stats(socket_path, now), len(problems)), problems


def main(config_path: str, textfile_dir: str | None = None, state_path: str = STATE_FILE) -> int:
    text, problems = collect(config_path, state_path)
    for problem in problems:
        print(f"pam-duo-py metrics: {for_log(problem, 600)}", file=sys.stderr)
    if textfile_dir is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        write_textfile(textfile_dir, text)
    except OSError as exc:
        print(f"pam-duo-py metrics: cannot write {for_log(os.path.join(textfile_dir, TEXTFILE_NAME), 300)}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_OUTPUT
    return EXIT_OK
