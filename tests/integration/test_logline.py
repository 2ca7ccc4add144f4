"""The syslog line itself: what the module writes to /dev/log (here, a socket of the test's own)."""
from __future__ import annotations

import locale
import os
import re

import pytest

from pam_duo_py import logline
from pam_duo_py.logline import send_syslog as real_send_syslog

LINE = re.compile(rb"^<(\d+)>pam_duo_py\[(\d+)\]: (.*)$", re.S)


def received(dgram, priority, text):
    path, sock = dgram
    real_send_syslog(priority, text, path=path)
    return sock.recv(65536)


def test_the_line_starts_with_the_priority_and_the_ident(dgram):
    data = received(dgram, logline.LOG_WARNING, "Failed Duo login for 'alice'")
    match = LINE.match(data)
    assert match, data
    assert int(match[1]) == logline.LOG_AUTHPRIV | logline.LOG_WARNING
    assert int(match[2]) == os.getpid() and match[3] == b"Failed Duo login for 'alice'"


@pytest.mark.parametrize("name", ["fr_FR.UTF-8", "de_DE.UTF-8", "ja_JP.UTF-8"])
def test_no_locale_dependent_text_under_the_callers_locale(dgram, name):
    # sudo, su and login call setlocale(): a strftime month would read "déc." under French.
    old = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, name)
    except locale.Error:
        pytest.skip(f"locale {name} is not generated here (the sudo system test generates fr_FR.UTF-8)")
    try:
        data = received(dgram, logline.LOG_INFO, "Successful Duo login for 'alice'")
    finally:
        locale.setlocale(locale.LC_ALL, old)
    assert LINE.match(data), data
    head = data[: data.index(b": ") + 2]
    assert head.isascii(), head


def test_no_listener_is_not_an_error(tmp_path):
    real_send_syslog(logline.LOG_ERR, "nobody listens", path=str(tmp_path / "missing"))
