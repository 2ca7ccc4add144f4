"""Sending one line to syslog (facility authpriv, ident pam_duo_py).

It writes to ``/dev/log`` itself instead of calling ``openlog()``, which would
change the ident of the host process (sshd, sudo) for the rest of its life.

The line is ``<PRI>pam_duo_py[PID]: TEXT``, with no timestamp: sudo, su and
login call ``setlocale()``, so a month name from ``strftime`` would be in the
user's language (``déc.``), and journald then no longer finds the identifier.
journald and rsyslog stamp the line with the time they receive it.
"""
from __future__ import annotations

import os
import socket

LOG_AUTHPRIV = 10 << 3
LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG = 3, 4, 6, 7
SYSLOG_SOCKET = "/dev/log"
IDENT = "pam_duo_py"


def send_syslog(priority: int, text: str, *, path: str = SYSLOG_SOCKET) -> None:
    message = f"<{LOG_AUTHPRIV | priority}>{IDENT}[{os.getpid()}]: {text}".encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.send(message[:8192])
    except OSError:
        pass
