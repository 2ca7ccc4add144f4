"""The broker client's connect against a real Unix listener whose queue is full."""
from __future__ import annotations

import os
import socket

import pytest

from pam_duo_py.broker_client import connect
from pam_duo_py.broker_protocol import ProtocolError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the client accepts only a broker running as root")


@pytest.fixture
def full_listener(tmp_path):
    """(path, listener, queued): a listener that accepts nothing yet, its queue filled by ``queued`` sockets."""
    path = str(tmp_path / "broker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        queued.append(s)
    yield path, listener, queued
    for s in queued:
        s.close()
    listener.close()


def test_a_full_queue_is_waited_out_not_taken_for_a_missing_broker(full_listener):
    path, listener, _ = full_listener
    pauses = []

    def pause(seconds: float) -> None:  # the broker gets to its queue meanwhile
        pauses.append(seconds)
        if len(pauses) == 3:
            listener.accept()[0].close()

    with connect(path, timeout=30, pause=pause) as sock:
        assert sock.fileno() >= 0
    assert len(pauses) == 3 and all(0 < p <= 0.05 for p in pauses)


def test_a_queue_that_stays_full_is_unreachable_once_the_timeout_passed(full_listener):
    path, _, _ = full_listener
    pauses = []
    with pytest.raises(ProtocolError, match="broker not reachable"):
        connect(path, timeout=0.05, pause=pauses.append)
    assert pauses  # it tried again before giving up
