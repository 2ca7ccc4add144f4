"""Decision events: plain dicts until the last step, then one syslog line and one audit line.

Audit file format (JSON lines, one object per decision, UTF-8, append-only):

``{"v": 1, "ts": "2026-12-01T20:14:13.123Z", "time": 1796156053.123, "outcome": "success",
"user": "alice", "duo_user": "alice", "service": "sshd", "rhost": "203.0.113.5",
"tty": "ssh", "factor": "push", "txid": "...", "reason": "push approved",
"host": "server1", "pid": 1234}``

When Duo was asked, the event also holds ``duo_calls``, one ``[endpoint, seconds, error kind
or null]`` per API call (kinds in :func:`pam_duo_py.duo.error_kind`), and ``clock_offset``,
Duo's clock minus ours in seconds from the last reply's ``Date`` header (``pam-duo-py metrics``
reads both).

``outcome`` is one of ``success``, ``failure``, ``failsafe``, ``exempt``,
``preauth_allow``, ``error`` for a login decision (:data:`OUTCOMES`), or ``admin``
for an administrator's action through the Admin API (:data:`ADMIN_OUTCOMES`: not a
login; readers that count logins skip it). Fields that are unknown are ``null``. No
event ever holds the skey, a passcode or a bypass code.

Everything else the product logs is a *note* (:func:`note`: ``{"note": kind, "text": ...}``):
configuration errors, internal errors, other errors, debug lines, and the broker's own
lines for its output (the journal under systemd). Notes never go to the audit file.
:class:`EventSink` is the one writer of all of these; :func:`capture_events` collects
the dicts instead, for tests.
"""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any

from . import files
from .errors import FileRuleError
from .paths import JOURNAL_SOCKET
from .logline import LOG_DEBUG, LOG_ERR, LOG_INFO, LOG_WARNING, send_syslog  # noqa: F401
from .text import CLAIMED, address_for_log, for_log  # noqa: F401  (CLAIMED: for the events' users)

OUTCOMES = ("success", "failure", "failsafe", "exempt", "preauth_allow", "error")
ADMIN_OUTCOMES = ("admin",)
FIELDS = ("outcome", "user", "duo_user", "service", "rhost", "tty", "factor", "txid", "reason")



def event(outcome: str, **fields: Any) -> dict[str, Any]:
    """A decision event with every field present (unknown ones None)."""
    assert outcome in OUTCOMES or outcome in ADMIN_OUTCOMES, outcome
    now = time.time()
    record: dict[str, Any] = {"v": 1, "ts": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                              "time": round(now, 3)}
    for name in FIELDS:
        record[name] = fields.pop(name, None)
    record["outcome"] = outcome
    record.update(fields)
    record.setdefault("host", _hostname())
    record.setdefault("pid", os.getpid())
    return record


# kind -> (prefix, length cap of the text) of a note's line; LOG_ERR but for "debug".
NOTES = {
    "config_error": ("configuration error: ", 1000),
    "internal_error": ("internal error: ", 3000),
    "audit_error": ("cannot write audit file: ", 300),
    "error": ("", 2000),
    "debug": ("", 2000),
    "broker": ("pam-duo-py broker: ", 0),  # a line of the broker's own output, stdout or stderr
}


def note(kind: str, text: str, **fields: Any) -> dict[str, Any]:
    """A line that is not a login decision. ``to``: "syslog" (default), "stdout" or "stderr"."""
    assert kind in NOTES, kind
    now = time.time()
    record: dict[str, Any] = {"v": 1, "time": round(now, 3), "note": kind, "text": text,
                              "to": "syslog" if kind != "broker" else "stdout"}
    record.update(fields)
    record.setdefault("pid", os.getpid())
    return record


def log_line(record: dict[str, Any]) -> tuple[int, str] | None:
    """(priority, text) of the syslog line for an event or a note; None for a line that goes elsewhere."""
    if "note" not in record:
        return syslog_line(record)
    if record["to"] != "syslog":
        return None
    prefix, limit = NOTES[record["note"]]
    return (LOG_DEBUG if record["note"] == "debug" else LOG_ERR), prefix + for_log(record["text"], limit)


_captures: list[Any] = []


class capture_events:
    """``with capture_events() as events:`` collects every event and note (dicts) emitted meanwhile
    instead of writing them to syslog, journald or the broker's output (the audit file, a path
    the caller chose, is still written). ``into``: any object with ``append``."""

    def __init__(self, into: Any = None) -> None:
        self.events = [] if into is None else into

    def __enter__(self) -> Any:
        _captures.append(self.events)
        return self.events

    def __exit__(self, *exc_info: object) -> None:
        _captures.remove(self.events)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _who(record: dict[str, Any]) -> str:
    return f"'{for_log(record.get('duo_user') or record.get('user'), 100)}'"


def syslog_line(record: dict[str, Any]) -> tuple[int, str]:
    """(priority, text) of the syslog line for an event, in duo_unix's wording where one exists."""
    outcome = record["outcome"]
    reason = record.get("reason") or ""
    who = _who(record)
    where = f" from {address_for_log(record['rhost'])}" if record.get("rhost") else ""
    if outcome == "success":
        priority, text = LOG_INFO, f"Successful Duo login for {who}{where}"
    elif outcome == "preauth_allow":
        priority, text = LOG_WARNING, f"Skipped Duo login for {who}{where}: {for_log(reason)}"
    elif outcome == "failsafe":
        priority, text = LOG_WARNING, f"Failsafe Duo login for {who}{where}: {for_log(reason)}"
    elif outcome == "exempt":
        priority, text = LOG_INFO, f"User {for_log(record.get('user'), 100)} bypassed Duo 2FA due to user's UNIX group"
    elif outcome == "admin":
        priority, text = LOG_INFO, f"Duo admin action for {who}: {for_log(reason, 500)}"
    elif outcome == "failure":
        if reason.startswith("Failsecure"):
            priority, text = LOG_WARNING, f"Failsecure Duo login for {who}{where}: {for_log(reason)}"
        elif record.get("duo_status") in ("deny", "enroll") and not record.get("factor"):
            # preauth deny/enroll only (no factor yet); a denied push or passcode is "Failed", as in duo_unix
            priority, text = LOG_WARNING, f"Aborted Duo login for {who}{where}: {for_log(reason)}"
        else:
            priority, text = LOG_WARNING, f"Failed Duo login for {who}{where}: {for_log(reason)}"
    else:
        priority, text = LOG_ERR, f"Error in Duo login for {who}{where}: {for_log(reason, 1000)}"
    extras = [f"{name}={for_log(record[name], 128)}" for name in ("service", "tty", "factor", "txid") if record.get(name)]
    if extras:
        text += " [" + " ".join(extras) + "]"
    return priority, text


def append_audit(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line to the audit file under the file rule."""
    line = (json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n").encode()
    fd = files.open_append_checked(path)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class EventSink:
    """Where decision events go: journald with structured fields where it runs, else
    syslog (one line either way: journald passes its entries on to syslog); the audit file
    when configured. Notes go to syslog, or to the broker's stdout or stderr."""

    def __init__(self, audit_file: str | None = None, *, debug: bool = False,
                 journal_socket: str = JOURNAL_SOCKET) -> None:
        self.audit_file = audit_file
        self.debug_enabled = debug
        self.journal_socket = journal_socket

    def emit(self, record: dict[str, Any]) -> None:
        if _captures:
            for into in _captures:
                into.append(record)
        else:
            self.write(record)
        if self.audit_file and "note" not in record:
            try:
                append_audit(self.audit_file, record)
            except (FileRuleError, OSError) as exc:
                self.emit(note("audit_error", str(exc)))

    def write(self, record: dict[str, Any]) -> None:
        """The line for one event or note, where it goes (no audit file)."""
        line = log_line(record)
        if line is None:
            _print(NOTES[record["note"]][0] + record["text"], sys.stderr if record["to"] == "stderr" else sys.stdout)
        elif "note" in record or not self._to_journal(record, *line):
            send_syslog(*line)

    def _to_journal(self, record: dict[str, Any], priority: int, text: str) -> bool:
        if not os.path.exists(self.journal_socket):
            return False
        from . import journal

        return journal.send(journal.entry(record, priority, text), self.journal_socket)

    def error(self, text: str) -> None:
        self.emit(note("error", text))

    def debug(self, text: str) -> None:
        if self.debug_enabled:
            self.emit(note("debug", text))

    def config_error(self, problem: str, *, to: str = "syslog") -> None:
        self.emit(note("config_error", problem, to=to))

    def internal_error(self, text: str) -> None:
        self.emit(note("internal_error", text))

    def broker(self, text: str, *, error: bool = False) -> None:
        """A line of the broker's own output (stderr for an error)."""
        self.emit(note("broker", text, to="stderr" if error else "stdout"))


def _print(text: str, stream: Any) -> None:
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):
        pass
