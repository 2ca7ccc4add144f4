"""Fixtures of the fault, survival and secrets tests (system layer: root, real libpam).

They reuse the system-test harness (``tests/system/conftest.py``: install, pamdrive,
simulator, users, configs, syslog capture) and add what fault injection needs:

* ``extra_simulator``: more simulators with their own options (``--tls wronghost``,
  ``--clock-offset``) or their own pre-made certificates;
* ``dead_ends``: loopback ports that refuse, black-hole or stall a connection;
* ``nxdomain_dns``: a loopback DNS server that answers NXDOMAIN, and an argv prefix that
  runs a program in a private mount namespace whose ``/etc/resolv.conf`` points at it, so
  that a DNS failure never sends a query off this machine;
* ``drive``/``start_drive``: pamdrive with extra environment variables or an argv prefix;
* ``flt_brokers``: brokers started by hand, one per config, each on a socket of its own
  (``broker_text(socket)`` is the config's ``[broker]`` table), so that a cell can be run
  through the broker as well as in-process.

PAM services written here are named ``pdt-flt-*``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import pytest

from system.conftest import (  # noqa: F401 - fixtures are re-exported for tests/faults
    CLEAN_PATH,
    CLI,
    ENTRY,
    PAM_AUTH_ERR,
    PAM_AUTHINFO_UNAVAIL,
    PAM_CONV_ERR,
    PAM_IGNORE,
    PAM_MAXTRIES,
    PAM_PERM_DENIED,
    PAM_SERVICE_ERR,
    PAM_SUCCESS,
    PAM_USER_UNKNOWN,
    REPO,
    STACK_ONLY_FACTOR,
    STACK_SECOND_FACTOR,
    PamRun,
    Simulator,
    SyslogCapture,
    _ensure_root_dir,
    _require_root,
    _write_root_file,
    clean_env,
    installed,
    pam_service,
    pamdrive,
    parse_pamdrive,
    run_pam,
    simulator,
    test_root,
    test_users,
    toml_table,
    write_config,
    write_map_file,
)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FLT_PREFIX = "pdt-flt-"


def report_dir() -> Optional[Path]:
    """``$PDT_REPORT_DIR`` (created), or None."""
    value = os.environ.get("PDT_REPORT_DIR")
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def syslog_capture(_require_root) -> Iterator[SyslogCapture]:
    """The system tests' syslog capture, shared when it already runs in this process
    (both directories in one pytest run), else one of our own."""
    if SyslogCapture.running is not None:
        yield SyslogCapture.running
        return
    capture = SyslogCapture().start()
    try:
        yield capture
    finally:
        capture.stop()


@pytest.fixture(scope="session")
def flt_root(test_root) -> Path:
    """``<test_root>/faults``: root-owned 0755, accepted by the file rule."""
    return _ensure_root_dir(test_root / "faults")


# ------------------------------------------------------------------ more simulators
@pytest.fixture(scope="session")
def extra_simulator(installed, flt_root) -> Iterator[Callable[..., Simulator]]:
    """extra_simulator(name, *args, prepare=None) -> a started Simulator of its own.

    ``args`` are more ``pam-duo-py simulate`` options. ``prepare(state_dir)`` runs before
    the start (e.g. to put certificates in place: the simulator reuses existing ones).
    """
    started: list[Simulator] = []

    def start(name: str, *args: str, prepare: Optional[Callable[[Path], None]] = None) -> Simulator:
        state = flt_root / f"sim-{name}"
        state.mkdir(mode=0o700, exist_ok=True)
        os.chown(state, 0, 0)
        os.chmod(state, 0o700)
        if prepare is not None:
            prepare(state)
        sim = Simulator(state, flt_root / f"sim-{name}.stderr", args=args)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


# ------------------------------------------------------------------ dead ends on loopback
class DeadEnds:
    """Loopback ports where a connection fails in a given way.

    * ``refused``: a bound socket that does not listen; the kernel answers SYN with RST.
    * ``blackhole``: a socket that listens with backlog 0 and whose accept queue is
      filled by one connection that is never accepted; Linux then drops every new SYN
      (``tcp_abort_on_overflow`` = 0), so ``connect()`` hangs as if the host were gone.
    * ``stall``: a listening socket that is never ``accept()``-ed, with room in its
      queue: the kernel completes the TCP handshake, and no byte ever comes back (a TLS
      handshake that stalls).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self._socks: list[socket.socket] = []

        self._refused = self._sock(family)
        self._refused.bind((host, 0))
        self.refused = self._refused.getsockname()[1]

        self._hole = self._sock(family)
        self._hole.bind((host, 0))
        self._hole.listen(0)
        self.blackhole = self._hole.getsockname()[1]
        filler = self._sock(family)
        filler.settimeout(5)
        filler.connect((host, self.blackhole))  # queued, never accepted: the queue is now full
        probe = socket.socket(family, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect((host, self.blackhole))
        except (TimeoutError, socket.timeout):
            self.blackhole_works = True
        except OSError:
            self.blackhole_works = False
        else:
            self.blackhole_works = False
        finally:
            probe.close()

        self._stall = self._sock(family)
        self._stall.bind((host, 0))
        self._stall.listen(128)
        self.stall = self._stall.getsockname()[1]

    def _sock(self, family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        self._socks.append(sock)
        return sock

    def close(self) -> None:
        for sock in self._socks:
            sock.close()


@pytest.fixture(scope="session")
def dead_ends(_require_root) -> Iterator[DeadEnds]:
    ends = DeadEnds()
    if not ends.blackhole_works:
        ends.close()
        pytest.fail("could not build a TCP black hole on loopback (full accept queue did not drop SYNs)")
    try:
        yield ends
    finally:
        ends.close()


# ------------------------------------------------------------------ DNS without the network
class NxdomainDns:
    """A DNS server on 127.0.83.53:53 (UDP) that answers NXDOMAIN to every query.

    With ``silent=True`` (on 127.0.83.54) it never answers: the resolver's own timeout
    (``options timeout:1 attempts:1`` in its resolv.conf) decides how long a lookup takes.
    """

    ADDRESS = "127.0.83.53"
    SILENT_ADDRESS = "127.0.83.54"
    RESOLVER_TIMEOUT = 1
    STOP = b"\x00pdt-flt-dns-stop\x00"

    def __init__(self, resolv_conf: Path, silent: bool = False) -> None:
        self.resolv_conf = resolv_conf
        self.silent = silent
        self.address = self.SILENT_ADDRESS if silent else self.ADDRESS
        self.queries: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.address, 53))
        _write_root_file(resolv_conf, f"nameserver {self.address}\n"
                                      f"options timeout:{self.RESOLVER_TIMEOUT} attempts:1\n", 0o644)
        self._thread = threading.Thread(target=self._serve, name="nxdomain-dns", daemon=True)
        if not silent:
            self._thread.start()

    @staticmethod
    def _question(data: bytes) -> tuple[str, int]:
        labels, i = [], 12
        while i < len(data) and data[i] != 0:
            n = data[i]
            labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += n + 1
        return ".".join(labels), i + 5  # the zero byte, QTYPE and QCLASS

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self._sock.recvfrom(4096)
            except OSError:
                return
            if data == self.STOP:
                return
            if len(data) < 17:
                continue
            name, end = self._question(data)
            with self._lock:
                self.queries.append(name)
            flags = bytes([0x80 | (data[2] & 0x79), 0x80 | 3])  # QR, opcode, RD; RA, NXDOMAIN
            reply = data[:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + data[12:end]
            try:
                self._sock.sendto(reply, peer)
            except OSError:
                pass

    def prefix(self) -> list[str]:
        """An argv prefix: run the rest in a mount namespace with our resolv.conf."""
        return ["/usr/bin/unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(self.resolv_conf)]

    def asked(self) -> list[str]:
        with self._lock:
            return list(self.queries)

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(self.STOP, (self.address, 53))
            except OSError:
                pass
            self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture(scope="session")
def nxdomain_dns(flt_root) -> Iterator[NxdomainDns]:
    try:
        dns = NxdomainDns(flt_root / "resolv.conf")
    except OSError as exc:
        pytest.fail(f"cannot start the loopback DNS server on {NxdomainDns.ADDRESS}:53: {exc}")
    probe = subprocess.run([*dns.prefix(), "/usr/bin/getent", "hosts", "pdt-flt-probe.invalid"],
                           env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if "pdt-flt-probe.invalid" not in dns.asked():
        dns.stop()
        pytest.fail(f"the private resolv.conf did not reach the loopback DNS server: {probe.stdout}")
    try:
        yield dns
    finally:
        dns.stop()


@pytest.fixture(scope="session")
def silent_dns(flt_root) -> Iterator[NxdomainDns]:
    """A loopback DNS server that never answers (see NxdomainDns)."""
    try:
        dns = NxdomainDns(flt_root / "resolv-silent.conf", silent=True)
    except OSError as exc:
        pytest.fail(f"cannot bind {NxdomainDns.SILENT_ADDRESS}:53: {exc}")
    try:
        yield dns
    finally:
        dns.stop()


# ------------------------------------------------------------------ pamdrive with options
def pamdrive_argv(pamdrive: Path, service: str, user: str, answers: Iterable[str] = (), *,
                  tty: Optional[str] = None, rhost: Optional[str] = None, loop: Optional[int] = None,
                  quiet: bool = False, rss: bool = False, timing: bool = True,
                  prefix: Iterable[str] = ()) -> list[str]:
    argv = [*prefix, str(pamdrive)]
    for opt, value in (("--rhost", rhost), ("--tty", tty)):
        if value is not None:
            argv += [opt, value]
    if loop is not None:
        argv += ["--loop", str(loop)]
    if quiet:
        argv.append("--quiet")
    if rss:
        argv.append("--rss")
    if timing:
        argv.append("--time")
    return argv + ["--", service, user, *answers]


class Started:
    """A pamdrive process that is running; ``finish()`` waits and returns a PamRun."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid

    def finish(self, timeout: float = 120) -> PamRun:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        seconds = time.monotonic() - self.start
        messages, results = parse_pamdrive(out)
        run = PamRun(code=results[-1][0] if results else self.proc.returncode, messages=messages,
                     seconds=seconds, stdout=out.decode("utf-8", "replace"),
                     stderr=err.decode("utf-8", "replace"), returncode=self.proc.returncode,
                     results=results)
        run.pid = self.pid  # type: ignore[attr-defined]
        # pamdrive --time / --rss lines: how long each pam_authenticate() took, memory
        run.auth_seconds = []  # type: ignore[attr-defined]
        run.rss = []  # type: ignore[attr-defined]
        for line in out.decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "TIME":
                run.auth_seconds.append(float(parts[2]))  # type: ignore[attr-defined]
            elif len(parts) == 4 and parts[0] == "RSS":
                run.rss.append(tuple(int(x) for x in parts[1:]))  # type: ignore[attr-defined]
        return run


@pytest.fixture(scope="session")
def start_drive(pamdrive) -> Callable[..., Started]:
    """start_drive(service, user, answers=(), env=None, prefix=(), tty=..., loop=..., quiet=..., rss=...)

    ``env``: variables added to clean_env() (the test's own injection).
    """

    def start(service: str, user: str, answers: Iterable[str] = (), *, env: Optional[dict] = None,
              **options) -> Started:
        environment = clean_env()
        environment.update(env or {})
        return Started(pamdrive_argv(pamdrive, service, user, answers, **options), environment)

    return start


@pytest.fixture(scope="session")
def drive(start_drive) -> Callable[..., PamRun]:
    """drive(...): start_drive(...).finish(timeout)."""

    def run(service: str, user: str, answers: Iterable[str] = (), *, timeout: float = 120,
            **options) -> PamRun:
        return start_drive(service, user, answers, **options).finish(timeout)

    return run


@pytest.fixture
def flt_service(pam_service) -> Callable[..., Path]:
    """pam_service() for names that must start with pdt-flt-."""

    def write(name: str, lines: Iterable[str], conf=None) -> Path:
        if not name.startswith(FLT_PREFIX):
            raise ValueError(f"fault-test PAM services are named {FLT_PREFIX}*: {name!r}")
        return pam_service(name, lines, conf=conf)

    return write


# ------------------------------------------------------------------ what a login left behind
def read_audit(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def log_line(capture, record: Optional[dict], pid: int, timeout: float = 5.0) -> tuple[str, str]:
    """(source, text) of the decision's syslog line: the captured one (sent by process ``pid``)
    when syslog is ours, else the line rendered from the audit record by the product's own
    formatter."""
    if record is None:
        return "none", ""
    from pam_duo_py.events import syslog_line

    expected = syslog_line(record)[1]
    if capture is not None and capture.available:
        tag = f"pam_duo_py[{pid}]: "
        line = capture.wait_for(lambda l: tag in l and l.endswith(expected), timeout=timeout)
        if line is not None:
            return "syslog", line.split(tag, 1)[1]
        return "syslog-missing", expected
    return "audit", expected


# ------------------------------------------------------------------ brokers
VIA = ("in-process", "broker")


def broker_text(socket_path: Path) -> str:
    """The ``[broker]`` table that makes the PAM module hand logins to the broker on ``socket_path``."""
    return f'[broker]\nsocket = "{socket_path}"\n'


class Brokers:
    """Brokers for fault tests: ``socket_for(name)`` in a root-owned 0755 directory, ``start(conf, socket)``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list = []

    def socket_for(self, name: str) -> Path:
        return _ensure_root_dir(self.root / name) / "broker.sock"

    def start(self, conf: Path, socket_path: Path, prefix: Iterable[str] = ()):
        from system.brokerkit import BrokerProcess

        broker = BrokerProcess(conf, socket_path, prefix=prefix).start()
        self.started.append(broker)
        return broker


@pytest.fixture(scope="session")
def flt_brokers(installed) -> Iterator[Brokers]:
    top = _ensure_root_dir(Path("/run/pam_duo_py_flt"))
    brokers = Brokers(_ensure_root_dir(top / str(os.getpid())))
    try:
        yield brokers
    finally:
        for broker in brokers.started:
            broker.stop()
        shutil.rmtree(brokers.root, ignore_errors=True)
        try:
            top.rmdir()
        except OSError:
            pass
