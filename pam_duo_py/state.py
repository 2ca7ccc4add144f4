"""Small persistent state in ``/var/lib/pam_duo_py/``: remembered logins and preferred devices.

Each store is one JSON file, read under the file rule and replaced atomically,
bounded in size. A store that cannot be read or parsed is treated as empty and
reported through ``on_problem``: a corrupted file never lets anyone in.

Remembered authentication (opt-in, ``[remember] seconds > 0``): after a
successful second factor, the same local user from the same remote address
for the same PAM service skips the factor until the entry expires. Preauth
still runs every time. The address is one the root caller supplied, parsed
as an IP (IPv4 exact, IPv6 by /64); logins with no address are remembered
only for the services listed in ``services_without_address``. Any deny or
fraud report for a user clears all of that user's entries.
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
from typing import Any, Callable

from . import files
from .errors import FileRuleError

REMEMBER_FILE = "remember.json"
DEVICES_FILE = "devices.json"
MAX_ENTRIES = 10000


def address_key(ipaddr: str | None) -> str | None:
    """IPv4 exactly; IPv6 by its /64 network (one host's privacy addresses share it)."""
    if not ipaddr:
        return None
    try:
        address = ipaddress.ip_address(ipaddr)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    if isinstance(address, ipaddress.IPv6Address):
        return str(address.ipv4_mapped)
    return str(address)


class JsonStore:
    """A bounded JSON object on disk: ``{"v": 1, "entries": {key: value}}``."""

    def __init__(self, path: str, *, on_problem: Callable[[str], None], max_entries: int = MAX_ENTRIES) -> None:
        self.path = path
        self.on_problem = on_problem
        self.max_entries = max_entries

    def locked(self) -> "_Lock":
        """Serialise read-modify-write cycles between concurrent logins."""
        return _Lock(self.path + ".lock")

    def load(self) -> dict[str, Any]:
        if not os.path.lexists(self.path):
            return {}
        try:
            data = json.loads(files.read_checked(self.path, secret=True).decode("utf-8"))
        except FileRuleError as exc:
            self.on_problem(f"state file ignored: {exc}")
            return {}
        except (UnicodeDecodeError, ValueError):
            self.on_problem(f"state file ignored: {self.path}: corrupted (not valid JSON)")
            return {}
        entries = data.get("entries") if isinstance(data, dict) and data.get("v") == 1 else None
        if not isinstance(entries, dict):
            self.on_problem(f"state file ignored: {self.path}: unexpected content")
            return {}
        return entries

    def save(self, entries: dict[str, Any], order: Callable[[Any], float] | None = None) -> None:
        if len(entries) > self.max_entries:
            keep = sorted(entries, key=(lambda k: order(entries[k])) if order else None, reverse=True)[: self.max_entries]
            entries = {k: entries[k] for k in keep}
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            files.write_atomic(self.path, json.dumps({"v": 1, "entries": entries}, separators=(",", ":")).encode())
        except (OSError, FileRuleError) as exc:
            self.on_problem(f"cannot write state file {self.path}: {exc}")


class _Lock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_Lock":
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            files.check_directories(self.path)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (OSError, FileRuleError):
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None  # carry on unlocked: the worst case is a lost update
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


class Remember:
    """Remembered second factors, keyed by (user, service, address)."""

    def __init__(self, state_dir: str, seconds: int, services_without_address: tuple[str, ...], *,
                 on_problem: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        self.store = JsonStore(os.path.join(state_dir, REMEMBER_FILE), on_problem=on_problem)
        self.seconds = seconds
        self.services_without_address = services_without_address
        self.clock = clock

    def key(self, user: str, service: str, rhost: str | None, ipaddr: str | None) -> str | None:
        """The entry for this login, or None when it may not be remembered.

        ``ipaddr`` is the root-supplied remote address parsed as an IP (None for a
        host name, or for an address an unprivileged client merely claims).
        """
        if self.seconds <= 0:
            return None
        if ipaddr:
            where = address_key(ipaddr)
        elif not rhost and service in self.services_without_address:
            where = "-"
        else:
            where = None
        return json.dumps([user, service, where]) if where else None

    def remaining(self, key: str | None) -> float | None:
        """Seconds left on a remembered login, or None."""
        if key is None:
            return None
        expiry = self.store.load().get(key)
        if not isinstance(expiry, (int, float)) or isinstance(expiry, bool):
            return None
        left = expiry - self.clock()
        return left if 0 < left <= self.seconds else None

    def record(self, key: str | None) -> None:
        if key is None:
            return
        with self.store.locked():
            now = self.clock()
            entries = {k: v for k, v in self.store.load().items() if isinstance(v, (int, float)) and v > now}
            entries[key] = now + self.seconds
            self.store.save(entries, order=float)

    def forget_user(self, user: str) -> None:
        with self.store.locked():
            entries = self.store.load()
            kept = {k: v for k, v in entries.items() if not _key_user_is(k, user)}
            if len(kept) != len(entries):
                self.store.save(kept, order=float)


def _key_user_is(key: str, user: str) -> bool:
    try:
        return json.loads(key)[0] == user
    except (ValueError, IndexError, TypeError):
        return True  # an unreadable key is dropped


class PreferredDevices:
    """The device each user last approved with, offered first next time."""

    def __init__(self, state_dir: str, *, on_problem: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        self.store = JsonStore(os.path.join(state_dir, DEVICES_FILE), on_problem=on_problem)
        self.clock = clock

    def get(self, user: str) -> str | None:
        entry = self.store.load().get(user)
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
            return entry[0]
        return None

    def set(self, user: str, device: str) -> None:
        with self.store.locked():
            entries = self.store.load()
            entries[user] = [device, self.clock()]
            self.store.save(entries, order=_recency)

    def drop(self, user: str) -> None:
        with self.store.locked():
            entries = self.store.load()
            if entries.pop(user, None) is not None:
                self.store.save(entries, order=_recency)


def _recency(entry: Any) -> float:
    return entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], (int, float)) else 0.0
