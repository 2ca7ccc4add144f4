"""Keep the broker's Duo connection warm between calls (the broker's :class:`ClientPool` uses it).

A login through the broker costs one round trip per Duo request only while a
connection is open. Duo, or a NAT or proxy on the way, closes idle
connections, so the first login after a pause would pay TCP and TLS again, and
so would a login's next call after its user took long to answer (a login
borrows a client for each call, not for the login). The keeper, a thread of the
pool, does two things with the idle client that the next call gets (the top of
the pool), and only with it:

* **reconnect in the background** as soon as the server closes that
  connection: the next login finds a new one open. This is what keeps a login
  warm behind servers whose idle timeout is shorter than a minute.
* **ping** (Duo's ``/auth/v2/ping``, not a login request) once the connection
  has been quiet for ``PING_INTERVAL``: it keeps the connection and any NAT
  state on the way alive where the server waits longer than that, and finds a
  connection that died silently (a NAT that forgot it sends no FIN) before a
  login's request would hang on it; a failed ping closes it, and the reconnect
  rule takes over.

Bounds: at most one ping per ``PING_INTERVAL`` (a minute); at most one
background reconnect per ``RECONNECT_INTERVAL`` (a minute) apart from the
first one after each call; each ping or connect bounded by ``CALL_TIMEOUT``.
Nothing at all once the broker has had no login for ``QUIET_LIMIT`` (a day):
its idle clients are then closed, and the next login connects afresh. Other
idle clients (left by concurrent logins) are closed when their server closes
them or after ``PING_INTERVAL`` of quiet. A client is only touched while it is
out of the pool, so a call never shares one with the keeper, and a request is
never sent twice: the keeper sends nothing but pings.
"""
from __future__ import annotations

import select
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

PING_INTERVAL = 60.0
RECONNECT_INTERVAL = 60.0
QUIET_LIMIT = 24 * 3600.0
CALL_TIMEOUT = 10.0
POLL = 0.5  # longest wait between passes; a server closing the warm connection wakes the keeper at once


class Keeper:
    """The pool's background upkeep. ``maintain`` is one pass (unit tests call it with a fake clock)."""

    def __init__(self, lock: Any, idle: list[Any], clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = lock  # the pool's lock (a Condition), guarding ``idle``; notified when a client is back
        self._idle = idle  # the pool's idle clients; the last one is handed out next
        self._clock = clock
        self._used: dict[int, float] = {}  # id(client) -> when it last carried a request
        self.last_login: float | None = None
        self._last_reconnect = float("-inf")
        self._last_ping = float("-inf")
        self._free_reconnect = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.reconnects = 0

    # -- what the pool tells the keeper (called with the pool's lock held)

    def taken(self, client: Any) -> None:
        self.last_login = self._clock()
        self._used.pop(id(client), None)

    def returned(self, client: Any) -> None:
        self._used[id(client)] = self._clock()
        self._free_reconnect = True  # one reconnect right after each call

    def forget(self, client: Any) -> None:
        self._used.pop(id(client), None)

    # -- one pass

    def maintain(self) -> None:
        now = self._clock()
        with self._lock:
            if not self._idle:
                return
            if self.last_login is None or now - self.last_login > QUIET_LIMIT:
                drop, self._idle[:] = list(self._idle), []
                keep, action = None, None
            else:
                drop = [c for c in self._idle[:-1] if not c.connected() or now - self._used.get(id(c), now) >= PING_INTERVAL]
                for client in drop:
                    self._idle.remove(client)
                keep, action = self._idle[-1], None
                if not keep.connected():
                    if self._free_reconnect or now - self._last_reconnect >= RECONNECT_INTERVAL:
                        action = "reconnect"
                        self._free_reconnect, self._last_reconnect = False, now
                    elif keep.fileno() is not None:
                        action = "close"  # the server closed it: let go of the socket until a reconnect is due
                elif now - self._used.get(id(keep), now) >= PING_INTERVAL and now - self._last_ping >= PING_INTERVAL:
                    action = "ping"
                    self._last_ping = now
                if action:
                    self._idle.pop()
            for client in drop:
                self._used.pop(id(client), None)
        for client in drop:
            client.close()
        if keep is None or action is None:
            return
        try:
            if action == "reconnect":
                keep.close()
                self.reconnects += 1
                keep.warm_up(CALL_TIMEOUT)
            elif action == "ping":
                self.pings += 1
                if not keep.ping(CALL_TIMEOUT):
                    keep.close()
            else:
                keep.close()
        finally:
            with self._lock:
                self._used[id(keep)] = self._clock()
                if self._stop.is_set():
                    keep.close()
                else:
                    self._idle.append(keep)
                    self._lock.notify_all()  # a call may be waiting for a client (ClientPool.borrow)

    def _watched(self) -> int | None:
        with self._lock:
            return self._idle[-1].fileno() if self._idle else None

    # -- the thread

    def start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="duo-keepwarm", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.maintain()
                fd = self._watched()
                if fd is None:
                    self._stop.wait(POLL)
                else:
                    select.select([fd], [], [], POLL)  # wakes as soon as the server closes the warm connection
            except Exception:  # never end the keeper; a failed pass is retried on the next
                self._stop.wait(POLL)
