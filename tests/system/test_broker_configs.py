"""One broker, several config files: a PAM line's ``conf=`` is served by the broker too.

Real PAM (pamdrive) and a real broker process: a login whose PAM line names a
second config file is decided by the broker with that file (its map, its audit
file), not in-process; a second file that does not load is refused for its own
logins only; ``pam-duo-login`` and other non-root callers keep the broker's own.
"""
from __future__ import annotations

import os

import pytest

from pam_duo_py.broker_protocol import MESSAGES
from pam_duo_py.result import Result

from .brokerkit import fc_config_text, run_user_client, write_map, write_root_file
from .brokerkit import fc_root  # noqa: F401  (fixture)
from .conftest import PAM_SUCCESS, STACK_SECOND_FACTOR
from .test_broker import audit_lines, audit_mark, root_login
from .test_broker import setup_factory  # noqa: F401  (fixture)

pytestmark = pytest.mark.system
SERVICE = "pdt-fc-confs"
PAM_SERVICE_ERR = 3


@pytest.fixture
def second(setup_factory, test_root):
    """A broker serving its own config, and a second config file (its own map and audit file)
    that names the same broker socket, as a PAM line's ``conf=`` would."""
    setup = setup_factory("confs")
    map_file = write_map(test_root / "fc-confs-second-map.txt", ["pdt-alice allow"])  # only here: alice is "allow"
    audit = test_root / "fc-confs-second-audit.jsonl"
    config = test_root / "fc-confs-second.toml"
    write_root_file(config, fc_config_text(setup.simulator, users={"map_file": str(map_file)},
                                           log={"audit_file": str(audit)}, broker={"socket": str(setup.socket)}))
    yield setup, config, audit
    for path in (map_file, audit, config):
        path.unlink(missing_ok=True)


def test_a_pam_line_naming_another_config_is_decided_by_the_broker_with_that_config(second, pam_service, run_pam):
    setup, config, audit = second
    pam_service(SERVICE, STACK_SECOND_FACTOR, conf=config)
    mark, own = audit_mark(audit), audit_mark(setup.audit)
    result = run_pam(SERVICE, "pdt-alice")
    assert result.code == PAM_SUCCESS, result
    (line,) = audit_lines(audit, mark)
    # decided by the broker (its pid in the audit line) with the second file's map (alice -> "allow")
    assert line["pid"] == setup.broker.pid and line["outcome"] == "preauth_allow" and line["duo_user"] == "allow"
    assert audit_lines(setup.audit, own) == []  # not with the broker's own config
    assert setup.broker.wait_for(lambda s: f"serving {config} too" in s, timeout=5)
    # the broker's own config is served as before, side by side
    assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"
    assert [line["user"] for line in audit_lines(setup.audit, own)] == ["pdt-allow"]


def test_a_second_config_that_does_not_load_is_refused_for_its_own_logins_only(second, test_root):
    setup, config, audit = second
    broken = test_root / "fc-confs-broken.toml"
    write_root_file(broken, config.read_text(), 0o644)  # holds skey and is readable by others: the file rule refuses it
    try:
        result, message, _ = root_login(setup.socket, "pdt-alice", config=str(broken))
        assert (result, message) == (Result.BAD_CONFIG, MESSAGES[Result.BAD_CONFIG])
        assert root_login(setup.socket, "pdt-allow")[0] == "SUCCESS"  # the broker's own config
        assert root_login(setup.socket, "pdt-alice", config=str(config))[0] == "SUCCESS"  # the good second one
        assert setup.broker.running
    finally:
        broken.unlink(missing_ok=True)
    # a config file the broker cannot see is left to the PAM module (in-process), as before
    result, message, _ = root_login(setup.socket, "pdt-allow", config=str(test_root / "fc-confs-none.toml"))
    assert (result, message) == (Result.OTHER_CONFIG, MESSAGES[Result.OTHER_CONFIG])


def test_a_user_client_keeps_the_brokers_own_config(second, fc_root):  # noqa: F811
    setup, config, audit = second
    mark, own = audit_mark(audit), audit_mark(setup.audit)
    result, client = run_user_client(fc_root, setup.socket, "pdt-allow",
                                     {"user": "pdt-allow", "interactive": False, "config": str(config)})
    assert result["result"] == "SUCCESS", client.events
    assert audit_lines(audit, mark) == [] and [line["user"] for line in audit_lines(setup.audit, own)] == ["pdt-allow"]
    assert os.path.exists(setup.socket)
