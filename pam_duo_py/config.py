"""Configuration: ``/etc/pam_duo_py/pam_duo.toml`` parsed once into frozen, validated objects.

Every problem is collected and reported at once. TOML syntax errors name the
file and line; every other problem names the file and the dotted key.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable

from .record import Record
from . import files
from .errors import ConfigError, FileRuleError
from .paths import DEFAULT_CONFIG, DEFAULT_SOCKET

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on older Pythons
    import tomli as tomllib

DEFAULT_PATH = DEFAULT_CONFIG
DEFAULT_STATE_DIR = "/var/lib/pam_duo_py"

# Checked on every login, so by str methods rather than regular expressions compiled at import
# (tests/unit/test_config.py holds them to the patterns they replace).
_CAPITALS_DIGITS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LETTERS_DIGITS = _CAPITALS_DIGITS | frozenset("abcdefghijklmnopqrstuvwxyz")
_LABEL_CHARS = _LETTERS_DIGITS | {"-"}
# Checked only where the configuration uses them: compiled on first use (re caches them).
_PROXY = r"^http://(?:(?P<user>[^:@/\s]+):(?P<password>[^@/\s]*)@)?(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})/?$"
_GROUP_PATTERN = r"^!?[^\s!]+$"


def _is_duo_id(text: str, prefix: str) -> bool:
    """``prefix`` ('DI', 'DU') followed by 18 capital ASCII letters or digits."""
    return len(text) == 20 and text.startswith(prefix) and _CAPITALS_DIGITS.issuperset(text[2:])


def _is_skey(text: str) -> bool:
    """40 ASCII letters or digits."""
    return len(text) == 40 and _LETTERS_DIGITS.issuperset(text)


def _is_hostname(name: str) -> bool:
    """At most 253 characters of dot-separated labels: 1-63 ASCII letters, digits, '-', not at either end."""
    return 0 < len(name) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-" and _LABEL_CHARS.issuperset(label)
        for label in name.split("."))


class Proxy(Record, hidden=("password",)):
    host: str
    port: int
    user: str | None = None
    password: str | None = None


class DuoSettings(Record, hidden=("skey",)):
    ikey: str
    skey: str
    host: str
    port: int | None
    ca_file: str | None
    proxy: Proxy | None
    timeout: float


class AuthSettings(Record):
    failmode: str = "secure"
    autopush: bool = False
    prompts: int = 3
    push_timeout: float = 75.0
    pushinfo: bool = True
    pushinfo_command: bool = False
    verified_push: bool = False
    accept_env_factor: bool = False
    preferred_device: bool = False


class DuoIdentity(Record):
    """Who the user is at Duo: a username, or a Duo user id (``DU...``)."""

    username: str | None = None
    user_id: str | None = None

    def params(self) -> dict[str, str]:
        return {"user_id": self.user_id} if self.user_id else {"username": self.username or ""}

    def __str__(self) -> str:
        return self.user_id or self.username or ""


class UsersSettings(Record):
    groups: tuple[str, ...] = ()
    map_file: str | None = None
    mapping: tuple[tuple[str, DuoIdentity], ...] = ()

    def duo_identity(self, local_user: str) -> DuoIdentity:
        for name, identity in self.mapping:
            if name == local_user:
                return identity
        return DuoIdentity(username=local_user)

    def requires_duo(self, group_names: list[str]) -> bool:
        """docs/behaviour.md §4: a positive pattern matches one of the groups and no negated pattern does."""
        if not self.groups:
            return True
        import fnmatch  # here: only configurations with users.groups need it

        positive = [p for p in self.groups if not p.startswith("!")]
        negative = [p[1:] for p in self.groups if p.startswith("!")]
        if any(fnmatch.fnmatchcase(g, p) for g in group_names for p in negative):
            return False
        return any(fnmatch.fnmatchcase(g, p) for g in group_names for p in positive)


class LogSettings(Record):
    audit_file: str | None = None


class BrokerSettings(Record):
    socket: str = DEFAULT_SOCKET


class RememberSettings(Record):
    seconds: int = 0
    services_without_address: tuple[str, ...] = ()
    state_dir: str = DEFAULT_STATE_DIR


class Config(Record):
    path: str
    duo: DuoSettings
    auth: AuthSettings
    users: UsersSettings
    log: LogSettings
    broker: BrokerSettings
    remember: RememberSettings = RememberSettings()


class _Problems:
    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.path}: {key}: {message}")

    def add_file(self, key: str, exc: FileRuleError) -> None:
        self.items.append(f"{self.path}: {key}: {exc.path}: {exc.reason}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table"}.get(
        type(value), type(value).__name__
    )


_SCHEMA: dict[str, dict[str, type]] = {
    "duo": {"ikey": str, "skey": str, "skey_file": str, "host": str, "ca_file": str, "proxy": str, "timeout": float},
    "auth": {
        "failmode": str, "autopush": bool, "prompts": int, "push_timeout": float, "pushinfo": bool,
        "pushinfo_command": bool, "verified_push": bool, "accept_env_factor": bool, "preferred_device": bool,
    },
    "remember": {"seconds": int, "services_without_address": list, "state_dir": str},
    "users": {"groups": list, "map_file": str},
    "log": {"audit_file": str},
    "broker": {"socket": str},
}


def _typed(problems: _Problems, table: dict[str, Any], section: str) -> dict[str, Any]:
    """Drop keys of the wrong type (reporting them) and unknown keys (reporting them)."""
    result: dict[str, Any] = {}
    schema = _SCHEMA[section]
    for key, value in table.items():
        dotted = f"{section}.{key}"
        expected = schema.get(key)
        if expected is None:
            problems.add(dotted, "unknown key")
            continue
        if expected is float:
            ok = _is_number(value)
            if ok and isinstance(value, int) and abs(value) > 1e300:  # TOML integers have no bound here
                problems.add(dotted, "is out of range")
                continue
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, expected)
        if not ok:
            wanted = {float: "a number", int: "an integer", bool: "true or false", str: "a string", list: "an array of strings"}[expected]
            problems.add(dotted, f"must be {wanted}, not {_type_name(value)}")
            continue
        result[key] = value
    return result


def _absolute_path(problems: _Problems, key: str, value: str) -> str | None:
    if value == "":
        return None
    if not os.path.isabs(value) or "\0" in value:
        problems.add(key, f"must be an absolute path, not {value!r}")
        return None
    return value


def parse_map_file(text: str, path: str) -> tuple[tuple[tuple[str, DuoIdentity], ...], list[str]]:
    """Parse ``localname duoname`` / ``localname user_id=DU...`` lines. Returns (mapping, problems)."""
    mapping: list[tuple[str, DuoIdentity]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()  # "#" starts a comment anywhere, as in /etc/hosts
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            problems.append(f"{path}: line {number}: expected 'localname duoname' or 'localname user_id=DU...'")
            continue
        local, target = parts
        if local in seen:
            problems.append(f"{path}: line {number}: {local!r} is mapped twice")
            continue
        seen.add(local)
        if target.startswith("user_id="):
            user_id = target[len("user_id="):]
            if not _is_duo_id(user_id, "DU"):
                problems.append(f"{path}: line {number}: user_id must be 'DU' followed by 18 letters or digits")
                continue
            mapping.append((local, DuoIdentity(user_id=user_id)))
        else:
            if len(target) > 100 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
                problems.append(f"{path}: line {number}: invalid Duo username")
                continue
            mapping.append((local, DuoIdentity(username=target)))
    return tuple(mapping), problems


def _parse_skey(problems: _Problems, table: dict[str, Any], read: Callable[[str, bool], bytes]) -> str | None:
    """``duo.skey``, or the contents of ``duo.skey_file`` (read under the file rule, as a secret)."""
    skey = table.get("skey")
    skey_file = table.get("skey_file")
    if skey is not None and skey_file is not None:
        problems.add("duo.skey_file", "give either duo.skey or duo.skey_file, not both")
        skey = None
    elif skey is None and skey_file is None:
        problems.add("duo.skey", "required key is missing (or set duo.skey_file)")
    elif skey_file is not None:
        path = _absolute_path(problems, "duo.skey_file", skey_file)
        if path is not None:
            try:
                skey = read(path, True).decode("utf-8", "replace").strip()
            except FileRuleError as exc:
                problems.add_file("duo.skey_file", exc)
        elif skey_file == "":
            problems.add("duo.skey_file", "must not be empty")
    if skey is not None and not _is_skey(skey):
        problems.add("duo.skey_file" if skey_file else "duo.skey", "must be 40 letters or digits")
        skey = None
    return skey


def _parse_host(problems: _Problems, host_value: str | None) -> tuple[str | None, int | None]:
    """``duo.host`` as (lower-case host name, port or None)."""
    if host_value is None:
        problems.add("duo.host", "required key is missing")
        return None, None
    name, sep, port_text = host_value.rpartition(":")
    if not sep:
        name, port_text = host_value, ""
    if not _is_hostname(name):
        problems.add("duo.host", f"not a valid host name: {host_value!r}")
    elif port_text and (not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536):
        problems.add("duo.host", f"not a valid port: {port_text!r}")
    else:
        return name.lower(), int(port_text) if port_text else None
    return None, None


def _parse_duo(problems: _Problems, raw: dict[str, Any], read: Callable[[str, bool], bytes]) -> DuoSettings | None:
    table = _typed(problems, raw, "duo")
    ikey = table.get("ikey")
    if ikey is None:
        problems.add("duo.ikey", "required key is missing")
    elif not _is_duo_id(ikey, "DI"):
        problems.add("duo.ikey", "must be 'DI' followed by 18 capital letters or digits")
    elif ikey == "DIXXXXXXXXXXXXXXXXXX":
        problems.add("duo.ikey", "is still the example value; set the integration key from the Duo Admin Panel")

    skey = _parse_skey(problems, table, read)
    host, port = _parse_host(problems, table.get("host"))

    ca_file = None
    if "ca_file" in table:
        ca_file = _absolute_path(problems, "duo.ca_file", table["ca_file"])
        if ca_file is not None:
            try:
                read(ca_file, False)
            except FileRuleError as exc:
                problems.add_file("duo.ca_file", exc)

    proxy = None
    if table.get("proxy"):
        match = re.fullmatch(_PROXY, table["proxy"])
        if not match or not 0 < int(match["port"]) < 65536:
            problems.add("duo.proxy", "must look like http://[user:password@]host:port")
        else:
            proxy = Proxy(host=match["host"].strip("[]"), port=int(match["port"]), user=match["user"], password=match["password"])

    timeout = float(table.get("timeout", 10))
    if not timeout >= 0.1:  # also refuses nan
        problems.add("duo.timeout", "must be at least 0.1 seconds")
    elif timeout > 600:
        problems.add("duo.timeout", "must be at most 600 seconds")

    if ikey is None or skey is None or host is None:
        return None
    return DuoSettings(ikey=ikey, skey=skey, host=host, port=port, ca_file=ca_file, proxy=proxy, timeout=timeout)


def _parse_auth(problems: _Problems, raw: dict[str, Any]) -> AuthSettings:
    table = _typed(problems, raw, "auth")
    defaults = AuthSettings()
    failmode = table.get("failmode", defaults.failmode)
    if failmode not in ("secure", "safe"):
        problems.add("auth.failmode", f"must be \"secure\" or \"safe\", not {failmode!r}")
        failmode = "secure"
    prompts = table.get("prompts", defaults.prompts)
    if not 1 <= prompts <= 3:
        problems.add("auth.prompts", "must be 1, 2 or 3")
    push_timeout = float(table.get("push_timeout", defaults.push_timeout))
    if not 0.1 <= push_timeout <= 600:
        problems.add("auth.push_timeout", "must be between 0.1 and 600 seconds")
    settings = AuthSettings(
        failmode=failmode,
        autopush=table.get("autopush", defaults.autopush),
        prompts=prompts,
        push_timeout=push_timeout,
        pushinfo=table.get("pushinfo", defaults.pushinfo),
        pushinfo_command=table.get("pushinfo_command", defaults.pushinfo_command),
        verified_push=table.get("verified_push", defaults.verified_push),
        accept_env_factor=table.get("accept_env_factor", defaults.accept_env_factor),
        preferred_device=table.get("preferred_device", defaults.preferred_device),
    )
    if settings.autopush and settings.verified_push:
        problems.add("auth.verified_push", "cannot be used together with auth.autopush")
    return settings


def _parse_users(problems: _Problems, raw: dict[str, Any], read: Callable[[str, bool], bytes]) -> UsersSettings:
    table = _typed(problems, raw, "users")
    groups = table.get("groups", [])
    clean: list[str] = []
    for index, pattern in enumerate(groups):
        if not isinstance(pattern, str) or not re.fullmatch(_GROUP_PATTERN, pattern):
            problems.add(f"users.groups[{index}]", "must be a group name or pattern, optionally prefixed with '!'")
        else:
            clean.append(pattern)
    if clean and all(p.startswith("!") for p in clean):
        problems.add("users.groups", "has only negated patterns, which would match nobody; add a positive pattern such as \"*\"")
    map_file = _absolute_path(problems, "users.map_file", table.get("map_file", ""))
    mapping: tuple[tuple[str, DuoIdentity], ...] = ()
    if map_file is not None:
        try:
            text = read(map_file, False).decode("utf-8")
        except FileRuleError as exc:
            problems.add_file("users.map_file", exc)
        except UnicodeDecodeError:
            problems.add("users.map_file", f"{map_file}: not valid UTF-8")
        else:
            mapping, map_problems = parse_map_file(text, map_file)
            problems.items.extend(f"{problems.path}: users.map_file: {p}" for p in map_problems)
    return UsersSettings(groups=tuple(clean), map_file=map_file, mapping=mapping)


def load_toml(text: str, path: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error is a :class:`ConfigError` naming the file and line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = f"line {match[1]}" if match else "syntax"
        detail = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        raise ConfigError([f"{path}: {where}: TOML syntax error: {detail}"]) from None


def parse_config(text: str, path: str, read: Callable[[str, bool], bytes] | None = None, *,
                 mode: int | None = None) -> Config:
    """Parse and validate config text. ``read(path, secret)`` reads referenced files (default: the file rule).

    ``mode``: the config file's permission bits; a config holding ``skey`` must be readable by its owner only.
    """
    read = read or (lambda p, secret: files.read_checked(p, secret=secret))
    problems = _Problems(path)
    data = load_toml(text, path)

    sections: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        if name not in _SCHEMA:
            problems.add(name, "unknown section" if isinstance(value, dict) else "unknown key")
        elif not isinstance(value, dict):
            problems.add(name, "must be a table")
        else:
            sections[name] = value
    if "duo" not in sections and "duo" not in data:
        problems.add("duo", "required section is missing")
    if mode is not None and mode & 0o077 and "skey" in sections.get("duo", {}):
        problems.add("duo.skey", f"the file is mode {mode & 0o7777:04o}: a config holding the secret key must be "
                                 "mode 0600 (or move the key to duo.skey_file and make the config 0640)")

    duo = _parse_duo(problems, sections.get("duo", {}), read)
    auth = _parse_auth(problems, sections.get("auth", {}))
    users = _parse_users(problems, sections.get("users", {}), read)
    log_table = _typed(problems, sections.get("log", {}), "log")
    log = LogSettings(audit_file=_absolute_path(problems, "log.audit_file", log_table.get("audit_file", "")))
    broker_table = _typed(problems, sections.get("broker", {}), "broker")
    socket_path = _absolute_path(problems, "broker.socket", broker_table.get("socket", DEFAULT_SOCKET)) or DEFAULT_SOCKET

    remember = _parse_remember(problems, sections.get("remember", {}))

    if problems.items or duo is None:
        raise ConfigError(problems.items or [f"{path}: duo: incomplete"])
    return Config(path=path, duo=duo, auth=auth, users=users, log=log, broker=BrokerSettings(socket=socket_path),
                  remember=remember)


MAX_REMEMBER_SECONDS = 30 * 24 * 3600


def _parse_remember(problems: _Problems, raw: dict[str, Any]) -> RememberSettings:
    table = _typed(problems, raw, "remember")
    seconds = table.get("seconds", 0)
    if not 0 <= seconds <= MAX_REMEMBER_SECONDS:
        problems.add("remember.seconds", f"must be between 0 (off) and {MAX_REMEMBER_SECONDS} (30 days)")
        seconds = 0
    services = []
    for index, name in enumerate(table.get("services_without_address", [])):
        if not isinstance(name, str) or not name or len(name) > 64 or any(c.isspace() for c in name):
            problems.add(f"remember.services_without_address[{index}]", "must be a PAM service name")
        else:
            services.append(name)
    state_dir = _absolute_path(problems, "remember.state_dir", table.get("state_dir", DEFAULT_STATE_DIR)) or DEFAULT_STATE_DIR
    return RememberSettings(seconds=seconds, services_without_address=tuple(services), state_dir=state_dir)


def read_config_text(path: str, **rule: bool) -> tuple[str, os.stat_result]:
    """A config file's text and status, read under the file rule (``rule``: see :func:`files.read_checked_stat`)."""
    try:
        raw, st = files.read_checked_stat(path, **rule)
    except FileRuleError as exc:
        raise ConfigError([f"{exc.path}: {exc.reason}"]) from None
    try:
        return raw.decode("utf-8"), st
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not valid UTF-8"]) from None


def load_config(path: str = DEFAULT_PATH, read: Callable[[str, bool], bytes] | None = None) -> Config:
    """Read the config file under the file rule: never readable by others, and 0600 when it holds skey.

    ``read`` reads the files the config names, as for :func:`parse_config`.
    """
    text, st = read_config_text(path, private=True)
    config = parse_config(text, path, read, mode=st.st_mode)
    if config.log.audit_file:
        # The audit file is written as root: the file rule applies to it like to any other file,
        # and a violation is a configuration error (docs/behaviour.md §4), not a line in the log.
        try:
            files.check_append_target(config.log.audit_file)
        except FileRuleError as exc:
            raise ConfigError([f"{path}: log.audit_file: {exc.path}: {exc.reason}"]) from None
    return config
