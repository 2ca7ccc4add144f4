"""Bad input from every side: the person at the prompt, the administrator's files, and Duo.

Property tests (hypothesis) of what goes in and what must come out:

* answers typed at the prompt (any unicode, control characters, 10 000 characters,
  embedded newlines) through the PAM entry point: nothing crashes, only passcodes of the
  allowed shapes reach Duo and never the password (docs/behaviour.md §6), and the texts shown to the
  user have no control or escape characters;
* local and mapped user names, remote hosts and ttys, including ones built to forge a
  log line (quotes, newlines, "from 10.0.0.1"): every log line is one line, and its quoted
  user name is exactly the (escaped) name (docs/behaviour.md §8);
* configuration text (random text and random TOML with wrong types and odd values):
  ``parse_config`` returns a valid Config or raises ConfigError, nothing else (docs/behaviour.md §4);
* ``map_file`` text: ``parse_map_file`` never raises and keeps only well-formed lines;
* every Duo reply, as raw HTTP status and body, through the real client layer
  (``DuoClient`` with a function as its transport) and through the engine: typed results or a
  DuoError, never a crash, never a control character on the terminal or in the log.

Complements test_answers.py (parse_answer), test_events.py (syslog_line) and
test_duo_unit.py (replies.parse_* on JSON values).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import pwd
import re
import string
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import fakes
from fakes import APPROVED, PASSCODE_BAD, PASSCODE_OK, FakeDuo, FakePamh, FakePrompter
from pam_duo_py.config import AuthSettings, Config, DuoIdentity, DuoSettings, parse_config, parse_map_file
from pam_duo_py.duo import DuoClient
from pam_duo_py.transport import RateLimitWaits
from pam_duo_py.engine import Engine, Kind, Login, Outcome, Result
from pam_duo_py.login import InProcess
from pam_duo_py.errors import ConfigError, DuoError, FileRuleError
from pam_duo_py.events import event, syslog_line
from pam_duo_py.pam import pam_sm_authenticate
from pam_duo_py.replies import AuthResult, AuthStarted, Device, Preauth

try:
    ME = pwd.getpwuid(os.geteuid()).pw_name
except KeyError:  # pragma: no cover - a uid without a passwd entry
    pytest.skip("the current uid has no passwd entry", allow_module_level=True)

SKEY = "S" * 40
PASSWORD = "424242"  # the user's password looks like a passcode: it must never be sent
PHONE = Device("DPHONE1", "phone", "XXX-XXX-1234", ("push", "phone", "sms"))
TOKEN = Device("DTOKEN1", "token", "Token", ())
AUTH = Preauth("auth", "", devices=(PHONE, TOKEN))
PASSCODE_SHAPE = re.compile(r"[0-9]{1,20}|[cbdefghijklnrtuv]{44}")
CODES = {"SUCCESS": 0, "SERVICE_ERR": 3, "AUTH_ERR": 7, "AUTHINFO_UNAVAIL": 9, "USER_UNKNOWN": 10,
         "MAXTRIES": 11, "CONV_ERR": 19, "IGNORE": 25}
FORBIDDEN_FORMATS = {"\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def terminal_safe(text: str) -> bool:
    """No control or escape character except the newline (docs/behaviour.md §6: text shown to the user)."""
    return all(c == "\n" or (unicodedata.category(c) != "Cc" and c not in FORBIDDEN_FORMATS) for c in text)


def log_safe(text: str) -> bool:
    """One line, no control characters, no line or paragraph separators, no bidi overrides."""
    return all(unicodedata.category(c) not in ("Cc", "Zl", "Zp") and c not in FORBIDDEN_FORMATS for c in text)


def unescape(text: str) -> str:
    """Undo for_log (\\xNN, \\uNNNN, backslash before a quote or a backslash)."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "\\":
            out.append(text[i])
            i += 1
        elif text[i + 1] == "x":
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 4
        elif text[i + 1] == "u":
            out.append(chr(int(text[i + 2:i + 6], 16)))
            i += 6
        else:
            out.append(text[i + 1])
            i += 2
    return "".join(out)


def split_quoted(line: str) -> tuple[str, str, str]:
    """(before, the first quoted field unescaped, after): the quote ends at the first unescaped quote."""
    start = line.index("'")
    i = start + 1
    while line[i] != "'":
        i += 2 if line[i] == "\\" else 1
    return line[:start], unescape(line[start + 1:i]), line[i + 1:]


def capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- through the PAM entry point -----------------------------------------------------------------

@pytest.fixture(autouse=True)
def nothing_formatted():
    fakes.FORMATTED.clear()
    yield
    assert fakes.FORMATTED == [], f"a pam object was formatted: {fakes.FORMATTED}"


@pytest.fixture
def entry(tmp_path, syslog_lines):
    """entry(pamh, duo, map_text=None) -> (PAM code, syslog lines): one login, decided in-process with ``duo``."""
    os.chmod(tmp_path, 0o700)

    def run(pamh, duo, map_text: str | None = None) -> tuple[int, list[str]]:
        def in_process(conf: str, debug: bool) -> InProcess:  # never a broker that may run on this machine
            return InProcess(conf, debug=debug, duo_factory=lambda settings: duo)

        conf = tmp_path / "pam_duo.toml"
        text = (f'[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "{SKEY}"\nhost = "api-test.duosecurity.com"\n'
                f'[broker]\nsocket = "{tmp_path / "none.sock"}"\n[auth]\nprompts = 3\n')
        if map_text is not None:
            map_path = tmp_path / "map"
            map_path.write_text(map_text, encoding="utf-8")
            os.chmod(map_path, 0o600)
            text += f'[users]\nmap_file = "{map_path}"\n'
        conf.write_text(text)
        os.chmod(conf, 0o600)
        syslog_lines.clear()
        rc = pam_sm_authenticate(pamh, 0, ["/usr/local/lib/pam_duo_py/pam_duo.py", f"conf={conf}"],
                                 choose=in_process)
        assert type(rc) is int
        return rc, [text for _, text in syslog_lines]

    return run


def scripted_duo() -> FakeDuo:
    def auth(factor, params):
        if factor == "passcode":
            return PASSCODE_OK if params.get("passcode") == "123456" else PASSCODE_BAD
        if factor == "sms":
            return fakes.SMS_SENT
        return {"txid": "TX1"}

    return FakeDuo(AUTH, auth_default=auth, status_default=lambda txid, timeout: APPROVED)


nasty_text = st.sampled_from([
    "123456\n", "1\n2", "\x1b[2J\x1b]0;pwned\x07", "push\x00", "\u0661\u0662\u0663\u0664\u0665\u0666",
    "\uff11\uff12\uff13\uff14\uff15\uff16", " 123456 ", "+1", "-1", "1e5", "0x10", "push" * 3000, "\r\n",
    PASSWORD, f" {PASSWORD}\n", "\u202e654321", "9" * 21, "\u00b2", "1\u00a0", "sms\u2028push",
])
answer_text = (st.text(max_size=300) | st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=40)
               | st.builds(lambda t: (t * 10_000)[:10_000], st.text(min_size=1, max_size=50)) | nasty_text)


@given(answers=st.lists(answer_text, max_size=4), service=st.sampled_from(["sudo", "sshd", "login"]))
@example(answers=["\x00" * 10_000], service="sudo")
@example(answers=["123456\n654321"], service="sudo")
@example(answers=[PASSWORD, PASSWORD + "\n", " " + PASSWORD], service="sudo")
def test_answers_at_the_prompt(entry, answers, service):
    duo = scripted_duo()
    pamh = FakePamh(user=ME, service=service, tty="/dev/pts/3", authtok=PASSWORD, answers=list(answers))
    rc, lines = entry(pamh, duo)
    assert rc in (CODES["SUCCESS"], CODES["AUTH_ERR"], CODES["MAXTRIES"], CODES["CONV_ERR"]), (rc, lines)
    for call in duo.auth_calls:
        params = call.args["params"]
        assert call.args["factor"] in ("push", "phone", "sms", "passcode")
        if call.args["factor"] == "passcode":
            assert PASSCODE_SHAPE.fullmatch(params["passcode"]), params
        assert PASSWORD not in params.values()
    assert PASSWORD not in duo.sent_strings()
    passcodes = [c.args["params"]["passcode"] for c in duo.auth_calls if c.args["factor"] == "passcode"]
    for style, text in pamh.messages:
        assert terminal_safe(text), repr(text)
    for line in lines:
        assert log_safe(line) and PASSWORD not in line, repr(line)
        assert not any(code in line for code in passcodes if len(code) >= 6), line


NAMES = ["alice' from 10.0.0.1", "alice\nSuccessful Duo login for 'root' from 10.0.0.1", "a\\'b", "'",
         "bob\r\x1b[2K", "x\x00y", "\u2028root", "\u202eevil", "x" * 400, "é\x85\x9b", '"quoted"', "\\x41",
         "root' from 10.0.0.1 [service=sshd]"]
hosts = st.none() | st.sampled_from(["203.0.113.5", "10.0.0.1\nSuccessful Duo login for 'root'", "h' x",
                                     "\x1b[31m", "2001:db8::1", "x" * 300]) | st.text(max_size=60)


@given(name=st.text(min_size=1, max_size=300) | st.sampled_from(NAMES), rhost=hosts,
       tty=st.none() | st.text(max_size=40))
@example(name="alice' from 10.0.0.1", rhost=None, tty=None)
def test_local_user_names_cannot_forge_a_log_line(entry, name, rhost, tty):
    pamh = FakePamh(user=name, service="sshd", rhost=rhost, tty=tty)
    rc, lines = entry(pamh, FakeDuo(Preauth("allow", "Allowing unknown user")))
    assert rc in (CODES["USER_UNKNOWN"], CODES["SUCCESS"], CODES["IGNORE"]), rc
    assert lines, "every decision is logged"
    for line in lines:
        assert log_safe(line), repr(line)
    decision = lines[-1]
    before, shown, after = split_quoted(decision)
    assert before in ("Failed Duo login for ", "Skipped Duo login for "), decision
    assert shown == capped(name, 100)
    if rhost:
        assert after.startswith(" from "), decision
    assert after.count("'") == after.count("\\'"), decision  # no second unescaped quoted field


duo_names = (st.text(alphabet=st.characters(blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs"),
                                            blacklist_characters="#"), min_size=1, max_size=100)
             | st.sampled_from(["root'", "alice'+from+10.0.0.1", "\u202eevil", "x" * 100, "é\x85\x9b'"]))


@given(duo_name=duo_names)
@example(duo_name="alice'from")
def test_mapped_duo_names_cannot_forge_a_log_line(entry, duo_name):
    if len(duo_name.split()) != 1 or duo_name.startswith("user_id="):
        return  # not one field: the map file line would be refused (tested below)
    duo = FakeDuo(Preauth("allow", "Allowing unknown user"))
    pamh = FakePamh(user=ME, service="sshd", rhost="203.0.113.5")
    rc, lines = entry(pamh, duo, map_text=f"{ME} {duo_name}\n")
    if rc == CODES["SERVICE_ERR"]:  # refused by parse_map_file (e.g. a control character)
        assert any("users.map_file" in line for line in lines)
        assert duo.calls == []
        return
    assert rc == CODES["SUCCESS"]
    assert duo.calls[0].args["identity"] == DuoIdentity(username=duo_name)
    for line in lines:
        assert log_safe(line), repr(line)
    before, shown, after = split_quoted(lines[-1])
    assert before == "Skipped Duo login for "
    assert shown == capped(duo_name, 100)
    assert after.startswith(" from 203.0.113.5"), lines[-1]


# -- configuration files -----------------------------------------------------------------------

def reader(data):
    """A read(path, secret) for parse_config: random bytes, or a file-rule failure."""

    def read(path, secret):
        choice = data.draw(st.sampled_from(["bytes", "text", "rule"]))
        if choice == "rule":
            raise FileRuleError(path, data.draw(st.sampled_from(["no such file", "is a symlink", "mode 0644"])))
        if choice == "text":
            return data.draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
        return data.draw(st.binary(max_size=200))

    return read


def check_config(text: str, read) -> None:
    try:
        config = parse_config(text, "/etc/pam_duo_py/pam_duo.toml", read=read)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p.startswith("/etc/pam_duo_py/pam_duo.toml: ")
                                    for p in exc.problems), exc.problems
        assert SKEY not in str(exc)
        return
    assert isinstance(config, Config)
    assert re.fullmatch(r"DI[0-9A-Z]{18}", config.duo.ikey)
    assert re.fullmatch(r"[0-9A-Za-z]{40}", config.duo.skey)
    assert re.fullmatch(r"[a-z0-9.-]+", config.duo.host)
    assert config.duo.port is None or 0 < config.duo.port < 65536
    assert 0.1 <= config.duo.timeout <= 600 and math.isfinite(config.duo.timeout)
    assert config.auth.failmode in ("secure", "safe")
    assert config.auth.prompts in (1, 2, 3)
    assert 0.1 <= config.auth.push_timeout <= 600
    for local, identity in config.users.mapping:
        assert isinstance(local, str) and isinstance(identity, DuoIdentity)


@given(text=st.text(max_size=400), data=st.data())
def test_random_text_config(text, data):
    check_config(text, reader(data))


toml_scalars = (st.text(max_size=30) | st.integers() | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
                | st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
                | st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)) | st.dates() | st.times()
                | st.sampled_from(["secure", "safe", "DIABCDEFGHIJKLMNOPQR", SKEY, "api-x.duosecurity.com",
                                   "api-x.duosecurity.com:\u00b2", "api-x.duosecurity.com\n", "localhost:0",
                                   "h:65536", "/etc/pam_duo_py/skey", "relative/path", "http://u:p@proxy:3128",
                                   "http://proxy:99999", "", "*", "!wheel", "\x00", "DU" + "A" * 18]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), inner, max_size=3),
                           max_leaves=8)
KNOWN_KEYS = {
    "duo": ["ikey", "skey", "skey_file", "host", "ca_file", "proxy", "timeout"],
    "auth": ["failmode", "autopush", "prompts", "push_timeout", "pushinfo", "pushinfo_command", "verified_push",
             "accept_env_factor"],
    "users": ["groups", "map_file"],
    "log": ["audit_file"],
    "broker": ["socket"],
    "remember": ["seconds", "services_without_address", "state_dir"],
}


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


documents = st.dictionaries(
    st.sampled_from(sorted(KNOWN_KEYS)) | st.text(string.ascii_lowercase, min_size=1, max_size=6),
    st.dictionaries(st.sampled_from(sorted({k for ks in KNOWN_KEYS.values() for k in ks}))
                    | st.text(string.ascii_lowercase, min_size=1, max_size=6), toml_values, max_size=6),
    max_size=6)


@given(doc=documents, data=st.data(), base=st.booleans())
def test_random_toml_config(doc, data, base):
    head = ""
    if base:  # start from a valid [duo] table, so that the other sections are checked too
        doc = {"duo": {"ikey": "DIABCDEFGHIJKLMNOPQR", "skey": SKEY, "host": "api-x.duosecurity.com",
                       **doc.get("duo", {})}, **{k: v for k, v in doc.items() if k != "duo"}}
    for section, table in doc.items():
        head += f"[{section}]\n" + "".join(f"{key} = {toml_literal(value)}\n" for key, value in table.items())
    check_config(head, reader(data))


@pytest.mark.parametrize("line,problem", [
    ('host = "api-x.duosecurity.com\\n"', "duo.host"),        # a trailing newline once passed the '$' anchor
    ('host = "api-x.duosecurity.com:\u00b2"', "duo.host"),    # str.isdigit() is true for superscripts
    ('host = "api-x.duosecurity.com:\u0661\u0662"', "duo.host"),
    ('ikey = "DIABCDEFGHIJKLMNOPQR\\n"', "duo.ikey"),
    ('timeout = 1' + "0" * 400, "duo.timeout"),               # float() of it raises OverflowError
    ('proxy = "http://proxy:3128\\n"', "duo.proxy"),
])
def test_values_that_once_slipped_through(line, problem):
    base = {"ikey": '"DIABCDEFGHIJKLMNOPQR"', "skey": f'"{SKEY}"', "host": '"api-x.duosecurity.com"'}
    key = line.split(" =", 1)[0]
    base[key] = line.split("= ", 1)[1]
    text = "[duo]\n" + "".join(f"{k} = {v}\n" for k, v in base.items())
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/pam_duo_py/pam_duo.toml", read=lambda p, s: b"")
    assert any(f": {problem}: " in p for p in info.value.problems), info.value.problems


def test_group_pattern_with_a_trailing_newline_is_refused():
    text = (f'[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "{SKEY}"\nhost = "api-x.duosecurity.com"\n'
            '[users]\ngroups = ["wheel\\n"]\n')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/pam_duo_py/pam_duo.toml", read=lambda p, s: b"")
    assert any("users.groups[0]" in p for p in info.value.problems)


# -- the map file ------------------------------------------------------------------------------

map_lines = st.lists(
    st.text(max_size=80)
    | st.builds(lambda a, b: f"{a} {b}", st.text(max_size=20), st.text(max_size=120))
    | st.builds(lambda a, b: f"{a} user_id={b}", st.text(max_size=20), st.text(max_size=24))
    | st.sampled_from(["# comment", "", "   ", "alice bob", "alice bob", "x user_id=DU" + "A" * 18,
                       "a b c", "a\x00 b", "\ufeffalice bob", "a bob\x1b[2J", "a " + "b" * 101]),
    max_size=12)


@given(lines=map_lines, newline=st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\x85", "\u2028"]))
def test_map_file_lines(lines, newline):
    text = newline.join(lines)
    mapping, problems = parse_map_file(text, "/etc/pam_duo_py/map")
    assert isinstance(mapping, tuple) and isinstance(problems, list)
    locals_ = [local for local, _ in mapping]
    assert len(locals_) == len(set(locals_)), "a local name is mapped twice"
    for local, identity in mapping:
        assert local and not any(c.isspace() for c in local)
        if identity.user_id is not None:
            assert re.fullmatch(r"DU[0-9A-Z]{18}", identity.user_id)
        else:
            name = identity.username
            assert name and len(name) <= 100 and not any(c.isspace() for c in name)
            assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    for problem in problems:
        assert problem.startswith("/etc/pam_duo_py/map: line ")
        assert log_safe(problem), repr(problem)


# -- Duo replies as raw HTTP -------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
FIELDS = ["result", "status", "status_msg", "devices", "enroll_portal_url", "txid", "verification_code", "device",
          "capabilities", "number", "display_name", "name", "type", "sms_nextcode", "time", "code", "message",
          "message_detail", "stat", "response"]
any_text = st.text(max_size=60) | st.sampled_from(["\x1b[2J\x1b]0;pwned\x07", "a\r\nb\nc", "\u202eevil", "\x00\x9b",
                                                   "x" * 5000])
device_like = st.fixed_dictionaries(
    {"device": st.text(min_size=1, max_size=70) | json_values},
    optional={k: any_text | json_values | st.lists(st.sampled_from(["push", "phone", "sms", "mobile_otp", "auto"]))
              for k in ("type", "number", "display_name", "name", "capabilities", "sms_nextcode")})
response_like = (st.dictionaries(st.sampled_from(FIELDS), any_text | json_values
                                 | st.sampled_from(["allow", "deny", "enroll", "auth", "waiting", "fraud"])
                                 | st.lists(device_like, max_size=3), max_size=8) | json_values)
bodies = st.one_of(
    st.builds(lambda r: json.dumps({"stat": "OK", "response": r}).encode(), response_like),
    st.builds(lambda c, m, d: json.dumps({"stat": "FAIL", "code": c, "message": m, "message_detail": d}).encode(),
              json_values, any_text | json_values, any_text | json_values),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.binary(max_size=300),
    st.sampled_from([b"", b"{", b"[" * 5000 + b"]" * 5000, b"\xff\xfe", b"<html>502</html>", b"1e999999",
                     b'{"stat": "OK"}', b'{"stat": "OK", "response": ' + b"9" * 5000 + b"}"]),
)
statuses = st.sampled_from([200, 200, 200, 400, 401, 403, 404, 429, 500, 502, 503, 504, 301, 204, 999, 100])
headers = st.fixed_dictionaries({}, optional={"date": st.sampled_from(["Mon, 01 Dec 2025 20:00:00 GMT", "garbage",
                                                                      "Thu, 01 Jan 1970 00:00:00 -0000", "",
                                                                      "Mon, 99 Dec 2025 20:00:00 GMT"]),
                                              "retry-after": st.sampled_from(["0", "1", "99999", "-1", "soon", ""])})
SETTINGS = DuoSettings(ikey="DIABCDEFGHIJKLMNOPQR", skey=SKEY, host="api-test.duosecurity.com", port=None,
                       ca_file=None, proxy=None, timeout=5.0)


def raw_client(data) -> tuple[DuoClient, list]:
    """A real DuoClient (429 waits included) whose transport, a function, answers with random statuses,
    headers and bodies."""
    clock = fakes.FakeClock()
    sent: list = []

    def send(method, host, path, hdrs, body, deadline):
        sent.append((method, path, body))
        return data.draw(statuses), data.draw(headers), data.draw(bodies)

    transport = RateLimitWaits(send, clock=clock, sleep=clock.sleep)
    client = DuoClient(SETTINGS, clock=clock, sleep=clock.sleep, transport=transport)
    return client, sent


@given(data=st.data(), endpoint=st.sampled_from(["preauth", "push", "phone", "passcode", "sms", "auth_status", "check"]))
def test_any_http_reply_through_the_client(data, endpoint):
    client, _ = raw_client(data)
    who = DuoIdentity(username="alice")
    try:
        if endpoint == "preauth":
            result = client.preauth(who, ipaddr=None, hostname=None, verified_push=False)
            assert isinstance(result, Preauth) and result.result in ("allow", "deny", "enroll", "auth")
        elif endpoint in ("push", "phone"):
            start = client.start_push if endpoint == "push" else client.start_phone
            result = start(who, "D1", ipaddr=None, hostname=None)
            assert isinstance(result, AuthStarted) and result.txid
        elif endpoint in ("passcode", "sms"):
            result = (client.check_passcode(who, "123456", ipaddr=None, hostname=None) if endpoint == "passcode"
                      else client.send_sms(who, None, ipaddr=None, hostname=None))
            assert isinstance(result, AuthResult) and result.result in ("allow", "deny")
        elif endpoint == "auth_status":
            result = client.auth_status("TX1", timeout=3.0)
            assert isinstance(result, AuthResult) and result.result in ("allow", "deny", "waiting")
        else:
            assert isinstance(client.check(), int)
    except DuoError as exc:
        assert isinstance(str(exc), str)
        assert SKEY not in str(exc)


@given(data=st.data(), answers=st.lists(st.sampled_from(["", "1", "2", "3", "push", "phone", "sms", "123456",
                                                         "x", PASSWORD]) | any_text, max_size=3),
       interactive=st.booleans(), failmode=st.sampled_from(["secure", "safe"]), autopush=st.booleans())
def test_any_http_reply_through_the_engine(data, answers, interactive, failmode, autopush):
    client, sent = raw_client(data)
    ui = FakePrompter(answers, when_empty=fakes.EOF)
    settings = AuthSettings(failmode=failmode, autopush=autopush, prompts=3, push_timeout=5.0)
    clock = client._clock
    engine = Engine(settings, client, ui, clock=clock, sleep=clock.sleep)
    login = Login(user="alice", identity=DuoIdentity(username="alice"), service="sshd", interactive=interactive,
                  rhost="203.0.113.5", ipaddr="203.0.113.5", tty="ssh" if interactive else None,
                  hostname="server1", password=PASSWORD)
    outcome = engine.run(login)
    assert isinstance(outcome, Outcome) and isinstance(outcome.result, Result)
    if outcome.result is Result.SUCCESS:
        assert outcome.kind.value in ("success", "preauth_allow", "failsafe")
        if outcome.kind is Kind.FAILSAFE:
            assert failmode == "safe" and sent
            assert all(uri.startswith("/auth/v2/preauth") for _, uri, _ in sent)
    for text in ui.everything:
        assert terminal_safe(text), repr(text)
    for method, uri, body in sent:
        if method == "POST" and uri.startswith("/auth/v2/auth"):
            params = json.loads(body)
            assert PASSWORD not in params.values()
            if params.get("factor") == "passcode":
                assert PASSCODE_SHAPE.fullmatch(params["passcode"])
    record = event(outcome.kind.value, user="alice", duo_user="alice", service="sshd", rhost="203.0.113.5",
                   factor=outcome.factor, txid=outcome.txid, reason=outcome.reason, duo_status=outcome.duo_status)
    _, line = syslog_line(record)
    assert log_safe(line), repr(line)
    assert SKEY not in line and PASSWORD not in line
    assert clock.elapsed <= 2 * SETTINGS.timeout + 3 * settings.push_timeout + 1e-6
