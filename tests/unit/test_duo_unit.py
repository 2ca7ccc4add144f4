"""The Duo adapter without any socket: reply parsing, the requests it signs, error mapping,
HTTP dates, Retry-After and 429 waits. The adapter's transport is a plain function here."""
from __future__ import annotations

import datetime
import email.utils
import json
import os
import socket
import ssl
import time
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes import FakeClock
from pam_duo_py import replies
from pam_duo_py import transport as transport_mod
from pam_duo_py.config import DuoIdentity, DuoSettings
from pam_duo_py.duo import DuoClient
from pam_duo_py.transport import BadReply, RateLimitWaits, http_date, parse_http_date, retry_after_seconds
from pam_duo_py.errors import (DuoCredentialsRejected, DuoError, DuoMalformedReply, DuoRateLimited, DuoRefused,
                               DuoTimeout, DuoUnavailable, DuoUnknownAnswer)
from pam_duo_py.replies import AuthResult, AuthStarted, Device, Preauth

SETTINGS = DuoSettings(ikey="DIABCDEFGHIJKLMNOPQR", skey="S" * 40, host="api-test.duosecurity.com", port=None,
                       ca_file=None, proxy=None, timeout=10.0)


# -- Retry-After -------------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize("value,expected", [("120", 120.0), (" 5 ", 5.0), ("0", 0.0), (None, None), ("", None),
                                            ("soon", None), ("-5", None), ("1.5", None), ("5s", None),
                                            ("Mon, 99 Foo 2026 99:99:99 GMT", None)])
def test_retry_after_seconds(value, expected):
    assert retry_after_seconds(value, NOW) == expected


def test_retry_after_http_date():
    assert retry_after_seconds(email.utils.formatdate(NOW + 30, usegmt=True), NOW) == pytest.approx(30.0)
    assert retry_after_seconds(email.utils.formatdate(NOW - 300, usegmt=True), NOW) == 0.0


@pytest.fixture
def far_timezone():
    if not hasattr(time, "tzset"):
        pytest.skip("no tzset")
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "KIT-14"  # a POSIX TZ string (no tzdata needed): UTC+14
    time.tzset()
    assert time.timezone == -14 * 3600
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.parametrize("zone", ["GMT", "+0000", "-0000", "UTC"])
def test_retry_after_http_date_does_not_depend_on_the_local_timezone(far_timezone, zone):
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S", time.gmtime(NOW + 30)) + " " + zone
    assert retry_after_seconds(stamp, NOW) == pytest.approx(30.0)


@given(when=st.integers(min_value=0, max_value=4_102_444_800))
def test_http_date_is_what_email_utils_formatdate_writes(when):
    assert http_date(when) == email.utils.formatdate(when)


@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 GMT", "Wed, 02 Dec 2026 15:04:05 -0000", "Wed, 02 Dec 2026 15:04:05 +0000",
    "Wed, 02 Dec 2026 15:04:05 UTC", "Wed, 2 Dec 2026 15:04:05 GMT", "Wed, 02 Dec 2026 15:04:05 +0200",
    "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Mon, 31 Feb 2026 10:00:00 GMT",
    "Mon, 99 Foo 2026 99:99:99 GMT", "Mon, 01 Dec 2025 25:00:00 GMT", "garbage", "", None])
def test_parse_http_date_agrees_with_email_utils(value):
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        expected = when.timestamp() if when is not None else None
    except (TypeError, ValueError, IndexError):
        expected = None
    assert parse_http_date(value) == expected


@given(when=st.integers(min_value=0, max_value=4_102_444_800), zone=st.sampled_from(["GMT", "-0000", "+0000", "UTC"]))
def test_parse_http_date_reads_what_servers_send(when, zone):
    stamp = email.utils.formatdate(when, usegmt=True)[:-3] + zone
    assert parse_http_date(stamp) == when


# -- preauth replies ---------------------------------------------------------------------------

PHONE = {"device": "DPFZRS9FB0D46QFTM891", "type": "phone", "number": "XXX-XXX-1234", "name": "iPhone",
         "display_name": "iOS (XXX-XXX-1234)", "capabilities": ["auto", "push", "sms", "phone", "mobile_otp"],
         "sms_nextcode": "1"}
TOKEN = {"device": "DHIXXXXXXXXXXXXXXXXX", "type": "token", "name": "", "display_name": "Token"}


def test_parse_preauth_allow_deny_enroll():
    assert replies.parse_preauth({"result": "allow", "status_msg": "Allowing unknown user"}) == \
        Preauth("allow", "Allowing unknown user")
    assert replies.parse_preauth({"result": "deny", "status_msg": "Disabled"}) == Preauth("deny", "Disabled")
    enroll = replies.parse_preauth({"result": "enroll", "status_msg": "Enroll", "enroll_portal_url": "https://x/p"})
    assert enroll == Preauth("enroll", "Enroll", enroll_portal_url="https://x/p")


def test_parse_preauth_auth_with_devices():
    pre = replies.parse_preauth({"result": "auth", "status_msg": "Account is active", "devices": [PHONE, TOKEN],
                                 "txid": "PRE1"})
    assert pre.result == "auth" and pre.txid == "PRE1"
    phone, token = pre.devices
    assert phone == Device("DPFZRS9FB0D46QFTM891", "phone", "XXX-XXX-1234", ("push", "phone", "sms", "mobile_otp"), "1")
    assert token == Device("DHIXXXXXXXXXXXXXXXXX", "token", "Token", ())


def test_parse_preauth_auth_without_status_msg_or_devices_entries():
    assert replies.parse_preauth({"result": "auth", "devices": []}) == Preauth("auth", "", devices=())


def test_device_label_falls_back_to_names_then_the_id():
    assert replies.parse_device({"device": "D1", "display_name": "iOS"}).label == "iOS"
    assert replies.parse_device({"device": "D1", "name": "Pixel"}).label == "Pixel"
    assert replies.parse_device({"device": "D1", "number": ""}).label == "D1"
    assert replies.parse_device({"device": "D1", "capabilities": ["auto", "bogus", "push"]}).capabilities == ("push",)


BAD_PREAUTH = [
    None, [], "allow", 1, {},
    {"result": 1, "status_msg": "x"},
    {"result": "allow", "status_msg": 5},
    {"result": "enroll", "status_msg": "x", "enroll_portal_url": 1},
    {"result": "auth", "status_msg": "x"},
    {"result": "auth", "status_msg": "x", "devices": {}},
    {"result": "auth", "status_msg": "x", "devices": "DPHONE"},
    {"result": "auth", "status_msg": "x", "devices": ["DPHONE"]},
    {"result": "auth", "status_msg": "x", "devices": [{"type": "phone"}]},
    {"result": "auth", "status_msg": "x", "devices": [{"device": ""}]},
    {"result": "auth", "status_msg": "x", "devices": [{"device": 12}]},
    {"result": "auth", "status_msg": "x", "devices": [{"device": "D" * 65}]},
    {"result": "auth", "status_msg": "x", "devices": [{"device": "D1", "capabilities": "push"}]},
    {"result": "auth", "status_msg": "x", "devices": [{"device": "D1", "capabilities": None}]},
    {"result": "auth", "status_msg": "x", "devices": [PHONE], "txid": 5},
    {"result": "auth", "status_msg": 3, "devices": [PHONE]},
]


@pytest.mark.parametrize("reply", BAD_PREAUTH, ids=[str(i) for i in range(len(BAD_PREAUTH))])
def test_parse_preauth_refuses_malformed_replies(reply):
    with pytest.raises(DuoMalformedReply):
        replies.parse_preauth(reply)


@pytest.mark.parametrize("result", ["maybe", "ALLOW", "waiting", ""])
def test_parse_preauth_unknown_result_is_an_answer_not_an_outage(result):
    # Well-formed and from Duo: never "unreachable" (which failmode=safe would let in).
    with pytest.raises(DuoUnknownAnswer) as caught:
        replies.parse_preauth({"result": result, "status_msg": "x"})
    assert isinstance(caught.value, DuoRefused) and not isinstance(caught.value, DuoUnavailable)


def test_parse_preauth_optional_texts():
    assert replies.parse_preauth({"result": "allow"}) == Preauth("allow", "")
    assert replies.parse_preauth({"result": "deny"}) == Preauth("deny", "")
    assert replies.parse_preauth({"result": "enroll", "status_msg": "x"}) == Preauth("enroll", "x")


def test_parse_preauth_verified_push_fields():
    pre = replies.parse_preauth({"result": "auth", "devices": [PHONE], "txid": "PRE-1", "verification_code": "417"})
    assert pre.txid == "PRE-1" and pre.verification_code == "417"


# -- auth replies ------------------------------------------------------------------------------

def test_parse_auth_started():
    assert replies.parse_auth_started({"txid": "TX1"}) == AuthStarted("TX1")
    assert replies.parse_auth_started({"txid": "TX1", "verification_code": "123"}) == AuthStarted("TX1", "123")
    assert replies.parse_auth_started({"txid": "T" * 128}).txid == "T" * 128


@pytest.mark.parametrize("reply", [None, [], {}, {"txid": None}, {"txid": ""}, {"txid": 5}, {"txid": "T" * 129},
                                   {"txid": "T1", "verification_code": 123}, {"result": "allow"}])
def test_parse_auth_started_refuses_malformed_replies(reply):
    with pytest.raises(DuoMalformedReply):
        replies.parse_auth_started(reply)


@pytest.mark.parametrize("reply,waiting,expected", [
    ({"result": "allow", "status": "allow", "status_msg": "ok"}, False, AuthResult("allow", "allow", "ok")),
    ({"result": "deny", "status": "deny", "status_msg": "no"}, False, AuthResult("deny", "deny", "no")),
    ({"result": "deny", "status": "sent", "status_msg": "sent"}, False, AuthResult("deny", "sent", "sent")),
    ({"result": "waiting", "status": "pushed", "status_msg": "p"}, True, AuthResult("waiting", "pushed", "p")),
    ({"result": "allow"}, True, AuthResult("allow", "", "")),
])
def test_parse_auth_result(reply, waiting, expected):
    assert replies.parse_auth_result(reply, allow_waiting=waiting) == expected


@pytest.mark.parametrize("reply,waiting", [
    (None, True), ("allow", True), ({}, True), ({"result": None}, True), ({"result": True}, True),
    ({"result": "allow", "status": 1}, True), ({"result": "allow", "status_msg": ["x"]}, True),
])
def test_parse_auth_result_refuses_malformed_replies(reply, waiting):
    with pytest.raises(DuoMalformedReply):
        replies.parse_auth_result(reply, allow_waiting=waiting)


@pytest.mark.parametrize("reply,waiting", [({"result": "waiting"}, False), ({"result": "maybe"}, True),
                                           ({"result": "success"}, True)])
def test_parse_auth_result_unknown_result(reply, waiting):
    with pytest.raises(DuoUnknownAnswer):
        replies.parse_auth_result(reply, allow_waiting=waiting)


def test_parse_time():
    assert replies.parse_time({"time": 1700000000}) == 1700000000
    for bad in ({}, {"time": "1"}, {"time": True}, {"time": 1.5}, []):
        with pytest.raises(DuoMalformedReply):
            replies.parse_time(bad)


# -- property: only DuoMalformedReply or a valid object ----------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
KEYS = ["result", "status", "status_msg", "devices", "enroll_portal_url", "txid", "verification_code", "device",
        "capabilities", "number", "display_name", "name", "type", "sms_nextcode"]
results = st.sampled_from(["allow", "deny", "enroll", "auth", "waiting", "sent", ""])
device_like = st.dictionaries(st.sampled_from(KEYS), json_values | st.text(max_size=70)
                              | st.lists(st.sampled_from(["push", "phone", "sms", "mobile_otp", "auto"])), max_size=6)
reply_like = st.dictionaries(st.sampled_from(KEYS), json_values | results | st.lists(device_like, max_size=4),
                             max_size=8) | json_values


def valid_device(device) -> bool:
    return (isinstance(device, Device) and isinstance(device.device, str) and 0 < len(device.device) <= 64
            and isinstance(device.label, str) and isinstance(device.type, str)
            and set(device.capabilities) <= set(replies.CAPABILITIES)
            and (device.sms_nextcode is None or isinstance(device.sms_nextcode, str)))


@given(reply=reply_like)
def test_parse_preauth_property(reply):
    try:
        pre = replies.parse_preauth(reply)
    except (DuoMalformedReply, DuoUnknownAnswer):
        return
    assert pre.result in ("allow", "deny", "enroll", "auth")
    assert isinstance(pre.status_msg, str)
    assert all(valid_device(d) for d in pre.devices)
    if pre.result == "enroll":
        assert pre.enroll_portal_url is None or isinstance(pre.enroll_portal_url, str)
    if pre.result != "auth":
        assert pre.devices == ()
    assert pre.txid is None or isinstance(pre.txid, str)


@given(reply=reply_like, waiting=st.booleans())
def test_parse_auth_replies_property(reply, waiting):
    try:
        started = replies.parse_auth_started(reply)
    except DuoMalformedReply:
        pass
    else:
        assert isinstance(started.txid, str) and 0 < len(started.txid) <= 128
        assert started.verification_code is None or isinstance(started.verification_code, str)
    try:
        result = replies.parse_auth_result(reply, allow_waiting=waiting)
    except (DuoMalformedReply, DuoUnknownAnswer):
        return
    assert result.result in (("allow", "deny", "waiting") if waiting else ("allow", "deny"))
    assert isinstance(result.status, str) and isinstance(result.status_msg, str)


# -- a function as the transport -----------------------------------------------------------------

class FunctionTransport:
    """A transport that is a function: records each request (decoded) and answers from a script.

    Each answer is ``(status, headers, body)`` (a dict or list body is sent as JSON) or an
    exception instance to raise. ``close`` counts how often the client dropped its connection.
    """

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests = []
        self.closed = 0

    def __call__(self, method, host, path, headers, body, deadline):
        uri, _, query = path.partition("?")
        params = json.loads(body) if body is not None else dict(urllib.parse.parse_qsl(query))
        self.requests.append({"method": method, "host": host, "path": uri, "params": params, "headers": headers,
                              "body": body, "deadline": deadline})
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        status, reply_headers, reply_body = answer
        if not isinstance(reply_body, bytes):
            reply_body = json.dumps(reply_body).encode()
        return status, reply_headers, reply_body

    def close(self):
        self.closed += 1

    @property
    def sent(self):
        return [(r["method"], r["path"], r["params"]) for r in self.requests]


def ok(response):
    return 200, {}, {"stat": "OK", "response": response}


def fail(status, code, message="Received error", **extra):
    return status, {}, dict({"stat": "FAIL", "code": code, "message": message}, **extra)


def client_with(*answers, clock=None):
    transport = FunctionTransport(*answers)
    return DuoClient(SETTINGS, clock=clock or FakeClock(), sleep=lambda s: None, transport=transport), transport


# -- the requests, signed by duo-client -------------------------------------------------------------

@pytest.mark.parametrize("method,path,params", [
    ("POST", "/auth/v2/auth", {"username": "alice", "factor": "push", "device": "auto", "async": "1",
                               "pushinfo": "Server=h%C3%B6st&Command=ls+-l", "ipaddr": "203.0.113.5"}),
    ("GET", "/auth/v2/auth_status", {"txid": "4b7c-ü ~&="}),
    ("GET", "/auth/v2/check", {}),
    ("GET", "/admin/v1/users", {"username": "a b", "limit": "300", "offset": "0"}),
])
def test_requests_are_the_ones_duo_client_builds_and_signs(monkeypatch, method, path, params):
    """Our request is byte for byte what duo-client's own ``Client.api_call`` would send."""
    import duo_client.client

    now = 1_800_000_000.0
    captured = []

    class Capture(duo_client.client.Client):
        def _make_request(self, method, uri, body, headers):
            captured.append((uri, body, {k.decode(): v.decode() for k, v in headers.items()}))
            return None, None

    monkeypatch.setattr(duo_client.client.email.utils, "formatdate", lambda *a, **k: http_date(now))
    Capture(SETTINGS.ikey, SETTINGS.skey, SETTINGS.host).api_call(method, path, dict(params))
    ((want_uri, want_body, want_headers),) = captured

    transport = FunctionTransport(ok({}))
    client = DuoClient(SETTINGS, clock=FakeClock(), transport=transport, wall_clock=lambda: now)
    client.call(method, path, dict(params))
    (request,) = transport.requests
    assert request["host"] == SETTINGS.host
    uri = request["path"] + ("?" + urllib.parse.urlencode(request["params"]) if method == "GET" else "")
    assert uri == want_uri
    assert request["body"] == (want_body.encode() if want_body is not None else None)
    assert {k.lower(): v for k, v in request["headers"].items()} == {k.lower(): v for k, v in want_headers.items()}
    assert request["headers"]["Authorization"].startswith("Basic ")


UNUSED_BY_THE_LOGIN = ("http", "http.client", "email", "email.utils", "argparse", "urllib.request", "random", "threading",
                       "ipaddress")


def in_a_fresh_interpreter(code: str) -> str:
    """``code``'s output in ``python3 -I`` with this tree and duo-client importable (no threads: as in pam_python)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    site = [p for p in sys.path if p.endswith("site-packages")]
    prelude = "import sys; sys.path[:0] = sys.argv[1:]\n"
    out = subprocess.run([sys.executable, "-I", "-c", prelude + code, root, *site], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_pytz_where_installed_is_not_imported_to_sign(tmp_path):
    """duo-client imports pytz when it is there (Debian's python3-tz), for time zones this product never signs with."""
    fake = tmp_path / "pytz"
    fake.mkdir()
    (fake / "__init__.py").write_text("def timezone(name):\n    return 'zone ' + name\n")
    out = in_a_fresh_interpreter(
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from pam_duo_py import duo\n"
        "client = duo.duo_client_module()\n"
        "print('pytz' in sys.modules)\n"
        "print(client.pytz.timezone('Europe/Berlin'), 'pytz' in sys.modules)\n")
    assert out.splitlines() == ["False", "zone Europe/Berlin True"]


def test_signing_does_not_import_what_only_duo_clients_unused_paths_need():
    out = in_a_fresh_interpreter(
        "from pam_duo_py import duo\n"
        "client = duo.duo_client_module()\n"
        f"print(sorted(m for m in {UNUSED_BY_THE_LOGIN!r} if m in sys.modules))\n"
        # duo-client's own code paths still work when something calls them: the real modules come then
        "print(client.email.utils.formatdate(0), client.http.client.HTTPConnection.default_port,\n"
        "      client.argparse.ArgumentParser.__name__, 0 <= client.random.uniform(0, 1) <= 1)\n"
        "print(type(sys.modules['http.client']) is type(sys) and sys.modules['email.utils'].formatdate is not None)\n"
        # urllib.parse, imported with duo-client, still checks an IPv6 host with the real ipaddress
        "import urllib.parse\n"
        "print(urllib.parse.urlsplit('https://[::1]:8443/x').hostname, type(sys.modules['ipaddress']) is type(sys))\n"
        "try:\n"
        "    urllib.parse.urlsplit('https://[::zz]/')\n"
        "except ValueError:\n"
        "    print('refused')\n")
    imported, used, real, ipv6, bad = out.splitlines()
    assert imported == "[]"
    assert used == "Thu, 01 Jan 1970 00:00:00 -0000 80 ArgumentParser True"
    assert real == "True"  # the real modules, imported on first use
    assert (ipv6, bad) == ("::1 True", "refused")


def test_the_engine_imports_neither_the_duo_client_nor_ssl():
    out = in_a_fresh_interpreter(
        "import pam_duo_py.engine\n"
        "print(sorted(m for m in ('ssl', '_ssl', 'socket', 'http.client', 'urllib.parse', 'pam_duo_py.duo',\n"
        "                         'pam_duo_py.transport') if m in sys.modules))\n")
    assert out == "[]"


def test_the_login_path_does_not_import_what_only_duo_clients_unused_paths_need():
    out = in_a_fresh_interpreter(
        "from pam_duo_py import duo, login, pam\n"
        "from pam_duo_py.config import DuoSettings, DuoIdentity\n"
        "settings = DuoSettings(ikey='DIABCDEFGHIJKLMNOPQR', skey='S' * 40, host='api-test.duosecurity.com',\n"
        "                       port=None, ca_file=None, proxy=None, timeout=1.0)\n"
        "replies = iter([(200, {'date': 'Wed, 02 Dec 2026 15:04:05 GMT'}, b'{\"stat\": \"OK\", \"response\": "
        "{\"result\": \"allow\"}}')])\n"
        "client = duo.DuoClient(settings, transport=lambda *request: next(replies))\n"
        "print(client.preauth(DuoIdentity(username='a'), ipaddr=None, hostname=None, verified_push=False).result)\n"
        f"print(sorted(m for m in {UNUSED_BY_THE_LOGIN!r} if m in sys.modules))\n")
    assert out.splitlines() == ["allow", "[]"]


# -- error mapping -----------------------------------------------------------------------------

@pytest.mark.parametrize("status,data,cls,code", [
    (401, {"stat": "FAIL", "code": 40103, "message": "Invalid signature in request credentials"},
     DuoCredentialsRejected, 40103),
    (401, {"stat": "FAIL", "code": 40105, "message": "Request has an invalid timestamp"}, DuoCredentialsRejected, 40105),
    (401, b"Unauthorized", DuoCredentialsRejected, None),
    (401, b"\xff\xfe not UTF-8", DuoCredentialsRejected, None),
    (429, {"stat": "FAIL", "code": 42901, "message": "Too Many Requests"}, DuoRateLimited, 42901),
    (403, {"stat": "FAIL", "code": 40301, "message": "Access forbidden"}, DuoRefused, 40301),
    (400, {"stat": "FAIL", "code": 40002, "message": "Invalid request parameters", "message_detail": "username"},
     DuoRefused, 40002),
    (404, b"Not Found", DuoRefused, None),
    (500, {"stat": "FAIL", "code": 50000, "message": "Internal server error"}, DuoUnavailable, 50000),
    (502, b"<html>Bad gateway</html>", DuoUnavailable, None),
    (503, b"", DuoUnavailable, None),
    (200, b"this is not JSON", DuoMalformedReply, None),
    (200, b"\xff\xfe", DuoMalformedReply, None),
    (200, b"[" * 5000 + b"]" * 5000, DuoMalformedReply, None),
    (200, {"stat": "FAIL", "code": 40002}, DuoMalformedReply, None),
    (200, {"stat": "OK"}, DuoMalformedReply, None),
    (200, ["stat", "OK"], DuoMalformedReply, None),
    (401, {"code": True}, DuoCredentialsRejected, None),
])
def test_http_error_mapping(status, data, cls, code):
    client, transport = client_with((status, {}, data))
    with pytest.raises(DuoError) as info:
        client.call("GET", "/auth/v2/check", {})
    error = info.value
    assert type(error) is cls
    assert error.status == status
    assert error.code == code
    assert f"HTTP {status}" in str(error)
    if isinstance(data, dict) and "message" in data:
        assert data["message"] in str(error)
    assert transport.closed, "the connection is dropped after an error reply"


def test_refusals_and_unavailability_are_distinct_classes():
    client, _ = client_with((500, {}, b""))
    with pytest.raises(DuoUnavailable) as info:
        client.check()
    assert not isinstance(info.value, DuoRefused)
    for status in (401, 403, 429, 400):
        client, _ = client_with((status, {}, b""))
        with pytest.raises(DuoRefused) as info:
            client.check()
        assert not isinstance(info.value, DuoUnavailable)


def test_clock_skew_401_reports_the_offset_from_the_replys_date():
    ahead = email.utils.formatdate(time.time() + 312.4, usegmt=True)
    client, _ = client_with((401, {"Date": "x", "date": ahead}, {"stat": "FAIL", "code": 40105,
                                                                  "message": "invalid timestamp"}))
    with pytest.raises(DuoCredentialsRejected) as info:
        client.check()
    assert "+312 s" in str(info.value) or "+311 s" in str(info.value) or "+313 s" in str(info.value)
    assert client.server_time_offset == pytest.approx(312, abs=1.5)


@pytest.mark.parametrize("raised,cls", [
    (TimeoutError("timed out"), DuoTimeout),
    (socket.timeout("timed out"), DuoTimeout),
    (ConnectionRefusedError(111, "Connection refused"), DuoUnavailable),
    (ConnectionResetError(104, "reset"), DuoUnavailable),
    (socket.gaierror(-2, "Name or service not known"), DuoUnavailable),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), DuoUnavailable),
    (ssl.SSLError(1, "wrong version number"), DuoUnavailable),
    (BadReply("bad status line"), DuoUnavailable),
    (BadReply("reply body cut short (3 of 10 bytes)"), DuoUnavailable),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"), DuoUnavailable),
    ((401, {}, {"stat": "FAIL", "code": 40103, "message": "x"}), DuoCredentialsRejected),
    ((429, {}, {"stat": "FAIL", "code": 42901, "message": "x"}), DuoRateLimited),
    ((503, {}, b""), DuoUnavailable),
    ((200, {}, b"garbage"), DuoMalformedReply),
])
def test_call_maps_every_failure_to_a_duo_error(raised, cls):
    client, transport = client_with(raised)
    with pytest.raises(DuoError) as info:
        client.call("POST", "/auth/v2/preauth", {"username": "alice"})
    assert type(info.value) is cls
    assert transport.closed, "the connection is dropped after a failure"


def test_a_failure_past_the_deadline_is_a_timeout_naming_its_cause():
    clock = FakeClock()

    def slow_lookup(method, host, path, headers, body, deadline):
        clock.advance(SETTINGS.timeout + 1)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    client = DuoClient(SETTINGS, clock=clock, transport=slow_lookup)
    with pytest.raises(DuoTimeout) as info:
        client.check()
    assert "timed out after 10 s (cannot resolve host: Temporary failure in name resolution)" in str(info.value)


def test_call_sets_a_deadline_per_call():
    clock = FakeClock()
    client, transport = client_with(ok({"time": 1}), clock=clock)
    client.call("GET", "/auth/v2/check", {})
    client.call("GET", "/auth/v2/auth_status", {"txid": "T"}, timeout=42.0)
    assert [r["deadline"] - clock() for r in transport.requests] == [pytest.approx(SETTINGS.timeout),
                                                                      pytest.approx(42.0)]
    assert clock.elapsed == 0


def test_metadata_is_kept_on_request():
    client, _ = client_with((200, {}, {"stat": "OK", "response": [1], "metadata": {"next_offset": 2}}))
    assert client.call("GET", "/admin/v1/users", {}, metadata=True) == ([1], {"next_offset": 2})
    client, _ = client_with((200, {}, {"stat": "OK", "response": {"a": 1, "metadata": {"next_offset": 3}}}))
    assert client.call("GET", "/admin/v1/x", {}, metadata=True) == ({"a": 1, "metadata": {"next_offset": 3}},
                                                                    {"next_offset": 3})
    assert client.call("GET", "/admin/v1/x", {}) == {"a": 1, "metadata": {"next_offset": 3}}


def test_preauth_sends_identity_address_hostname_and_verified_push():
    client, transport = client_with(ok({"result": "allow", "status_msg": "ok"}))
    assert client.preauth(DuoIdentity(username="alice"), ipaddr="203.0.113.5", hostname="server1",
                          verified_push=True) == Preauth("allow", "ok")
    client.preauth(DuoIdentity(user_id="DUABCDEFGHIJ01234567"), ipaddr=None, hostname=None, verified_push=False)
    assert transport.sent == [
        ("POST", "/auth/v2/preauth", {"username": "alice", "ipaddr": "203.0.113.5", "hostname": "server1",
                                      "client_supports_verified_push": "1"}),
        ("POST", "/auth/v2/preauth", {"user_id": "DUABCDEFGHIJ01234567"}),
    ]


@pytest.mark.parametrize("call,expected", [
    (lambda c, who: c.start_push(who, "D1", ipaddr="203.0.113.5", hostname="server1"),
     {"device": "D1", "async": "1", "factor": "push", "ipaddr": "203.0.113.5", "hostname": "server1"}),
    (lambda c, who: c.start_push(who, "D1", ipaddr=None, hostname=None,
                                 pushinfo=(("Server", "server1"), ("Command", "ls -l & rm")), txid="PRE-TX1"),
     {"device": "D1", "async": "1", "factor": "push", "txid": "PRE-TX1",
      "pushinfo": "Server=server1&Command=ls+-l+%26+rm"}),
    (lambda c, who: c.start_phone(who, "D2", ipaddr=None, hostname="server1"),
     {"device": "D2", "async": "1", "factor": "phone", "hostname": "server1"}),
])
def test_async_auth_calls_send_duos_parameters(call, expected):
    client, transport = client_with(ok({"txid": "TX1"}))
    assert call(client, DuoIdentity(username="alice")) == AuthStarted("TX1")
    assert transport.sent == [("POST", "/auth/v2/auth", dict(expected, username="alice"))]
    client, _ = client_with(ok(["not", "an", "object"]))
    with pytest.raises(DuoMalformedReply):
        call(client, DuoIdentity(username="alice"))
    assert client.calls[-1][2] == "malformed"


def test_sync_auth_calls_send_duos_parameters():
    client, transport = client_with(ok({"result": "deny", "status": "sent", "status_msg": "New SMS passcodes sent"}),
                                    ok({"result": "deny", "status": "sent", "status_msg": ""}),
                                    ok({"result": "allow", "status": "allow", "status_msg": "Success"}),
                                    ok({"result": "waiting", "status": "pushed"}))
    who = DuoIdentity(user_id="DUABCDEFGHIJ01234567")
    assert client.send_sms(who, None, ipaddr="203.0.113.5", hostname=None) == \
        AuthResult("deny", "sent", "New SMS passcodes sent")
    assert client.send_sms(who, "D1", ipaddr=None, hostname=None).status == "sent"
    assert client.check_passcode(who, "123456", ipaddr=None, hostname="server1").result == "allow"
    with pytest.raises(DuoUnknownAnswer):  # a synchronous call never waits
        client.check_passcode(who, "123456", ipaddr=None, hostname=None)
    assert transport.sent[:3] == [
        ("POST", "/auth/v2/auth", {"user_id": "DUABCDEFGHIJ01234567", "device": "auto", "async": "0", "factor": "sms",
                                   "ipaddr": "203.0.113.5"}),
        ("POST", "/auth/v2/auth", {"user_id": "DUABCDEFGHIJ01234567", "device": "D1", "async": "0", "factor": "sms"}),
        ("POST", "/auth/v2/auth", {"user_id": "DUABCDEFGHIJ01234567", "passcode": "123456", "async": "0",
                                   "factor": "passcode", "hostname": "server1"}),
    ]


def test_auth_status_uses_the_given_timeout():
    clock = FakeClock()
    client, transport = client_with(ok({"result": "waiting", "status": "pushed", "status_msg": ""}), clock=clock)
    assert client.auth_status("TX1", timeout=7.5) == AuthResult("waiting", "pushed", "")
    assert transport.sent == [("GET", "/auth/v2/auth_status", {"txid": "TX1"})]
    assert transport.requests[0]["deadline"] - clock() == pytest.approx(7.5)


def test_ping_and_check():
    client, transport = client_with(ok("pong"))
    assert client.ping(5.0) and client.take_calls() == []
    client, transport = client_with(ok({"time": 1_700_000_000}))
    assert client.check() == 1_700_000_000
    client, transport = client_with(ConnectionResetError(104, "reset"))
    assert not client.ping(5.0) and transport.closed


# -- 429 waits fit into the deadline -----------------------------------------------------------

def rate_limited(answers):
    """RateLimitWaits over a function answering ``answers`` (status or (status, headers)) one by one."""
    clock = FakeClock()
    sleeps = []
    sent = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock.advance(seconds)

    def send(method, host, path, headers, body, deadline):
        sent.append(path)
        answer = answers[min(len(sent), len(answers)) - 1]
        status, head = answer if isinstance(answer, tuple) else (answer, {})
        return status, head, b"{}"

    waits = RateLimitWaits(send, clock=clock, sleep=sleep)
    return (lambda: waits("POST", SETTINGS.host, "/auth/v2/preauth", {}, b"", clock() + SETTINGS.timeout)[0]), \
        sent, sleeps


def test_429_with_retry_after_inside_the_deadline_is_retried():
    send, sent, sleeps = rate_limited([(429, {"retry-after": "2"}), 200])
    assert send() == 200 and len(sent) == 2 and sleeps == [2.0]


def test_429_with_retry_after_past_the_deadline_gives_up_without_waiting():
    send, sent, sleeps = rate_limited([(429, {"retry-after": "60"}), 200])
    assert send() == 429 and len(sent) == 1 and sleeps == []


def test_429_without_retry_after_backs_off_within_the_deadline():
    send, sent, sleeps = rate_limited([429])
    assert send() == 429
    assert sleeps == [1.0, 2.0, 4.0]  # 8 more would pass the 10 s deadline
    assert sum(sleeps) < SETTINGS.timeout
    assert len(sent) <= transport_mod.MAX_RATE_LIMIT_RETRIES + 1


@pytest.mark.parametrize("headers,expected_sleeps", [
    ({"retry-after": "3"}, [3.0]),
    ({"x-retry-after": "3"}, [3.0]),  # what Duo's own mock server sends
    ({"retry-after": "2", "x-retry-after": "5"}, [2.0]),
    ({}, [1.0]),
])
def test_429_header_variants_once(headers, expected_sleeps):
    send, sent, sleeps = rate_limited([(429, headers), 200])
    assert send() == 200 and len(sent) == 2 and sleeps == expected_sleeps


def test_429_x_retry_after_http_date_is_waited_for():
    send, sent, sleeps = rate_limited([(429, {"x-retry-after": email.utils.formatdate(time.time() + 4, usegmt=True)}),
                                       200])
    assert send() == 200 and len(sleeps) == 1 and 2.5 <= sleeps[0] <= 4.0


def test_429_x_retry_after_past_the_deadline_gives_up_without_waiting():
    send, sent, sleeps = rate_limited([(429, {"x-retry-after": "60"}), 200])
    assert send() == 429 and len(sent) == 1 and sleeps == []


def test_429_backoff_doubles_and_never_passes_the_deadline():
    send, sent, sleeps = rate_limited([429] * 3 + [200])
    assert send() == 200 and sleeps == [1.0, 2.0, 4.0] and len(sent) == 4


def test_the_real_transport_waits_on_429_before_the_adapter_maps_it():
    client = DuoClient(SETTINGS)
    assert isinstance(client.transport, RateLimitWaits)


def test_duo_message_detail_goes_into_the_error_text():
    client, _ = client_with(fail(400, 40002, "Invalid request parameters", message_detail="username"))
    with pytest.raises(DuoRefused) as info:
        client.check()
    assert str(info.value) == "HTTP 400 code 40002: Invalid request parameters (username)"


@pytest.mark.parametrize("status", [401, 403, 429])
def test_a_refusal_whose_body_is_not_utf8_is_still_a_refusal(status):
    """A proxy or load balancer may answer 4xx with any bytes: Duo's (or its front's) refusal never
    becomes "Duo unreachable", which failmode = "safe" would let in."""
    from fakes import FakePrompter
    from pam_duo_py.config import AuthSettings
    from pam_duo_py.engine import Engine, Login, Result

    client, _ = client_with((status, {}, b"\xff\xfe<html>\x9c</html>"))
    with pytest.raises(DuoRefused) as info:
        client.preauth(DuoIdentity(username="alice"), ipaddr=None, hostname=None, verified_push=False)
    assert info.value.status == status and not isinstance(info.value, DuoUnavailable)
    client, _ = client_with((status, {}, b"\xff\xfe<html>\x9c</html>"))
    engine = Engine(AuthSettings(failmode="safe"), client, FakePrompter([]), clock=FakeClock(), sleep=lambda s: None)
    outcome = engine.run(Login(user="alice", identity=DuoIdentity(username="alice"), service="sshd", interactive=False))
    assert outcome.result is Result.AUTHINFO_UNAVAIL


def test_threads_asking_at_once_all_get_the_whole_signing_module(monkeypatch):
    """The broker's login threads may sign their first requests at the same moment."""
    import sys
    import threading

    from pam_duo_py import duo

    errors = []
    for _ in range(5):
        monkeypatch.setattr(duo, "_client", None, raising=False)
        for name in [n for n in sys.modules if n.startswith("pam_duo_py._duo_client")]:
            monkeypatch.delitem(sys.modules, name)
        start = threading.Barrier(16)

        def sign_first_request():
            start.wait()
            try:
                client = duo.duo_client_module()
                assert callable(client.sign) and callable(client.Client.canon_json)
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=sign_first_request) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_concurrent_first_logins_in_the_broker_all_get_the_whole_duo_client_module():
    """A broker that has just started may sign its first requests in several threads at once."""
    out = in_a_fresh_interpreter(
        "import importlib.machinery, threading, time\n"
        "inside = threading.Event()\n"
        "class Slow:  # holds the first thread inside the module's execution while the others arrive\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name != 'pam_duo_py._duo_client.client':\n"
        "            return None\n"
        "        spec = importlib.machinery.PathFinder.find_spec(name, path)\n"
        "        run = spec.loader.exec_module\n"
        "        def slow(module):\n"
        "            inside.set()\n"
        "            time.sleep(0.3)  # widens the window, synchronises nothing\n"
        "            run(module)\n"
        "        spec.loader.exec_module = slow\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Slow)\n"
        "from pam_duo_py import duo\n"
        "problems = []\n"
        "def first_login():\n"
        "    try:\n"
        "        duo.duo_client_module().Client\n"
        "    except Exception as exc:\n"
        "        problems.append(type(exc).__name__)\n"
        "threads = [threading.Thread(target=first_login) for _ in range(4)]\n"
        "threads[0].start()\n"
        "inside.wait(10)\n"
        "for t in threads[1:]: t.start()\n"
        "for t in threads: t.join()\n"
        "print(problems)\n")
    assert out == "[]"


def test_without_a_ca_file_the_connection_pins_duo_clients_own_bundle() -> None:
    from pam_duo_py.duo import duo_client_module

    client = DuoClient(SETTINGS)
    bundle = client._https._default_ca_file()
    assert bundle == duo_client_module().DEFAULT_CA_CERTS and os.path.isfile(bundle)
    assert client._https._ca_file is None
