"""journald entries, the watchdog interval, the broker's health snapshot and the per-call Duo facts
(the datagrams themselves: tests/integration/test_journal_notify.py)."""
from __future__ import annotations

import json
import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes import FakeClock, parse_journal
from pam_duo_py import broker_health, journal, sdnotify
from pam_duo_py.config import DuoSettings
from pam_duo_py.duo import DuoClient, error_kind
from pam_duo_py.errors import (DuoCredentialsRejected, DuoMalformedReply, DuoRateLimited, DuoRefused, DuoTimeout,
                               DuoUnavailable, DuoUnknownAnswer)
from pam_duo_py.events import CLAIMED, EventSink, event
from pam_duo_py.login import _duo_facts

SETTINGS = DuoSettings(ikey="DIABCDEFGHIJKLMNOPQR", skey="S" * 40, host="api-test.duosecurity.com", port=None,
                       ca_file=None, proxy=None, timeout=10.0)


# -- journald ----------------------------------------------------------------------------------

def test_journal_entry_has_the_structured_fields():
    record = event("failsafe", user="alice", duo_user="alice", service="sshd", rhost="203.0.113.5",
                   tty="ssh", factor=None, txid=None, reason="Duo unreachable at preauth")
    fields = dict(parse_journal(journal.entry(record, 4, "Failsafe Duo login for 'alice'")))
    assert fields["MESSAGE"] == "Failsafe Duo login for 'alice'"
    assert fields["SYSLOG_IDENTIFIER"] == "pam_duo_py"
    assert fields["SYSLOG_FACILITY"] == "10" and fields["PRIORITY"] == "4"
    assert fields["MESSAGE_ID"] == journal.MESSAGE_IDS["failsafe"]
    assert fields["PAM_DUO_OUTCOME"] == "failsafe"
    assert fields["PAM_DUO_USER"] == "alice" and fields["PAM_DUO_SERVICE"] == "sshd"
    assert fields["PAM_DUO_RHOST"] == "203.0.113.5"
    assert "PAM_DUO_FACTOR" not in fields and "PAM_DUO_TXID" not in fields


def test_journal_rhost_keeps_the_claimed_marker_past_the_cap():
    record = event("success", user="alice", rhost="203.0.113.5 " + "x" * 200 + CLAIMED, service="pam-duo-login")
    fields = dict(parse_journal(journal.entry(record, 6, "text")))
    assert fields["PAM_DUO_RHOST"] == "203.0.113.5 " + "x" * 68 + "..." + CLAIMED


def test_message_ids_are_distinct_128_bit_hex():
    ids = list(journal.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids) == 6
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    from pam_duo_py.events import OUTCOMES
    assert set(journal.MESSAGE_IDS) == set(OUTCOMES)


@given(st.text(max_size=300))
def test_no_field_injection_from_a_crafted_value(value):
    record = event("failure", user=value, rhost=value, service="sshd", reason=value)
    fields = parse_journal(journal.entry(record, 4, "text"))
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), "a value never adds a field"
    assert all(name.isupper() or "_" in name for name in names)
    for name, got in fields:
        assert "\n" not in got


def test_binary_form_for_a_value_with_a_newline():
    data = journal.encode_field("X", "a\nB=1")
    assert parse_journal(data) == [("X", "a\nB=1")]
    assert b"\nB=1\n" not in data.split(b"\n", 1)[0]


def test_sink_falls_back_to_syslog_without_journald(tmp_path, monkeypatch):
    syslog = []
    monkeypatch.setattr("pam_duo_py.events.send_syslog", lambda p, t: syslog.append(t))
    EventSink(None, journal_socket=str(tmp_path / "none")).write(event("success", user="bob"))  # beneath the capture
    assert len(syslog) == 1 and syslog[0].startswith("Successful Duo login")


def test_watchdog_interval():
    assert sdnotify.watchdog_interval(environ={"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval(environ={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert sdnotify.watchdog_interval(environ={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    for bad in ({}, {"WATCHDOG_USEC": "x"}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}):
        assert sdnotify.watchdog_interval(environ=bad) is None


# -- the broker's health -----------------------------------------------------------------------

def test_health_snapshot_reads_the_real_broker(tmp_path, monkeypatch):
    """The snapshot reads the broker's own counters: this fails when they are renamed."""
    from pam_duo_py.broker_server import Broker, ClientPool

    broker = Broker.__new__(Broker)
    broker.socket_path = str(tmp_path / "b.sock")
    broker._lock = threading.Lock()
    broker._active = {}
    broker.shed = 2
    pool = ClientPool(SETTINGS, factory=lambda s: type("C", (), {"settings": s, "close": lambda self: None})())
    served = type("Served", (), {"pool": pool})()
    broker.configs = type("Configs", (), {"all": lambda self: [served, served]})()
    assert broker._enter(("uid", 1000))
    pool.give_back(pool.borrow(SETTINGS))
    snap = broker_health.Health(broker, environ={}).snapshot()
    assert snap["inflight_logins"] == 1 and snap["pool_idle_clients"] == 2  # the idle clients of every served config
    assert snap["shed"] == 2 and snap["busy"] == 0 and snap["configs"] == 2


# -- per-call facts ----------------------------------------------------------------------------

@pytest.mark.parametrize("exc,long_poll,kind", [
    (DuoUnavailable("x"), False, "unreachable"),
    (DuoTimeout("x"), False, "unreachable"),
    (DuoTimeout("x"), True, "poll_timeout"),
    (DuoUnavailable("x", status=503), False, "5xx"),
    (DuoMalformedReply("x", status=200), False, "malformed"),
    (DuoCredentialsRejected("x", status=401), False, "401"),
    (DuoRateLimited("x", status=429), False, "429"),
    (DuoRefused("x", status=403), False, "4xx"),
])
def test_error_kind(exc, long_poll, kind):
    assert error_kind(exc, long_poll=long_poll) == kind


def test_every_call_is_noted_with_its_endpoint_time_and_kind():
    clock = FakeClock()
    answers = iter([(200, {"stat": "OK", "response": {"result": "allow", "status_msg": "ok"}}),
                    (429, {"stat": "FAIL", "code": 42901, "message": "Too Many Requests"}),
                    (200, {"stat": "OK", "response": {"result": "maybe"}})])

    def transport(method, host, path, headers, body, deadline):
        clock.advance(0.25)
        status, reply = next(answers)
        return status, {}, json.dumps(reply).encode()

    client = DuoClient(SETTINGS, clock=clock, sleep=lambda s: None, transport=transport)
    from pam_duo_py.config import DuoIdentity
    identity = DuoIdentity(username="alice")
    client.preauth(identity, ipaddr=None, hostname=None, verified_push=False)
    with pytest.raises(DuoRateLimited):
        client.call("POST", "/auth/v2/auth", {})
    with pytest.raises(DuoUnknownAnswer):
        client.auth_status("TX", timeout=5)
    assert client.take_calls() == [("preauth", 0.25, None), ("auth", 0.25, "429"), ("auth_status", 0.25, "unknown_answer")]
    assert client.take_calls() == []


def test_duo_facts_for_the_event():
    class Fake:
        server_time_offset = -2.0

        def __init__(self):
            self.calls = [("preauth", 0.123456, None)]

        def take_calls(self):
            calls, self.calls = self.calls, []
            return calls

    assert _duo_facts(Fake()) == {"duo_calls": [["preauth", 0.1235, None]], "clock_offset": -2.0}
    assert _duo_facts(object()) == {}
