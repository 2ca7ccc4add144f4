"""Making text from users and from Duo safe for terminals and for log lines.

Translation tables rather than regular expressions: compiling the two character classes
cost every in-process login about a millisecond.
"""
from __future__ import annotations

# C0 and C1 controls, DEL, line/paragraph separators and the bidirectional overrides/isolates.
_BIDI = (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_UNSAFE = (*range(0x00, 0x20), *range(0x7F, 0xA0), *_BIDI)
_DISPLAY = dict.fromkeys(c for c in _UNSAFE if c not in (0x09, 0x0A))  # deleted (tabs were made spaces)
_LOG = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}
_LOG.update({ord(c): "\\" + c for c in "\\'\""})


def for_display(text: object, limit: int = 1000) -> str:
    """Strip control and escape characters (keeping newlines) from text shown to a user."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = text.replace("\r\n", "\n").replace("\t", " ").translate(_DISPLAY)
    return text[:limit]


def for_log(text: object, limit: int = 256) -> str:
    """Escape a field for a log line: control characters as \\xNN, quotes and backslashes escaped."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.translate(_LOG)


CLAIMED = " (claimed)"  # after an address that an unprivileged broker client reported


def address_for_log(rhost: object, limit: int = 64) -> str:
    """The remote address for a log line, capped; the claimed marker is kept outside the cap."""
    if isinstance(rhost, str) and rhost.endswith(CLAIMED):
        return for_log(rhost[: -len(CLAIMED)], limit) + CLAIMED
    return for_log(rhost, limit)
