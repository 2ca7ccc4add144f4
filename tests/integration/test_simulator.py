"""The local Duo simulator, driven by the real duo_client 5.7.0 over loopback HTTPS."""
from __future__ import annotations

import email.utils
import http.client
import json
import os
import pathlib
import re
import select
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import tomllib
import urllib.parse
from typing import Any, Dict, Iterator, List

import pytest

import duo_client
from duo_client import client as duo_client_module
from duo_client.https_wrapper import InvalidCertificateException

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pam_duo_sim.simulator import Simulator  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning"),
]

OTP = "cccccc" + ("bdefghijklnrtuv" * 3)[:38]
_real_formatdate = email.utils.formatdate


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    s = Simulator(tmp_path_factory.mktemp("sim"), approve_delay=0.2, long_poll=10.0)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def aux_state(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("aux")


@pytest.fixture
def make_sim(aux_state: pathlib.Path) -> Iterator[Any]:
    """Start extra simulators (sharing one state dir, so certificates are made once)."""
    started: List[Simulator] = []

    def make(**kw: Any) -> Simulator:
        s = Simulator(aux_state, **kw)
        s.start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def client(sim: Simulator, *, ikey: str = "", skey: str = "", ca: Any = None,
           timeout: float = 5) -> duo_client.Auth:
    return duo_client.Auth(ikey or sim.ikey, skey or sim.skey, host="localhost", port=sim.port,
                           ca_certs=str(ca or sim.ca_file), timeout=timeout)


def duo_error(excinfo: pytest.ExceptionInfo) -> int:
    assert isinstance(excinfo.value.data, dict), excinfo.value
    return excinfo.value.data["code"]


def events(sim: Simulator) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in sim.request_log.read_text().splitlines()]


def https(sim: Simulator) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(sim.ca_file))
    return http.client.HTTPSConnection("localhost", sim.port, context=ctx, timeout=5)


def signed_request(sim: Simulator, conn: http.client.HTTPConnection, method: str, path: str,
                   params: Dict[str, str], headers: Dict[str, str] | None = None
                   ) -> http.client.HTTPResponse:
    """Send one request signed by duo_client's own signing code on an open connection."""
    date = email.utils.formatdate()
    if method == "POST":
        body, canon, uri = duo_client.client.Client.canon_json(params), {}, path
    else:
        body, canon = "", duo_client_module.normalize_params(params)
        uri = path + "?" + urllib.parse.urlencode(params)
    auth = duo_client_module.sign(sim.ikey, sim.skey, method, "localhost", uri.split("?")[0],
                                  date, 5, canon, body=body)
    hdrs = {"Date": date, "Authorization": auth, "Content-Type": "application/json"}
    hdrs.update(headers or {})
    conn.request(method, uri, body=body.encode() if method == "POST" else None, headers=hdrs)
    return conn.getresponse()


def test_ping_and_check(sim: Simulator) -> None:
    c = client(sim)
    assert abs(c.ping()["time"] - time.time()) < 5
    assert abs(c.check()["time"] - time.time()) < 5


def test_preauth_shapes(sim: Simulator) -> None:
    c = client(sim)
    assert c.preauth(username="allow-me") == {"result": "allow",
                                               "status_msg": "Allowing unknown user"}
    deny = c.preauth(username="deny1")
    assert deny == {"result": "deny",
                    "status_msg": "Your account is disabled. Contact your administrator."}
    enroll = c.preauth(username="enroll")
    assert enroll["result"] == "enroll"
    assert enroll["enroll_portal_url"].startswith("https://localhost/portal?code=")
    alice = c.preauth(username="alice", ipaddr="203.0.113.5")
    assert alice["result"] == "auth" and alice["status_msg"] == "Account is active"
    assert [d["device"] for d in alice["devices"]] == [
        "DPFZRS9FB0D46QFTM891", "DPFZRS9FB0D46QFTM892", "DHIXXXXXXXXXXXXXXXXX"]
    assert alice["devices"][0]["capabilities"] == ["auto", "push", "sms", "phone", "mobile_otp"]
    assert "capabilities" not in alice["devices"][2]
    assert c.preauth(user_id="DU" + "A" * 18) == alice
    assert [d["type"] for d in c.preauth(username="tokenonly")["devices"]] == ["token"]
    assert c.preauth(username="onedevice")["devices"][0]["capabilities"] == ["auto", "push"]


def test_parameter_errors(sim: Simulator) -> None:
    c = client(sim)
    with pytest.raises(RuntimeError) as e:
        c.json_api_call("POST", "/auth/v2/preauth", {})
    assert e.value.status == 400 and duo_error(e) == 40001
    with pytest.raises(RuntimeError) as e:
        c.auth_status("no-such-txid")
    assert e.value.status == 400 and duo_error(e) == 40002
    with pytest.raises(RuntimeError) as e:
        c.auth("push", username="alice", device="DPNOSUCHDEVICE00000", async_txn=True)
    assert duo_error(e) == 40002
    with pytest.raises(RuntimeError) as e:
        c.json_api_call("GET", "/auth/v2/nope", {})
    assert e.value.status == 404 and duo_error(e) == 40400


def test_wrong_keys_refused(sim: Simulator) -> None:
    with pytest.raises(RuntimeError) as e:
        client(sim, skey="x" * 40).check()
    assert e.value.status == 401 and duo_error(e) == 40103
    assert e.value.data["message"] == "Invalid signature in request credentials"
    with pytest.raises(RuntimeError) as e:
        client(sim, ikey="DI" + "0" * 18).preauth(username="alice")
    assert e.value.status == 401 and duo_error(e) == 40102
    # ping is unsigned at Duo: it works even with bad keys
    assert "time" in client(sim, skey="x" * 40).ping()


def test_missing_credentials_and_date(sim: Simulator) -> None:
    conn = https(sim)
    conn.request("GET", "/auth/v2/check")
    resp = conn.getresponse()
    assert resp.status == 401 and json.loads(resp.read())["code"] == 40101
    good = signed_request(sim, conn, "GET", "/auth/v2/check", {})
    assert good.status == 200 and good.getheader("Date")
    good.read()
    auth = duo_client_module.sign(sim.ikey, sim.skey, "GET", "localhost", "/auth/v2/check",
                                  email.utils.formatdate(), 5, {}, body="")
    conn.request("GET", "/auth/v2/check?", headers={"Authorization": auth})
    resp = conn.getresponse()
    assert resp.status == 401 and json.loads(resp.read())["code"] == 40104
    conn.close()


def test_date_too_far(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(email.utils, "formatdate",
                        lambda *a, **k: _real_formatdate(time.time() - 3600))
    with pytest.raises(RuntimeError) as e:
        client(sim).check()
    assert e.value.status == 401 and duo_error(e) == 40105


def test_async_push_long_polls(sim: Simulator) -> None:
    c = client(sim)
    txid = c.auth("push", username="alice", device="auto", async_txn=True)["txid"]
    start = time.monotonic()
    status = c.auth_status(txid)
    elapsed = time.monotonic() - start
    assert status["success"] is True and status["status"] == "allow"
    assert 0.15 <= elapsed < 1.0, elapsed
    start = time.monotonic()
    final = c.json_api_call("GET", "/auth/v2/auth_status", {"txid": txid})
    assert final == {"result": "allow", "status": "allow",
                     "status_msg": "Success. Logging you in..."}
    assert time.monotonic() - start < 0.15
    assert any(ev["event"] == "push_resolved" and ev["txid"] == txid and ev["result"] == "allow"
               for ev in events(sim))


def test_sync_push_and_phone_outcomes(sim: Simulator) -> None:
    c = client(sim)
    assert c.auth("push", username="onedevice", device="DPFZRS9FB0D46QFTM891")["result"] == "allow"
    assert c.auth("phone", username="bob", device="DPFZRS9FB0D46QFTM892")["result"] == "allow"
    assert c.auth("auto", username="alice", device="auto")["status"] == "allow"
    assert c.auth("push", username="pushdeny", device="auto") == {
        "result": "deny", "status": "deny", "status_msg": "Login request denied."}
    fraud = c.auth("push", username="fraud", device="auto")
    assert fraud["result"] == "deny" and fraud["status"] == "fraud"


def test_verified_push(sim: Simulator) -> None:
    c = client(sim)
    pre = c.preauth(username="vpush", client_supports_verified_push="1")
    assert pre["result"] == "auth" and pre["txid"] and re.fullmatch(r"\d{3}", pre["verification_code"])
    resp = c.auth("push", username="vpush", device="auto", async_txn=True, txid=pre["txid"])
    assert set(resp) == {"txid"}
    first = c.json_api_call("GET", "/auth/v2/auth_status", {"txid": resp["txid"]})
    assert first == {"result": "waiting", "status": "pushed",
                     "status_msg": f"Enter the verification code {pre['verification_code']} in Duo Mobile."}
    assert c.auth_status(resp["txid"])["success"] is True
    pre = c.preauth(username="vpush2", client_supports_verified_push="1")
    resp = c.auth("push", username="vpush2", device="auto", async_txn=True)
    assert c.auth_status(resp["txid"])["success"] is False
    assert "txid" not in c.preauth(username="vpush3")


def test_pushtimeout_waits_for_long_poll(make_sim: Any) -> None:
    s = make_sim(long_poll=0.5)
    c = client(s)
    txid = c.auth("push", username="pushtimeout", device="auto", async_txn=True)["txid"]
    start = time.monotonic()
    status = c.json_api_call("GET", "/auth/v2/auth_status", {"txid": txid})
    elapsed = time.monotonic() - start
    assert status["result"] == "waiting" and status["status"] == "pushed"
    assert 0.45 <= elapsed < 2.0, elapsed
    with pytest.raises(TimeoutError):  # a sync push holds until the client gives up
        client(s, timeout=0.3).auth("push", username="pushtimeout", device="auto")


def test_passcodes_and_sms(sim: Simulator) -> None:
    c = client(sim)
    for code in ("123456", "987654", OTP):
        assert c.auth("passcode", username="alice", passcode=code) == {
            "result": "allow", "status": "allow", "status_msg": "Success. Logging you in..."}
    assert c.auth("passcode", username="tokenonly", passcode="123456")["result"] == "allow"
    assert c.auth("passcode", username="alice", passcode="111111") == {
        "result": "deny", "status": "deny", "status_msg": "Incorrect passcode. Please try again."}
    assert c.auth("sms", username="alice", device="DPFZRS9FB0D46QFTM891") == {
        "result": "deny", "status": "sent", "status_msg": "New SMS passcodes sent."}


def test_fault_status_codes(sim: Simulator) -> None:
    c = client(sim)
    with pytest.raises(RuntimeError) as e:
        c.preauth(username="alice+500@preauth")
    assert e.value.status == 500 and duo_error(e) == 50000
    with pytest.raises(RuntimeError) as e:
        c.preauth(username="allow+503x1@preauth")
    assert e.value.status == 503 and duo_error(e) == 50300
    assert c.preauth(username="allow+503x1@preauth")["result"] == "allow"
    # a fault is per endpoint: preauth answers, auth fails
    assert c.preauth(username="bob+401@auth")["result"] == "auth"
    with pytest.raises(RuntimeError) as e:
        c.auth("push", username="bob+401@auth", device="auto")
    assert e.value.status == 401 and duo_error(e) == 40103


def test_fault_429_retry_after_once(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: List[float] = []
    monkeypatch.setattr(duo_client_module, "sleep", waits.append)
    assert client(sim).preauth(username="allow+429ra1x1@preauth")["result"] == "allow"
    assert len(waits) == 1
    conn = https(sim)
    first = signed_request(sim, conn, "POST", "/auth/v2/preauth",
                           {"username": "allow2+429ra1x1@preauth"})
    assert first.status == 429 and first.getheader("Retry-After") == "1"
    assert json.loads(first.read())["code"] == 42901
    second = signed_request(sim, conn, "POST", "/auth/v2/preauth",
                            {"username": "allow2+429ra1x1@preauth"})
    assert second.status == 200 and json.loads(second.read())["response"]["result"] == "allow"
    conn.close()


def test_fault_slow_and_body_faults(sim: Simulator) -> None:
    c = client(sim)
    start = time.monotonic()
    assert c.preauth(username="allow+slow0.4@preauth")["result"] == "allow"
    assert time.monotonic() - start >= 0.35
    with pytest.raises(RuntimeError, match="bad response"):
        c.preauth(username="alice+malformed@preauth")
    with pytest.raises(RuntimeError, match="bad response"):
        c.preauth(username="alice+html@any")
    pre = c.preauth(username="alice+missing-result@preauth")
    assert "result" not in pre and len(pre["devices"]) == 3
    assert c.preauth(username="alice+result-bogus@preauth")["result"] == "bogus"
    txid = c.auth("push", username="alice+missing-txid@auth", device="auto", async_txn=True)
    assert txid == {}


def test_fault_connection_level(sim: Simulator) -> None:
    with pytest.raises(TimeoutError):
        client(sim, timeout=0.3).preauth(username="alice+stall@preauth")
    with pytest.raises(http.client.RemoteDisconnected):
        client(sim).preauth(username="alice+close@preauth")
    with pytest.raises(http.client.IncompleteRead):
        client(sim).preauth(username="alice+truncated@preauth")


def test_wrong_ca_and_wrong_host(sim: Simulator, make_sim: Any) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        client(sim, ca=sim.state_dir / "other-ca.pem").ping()
    wrong = make_sim(tls="wronghost")
    with pytest.raises(InvalidCertificateException):
        client(wrong).ping()


def test_clock_offset_and_check_fault(make_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_sim(clock_offset=3600, check_fault="500x1")
    c = client(s)
    assert abs(c.ping()["time"] - (time.time() + 3600)) < 5
    with pytest.raises(RuntimeError) as e:
        c.check()
    assert duo_error(e) == 40105
    monkeypatch.setattr(email.utils, "formatdate",
                        lambda *a, **k: _real_formatdate(time.time() + 3600))
    with pytest.raises(RuntimeError) as e:
        c.check()
    assert e.value.status == 500
    assert abs(c.check()["time"] - (time.time() + 3600)) < 5


def test_request_log(sim: Simulator) -> None:
    c = client(sim)
    c.auth("passcode", username="alice", passcode=OTP)
    c.auth("passcode", username="alice", passcode="123456")
    c.preauth(username="evil\x1b[2J\nname")
    text = sim.request_log.read_text()
    evs = events(sim)  # every line is valid JSON, control characters included
    kinds = {ev["event"] for ev in evs}
    assert {"connection", "tls", "request"} <= kinds
    req = [ev for ev in evs if ev["event"] == "request" and ev.get("factor") == "passcode"][-1]
    assert req["path"] == "/auth/v2/auth" and req["username"] == "alice"
    assert req["status"] == 200 and req["ts_start"] <= req["ts_end"]
    assert any(ev.get("username") == "evil\x1b[2J\nname" for ev in evs)
    assert sim.skey not in text and OTP not in text and '"123456"' not in text
    assert '"passcode":' not in text


def test_keep_alive(sim: Simulator) -> None:
    before = len(events(sim))
    conn = https(sim)
    for _ in range(2):
        conn.request("GET", "/auth/v2/ping")
        resp = conn.getresponse()
        assert resp.status == 200 and "time" in json.loads(resp.read())["response"]
    check = signed_request(sim, conn, "GET", "/auth/v2/check", {})
    assert check.status == 200
    check.read()
    conn.close()
    new = events(sim)[before:]
    reqs = [ev for ev in new if ev["event"] == "request"]
    assert len(reqs) == 3 and len({ev["conn"] for ev in reqs}) == 1
    assert len([ev for ev in new if ev["event"] == "connection"]) == 1


def test_stalled_clients_block_nobody(make_sim: Any) -> None:
    s = make_sim()
    raw = socket.create_connection(("127.0.0.1", s.port))  # never starts TLS
    stalled = https(s)
    body = json.dumps({"username": "alice+stall@preauth"})
    stalled.request("POST", "/auth/v2/preauth", body=body)  # not even signed: never answered
    assert "time" in client(s).ping()
    start = time.monotonic()
    s.stop()
    assert time.monotonic() - start < 3
    raw.close()
    stalled.close()


def test_state_is_reused(tmp_path: pathlib.Path) -> None:
    first = Simulator(tmp_path / "state")
    ca = first.ca_file.read_bytes()
    second = Simulator(tmp_path / "state")
    assert (second.ikey, second.skey) == (first.ikey, first.skey)
    assert second.ca_file.read_bytes() == ca
    assert re.fullmatch(r"DI[0-9A-Z]{18}", first.ikey)
    assert re.fullmatch(r"[0-9a-zA-Z]{40}", first.skey)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for name in ("keys.json", "ca.key", "server.key", "wronghost.key"):
        assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600


def _read_lines(fd: int, count: int, timeout: float) -> List[str]:
    buf, deadline = b"", time.monotonic() + timeout
    while buf.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"simulator printed only {buf!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"simulator exited after printing {buf!r}")
        buf += chunk
    return buf.decode().splitlines()


def test_cli(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "cli-state"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from pam_duo_sim.simulator import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen(["/usr/bin/python3", "-I", "-c", code, "--state-dir", str(state),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = _read_lines(proc.stdout.fileno(), 3, 15)
        assert len(lines) == 3 and lines[2] == f"admin config: {state / 'admin.toml'}"
        snippet_path = pathlib.Path(lines[0].removeprefix("config: "))
        assert lines[0].startswith("config: ") and snippet_path.is_absolute()
        port = int((state / "port").read_text())
        assert lines[1] == f"listening: https://localhost:{port}"
        assert stat.S_IMODE(snippet_path.stat().st_mode) == 0o600
        duo = tomllib.loads(snippet_path.read_text())["duo"]
        assert duo["host"] == f"localhost:{port}" and duo["ca_file"] == str(state / "ca.pem")
        c = duo_client.Auth(duo["ikey"], duo["skey"], host="localhost", port=port,
                            ca_certs=duo["ca_file"], timeout=5)
        assert "time" in c.check()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        out, err = proc.communicate()
        assert duo["skey"].encode() not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ real Duo's statuses
def status_of(c: duo_client.Auth, txid: str) -> Dict[str, str]:
    return c.json_api_call("GET", "/auth/v2/auth_status", {"txid": txid})


def test_unanswered_push_ends_deny_timeout_after_its_timeout(sim: Simulator) -> None:
    c = client(sim)
    txid = c.auth("push", username="pushtimeout-0.3s", device="auto", async_txn=True)["txid"]
    assert status_of(c, txid) == {"result": "deny", "status": "timeout", "status_msg": "Login timed out."}
    assert c.auth("phone", username="pushtimeout-0.3s-b", device="DPFZRS9FB0D46QFTM891")["status"] == "timeout"


def test_unanswered_push_default_timeout_is_settable(make_sim: Any) -> None:
    s = make_sim(push_timeout=0.3)
    c = client(s)
    txid = c.auth("push", username="pushtimeout", device="auto", async_txn=True)["txid"]
    assert status_of(c, txid)["status"] == "timeout"


def test_push_failed_is_reported_at_once_then_approved(sim: Simulator) -> None:
    c = client(sim)
    txid = c.auth("push", username="pushfail", device="auto", async_txn=True)["txid"]
    assert status_of(c, txid) == {"result": "waiting", "status": "push_failed",
                                  "status_msg": "Push notification failed."}
    assert status_of(c, txid)["result"] == "allow"


def test_bypass_user(sim: Simulator) -> None:
    c = client(sim)
    assert c.preauth(username="bypass")["result"] == "auth"
    assert c.auth("passcode", username="bypass", passcode="000000")["status"] == "bypass"
    txid = c.auth("push", username="bypass", device="auto", async_txn=True)["txid"]
    assert status_of(c, txid) == {"result": "allow", "status": "bypass", "status_msg": "Allowing user in bypass mode"}


def test_locked_out_at_the_first_auth(sim: Simulator) -> None:
    c = client(sim)
    assert c.preauth(username="lockedout-i1")["result"] == "auth"
    txid = c.auth("push", username="lockedout-i1", device="auto", async_txn=True)["txid"]
    assert status_of(c, txid)["status"] == "locked_out"
    denied = c.preauth(username="lockedout-i1")
    assert denied["result"] == "deny" and "locked out" in denied["status_msg"]
    assert c.auth("passcode", username="lockedout-i2", passcode="123456")["status"] == "locked_out"


def test_locked_out_after_n_wrong_passcodes(sim: Simulator) -> None:
    c = client(sim)
    user = "lockout-3-i1"
    assert c.auth("passcode", username=user, passcode="111111")["status"] == "deny"
    assert c.auth("passcode", username=user, passcode="123456")["status"] == "allow"  # resets the count
    assert [c.auth("passcode", username=user, passcode="111111")["status"] for _ in range(3)] == \
        ["deny", "deny", "locked_out"]
    assert c.auth("passcode", username=user, passcode="123456")["status"] == "locked_out"
    assert c.preauth(username=user)["result"] == "deny"


def test_verified_push_needs_the_preauth_txid_once(sim: Simulator) -> None:
    c = client(sim)
    pre = c.preauth(username="vpush-once", client_supports_verified_push="1")
    first = c.auth("push", username="vpush-once", device="auto", async_txn=True, txid=pre["txid"])["txid"]
    assert status_of(c, first)["result"] == "waiting"  # the code
    assert status_of(c, first)["result"] == "allow"
    again = c.auth("push", username="vpush-once", device="auto", async_txn=True, txid=pre["txid"])["txid"]
    assert status_of(c, again)["result"] == "deny"  # a txid is good for one push


def test_verified_push_approved_in_duo_mobile_with_the_right_code(sim: Simulator) -> None:
    c = client(sim)
    mobile = sim.state_dir / "duo-mobile"
    mobile.mkdir(exist_ok=True)
    for user, right in (("vpushmobile-ok", True), ("vpushmobile-bad", False)):
        pre = c.preauth(username=user, client_supports_verified_push="1")
        txid = c.auth("push", username=user, device="auto", async_txn=True, txid=pre["txid"])["txid"]
        assert status_of(c, txid)["result"] == "waiting"  # the code, at once
        (mobile / user).write_text(pre["verification_code"] if right else "000")
        assert status_of(c, txid)["result"] == ("allow" if right else "deny")


def test_fault_429_x_retry_after(sim: Simulator) -> None:
    conn = https(sim)
    first = signed_request(sim, conn, "POST", "/auth/v2/preauth", {"username": "allow3+429xra2x1@preauth"})
    assert first.status == 429 and first.getheader("X-Retry-After") == "2" and first.getheader("Retry-After") is None
    first.read()
    second = signed_request(sim, conn, "POST", "/auth/v2/preauth", {"username": "allow3+429xra2x1@preauth"})
    assert second.status == 200


# ------------------------------------------------------------------ other clients' signatures
def test_form_encoded_signature_v2_requests(sim: Simulator) -> None:
    """duo_client signing with signature v2 (form-encoded POST, HMAC-SHA1 over date, method,
    host, path and parameters), as older Duo clients do."""
    c = duo_client.Auth(sim.ikey, sim.skey, host="localhost", port=sim.port, ca_certs=str(sim.ca_file),
                        timeout=5, sig_version=2)
    assert c.preauth(username="allow")["result"] == "allow"
    assert c.auth("passcode", username="alice", passcode="123456")["status"] == "allow"
    bad = duo_client.Auth(sim.ikey, "x" * 40, host="localhost", port=sim.port, ca_certs=str(sim.ca_file),
                          timeout=5, sig_version=2)
    with pytest.raises(RuntimeError) as e:
        bad.preauth(username="allow")
    assert e.value.status == 401 and duo_error(e) == 40103


def v1_request(sim: Simulator, method: str, path: str, params: Dict[str, str], skey: str = "") -> tuple:
    """One request signed as libduo 1.11 signs it (HMAC-SHA1, no date), reply decoded from BSON."""
    import base64
    import hashlib
    import hmac
    from pam_duo_sim.simulator import canon_params
    qs = canon_params(list(params.items()))
    canon = "\n".join([method, "localhost", path, qs])
    sig = hmac.new((skey or sim.skey).encode(), canon.encode(), hashlib.sha1).hexdigest()
    headers = {"Authorization": "Basic " + base64.b64encode(f"{sim.ikey}:{sig}".encode()).decode()}
    conn = https(sim)
    if method == "POST":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request("POST", path, body=qs, headers=headers)
    else:
        conn.request("GET", f"{path}?{qs}", headers=headers)
    response = conn.getresponse()
    return response.status, bson_decode(response.read())


def bson_decode(data: bytes) -> Dict[str, Any]:
    import struct
    out, pos = {}, 4
    while data[pos] != 0:
        kind, end = data[pos], data.index(b"\x00", pos + 1)
        name, pos = data[pos + 1:end].decode(), end + 1
        if kind == 2:
            size = struct.unpack_from("<i", data, pos)[0]
            out[name], pos = data[pos + 4:pos + 3 + size].decode(), pos + 4 + size
        elif kind == 16:
            out[name], pos = struct.unpack_from("<i", data, pos)[0], pos + 4
        else:
            size = struct.unpack_from("<i", data, pos)[0]
            out[name], pos = bson_decode(data[pos:pos + size]), pos + size
    return out


def test_rest_v1_as_login_duo_1_11_speaks_it(sim: Simulator) -> None:
    assert v1_request(sim, "POST", "/rest/v1/preauth.bson", {"user": "allow", "failmode": "closed"}) == \
        (200, {"stat": "OK", "response": {"status": "Allowing unknown user", "result": "allow"}})
    status, pre = v1_request(sim, "POST", "/rest/v1/preauth.bson", {"user": "alice"})
    assert pre["response"]["result"] == "auth"
    assert pre["response"]["factors"] == {"1": "push1", "2": "phone1", "3": "sms1", "4": "push2", "5": "phone2",
                                          "default": "push1"}
    assert " 1. Duo Push to XXX-XXX-1234" in pre["response"]["prompt"]
    _, started = v1_request(sim, "POST", "/rest/v1/auth.bson",
                            {"user": "alice", "factor": "auto", "auto": "push1", "async": "1"})
    txid = started["response"]["txid"]
    _, done = v1_request(sim, "GET", "/rest/v1/status.bson", {"txid": txid})
    assert done["response"] == {"status": "Success. Logging you in...", "result": "allow"}
    _, sync = v1_request(sim, "POST", "/rest/v1/auth.bson",
                         {"user": "pushdeny", "factor": "auto", "auto": "push1", "async": "0"})
    assert sync["response"] == {"status": "Login request denied.", "result": "deny"}
    assert v1_request(sim, "POST", "/rest/v1/preauth.bson", {"user": "alice"}, skey="x" * 40)[0] == 401
