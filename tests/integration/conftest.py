"""Shared fixtures of the integration layer (loopback and Unix sockets only)."""
from __future__ import annotations

import socket

import pytest


@pytest.fixture
def dgram(tmp_path):
    """(path, socket): a Unix datagram socket bound in tmp_path, as /dev/log or journald's socket would be."""
    path = str(tmp_path / "sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()
