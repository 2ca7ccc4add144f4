"""Making text from users and from Duo safe for terminals and for log lines."""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_LOG_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\\'\"]")


def for_display(text: object, limit: int = 1000) -> str:
    """Strip control and escape characters (keeping newlines) from text shown to a user."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\t", " "))
    return text[:limit]


def for_log(text: object, limit: int = 256) -> str:
    """Escape a field for a log line: control characters as \\xNN, quotes and backslashes escaped."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if len(text) > limit:
        text = text[:limit] + "..."

    def escape(match: re.Match[str]) -> str:
        char = match.group(0)
        if char in "\\'\"":
            return "\\" + char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _LOG_UNSAFE.sub(escape, text)
