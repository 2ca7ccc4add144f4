"""Fixtures for the system tests: the installed product driven through real libpam.

These tests run as root (``sudo scripts/test``). They install the working tree
with ``scripts/install.sh``, start the local Duo simulator with the installed
``pam-duo-py``, write PAM services under ``/etc/pam.d/pdt-*``, create local
users ``pdt-*`` and drive PAM with ``pamdrive`` (a small C program): PAM
stacks that load pam_python must never be driven from inside this Python
process, and every child gets ``clean_env()`` (no pyenv PATH, no PYTHON*).
"""
from __future__ import annotations

import json
import os
import pwd
import grp
import queue
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "scripts" / "install.sh"
PAMDRIVE_C = Path(__file__).resolve().parent / "pamdrive.c"

# What the tests drive: the working tree installed by scripts/install.sh (the default),
# or, with PDT_INSTALL=deb (scripts/test sets it), the Debian package from scripts/build-deb.
PACKAGE = os.environ.get("PDT_INSTALL") == "deb"
if PACKAGE:
    PREFIX = Path("/usr/lib/pam-duo-py")
    LIB_DIR = PREFIX / "current"
    ENTRY = Path("/usr/lib/security/pam_duo_py.py")
    MANIFEST = PREFIX / "MANIFEST"  # the package has none: dpkg keeps the list
    CLI = Path("/usr/bin/pam-duo-py")
    LOGIN = Path("/usr/bin/pam-duo-login")
    # The simulator is not in the package: run it from this checkout.
    SIMULATE = ["/usr/bin/python3", "-I", "-c",
                f"import sys; sys.path.insert(0, {str(REPO)!r}); from pam_duo_sim.simulator import main; "
                "sys.exit(main(sys.argv[1:]))"]
else:
    PREFIX = Path("/usr/local/lib/pam_duo_py")
    LIB_DIR = PREFIX / "lib"
    ENTRY = PREFIX / "pam_duo.py"
    MANIFEST = PREFIX / "MANIFEST"
    CLI = Path("/usr/local/bin/pam-duo-py")
    LOGIN = Path("/usr/local/bin/pam-duo-login")
    SIMULATE = [str(CLI), "simulate"]
ETC_DIR = Path("/etc/pam_duo_py")
CONFIG = ETC_DIR / "pam_duo.toml"
EXAMPLE_CONFIG = REPO / "etc" / "pam_duo.toml"
PAM_DIR = Path("/etc/pam.d")

# Root-owned, 0755, every parent root-owned and not group/other-writable: the
# product's file rule accepts configs, map files and simulator state here.
TEST_ROOT = Path("/run/pam_duo_py_tests")

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SIMULATOR_START_TIMEOUT = 30.0

# PAM return codes (Linux-PAM, security/_pam_types.h).
PAM_SUCCESS = 0
PAM_OPEN_ERR = 1
PAM_SYMBOL_ERR = 2
PAM_SERVICE_ERR = 3
PAM_SYSTEM_ERR = 4
PAM_BUF_ERR = 5
PAM_PERM_DENIED = 6
PAM_AUTH_ERR = 7
PAM_CRED_INSUFFICIENT = 8
PAM_AUTHINFO_UNAVAIL = 9
PAM_USER_UNKNOWN = 10
PAM_MAXTRIES = 11
PAM_CONV_ERR = 19
PAM_IGNORE = 25

# The PAM line (docs/behaviour.md §3). "{conf}" is filled in by pam_service(conf=...).
DUO_MODULE = f"pam_python.so {ENTRY} conf={{conf}}"
ACCOUNT_PERMIT = "account required pam_permit.so"

# Canonical stack 1: Duo as the second factor after the password. The test
# stack leaves the password module out, so this is a lone "auth required":
# a user the module ignores (PAM_IGNORE) ends as PAM_PERM_DENIED (docs/platform.md).
STACK_SECOND_FACTOR = [
    f"auth required {DUO_MODULE}",
    ACCOUNT_PERMIT,
]
# The same, with the password in front (users need a password: LocalUsers.set_password).
STACK_AFTER_PASSWORD = [
    "auth required pam_unix.so",
    f"auth required {DUO_MODULE}",
    ACCOUNT_PERMIT,
]
# Canonical stack 2: Duo as the only PAM factor (sshd with
# AuthenticationMethods publickey,keyboard-interactive).
STACK_ONLY_FACTOR = [
    f"auth requisite {DUO_MODULE}",
    "auth required pam_permit.so",
    ACCOUNT_PERMIT,
]

# Local test users (short name -> local name). The simulator picks its scenario
# from the Duo user name, so write_map_file() maps "pdt-X" to "X".
USER_SHORT_NAMES = (
    "alice", "allow", "deny", "enroll", "pushdeny", "fraud",
    "pushtimeout", "tokenonly", "exempt",
)
USER_PREFIX = "pdt-"
DUO_GROUP = "pdt-duo"
EXEMPT_USERS = ("exempt",)


def clean_env() -> dict[str, str]:
    """The whole environment for anything that loads pam_python or runs the product."""
    return {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}


def _admin_env() -> dict[str, str]:
    """Environment for install.sh: the caller's (proxies, pip settings) minus Python's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PYENV", "VIRTUAL_ENV", "CONDA"))}
    env["PATH"] = CLEAN_PATH
    env.setdefault("LANG", "C.UTF-8")
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a child (kill it if it does not go within ``timeout``) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ensure_root_dir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    return path


def _write_root_file(path: Path, data: str | bytes, mode: int) -> Path:
    """Write a root-owned file atomically with exactly ``mode``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chown(tmp, 0, 0)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# ------------------------------------------------------------------ TOML
def toml_value(value: object) -> str:
    """Render a TOML value: strings, bools, ints, floats and lists of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; DEL must be escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def toml_table(name: str, values: dict[str, object]) -> str:
    lines = [f"[{name}]"]
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ root
@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("system tests need root (run scripts/test as root)")


@pytest.fixture(scope="session", autouse=True)
def _keys_that_interrupt() -> None:
    """Ctrl-C and Ctrl-\\ act on the programs the tests start, however the run was started.

    A command put in the background by a script (``cmd &``, no job control) starts with
    SIGINT and SIGQUIT ignored, and every program it starts inherits that: ssh would
    then outlive its Ctrl-C and answer the Duo prompt with Enter (a push).
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler: exec() resets it for children
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def test_root(_require_root) -> Iterator[Path]:
    """``/run/pam_duo_py_tests/run-<pid>``: root-owned 0755, removed when the test run ends.

    One directory per run, so that two runs on one machine do not remove each other's files.
    """
    _ensure_root_dir(TEST_ROOT)
    root = _ensure_root_dir(TEST_ROOT / f"run-{os.getpid()}")
    yield root
    shutil.rmtree(root, ignore_errors=True)
    try:
        TEST_ROOT.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------ install
@dataclass(frozen=True)
class Installed:
    prefix: Path = PREFIX
    lib_dir: Path = LIB_DIR
    entry: Path = ENTRY
    manifest: Path = MANIFEST
    cli: Path = CLI
    login: Path = LOGIN
    etc_dir: Path = ETC_DIR
    config: Path = CONFIG
    output: str = ""


def run_install(*args: str, check: bool = True, simulator: bool = True) -> subprocess.CompletedProcess:
    """Run scripts/install.sh from the repository root (installs the working tree).

    An install or update includes the simulator (``--with-simulator``) unless ``simulator=False``:
    the tests run it from the installed tree."""
    if simulator and "--uninstall" not in args:
        args = ("--with-simulator", *args)
    proc = subprocess.run(
        ["bash", str(INSTALL_SH), *args], cwd=REPO, env=_admin_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=900,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"scripts/install.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}")
    return proc


@pytest.fixture(scope="session")
def installed(_require_root, request) -> Installed:
    """The product installed from this working tree (once per test run), or the Debian package."""
    if PACKAGE:
        return request.getfixturevalue("package_installed")
    proc = run_install()
    return Installed(output=proc.stdout)


@pytest.fixture(scope="session")
def package_installed(_require_root) -> Iterator[Installed]:
    """The Debian package installed with apt; purged and the machine restored at the end."""
    from .debkit import installed_package

    with installed_package() as output:
        yield Installed(output=output)


# ------------------------------------------------------------------ pamdrive
@pytest.fixture(scope="session")
def pamdrive(_require_root, tmp_path_factory) -> Path:
    """Path of pamdrive, compiled from tests/system/pamdrive.c."""
    gcc = shutil.which("gcc", path=CLEAN_PATH)
    if gcc is None:
        pytest.fail("gcc is not installed (scripts/test installs it)")
    out = tmp_path_factory.mktemp("pamdrive") / "pamdrive"
    proc = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(out), str(PAMDRIVE_C), "-lpam"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"compiling pamdrive failed:\n{proc.stdout}")
    os.chmod(out.parent, 0o755)
    return out


def _unescape(raw: bytes) -> str:
    """Undo pamdrive's escaping (\\n, \\\\, \\xNN)."""
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x5C and i + 1 < len(raw):  # backslash
            nxt = raw[i + 1]
            if nxt == ord("n"):
                out.append(0x0A)
                i += 2
                continue
            if nxt == 0x5C:
                out.append(0x5C)
                i += 2
                continue
            if nxt == ord("x") and i + 3 < len(raw):
                try:
                    out.append(int(raw[i + 2:i + 4], 16))
                    i += 4
                    continue
                except ValueError:
                    pass
        out.append(b)
        i += 1
    return out.decode("utf-8", errors="surrogateescape")


MESSAGE_STYLES = ("PROMPT_ECHO_ON", "PROMPT_ECHO_OFF", "TEXT_INFO", "ERROR_MSG")


@dataclass
class PamRun:
    code: int                                  # the last RESULT, or the exit status if none
    messages: list[tuple[str, str]]            # (style, text), escapes undone
    seconds: float                             # wall time of the whole pamdrive run
    stdout: str
    stderr: str = ""
    returncode: int = 0                        # pamdrive's exit status (negative: signal)
    results: list[tuple[int, str]] = field(default_factory=list)  # one per iteration

    @property
    def crashed(self) -> bool:
        """True when pamdrive died (for example a segfault in pam_python) or printed no RESULT."""
        return self.returncode < 0 or not self.results

    @property
    def prompts(self) -> list[tuple[str, str]]:
        return [m for m in self.messages if m[0].startswith("PROMPT_")]

    @property
    def text(self) -> str:
        """Every message's text, one per line."""
        return "\n".join(text for _, text in self.messages)

    def __str__(self) -> str:
        return (f"PamRun(code={self.code}, returncode={self.returncode}, "
                f"seconds={self.seconds:.2f})\n{self.stdout}{self.stderr}")


def parse_pamdrive(stdout: bytes) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    messages: list[tuple[str, str]] = []
    results: list[tuple[int, str]] = []
    for line in stdout.split(b"\n"):
        if not line:
            continue
        head, _, rest = line.partition(b" ")
        style = head.decode("ascii", errors="replace")
        if style == "RESULT":
            code, _, text = rest.partition(b" ")
            results.append((int(code), text.decode("utf-8", errors="replace")))
        elif style in MESSAGE_STYLES:
            messages.append((style, _unescape(rest)))
    return messages, results


@pytest.fixture(scope="session")
def run_pam(pamdrive) -> Callable[..., PamRun]:
    """run_pam(service, user, answers=(), rhost=None, tty=None, authtok=None,
    timeout=30, ruser=None, loop=None, quiet=False) -> PamRun"""

    def run(service: str, user: str, answers: Iterable[str] = (), rhost: Optional[str] = None,
            tty: Optional[str] = None, authtok: Optional[str] = None, timeout: float = 30,
            ruser: Optional[str] = None, loop: Optional[int] = None, quiet: bool = False) -> PamRun:
        argv = [str(pamdrive)]
        for opt, value in (("--rhost", rhost), ("--tty", tty), ("--ruser", ruser),
                           ("--authtok", authtok)):
            if value is not None:
                argv += [opt, value]
        if loop is not None:
            argv += ["--loop", str(loop)]
        if quiet:
            argv.append("--quiet")
        argv += ["--", service, user, *answers]
        start = time.monotonic()
        proc = subprocess.run(argv, env=clean_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        seconds = time.monotonic() - start
        messages, results = parse_pamdrive(proc.stdout)
        code = results[-1][0] if results else proc.returncode
        return PamRun(code=code, messages=messages, seconds=seconds,
                      stdout=proc.stdout.decode("utf-8", errors="replace"),
                      stderr=proc.stderr.decode("utf-8", errors="replace"),
                      returncode=proc.returncode, results=results)

    return run


# ------------------------------------------------------------------ PAM services
@pytest.fixture
def pam_service(_require_root) -> Iterator[Callable[..., Path]]:
    """pam_service(name, lines, conf=None) -> Path of /etc/pam.d/<name> (0644).

    ``name`` must start with "pdt-" (a real service is never replaced). With
    ``conf``, "{conf}" in the lines is replaced by that path. Removed at teardown.
    """
    created: list[Path] = []

    def write(name: str, lines: Iterable[str], conf: Optional[os.PathLike | str] = None) -> Path:
        if not name.startswith(USER_PREFIX) or "/" in name:
            raise ValueError(f"test PAM services must be named {USER_PREFIX}*: {name!r}")
        lines = list(lines)
        if conf is not None:
            lines = [line.replace("{conf}", str(conf)) for line in lines]
        elif any("{conf}" in line for line in lines):
            raise ValueError("the stack has a {conf} placeholder: pass conf=")
        path = PAM_DIR / name
        _write_root_file(path, "\n".join(lines) + "\n", 0o644)
        if path not in created:
            created.append(path)
        return path

    yield write
    for path in created:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------ users
class LocalUsers(dict):
    """Short name -> local user name ("alice" -> "pdt-alice"), plus user utilities."""

    group = DUO_GROUP

    def __init__(self, names: dict[str, str]):
        super().__init__(names)
        self.created_users: list[str] = []
        self.created_group = False

    @property
    def exempt(self) -> str:
        return self["exempt"]

    def set_password(self, user: str, password: str) -> None:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True,
                       env=clean_env(), check=True)

    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid


def _run_admin(argv: list[str]) -> None:
    proc = subprocess.run(argv, env=clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stdout}")


@pytest.fixture(scope="session")
def test_users(_require_root) -> Iterator[LocalUsers]:
    """Local users pdt-alice, pdt-allow, ... (all in group pdt-duo except pdt-exempt)."""
    users = LocalUsers({short: USER_PREFIX + short for short in USER_SHORT_NAMES})
    try:
        grp.getgrnam(DUO_GROUP)
    except KeyError:
        _run_admin(["groupadd", DUO_GROUP])
        users.created_group = True
    try:
        for short, name in users.items():
            in_duo = short not in EXEMPT_USERS
            try:
                pwd.getpwnam(name)
            except KeyError:
                argv = ["useradd", "-M", "-s", "/bin/bash"]
                if in_duo:
                    argv += ["-G", DUO_GROUP]
                _run_admin(argv + [name])
                users.created_users.append(name)
            else:  # left over from an interrupted run: fix its groups
                _run_admin(["usermod", "-G", DUO_GROUP if in_duo else "", name])
        yield users
    finally:
        if os.environ.get("PDT_KEEP_USERS"):
            return  # several test runs at once share the users; none of them removes them
        for name in users.created_users:
            subprocess.run(["userdel", name], env=clean_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if users.created_group:
            subprocess.run(["groupdel", DUO_GROUP], env=clean_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def default_map_lines() -> list[str]:
    """"pdt-X X" for every test user: the simulator's scenario follows the Duo name."""
    return [f"{USER_PREFIX}{short} {short}" for short in USER_SHORT_NAMES]


@pytest.fixture
def write_map_file(test_root) -> Iterator[Callable[..., Path]]:
    """write_map_file(lines=None) -> Path (root, 0600, under /run/pam_duo_py_tests).

    Without ``lines``, maps every pdt-X test user to the Duo user X.
    """
    written: list[Path] = []

    def write(lines: Optional[Iterable[str]] = None) -> Path:
        lines = default_map_lines() if lines is None else list(lines)
        fd, name = tempfile.mkstemp(dir=test_root, prefix="map-", suffix=".txt")
        os.close(fd)
        path = _write_root_file(Path(name), "\n".join(lines) + "\n", 0o600)
        written.append(path)
        return path

    yield write
    for path in written:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------ simulator
class Simulator:
    """The installed ``pam-duo-py simulate``, run as a child with clean_env()."""

    def __init__(self, state_dir: Path, log_path: Path, args: Iterable[str] = ()):
        self.state_dir = state_dir
        self.args = list(args)  # more `pam-duo-py simulate` options, e.g. ["--tls", "wronghost"]
        self.request_log = state_dir / "requests.jsonl"
        self.log_path = log_path
        self.port: Optional[int] = None
        self.config_path: Optional[Path] = None
        self.url: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None
        self.output: list[str] = []
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self, timeout: float = SIMULATOR_START_TIMEOUT) -> "Simulator":
        """Start (again). A restart asks for the same port, so configs stay valid."""
        if self.running:
            return self
        port = self.port if self.port is not None else 0
        argv = [*SIMULATE, "--port", str(port), "--state-dir", str(self.state_dir), *self.args]
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                argv, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, cwd="/",
            )
        finally:
            log.close()
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout,
                                        args=(self.process, self._lines, self.output),
                                        name="simulator-stdout", daemon=True)
        self._reader.start()

        config = listening = None
        deadline = time.monotonic() + timeout
        while config is None or listening is None:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.001)) if remaining > 0 else None
            except queue.Empty:
                line = None
            if line is None:  # EOF or timeout
                self.stop()
                raise RuntimeError(
                    f"the simulator did not report 'config:' and 'listening:' within {timeout} s; "
                    f"argv={argv}; stdout={self.output!r}; stderr:\n{self.stderr_text()}")
            if line.startswith("config:"):
                config = line.partition(":")[2].strip()
            elif line.startswith("listening:"):
                listening = line.partition(":")[2].strip()
        self.config_path = Path(config)
        self.url = listening
        self.port = int(listening.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    @staticmethod
    def _read_stdout(proc: subprocess.Popen, lines: "queue.Queue[Optional[str]]",
                     output: list[str]) -> None:
        """Keep reading stdout (so the simulator never blocks on a full pipe)."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            output.append(line)
            lines.put(line)
        lines.put(None)

    def stop(self, timeout: float = 10) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        stop_process(proc, timeout)
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- what it wrote
    def duo_settings(self) -> dict[str, object]:
        """The [duo] table of the snippet the simulator wrote (ikey, skey, host, ca_file)."""
        assert self.config_path is not None, "the simulator has not started"
        with open(self.config_path, "rb") as f:
            return dict(tomllib.load(f)["duo"])

    def requests(self, since: int = 0) -> list[dict]:
        """Requests logged so far (JSON lines), from line ``since`` on."""
        try:
            text = self.request_log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines()[since:]:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"unparsed": line})
        return out

    def mark(self) -> int:
        """A position in the request log, for requests(since=mark)."""
        try:
            return len(self.request_log.read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return 0

    def stderr_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture(scope="session")
def simulator(installed, test_root) -> Iterator[Simulator]:
    """The local Duo simulator (one for the whole test run); .stop()/.start() to make Duo unreachable."""
    state = _ensure_root_dir(test_root / "simulator")
    sim = Simulator(state, test_root / "simulator.stderr")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def write_config(simulator, test_root) -> Iterator[Callable[..., Path]]:
    """write_config(name, duo=None, auth=None, users=None, log=None, extra_text="") -> Path

    Writes /run/pam_duo_py_tests/<name>.toml (root, 0600): the simulator's [duo]
    table updated with ``duo`` (a None value drops a key), then [auth], [users]
    and [log] from the dicts, then ``extra_text`` verbatim. Removed at teardown.
    """
    written: list[Path] = []

    def write(name: str, duo: Optional[dict] = None, auth: Optional[dict] = None,
              users: Optional[dict] = None, log: Optional[dict] = None,
              extra_text: str = "") -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad config name {name!r}")
        duo_table = simulator.duo_settings()
        for key, value in (duo or {}).items():
            if value is None:
                duo_table.pop(key, None)
            else:
                duo_table[key] = value
        parts = [toml_table("duo", duo_table)]
        for table, values in (("auth", auth), ("users", users), ("log", log)):
            if values is not None:
                parts.append(toml_table(table, values))
        text = "\n".join(parts)
        if extra_text:
            text += "\n" + extra_text
        path = _write_root_file(test_root / f"{name}.toml", text, 0o600)
        if path not in written:
            written.append(path)
        return path

    yield write
    for path in written:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------ syslog
class SyslogCapture:
    """Datagrams sent to /dev/log during the test run (when this process owns it)."""

    SENTINEL = b"\x00pam_duo_py-tests-stop\x00"
    running: Optional["SyslogCapture"] = None  # the one that owns the socket in this process, if any

    def __init__(self, path: str = "/dev/log"):
        self.path = path
        self.available = False
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "SyslogCapture":
        if os.path.lexists(self.path):
            if not self._stale_socket():
                return self  # a real syslog daemon owns it: use the audit file instead
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)  # everyone may log, as with a real /dev/log
        self._sock = sock
        self._thread = threading.Thread(target=self._receive, name="syslog-capture", daemon=True)
        self._thread.start()
        self.available = True
        SyslogCapture.running = self
        return self

    def _stale_socket(self) -> bool:
        """True for a socket file nobody listens on (left by an interrupted run)."""
        try:
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                return False
        except OSError:
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(self.path)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        finally:
            probe.close()
        return False

    def _receive(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if data == self.SENTINEL:
                return
            line = data.decode("utf-8", errors="replace").rstrip("\n\x00")
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()

    def stop(self) -> None:
        if self._sock is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(self.SENTINEL, self.path)
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        self._sock = None
        if SyslogCapture.running is self:
            SyslogCapture.running = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def mark(self) -> int:
        """A position, for wait_for(..., since=mark) and lines()[mark:]."""
        with self._cond:
            return len(self._lines)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10,
                 since: int = 0) -> Optional[str]:
        """The first line (from ``since``) that satisfies ``predicate``, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        checked = since
        with self._cond:
            while True:
                for line in self._lines[checked:]:
                    if predicate(line):
                        return line
                checked = max(checked, len(self._lines))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


@pytest.fixture(scope="session")
def syslog_capture(_require_root) -> Iterator[SyslogCapture]:
    """Listens on /dev/log when nothing else does; ``.available`` says whether it could."""
    capture = SyslogCapture().start()
    try:
        yield capture
    finally:
        capture.stop()
