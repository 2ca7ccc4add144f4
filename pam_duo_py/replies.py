"""Duo Auth API v2 replies, checked and turned into small typed objects.

Anything that does not have the documented shape raises
:class:`DuoMalformedReply`, which at preauth counts as "Duo unreachable". A
reply that has the shape but a ``result`` we do not know raises
:class:`DuoUnknownAnswer`: Duo did answer, so that never fails open.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

from .record import Record
from .errors import DuoMalformedReply, DuoUnknownAnswer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import DuoIdentity

CAPABILITIES = ("push", "phone", "sms", "mobile_otp")


class Device(Record):
    device: str
    type: str
    label: str
    capabilities: tuple[str, ...]
    sms_nextcode: str | None = None


class Preauth(Record):
    result: str  # allow | deny | enroll | auth
    status_msg: str
    devices: tuple[Device, ...] = ()
    enroll_portal_url: str | None = None
    txid: str | None = None  # Verified Push: send with the first push of this login
    verification_code: str | None = None  # Verified Push: the code to show for that push


class AuthStarted(Record):
    txid: str
    verification_code: str | None = None


class AuthResult(Record):
    result: str  # allow | deny | waiting
    status: str
    status_msg: str


def _str(reply: dict[str, Any], key: str, *, required: bool = True, limit: int = 2000) -> str | None:
    value = reply.get(key)
    if value is None:
        if required:
            raise DuoMalformedReply(f"reply has no '{key}'")
        return None
    if not isinstance(value, str):
        raise DuoMalformedReply(f"reply field '{key}' is not a string")
    return value[:limit]


def _object(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise DuoMalformedReply("reply is not a JSON object")
    return reply


def parse_device(raw: Any) -> Device | None:
    if not isinstance(raw, dict):
        raise DuoMalformedReply("device entry is not an object")
    device_id = raw.get("device")
    if not isinstance(device_id, str) or not device_id or len(device_id) > 64:
        raise DuoMalformedReply("device entry has no valid 'device'")
    caps = raw.get("capabilities", [])
    if not isinstance(caps, list):
        raise DuoMalformedReply("device 'capabilities' is not a list")
    label = ""
    for key in ("number", "display_name", "name"):
        value = raw.get(key)
        if isinstance(value, str) and value:
            label = value[:100]
            break
    nextcode = raw.get("sms_nextcode")
    return Device(
        device=device_id,
        type=raw.get("type") if isinstance(raw.get("type"), str) else "",
        label=label or device_id,
        capabilities=tuple(c for c in CAPABILITIES if c in caps),
        sms_nextcode=nextcode[:10] if isinstance(nextcode, str) else None,
    )


def _result(reply: dict[str, Any], known: tuple[str, ...], what: str) -> str:
    result = _str(reply, "result", limit=200)
    if result not in known:
        raise DuoUnknownAnswer(f"unknown {what} result {result[:40]!r}")
    return result


def parse_preauth(reply: Any) -> Preauth:
    reply = _object(reply)
    result = _result(reply, ("allow", "deny", "enroll", "auth"), "preauth")
    status_msg = _str(reply, "status_msg", required=False) or ""
    if result == "enroll":
        return Preauth(result, status_msg, enroll_portal_url=_str(reply, "enroll_portal_url", required=False))
    if result != "auth":
        return Preauth(result, status_msg)
    devices = reply.get("devices")
    if not isinstance(devices, list):
        raise DuoMalformedReply("preauth reply has no 'devices' list")
    parsed = tuple(d for d in (parse_device(raw) for raw in devices[:50]) if d is not None)
    return Preauth(result, status_msg, devices=parsed, txid=_str(reply, "txid", required=False, limit=128),
                   verification_code=_code(reply))


def _code(reply: dict[str, Any]) -> str | None:
    """A Verified Push code (preauth or async ``/auth`` reply), or None."""
    return _str(reply, "verification_code", required=False, limit=16) or None


def parse_auth_started(reply: Any) -> AuthStarted:
    reply = _object(reply)
    txid = _str(reply, "txid", limit=256)
    if not txid or len(txid) > 128:
        raise DuoMalformedReply("auth reply has no valid 'txid'")
    return AuthStarted(txid=txid, verification_code=_code(reply))


def parse_auth_result(reply: Any, *, allow_waiting: bool) -> AuthResult:
    reply = _object(reply)
    result = _result(reply, ("allow", "deny", "waiting") if allow_waiting else ("allow", "deny"), "auth")
    status = _str(reply, "status", required=False, limit=64) or ""
    status_msg = _str(reply, "status_msg", required=False) or ""
    return AuthResult(result, status, status_msg)


def parse_time(reply: Any) -> int:
    reply = _object(reply)
    value = reply.get("time")
    if not isinstance(value, int) or isinstance(value, bool):
        raise DuoMalformedReply("reply has no integer 'time'")
    return value


class DuoApi(Protocol):
    """What the decision engine asks of Duo: typed calls in, reply objects out.

    The real one is :class:`pam_duo_py.duo.DuoClient` (which owns Duo's parameter names and the
    wire); unit tests use a fake. ``ipaddr`` and ``hostname`` describe the login and are sent
    when known. Every failure is a :class:`pam_duo_py.errors.DuoError`.
    """

    def preauth(self, identity: DuoIdentity, *, ipaddr: str | None, hostname: str | None,
                verified_push: bool) -> Preauth: ...

    def start_push(self, identity: DuoIdentity, device: str, *, ipaddr: str | None, hostname: str | None,
                   pushinfo: Sequence[tuple[str, str]] = (), txid: str | None = None) -> AuthStarted:
        """An asynchronous push; ``pushinfo`` is shown in Duo Mobile, ``txid`` is a Verified Push preauth's."""

    def start_phone(self, identity: DuoIdentity, device: str, *, ipaddr: str | None,
                    hostname: str | None) -> AuthStarted: ...

    def check_passcode(self, identity: DuoIdentity, passcode: str, *, ipaddr: str | None,
                       hostname: str | None) -> AuthResult: ...

    def send_sms(self, identity: DuoIdentity, device: str | None, *, ipaddr: str | None,
                 hostname: str | None) -> AuthResult:
        """New SMS passcodes to ``device`` (None: Duo's choice); Duo answers ``deny``/``sent``."""

    def auth_status(self, txid: str, timeout: float) -> AuthResult:
        """Long-polls until the transaction changes; ``timeout`` bounds the wait."""

    def close(self) -> None: ...
