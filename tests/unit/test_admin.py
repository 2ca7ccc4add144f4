"""The admin commands' pure parts: admin.toml, readiness classification, bypass codes, paging."""
from __future__ import annotations

import grp
import io
import json
import os

import pytest

from pam_duo_py import events, users
from pam_duo_tools import admin_api, admin_cli, audit
from pam_duo_tools.admin_api import LOCKED_OUT_STATES, STATES, AdminApi, DuoDirectory, classify, readiness_json
from pam_duo_tools.admin_config import load_admin_config, parse_admin_config
from pam_duo_py.config import DuoIdentity, UsersSettings, parse_config
from pam_duo_py.errors import ConfigError, DuoMalformedReply, DuoRefused, FileRuleError

PATH = "/etc/pam_duo_py/admin.toml"
IKEY = "DIADMINKEY0000000001"
SKEY = "A" * 40
HOST = "api-12345678.duosecurity.com"
GOOD = f'[admin]\nikey = "{IKEY}"\nskey = "{SKEY}"\nhost = "{HOST}"\n'


def problems(text: str, read=None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_admin_config(text, PATH, read=read or (lambda p, s: (_ for _ in ()).throw(FileRuleError(p, "no such file"))))
    for problem in info.value.problems:
        assert problem.startswith(PATH + ": "), problem
    return info.value.problems


# ------------------------------------------------------------------ admin.toml

def test_admin_config_has_the_keys_of_duo():
    settings = parse_admin_config(GOOD + "timeout = 5\nproxy = \"http://proxy.example:3128\"\n", PATH)
    assert (settings.ikey, settings.host, settings.timeout, settings.proxy.port) == (IKEY, HOST, 5.0, 3128)
    assert SKEY not in repr(settings)


def test_admin_config_skey_file_is_read_as_a_secret():
    reads = []

    def read(path, secret):
        reads.append((path, secret))
        return (SKEY + "\n").encode()

    settings = parse_admin_config(f'[admin]\nikey = "{IKEY}"\nskey_file = "/etc/pam_duo_py/admin.skey"\nhost = "{HOST}"\n',
                                  PATH, read=read)
    assert settings.skey == SKEY and reads == [("/etc/pam_duo_py/admin.skey", True)]


@pytest.mark.parametrize("text, expected", [
    (GOOD + "colour = 1\n", f"{PATH}: admin.colour: unknown key"),
    (GOOD.replace(IKEY, "DIshort"), f"{PATH}: admin.ikey: must be 'DI' followed by 18 capital letters or digits"),
    (GOOD.replace(f'skey = "{SKEY}"\n', ""), f"{PATH}: admin.skey: required key is missing (or set admin.skey_file)"),
    (GOOD + 'skey_file = "/x"\n', f"{PATH}: admin.skey_file: give either admin.skey or admin.skey_file, not both"),
    (GOOD + "timeout = 0\n", f"{PATH}: admin.timeout: must be at least 0.1 seconds"),
    (GOOD + 'ca_file = "relative.pem"\n', f"{PATH}: admin.ca_file: must be an absolute path, not 'relative.pem'"),
    (GOOD + 'ca_file = "/etc/ca.pem"\n', f"{PATH}: admin.ca_file: /etc/ca.pem: no such file"),
    (GOOD + "[duo]\nikey = 1\n", f"{PATH}: duo: unknown section (admin.toml has only [admin])"),
    (f'ikey = "{IKEY}"\n', f"{PATH}: admin: required section is missing"),
    ("[admin\n", f"{PATH}: line 1: TOML syntax error"),
])
def test_admin_config_errors_name_file_and_key(text, expected):
    assert any(p.startswith(expected) for p in problems(text)), problems(text)


def test_admin_config_reports_every_problem_at_once():
    found = problems('[admin]\nikey = "x"\nhost = "bad host"\nextra = 1\n')
    keys = {p.split(": ")[1] for p in found}
    assert {"admin.ikey", "admin.skey", "admin.host", "admin.extra"} <= keys


def test_main_config_still_refuses_an_admin_section():
    with pytest.raises(ConfigError) as info:
        parse_config(f'[duo]\nikey = "{IKEY}"\nskey = "{SKEY}"\nhost = "{HOST}"\n[admin]\nikey = "{IKEY}"\n', "/c.toml")
    assert "/c.toml: admin: unknown section" in info.value.problems


@pytest.fixture
def home(tmp_path):
    os.chmod(tmp_path, 0o700)
    return tmp_path


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_admin_config_file_rule_accepts_owner_only(home, mode):
    path = home / "admin.toml"
    path.write_text(GOOD)
    os.chmod(path, mode)
    assert load_admin_config(str(path)).ikey == IKEY


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o620, 0o606])
def test_admin_config_file_rule_refuses_group_or_other_access(home, mode):
    path = home / "admin.toml"
    path.write_text(GOOD)
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as info:
        load_admin_config(str(path))
    assert info.value.problems[0].startswith(f"{path}: mode {mode:04o}")


def test_admin_config_symlink_and_missing_file(home):
    target = home / "real.toml"
    target.write_text(GOOD)
    os.chmod(target, 0o600)
    (home / "link.toml").symlink_to(target)
    with pytest.raises(ConfigError) as info:
        load_admin_config(str(home / "link.toml"))
    assert "symlink" in info.value.problems[0]
    with pytest.raises(ConfigError) as info:
        load_admin_config(str(home / "absent.toml"))
    assert info.value.problems == (f"{home / 'absent.toml'}: no such file",)


# ------------------------------------------------------------------ classification

PUSH_PHONE = {"phone_id": "DP1", "activated": True, "capabilities": ["auto", "push", "sms", "phone", "mobile_otp"]}
PUSH_NOT_ACTIVATED = {"phone_id": "DP2", "activated": False, "capabilities": ["push", "phone"]}
CALL_ONLY = {"phone_id": "DP3", "activated": False, "capabilities": ["phone"]}
SMS_ONLY = {"phone_id": "DP4", "activated": False, "capabilities": ["sms"]}
OTP_ONLY = {"phone_id": "DP5", "activated": True, "capabilities": ["mobile_otp"]}
NO_CAPS = {"phone_id": "DP6", "activated": False, "capabilities": []}
TOKEN = {"token_id": "DH1", "type": "h6", "serial": "1"}

DEVICES = {
    "none": ({}, "not_enrolled"),
    "push": ({"phones": [PUSH_PHONE]}, "push"),
    "push+token": ({"phones": [PUSH_PHONE], "tokens": [TOKEN]}, "push"),
    "push-not-activated": ({"phones": [PUSH_NOT_ACTIVATED]}, "phone_sms"),
    "call-only": ({"phones": [CALL_ONLY]}, "phone_sms"),
    "sms-only": ({"phones": [SMS_ONLY]}, "phone_sms"),
    "sms+token": ({"phones": [SMS_ONLY], "tokens": [TOKEN]}, "phone_sms"),
    "otp-only": ({"phones": [OTP_ONLY]}, "passcode_only"),
    "token-only": ({"tokens": [TOKEN]}, "passcode_only"),
    "phone-without-capabilities": ({"phones": [NO_CAPS]}, "not_enrolled"),
    "webauthn-only": ({"webauthncredentials": [{"credential_name": "key"}]}, "not_enrolled"),
}
STATUS = {"active": None, "bypass": "bypass", "disabled": "disabled", "locked out": "locked_out",
          "pending deletion": "disabled"}


@pytest.mark.parametrize("status", sorted(STATUS))
@pytest.mark.parametrize("devices", sorted(DEVICES))
def test_classification_of_every_status_and_device_combination(status, devices):
    record, device_state = DEVICES[devices]
    state, reason = classify({"username": "u", "status": status, **record})
    assert state == (STATUS[status] or device_state)
    assert state in STATES and reason


@pytest.mark.parametrize("group_status, expected", [("Active", "push"), ("Bypass", "allow"), ("Disabled", "disabled")])
def test_group_status(group_status, expected):
    user = {"status": "active", "phones": [PUSH_PHONE], "groups": [{"name": "g", "status": group_status}]}
    assert classify(user)[0] == expected


def test_disabled_user_in_a_bypass_group_is_disabled():
    assert classify({"status": "disabled", "groups": [{"name": "g", "status": "Bypass"}]})[0] == "disabled"


def test_unknown_user():
    assert classify(None)[0] == "unknown"


def test_readiness_json_shape():
    report = readiness_json([("a", "a", "push"), ("b", "bee", "not_enrolled"), ("c", "c", "unknown"),
                             ("d", "d", "bypass"), ("e", "e", "disabled"), ("f", "f", "locked_out")])
    assert set(report) == {"users", "total", "locked_out"}
    assert report["total"] == 6 and report["locked_out"] == 4
    assert report["users"][1] == {"user": "b", "duo_user": "bee", "state": "not_enrolled", "locked_out": True}
    assert all(set(u) == {"user", "duo_user", "state", "locked_out"} for u in report["users"])
    assert set(LOCKED_OUT_STATES) == {"not_enrolled", "unknown", "disabled", "locked_out"}


def test_directory_finds_usernames_aliases_and_ids_without_case():
    alice = {"user_id": "DUA", "username": "Alice", "aliases": {"alias1": "asmith"}}
    bob = {"user_id": "DUB", "username": "asmith2", "aliases": {"alias1": "alice"}}
    directory = DuoDirectory(iter([alice, bob]))
    assert directory.find(DuoIdentity(username="alice")) is alice  # a username wins over another's alias
    assert directory.find(DuoIdentity(username="ASMITH")) is alice
    assert directory.find(DuoIdentity(user_id="DUB")) is bob
    assert directory.find(DuoIdentity(username="nobody")) is None


# ------------------------------------------------------------------ Admin API calls (fake transport)

class FakeTransport:
    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls = []
        self.closed = False

    def call(self, method, path, params):
        self.calls.append((method, path, dict(params)))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self):
        self.closed = True


def test_paging_follows_next_offset():
    transport = FakeTransport(([{"username": "a"}, {"username": "b"}], {"next_offset": 2, "total_objects": 3}),
                              ([{"username": "c"}], {"total_objects": 3}))
    names = [u["username"] for u in AdminApi(transport, page_size=2).users()]
    assert names == ["a", "b", "c"]
    assert [c[2] for c in transport.calls] == [{"limit": "2", "offset": "0"}, {"limit": "2", "offset": "2"}]


def test_user_by_id_unknown_is_none_and_other_errors_pass():
    transport = FakeTransport(DuoRefused("HTTP 404", status=404, code=40401),
                              DuoRefused("HTTP 403", status=403, code=40301))
    api = AdminApi(transport)
    assert api.user(DuoIdentity(user_id="DU" + "0" * 18)) is None
    with pytest.raises(DuoRefused):
        api.user(DuoIdentity(user_id="DU" + "0" * 18))


def test_user_by_name_asks_for_username_or_alias():
    transport = FakeTransport(([], {}), ([{"username": "alice"}], {}))
    api = AdminApi(transport)
    assert api.user(DuoIdentity(username="nobody")) is None
    assert api.user(DuoIdentity(username="alice")) == {"username": "alice"}
    assert transport.calls[0] == ("GET", "/admin/v1/users", {"username": "nobody"})


# ------------------------------------------------------------------ the leading-zero pitfall

def test_duo_client_drops_leading_zeros_of_listed_codes():
    """The pitfall itself, in the pinned duo-client: codes passed as a list go through int()."""
    duo_client = pytest.importorskip("duo_client")
    assert duo_client.Admin._canonicalize_bypass_codes(["012345678", "123"]) == "12345678,123"


def test_bypass_codes_are_generated_by_duo_and_kept_as_strings():
    transport = FakeTransport((["012345678", "000000001"], {}))
    codes = AdminApi(transport).add_bypass_codes("DUX", count=2, uses=3, valid_secs=3600)
    assert codes == ["012345678", "000000001"]
    method, path, params = transport.calls[0]
    assert (method, path) == ("POST", "/admin/v1/users/DUX/bypass_codes")
    assert "codes" not in params  # never sent: duo-client's conversion would strip leading zeros
    assert params == {"count": "2", "reuse_count": "3", "valid_secs": "3600", "preserve_existing": True}


@pytest.mark.parametrize("reply", [[12345678], ["12345678", 5], "012345678", ["01234x678"], ["0123"], []])
def test_codes_that_are_not_digit_strings_are_refused(reply):
    with pytest.raises(DuoMalformedReply):
        AdminApi(FakeTransport((reply, {}))).add_bypass_codes("DUX", count=len(reply) if isinstance(reply, list) and reply else 1,
                                                              uses=1, valid_secs=60)


# ------------------------------------------------------------------ the shared login rule

def test_duo_identity_for_is_the_login_rule(monkeypatch):
    person = users.LocalUser("alice", 1000, 1000, "/home/alice", "/bin/sh")
    mapping = (("alice", DuoIdentity(user_id="DU" + "1" * 18)),)
    monkeypatch.setattr(users, "group_names", lambda user: ["staff"])
    # "admins" exists and does not list alice (a group that cannot be looked up never exempts)
    monkeypatch.setattr(users.grp, "getgrnam", lambda name: grp.struct_group((name, "x", 4321, [])))
    assert users.duo_identity_for(UsersSettings(), person) == DuoIdentity(username="alice")
    assert users.duo_identity_for(UsersSettings(mapping=mapping), person).user_id == "DU" + "1" * 18
    assert users.duo_identity_for(UsersSettings(groups=("admins",)), person) is None
    assert users.duo_identity_for(UsersSettings(groups=("staff",)), person) == DuoIdentity(username="alice")


def test_duo_identity_for_never_exempts_on_a_failed_group_lookup(monkeypatch):
    from pam_duo_py.errors import UserLookupError

    def broken(user):
        raise UserLookupError("directory down")

    monkeypatch.setattr(users, "group_names", broken)
    person = users.LocalUser("alice", 1000, 1000, "/home/alice", "/bin/sh")
    with pytest.raises(UserLookupError):
        users.duo_identity_for(UsersSettings(groups=("*",)), person)
    assert users.duo_identity_for(UsersSettings(), person) == DuoIdentity(username="alice")  # no groups: not asked


# ------------------------------------------------------------------ bypass-code command

class Terminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class FakeApi:
    def __init__(self, user):
        self._user = user
        self.created = []

    def user(self, identity):
        return self._user

    def add_bypass_codes(self, user_id, **kwargs):
        self.created.append((user_id, kwargs))
        return ["012345678"] * kwargs["count"]


def _config(monkeypatch):
    root = users.lookup("root")
    monkeypatch.setattr(users, "lookup", lambda name: root if name == "root" else None)
    text = f'[duo]\nikey = "{IKEY}"\nskey = "{SKEY}"\nhost = "{HOST}"\n'
    return parse_config(text, "/c.toml")


def test_bypass_code_is_not_printed_to_a_non_terminal_without_yes(monkeypatch, capsys):
    api = FakeApi({"user_id": "DUX", "username": "root", "status": "active"})
    out, emitted = Terminal(tty=False), []
    with pytest.raises(admin_cli._Failed) as info:
        admin_cli.cmd_bypass_code(_config(monkeypatch), api, "root", count=1, uses=1, valid=3600, yes=False,
                                  out=out, emit=emitted.append)
    assert info.value.status == 1 and api.created == [] and emitted == [] and out.getvalue() == ""
    assert "not a terminal" in capsys.readouterr().err


@pytest.mark.parametrize("tty, yes", [(True, False), (False, True)])
def test_bypass_code_printed_once_and_recorded_without_the_code(monkeypatch, tty, yes, syslog_lines):
    api = FakeApi({"user_id": "DUX", "username": "root", "status": "active"})
    out, emitted = Terminal(tty=tty), []
    status = admin_cli.cmd_bypass_code(_config(monkeypatch), api, "root", count=2, uses=3, valid=7200, yes=yes,
                                       out=out, emit=emitted.append)
    assert status == 0 and out.getvalue().count("012345678") == 2
    assert api.created == [("DUX", {"count": 2, "uses": 3, "valid_secs": 7200})]
    (record,) = emitted
    assert record["outcome"] == "admin" and record["action"] == "bypass-code" and record["user"] == "root"
    assert (record["count"], record["uses"], record["valid_secs"]) == (2, 3, 7200)
    assert "012345678" not in json.dumps(record)
    priority, line = events.syslog_line(record)
    assert "Duo admin action for 'root'" in line and "2 bypass codes" in line and "012345678" not in line


@pytest.mark.parametrize("option, value", [("count", 0), ("count", 11), ("uses", 0), ("uses", 101), ("valid", 30),
                                           ("valid", 31 * 86400)])
def test_bypass_code_limits(monkeypatch, option, value):
    kwargs = {"count": 1, "uses": 1, "valid": 3600, option: value}
    with pytest.raises(admin_cli._Failed):
        admin_cli.cmd_bypass_code(_config(monkeypatch), FakeApi(None), "root", yes=True, out=Terminal(True),
                                  emit=lambda r: None, **kwargs)


def test_audit_summary_counts_admin_actions_apart_from_logins():
    now = 1_800_000_000.0
    records = [dict(events.event("success", user="a"), time=now), dict(events.event("admin", user="a"), time=now)]
    summary = audit.summarise(records, now - 10)
    assert summary["total"] == 1 and summary["admin_actions"] == 1 and "admin" not in summary["outcomes"]
    assert "admin" not in events.OUTCOMES and "admin" in events.ADMIN_OUTCOMES


def test_admin_api_module_is_never_imported_by_the_login_path():
    import ast
    import pathlib

    package = pathlib.Path(events.__file__).parent  # the runtime package
    for name in ("pam.py", "pam_entry.py", "broker_protocol.py", "broker_client.py", "broker_trust.py",
                 "broker_server.py", "result.py", "wrapper.py", "login.py", "engine.py", "duo.py", "config.py"):
        tree = ast.parse((package / name).read_text())
        imported = {getattr(node, "module", None) or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {m for m in imported if "admin" in m}, (name, imported)


def test_metrics_skip_admin_actions():
    from pam_duo_tools import metrics

    counts = metrics.new_counts()
    metrics.count(counts, events.event("admin", user="a", reason="issued 1 bypass code"))
    metrics.count(counts, events.event("success", user="a", service="sshd", factor="push"))
    assert counts["unreadable"] == 0 and list(counts["logins"]) == ["success"]
