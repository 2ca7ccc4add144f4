"""Decision events to journald, over its native protocol (one datagram, hand-written).

Each entry carries the syslog line's text as ``MESSAGE`` plus structured fields
(``PAM_DUO_OUTCOME``, ``PAM_DUO_USER``, ...), a fixed ``MESSAGE_ID`` per outcome and
``SYSLOG_IDENTIFIER=pam_duo_py``. Field values get the same escaping as the syslog line
(control characters as ``\\xNN``, length capped), so they never hold a newline; a value that
did would be sent in the protocol's length-prefixed binary form, never as a second field.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from .logline import IDENT, LOG_AUTHPRIV
from .paths import JOURNAL_SOCKET
from .text import address_for_log, for_log


# One stable 128-bit id per outcome: `journalctl MESSAGE_ID=...` finds every such decision.
MESSAGE_IDS = {
    "success": "ef5043b2a977fe2d5e2fc9c0264a7bc2",
    "failure": "bcdb794e002140e2651c8e1f069adefd",
    "failsafe": "fb574f36aac9d9fb6837fe09c2df2dd8",
    "exempt": "cd842ca7054014fb9b0770b71d84f240",
    "preauth_allow": "283bc25bfeffd1b8009b99bba09e6a0d",
    "error": "3fed11edacc5c43cbbe84892adff9414",
}
# journal field -> (event key, length cap)
FIELDS = (
    ("PAM_DUO_OUTCOME", "outcome", 32),
    ("PAM_DUO_USER", "user", 100),
    ("PAM_DUO_DUO_USER", "duo_user", 100),
    ("PAM_DUO_SERVICE", "service", 64),
    ("PAM_DUO_RHOST", "rhost", 80),
    ("PAM_DUO_TTY", "tty", 128),
    ("PAM_DUO_FACTOR", "factor", 32),
    ("PAM_DUO_TXID", "txid", 128),
    ("PAM_DUO_REASON", "reason", 1000),
)


def encode_field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return name.encode("ascii") + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return name.encode("ascii") + b"=" + data + b"\n"


def entry(record: dict[str, Any], priority: int, text: str) -> bytes:
    """The datagram for one decision event and its syslog line."""
    parts = [
        encode_field("MESSAGE", text),
        encode_field("PRIORITY", str(priority)),
        encode_field("SYSLOG_FACILITY", str(LOG_AUTHPRIV >> 3)),
        encode_field("SYSLOG_IDENTIFIER", IDENT),
        encode_field("SYSLOG_PID", str(os.getpid())),
    ]
    message_id = MESSAGE_IDS.get(record.get("outcome") or "")
    if message_id:
        parts.append(encode_field("MESSAGE_ID", message_id))
    for name, key, limit in FIELDS:
        value = record.get(key)
        if value is not None and value != "":
            shown = address_for_log(value, limit) if key == "rhost" else for_log(value, limit)
            parts.append(encode_field(name, shown))
    return b"".join(parts)


def send(data: bytes, path: str = JOURNAL_SOCKET) -> bool:
    """One datagram to journald; False when it could not be sent (the caller falls back to syslog)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.sendto(data, path)
    except OSError:
        return False
    return True
