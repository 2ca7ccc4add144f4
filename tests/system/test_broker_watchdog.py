"""The broker under sd_notify-style supervision: READY once it listens, WATCHDOG from its main
loop, silence when it is stopped (SIGSTOP), and a stats file the metrics read."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, clean_env
from .brokerkit import BrokerProcess, fc_config_text, fc_root, socket_dir, write_map, write_root_file  # noqa: F401

pytestmark = pytest.mark.system

WATCHDOG_USEC = 2_000_000  # WatchdogSec=2s: a ping every second


class Supervisor:
    """What systemd does for Type=notify: a datagram socket named by NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.transcript: list[str] = []
        self._t0 = time.monotonic()

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        self.transcript.append(f"{time.monotonic() - self._t0:7.2f}s  {data}")
        return data

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.transcript.append(f"{time.monotonic() - self._t0:7.2f}s  {self.sock.recv(4096).decode()} (drained)")
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def supervised(simulator, test_root, fc_root):  # noqa: F811
    directory = socket_dir(fc_root, "watchdog")
    sock_path = directory / "broker.sock"
    map_file = write_map(test_root / "wd-map.txt")
    config = write_root_file(test_root / "wd.toml", fc_config_text(
        simulator, users={"map_file": str(map_file)}, broker={"socket": str(sock_path)}))
    supervisor = Supervisor(directory / "notify.sock")
    broker = BrokerProcess(config, sock_path, env={"NOTIFY_SOCKET": str(supervisor.path),
                                                   "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    broker.start()
    try:
        yield broker, supervisor, directory
    finally:
        if broker.running:
            os.kill(broker.pid, signal.SIGCONT)
        broker.stop()
        supervisor.close()
        print("\n".join(["watchdog transcript:"] + supervisor.transcript))


def test_ready_then_periodic_watchdog_and_silence_when_stopped(supervised):
    broker, supervisor, directory = supervised
    assert supervisor.receive(10) == "READY=1"
    for _ in range(5):
        assert supervisor.receive(10) == "WATCHDOG=1"

    stats = json.loads((directory / "broker-stats.json").read_text())
    assert stats["pid"] == broker.pid and stats["inflight_logins"] == 0
    assert oct(os.stat(directory / "broker-stats.json").st_mode & 0o777) == "0o600"
    metrics = subprocess.run([str(CLI), "-c", str(broker.config), "metrics", "--state", str(directory / "m.json")],
                             env=clean_env(), capture_output=True, text=True, timeout=60)
    assert metrics.returncode == 0, metrics
    assert "\npam_duo_py_broker_up 1\n" in metrics.stdout
    assert "\npam_duo_py_broker_inflight_logins 0\n" in metrics.stdout

    os.kill(broker.pid, signal.SIGSTOP)
    pid, status = os.waitpid(broker.pid, os.WUNTRACED)  # returns once it is stopped (not reaped)
    assert pid == broker.pid and os.WIFSTOPPED(status)
    supervisor.drain()  # a ping sent before the stop
    silence = supervisor.receive(1.5 * WATCHDOG_USEC / 1e6)  # past WatchdogSec: systemd would restart it
    supervisor.transcript.append(f"stopped: {'nothing received' if silence is None else silence}")
    assert silence is None

    os.kill(broker.pid, signal.SIGCONT)
    assert supervisor.receive(10) == "WATCHDOG=1"

    broker.stop()
    assert supervisor.receive(10) == "STOPPING=1"
    assert not (directory / "broker-stats.json").exists(), "a clean stop removes the stats file"
