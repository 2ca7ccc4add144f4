"""The Debian package in the system tests: build it, install it with apt, put the machine back.

Used when PDT_INSTALL=deb (scripts/test sets it, with PDT_DEB naming the package it
built). The package owns /etc/pam_duo_py, /var/lib/pam_duo_py and /var/log/pam_duo_py
on purge; a source install on the same machine shares the first two, so they are saved
before the package is installed and put back after it is purged.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .conftest import CLEAN_PATH, REPO, _admin_env

PACKAGE_NAME = "pam-duo-py"
BUILD_DEB = REPO / "scripts" / "build-deb"
DIST = REPO / "dist"
TRANSCRIPT = DIST / "package-test.log"
OWNED_DIRS = (Path("/etc/pam_duo_py"), Path("/var/lib/pam_duo_py"), Path("/var/log/pam_duo_py"))
SOCKET_LINK = Path("/etc/systemd/system/sockets.target.wants/pam-duo-py-broker.socket")


def code_version() -> str:
    for line in (REPO / "pam_duo_py" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__ = "):
            return line.split('"')[1]
    raise RuntimeError("no __version__ in pam_duo_py/__init__.py")


def _log(argv: list[str], output: str, returncode: int) -> None:
    DIST.mkdir(exist_ok=True)
    with open(TRANSCRIPT, "a", encoding="utf-8") as f:
        f.write(f"# {' '.join(argv)}\n{output}# exit {returncode}\n\n")


def run_logged(argv: list[str], env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env or apt_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    _log(argv, proc.stdout, proc.returncode)
    return proc


def apt_env(**extra: str) -> dict[str, str]:
    return {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **extra}


def build(version: Optional[str] = None) -> Path:
    """scripts/build-deb [--version V]; the package built by scripts/test when PDT_DEB names it."""
    if version is None and os.environ.get("PDT_DEB"):
        return Path(os.environ["PDT_DEB"]).resolve()
    # Another version goes elsewhere: dist/ keeps one package, for "apt install ./dist/pam-duo-py_*.deb".
    out = DIST if version is None else DIST / "other-versions"
    argv = ["bash", str(BUILD_DEB), "--out", str(out)] + (["--version", version] if version else [])
    proc = subprocess.run(argv, env=_admin_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/build-deb failed ({proc.returncode}):\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


def apt_get(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return run_logged(["apt-get", "-y", *args], env=apt_env(**extra_env))


def status() -> str:
    """dpkg's two-letter status ("ii" installed, "rc" removed with its config), "" when unknown."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE_NAME], env=apt_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def purge() -> None:
    if status():
        apt_get("purge", PACKAGE_NAME, PAM_DUO_PY_REMOVE_ANYWAY="1")


@contextmanager
def installed_package() -> Iterator[str]:
    """Install the package on a machine without its directories; yield apt's output; restore."""
    TRANSCRIPT.unlink(missing_ok=True)
    purge()  # left over from an interrupted run
    saved = Path(tempfile.mkdtemp(prefix="pdt-deb-saved-"))
    moved: list[tuple[Path, Path]] = []
    try:
        for path in OWNED_DIRS:
            if path.exists():
                target = saved / path.name
                shutil.move(str(path), target)
                moved.append((path, target))
        deb = build()
        proc = apt_get("install", str(deb))
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get install {deb} failed:\n{proc.stdout}")
        yield proc.stdout
    finally:
        purge()
        for path, target in moved:
            shutil.rmtree(path, ignore_errors=True)
            shutil.move(str(target), path)
        shutil.rmtree(saved, ignore_errors=True)
