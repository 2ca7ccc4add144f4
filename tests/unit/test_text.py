"""for_display and for_log against their definition as regular expressions (the module uses tables)."""
from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from pam_duo_py.text import for_display, for_log

# What each function removes or escapes: C0/C1 controls, DEL, U+2028/2029, bidi overrides and isolates.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
LOG_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\\'\"]")


def display_reference(text: str, limit: int) -> str:
    return CONTROL.sub("", text.replace("\r\n", "\n").replace("\t", " "))[:limit]


def log_reference(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[:limit] + "..."

    def escape(match: re.Match[str]) -> str:
        char = match.group(0)
        if char in "\\'\"":
            return "\\" + char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return LOG_UNSAFE.sub(escape, text)


EVERY = "".join(map(chr, range(0x2100))) + "\r\n\t"


def test_every_code_point_up_to_u2100():
    assert for_display(EVERY, 10**6) == display_reference(EVERY, 10**6)
    assert for_log(EVERY, 10**6) == log_reference(EVERY, 10**6)


@given(text=st.text(alphabet=st.characters(max_codepoint=0x2100) | st.sampled_from("\r\n\t\\'\"\u2028\u202e\u2069"),
                    max_size=300),
       limit=st.integers(0, 400))
def test_same_as_the_regular_expressions(text, limit):
    assert for_display(text, limit) == display_reference(text, limit)
    assert for_log(text, limit) == log_reference(text, limit)


def test_non_text():
    assert for_display(None) == "" and for_log(None) == ""
    assert for_display(5) == "5" and for_log("it's") == "it\\'s"
