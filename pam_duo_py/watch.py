"""The config as the broker loaded it, and whether it still matches the disk.

The broker decides each login with the configuration as it is on disk at that
moment, without parsing it again each time: when loading, it records the
identity of the config file and of every file the config names (``skey_file``,
``map_file``, ``ca_file``, the audit file) and of each directory above them.
Before a login it compares; any difference means "load again".

A file's identity is its device, inode, size, mtime, ctime, owner, group and
mode: an edit, ``chmod``, ``chown``, a deletion or a replacement all change it.
Each file is recorded just *before* it is read, so a change while loading is
seen at the next comparison. The audit file, which the broker appends to
itself, and directories (whose times change whenever an entry does) count by
device, inode, owner, group and mode only.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Config

Stamps = dict  # ("file" | "appended" | "dir", path) -> identity tuple


def _full(path: str) -> tuple:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return ("unreadable", exc.errno)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_uid, st.st_gid, st.st_mode)


def _kind(path: str, follow: bool = False) -> tuple:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return ("unreadable", exc.errno)
    return (st.st_dev, st.st_ino, st.st_uid, st.st_gid, st.st_mode)


def _record(stamps: Stamps, path: str, *, appended: bool = False) -> None:
    key = ("appended", path) if appended else ("file", path)
    stamps[key] = _current(key)
    directory = os.path.dirname(path)
    while directory and ("dir", directory) not in stamps:
        stamps[("dir", directory)] = _current(("dir", directory))
        if directory == "/":
            break
        directory = os.path.dirname(directory)


def _current(key: tuple) -> tuple:
    kind, path = key
    if kind == "file":
        return _full(path)
    return _kind(path, follow=kind == "dir")


def load(path: str) -> tuple["Config", Stamps]:
    """Load the config (raises ConfigError like ``load_config``) and the stamps to compare with later."""
    from . import files
    from .config import load_config

    stamps: Stamps = {}
    _record(stamps, path)

    def read(name: str, secret: bool) -> bytes:
        _record(stamps, name)
        return files.read_checked(name, secret=secret)

    config = load_config(path, read=read)
    if config.log.audit_file:
        _record(stamps, config.log.audit_file, appended=True)
    return config, stamps


def changed(stamps: Stamps) -> bool:
    """True when any recorded file or directory differs from the disk now."""
    return any(_current(key) != old for key, old in stamps.items())
