"""The Duo client layer without any socket: reply parsing, error mapping, Retry-After, 429 waits."""
from __future__ import annotations

import email.utils
import http.client
import os
import socket
import ssl
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes import FakeClock
from pam_duo_py import duo as duo_mod
from pam_duo_py import replies
from pam_duo_py.config import DuoIdentity, DuoSettings
from pam_duo_py.duo import DuoClient, retry_after_seconds
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


# -- error mapping -----------------------------------------------------------------------------

def duo_runtime_error(status, reason="", data=None, message="Received error"):
    """A RuntimeError shaped like the ones duo_client raises."""
    error = RuntimeError(message)
    error.status = status
    error.reason = reason
    error.data = data
    return error


@pytest.fixture
def client():
    c = DuoClient(SETTINGS, clock=FakeClock(), sleep=lambda s: None)
    yield c
    c.close()


@pytest.mark.parametrize("status,data,cls,code", [
    (401, {"stat": "FAIL", "code": 40103, "message": "Invalid signature in request credentials"},
     DuoCredentialsRejected, 40103),
    (401, {"stat": "FAIL", "code": 40105, "message": "Request has an invalid timestamp"}, DuoCredentialsRejected, 40105),
    (401, "Unauthorized", DuoCredentialsRejected, None),
    (429, {"stat": "FAIL", "code": 42901, "message": "Too Many Requests"}, DuoRateLimited, 42901),
    (403, {"stat": "FAIL", "code": 40301, "message": "Access forbidden"}, DuoRefused, 40301),
    (400, {"stat": "FAIL", "code": 40002, "message": "Invalid request parameters", "message_detail": "username"},
     DuoRefused, 40002),
    (404, "Not Found", DuoRefused, None),
    (500, {"stat": "FAIL", "code": 50000, "message": "Internal server error"}, DuoUnavailable, 50000),
    (502, "<html>Bad gateway</html>", DuoUnavailable, None),
    (503, None, DuoUnavailable, None),
    (200, "this is not JSON", DuoMalformedReply, None),
    (200, {"stat": "FAIL", "code": 40002}, DuoMalformedReply, None),
    (None, None, DuoMalformedReply, None),
    (401, {"code": True}, DuoCredentialsRejected, None),
])
def test_http_error_mapping(client, status, data, cls, code):
    error = client._http_error(duo_runtime_error(status, "Reason", data))
    assert type(error) is cls
    assert error.status == status
    assert error.code == code
    if status is not None:
        assert f"HTTP {status}" in str(error)
    if isinstance(data, dict) and "message" in data:
        assert data["message"] in str(error)


def test_refusals_and_unavailability_are_distinct_classes(client):
    assert not isinstance(client._http_error(duo_runtime_error(500)), DuoRefused)
    for status in (401, 403, 429, 400):
        assert not isinstance(client._http_error(duo_runtime_error(status)), DuoUnavailable)


def test_clock_skew_401_reports_the_offset_when_known(client):
    client._auth.server_time_offset = 312.4
    error = client._http_error(duo_runtime_error(401, data={"code": 40105, "message": "invalid timestamp"}))
    assert isinstance(error, DuoCredentialsRejected) and "+312 s" in str(error)


# -- DuoClient.call without a network ----------------------------------------------------------

class Recorder:
    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = []

    def __call__(self, method, path, params):
        self.calls.append((method, path, dict(params)))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("raised,cls", [
    (TimeoutError("timed out"), DuoTimeout),
    (socket.timeout("timed out"), DuoTimeout),
    (ConnectionRefusedError(111, "Connection refused"), DuoUnavailable),
    (ConnectionResetError(104, "reset"), DuoUnavailable),
    (socket.gaierror(-2, "Name or service not known"), DuoUnavailable),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), DuoUnavailable),
    (ssl.SSLError(1, "wrong version number"), DuoUnavailable),
    (http.client.BadStatusLine("garbage"), DuoUnavailable),
    (http.client.IncompleteRead(b"par"), DuoUnavailable),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"), DuoUnavailable),
    (duo_runtime_error(401, data={"code": 40103}), DuoCredentialsRejected),
    (duo_runtime_error(429, data={"code": 42901}), DuoRateLimited),
    (duo_runtime_error(503), DuoUnavailable),
    (duo_runtime_error(200, data="garbage"), DuoMalformedReply),
])
def test_call_maps_every_failure_to_a_duo_error(client, monkeypatch, raised, cls):
    closed = []
    monkeypatch.setattr(client._auth, "json_api_call", Recorder(raised))
    monkeypatch.setattr(client._auth, "close", lambda: closed.append(1))
    with pytest.raises(DuoError) as info:
        client.call("POST", "/auth/v2/preauth", {"username": "alice"})
    assert type(info.value) is cls
    assert closed, "the connection is dropped after a failure"


def test_call_sets_a_deadline_per_call(client, monkeypatch):
    clock = client._clock
    seen = []

    def json_api_call(method, path, params):
        seen.append(client._auth.remaining())
        return {"time": 1}

    monkeypatch.setattr(client._auth, "json_api_call", json_api_call)
    client.call("GET", "/auth/v2/check", {})
    client.call("GET", "/auth/v2/auth_status", {"txid": "T"}, timeout=42.0)
    assert seen == [pytest.approx(SETTINGS.timeout), pytest.approx(42.0)]
    assert clock.elapsed == 0


def test_preauth_sends_identity_address_hostname_and_verified_push(client, monkeypatch):
    recorder = Recorder({"result": "allow", "status_msg": "ok"})
    monkeypatch.setattr(client._auth, "json_api_call", recorder)
    assert client.preauth(DuoIdentity(username="alice"), ipaddr="203.0.113.5", hostname="server1",
                          verified_push=True) == Preauth("allow", "ok")
    client.preauth(DuoIdentity(user_id="DUABCDEFGHIJ01234567"), ipaddr=None, hostname=None, verified_push=False)
    assert recorder.calls == [
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
def test_async_auth_calls_send_duos_parameters(client, monkeypatch, call, expected):
    recorder = Recorder({"txid": "TX1"})
    monkeypatch.setattr(client._auth, "json_api_call", recorder)
    assert call(client, DuoIdentity(username="alice")) == AuthStarted("TX1")
    assert recorder.calls == [("POST", "/auth/v2/auth", dict(expected, username="alice"))]
    monkeypatch.setattr(client._auth, "json_api_call", Recorder(["not", "an", "object"]))
    with pytest.raises(DuoMalformedReply):
        call(client, DuoIdentity(username="alice"))


def test_sync_auth_calls_send_duos_parameters(client, monkeypatch):
    recorder = Recorder({"result": "deny", "status": "sent", "status_msg": "New SMS passcodes sent"})
    monkeypatch.setattr(client._auth, "json_api_call", recorder)
    who = DuoIdentity(user_id="DUABCDEFGHIJ01234567")
    assert client.send_sms(who, None, ipaddr="203.0.113.5", hostname=None) == \
        AuthResult("deny", "sent", "New SMS passcodes sent")
    assert client.send_sms(who, "D1", ipaddr=None, hostname=None).status == "sent"
    recorder.outcome = {"result": "allow", "status": "allow", "status_msg": "Success"}
    assert client.check_passcode(who, "123456", ipaddr=None, hostname="server1").result == "allow"
    assert recorder.calls == [
        ("POST", "/auth/v2/auth", {"user_id": "DUABCDEFGHIJ01234567", "device": "auto", "async": "0", "factor": "sms",
                                   "ipaddr": "203.0.113.5"}),
        ("POST", "/auth/v2/auth", {"user_id": "DUABCDEFGHIJ01234567", "device": "D1", "async": "0", "factor": "sms"}),
        ("POST", "/auth/v2/auth", {"user_id": "DUABCDEFGHIJ01234567", "passcode": "123456", "async": "0",
                                   "factor": "passcode", "hostname": "server1"}),
    ]
    recorder.outcome = {"result": "waiting", "status": "pushed"}  # a synchronous call never waits
    with pytest.raises(DuoUnknownAnswer):
        client.check_passcode(who, "123456", ipaddr=None, hostname=None)


def test_auth_status_uses_the_given_timeout(client, monkeypatch):
    seen = []

    def json_api_call(method, path, params):
        seen.append((method, path, params, client._auth.remaining()))
        return {"result": "waiting", "status": "pushed", "status_msg": ""}

    monkeypatch.setattr(client._auth, "json_api_call", json_api_call)
    assert client.auth_status("TX1", timeout=7.5) == AuthResult("waiting", "pushed", "")
    assert seen == [("GET", "/auth/v2/auth_status", {"txid": "TX1"}, pytest.approx(7.5))]


# -- 429 waits fit into the deadline -----------------------------------------------------------

class Response:
    def __init__(self, status, retry_after=None):
        self.status = status
        self.headers = {"Retry-After": retry_after} if retry_after is not None else {}

    def getheader(self, name, default=None):
        return self.headers.get(name, default)


def rate_limited_client(responses):
    clock = FakeClock()
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock.advance(seconds)

    client = DuoClient(SETTINGS, clock=clock, sleep=sleep)
    sent = []

    def send(method, uri, body, headers):
        sent.append(uri)
        return responses[min(len(sent), len(responses)) - 1], b"{}"

    client._auth._send = send
    client._auth.deadline = clock() + SETTINGS.timeout
    return client, sent, sleeps


def test_429_with_retry_after_inside_the_deadline_is_retried():
    client, sent, sleeps = rate_limited_client([Response(429, "2"), Response(200)])
    response, _ = client._auth._make_request("POST", "/auth/v2/preauth", "", {})
    assert response.status == 200 and len(sent) == 2 and sleeps == [2.0]


def test_429_with_retry_after_past_the_deadline_gives_up_without_waiting():
    client, sent, sleeps = rate_limited_client([Response(429, "60"), Response(200)])
    response, _ = client._auth._make_request("POST", "/auth/v2/preauth", "", {})
    assert response.status == 429 and len(sent) == 1 and sleeps == []


def test_429_without_retry_after_backs_off_within_the_deadline():
    client, sent, sleeps = rate_limited_client([Response(429)])
    response, _ = client._auth._make_request("POST", "/auth/v2/preauth", "", {})
    assert response.status == 429
    assert sleeps == [1.0, 2.0, 4.0]  # 8 more would pass the 10 s deadline
    assert sum(sleeps) < SETTINGS.timeout
    assert len(sent) <= duo_mod.MAX_RATE_LIMIT_RETRIES + 1


class HeaderResponse(Response):
    def __init__(self, status, **headers):
        self.status = status
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}


@pytest.mark.parametrize("headers,expected_sleeps", [
    ({"Retry-After": "3"}, [3.0]),
    ({"X-Retry-After": "3"}, [3.0]),  # what Duo's own mock server sends
    ({"Retry-After": "2", "X-Retry-After": "5"}, [2.0]),
    ({}, [1.0]),
])
def test_429_header_variants_once(headers, expected_sleeps):
    first = HeaderResponse(429)
    first.headers = dict(headers)
    client, sent, sleeps = rate_limited_client([first, Response(200)])
    response, _ = client._auth._make_request("POST", "/auth/v2/preauth", "", {})
    assert response.status == 200 and len(sent) == 2 and sleeps == expected_sleeps


def test_429_x_retry_after_http_date_is_waited_for():
    first = HeaderResponse(429)
    first.headers = {"X-Retry-After": email.utils.formatdate(time.time() + 4, usegmt=True)}
    client, sent, sleeps = rate_limited_client([first, Response(200)])
    response, _ = client._auth._make_request("POST", "/auth/v2/preauth", "", {})
    assert response.status == 200 and len(sleeps) == 1 and 2.5 <= sleeps[0] <= 4.0


def test_429_x_retry_after_past_the_deadline_gives_up_without_waiting():
    first = HeaderResponse(429)
    first.headers = {"X-Retry-After": "60"}
    client, sent, sleeps = rate_limited_client([first, Response(200)])
    response, _ = client._auth._make_request("POST", "/auth/v2/preauth", "", {})
    assert response.status == 429 and len(sent) == 1 and sleeps == []


def test_429_backoff_doubles_and_never_passes_the_deadline():
    client, sent, sleeps = rate_limited_client([Response(429)] * 3 + [Response(200)])
    response, _ = client._auth._make_request("POST", "/auth/v2/preauth", "", {})
    assert response.status == 200 and sleeps == [1.0, 2.0, 4.0] and len(sent) == 4


def test_duo_message_detail_goes_into_the_error_text():
    client = DuoClient(SETTINGS)
    error = client._http_error(duo_runtime_error(400, data={"stat": "FAIL", "code": 40002,
                                                            "message": "Invalid request parameters",
                                                            "message_detail": "username"}))
    assert isinstance(error, DuoRefused)
    assert str(error) == "HTTP 400 code 40002: Invalid request parameters (username)"
