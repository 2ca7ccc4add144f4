"""The config files a broker serves: its own and others named by PAM lines, each under the file rule."""
from __future__ import annotations

import os

import pytest

from pam_duo_py.broker_configs import ServedConfigs
from pam_duo_py.result import Result


class FakePool:
    def __init__(self, settings) -> None:
        self.settings = settings
        self.closed = False

    def close(self) -> None:
        self.closed = True


def write_config(directory, name: str, ikey: str = "DIABCDEFGHIJKLMNOPQR") -> str:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    map_file = directory / f"{name}.map"
    map_file.write_text("alice alice\n")
    os.chmod(map_file, 0o600)
    path = directory / f"{name}.toml"
    path.write_text(f'[duo]\nikey = "{ikey}"\nskey = "' + "S" * 40 + '"\nhost = "api-test.duosecurity.com"\n'
                    f'[users]\nmap_file = "{map_file}"\n[log]\naudit_file = "{directory / (name + ".jsonl")}"\n')
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def configs(tmp_path):
    os.chmod(tmp_path, 0o700)
    reports: list = []
    served = ServedConfigs(write_config(tmp_path, "default"), FakePool,
                           lambda s, why, problems: reports.append((os.path.basename(s.path), why, problems)), limit=3)
    served.reports = reports
    return served


def test_another_config_is_loaded_on_first_use_and_kept(configs, tmp_path):
    other = write_config(tmp_path, "other", ikey="DIOTHERCONFIG0000000")
    served = configs.for_login(other)
    assert served is not configs.default and served.config.duo.ikey == "DIOTHERCONFIG0000000"
    assert configs.for_login(other) is served
    assert configs.reports == [("other.toml", "first use", None)]
    # its own warm Duo clients and its own audit file
    assert served.pool is not configs.default.pool and served.pool.settings.ikey == "DIOTHERCONFIG0000000"
    assert served.sink.audit_file == str(tmp_path / "other.jsonl")
    assert configs.default.sink.audit_file == str(tmp_path / "default.jsonl")


def test_the_default_and_no_config_named_are_the_same(configs, tmp_path):
    assert configs.for_login(None) is configs.default
    assert configs.for_login(str(tmp_path / "." / "default.toml")) is configs.default
    os.symlink(tmp_path / "default.toml", tmp_path / "link.toml")
    assert configs.for_login(str(tmp_path / "link.toml")) is configs.default


@pytest.mark.parametrize("name", ["relative.toml", "/nonexistent/pam_duo.toml"])
def test_a_config_the_broker_cannot_see_is_declined(configs, name):
    assert configs.for_login(name) is Result.OTHER_CONFIG
    assert len(configs.all()) == 1


def test_the_number_of_configs_is_bounded(configs, tmp_path):
    first, second, third = (write_config(tmp_path, name) for name in ("one", "two", "three"))
    assert configs.for_login(first) is not Result.OTHER_CONFIG
    assert configs.for_login(second) is not Result.OTHER_CONFIG
    assert configs.for_login(third) is Result.OTHER_CONFIG  # limit 3, the default included: in-process instead
    assert configs.for_login(first).path == first and configs.for_login(None) is configs.default
    assert len(configs.all()) == 3


def test_a_bad_config_is_refused_for_its_own_logins_only(configs, tmp_path, monkeypatch):
    errors: list = []
    monkeypatch.setattr(configs.default.sink, "error", errors.append)
    bad = write_config(tmp_path, "bad")
    os.chmod(bad, 0o644)  # holds skey and readable by others: the file rule refuses it
    assert configs.for_login(bad) is Result.BAD_CONFIG
    assert len(configs.all()) == 1  # it took no place
    assert errors and "bad.toml" in errors[0] and "refused" in errors[0]
    assert configs.current(configs.default) is configs.default.config  # the default's logins go on
    os.chmod(bad, 0o600)
    assert configs.for_login(bad).path == bad  # the next login tries again


def test_a_served_config_that_breaks_refuses_its_own_logins_until_fixed(configs, tmp_path):
    other = write_config(tmp_path, "other")
    served = configs.for_login(other)
    assert configs.current(served) is served.config
    os.chmod(tmp_path / "other.map", 0o666)
    assert configs.current(served) is None
    assert configs.current(served) is None  # and again: never the old config
    assert configs.current(configs.default) is configs.default.config
    assert configs.reports[-1][:2] == ("other.toml", "changed on disk") and "other.map" in configs.reports[-1][2]
    os.chmod(tmp_path / "other.map", 0o600)
    assert configs.current(served) is not None


def test_a_reload_keeps_warm_clients_unless_the_duo_settings_change(configs, tmp_path):
    other = write_config(tmp_path, "other")
    served = configs.for_login(other)
    pool = served.pool
    os.chmod(tmp_path / "other.map", 0o640)
    os.chmod(tmp_path / "other.map", 0o600)  # a change of identity, the same Duo settings
    assert configs.current(served) is not None and served.pool is pool and not pool.closed
    write_config(tmp_path, "other", ikey="DINEWKEY000000000000")
    assert configs.current(served).duo.ikey == "DINEWKEY000000000000"
    assert served.pool is not pool and pool.closed


def test_sighup_reloads_every_served_config_and_stop_closes_their_pools(configs, tmp_path):
    served = configs.for_login(write_config(tmp_path, "other"))
    assert configs.reload_all()
    assert [(name, why) for name, why, _ in configs.reports[1:]] == [("default.toml", "SIGHUP"), ("other.toml", "SIGHUP")]
    os.chmod(tmp_path / "other.map", 0o666)
    assert not configs.reload_all()
    configs.close()
    assert configs.default.pool.closed and served.pool.closed
