"""Decision events: syslog wording, escaping, and the audit file (docs/behaviour.md §8)."""
from __future__ import annotations

import json
import os
import re
import stat
import unicodedata

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from pam_duo_py import events
from pam_duo_py.errors import FileRuleError
from pam_duo_py.events import EventSink, append_audit, event, syslog_line
from pam_duo_py.text import for_log

RHOST = "203.0.113.5"


def line(outcome, **fields):
    fields.setdefault("user", "alice")
    return syslog_line(event(outcome, **fields))


# -- duo_unix's wording ------------------------------------------------------------------------

def test_success_line():
    priority, text = line("success", rhost=RHOST, service="sshd", factor="push", txid="TX1", reason="push approved")
    assert priority == events.LOG_INFO
    assert text.startswith("Successful Duo login for 'alice' from 203.0.113.5")
    assert "service=sshd" in text and "factor=push" in text and "txid=TX1" in text


def test_success_line_without_rhost():
    _, text = line("success", service="sudo")
    assert text.startswith("Successful Duo login for 'alice'")
    assert " from " not in text


def test_success_line_names_the_duo_user_when_mapped():
    _, text = line("success", duo_user="alice.smith", rhost=RHOST)
    assert text.startswith("Successful Duo login for 'alice.smith' from 203.0.113.5")


def test_failure_line():
    priority, text = line("failure", rhost=RHOST, reason="attempts used up")
    assert priority == events.LOG_WARNING
    assert text.startswith("Failed Duo login for 'alice' from 203.0.113.5: attempts used up")


def test_failsafe_line():
    priority, text = line("failsafe", rhost=RHOST, reason="Duo unreachable at preauth: timed out")
    assert priority == events.LOG_WARNING
    assert text.startswith("Failsafe Duo login for 'alice' from 203.0.113.5: Duo unreachable at preauth")


def test_failsecure_line():
    _, text = line("failure", rhost=RHOST, reason="Failsecure: Duo unreachable at preauth: timed out")
    assert text.startswith("Failsecure Duo login for 'alice' from 203.0.113.5: ")


@pytest.mark.parametrize("status", ["deny", "enroll"])
def test_aborted_line_for_deny_and_enroll(status):
    _, text = line("failure", rhost=RHOST, reason="denied at preauth", duo_status=status)
    assert text.startswith("Aborted Duo login for 'alice' from 203.0.113.5: ")


@pytest.mark.parametrize("factor", ["push", "passcode"])
def test_denied_factor_is_failed_not_aborted(factor):
    # Duo's auth_status/auth reply also says status "deny"; duo_unix logs that as "Failed".
    _, text = line("failure", rhost=RHOST, reason="push denied by the user", duo_status="deny", factor=factor)
    assert text.startswith("Failed Duo login for 'alice' from 203.0.113.5: ")


def test_skipped_line_for_preauth_allow():
    priority, text = line("preauth_allow", rhost=RHOST, reason="Allowing unknown user")
    assert priority == events.LOG_WARNING
    assert text.startswith("Skipped Duo login for 'alice' from 203.0.113.5: Allowing unknown user")


def test_exempt_line():
    priority, text = line("exempt", reason="not in users.groups", service="sshd")
    assert priority == events.LOG_INFO
    assert text.startswith("User alice bypassed Duo 2FA due to user's UNIX group")


def test_error_line():
    priority, text = line("error", rhost=RHOST, reason="cannot get groups")
    assert priority == events.LOG_ERR
    assert text.startswith("Error in Duo login for 'alice' from 203.0.113.5: cannot get groups")


def test_unknown_outcome_is_a_programming_error():
    with pytest.raises(AssertionError):
        event("maybe", user="alice")


def test_event_has_every_field():
    record = event("success", user="alice", extra="kept")
    for name in events.FIELDS:
        assert name in record
    assert record["outcome"] == "success" and record["extra"] == "kept" and record["v"] == 1
    assert record["duo_user"] is None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


# -- escaping ----------------------------------------------------------------------------------

def unescape(text: str) -> str:
    """Undo for_log's escaping (\\xNN, \\uNNNN, backslash-quote, double backslash)."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "x":
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 4
        elif nxt == "u":
            out.append(chr(int(text[i + 2:i + 6], 16)))
            i += 6
        else:
            out.append(nxt)
            i += 2
    return "".join(out)


def quoted_name(text: str, prefix: str) -> tuple[str, str]:
    """(the quoted user name, the rest of the line): ends at the first unescaped quote."""
    assert text.startswith(prefix + "'"), text
    i = len(prefix) + 1
    while True:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            return text[len(prefix) + 1:i], text[i + 1:]
        i += 1


def raw_unsafe(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")
            or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069]


NASTY = ["alice' from 10.0.0.1", "alice\nSuccessful Duo login for 'root' from 10.0.0.1", "a\\'b", "\\", "'",
         "bob\r\x1b[2K", "x\x00y", "\u2028", "\u202eevil", "x" * 300, "é\x85\x9b", '"quoted"', "\\x41"]


@given(name=st.text(max_size=300) | st.sampled_from(NASTY),
       rhost=st.sampled_from([RHOST, "10.0.0.1\nFake line", "host' x", "2001:db8::1"]),
       reason=st.text(max_size=100),
       outcome=st.sampled_from(["success", "failure", "failsafe", "preauth_allow", "error"]))
@example(name="alice' from 10.0.0.1", rhost=RHOST, reason="", outcome="success")
def test_user_names_cannot_forge_a_log_line(name, rhost, reason, outcome):
    assume(not reason.startswith("Failsecure"))  # the engine's own fail-secure reason has a line of its own
    record = event(outcome, user=name, rhost=rhost, reason=reason, service="sshd\n", tty="pts/1\x1b")
    priority, text = syslog_line(record)
    assert raw_unsafe(text) == [], repr(text)
    prefix = {"success": "Successful Duo login for ", "failure": "Failed Duo login for ",
              "failsafe": "Failsafe Duo login for ", "preauth_allow": "Skipped Duo login for ",
              "error": "Error in Duo login for "}[outcome]
    shown, rest = quoted_name(text, prefix)
    # the quoted part is exactly the (capped) user name, and the line goes on where it should
    expected = name if len(name) <= 100 else name[:100] + "..."
    assert unescape(shown) == expected
    assert rest.startswith(" from " + for_log(rhost, 64))
    assert "'" not in shown.replace("\\'", "")


@given(name=st.text(max_size=300))
def test_exempt_line_cannot_be_forged(name):
    _, text = syslog_line(event("exempt", user=name))
    assert raw_unsafe(text) == []
    assert text.endswith(" bypassed Duo 2FA due to user's UNIX group")
    shown = text[len("User "):-len(" bypassed Duo 2FA due to user's UNIX group")]
    assert unescape(shown) == (name if len(name) <= 100 else name[:100] + "...")


def test_long_fields_are_capped():
    _, text = line("failure", user="u" * 5000, rhost="r" * 5000, reason="x" * 50_000)
    assert len(text) < 2000


@given(rhost=st.text(min_size=0, max_size=300))
@example(rhost="203.0.113.5" + " " * 60 + "[trusted]")
@example(rhost="r" * 64)
def test_the_claimed_marker_survives_the_cap(rhost):
    for outcome in ("success", "failure", "failsafe", "preauth_allow", "error"):
        _, text = line(outcome, rhost=rhost + events.CLAIMED, service="sshd")
        assert f" from {for_log(rhost, 64)} (claimed)" in text, text


def test_a_long_claimed_address_through_a_login_keeps_its_marker():
    from pam_duo_py.login import LoginRequest, authenticate
    from pam_duo_py.config import parse_config
    from fakes import FakeDuo, FakePrompter
    from pam_duo_py.replies import Preauth

    class Sink(EventSink):
        def emit(self, record):
            self.lines.append(syslog_line(record)[1])

    sink = Sink(None)
    sink.lines = []
    config = parse_config('[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "' + "S" * 40
                          + '"\nhost = "api-test.duosecurity.com"\n', "/etc/pam_duo_py/pam_duo.toml")
    forged = "203.0.113.5 " + "x" * 60
    request = LoginRequest(user="root", service="pam-duo-login", rhost=forged, trusted_address=False)
    authenticate(config, request, FakePrompter(()), sink=sink, duo_factory=lambda s: FakeDuo(Preauth("allow", "ok")),
                 hostname="server1")
    assert sink.lines and all(f" from {forged[:64]}... (claimed)" in text for text in sink.lines), sink.lines


# -- the audit file ----------------------------------------------------------------------------

@given(name=st.text(max_size=50), reason=st.text(max_size=50), rhost=st.none() | st.text(max_size=40))
def test_audit_json_line_round_trips(name, reason, rhost):
    record = event("failure", user=name, rhost=rhost, reason=reason, factor="passcode", txid=None)
    encoded = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
    assert "\n" not in encoded and encoded.isascii()
    assert json.loads(encoded) == record


def test_append_audit_writes_owner_only_json_lines(tmp_path):
    os.chmod(tmp_path, 0o700)
    path = str(tmp_path / "audit.jsonl")
    first = event("success", user="alice", duo_user="alice", service="sshd", rhost=RHOST, tty="ssh", factor="push",
                  txid="TX1", reason="push approved")
    second = event("failure", user="bo\nb'", service="sudo", reason="attempts used up")
    append_audit(path, first)
    append_audit(path, second)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert [json.loads(raw) for raw in lines[:2]] == [first, second]


def test_append_audit_refuses_a_file_others_can_read(tmp_path):
    os.chmod(tmp_path, 0o700)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    with pytest.raises(FileRuleError):
        append_audit(str(path), event("success", user="alice"))
    assert path.read_bytes() == b""


def test_event_sink_writes_syslog_and_audit(tmp_path, syslog_lines):
    os.chmod(tmp_path, 0o700)
    path = str(tmp_path / "audit.jsonl")
    sink = EventSink(path)
    record = event("success", user="alice", rhost=RHOST, factor="push")
    sink.emit(record)
    assert syslog_lines == [syslog_line(record)]
    with open(path) as handle:
        assert json.loads(handle.read()) == record


def test_event_sink_survives_an_unwritable_audit_file(tmp_path, syslog_lines):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    sink = EventSink(str(open_dir / "audit.jsonl"))
    record = event("failure", user="alice", reason="x")
    sink.emit(record)  # no exception
    assert syslog_lines[0] == syslog_line(record)
    assert any(p == events.LOG_ERR and "audit" in t for p, t in syslog_lines[1:])
    assert not (open_dir / "audit.jsonl").exists()


def test_event_sink_debug_lines_only_when_enabled(syslog_lines):
    EventSink(None).debug("hidden")
    assert syslog_lines == []
    EventSink(None, debug=True).debug("shown\nline")
    assert syslog_lines == [(events.LOG_DEBUG, "shown\\x0aline")]


# ------------------------------------------------------------------ notes and the capture
def test_notes_are_events_with_the_lines_they_always_had(captured_events, syslog_lines):
    sink = EventSink(None)
    sink.config_error("/etc/x.toml: duo.ikey: missing")
    sink.internal_error("Traceback\n  boom")
    sink.error("broker: bad request from uid 7: frame is not JSON")
    sink.broker("reloaded /etc/x.toml")
    assert [(e["note"], e["text"]) for e in captured_events] == [
        ("config_error", "/etc/x.toml: duo.ikey: missing"), ("internal_error", "Traceback\n  boom"),
        ("error", "broker: bad request from uid 7: frame is not JSON"), ("broker", "reloaded /etc/x.toml")]
    assert syslog_lines == [(events.LOG_ERR, "configuration error: /etc/x.toml: duo.ikey: missing"),
                            (events.LOG_ERR, "internal error: Traceback\\x0a  boom"),
                            (events.LOG_ERR, "broker: bad request from uid 7: frame is not JSON")]


def test_broker_notes_go_to_its_own_output(capsys):
    sink = EventSink(None)
    sink.write(events.note("broker", "listening on /run/x.sock"))
    sink.write(events.note("broker", "reload failed", to="stderr"))
    sink.write(events.note("config_error", "bad key", to="stderr"))
    assert capsys.readouterr() == ("pam-duo-py broker: listening on /run/x.sock\n",
                                   "pam-duo-py broker: reload failed\nconfiguration error: bad key\n")


def test_capture_events_collects_instead_of_writing_and_keeps_the_audit_file(tmp_path):
    os.chmod(tmp_path, 0o700)
    path = tmp_path / "audit.jsonl"
    record = event("success", user="alice")
    with events.capture_events() as outer, events.capture_events() as inner:
        EventSink(str(path)).emit(record)
        EventSink(None).error("x")
    assert outer == inner and [e.get("outcome") or e["note"] for e in inner] == ["success", "error"]
    assert json.loads(path.read_text()) == record  # notes never go to the audit file


def test_a_note_is_not_a_decision():
    record = events.note("error", "x")
    assert "outcome" not in record and record["to"] == "syslog"
