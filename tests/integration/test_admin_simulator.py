"""The admin commands against the simulator's Admin API, over real HTTPS with real signatures."""
from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pam_duo_tools import cli  # noqa: E402
from pam_duo_tools.admin_api import AdminApi, admin_transport  # noqa: E402
from pam_duo_tools.admin_config import load_admin_config  # noqa: E402
from pam_duo_py.config import DuoIdentity  # noqa: E402
from pam_duo_py.duo import DuoClient  # noqa: E402
from pam_duo_py.errors import DuoCredentialsRejected, DuoRefused  # noqa: E402
from pam_duo_sim.simulator import Simulator  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    state = tmp_path_factory.mktemp("adminsim")
    os.chmod(state, 0o700)
    s = Simulator(state, approve_delay=0.1, admin_fault="429ra0x1")
    s.start()
    yield s
    s.stop()


@pytest.fixture
def conf(sim: Simulator, tmp_path: pathlib.Path):
    """conf(map_lines, groups=None) -> main config path; local user root maps as the lines say."""
    os.chmod(tmp_path, 0o700)

    def write(map_lines: list[str], groups: list[str] | None = None, audit: bool = True) -> str:
        mapping = tmp_path / "map"
        mapping.write_text("\n".join(map_lines) + "\n")
        os.chmod(mapping, 0o600)
        text = sim.config_path.read_text() + f'[users]\nmap_file = "{mapping}"\n'
        if groups is not None:
            text += f"groups = {json.dumps(groups)}\n"
        if audit:
            text += f'[log]\naudit_file = "{tmp_path / "audit.jsonl"}"\n'
        path = tmp_path / "main.toml"
        path.write_text(text)
        os.chmod(path, 0o600)
        return str(path)

    return write


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def admin(sim: Simulator, kind: str = "admin.toml") -> str:
    return str(sim.state_dir / kind)


def test_admin_keys_and_auth_keys_are_refused_on_each_others_api(sim: Simulator):
    auth_settings = load_config_settings(sim)
    admin_settings = load_admin_config(admin(sim))
    with pytest.raises(DuoCredentialsRejected):
        DuoClient(admin_settings).check()
    api = AdminApi(admin_transport(auth_settings))
    with pytest.raises(DuoCredentialsRejected):
        api.user(DuoIdentity(username="alice"))


def load_config_settings(sim: Simulator):
    from pam_duo_py.config import parse_config

    return parse_config(sim.config_path.read_text(), str(sim.config_path)).duo


def test_read_only_key_reads_but_cannot_write(sim: Simulator):
    api = AdminApi(admin_transport(load_admin_config(admin(sim, "admin-readonly.toml"))))
    user = api.user(DuoIdentity(username="alice"))
    assert user and user["username"] == "alice"
    with pytest.raises(DuoRefused) as info:
        api.add_bypass_codes(user["user_id"], count=1, uses=1, valid_secs=60)
    assert (info.value.status, info.value.code) == (403, 40301)


def test_users_are_paged(sim: Simulator):
    mark = len(sim.request_log.read_text().splitlines())
    users = list(AdminApi(admin_transport(load_admin_config(admin(sim))), page_size=4).users())
    names = {u["username"] for u in users}
    assert {"alice", "bypass", "enroll", "deny", "lockedout", "tokenonly"} <= names and len(users) == len(names)
    lines = [json.loads(x) for x in sim.request_log.read_text().splitlines()[mark:]]
    pages = [x for x in lines if x.get("path") == "/admin/v1/users" and x.get("status") == 200]
    assert len(pages) == -(-len(users) // 4)


def test_rate_limit_is_waited_out(sim: Simulator):
    """The simulator answered the first signed Admin API request of this module 429 (Retry-After: 0);
    the client waited and sent it again, and the test that made it passed."""
    lines = [json.loads(x) for x in sim.request_log.read_text().splitlines()]
    admin_lines = [x for x in lines if str(x.get("path", "")).startswith("/admin/")]
    first = [x["status"] for x in admin_lines].index(429)
    assert admin_lines[first + 1]["path"] == admin_lines[first]["path"] and admin_lines[first + 1]["status"] == 200


@pytest.mark.parametrize("duo_name, status, expected", [
    ("alice", 0, ["Status:      active", "Aliases:     alice.smith", "capabilities: auto, push", "Duo Push"]),
    ("bypass", 0, ["Status:      bypass", "in bypass"]),
    ("alice.smith", 0, ["Duo user:    alice ("]),
    ("nobody", 1, []),
])
def test_admin_user(sim, conf, capsys, duo_name, status, expected):
    config = conf([f"root {duo_name}"])
    code, out, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "user", "root")
    assert code == status, err
    for text in expected:
        assert text in out
    if status:
        assert "Duo does not know 'nobody'" in err


def test_admin_user_json_and_user_id_mapping(sim, conf, capsys):
    api = AdminApi(admin_transport(load_admin_config(admin(sim))))
    user_id = api.user(DuoIdentity(username="tokenonly"))["user_id"]
    config = conf([f"root user_id={user_id}"])
    code, out, _ = run(capsys, "admin", "user", "root", "--json", "-c", config, "--admin-config", admin(sim))
    view = json.loads(out)
    assert code == 0 and view["duo_user"] == "tokenonly" and view["state"] == "passcode_only"
    assert view["tokens"][0]["type"] == "h6" and view["phones"] == []


def test_bypass_codes_log_in_exactly_their_uses_and_are_never_logged(sim, conf, capsys, tmp_path):
    config = conf(["root onedevice"])
    code, out, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "bypass-code", "root",
                         "--count", "2", "--uses", "2", "--valid", "10m", "--yes")
    assert code == 0, err
    codes = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(codes) == 2 and codes[0].startswith("0") and all(len(c) == 9 and c.isdigit() for c in codes)
    duo = DuoClient(load_config_settings(sim))
    identity = DuoIdentity(username="onedevice")
    results = [duo.check_passcode(identity, codes[0], ipaddr=None, hostname=None).result for _ in range(3)]
    assert results == ["allow", "allow", "deny"]
    # a later batch keeps the earlier codes (preserve_existing)
    code, out, _ = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "bypass-code", "root", "--yes")
    assert duo.check_passcode(identity, codes[1], ipaddr=None, hostname=None).result == "allow"
    # expired codes are refused
    (new,) = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    for entry in sim.admin._codes[next(iter(u for u, v in sim.admin.users.items() if v["username"] == "onedevice"))]:
        entry["expires"] = sim.now() - 1
    assert duo.check_passcode(identity, new, ipaddr=None, hostname=None).result == "deny"
    duo.close()
    audit_text = (tmp_path / "audit.jsonl").read_text()
    records = [json.loads(line) for line in audit_text.splitlines()]
    assert [r["outcome"] for r in records] == ["admin", "admin"] and records[0]["count"] == 2
    for text in (audit_text, sim.request_log.read_text()):
        for c in codes + [new]:
            assert c not in text


def test_bypass_code_refused_for_unknown_user_and_non_terminal(sim, conf, capsys):
    config = conf(["root nobody"])
    code, _, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "bypass-code", "root", "--yes")
    assert code == 1 and "no codes created" in err
    code, out, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "bypass-code", "root")
    assert code == 1 and out == "" and "not a terminal" in err


@pytest.mark.parametrize("duo_name, why", [("deny", "is disabled"), ("lockedout", "is locked out")])
def test_bypass_code_refused_for_a_user_it_would_not_let_in(sim, conf, capsys, duo_name, why):
    config = conf([f"root {duo_name}"])
    code, out, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "bypass-code", "root", "--yes")
    assert code == 1 and out == "" and why in err and "no codes created" in err


def test_enroll(sim, conf, capsys):
    config = conf(["root newhire"])
    code, out, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "enroll", "root", "new@example.com")
    assert code == 0 and "enrollment email" in out, err
    code, out, _ = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "user", "root", "--json")
    assert json.loads(out)["state"] == "not_enrolled"
    config = conf(["root alice"])
    code, _, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "enroll", "root", "a@example.com")
    assert code == 1 and "already has a device" in err
    code, _, err = run(capsys, "-c", config, "--admin-config", admin(sim, "admin-readonly.toml"), "admin", "enroll",
                       "root", "a@example.com")
    assert code == 1


@pytest.mark.parametrize("duo_name, state, locked", [("alice", "push", False), ("enroll", "not_enrolled", True),
                                                     ("deny", "disabled", True), ("lockedout", "locked_out", True),
                                                     ("bypass", "bypass", False), ("allow", "allow", False),
                                                     ("phoneonly", "phone_sms", False), ("nobody", "unknown", True)])
def test_readiness_json(sim, conf, capsys, duo_name, state, locked):
    config = conf([f"root {duo_name}"], groups=["root"])  # only members of the group root must do Duo
    code, out, err = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "readiness", "--json")
    report = json.loads(out)
    rows = {r["user"]: r for r in report["users"]}
    assert rows["root"] == {"user": "root", "duo_user": duo_name, "state": state, "locked_out": locked}
    assert report["locked_out"] == sum(r["locked_out"] for r in report["users"])
    assert code == (1 if report["locked_out"] else 0), err


def test_readiness_su_does_not_list_root(sim, conf, capsys):
    config = conf(["root enroll"], groups=["root"])
    code, out, _ = run(capsys, "-c", config, "--admin-config", admin(sim), "admin", "readiness", "--json",
                       "--service", "su")
    assert "root" not in {r["user"] for r in json.loads(out)["users"]}


def test_readiness_exit_2_when_duo_refuses(sim, conf, capsys):
    config = conf(["root alice"], groups=["root"])
    code, _, err = run(capsys, "-c", config, "--admin-config", str(sim.config_path.parent / "nope.toml"),
                       "admin", "readiness")
    assert code == 1 and "no such file" in err
    bad = pathlib.Path(config).parent / "auth-as-admin.toml"
    bad.write_text(sim.config_path.read_text().replace("[duo]", "[admin]"))
    os.chmod(bad, 0o600)
    code, _, err = run(capsys, "-c", config, "--admin-config", str(bad), "admin", "readiness")
    assert code == 2 and "HTTP 401" in err


def test_check_reports_admin_keys_and_permissions(sim, conf, capsys):
    config = conf(["root alice"])
    code, out, _ = run(capsys, "-c", config, "--admin-config", admin(sim), "check")
    assert code == 0 and "read permission:  granted" in out and "write permission: granted" in out
    code, out, _ = run(capsys, "check", "-c", config, "--admin-config", admin(sim, "admin-readonly.toml"))
    assert code == 0 and "write permission: not granted" in out
    code, out, _ = run(capsys, "-c", config, "--admin-config", str(pathlib.Path(config).parent / "absent.toml"), "check")
    assert code == 0 and "Admin" not in out
