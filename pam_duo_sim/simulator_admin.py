"""The simulator's Duo Admin API: users, phones, tokens, aliases, bypass codes, enrollment.

Served by :class:`pam_duo_sim.simulator.Simulator` for every ``/admin/`` path, signed with
Admin API keys of its own (never the Auth API keys; each pair is refused on the other API):

* ``admin.toml`` (0600): an ``[admin]`` table with a key that may read and write;
* ``admin-readonly.toml`` (0600): a key with "Grant read resource" only (writes: 403 40301).

Endpoints: ``GET /admin/v1/users`` (paged with ``limit``/``offset``, ``metadata.next_offset``;
``username=`` finds a username or alias), ``GET /admin/v1/users/<id>``,
``GET|POST /admin/v1/users/<id>/bypass_codes`` (POST: ``count``, ``reuse_count``, ``valid_secs``,
``preserve_existing``), ``POST /admin/v1/users/enroll`` (``username``, ``email``).

Users (their ``user_id`` is derived from the name, so it is the same after a restart):

===========  ===================================================================
alice, bob   active, two phones with push and a token; alice has alias ``alice.smith``
onedevice    active, one phone with push
phoneonly    active, one phone that is not activated: calls and SMS only
tokenonly    active, a hardware token only
enroll       active, no device (not enrolled)
deny         disabled
lockedout    locked out
bypass       status bypass
allow        active, in the group ``sim-bypass``, whose status is bypass
pushdeny, pushfail, fraud, pushtimeout, vpush, iduser
             active, like alice (the Auth API side plays their scenarios)
===========  ===================================================================

Bypass codes are 9 digits; the first of every batch starts with ``0`` (the leading-zero case).
The Auth API side accepts a live code as a passcode for its user (by username, alias or
``user_id``): each use counts, and a used-up or expired code is an incorrect passcode. Codes
never appear in the request log. ``--admin-fault KIND[xN]`` (the ``check`` fault syntax)
applies to the first N Admin API requests.
"""
from __future__ import annotations

import copy
import hashlib
import json
import pathlib
import secrets
import string
import threading
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from .simulator import (_CHECK_FAULT_RE, SUCCESS, _fail, _ok, _Reply, _Request, _write_private)

DEFAULT_PAGE = 100
MAX_PAGE = 300

_PHONE_A = {"name": "iPhone", "number": "+15555551234", "platform": "Apple iOS", "type": "Mobile",
            "activated": True, "capabilities": ["auto", "push", "sms", "phone", "mobile_otp"]}
_PHONE_B = {"name": "Android", "number": "+15555555678", "platform": "Google Android", "type": "Mobile",
            "activated": True, "capabilities": ["auto", "push", "phone"]}
_LANDLINE = {"name": "Desk", "number": "+15555550000", "platform": "Generic Smartphone", "type": "Mobile",
             "activated": False, "capabilities": ["phone", "sms"]}
_TOKEN = {"type": "h6", "serial": "000123"}

_SEED: Dict[str, Dict[str, Any]] = {
    "alice": {"phones": [_PHONE_A, _PHONE_B], "tokens": [_TOKEN], "aliases": {"alias1": "alice.smith"}},
    "bob": {"phones": [_PHONE_A, _PHONE_B], "tokens": [_TOKEN]},
    "onedevice": {"phones": [_PHONE_A]},
    "phoneonly": {"phones": [_LANDLINE]},
    "tokenonly": {"tokens": [_TOKEN]},
    "enroll": {},
    "deny": {"status": "disabled", "phones": [_PHONE_A]},
    "lockedout": {"status": "locked out", "phones": [_PHONE_A]},
    "bypass": {"status": "bypass"},
    "allow": {"groups": [{"group_id": "DGSIMBYPASS0000000001", "name": "sim-bypass", "status": "Bypass"}]},
    "pushdeny": {"phones": [_PHONE_A, _PHONE_B]},
    "pushfail": {"phones": [_PHONE_A, _PHONE_B]},
    "fraud": {"phones": [_PHONE_A, _PHONE_B]},
    "pushtimeout": {"phones": [_PHONE_A, _PHONE_B]},
    "vpush": {"phones": [_PHONE_A, _PHONE_B]},
    "iduser": {"phones": [_PHONE_A, _PHONE_B], "tokens": [_TOKEN]},
}


def _id(prefix: str, name: str) -> str:
    return prefix + hashlib.sha256(name.encode("utf-8")).hexdigest().upper()[:20 - len(prefix)]


def _make_user(name: str, spec: Dict[str, Any], now: float) -> Dict[str, Any]:
    phones = []
    for index, phone in enumerate(spec.get("phones", [])):
        phone = dict(copy.deepcopy(phone), phone_id=_id("DP", f"{name}/{index}"))
        phone["last_seen"] = "2026-12-01T09:00:00" if phone.get("activated") else ""
        phones.append(phone)
    tokens = [dict(t, token_id=_id("DH", f"{name}/t{i}")) for i, t in enumerate(spec.get("tokens", []))]
    return {
        "user_id": _id("DU", name), "username": name, "realname": name.capitalize(), "email": f"{name}@example.com",
        "status": spec.get("status", "active"), "is_enrolled": bool(phones or tokens),
        "aliases": dict(spec.get("aliases", {})), "phones": phones, "tokens": tokens,
        "groups": copy.deepcopy(spec.get("groups", [])), "webauthncredentials": [], "u2ftokens": [],
        "last_login": int(now) - 86400 if phones or tokens else None, "created": int(now) - 30 * 86400,
        "notes": "",
    }


def _new_key(prefix: str = "DI") -> Dict[str, str]:
    upper = string.digits + string.ascii_uppercase
    return {"ikey": prefix + "".join(secrets.choice(upper) for _ in range(18)),
            "skey": "".join(secrets.choice(string.digits + string.ascii_letters) for _ in range(40))}


def _load_admin_keys(state: pathlib.Path) -> Dict[str, Dict[str, str]]:
    path = state / "admin-keys.json"
    try:
        data = json.loads(path.read_text())
        if all(isinstance(data[k]["ikey"], str) and isinstance(data[k]["skey"], str) for k in ("write", "readonly")):
            return data
    except (OSError, ValueError, KeyError, TypeError):
        pass
    data = {"write": _new_key(), "readonly": _new_key()}
    _write_private(path, json.dumps(data) + "\n")
    return data


class AdminApi:
    """The Admin API state of one simulator (thread-safe)."""

    def __init__(self, sim: Any, fault: Optional[str] = None) -> None:
        if fault is not None and not _CHECK_FAULT_RE.match(fault):
            raise ValueError(f"invalid admin fault: {fault!r}")
        self.sim = sim
        self.fault = fault
        self._fault_count = 0
        self.keys = _load_admin_keys(sim.state_dir)
        self.config_path = sim.state_dir / "admin.toml"
        self.readonly_config_path = sim.state_dir / "admin-readonly.toml"
        self._lock = threading.Lock()
        now = sim.now()
        self.users: Dict[str, Dict[str, Any]] = {}
        for name, spec in _SEED.items():
            user = _make_user(name, spec, now)
            self.users[user["user_id"]] = user
        self._codes: Dict[str, List[Dict[str, Any]]] = {}  # user_id -> [{code, uses, expires, id}]

    def write_snippets(self, host: str, ca_file: str) -> None:
        for kind, path in (("write", self.config_path), ("readonly", self.readonly_config_path)):
            key = self.keys[kind]
            _write_private(path, f"[admin]\nikey = {json.dumps(key['ikey'])}\nskey = {json.dumps(key['skey'])}\n"
                                 f"host = {json.dumps(host)}\nca_file = {json.dumps(ca_file)}\n")

    # -- lookups ------------------------------------------------------------------------
    def _by_name(self, name: str) -> Optional[Dict[str, Any]]:
        folded = name.casefold()
        for user in self.users.values():
            if user["username"].casefold() == folded:
                return user
        for user in self.users.values():
            if any(isinstance(a, str) and a.casefold() == folded for a in user["aliases"].values()):
                return user
        return None

    def _ordered(self) -> List[Dict[str, Any]]:
        return sorted(self.users.values(), key=lambda u: (u["created"], u["username"]))

    # -- the Auth API side ------------------------------------------------------------------
    def passcode_reply(self, params: Dict[str, Any]) -> Optional[_Reply]:
        """Success when ``/auth`` carries a live bypass code of its user; None lets the Auth side decide."""
        code = params.get("passcode")
        if params.get("factor") != "passcode" or not isinstance(code, str) or not code:
            return None
        with self._lock:
            user_id, username = params.get("user_id"), params.get("username")
            user = self.users.get(user_id) if isinstance(user_id, str) and user_id else (
                self._by_name(username) if isinstance(username, str) and username else None)
            if user is None:
                return None
            now = self.sim.now()
            live = [c for c in self._codes.get(user["user_id"], []) if c["expires"] is None or c["expires"] > now]
            self._codes[user["user_id"]] = live
            for entry in live:
                if secrets.compare_digest(entry["code"], code):
                    entry["uses"] -= 1
                    if entry["uses"] <= 0:
                        live.remove(entry)
                    self.sim._log({"event": "bypass_code_used", "user_id": user["user_id"], "code_id": entry["id"],
                                   "uses_left": max(entry["uses"], 0), "ts": now})
                    return _ok(dict(zip(("result", "status", "status_msg"), SUCCESS)))
        return None

    # -- the Admin API --------------------------------------------------------------------
    def route(self, req: _Request) -> _Reply:
        write = req.method in ("POST", "PUT", "DELETE")
        error, kind = self._verify(req)
        if error is not None:
            return error
        if self.fault:
            with self._lock:
                self._fault_count += 1
                count = self._fault_count
            match = _CHECK_FAULT_RE.match(self.fault)
            limit = match.group("n") if match else None
            if match and (limit is None or count <= int(limit)):
                reply = self.sim._terminal_fault(match.group("kind"))
                if reply is not None:
                    reply.fault = self.fault
                    return reply
        if write and kind != "write":
            return _fail(40301, "Access forbidden")
        params: Any = dict(req.query)
        if req.method == "POST":
            try:
                params = json.loads(req.body.decode("utf-8") or "{}")
            except (UnicodeDecodeError, ValueError):
                params = None
            if not isinstance(params, dict):
                return _fail(40002, "Invalid request parameters", "body")
        parts = req.path.split("/")[1:]  # admin, v1, users, ...
        if parts[:3] != ["admin", "v1", "users"]:
            return _fail(40400, "Resource not found")
        rest = [urllib.parse.unquote(p) for p in parts[3:]]
        with self._lock:
            if rest == [] and req.method == "GET":
                return self._list_users(req, params)
            if rest == ["enroll"] and req.method == "POST":
                return self._enroll(req, params)
            if len(rest) == 1 and req.method == "GET":
                user = self.users.get(rest[0])
                if user is None:
                    return _fail(40401, "Resource not found", "user_id")
                req.username = user["username"]
                return _ok(copy.deepcopy(user))
            if len(rest) == 2 and rest[1] == "bypass_codes":
                user = self.users.get(rest[0])
                if user is None:
                    return _fail(40401, "Resource not found", "user_id")
                req.username = user["username"]
                if req.method == "GET":
                    return self._list_codes(user, params)
                if req.method == "POST":
                    return self._add_codes(user, params)
        return _fail(40400, "Resource not found")

    def _verify(self, req: _Request) -> Tuple[Optional[_Reply], Optional[str]]:
        """The Auth API's signature check, with an Admin key pair (which one decides the permissions)."""
        error: Optional[_Reply] = None
        for kind in ("write", "readonly"):
            key = self.keys[kind]
            error = self.sim._verify(req, key["ikey"], key["skey"])
            if error is None:
                return None, kind
            if not (error.payload and error.payload.get("code") == 40102):
                return error, None
        return error, None

    @staticmethod
    def _page(params: Dict[str, Any]) -> Tuple[int, int]:
        try:
            limit = int(params.get("limit") or DEFAULT_PAGE)
            offset = int(params.get("offset") or 0)
        except (TypeError, ValueError):
            return -1, -1
        return min(max(limit, 1), MAX_PAGE), offset

    def _paged(self, items: List[Any], params: Dict[str, Any]) -> _Reply:
        limit, offset = self._page(params)
        if offset < 0:
            return _fail(40002, "Invalid request parameters", "limit")
        page = items[offset:offset + limit]
        metadata: Dict[str, Any] = {"total_objects": len(items)}
        if offset + limit < len(items):
            metadata["next_offset"] = offset + limit
        if offset > 0:
            metadata["prev_offset"] = max(0, offset - limit)
        reply = _ok(page)  # type: ignore[arg-type]
        assert reply.payload is not None
        reply.payload["metadata"] = metadata
        return reply

    def _list_users(self, req: _Request, params: Dict[str, Any]) -> _Reply:
        username = params.get("username")
        if isinstance(username, str) and username:
            req.username = username
            user = self._by_name(username)
            return _ok([copy.deepcopy(user)] if user else [])  # type: ignore[arg-type]
        return self._paged([copy.deepcopy(u) for u in self._ordered()], params)

    def _list_codes(self, user: Dict[str, Any], params: Dict[str, Any]) -> _Reply:
        now = self.sim.now()
        live = [c for c in self._codes.get(user["user_id"], []) if c["expires"] is None or c["expires"] > now]
        items = [{"bypass_code_id": c["id"], "reuse_count": c["uses"], "created": c["created"],
                  "expiration": int(c["expires"]) if c["expires"] else None, "admin_email": "api@example.com"}
                 for c in live]
        return self._paged(items, params)

    def _add_codes(self, user: Dict[str, Any], params: Dict[str, Any]) -> _Reply:
        try:
            count = int(params.get("count", 10))
            uses = int(params.get("reuse_count", 1))
            valid = int(params.get("valid_secs", 0))
        except (TypeError, ValueError):
            return _fail(40002, "Invalid request parameters", "count")
        if not 1 <= count <= 10 or uses < 0 or valid < 0:
            return _fail(40002, "Invalid request parameters", "count")
        preserve = params.get("preserve_existing") in (True, "true", "True", "1")
        now = self.sim.now()
        codes = ["0" + "".join(secrets.choice(string.digits) for _ in range(8))]
        codes += ["".join(secrets.choice(string.digits) for _ in range(9)) for _ in range(count - 1)]
        entries = [{"code": c, "uses": uses if uses else 1 << 30, "expires": now + valid if valid else None,
                    "created": int(now), "id": _id("DB", f"{user['user_id']}/{now}/{i}/{secrets.token_hex(4)}")}
                   for i, c in enumerate(codes)]
        kept = self._codes.get(user["user_id"], []) if preserve else []
        self._codes[user["user_id"]] = kept + entries
        self.sim._log({"event": "bypass_codes_created", "user_id": user["user_id"], "count": count,
                       "reuse_count": uses, "valid_secs": valid, "preserve_existing": preserve,
                       "kept": len(kept), "ts": now})
        return _ok(codes)  # type: ignore[arg-type]

    def _enroll(self, req: _Request, params: Dict[str, Any]) -> _Reply:
        username, email = params.get("username"), params.get("email")
        if not isinstance(username, str) or not username:
            return _fail(40001, "Missing required request parameters", "username")
        if not isinstance(email, str) or not email:
            return _fail(40001, "Missing required request parameters", "email")
        req.username = username
        user = self._by_name(username)
        if user is not None and (user["phones"] or user["tokens"]):
            return _fail(40002, "Invalid request parameters", "username already exists")
        if user is None:
            user = _make_user(username, {}, self.sim.now())
            self.users[user["user_id"]] = user
        user["email"] = email
        self.sim._log({"event": "enrollment_email", "user_id": user["user_id"], "email": email,
                       "ts": self.sim.now()})
        return _ok("")  # type: ignore[arg-type]
