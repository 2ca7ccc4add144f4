"""The simulator's old REST v1 endpoints, as Duo's own C client ``login_duo`` 1.11 speaks them.

Debian 12 packages duo_unix 1.11.3 (``login-duo``, ``libpam-duo``). Its libduo predates the
Auth API v2: it POSTs form-encoded parameters to ``/rest/v1/preauth.bson`` and
``/rest/v1/auth.bson``, long-polls ``GET /rest/v1/status.bson?txid=``, signs each request
with HMAC-SHA1 over ``METHOD\\nhost\\npath\\nparams`` (no date) and reads BSON replies. Serving
it lets Duo's own client run against the same scripted users (see :mod:`pam_duo_sim.simulator`),
which checks the simulator against Duo's reading of the protocol and not only against ours.

* preauth (``user``, ``ipaddr``, ``hostname``, ``failmode``): ``allow``/``deny``/``enroll`` with
  ``status``, or ``auth`` with a text ``prompt`` and ``factors`` (``"1": "push1"``, ...,
  ``"default"``) built from the user's devices;
* auth (``user``, ``factor=auto``, ``auto`` = a factor name such as ``push1``, ``phone2``,
  ``sms1``, or a passcode, ``async``): sync ``{result, status}``, or async ``{txid}``;
* status: ``{status}`` while waiting, then ``{result, status}``.

``status`` carries Duo's ``status_msg``. Faults in the user name work as on the v2 endpoints.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .simulator import _fail, _Reply, _Request, _Txn, canon_params, devices_for, scenario_of

if TYPE_CHECKING:
    from .simulator import Simulator

PATHS = {"/rest/v1/preauth.bson": ("POST", "preauth"), "/rest/v1/auth.bson": ("POST", "auth"),
         "/rest/v1/status.bson": ("GET", "status")}
_LABELS = {"push": "Duo Push to {}", "phone": "Phone call to {}", "sms": "SMS passcodes to {}"}
_CHOICE = re.compile(r"(push|phone|voice|sms|smsrefresh)([0-9]*)\Z")


def bson(doc: Dict[str, Any]) -> bytes:
    """A BSON document of strings, integers and nested documents (all that libduo reads)."""
    out = b""
    for key, value in doc.items():
        name = key.encode("utf-8") + b"\x00"
        if isinstance(value, dict):
            out += b"\x03" + name + bson(value)
        elif isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"no BSON encoding here for {type(value).__name__}")
        elif isinstance(value, int):
            out += b"\x10" + name + struct.pack("<i", value)
        else:
            data = value.encode("utf-8") + b"\x00"
            out += b"\x02" + name + struct.pack("<i", len(data)) + data
    return struct.pack("<i", len(out) + 5) + out + b"\x00"


def _reply(payload: Dict[str, Any], status: int = 200) -> _Reply:
    return _Reply(status, raw=bson(payload), ctype="application/bson")


def _ok(response: Dict[str, Any]) -> _Reply:
    return _reply({"stat": "OK", "response": response})


class RestV1:
    """``/rest/v1/*.bson`` on top of the simulator's scripted users."""

    def __init__(self, sim: "Simulator") -> None:
        self.sim = sim

    def route(self, req: _Request) -> _Reply:
        spec = PATHS.get(req.path)
        if spec is None:
            return self._v1(_fail(40400, "Resource not found"))
        method, name = spec
        if req.method != method:
            return self._v1(_fail(40501, "Method not allowed"))
        raw = req.body.decode("utf-8", "replace") if method == "POST" else urllib.parse.urlencode(req.query)
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True)
        params = dict(pairs)
        req.username = params.get("user")
        if not self._signed(req, pairs):
            return self._v1(_fail(40103, "Invalid signature in request credentials"))
        if name == "status":
            return self._v1(self.sim._auth_status(req, {"txid": params.get("txid", "")}), status=True)
        user = params.get("user")
        if not user:
            return self._v1(_fail(40001, "Missing required request parameters", "user"))
        if name == "preauth":
            return self._preauth(user)
        return self._auth(req, user, params)

    def _signed(self, req: _Request, pairs: List[Tuple[str, str]]) -> bool:
        """libduo 1.11's signature: HMAC-SHA1 over method, host, path and the sorted parameters."""
        auth = req.headers.get("Authorization") or ""
        scheme, _, b64 = auth.strip().partition(" ")
        try:
            ikey, _, sig = base64.b64decode(b64.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        host = (req.headers.get("Host") or self.sim.host).strip().split(":", 1)[0].lower()
        canonical = "\n".join([req.method.upper(), host, req.path, canon_params(pairs)])
        expected = hmac.new(self.sim.skey.encode(), canonical.encode(), hashlib.sha1).hexdigest()
        return (scheme.lower() == "basic" and hmac.compare_digest(ikey.encode(), self.sim.ikey.encode())
                and hmac.compare_digest(sig.lower().encode(), expected.encode()))

    @staticmethod
    def _v1(reply: _Reply, status: bool = False) -> _Reply:
        """A v2 reply in v1 shape (BSON; ``status`` carries Duo's status message)."""
        if reply.action != "send" or reply.raw is not None or not reply.payload:
            return reply  # faults (stall, close, malformed...) stay what they are
        if reply.payload.get("stat") != "OK":
            return _reply({k: v for k, v in reply.payload.items() if k in ("stat", "code", "message")},
                          reply.status)
        resp = reply.payload.get("response") or {}
        out: Dict[str, Any] = {"status": str(resp.get("status_msg", ""))}
        if not (status and resp.get("result") == "waiting"):
            out["result"] = str(resp.get("result", ""))
        if "txid" in resp and "result" not in resp:
            out = {"txid": str(resp["txid"])}
        return _ok(out)

    def _preauth(self, user: str) -> _Reply:
        reply = self.sim._with_faults(user, "preauth", lambda: self.sim._preauth(user, {}))
        if reply.payload is None or reply.payload.get("stat") != "OK" or reply.action != "send":
            return self._v1(reply)
        resp = reply.payload["response"]
        if resp.get("result") != "auth":
            text = str(resp.get("status_msg", ""))
            if resp.get("enroll_portal_url"):
                text += f" {resp['enroll_portal_url']}"
            return _ok({"result": str(resp["result"]), "status": text})
        lines, factors, counts = [], {}, {"push": 0, "phone": 0, "sms": 0}
        for device in resp.get("devices", []):
            for factor in ("push", "phone", "sms"):
                if factor in device.get("capabilities", []):
                    counts[factor] += 1
                    factors[str(len(lines) + 1)] = f"{factor}{counts[factor]}"
                    lines.append(f" {len(lines) + 1}. " + _LABELS[factor].format(device.get("number", "")))
        if "1" in factors:
            factors["default"] = next((v for v in factors.values() if v.startswith("push")), factors["1"])
        prompt = (f"Duo login for {user}\n\nEnter a passcode or select one of the following options:\n\n"
                  + "\n".join(lines) + f"\n\nPasscode or option (1-{len(lines)}): ")
        return _ok({"result": "auth", "prompt": prompt, "factors": factors})

    def _auth(self, req: _Request, user: str, params: Dict[str, str]) -> _Reply:
        choice = params.get("auto", "") if params.get("factor") == "auto" else params.get("factor", "")
        is_async = params.get("async") == "1"
        v2: Dict[str, Any] = {"async": "1" if is_async else "0"}
        match = _CHOICE.match(choice)
        if match:
            factor = {"voice": "phone", "smsrefresh": "sms"}.get(match.group(1), match.group(1))
            capable = [d for d in devices_for(scenario_of(user)) if factor in d.get("capabilities", [])]
            index = int(match.group(2) or 1) - 1
            v2.update(factor=factor, device=capable[index]["device"] if 0 <= index < len(capable) else "none")
        else:
            v2.update(factor="passcode", passcode=choice)
        req.factor = v2["factor"]
        reply = self.sim._with_faults(user, "auth", lambda: self.sim._auth(req, user, v2))
        resp = reply.payload.get("response") if reply.payload and reply.action == "send" else None
        if is_async and isinstance(resp, dict) and "result" in resp:
            # Answered at once (passcode, SMS): v1 clients still expect a transaction to poll.
            txn = _Txn(str(uuid.uuid4()), user, v2["factor"], resp["result"], str(resp.get("status", "")),
                       str(resp.get("status_msg", "")), news=True)
            with self.sim._lock:
                self.sim._txns[txn.txid] = txn
            req.txid = txn.txid
            return _ok({"txid": txn.txid})
        return self._v1(reply)
