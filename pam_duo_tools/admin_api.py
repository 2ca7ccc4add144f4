"""Duo Admin API: the calls the ``admin`` commands make, and what a user's record means for a login.

The transport is the login path's client (:class:`pam_duo_py.duo.DuoClient`): the same CA
pinning, proxy, per-call deadline, 429 handling (``Retry-After`` honoured within the deadline)
and error mapping, with Duo's paging ``metadata`` kept. Nothing here runs on the login path.

Bypass codes are strings and stay strings. duo-client's ``Admin.add_user_bypass_codes(codes=[...])``
turns each listed code into ``str(int(code))``, so ``"012345678"`` becomes ``"12345678"``; this
module never sends ``codes`` (Duo generates them from ``count``) and refuses a reply whose codes
are not strings of digits instead of printing a code that would not work.
"""
from __future__ import annotations

import urllib.parse
from typing import Any, Iterator, Protocol

from pam_duo_py.config import DuoIdentity, DuoSettings
from pam_duo_py.errors import DuoMalformedReply, DuoRefused

PAGE_SIZE = 300  # the Admin API's largest page
MAX_PAGES = 10_000

# Readiness states, in the order a report lists them; the first four lock a user out.
LOCKED_OUT_STATES = ("not_enrolled", "unknown", "disabled", "locked_out")
STATES = ("allow", "bypass", "push", "phone_sms", "passcode_only") + LOCKED_OUT_STATES

STATE_TEXT = {
    "allow": "allowed without a second factor",
    "bypass": "in bypass: allowed without a second factor",
    "push": "Duo Push",
    "phone_sms": "phone call or SMS passcodes only (no push)",
    "passcode_only": "passcodes only (token or Duo Mobile passcodes)",
    "not_enrolled": "LOCKED OUT: not enrolled",
    "unknown": "LOCKED OUT: unknown to Duo",
    "disabled": "LOCKED OUT: disabled in Duo",
    "locked_out": "LOCKED OUT: locked out by Duo (too many failures)",
}


class Transport(Protocol):
    """One signed Admin API call: ``(response, metadata)`` or a :class:`DuoError`."""

    def call(self, method: str, path: str, params: dict[str, Any]) -> Any: ...

    def close(self) -> None: ...


def admin_transport(settings: DuoSettings) -> Transport:
    """The real transport: :class:`DuoClient` with Duo's paging metadata kept."""
    from pam_duo_py.duo import DuoClient

    class _AdminTransport:
        def __init__(self, settings: DuoSettings) -> None:
            self.client = DuoClient(settings)

        def call(self, method: str, path: str, params: dict[str, Any]) -> Any:
            return self.client.call(method, path, params, metadata=True)

        def close(self) -> None:
            self.client.close()

    return _AdminTransport(settings)


class AdminApi:
    """The Admin API endpoints the ``admin`` commands use."""

    def __init__(self, transport: Transport, page_size: int = PAGE_SIZE) -> None:
        self.transport = transport
        self.page_size = page_size

    def close(self) -> None:
        self.transport.close()

    def _call(self, method: str, path: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        reply = self.transport.call(method, path, params)
        if not (isinstance(reply, tuple) and len(reply) == 2):
            raise DuoMalformedReply(f"{path}: unexpected reply")
        response, metadata = reply
        return response, metadata if isinstance(metadata, dict) else {}

    def paged(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every object of a paged list, one page (``limit``/``offset``) at a time."""
        offset: Any = 0
        for _ in range(MAX_PAGES):
            query = dict(params or {}, limit=str(self.page_size), offset=str(offset))
            response, metadata = self._call("GET", path, query)
            if not isinstance(response, list):
                raise DuoMalformedReply(f"{path}: expected a list")
            for item in response:
                if isinstance(item, dict):
                    yield item
            offset = metadata.get("next_offset")
            if offset is None or offset == "" or not response:
                return
        raise DuoMalformedReply(f"{path}: more than {MAX_PAGES} pages")

    def user(self, identity: DuoIdentity) -> dict[str, Any] | None:
        """The Duo user for a login identity (a username or alias, or a user id), or None."""
        if identity.user_id:
            path = "/admin/v1/users/" + urllib.parse.quote(identity.user_id, safe="")
            try:
                response, _ = self._call("GET", path, {})
            except DuoRefused as exc:
                if exc.status == 404:
                    return None
                raise
            if not isinstance(response, dict):
                raise DuoMalformedReply(f"{path}: expected an object")
            return response
        response, _ = self._call("GET", "/admin/v1/users", {"username": identity.username or ""})
        if not isinstance(response, list):
            raise DuoMalformedReply("/admin/v1/users: expected a list")
        users = [u for u in response if isinstance(u, dict)]
        return users[0] if users else None

    def users(self) -> Iterator[dict[str, Any]]:
        return self.paged("/admin/v1/users")

    def bypass_code_count(self, user_id: str) -> int:
        """How many bypass codes the user has now (Duo never shows the codes again)."""
        path = "/admin/v1/users/" + urllib.parse.quote(user_id, safe="") + "/bypass_codes"
        return sum(1 for _ in self.paged(path))

    def add_bypass_codes(self, user_id: str, *, count: int, uses: int, valid_secs: int) -> list[str]:
        """New bypass codes (the user's other codes are kept). Codes are returned exactly as Duo sent them."""
        path = "/admin/v1/users/" + urllib.parse.quote(user_id, safe="") + "/bypass_codes"
        params = {"count": str(int(count)), "reuse_count": str(int(uses)), "valid_secs": str(int(valid_secs)),
                  "preserve_existing": True}
        response, _ = self._call("POST", path, params)
        return checked_codes(response, count)

    def enroll(self, username: str, email: str, valid_secs: int | None = None) -> None:
        params = {"username": username, "email": email}
        if valid_secs is not None:
            params["valid_secs"] = str(int(valid_secs))
        self._call("POST", "/admin/v1/users/enroll", params)


def checked_codes(response: Any, count: int) -> list[str]:
    """Duo's list of new codes; a code that is not a string of digits (a number has lost its
    leading zeros) makes the whole reply malformed."""
    if not isinstance(response, list) or len(response) != count:
        raise DuoMalformedReply("bypass_codes: expected a list of the new codes")
    for code in response:
        if not (isinstance(code, str) and code.isascii() and code.isdigit() and 6 <= len(code) <= 20):
            raise DuoMalformedReply("bypass_codes: a code is not a string of digits")
    return list(response)


# ---------------------------------------------------------------------------------------------
# What a Duo user record means for the next login


def _caps(device: dict[str, Any]) -> set[str]:
    caps = device.get("capabilities")
    return {c for c in caps if isinstance(c, str)} if isinstance(caps, list) else set()


def classify(user: dict[str, Any] | None) -> tuple[str, str]:
    """(readiness state, a short reason) for a Duo user record, or None for a user Duo does not know."""
    if user is None:
        return "unknown", "Duo has no user or alias by this name"
    status = str(user.get("status") or "").strip().lower()
    groups = [g for g in user.get("groups") or [] if isinstance(g, dict)]
    group_status = {str(g.get("status") or "").strip().lower(): str(g.get("name") or "") for g in groups}
    if status == "disabled":
        return "disabled", "user status is disabled"
    if "disabled" in group_status:
        return "disabled", f"Duo group {group_status['disabled']!r} is disabled"
    if status in ("locked out", "locked_out"):
        return "locked_out", "user status is locked out"
    if status == "bypass":
        return "bypass", "user status is bypass"
    if "bypass" in group_status:
        return "allow", f"Duo group {group_status['bypass']!r} is in bypass"
    if status != "active":
        return "disabled", f"user status {status or '(none)'!r} does not allow logins"
    phones = [p for p in user.get("phones") or [] if isinstance(p, dict)]
    tokens = [t for t in user.get("tokens") or [] if isinstance(t, dict)]
    if any("push" in _caps(p) and p.get("activated", True) is not False for p in phones):
        return "push", "a phone with Duo Push"
    if any(_caps(p) & {"phone", "sms"} for p in phones):
        return "phone_sms", "phone call or SMS only"
    if tokens or any("mobile_otp" in _caps(p) for p in phones):
        return "passcode_only", "hardware token or Duo Mobile passcodes only"
    if user.get("webauthncredentials") or user.get("u2ftokens"):
        return "not_enrolled", "only security keys (WebAuthn), which a terminal login cannot use"
    return "not_enrolled", "no phone or token"


def readiness_json(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The ``--json`` report: rows of (local user, Duo user, state)."""
    users = [{"user": user, "duo_user": duo_user, "state": state, "locked_out": state in LOCKED_OUT_STATES}
             for user, duo_user, state in rows]
    return {"users": users, "total": len(users), "locked_out": sum(1 for u in users if u["locked_out"])}


class DuoDirectory:
    """All Duo users, indexed by username, alias and user id (usernames compared without case)."""

    def __init__(self, users: Iterator[dict[str, Any]]) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        aliases: list[tuple[str, dict[str, Any]]] = []
        for user in users:
            if isinstance(user.get("user_id"), str):
                self.by_id[user["user_id"]] = user
            if isinstance(user.get("username"), str):
                self.by_name.setdefault(user["username"].casefold(), user)
            for alias in alias_names(user):
                aliases.append((alias.casefold(), user))
        for alias, user in aliases:  # a username wins over another user's alias
            self.by_name.setdefault(alias, user)

    def find(self, identity: DuoIdentity) -> dict[str, Any] | None:
        if identity.user_id:
            return self.by_id.get(identity.user_id)
        return self.by_name.get((identity.username or "").casefold())


def alias_names(user: dict[str, Any]) -> list[str]:
    aliases = user.get("aliases")
    if isinstance(aliases, dict):
        return [v for _, v in sorted(aliases.items()) if isinstance(v, str) and v]
    if isinstance(aliases, list):
        return [v for v in aliases if isinstance(v, str) and v]
    return []
