"""The service manager's notification protocol (``sd_notify``), hand-written: one datagram.

``NOTIFY_SOCKET`` is set by systemd for ``Type=notify`` services. It is only ever sent to,
never trusted for a decision; a name starting with ``@`` is in the abstract namespace.
"""
from __future__ import annotations

import os
import socket


def notify(state: str, *, environ: "os._Environ[str] | dict[str, str] | None" = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``); False when there is no socket or sending failed."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target or target[0] not in "/@" or len(target) > 107:
        return False
    address = "\0" + target[1:] if target[0] == "@" else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.sendto(state.encode("ascii", "replace"), address)
    except OSError:
        return False
    return True


def watchdog_interval(*, environ: "os._Environ[str] | dict[str, str] | None" = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when no watchdog is asked for."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
