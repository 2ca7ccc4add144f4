"""Small persistent state in ``/var/lib/pam_duo_py/``: remembered logins and preferred devices.

Each store is one JSON file, read under the file rule and replaced atomically,
bounded in size. A store that cannot be read or parsed is treated as empty and
reported through ``on_problem``: a corrupted file never lets anyone in.

Remembered authentication (opt-in, ``[remember] seconds > 0``): after a
successful second factor, the same local user from the same remote address
for the same PAM service (and for su, the same calling uid) skips the factor
until the entry expires. Preauth still runs every time. The address is one
the root caller supplied, parsed as an IP (IPv4 exact, IPv6 by /64); logins
with no address are remembered only for the services listed in
``services_without_address``. Any deny or fraud report for a user clears all
of that user's entries.

Every change is a read-modify-write under ``flock`` on ``FILE.lock``. Under su
and sudo the user owns the login process and can stop it while it holds the
lock, so the wait is bounded (``LOCK_WAIT``); after it the change is skipped
and reported, except clearing a user's entries, which is done without the lock.
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
LOCK_WAIT = 1.0  # seconds: the longest a login waits for another one's state lock


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

    def update(self, change: Callable[[dict[str, Any]], dict[str, Any] | None], what: str, *,
               order: Callable[[Any], float] | None = None, without_lock: bool = False) -> None:
        """Load, ``change`` (None: nothing to save) and save, under the lock.

        When the lock cannot be had within ``LOCK_WAIT`` the change is skipped and reported;
        ``without_lock``: it is made anyway (a lost update is better than not making it).
        """
        with _Lock(self.path + ".lock") as lock:
            if lock.problem:
                if not without_lock:
                    self.on_problem(f"{what} skipped: {lock.problem}")
                    return
                self.on_problem(f"{what} done without the lock: {lock.problem}")
            entries = change(self.load())
            if entries is not None:
                self.save(entries, order)

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
    """``flock`` on ``path``, waiting at most ``wait`` seconds; ``problem`` says why it was not taken.

    It polls with ``LOCK_NB``: pam_python allows no signal handlers or threads for a timed wait.
    """

    def __init__(self, path: str, wait: float | None = None) -> None:
        self.path = path
        self.wait = LOCK_WAIT if wait is None else wait
        self.fd: int | None = None
        self.problem = ""

    def __enter__(self) -> "_Lock":
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            files.check_directories(self.path)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except (OSError, FileRuleError) as exc:
            self.problem = f"cannot open the lock {self.path}: {exc}"
            return self
        deadline = time.monotonic() + self.wait
        pause = 0.002
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.problem = f"{self.path} is held by another process for more than {self.wait:g} s"
                    break
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
            except OSError as exc:
                self.problem = f"cannot lock {self.path}: {exc}"
                break
        os.close(self.fd)
        self.fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


class Remember:
    """Remembered second factors, keyed by (user, service, address)."""

    def __init__(self, state_dir: str, seconds: int, services_without_address: tuple[str, ...], *,
                 on_problem: Callable[[str], None], clock: Callable[[], float] = time.time,
                 per_caller: bool = False, caller_uid: int | None = None) -> None:
        self.store = JsonStore(os.path.join(state_dir, REMEMBER_FILE), on_problem=on_problem)
        self.seconds = seconds
        self.services_without_address = services_without_address
        self.clock = clock
        self.per_caller = per_caller  # the host program's profile says the caller does Duo (su)
        self.caller_uid = caller_uid  # the uid that started this login (su's caller)

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
        if not where:
            return None
        if self.per_caller:
            # su: who typed the command matters, not only whose account it opens: alice's
            # own "su -" must not remember a login that bob's "su alice" could then use.
            if self.caller_uid is None:
                return None
            return json.dumps([user, service, where, self.caller_uid])
        return json.dumps([user, service, where])

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

        def add(entries: dict[str, Any]) -> dict[str, Any]:
            now = self.clock()
            entries = {k: v for k, v in entries.items() if isinstance(v, (int, float)) and v > now}
            entries[key] = now + self.seconds
            return entries

        self.store.update(add, "remembering this login", order=float)

    def forget_user(self, user: str) -> None:
        def drop(entries: dict[str, Any]) -> dict[str, Any] | None:
            kept = {k: v for k, v in entries.items() if not _key_user_is(k, user)}
            return kept if len(kept) != len(entries) else None

        # A deny or fraud report must clear the entries even when the lock is held.
        self.store.update(drop, f"clearing the remembered logins of {user!r}", order=float, without_lock=True)


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
        def put(entries: dict[str, Any]) -> dict[str, Any]:
            entries[user] = [device, self.clock()]
            return entries

        self.store.update(put, "saving the preferred device", order=_recency)

    def drop(self, user: str) -> None:
        def remove(entries: dict[str, Any]) -> dict[str, Any] | None:
            return entries if entries.pop(user, None) is not None else None

        self.store.update(remove, "forgetting the preferred device", order=_recency)


def _recency(entry: Any) -> float:
    return entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], (int, float)) else 0.0
