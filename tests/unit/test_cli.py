"""The command line pieces that packages and configuration management rely on."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pam_duo_py import __version__
from pam_duo_tools import cli

from conftest import ROOT

IKEY = "DIABCDEFGHIJKLMNOPQR"
SKEY = "Sk3yS3cr3tSk3yS3cr3tSk3yS3cr3tSk3yS3cr3t"
GOOD = f'[duo]\nikey = "{IKEY}"\nskey = "{SKEY}"\nhost = "api-12345678.duosecurity.com"\n'


def _config(tmp_path, text: str = GOOD, mode: int = 0o600) -> str:
    path = tmp_path / "pam_duo.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pam-duo-py {__version__}"


def test_check_offline_passes_a_good_config_without_the_network(tmp_path, capsys):
    # The unit layer fails any test that opens a socket: this also proves "offline".
    assert cli.main(["-c", _config(tmp_path), "check", "--offline"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("text, mode, reason", [
    (GOOD.replace(IKEY, "DIXXXXXXXXXXXXXXXXXX"), 0o600, "example value"),
    (GOOD, 0o644, "pam_duo.toml"),
    (GOOD + "[auth]\nfailmode = 'open'\n", 0o600, "auth.failmode"),
])
def test_check_offline_fails_a_bad_config_with_exit_1(tmp_path, capsys, text, mode, reason):
    assert cli.main(["check", "--offline", "-c", _config(tmp_path, text, mode)]) == 1
    assert reason in capsys.readouterr().err


def test_check_offline_cannot_take_user(tmp_path, capsys):
    assert cli.main(["check", "--offline", "--user", "root", "-c", _config(tmp_path)]) == 1
    assert "--offline" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["-c", "{conf}", "check", "--offline"],
    ["check", "-c", "{conf}", "--offline"],
    ["check", "--offline", "--config", "{conf}"],
    ["-c", "/nonexistent/before.toml", "check", "--offline", "-c", "{conf}"],
])
def test_config_option_before_or_after_the_subcommand(tmp_path, argv):
    conf = _config(tmp_path)
    assert cli.main([a.replace("{conf}", conf) for a in argv]) == 0


def test_simulate_help_lists_every_simulator_option(capsys):
    from pam_duo_sim import simulator

    with pytest.raises(SystemExit):
        simulator.main(["--help"])
    own = capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["simulate", "--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    options = {word.strip("[],") for word in own.split() if word.startswith("--")}
    assert {"--port", "--state-dir", "--approve-delay", "--tls"} <= options
    for option in options:
        assert option in shown


@pytest.mark.parametrize("absent", ["pam_duo_sim.simulator", "pam_duo_sim"])
def test_simulate_says_plainly_when_the_simulator_is_not_installed(monkeypatch, capsys, absent):
    monkeypatch.delitem(sys.modules, "pam_duo_sim.simulator", raising=False)
    monkeypatch.setitem(sys.modules, absent, None)  # import fails as when absent
    assert cli.main(["simulate", "--help"]) == 1
    err = capsys.readouterr().err
    assert "not installed" in err and "Traceback" not in err
    assert "--with-simulator" in err


def test_import_duo_unix_without_src_looks_in_the_debian_paths_too(tmp_path, monkeypatch, capsys):
    debian = tmp_path / "security" / "pam_duo.conf"
    debian.parent.mkdir()
    debian.write_text(f"[duo]\nikey = {IKEY}\nskey = {SKEY}\nhost = api-12345678.duosecurity.com\n")
    paths = (str(tmp_path / "duo" / "pam_duo.conf"), str(debian))
    monkeypatch.setattr(cli, "DUO_UNIX_PATHS", paths)
    assert cli.main(["import-duo-unix"]) == 0
    out = capsys.readouterr()
    assert f'ikey = "{IKEY}"' in out.out and str(debian) in out.err


def test_import_duo_unix_default_paths_include_debian_and_duo_unix():
    assert {"/etc/duo/pam_duo.conf", "/etc/duo/login_duo.conf", "/etc/security/pam_duo.conf",
            "/etc/security/login_duo.conf"} <= set(cli.DUO_UNIX_PATHS)


def test_import_duo_unix_without_src_and_nothing_found(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "DUO_UNIX_PATHS", (str(tmp_path / "none.conf"),))
    assert cli.main(["import-duo-unix"]) == 1
    assert "no duo_unix config found" in capsys.readouterr().err


def test_python_dash_m_is_the_same_command():
    proc = subprocess.run([sys.executable, "-m", "pam_duo_py", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"pam-duo-py {__version__}"


# -- check --user: the login's own rule --------------------------------------------------------


class _Duo:
    """Stands in for DuoClient in ``check``: keys accepted, preauth answers allow."""

    preauths: list = []

    def __init__(self, settings) -> None:
        self.server_time_offset = 0.0

    def check(self) -> float:
        return 0.0

    def preauth(self, identity, **kwargs):
        from pam_duo_py.replies import Preauth

        _Duo.preauths.append(identity)
        return Preauth("allow", "ok")

    def close(self) -> None:
        pass


@pytest.fixture
def duo_client(monkeypatch):
    from pam_duo_py import duo

    _Duo.preauths = []
    monkeypatch.setattr(duo, "DuoClient", _Duo)
    return _Duo.preauths


def test_check_user_reports_a_failed_user_lookup_as_a_refused_login(tmp_path, capsys, monkeypatch, duo_client):
    from pam_duo_py import users
    from pam_duo_py.errors import UserLookupError

    def broken(name):
        raise UserLookupError("cannot look up user 'alice': nss unavailable")

    monkeypatch.setattr(users, "lookup", broken)
    assert cli.main(["-c", _config(tmp_path), "check", "--user", "alice"]) == 1
    assert "User alice: logins are refused (PAM_SERVICE_ERR): cannot look up user 'alice'" in capsys.readouterr().err
    assert duo_client == []


@pytest.mark.parametrize("groups, expected", [(None, "identity"), ('["pdt-nobody-*"]', "exempt"), (None, "unknown")])
def test_check_user_decides_who_as_a_login_does(tmp_path, capsys, duo_client, groups, expected):
    from fakes import FakeDuo, FakePrompter
    from pam_duo_py.config import load_config
    from pam_duo_py.engine import Kind
    from pam_duo_py.events import EventSink
    from pam_duo_py.login import LoginRequest, authenticate

    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    name = "pdt-no-such-user-7f3a" if expected == "unknown" else me
    conf = _config(tmp_path, GOOD + (f"[users]\ngroups = {groups}\n" if groups else ""))
    code = cli.main(["-c", conf, "check", "--user", name])
    out, err = capsys.readouterr()
    duo = FakeDuo()
    outcome = authenticate(load_config(conf), LoginRequest(user=name, service="sshd"), FakePrompter([]),
                           sink=EventSink(None), duo_factory=lambda settings: duo)
    if expected == "unknown":
        assert code == 1 and "no such local user" in err and outcome.kind is Kind.FAILURE
    elif expected == "exempt":
        assert code == 0 and "exempt (not in users.groups)" in out and outcome.kind is Kind.EXEMPT
    else:
        assert code == 0 and duo_client == [duo.calls[0].args["identity"]]
