"""``/etc/pam_duo_py/admin.toml``: the Admin API keys, kept apart from the login path's config.

Only the ``admin`` commands and ``check`` read this file; the PAM module, the broker and
the wrapper never do. It has one ``[admin]`` table with the keys of ``[duo]`` (``ikey``,
``skey`` or ``skey_file``, ``host``, ``ca_file``, ``proxy``, ``timeout``), validated by
the same code, under the same file rule (root, 0600: it always holds a secret).
"""
from __future__ import annotations

import re
from typing import Any

from pam_duo_py import config, files
from pam_duo_py.config import DuoSettings
from pam_duo_py.errors import ConfigError, FileRuleError

from pam_duo_py.paths import DEFAULT_ADMIN_CONFIG
SECTION = "admin"

# The [duo] validators name their keys "duo.<key>"; here the same keys live in [admin].
_DUO_KEY = re.compile(r"\bduo\.(?=(?:ikey|skey_file|skey|host|ca_file|proxy|timeout)\b)")


def _renamed(text: str) -> str:
    return _DUO_KEY.sub(SECTION + ".", text)


class _AdminProblems(config._Problems):
    """Problems of the shared [duo] validators, reported under [admin]."""

    def add(self, key: str, message: str) -> None:
        super().add(SECTION + key[len("duo"):] if key.startswith("duo.") else key, _renamed(message))

    def add_file(self, key: str, exc: FileRuleError) -> None:
        super().add_file(SECTION + key[len("duo"):] if key.startswith("duo.") else key, exc)


def parse_admin_config(text: str, path: str, read: Any = None) -> DuoSettings:
    """Validate admin.toml text; every problem is reported at once, naming the file and key."""
    read = read or (lambda p, secret: files.read_checked(p, secret=secret))
    data = config.load_toml(text, path)
    problems = _AdminProblems(path)
    for name, value in data.items():
        if name != SECTION:
            problems.add(name, "unknown section (admin.toml has only [admin])" if isinstance(value, dict)
                         else "unknown key (admin.toml has only an [admin] table)")
    table = data.get(SECTION)
    if not isinstance(table, dict):
        problems.add(SECTION, "required section is missing" if table is None else "must be a table")
        raise ConfigError(problems.items)
    settings = config._parse_duo(problems, table, read)
    if problems.items or settings is None:
        raise ConfigError(problems.items or [f"{path}: {SECTION}: incomplete"])
    return settings


def load_admin_config(path: str = DEFAULT_ADMIN_CONFIG) -> DuoSettings:
    """Read admin.toml under the file rule (a file with Admin API keys must be root's and 0600)."""
    return parse_admin_config(config.read_config_text(path, secret=True)[0], path)
