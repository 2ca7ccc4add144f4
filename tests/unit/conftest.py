"""Shared set-up of the unit layer: importable package, no network at all, syslog captured.

The unit layer needs no root and no network. Every test runs with the socket
constructors replaced: any attempt to open a socket (even a Unix or loopback
one) is recorded and fails the test, even when the code under test swallows
the error. Only ``socket.socketpair()`` stays: a connected pair of Unix sockets
inside the test, for the broker protocol. Events and log lines are captured
(``pam_duo_py.events.capture_events``): ``captured_events`` and ``syslog_lines``.
"""
from __future__ import annotations

import _socket
import os
import socket
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.dirname(os.path.abspath(__file__))
for _path in (ROOT, UNIT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "unit",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unit"))


class NetworkUsed(AssertionError):
    """Raised (and recorded) when code under test tries to use the network."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    attempts: list[str] = []

    def refuse(name):
        def refused(*args, **kwargs):
            attempts.append(name)
            raise NetworkUsed(f"socket.{name} called in a unit test")

        return refused

    class RefusedSocket(socket.socket):
        def __init__(self, *args, **kwargs):  # noqa: D401 - never builds a socket
            attempts.append("socket")
            raise NetworkUsed("socket.socket called in a unit test")

    real_socket = socket.socket

    def socketpair(family=socket.AF_UNIX, type=socket.SOCK_STREAM, proto=0):
        if family != socket.AF_UNIX:
            attempts.append("socketpair")
            raise NetworkUsed("socket.socketpair of a network family called in a unit test")
        a, b = _socket.socketpair(family, type, proto)
        return real_socket(family, type, proto, a.detach()), real_socket(family, type, proto, b.detach())

    monkeypatch.setattr(socket, "socket", RefusedSocket)
    monkeypatch.setattr(socket, "socketpair", socketpair)
    for name in ("create_connection", "getaddrinfo", "fromfd", "create_server",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        monkeypatch.setattr(socket, name, refuse(name))
    from pam_duo_py import broker_client  # it builds its sockets from _socket (no socket module on that path)

    class RefusedBrokerSocket(RefusedSocket):
        pass

    monkeypatch.setattr(broker_client, "BrokerSocket", RefusedBrokerSocket)
    yield attempts
    assert attempts == [], f"the code under test tried to use the network: {attempts}"


class SyslogLines(list):
    """The syslog lines of the captured events, as (priority, text)."""

    def append(self, record) -> None:
        from pam_duo_py.events import log_line

        line = log_line(record)
        if line is not None:
            assert isinstance(line[0], int) and isinstance(line[1], str)
            super().append(line)


@pytest.fixture(autouse=True)
def captured_events():
    """Every event and note the code emits, as dicts (nothing goes to syslog, journald or stdout)."""
    from pam_duo_py.events import capture_events

    with capture_events() as events:
        yield events


@pytest.fixture(autouse=True)
def syslog_lines(captured_events):
    """Every line the code would send to syslog, as (priority, text)."""
    from pam_duo_py.events import capture_events

    with capture_events(SyslogLines()) as lines:
        yield lines
