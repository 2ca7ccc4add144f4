"""A group directory that cannot answer never exempts anyone (real libpam, real pam_python).

Each login runs in a private mount namespace (``unshare -m``) where a copy of ``/etc/group``
with lines left out is bind-mounted over ``/etc/group``: what a broken or unreachable group
directory looks like to glibc. The real ``/etc/group`` is never changed. The stack is Duo as
the only factor, so an exemption (``PAM_IGNORE``) would end as ``PAM_SUCCESS``.
"""
from __future__ import annotations

import grp
import json
import pwd
import subprocess

import pytest

from .conftest import (DUO_GROUP, PAM_SERVICE_ERR, PAM_SUCCESS, STACK_ONLY_FACTOR, _write_root_file,
                       clean_env, parse_pamdrive)

pytestmark = pytest.mark.system

SERVICE = "pdt-groups"


def _group_file_without(names: set[str]) -> str:
    with open("/etc/group", encoding="utf-8") as f:
        return "".join(line for line in f if line.split(":", 1)[0] not in names)


@pytest.fixture
def outage(installed, simulator, test_users, test_root, pam_service, write_config, write_map_file, pamdrive):
    audit = test_root / "groups-audit.jsonl"
    audit.unlink(missing_ok=True)
    conf = write_config("groups", users={"groups": [DUO_GROUP], "map_file": str(write_map_file())},
                        log={"audit_file": str(audit)},
                        extra_text=f'[broker]\nsocket = "{test_root}/no-broker.sock"\n')
    pam_service(SERVICE, STACK_ONLY_FACTOR, conf=conf)

    def login(user: str, group_text: str) -> tuple[int, list[dict]]:
        group_file = _write_root_file(test_root / "group-for-this-test", group_text, 0o644)
        script = 'mount --bind "$1" /etc/group && shift && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(group_file),
                str(pamdrive), "--", SERVICE, user]
        proc = subprocess.run(argv, env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        _, results = parse_pamdrive(proc.stdout)
        assert results, f"pamdrive gave no result: {proc.returncode} {proc.stdout!r} {proc.stderr!r}"
        events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        audit.unlink(missing_ok=True)
        return results[-1][0], events

    return login


def test_an_unchanged_group_file_still_exempts_a_non_member(outage, test_users):
    code, events = outage(test_users.exempt, _group_file_without(set()))
    assert code == PAM_SUCCESS
    assert [e["outcome"] for e in events] == ["exempt"]


def test_group_of_users_groups_missing_from_the_directory_refuses(outage, test_users):
    # pdt-alice is in pdt-duo; the directory that should say so does not answer for that group.
    code, events = outage(test_users["alice"], _group_file_without({DUO_GROUP}))
    assert code == PAM_SERVICE_ERR
    assert [e["outcome"] for e in events] == ["error"]
    assert f"group '{DUO_GROUP}' of users.groups cannot be looked up" in events[0]["reason"]


def test_primary_group_without_a_name_refuses(outage, test_users):
    user = test_users.exempt
    primary = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    code, events = outage(user, _group_file_without({primary}))
    assert code == PAM_SERVICE_ERR
    assert [e["outcome"] for e in events] == ["error"]
    assert "has no name" in events[0]["reason"]


def test_unreadable_group_database_refuses(outage, test_users):
    code, events = outage(test_users["alice"], "")
    assert code == PAM_SERVICE_ERR
    assert [e["outcome"] for e in events] == ["error"]
