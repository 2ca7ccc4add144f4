"""scripts/install.sh: what it places, with which owners and modes, and that real
libpam can load the installed entry file."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import subprocess
from pathlib import Path

import pytest

from .conftest import (
    ACCOUNT_PERMIT,
    CLI,
    CONFIG,
    ENTRY,
    ETC_DIR,
    EXAMPLE_CONFIG,
    LIB_DIR,
    LOGIN,
    MANIFEST,
    PAM_DIR,
    PAM_SERVICE_ERR,
    PREFIX,
    REPO,
    _write_root_file,
    clean_env,
    run_install,
)

pytestmark = pytest.mark.system

SHEBANG = "#!/usr/bin/python3 -I"
PYC_TAG = "cpython-311"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _assert_root_and_not_writable(path: Path) -> None:
    st = os.lstat(path)
    assert st.st_uid == 0 and st.st_gid == 0, f"{path}: owned by {st.st_uid}:{st.st_gid}"
    assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), f"{path}: mode {stat.S_IMODE(st.st_mode):o}"


def _assert_parents_safe(path: Path) -> None:
    for parent in path.parents:
        st = os.stat(parent)
        assert st.st_uid == 0, f"{parent} is not owned by root"
        assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), f"{parent} is group/other-writable"


def _snapshot() -> dict[str, tuple]:
    """Every installed path with its type, mode, owner and (for files) sha256."""
    roots = [PREFIX, CLI, LOGIN, ETC_DIR]
    out: dict[str, tuple] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        paths = [root]
        if root.is_dir() and not root.is_symlink():
            paths += sorted(root.rglob("*"))
        for p in paths:
            st = os.lstat(p)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(p)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ layout
def test_entry_file(installed):
    assert ENTRY.is_file() and not ENTRY.is_symlink()
    assert _mode(ENTRY) == 0o644
    _assert_root_and_not_writable(ENTRY)
    _assert_parents_safe(ENTRY)
    assert ENTRY.read_bytes() == (REPO / "pam_duo_py" / "pam_entry.py").read_bytes()


def test_lib_tree_owners_and_modes(installed):
    assert LIB_DIR.is_dir() and not LIB_DIR.is_symlink()
    _assert_parents_safe(LIB_DIR)
    for p in [LIB_DIR, *LIB_DIR.rglob("*")]:
        st = os.lstat(p)
        assert not stat.S_ISLNK(st.st_mode), f"symlink in the library: {p}"
        assert (st.st_uid, st.st_gid) == (0, 0), f"{p}: owned by {st.st_uid}:{st.st_gid}"
        expected = 0o755 if stat.S_ISDIR(st.st_mode) else 0o644
        assert stat.S_IMODE(st.st_mode) == expected, f"{p}: mode {stat.S_IMODE(st.st_mode):o}"


# The runtime, the operator's commands and (the tests install with --with-simulator) the simulator.
@pytest.mark.parametrize("package", ["pam_duo_py", "pam_duo_tools", "pam_duo_sim"])
def test_lib_holds_the_working_tree_and_duo_client(installed, package):
    repo_pkg = REPO / package
    sources = sorted(p.relative_to(repo_pkg) for p in repo_pkg.rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert sources, "no package sources in the checkout"
    for rel in sources:
        assert (LIB_DIR / package / rel).read_bytes() == (repo_pkg / rel).read_bytes(), rel
    installed_sources = sorted(p.relative_to(LIB_DIR / package)
                               for p in (LIB_DIR / package).rglob("*")
                               if p.is_file() and "__pycache__" not in p.parts)
    assert installed_sources == sources, "only the package's *.py files are installed"
    assert (LIB_DIR / "duo_client" / "__init__.py").is_file()
    assert (LIB_DIR / "duo_client" / "ca_certs.pem").is_file()
    assert list(LIB_DIR.glob("duo_client-5.7.0.dist-info")), "duo-client 5.7.0 expected"


@pytest.mark.parametrize("package", ["pam_duo_py", "pam_duo_tools", "pam_duo_sim", "duo_client"])
def test_byte_compiled_for_the_system_python(installed, package):
    sources = [p for p in (LIB_DIR / package).rglob("*.py") if "__pycache__" not in p.parts]
    assert sources
    for src in sources:
        pyc = src.parent / "__pycache__" / f"{src.stem}.{PYC_TAG}.pyc"
        assert pyc.is_file(), f"missing {pyc}"
        # Python 3.11's magic number (the venv and /usr/bin/python3 are both 3.11).
        assert pyc.read_bytes()[:4] == importlib.util.MAGIC_NUMBER, pyc


def test_system_python_imports_without_writing_bytecode(installed, tmp_path):
    """/usr/bin/python3 loads the installed .pyc files as they are (nothing stale)."""
    before = _snapshot()
    proc = subprocess.run(
        ["/usr/bin/python3", "-I", "-c",
         "import sys; sys.path.insert(0, %r); import duo_client, pam_duo_py; "
         "print(duo_client.__file__)" % str(LIB_DIR)],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip() == str(LIB_DIR / "duo_client" / "__init__.py")
    assert _snapshot() == before


@pytest.mark.parametrize("command, module", [(CLI, "pam_duo_tools.cli"), (LOGIN, "pam_duo_py.wrapper")])
def test_commands(installed, command, module):
    assert command.is_file() and not command.is_symlink()
    assert _mode(command) == 0o755
    _assert_root_and_not_writable(command)
    _assert_parents_safe(command)
    text = command.read_text()
    assert text.splitlines()[0] == SHEBANG
    assert f'sys.path.insert(0, "{LIB_DIR}")' in text
    assert f"from {module} import main" in text
    assert "sys.exit(main())" in text


def test_cli_help_runs_under_clean_env(installed):
    # Needs pam_duo_tools/cli.py in the checkout.
    proc = subprocess.run([str(CLI), "--help"], env=clean_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout


def test_commands_ignore_the_callers_python_environment(installed, tmp_path):
    """-I: a sitecustomize on PYTHONPATH (the caller's environment) never runs."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = dict(clean_env(), PYTHONPATH=str(evil))
    # Control: without -I the same environment does run it.
    subprocess.run(["/usr/bin/python3", "-c", "pass"], env=env, check=True)
    assert marker.exists()
    marker.unlink()
    for command in (CLI, LOGIN):
        subprocess.run([str(command), "--help"], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        assert not marker.exists(), f"{command} ran code from PYTHONPATH"


def test_manifest_lists_what_was_installed(installed):
    assert _mode(MANIFEST) == 0o644
    _assert_root_and_not_writable(MANIFEST)
    entries = {tuple(line.split()[:2]) for line in MANIFEST.read_text().splitlines()
               if line and not line.startswith("#")}
    for kind, path in (("dir", LIB_DIR), ("file", ENTRY), ("file", CLI), ("file", LOGIN)):
        assert (kind, str(path)) in entries


def test_config_dir_and_file(installed):
    assert ETC_DIR.is_dir()
    _assert_root_and_not_writable(ETC_DIR)
    _assert_parents_safe(ETC_DIR)
    if not EXAMPLE_CONFIG.exists() and not CONFIG.exists():
        pytest.skip("etc/pam_duo.toml is not in the checkout yet")
    assert CONFIG.is_file()
    st = os.lstat(CONFIG)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


# ------------------------------------------------------------------ re-running
def test_second_run_changes_nothing(installed):
    before = _snapshot()
    proc = run_install()
    assert "unchanged" in proc.stdout
    assert _snapshot() == before


def test_rerun_repairs_a_changed_library_file(installed):
    before = _snapshot()
    target = LIB_DIR / "duo_client" / "util.py"
    original = target.read_bytes()
    target.write_bytes(original + b"\n# changed\n")
    own = LIB_DIR / "pam_duo_py" / "__init__.py"
    own_original = own.read_bytes()
    own.write_bytes(own_original + b"\n# changed\n")
    extras = [LIB_DIR / "duo_client" / "planted.py", LIB_DIR / "pam_duo_py" / "planted.py"]
    for extra in extras:
        extra.write_text("raise SystemExit('planted')\n")
    run_install()
    assert target.read_bytes() == original
    assert own.read_bytes() == own_original
    for extra in extras:
        assert not extra.exists(), f"{extra} survived a reinstall"
    assert _snapshot() == before


def test_simulator_only_with_its_flag(installed):
    """Without --with-simulator the library holds the runtime and the commands, not the simulator."""
    try:
        proc = run_install(simulator=False)
        assert "simulator" not in proc.stdout.split("pam_duo_py installed:")[-1]
        assert (LIB_DIR / "pam_duo_py" / "pam.py").is_file()
        assert (LIB_DIR / "pam_duo_tools" / "cli.py").is_file()
        assert not (LIB_DIR / "pam_duo_sim").exists()
        sim = subprocess.run([str(CLI), "simulate", "--help"], env=clean_env(), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
        assert sim.returncode == 1 and "not installed" in sim.stderr and "Traceback" not in sim.stderr
        assert "--with-simulator" in sim.stderr
    finally:
        proc = run_install()
    assert "pam-duo-py simulate" in proc.stdout
    assert (LIB_DIR / "pam_duo_sim" / "simulator.py").is_file()


def test_existing_config_is_never_overwritten(installed):
    original = CONFIG.read_bytes() if CONFIG.exists() else None
    original_mode = _mode(CONFIG) if original is not None else None
    admin_text = b"# an administrator's configuration\n[duo]\nikey = \"DIADMIN\"\n"
    try:
        CONFIG.write_bytes(admin_text)
        os.chmod(CONFIG, 0o600)
        run_install()
        assert CONFIG.read_bytes() == admin_text
        assert _mode(CONFIG) == 0o600
    finally:
        if original is None:
            CONFIG.unlink()
        else:
            CONFIG.write_bytes(original)
            os.chmod(CONFIG, original_mode)


def test_help_and_bad_arguments():
    proc = subprocess.run(["bash", "scripts/install.sh", "--help"], cwd=REPO, env=clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0 and "--uninstall" in proc.stdout
    proc = subprocess.run(["bash", "scripts/install.sh", "--bogus"], cwd=REPO, env=clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 2


def test_no_pam_stack_is_touched(installed):
    before = {p.name: _sha256(p) for p in Path("/etc/pam.d").iterdir() if p.is_file()}
    run_install()
    after = {p.name: _sha256(p) for p in Path("/etc/pam.d").iterdir() if p.is_file()}
    assert after == before


# ------------------------------------------------------------------ uninstall
def test_uninstall_removes_what_it_installed_then_reinstall(installed):
    config_before = CONFIG.read_bytes() if CONFIG.exists() else None
    shipped = EXAMPLE_CONFIG.read_bytes() if EXAMPLE_CONFIG.exists() else None
    # --uninstall removes a config that is the example as it installed it (its hash is in the
    # MANIFEST) or as the checkout ships it now; any other config is the administrator's.
    recorded = [line.split()[2] for line in MANIFEST.read_text().splitlines()
                if line.startswith("config ") and len(line.split()) == 3]
    ours = config_before is not None and (config_before == shipped
                                          or hashlib.sha256(config_before).hexdigest() in recorded)
    try:
        proc = run_install("--uninstall")
        for path in (LIB_DIR, ENTRY, CLI, LOGIN, MANIFEST):
            assert not os.path.lexists(path), f"{path} left behind:\n{proc.stdout}"
        if config_before is not None and not ours:
            assert CONFIG.read_bytes() == config_before, "an administrator's config was removed"
        proc = run_install("--uninstall")
        assert proc.returncode == 0
    finally:
        run_install()
        if config_before is not None and not CONFIG.exists():
            CONFIG.write_bytes(config_before)
            os.chmod(CONFIG, 0o600)
    for path in (LIB_DIR, ENTRY, CLI, LOGIN, MANIFEST):
        assert path.exists()


@pytest.fixture
def still_in_use(installed):
    """A PAM service and an sshd snippet that name the entry file and the wrapper; removed at the end."""
    snippets = Path("/etc/ssh/sshd_config.d")
    made_dir = not snippets.exists()
    snippets.mkdir(parents=True, exist_ok=True)
    pam = PAM_DIR / "pdt-uninstall-in-use"
    sshd = snippets / "pdt-uninstall-in-use.conf"
    comment_only = PAM_DIR / "pdt-uninstall-comment"
    _write_root_file(pam, f"auth required pam_python.so {ENTRY} conf={CONFIG}\naccount required pam_permit.so\n", 0o644)
    _write_root_file(sshd, "Match Group pdt-nobody\n    ForceCommand /usr/local/bin/pam-duo-login\n", 0o644)
    _write_root_file(comment_only, f"# auth required pam_python.so {ENTRY}\nauth required pam_permit.so\n", 0o644)
    try:
        yield [pam, sshd]
    finally:
        for path in (pam, sshd, comment_only):
            path.unlink(missing_ok=True)
        if made_dir:
            snippets.rmdir()
        run_install()


def test_uninstall_refuses_while_pam_or_sshd_still_name_it(still_in_use):
    pam, sshd = still_in_use
    proc = run_install("--uninstall", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "refusing to uninstall" in proc.stdout
    named = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  /")]
    assert named == [str(pam), str(sshd)], proc.stdout        # each file, and not the commented one
    for path in (LIB_DIR, ENTRY, CLI, LOGIN, MANIFEST):
        assert path.exists(), f"{path} was removed although still in use"
    proc = run_install("--uninstall", "--force")
    assert proc.returncode == 0, proc.stdout
    for path in (LIB_DIR, ENTRY, CLI, LOGIN, MANIFEST):
        assert not os.path.lexists(path), proc.stdout


def test_uninstall_keeps_a_changed_config(installed):
    if not EXAMPLE_CONFIG.exists():
        pytest.skip("etc/pam_duo.toml is not in the checkout yet")
    original = CONFIG.read_bytes() if CONFIG.exists() else None
    try:
        # Start from a config created by the install itself.
        run_install("--uninstall")
        if CONFIG.exists():
            CONFIG.unlink()
        run_install()
        assert CONFIG.read_bytes() == EXAMPLE_CONFIG.read_bytes()
        CONFIG.write_bytes(CONFIG.read_bytes() + b"\n# changed by the administrator\n")
        proc = run_install("--uninstall")
        assert CONFIG.exists(), proc.stdout
        assert "changed" in proc.stdout
        # An unchanged example is removed.
        run_install()
        CONFIG.unlink()
        run_install()
        proc = run_install("--uninstall")
        assert not CONFIG.exists(), proc.stdout
    finally:
        run_install()
        if original is not None:
            CONFIG.write_bytes(original)
            os.chmod(CONFIG, 0o600)


# ------------------------------------------------------------------ real libpam
def test_libpam_loads_the_entry_file_and_a_missing_config_refuses(installed, pam_service, run_pam):
    pam_service("pdt-smoke", [
        f"auth required pam_python.so {ENTRY} conf=/nonexistent.toml",
        ACCOUNT_PERMIT,
    ])
    run = run_pam("pdt-smoke", "root")
    assert not run.crashed, str(run)
    assert run.results, str(run)
    assert run.code == PAM_SERVICE_ERR, str(run)


# ------------------------------------------------------------------ --with-pam-examples
SHARE_DIR = Path("/usr/local/share/pam_duo_py")


def test_pam_examples_only_with_the_flag_and_uninstall_removes_them(installed):
    shipped = {f"{sub}/{p.name}": p.read_bytes() for sub in ("pam.d", "sshd_config.d")
               for p in sorted((REPO / "etc" / sub).iterdir()) if p.is_file()}
    assert {"pam.d/sshd", "pam.d/sudo", "pam.d/sudo-i", "pam.d/su", "pam.d/su-l", "pam.d/login",
            "sshd_config.d/pam_duo_py-kbdint.conf"} <= set(shipped)
    pam_before = {p.name: _sha256(p) for p in Path("/etc/pam.d").iterdir() if p.is_file()}
    ssh_before = sorted(os.listdir("/etc/ssh/sshd_config.d")) if os.path.isdir("/etc/ssh/sshd_config.d") else []
    try:
        proc = run_install("--with-pam-examples")
        for rel, data in shipped.items():
            path = SHARE_DIR / rel
            assert path.read_bytes() == data, rel
            assert _mode(path) == 0o644
            _assert_root_and_not_writable(path)
        for directory in (SHARE_DIR, SHARE_DIR / "pam.d", SHARE_DIR / "sshd_config.d"):
            assert _mode(directory) == 0o755
            _assert_root_and_not_writable(directory)
        entries = {tuple(line.split()[:2]) for line in MANIFEST.read_text().splitlines()
                   if line and not line.startswith("#")}
        assert {("example", str(SHARE_DIR / rel)) for rel in shipped} <= entries
        assert "/usr/local/share/pam_duo_py" in proc.stdout
        # Never into /etc: the administrator copies what they need.
        assert {p.name: _sha256(p) for p in Path("/etc/pam.d").iterdir() if p.is_file()} == pam_before
        assert (sorted(os.listdir("/etc/ssh/sshd_config.d"))
                if os.path.isdir("/etc/ssh/sshd_config.d") else []) == ssh_before
        # A later run without the flag keeps them, and still knows about them.
        run_install()
        assert all((SHARE_DIR / rel).read_bytes() == data for rel, data in shipped.items())
        proc = run_install("--uninstall")
        assert not SHARE_DIR.exists(), proc.stdout
    finally:
        run_install()
    assert not SHARE_DIR.exists(), "the examples were installed without --with-pam-examples"
    assert {p.name: _sha256(p) for p in Path("/etc/pam.d").iterdir() if p.is_file()} == pam_before
