"""One login front to back with a scripted Duo: local user, groups, identity, events (docs/behaviour.md §4, §5, §8)."""
from __future__ import annotations

import grp
import os
import pwd

import pytest

from fakes import APPROVED, PASSCODE_BAD, PASSCODE_OK, FakeDuo, FakePrompter
from pam_duo_py import login as login_mod
from pam_duo_py import users
from pam_duo_py.config import parse_config
from pam_duo_py.engine import Kind, Result
from pam_duo_py.errors import DuoUnavailable, UserLookupError
from pam_duo_py.events import EventSink
from pam_duo_py.login import HostProfile, LoginRequest, authenticate, ip_literal, profile
from pam_duo_py.replies import Device, Preauth
from pam_duo_py.users import LocalUser

try:
    ME = pwd.getpwuid(os.geteuid()).pw_name
except KeyError:  # pragma: no cover - a uid without a passwd entry
    pytest.skip("the current uid has no passwd entry", allow_module_level=True)
try:
    MY_GROUP = grp.getgrgid(pwd.getpwuid(os.geteuid()).pw_gid).gr_name
except KeyError:  # pragma: no cover - a primary group without a name
    MY_GROUP = str(pwd.getpwuid(os.geteuid()).pw_gid)
UNKNOWN = "no-such-user-pdp-7f3a"
PHONE = Device("DPHONE1", "phone", "XXX-XXX-1234", ("push", "phone", "sms"))
AUTH = Preauth("auth", "", devices=(PHONE,))
CONFIG_HEAD = '[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "' + "S" * 40 + '"\nhost = "api-test.duosecurity.com"\n'


def make_config(extra: str = "", map_text: bytes | None = None):
    def read(path, secret):
        assert map_text is not None
        return map_text

    return parse_config(CONFIG_HEAD + extra, "/etc/pam_duo_py/pam_duo.toml", read=read)


class Sink(EventSink):
    def __init__(self) -> None:
        super().__init__(None)
        self.events: list[dict] = []

    def emit(self, record: dict) -> None:
        self.events.append(record)


class Factory:
    def __init__(self, duo: FakeDuo) -> None:
        self.duo = duo
        self.settings = []

    def __call__(self, settings):
        self.settings.append(settings)
        return self.duo


def run(request: LoginRequest, *, config=None, duo=None, answers=()):
    duo = duo or FakeDuo(Preauth("allow", "Allowing unknown user"))
    factory = Factory(duo)
    sink = Sink()
    ui = FakePrompter(answers)
    outcome = authenticate(config or make_config(), request, ui, sink=sink, duo_factory=factory, hostname="server1")
    return outcome, sink.events, factory, ui


# -- who -----------------------------------------------------------------------------------------

def test_unknown_local_user():
    outcome, events, factory, ui = run(LoginRequest(user=UNKNOWN, service="sshd", rhost="203.0.113.5"))
    assert outcome.result is Result.USER_UNKNOWN
    assert factory.settings == [] and ui.asked == []
    (event,) = events
    assert event["outcome"] == "failure" and event["user"] == UNKNOWN and event["rhost"] == "203.0.113.5"


def test_user_name_that_cannot_be_encoded_is_unknown():
    outcome, events, factory, _ = run(LoginRequest(user="bad\ud800name", service="sshd"))
    assert outcome.result is Result.USER_UNKNOWN and factory.settings == []


def test_user_lookup_failure_is_a_service_error(monkeypatch):
    def broken(name):
        raise UserLookupError("directory down")

    monkeypatch.setattr(users, "lookup", broken)
    outcome, events, factory, _ = run(LoginRequest(user=ME, service="sshd"))
    assert outcome.result is Result.SERVICE_ERR
    assert factory.settings == []
    assert [e["outcome"] for e in events] == ["error"]


def test_exempt_user_is_ignored_never_success():
    config = make_config('[users]\ngroups = ["pdp-nonexistent-group-*"]\n')
    outcome, events, factory, ui = run(LoginRequest(user=ME, service="sshd", rhost="203.0.113.5"), config=config)
    assert outcome.result is Result.IGNORE and outcome.kind is Kind.EXEMPT
    assert factory.settings == [] and ui.asked == []
    (event,) = events
    assert event["outcome"] == "exempt" and event["user"] == ME and event["service"] == "sshd"


def test_negated_group_exempts():
    config = make_config(f'[users]\ngroups = ["*", "!{MY_GROUP}"]\n')
    outcome, events, factory, _ = run(LoginRequest(user=ME, service="sshd"), config=config)
    assert outcome.result is Result.IGNORE and factory.settings == []


def test_user_in_groups_must_do_duo():
    config = make_config(f'[users]\ngroups = ["{MY_GROUP}"]\n')
    outcome, events, factory, _ = run(LoginRequest(user=ME, service="sshd"), config=config)
    assert outcome.result is Result.SUCCESS and outcome.kind is Kind.PREAUTH_ALLOW
    assert len(factory.settings) == 1


def test_group_lookup_failure_is_a_service_error_never_an_exemption(monkeypatch):
    def broken(name, gid):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(users.os, "getgrouplist", broken)
    config = make_config('[users]\ngroups = ["pdp-nonexistent-group-*"]\n')
    outcome, events, factory, _ = run(LoginRequest(user=ME, service="sshd"), config=config)
    assert outcome.result is Result.SERVICE_ERR
    assert factory.settings == []
    assert [e["outcome"] for e in events] == ["error"]


def test_unreadable_group_database_is_a_service_error_never_an_exemption(monkeypatch):
    # /etc/group unreadable: getgrouplist gives the primary gid only, getgrgid raises KeyError
    monkeypatch.setattr(users.os, "getgrouplist", lambda name, gid: [gid])

    def unreadable(gid):
        raise KeyError(gid)

    monkeypatch.setattr(users.grp, "getgrgid", unreadable)
    config = make_config('[users]\ngroups = ["pdp-nonexistent-group-*"]\n')
    outcome, events, factory, _ = run(LoginRequest(user=ME, service="sshd"), config=config)
    assert (outcome.result, [e["outcome"] for e in events]) == (Result.SERVICE_ERR, ["error"])
    assert "has no name" in events[0]["reason"] and factory.settings == []


def test_a_named_group_the_directory_cannot_find_is_a_service_error_never_an_exemption():
    # An LDAP/sssd outage: the user's list lacks the group and the group itself cannot be found.
    config = make_config('[users]\ngroups = ["pdp-no-such-group-7f3a"]\n')
    outcome, events, factory, _ = run(LoginRequest(user=ME, service="sshd"), config=config)
    assert (outcome.result, [e["outcome"] for e in events]) == (Result.SERVICE_ERR, ["error"])
    assert "'pdp-no-such-group-7f3a' of users.groups cannot be looked up" in events[0]["reason"]


def test_no_groups_configured_means_no_group_lookup(monkeypatch):
    def broken(user):
        raise AssertionError("groups must not be looked up")

    monkeypatch.setattr(users, "group_names", broken)
    outcome, _, _, _ = run(LoginRequest(user=ME, service="sshd"))
    assert outcome.result is Result.SUCCESS


def test_su_to_root_asks_the_calling_user(monkeypatch):
    carol = LocalUser("carol", 4321, 4321, "/home/carol", "/bin/sh")
    monkeypatch.setattr(users, "lookup", lambda name: LocalUser("root", 0, 0, "/root", "/bin/sh") if name == "root" else None)
    monkeypatch.setattr(users, "lookup_uid", lambda uid: carol if uid == 4321 else None)
    duo = FakeDuo(Preauth("allow", "ok"))
    outcome, events, _, _ = run(LoginRequest(user="root", service="su", caller_uid=4321), duo=duo)
    assert outcome.result is Result.SUCCESS
    assert duo.calls[0].args["identity"].params() == {"username": "carol"}
    assert events[-1]["user"] == "carol"


def test_the_host_profile_on_the_request_decides_the_su_rule(monkeypatch):
    carol = LocalUser("carol", 4321, 4321, "/home/carol", "/bin/sh")
    monkeypatch.setattr(users, "lookup", lambda name: LocalUser("root", 0, 0, "/root", "/bin/sh") if name == "root" else None)
    monkeypatch.setattr(users, "lookup_uid", lambda uid: carol if uid == 4321 else None)
    duo = FakeDuo(Preauth("allow", "ok"))
    run(LoginRequest(user="root", service="su", caller_uid=4321, host=HostProfile()), duo=duo)
    assert duo.calls[0].args["identity"].params() == {"username": "root"}  # no su rule in this profile


def test_the_command_for_pushinfo_comes_from_the_host_profile():
    config = make_config("[auth]\npushinfo_command = true\n")
    duo = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[APPROVED])
    request = LoginRequest(user=ME, service="sudo", tty="/dev/pts/1", host=profile("sudo", "id -un"))
    outcome, _, _, _ = run(request, config=config, duo=duo, answers=["1"])
    assert outcome.result is Result.SUCCESS
    assert "Command=id+-un" in duo.auth_calls[0].args["params"]["pushinfo"]


# -- as whom, and what is sent -------------------------------------------------------------------

@pytest.mark.parametrize("service", ["su", "su-l"])
def test_su_remembered_for_one_caller_is_not_remembered_for_another(tmp_path, monkeypatch, service):
    alice = LocalUser("alice", 1001, 1001, "/home/alice", "/bin/bash")
    monkeypatch.setattr(users, "lookup", lambda name: alice if name == "alice" else None)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = make_config(f'[remember]\nseconds = 300\nservices_without_address = ["{service}"]\n'
                         f'state_dir = "{state}"\n')

    def su(caller_uid):
        duo = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[APPROVED])
        outcome, _, _, _ = run(LoginRequest(user="alice", service=service, caller_uid=caller_uid), config=config,
                               duo=duo, answers=["1"])
        return outcome

    assert su(1001).factor == "push"                 # alice's own su, approved with Duo
    assert su(1001).factor == "remembered"           # alice again: remembered
    other = su(1002)                                  # bob's "su alice"
    assert (other.result, other.factor) == (Result.SUCCESS, "push")


def test_mapped_duo_identity_is_used_and_logged():
    config = make_config('[users]\nmap_file = "/etc/pam_duo_py/users.map"\n',
                         map_text=f"{ME} user_id=DUABCDEFGHIJ01234567\n".encode())
    duo = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[APPROVED])
    outcome, events, factory, ui = run(LoginRequest(user=ME, service="sshd", tty="ssh", rhost="203.0.113.5"),
                                       config=config, duo=duo, answers=["1"])
    assert outcome.result is Result.SUCCESS
    assert duo.calls[0].args["identity"].params() == {"user_id": "DUABCDEFGHIJ01234567"}
    assert duo.auth_calls[0].args["identity"].params() == {"user_id": "DUABCDEFGHIJ01234567"}
    (event,) = events
    assert event["outcome"] == "success" and event["user"] == ME and event["duo_user"] == "DUABCDEFGHIJ01234567"
    assert event["factor"] == "push" and event["txid"] == "TX1" and event["tty"] == "ssh"
    assert duo.closed == 1
    assert factory.settings == [config.duo]


def test_preauth_gets_the_ip_literal_and_hostname():
    duo = FakeDuo(Preauth("allow", "ok"))
    run(LoginRequest(user=ME, service="sshd", rhost="[2001:db8::5]"), duo=duo)
    assert duo.calls[0].args["ipaddr"] == "2001:db8::5" and duo.calls[0].args["hostname"] == "server1"
    duo = FakeDuo(Preauth("allow", "ok"))
    run(LoginRequest(user=ME, service="sshd", rhost="client.example.com"), duo=duo)
    assert duo.calls[0].args["ipaddr"] is None


def test_claimed_address_is_not_sent_to_duo_and_is_logged_as_claimed():
    duo = FakeDuo(Preauth("allow", "ok"))
    _, events, _, _ = run(LoginRequest(user=ME, service="sshd", rhost="10.0.0.1", trusted_address=False), duo=duo)
    assert duo.calls[0].args["ipaddr"] is None
    assert events[-1]["rhost"] != "10.0.0.1" and "10.0.0.1" in events[-1]["rhost"]


def test_no_tty_is_non_interactive_one_push_no_prompt():
    duo = FakeDuo(AUTH, auth=[{"txid": "TX1"}], status=[APPROVED])
    outcome, _, _, ui = run(LoginRequest(user=ME, service="sudo", tty=None), duo=duo)
    assert outcome.result is Result.SUCCESS and ui.asked == [] and duo.factors == ["push"]


def test_tty_is_interactive():
    duo = FakeDuo(AUTH, auth=[PASSCODE_OK])
    outcome, _, _, ui = run(LoginRequest(user=ME, service="sudo", tty="/dev/pts/3"), duo=duo, answers=["123456"])
    assert outcome.result is Result.SUCCESS and len(ui.asked) == 1


def test_events_never_hold_a_passcode_or_the_password():
    duo = FakeDuo(AUTH, auth=[PASSCODE_BAD, PASSCODE_OK])
    request = LoginRequest(user=ME, service="sshd", tty="ssh", password="pw-Secret-99")
    outcome, events, _, _ = run(request, duo=duo, answers=["246813", "pw-Secret-99", "123456"])
    assert outcome.result is Result.SUCCESS
    text = repr(events)
    assert "246813" not in text and "123456" not in text and "pw-Secret-99" not in text
    assert "pw-Secret-99" not in repr(request)


def test_failsafe_event():
    config = make_config('[auth]\nfailmode = "safe"\n')
    duo = FakeDuo(DuoUnavailable("timed out"))
    outcome, events, _, _ = run(LoginRequest(user=ME, service="sshd"), config=config, duo=duo)
    assert outcome.result is Result.SUCCESS and events[-1]["outcome"] == "failsafe"


def test_duo_client_is_closed_even_when_the_engine_raises():
    class Broken(FakeDuo):
        def preauth(self, *args, **kwargs):
            raise RuntimeError("bug")

    duo = Broken()
    with pytest.raises(RuntimeError):
        run(LoginRequest(user=ME, service="sshd"), duo=duo)
    assert duo.closed == 1


def test_default_duo_factory_builds_the_real_client_without_connecting():
    client = login_mod._default_duo(make_config().duo)
    try:
        assert client.connections_opened == 0
    finally:
        client.close()


# -- ip_literal ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rhost,expected", [
    ("203.0.113.5", "203.0.113.5"),
    (" 203.0.113.5 ", "203.0.113.5"),
    ("2001:db8::5", "2001:db8::5"),
    ("2001:DB8:0:0::5", "2001:db8::5"),
    ("[2001:db8::5]", "2001:db8::5"),
    ("fe80::1%eth0", "fe80::1"),
    ("[fe80::1%eth0]", "fe80::1"),
    ("::1", "::1"),
    ("client.example.com", None),
    ("localhost", None),
    ("203.0.113.5:22", None),
    ("[2001:db8::5]:22", None),
    ("203.0.113", None),
    ("999.0.0.1", None),
    ("01.2.3.4", None),
    ("", None),
    (None, None),
    ("1.2.3.4\n5.6.7.8", None),
])
def test_ip_literal(rhost, expected):
    assert ip_literal(rhost) == expected


def test_ip_literal_of_a_mapped_ipv4_address():
    # Python versions differ in how they print it; both forms are the same address
    assert ip_literal("::ffff:192.0.2.1") in ("::ffff:192.0.2.1", "::ffff:c000:201")
