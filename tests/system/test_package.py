"""The Debian package's life on a machine: install, log in, upgrade, refused remove, remove, purge.

Runs with PDT_INSTALL=deb (scripts/test builds the package, runs lintian, and runs these
after the scenario and broker tests against the same installed package). The tests are
steps of one story and run in file order. Every apt call is in dist/package-test.log.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from . import debkit
from .brokerkit import fc_root, socket_dir  # noqa: F401  (fixture)
from .conftest import (
    ACCOUNT_PERMIT,
    CLI,
    ENTRY,
    LOGIN,
    PACKAGE,
    PAM_SUCCESS,
    REPO,
    _write_root_file,
    clean_env,
    stop_process,
    toml_table,
)

pytestmark = pytest.mark.skipif(not PACKAGE, reason="the package tests run with PDT_INSTALL=deb (scripts/test)")

VERSION = debkit.code_version()
NEXT_VERSION = f"{VERSION}+1"
LIB_ROOT = Path("/usr/lib/pam-duo-py")
CONFIG = Path("/etc/pam_duo_py/pam_duo.toml")
STATE_DIR = Path("/var/lib/pam_duo_py")


def _login_case(simulator, write_config, write_map_file, pam_service, test_root, module: str,
                service: str = "pdt-pkg"):
    conf = write_config(service.replace("-", "_"), users={"map_file": str(write_map_file())},
                        extra_text=f'[broker]\nsocket = "{test_root / "no-broker.sock"}"\n')
    pam_service(service, [f"auth requisite pam_python.so {module} conf={{conf}}",
                          "auth required pam_permit.so", ACCOUNT_PERMIT], conf=conf)
    return service


def _entry_lib_dir() -> str:
    line = next(l for l in ENTRY.read_text().splitlines() if l.startswith("LIB_DIR = "))
    return line.split('"')[1]


# ------------------------------------------------------------------ install
def test_install_creates_the_config_from_the_example_and_leaves_the_socket_off(installed):
    st = CONFIG.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert CONFIG.read_bytes() == (REPO / "etc" / "pam_duo.toml").read_bytes()
    # The example's placeholder keys fail the offline check: the socket stays off, and says how.
    assert "is not enabled yet" in installed.output and "duo.ikey" in installed.output
    assert "systemctl enable --now pam-duo-py-broker.socket" in installed.output
    assert not debkit.SOCKET_LINK.exists()
    assert stat.S_IMODE(STATE_DIR.stat().st_mode) == 0o700


def test_install_layout_versioned_library_compiled_with_checked_hashes(installed):
    assert os.readlink(LIB_ROOT / "current") == VERSION
    assert _entry_lib_dir() == str(LIB_ROOT / VERSION)
    files = subprocess.run(["dpkg", "-L", debkit.PACKAGE_NAME], capture_output=True, text=True,
                           check=True).stdout.split()
    assert not any("/simulator" in f or "/pam_duo_sim" in f for f in files)  # a test and demo tool only
    assert f"/usr/lib/pam-duo-py/{VERSION}/pam_duo_tools/cli.py" in files  # the operator's commands ship
    assert not any("__pycache__" in f for f in files)  # postinst compiles for this machine's Python
    pycs = list((LIB_ROOT / VERSION / "pam_duo_py" / "__pycache__").glob("*.pyc"))
    assert pycs
    pycs += list((LIB_ROOT / VERSION / "pam_duo_tools" / "__pycache__").glob("*.pyc"))
    for pyc in pycs:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b11, f"{pyc}: not a checked-hash pyc (flags {flags})"
    # dpkg renames the unpacked files into place in archive order: the whole new library
    # directory is in place before the entry file that names it.
    deb = debkit.build()
    names = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -t", shell=True, capture_output=True,
                           text=True, check=True).stdout.split()
    entry_at = names.index("." + str(ENTRY))
    assert all(i < entry_at for i, n in enumerate(names) if n.startswith(f"./usr/lib/pam-duo-py/{VERSION}/"))
    for page in ("man8/pam_duo_py.8.gz", "man8/pam-duo-py.8.gz", "man8/pam-duo-login.8.gz",
                 "man5/pam_duo.toml.5.gz"):
        assert f"/usr/share/man/{page}" in files


def test_installed_commands(installed):
    proc = subprocess.run([str(CLI), "--version"], env=clean_env(), capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == f"pam-duo-py {VERSION}"
    proc = subprocess.run([str(CLI), "simulate"], env=clean_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "not installed" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(LOGIN), "--help"], env=clean_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "broker" in proc.stdout


@pytest.mark.parametrize("module", ["pam_duo_py.py", str(ENTRY)], ids=["short-name", "absolute-path"])
def test_pam_line_short_name_and_absolute_path_both_log_in(installed, simulator, test_users, write_config,
                                                           write_map_file, pam_service, test_root, run_pam,
                                                           module):
    service = _login_case(simulator, write_config, write_map_file, pam_service, test_root, module)
    assert run_pam(service, "pdt-allow").code == PAM_SUCCESS
    assert run_pam(service, "pdt-deny").code != PAM_SUCCESS


def test_socket_activated_broker_serves_a_login(installed, simulator, test_users, write_map_file, test_root,
                                                fc_root, tmp_path):
    sock = socket_dir(fc_root, "activated") / "broker.sock"
    duo = simulator.duo_settings()
    config = _write_root_file(test_root / "activated.toml",
                              toml_table("duo", duo) + toml_table("users", {"map_file": str(write_map_file())})
                              + toml_table("broker", {"socket": str(sock)}), 0o600)
    proc = subprocess.Popen(["systemd-socket-activate", "-l", str(sock), str(CLI), "-c", str(config), "broker"],
                            env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # It announces the socket before it waits for the first connection, which starts the broker.
        assert proc.stderr.readline().startswith(f"Listening on {sock}")
        os.chmod(sock, 0o666)  # what the socket unit's SocketMode=0666 does
        env = dict(clean_env(), SSH_ORIGINAL_COMMAND="echo served-by-activated-broker",
                   SSH_CONNECTION="127.0.0.1 40000 127.0.0.1 22")
        login = subprocess.run(["runuser", "-u", "pdt-allow", "--", str(LOGIN), "--socket", str(sock)],
                               env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert login.returncode == 0, login.stderr
        assert "served-by-activated-broker" in login.stdout
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"LISTEN_FDS=1" in environ  # the broker took the socket it was given
        assert str(CLI).encode() in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    finally:
        stop_process(proc)
        proc.stdout.close()
        proc.stderr.close()


# ------------------------------------------------------------------ upgrade
def test_upgrade_keeps_an_edited_config_without_a_prompt(installed, simulator, test_users, write_config,
                                                         write_map_file, pam_service, test_root, run_pam):
    edited = ("# edited by the administrator\n" + toml_table("duo", simulator.duo_settings())
              + toml_table("users", {"map_file": str(write_map_file())})).encode()
    _write_root_file(CONFIG, edited, 0o600)
    before = CONFIG.stat()
    new_deb = debkit.build(NEXT_VERSION)
    proc = debkit.apt_get("install", str(new_deb))  # stdin is /dev/null: any prompt would fail it
    assert proc.returncode == 0, proc.stdout
    assert debkit.status() == "ii"
    after = CONFIG.stat()
    assert CONFIG.read_bytes() == edited
    assert (after.st_ino, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == \
        (before.st_ino, before.st_mtime_ns, 0o600)
    # The edited config passes the offline check: this configure enabled the socket.
    assert "enabled pam-duo-py-broker.socket" in proc.stdout
    assert debkit.SOCKET_LINK.is_symlink()
    # One version's directory only; the entry file and the commands use the new one.
    assert sorted(p.name for p in LIB_ROOT.iterdir()) == sorted([NEXT_VERSION, "current"])
    assert _entry_lib_dir() == str(LIB_ROOT / NEXT_VERSION)
    out = subprocess.run([str(CLI), "--version"], env=clean_env(), capture_output=True, text=True).stdout
    assert out.strip() == f"pam-duo-py {NEXT_VERSION}"
    service = _login_case(simulator, write_config, write_map_file, pam_service, test_root, "pam_duo_py.py")
    assert run_pam(service, "pdt-allow").code == PAM_SUCCESS


# ------------------------------------------------------------------ remove and purge
def test_remove_is_refused_while_a_pam_service_names_the_module(installed, pam_service, test_root):
    user = pam_service("pdt-pkg-uses", ["auth required pam_python.so pam_duo_py.py",
                                        "auth required pam_permit.so", ACCOUNT_PERMIT])
    proc = debkit.apt_get("remove", debkit.PACKAGE_NAME)
    assert proc.returncode != 0
    assert "refusing to remove" in proc.stdout and str(user) in proc.stdout
    assert debkit.status() == "ii"
    assert CLI.exists() and ENTRY.exists()

    # Without the Duo line (a commented one does not count) it goes.
    pam_service("pdt-pkg-uses", ["# auth required pam_python.so pam_duo_py.py",
                                 "auth required pam_permit.so", ACCOUNT_PERMIT])
    proc = debkit.apt_get("remove", debkit.PACKAGE_NAME)
    assert proc.returncode == 0, proc.stdout
    assert debkit.status() == "rc"
    assert not CLI.exists() and not ENTRY.exists() and not LIB_ROOT.exists()
    assert CONFIG.exists()  # remove keeps the configuration; purge removes it


def test_override_variable_removes_anyway(installed, pam_service):
    proc = debkit.apt_get("install", str(debkit.build(NEXT_VERSION)))
    assert proc.returncode == 0, proc.stdout
    user = pam_service("pdt-pkg-uses", ["auth required pam_python.so /usr/lib/security/pam_duo_py.py",
                                        "auth required pam_permit.so", ACCOUNT_PERMIT])
    proc = debkit.apt_get("remove", debkit.PACKAGE_NAME, PAM_DUO_PY_REMOVE_ANYWAY="1")
    assert proc.returncode == 0, proc.stdout
    assert "PAM_DUO_PY_REMOVE_ANYWAY is set" in proc.stdout and str(user) in proc.stdout


def test_purge_removes_config_state_and_the_socket_link(installed):
    proc = debkit.apt_get("purge", debkit.PACKAGE_NAME)
    assert proc.returncode == 0, proc.stdout
    assert debkit.status() == ""
    for path in debkit.OWNED_DIRS:
        assert not path.exists(), path
    assert not debkit.SOCKET_LINK.exists() and not debkit.SOCKET_LINK.is_symlink()


# ------------------------------------------------------------------ the Ansible example
@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible-core is not installed")
def test_ansible_example_passes_the_syntax_check(tmp_path):
    proc = subprocess.run(["ansible-playbook", "--syntax-check", "-i", "localhost,",
                           str(REPO / "docs" / "ansible" / "playbook.yml")],
                          env=dict(clean_env(), HOME=str(tmp_path), ANSIBLE_LOCAL_TEMP=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ the broker unit
def test_broker_unit_hardening_exposure_at_most_2(tmp_path):
    """Offline analysis of the unit the package ships (systemd need not be PID 1)."""
    unit = tmp_path / "pam-duo-py-broker.service"
    text = (REPO / "etc" / "systemd" / unit.name).read_text().replace("/usr/local/bin/", "/usr/bin/")
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    line = next(l for l in proc.stdout.splitlines() if "Overall exposure level" in l)
    assert float(line.split(":")[1].split()[0]) <= 2.0, line
    assert "PrivateUsers=yes" not in text  # it would remap the uids the broker reads with SO_PEERCRED
    reload = [l for l in text.splitlines() if l.startswith("ExecReload=")]
    assert "check --offline" in reload[0] and "kill -HUP" in reload[1]
    for key in ("StateDirectory=", "LogsDirectory=", "Documentation="):
        assert key in text
