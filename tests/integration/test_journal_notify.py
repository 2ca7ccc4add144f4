"""Datagrams on real Unix sockets: journald entries and sd_notify (READY, WATCHDOG, abstract names)."""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from fakes import FakeClock, parse_journal  # noqa: E402
from pam_duo_py import broker_health, sdnotify  # noqa: E402
from pam_duo_py.events import EventSink, event  # noqa: E402


class FakeBroker:
    def __init__(self, socket_path):
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._active = {0: 2, 1000: 1}
        self.shed = 3
        pool = type("Pool", (), {"_lock": threading.Lock(), "_idle": [object()], "waited": 4})()
        served = type("Served", (), {"pool": pool})()
        self.configs = type("Configs", (), {"all": lambda self: [served]})()


def test_sink_sends_to_the_journal_instead_of_syslog(dgram, monkeypatch):
    path, sock = dgram
    syslog = []
    monkeypatch.setattr("pam_duo_py.events.send_syslog", lambda p, t: syslog.append(t))
    sink = EventSink(None, journal_socket=path)
    sink.emit(event("success", user="bob", service="sudo", factor="push", txid="TX9"))
    fields = dict(parse_journal(sock.recv(65536)))
    assert fields["PAM_DUO_FACTOR"] == "push" and fields["PAM_DUO_TXID"] == "TX9"
    assert fields["MESSAGE"].startswith("Successful Duo login for 'bob'")
    assert syslog == [], "one entry per decision: journald passes it on to syslog"


# -- sd_notify ---------------------------------------------------------------------------------

def test_notify_path_socket(dgram):
    path, sock = dgram
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(100) == b"READY=1"


def test_notify_abstract_socket():
    name = f"pdt-notify-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    with sock:
        assert sdnotify.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"


@pytest.mark.parametrize("value", ["", "relative/path", "/nonexistent/socket"])
def test_notify_without_a_usable_socket_is_a_no_op(value):
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": value}) is False
    assert sdnotify.notify("READY=1", environ={}) is False


def test_health_pings_at_half_the_interval_and_writes_stats(dgram, tmp_path):
    path, sock = dgram
    clock = FakeClock()
    broker = FakeBroker(str(tmp_path / "broker.sock"))
    health = broker_health.Health(broker, clock=clock, environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    health.ready()
    assert sock.recv(100) == b"READY=1"
    assert sock.recv(100) == b"WATCHDOG=1"
    health.connections = 5
    health.reloaded(True)
    health.reloaded(False)
    clock.advance(0.5)
    health.tick()  # not due: no ping
    clock.advance(0.6)
    health.tick()
    assert sock.recv(100) == b"WATCHDOG=1"
    stats = json.loads((tmp_path / "broker-stats.json").read_text())
    assert stats["inflight_logins"] == 3 and stats["pool_idle_clients"] == 1 and stats["pool_waited"] == 4
    assert stats["connections"] == 5 and stats["reloads"] == 1 and stats["reload_failures"] == 1
    assert stats["pid"] == os.getpid() and stats["shed"] == 3 and stats["busy"] == 0
    health.stopping()
    assert sock.recv(100) == b"STOPPING=1"
    assert not (tmp_path / "broker-stats.json").exists()
