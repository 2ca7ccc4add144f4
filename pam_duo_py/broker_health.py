"""The broker's health, for the service manager and for ``pam-duo-py metrics``.

* ``READY=1`` once the broker listens, ``WATCHDOG=1`` from its main loop at half the
  ``WatchdogSec=`` interval (:mod:`pam_duo_py.sdnotify`): a broker whose main loop hangs
  stops pinging and systemd restarts it. Each ping follows a snapshot that takes the
  broker's and the pool's locks, so a deadlock on them stops the pings too.
* a small stats file next to the socket (``broker-stats.json``, root, 0600, replaced
  atomically every few seconds and removed on a clean stop): in-flight logins, connections,
  idle pooled Duo clients, config reloads. ``pam-duo-py metrics`` reads it; a file that is
  not refreshed means the broker is down or hung.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from . import sdnotify

STATS_NAME = "broker-stats.json"
STATS_INTERVAL = 5.0   # seconds between stats file writes


def stats_path(socket_path: str) -> str:
    return os.path.join(os.path.dirname(socket_path), STATS_NAME)


class Health:
    def __init__(self, broker: Any, *, clock: Callable[[], float] = time.monotonic,
                 environ: dict[str, str] | None = None) -> None:
        self.broker = broker
        self.clock = clock
        self.environ = environ
        self.path = stats_path(broker.socket_path)
        self.started = time.time()
        self.connections = 0
        self.busy = 0  # logins answered "busy" (over a per-user or per-uid cap)
        self.reloads = 0
        self.reload_failures = 0
        self.ping_every = sdnotify.watchdog_interval(environ=environ)
        self._next_ping = 0.0
        self._next_write = 0.0

    def ready(self) -> None:
        sdnotify.notify("READY=1", environ=self.environ)
        self.tick()

    def reloaded(self, ok: bool) -> None:
        if ok:
            self.reloads += 1
        else:
            self.reload_failures += 1
        self._next_write = 0.0

    def tick(self) -> None:
        """Called from the main loop (at least every second): watchdog ping and stats file, when due."""
        now = self.clock()
        ping = self.ping_every is not None and now >= self._next_ping
        write = now >= self._next_write
        if not (ping or write):
            return
        snapshot = self.snapshot()
        if ping:
            sdnotify.notify("WATCHDOG=1", environ=self.environ)
            self._next_ping = now + (self.ping_every or 0.0)
        if write:
            self._next_write = now + STATS_INTERVAL
            self._write(snapshot)

    def snapshot(self) -> dict[str, Any]:
        broker = self.broker
        with broker._lock:
            inflight = sum(broker._active.values())
        served = broker.configs.all()
        idle = waited = 0
        for config in served:
            with config.pool._lock:
                idle += len(config.pool._idle)
                waited += config.pool.waited
        return {"v": 1, "pid": os.getpid(), "time": round(time.time(), 3), "started": round(self.started, 3),
                "inflight_logins": inflight, "connections": self.connections, "busy": self.busy, "shed": broker.shed,
                "pool_idle_clients": idle, "pool_waited": waited, "configs": len(served),
                "reloads": self.reloads, "reload_failures": self.reload_failures,
                "interval": STATS_INTERVAL}

    def _write(self, snapshot: dict[str, Any]) -> None:
        from . import files
        from .errors import FileRuleError

        try:
            files.write_atomic(self.path, json.dumps(snapshot, separators=(",", ":")).encode())
        except (OSError, FileRuleError):
            pass  # metrics then report the broker as down: nothing a login depends on

    def stopping(self) -> None:
        sdnotify.notify("STOPPING=1", environ=self.environ)
        try:
            os.unlink(self.path)
        except OSError:
            pass
