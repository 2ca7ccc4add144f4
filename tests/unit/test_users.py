"""Who must do Duo, as whom, and group lookups (docs/behaviour.md §4, §5)."""
from __future__ import annotations

import grp
import os
import pwd

import pytest

from pam_duo_py import users
from pam_duo_py.config import DuoIdentity, UsersSettings
from pam_duo_py.errors import UserLookupError
from pam_duo_py.login import profile
from pam_duo_py.users import LocalUser

ALICE = LocalUser("alice", 1001, 1001, "/home/alice", "/bin/bash")
ROOT = LocalUser("root", 0, 0, "/root", "/bin/bash")


# -- requires_duo ------------------------------------------------------------------------------

@pytest.mark.parametrize("groups,member_of,expected", [
    ((), ["users"], True),                                   # empty = everyone
    ((), [], True),
    (("wheel",), ["users", "wheel"], True),
    (("wheel",), ["users"], False),
    (("wheel",), [], False),
    (("wheel",), ["wheel2"], False),                          # whole names only
    (("wheel",), ["Wheel"], False),                           # case sensitive
    (("duo-*",), ["duo-admins"], True),
    (("duo-*",), ["duo-"], True),
    (("duo-*",), ["xduo-admins"], False),
    (("?heel",), ["wheel"], True),
    (("?heel",), ["heel"], False),
    (("*",), ["anything"], True),
    (("*", "!contractors"), ["users", "contractors"], False),  # a negated match wins
    (("*", "!contractors"), ["users"], True),
    (("!contractors", "*"), ["contractors"], False),          # order does not matter
    (("wheel", "!temp*"), ["wheel", "temp-2024"], False),
    (("wheel", "!temp*"), ["wheel", "xtemp"], True),
    (("wheel", "!temp*"), ["temp-2024"], False),
    (("admins", "ops"), ["ops"], True),
    (("admins", "ops"), ["dev"], False),
])
def test_requires_duo(groups, member_of, expected):
    assert UsersSettings(groups=groups).requires_duo(member_of) is expected


def test_requires_duo_looks_at_every_group():
    settings = UsersSettings(groups=("duo",))
    assert settings.requires_duo(["a", "b", "c", "duo"]) is True
    assert UsersSettings(groups=("*", "!nope")).requires_duo(["a", "b", "nope"]) is False


# -- duo_identity ------------------------------------------------------------------------------

def test_duo_identity_mapping():
    settings = UsersSettings(mapping=(("alice", DuoIdentity(username="alice@example.com")),
                                      ("bob", DuoIdentity(user_id="DUABCDEFGHIJ01234567"))))
    assert settings.duo_identity("alice") == DuoIdentity(username="alice@example.com")
    assert settings.duo_identity("bob").params() == {"user_id": "DUABCDEFGHIJ01234567"}
    assert str(settings.duo_identity("bob")) == "DUABCDEFGHIJ01234567"
    assert settings.duo_identity("carol") == DuoIdentity(username="carol")
    assert settings.duo_identity("carol").params() == {"username": "carol"}
    # exact names only
    assert settings.duo_identity("Alice") == DuoIdentity(username="Alice")


# -- second_factor_user ------------------------------------------------------------------------

@pytest.fixture
def caller(monkeypatch):
    asked = []

    def lookup_uid(uid):
        asked.append(uid)
        return {1001: ALICE}.get(uid)

    monkeypatch.setattr(users, "lookup_uid", lookup_uid)
    return asked


@pytest.mark.parametrize("service", ["su", "su-l"])
def test_su_to_root_is_done_by_the_calling_user(caller, service):
    assert users.second_factor_user(profile(service).caller_does_duo, ROOT, 1001) == ALICE
    assert caller == [1001]


@pytest.mark.parametrize("service", ["su", "su-l"])
def test_su_to_root_by_an_unknown_caller_has_nobody_to_ask(caller, service):
    assert users.second_factor_user(profile(service).caller_does_duo, ROOT, 4242) is None


def test_su_by_root_is_done_by_the_target(caller):
    assert users.second_factor_user(profile("su").caller_does_duo, ROOT, 0) == ROOT
    assert users.second_factor_user(profile("su").caller_does_duo, ALICE, 0) == ALICE
    assert caller == []


def test_su_to_another_user_is_done_by_the_target(caller):
    bob = LocalUser("bob", 1002, 1002, "/home/bob", "/bin/sh")
    assert users.second_factor_user(profile("su").caller_does_duo, bob, 1001) == bob
    assert caller == []


@pytest.mark.parametrize("service", ["sudo", "sudo-i", "sshd", "login", "sux", "su-x"])
def test_other_services_use_the_target(caller, service):
    assert users.second_factor_user(profile(service).caller_does_duo, ROOT, 1001) == ROOT
    assert caller == []


# -- lookups -----------------------------------------------------------------------------------

def test_lookup_of_a_real_user():
    me = pwd.getpwuid(os.geteuid())
    user = users.lookup(me.pw_name)
    assert user == LocalUser(me.pw_name, me.pw_uid, me.pw_gid, me.pw_dir, me.pw_shell)
    assert users.lookup_uid(me.pw_uid) == user


@pytest.mark.parametrize("name", ["", "no-such-user-pdp-7f3a", "a\0b", "x" * 300, "bad\udcffuser", "bad\ud800user",
                                  "root\n"])
def test_lookup_of_an_impossible_or_unknown_name_is_none(name):
    assert users.lookup(name) is None


def test_lookup_failure_is_a_lookup_error(monkeypatch):
    def broken(name):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(users.pwd, "getpwnam", broken)
    with pytest.raises(UserLookupError):
        users.lookup("alice")


def test_group_names_of_a_real_user_include_the_primary_group():
    import grp

    me = users.lookup_uid(os.geteuid())
    names = users.group_names(me)
    try:
        primary = grp.getgrgid(me.gid).gr_name
    except KeyError:  # a primary group without a name counts by number
        primary = str(me.gid)
    assert primary in names
    assert len(names) == len(set(names))


def test_group_names_raise_when_getgrouplist_fails(monkeypatch):
    def broken(name, gid):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(users.os, "getgrouplist", broken)
    with pytest.raises(UserLookupError):
        users.group_names(ALICE)


def test_group_names_raise_when_a_group_lookup_fails(monkeypatch):
    monkeypatch.setattr(users.os, "getgrouplist", lambda name, gid: [gid, 4242])

    def broken(gid):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(users.grp, "getgrgid", broken)
    with pytest.raises(UserLookupError):
        users.group_names(ALICE)


def test_group_without_a_name_is_a_lookup_error_never_a_number(monkeypatch):
    # glibc answers KeyError both for a gid with no entry and for an unreadable group database
    monkeypatch.setattr(users.os, "getgrouplist", lambda name, gid: [987654, 987655])

    def getgrgid(gid):
        raise KeyError(gid)

    monkeypatch.setattr(users.grp, "getgrgid", getgrgid)
    with pytest.raises(UserLookupError, match="group 987654 of 'alice' has no name"):
        users.group_names(ALICE)


class FakeGroups:
    """A group database: gid -> name, and name -> (gid, members); ``down`` names fail like an outage."""

    def __init__(self, monkeypatch, listed, database):
        self.database = database
        monkeypatch.setattr(users.os, "getgrouplist", lambda name, gid: list(listed))
        monkeypatch.setattr(users.grp, "getgrgid", self.getgrgid)
        monkeypatch.setattr(users.grp, "getgrnam", self.getgrnam)

    def getgrgid(self, gid):
        for name, (number, _) in self.database.items():
            if number == gid:
                return grp.struct_group((name, "x", gid, []))
        raise KeyError(gid)

    def getgrnam(self, name):
        if name not in self.database:
            raise KeyError(name)
        gid, members = self.database[name]
        return grp.struct_group((name, "x", gid, members))


def test_exempt_when_every_named_group_resolves_and_lacks_the_user(monkeypatch):
    FakeGroups(monkeypatch, [1001], {"alice": (1001, []), "admins": (50, ["bob"])})
    assert users.requires_duo(UsersSettings(groups=("admins",)), ALICE) is False
    assert users.requires_duo(UsersSettings(groups=("admins",)), ALICE) is False


def test_a_member_by_the_group_list_must_do_duo(monkeypatch):
    FakeGroups(monkeypatch, [1001, 50], {"alice": (1001, []), "admins": (50, ["alice"])})
    assert users.requires_duo(UsersSettings(groups=("admins",)), ALICE) is True


def test_a_named_group_that_cannot_be_looked_up_is_a_lookup_error_not_an_exemption(monkeypatch):
    # The directory is down: getgrouplist silently returns the primary group only, and the
    # group named in users.groups cannot be found.
    FakeGroups(monkeypatch, [1001], {"alice": (1001, [])})
    with pytest.raises(UserLookupError, match="group 'admins' of users.groups cannot be looked up"):
        users.requires_duo(UsersSettings(groups=("admins", "!temp*")), ALICE)


def test_a_member_the_group_list_left_out_must_do_duo(monkeypatch):
    FakeGroups(monkeypatch, [1001], {"alice": (1001, []), "admins": (50, ["alice"])})
    assert users.requires_duo(UsersSettings(groups=("admins",)), ALICE) is True


def test_wildcards_and_negated_patterns_are_not_looked_up_by_name(monkeypatch):
    FakeGroups(monkeypatch, [1001], {"alice": (1001, [])})
    assert users.requires_duo(UsersSettings(groups=("adm*", "ops?", "[xy]z", "!contractors")), ALICE) is False
