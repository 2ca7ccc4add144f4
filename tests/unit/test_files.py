"""The file rule (docs/behaviour.md §4) on real files under tmp_path.

The rule trusts root and the effective uid, so these tests pass both as root and as an
ordinary user; the "owned by someone else" cases need root to chown and are skipped otherwise.
"""
from __future__ import annotations

import os
import stat

import pytest

from pam_duo_py import files
from pam_duo_py.errors import FileRuleError

IS_ROOT = os.geteuid() == 0
OTHER_UID = 65534  # nobody: neither root nor us
needs_root = pytest.mark.skipif(not IS_ROOT, reason="chown to another user needs root")


@pytest.fixture
def home(tmp_path):
    """A trusted directory (owned by us, mode 0700) to put files in."""
    os.chmod(tmp_path, 0o700)
    files.check_directories(str(tmp_path / "x"))  # the chain above tmp_path must itself pass
    return tmp_path


def make(path, content=b"data\n", mode=0o600):
    path.write_bytes(content)
    os.chmod(path, mode)
    return str(path)


def refused(path, secret=False) -> FileRuleError:
    with pytest.raises(FileRuleError) as info:
        files.read_checked(str(path), secret=secret)
    error = info.value
    assert error.path == str(path)
    assert str(error).startswith(f"{path}: ")
    assert error.reason
    return error


# -- files that pass ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o600, 0o400, 0o644, 0o640, 0o444])
def test_readable_file_is_read(home, mode):
    path = make(home / "f", b"hello\n", mode)
    assert files.read_checked(path) == b"hello\n"


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_secret_file_with_owner_only_mode_is_read(home, mode):
    path = make(home / "skey", b"key\n", mode)
    assert files.read_checked(path, secret=True) == b"key\n"


def test_empty_file_is_read(home):
    assert files.read_checked(make(home / "empty", b"")) == b""


# -- files that fail ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o660, 0o622])
def test_group_or_other_writable_file_is_refused(home, mode):
    path = make(home / "f", mode=mode)
    error = refused(path)
    assert "writable by group or others" in error.reason
    assert f"{mode:04o}" in error.reason


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o610, 0o601])
def test_secret_file_readable_by_group_or_others_is_refused(home, mode):
    path = make(home / "skey", mode=mode)
    error = refused(path, secret=True)
    assert "secret" in error.reason and f"{mode:04o}" in error.reason


def test_symlink_is_not_followed(home):
    target = make(home / "real")
    link = home / "link"
    os.symlink(target, link)
    error = refused(link)
    assert "symlink" in error.reason


def test_dangling_symlink_is_refused_as_symlink(home):
    link = home / "dangling"
    os.symlink(str(home / "nowhere"), link)
    assert "symlink" in refused(link).reason


def test_missing_file(home):
    assert refused(home / "missing").reason == "no such file"


def test_fifo_is_refused_without_blocking(home):
    path = home / "fifo"
    os.mkfifo(path, 0o600)
    assert refused(path).reason == "not a regular file"


def test_directory_is_refused(home):
    path = home / "dir"
    path.mkdir(mode=0o700)
    assert refused(path).reason == "not a regular file"


def test_device_is_refused(home):
    error = None
    with pytest.raises(FileRuleError) as info:
        files.read_checked("/dev/null")
    error = info.value
    assert error.path == "/dev/null" and error.reason == "not a regular file"


def test_relative_path_is_refused():
    with pytest.raises(FileRuleError) as info:
        files.read_checked("etc/pam_duo.toml")
    assert info.value.path == "etc/pam_duo.toml" and "absolute" in info.value.reason


def test_too_large_file_is_refused(home):
    path = make(home / "big", b"x" * (files.MAX_SIZE + 1))
    assert "larger than" in refused(path).reason


# -- parent directories ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_group_or_world_writable_parent_directory_is_refused(home, mode):
    parent = home / "open"
    parent.mkdir()
    path = make(parent / "f")
    os.chmod(parent, mode)
    error = refused(path)
    assert f"directory {parent} is writable by group or others" == error.reason


def test_writable_directory_higher_up_is_refused(home):
    top = home / "top"
    (top / "mid").mkdir(parents=True)
    path = make(top / "mid" / "f")
    os.chmod(top, 0o777)
    assert refused(path).reason == f"directory {top} is writable by group or others"


def test_sticky_world_writable_parent_accepted_when_child_directory_is_trusted(home):
    sticky = home / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    child = sticky / "ours"
    child.mkdir(mode=0o700)
    path = make(child / "f", b"ok")
    assert files.read_checked(path) == b"ok"


def test_file_directly_in_a_sticky_world_writable_directory_is_refused(home):
    sticky = home / "tmp"
    sticky.mkdir()
    path = make(sticky / "f")
    os.chmod(sticky, 0o1777)
    assert refused(path).reason == f"directory {sticky} is writable by group or others"


def test_world_writable_non_sticky_parent_of_a_trusted_child_is_refused(home):
    parent = home / "tmp"
    parent.mkdir()
    child = parent / "ours"
    child.mkdir(mode=0o700)
    path = make(child / "f")
    os.chmod(parent, 0o777)
    assert refused(path).reason == f"directory {parent} is writable by group or others"


def test_trusted_symlinked_directory_on_the_way_is_followed(home):
    real = home / "real"
    real.mkdir(mode=0o700)
    make(real / "f", b"via link")
    os.symlink(str(real), home / "alias")
    assert files.read_checked(str(home / "alias" / "f")) == b"via link"


def test_symlinked_directory_into_a_writable_directory_is_refused(home):
    real = home / "real"
    real.mkdir()
    make(real / "f")
    os.chmod(real, 0o777)
    os.symlink(str(real), home / "alias")
    error = refused(home / "alias" / "f")
    assert error.reason == f"directory {real} is writable by group or others"


def test_missing_directory_is_reported(home):
    error = refused(home / "nodir" / "f")
    assert error.reason.startswith(f"cannot inspect {home / 'nodir'}")


# -- owned by someone else (root only) ---------------------------------------------------------

@needs_root
def test_file_owned_by_another_user_is_refused(home):
    path = make(home / "f")
    os.chown(path, OTHER_UID, OTHER_UID)
    error = refused(path)
    assert error.reason.startswith("owned by ") and "must be owned by root" in error.reason


@needs_root
def test_directory_owned_by_another_user_is_refused(home):
    parent = home / "theirs"
    parent.mkdir(mode=0o755)
    path = make(parent / "f")
    os.chown(parent, OTHER_UID, OTHER_UID)
    error = refused(path)
    assert error.reason.startswith(f"directory {parent} is owned by ")


@needs_root
def test_sticky_directory_with_a_child_owned_by_another_user_is_refused(home):
    sticky = home / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    child = sticky / "theirs"
    child.mkdir(mode=0o755)
    path = make(child / "f")
    os.chown(child, OTHER_UID, OTHER_UID)
    error = refused(path)
    assert error.reason.startswith(f"directory {child} is owned by ")


@needs_root
def test_symlink_on_the_way_owned_by_another_user_is_refused(home):
    real = home / "real"
    real.mkdir(mode=0o700)
    make(real / "f")
    alias = home / "alias"
    os.symlink(str(real), alias)
    os.lchown(alias, OTHER_UID, OTHER_UID)
    error = refused(alias / "f")
    assert error.reason.startswith(f"{alias} is a symlink owned by ")


# -- writing -----------------------------------------------------------------------------------

def test_open_append_creates_an_owner_only_file(home):
    path = str(home / "audit.jsonl")
    fd = files.open_append_checked(path)
    try:
        os.write(fd, b"one\n")
    finally:
        os.close(fd)
    fd = files.open_append_checked(path)
    try:
        os.write(fd, b"two\n")
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as handle:
        assert handle.read() == b"one\ntwo\n"


def test_open_append_refuses_an_existing_file_readable_by_others(home):
    path = make(home / "audit.jsonl", b"", 0o644)
    with pytest.raises(FileRuleError) as info:
        files.open_append_checked(path)
    assert info.value.path == path


def test_open_append_refuses_a_symlink(home):
    target = make(home / "real")
    os.symlink(target, home / "audit.jsonl")
    with pytest.raises(FileRuleError) as info:
        files.open_append_checked(str(home / "audit.jsonl"))
    assert "symlink" in info.value.reason


def test_open_append_refuses_a_fifo_without_blocking(home):
    path = home / "audit.jsonl"
    os.mkfifo(path, 0o600)
    with pytest.raises(FileRuleError) as info:
        files.open_append_checked(str(path))
    assert info.value.path == str(path)


def test_open_append_in_a_writable_directory_is_refused(home):
    parent = home / "logs"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(FileRuleError) as info:
        files.open_append_checked(str(parent / "audit.jsonl"))
    assert "writable by group or others" in info.value.reason
    assert not (parent / "audit.jsonl").exists()


def test_write_atomic_replaces_with_an_owner_only_file(home):
    path = make(home / "state", b"old", 0o600)
    files.write_atomic(path, b"new")
    assert open(path, "rb").read() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(home)) == ["state"]


def test_trusted_uids_are_root_and_the_effective_user():
    assert files.trusted_uids() == frozenset({0, os.geteuid()})


# -- the audit file, checked when the config is loaded ------------------------------------------

def test_check_append_target_accepts_a_missing_or_owner_only_file_and_creates_nothing(home):
    files.check_append_target(str(home / "audit.jsonl"))
    assert not (home / "audit.jsonl").exists()
    files.check_append_target(make(home / "audit.jsonl", b"", 0o600))


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o644, 0o640])
def test_check_append_target_refuses_a_file_others_may_write_or_read(home, mode):
    path = make(home / "audit.jsonl", b"", mode)
    with pytest.raises(FileRuleError) as info:
        files.check_append_target(path)
    assert info.value.path == path and "mode" in info.value.reason


def test_check_append_target_refuses_a_symlink_a_fifo_and_a_writable_directory(home):
    make(home / "real", b"", 0o600)
    os.symlink(home / "real", home / "link")
    os.mkfifo(home / "fifo", 0o600)
    parent = home / "logs"
    parent.mkdir()
    os.chmod(parent, 0o770)
    for path, words in ((home / "link", "symlink"), (home / "fifo", "not a regular file"),
                        (parent / "audit.jsonl", "writable by group or others")):
        with pytest.raises(FileRuleError) as info:
            files.check_append_target(str(path))
        assert words in info.value.reason, info.value.reason


@needs_root
def test_check_append_target_refuses_a_file_owned_by_someone_else(home):
    path = make(home / "audit.jsonl", b"", 0o600)
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(FileRuleError):
        files.check_append_target(path)


def test_load_config_refuses_a_bad_audit_file_as_a_configuration_error(home):
    from pam_duo_py.config import load_config
    from pam_duo_py.errors import ConfigError

    audit = make(home / "audit.jsonl", b"", 0o666)
    conf = make(home / "pam_duo.toml", ('[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "' + "S" * 40 + '"\n'
                                        f'host = "api-test.duosecurity.com"\n[log]\naudit_file = "{audit}"\n').encode())
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert info.value.problems == (f"{conf}: log.audit_file: {audit}: mode 0666 is writable by group or others",)
    os.chmod(audit, 0o600)
    assert load_config(conf).log.audit_file == audit


# -- write_atomic when the disk misbehaves ---------------------------------------------------

class MisbehavingWrite:
    """os.write for files under ``directory``: at most ``chunk`` bytes a call, or an error after
    ``fail_after`` bytes; every other descriptor is written normally."""

    def __init__(self, directory, *, chunk=None, fail_after=None, error=28):  # 28: ENOSPC
        self.directory = str(directory)
        self.chunk, self.fail_after, self.error = chunk, fail_after, error
        self.written = 0
        self.real = os.write

    def __call__(self, fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(self.directory + "/"):
            return self.real(fd, data)
        data = bytes(data)
        if self.fail_after is not None and self.written + len(data) > self.fail_after:
            room = self.fail_after - self.written
            if room <= 0:
                raise OSError(self.error, os.strerror(self.error))
            data = data[:room]
        if self.chunk is not None:
            data = data[: self.chunk]
        count = self.real(fd, data)
        self.written += count
        return count


def test_write_atomic_continues_short_writes(home, monkeypatch):
    path = make(home / "state", b"old", 0o600)
    monkeypatch.setattr(os, "write", MisbehavingWrite(home, chunk=3))
    content = b'{"v":1,"entries":{"alice":12345}}'
    files.write_atomic(path, content)
    monkeypatch.undo()
    assert open(path, "rb").read() == content
    assert sorted(os.listdir(home)) == ["state"]


@pytest.mark.parametrize("fail_after", [0, 5])
def test_write_atomic_on_a_full_disk_leaves_nothing_and_later_writes_work(home, monkeypatch, fail_after):
    path = make(home / "state", b"old", 0o600)
    monkeypatch.setattr(os, "write", MisbehavingWrite(home, fail_after=fail_after))
    with pytest.raises(OSError) as info:
        files.write_atomic(path, b"x" * 100)
    assert info.value.errno == 28
    assert sorted(os.listdir(home)) == ["state"]          # no temporary file left behind
    assert open(path, "rb").read() == b"old"               # the old content is intact
    monkeypatch.undo()
    files.write_atomic(path, b"new")                        # the disk has room again
    assert open(path, "rb").read() == b"new"
    assert sorted(os.listdir(home)) == ["state"]


def test_write_atomic_that_cannot_sync_or_rename_leaves_nothing(home, monkeypatch):
    path = make(home / "state", b"old", 0o600)

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        files.write_atomic(path, b"new")
    monkeypatch.undo()
    assert sorted(os.listdir(home)) == ["state"]
    os.mkdir(home / "adir")                                 # rename over a directory fails
    with pytest.raises(OSError):
        files.write_atomic(str(home / "adir"), b"new")
    assert sorted(os.listdir(home)) == ["adir", "state"]


def test_write_atomic_uses_a_fresh_temporary_name_each_time(home, monkeypatch):
    # A temporary file left by an older version (named after the pid) does not block writes.
    path = make(home / "state", b"old", 0o600)
    make(home / f".state.{os.getpid()}.tmp", b"left over", 0o600)
    files.write_atomic(path, b"new")
    assert open(path, "rb").read() == b"new"
