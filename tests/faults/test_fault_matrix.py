"""The fault matrix: every way Duo can fail, at every step, under both failmodes (docs/behaviour.md §5).

Each cell is one login through the real PAM stack (pamdrive, ``STACK_ONLY_FACTOR``) for
the local user ``pdt-alice``, mapped (``users.map_file``) to a Duo user name that tells
the simulator which fault to play (``alice7s+500@auth``). Logins have no tty, so they are
non-interactive: one push to the default device, no menu, no retry. Every cell runs with
``timeout = 0.5`` and ``push_timeout = 1``, in parallel, and checks:

* the PAM result: failmode counts only while Duo has said nothing at preauth
  (``secure`` -> PAM_AUTHINFO_UNAVAIL, ``safe`` -> PAM_SUCCESS logged "Failsafe");
  an answer at preauth that is an error (401, 429 past our wait) -> PAM_AUTHINFO_UNAVAIL
  in both modes; any failure after preauth -> PAM_AUTH_ERR in both modes;
* the time to decide: at most ``timeout`` per API call plus ``push_timeout`` per push,
  plus a margin for starting the process (pam_python, the interpreter, the imports);
* the decision's log line (the captured syslog line, or when another process owns
  ``/dev/log``, the line rendered from the cell's audit record).

How the network faults are made, on loopback only:

* DNS failure: the host ``pdt-flt-nohost.invalid``, looked up in a private mount namespace
  whose ``/etc/resolv.conf`` names a loopback DNS server that answers NXDOMAIN (no query
  ever leaves the machine);
* connection refused: a loopback port bound by a socket that does not listen;
* connect black hole: a socket listening with backlog 0 whose accept queue is full, so
  the kernel drops every SYN (connect() hangs as for a dead host);
* TLS handshake stall: a listening socket never accept()-ed (TCP completes, no TLS reply).

The whole matrix runs twice: decided in-process by the PAM module, and handed by the PAM
module to a broker (one broker per cell's config, started for that cell; in the DNS cell
the broker runs in the namespace with the NXDOMAIN resolver). The decision, its bound and
its log line are the same either way; through the broker, the line comes from the broker.

The table is printed (``-s``) and written to ``$PDT_REPORT_DIR/fault-matrix.txt``
(``fault-matrix-broker.txt`` through the broker).
"""
from __future__ import annotations

import concurrent.futures
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest

from .conftest import (
    VIA,
    PAM_AUTH_ERR,
    PAM_AUTHINFO_UNAVAIL,
    PAM_SUCCESS,
    STACK_ONLY_FACTOR,
    NxdomainDns,
    log_line,
    broker_text,
    read_audit,
    report_dir,
)

pytestmark = pytest.mark.system

TIMEOUT = 0.5
PUSH_TIMEOUT = 1.0
# pam_python's interpreter, the imports and the config: 0.2-0.4 s measured, 8 logins at a time on 2 cores
MARGIN = 1.0
# through the broker a second process shares the cores, while other cells' brokers start
BROKER_MARGIN = 1.0
PARALLEL = 8
MODES = ("secure", "safe")

# (PAM code, audit outcome, start of the syslog line) per failmode
UNAVAILABLE = {"secure": (PAM_AUTHINFO_UNAVAIL, "failure", "Failsecure Duo login for"),
               "safe": (PAM_SUCCESS, "failsafe", "Failsafe Duo login for")}
REFUSED = {m: (PAM_AUTHINFO_UNAVAIL, "error", "Error in Duo login for") for m in MODES}
AFTER_PREAUTH = {m: (PAM_AUTH_ERR, "failure", "Failed Duo login for") for m in MODES}
GRANTED = {m: (PAM_SUCCESS, "success", "Successful Duo login for") for m in MODES}
ALLOWED = {m: (PAM_SUCCESS, "preauth_allow", "Skipped Duo login for") for m in MODES}
CODE_NAMES = {0: "SUCCESS", 7: "AUTH_ERR", 9: "AUTHINFO_UNAVAIL", 3: "SERVICE_ERR", 11: "MAXTRIES",
              19: "CONV_ERR", 10: "USER_UNKNOWN", 6: "PERM_DENIED", 25: "IGNORE"}


@dataclass
class Cell:
    fault: str
    where: str                    # preauth | auth | auth_status (the push wait) | login
    duo_name: str                 # "{id}" is replaced by a per-cell, per-mode tag
    expect: dict
    calls: int                    # API calls before the push wait, each bounded by TIMEOUT
    pushes: int                   # push waits, each bounded by PUSH_TIMEOUT
    duo: Callable[..., dict] = lambda env: {}
    mentions: tuple[str, ...] = ()   # regular expressions the log line must match
    tty: Optional[str] = None
    answers: tuple[str, ...] = ()
    dns: bool = False             # run in the namespace with the NXDOMAIN resolver
    timeout: float = TIMEOUT      # duo.timeout of this cell

    @property
    def bound(self) -> float:
        return self.calls * self.timeout + self.pushes * PUSH_TIMEOUT + MARGIN


@dataclass
class Row:
    cell: Cell
    mode: str
    code: int = -1
    seconds: float = 0.0          # pam_authenticate()
    wall: float = 0.0             # the whole pamdrive process
    outcome: str = ""
    source: str = ""
    line: str = ""
    problems: list[str] = field(default_factory=list)
    extra: float = 0.0            # added to the cell's bound (BROKER_MARGIN through the broker)

    @property
    def bound(self) -> float:
        return self.cell.bound + self.extra


def other_skey() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


def cells() -> list[Cell]:
    out: list[Cell] = [
        Cell("none: preauth allow", "preauth", "allow{id}", ALLOWED, 1, 0),
        Cell("none: push approved", "login", "alice{id}", GRANTED, 2, 1),
        Cell("DNS failure (NXDOMAIN, .invalid)", "preauth", "alice{id}", UNAVAILABLE, 1, 0,
             duo=lambda env: {"host": "pdt-flt-nohost.invalid:443"}, mentions=("cannot resolve host",),
             dns=True),
        Cell("connection refused", "preauth", "alice{id}", UNAVAILABLE, 1, 0,
             duo=lambda env: {"host": f"localhost:{env['dead'].refused}"}, mentions=("connection refused",)),
        Cell("connect black hole (SYN dropped)", "preauth", "alice{id}", UNAVAILABLE, 1, 0,
             duo=lambda env: {"host": f"localhost:{env['dead'].blackhole}"}, mentions=("timed out",)),
        Cell("TLS handshake stall", "preauth", "alice{id}", UNAVAILABLE, 1, 0,
             duo=lambda env: {"host": f"localhost:{env['dead'].stall}"}, mentions=("timed out",)),
        Cell("TLS: wrong CA (other-ca.pem)", "preauth", "alice{id}", UNAVAILABLE, 1, 0,
             duo=lambda env: {"ca_file": str(env["sim"].state_dir / "other-ca.pem")},
             mentions=("TLS certificate not trusted",)),
        Cell("TLS: wrong host name in cert", "preauth", "alice{id}", UNAVAILABLE, 1, 0,
             duo=lambda env: env["wronghost"], mentions=("TLS certificate not trusted", "Hostname mismatch")),
        Cell("401 bad keys (wrong skey)", "preauth", "alice{id}", REFUSED, 1, 0,
             duo=lambda env: {"skey": env["other_skey"]}, mentions=("HTTP 401", "40103")),
        Cell("401 clock skew (Duo +3600 s)", "preauth", "alice{id}", REFUSED, 1, 0,
             duo=lambda env: env["skewed"], mentions=("HTTP 401", "40105", "clock", r"[+]3599 s|[+]360[01] s")),
        Cell("push never answered (pushtimeout)", "auth_status", "pushtimeout{id}", AFTER_PREAUTH, 2, 1,
             mentions=("not answered in time",)),
    ]
    per_endpoint = [
        # (fault token, label, expectation at preauth, words in the preauth log line)
        ("500", "HTTP 500", UNAVAILABLE, ("HTTP 500",)),
        ("502", "HTTP 502", UNAVAILABLE, ("HTTP 502",)),
        ("503", "HTTP 503", UNAVAILABLE, ("HTTP 503",)),
        ("401", "HTTP 401", REFUSED, ("HTTP 401",)),
        ("429", "429, no Retry-After", REFUSED, ("HTTP 429",)),
        ("429ra1x1", "429, Retry-After 1 s (once)", REFUSED, ("HTTP 429",)),
        ("429ra30", "429, Retry-After 30 s", REFUSED, ("HTTP 429",)),
        ("slow2", "reply after 2 s", UNAVAILABLE, ("timed out",)),
        ("stall", "no reply (stall)", UNAVAILABLE, ("timed out",)),
        ("malformed", "malformed JSON", UNAVAILABLE, ()),
        ("truncated", "truncated body", UNAVAILABLE, ()),
        ("close", "closed without reply", UNAVAILABLE, ()),
        ("html", "HTML instead of JSON", UNAVAILABLE, ()),
    ]
    for token, label, at_preauth, words in per_endpoint:
        out.append(Cell(label, "preauth", f"alice{{id}}+{token}@preauth", at_preauth, 1, 0, mentions=words))
        out.append(Cell(label, "auth", f"alice{{id}}+{token}@auth", AFTER_PREAUTH, 2, 0))
        out.append(Cell(label, "auth_status", f"alice{{id}}+{token}@auth_status", AFTER_PREAUTH, 2, 1))
    # A Retry-After that fits into the call's deadline is waited for, and the login goes on
    # (Retry-After is whole seconds: with timeout = 0.5 only 0 fits; 1 s fits into 2 s).
    for where in ("preauth", "auth", "auth_status"):
        out.append(Cell("429, Retry-After 0 s (once)", where, f"alice{{id}}+429ra0x1@{where}", GRANTED, 2, 1))
    for where in ("preauth", "auth"):
        out.append(Cell("429, Retry-After 1 s (once), timeout 2", where, f"alice{{id}}+429ra1x1@{where}",
                        GRANTED, 2, 1, timeout=2.0))
    out += [
        Cell("missing 'result'", "preauth", "alice{id}+missing-result@preauth", UNAVAILABLE, 1, 0,
             mentions=("result",)),
        Cell("missing 'devices'", "preauth", "alice{id}+missing-devices@preauth", UNAVAILABLE, 1, 0,
             mentions=("devices",)),
        Cell("missing 'txid'", "auth", "alice{id}+missing-txid@auth", AFTER_PREAUTH, 2, 0, mentions=("txid",)),
        Cell("missing 'result'", "auth_status", "alice{id}+missing-result@auth_status", AFTER_PREAUTH, 2, 1,
             mentions=("result",)),
        # Well-formed, from Duo, but a result we do not know: Duo answered, so never fail-safe.
        Cell("unknown result 'bogus'", "preauth", "alice{id}+result-bogus@preauth", REFUSED, 1, 0,
             mentions=("bogus",)),
        # An async /auth reply carries only a txid; its 'result' is checked where there is one:
        # the synchronous passcode reply (an interactive login: tty and one typed passcode).
        Cell("unknown result 'bogus' (passcode)", "auth", "alice{id}+result-bogus@auth", AFTER_PREAUTH, 2, 0,
             mentions=("bogus",), tty="/dev/pts/9", answers=("123456",)),
        Cell("unknown result 'bogus'", "auth_status", "alice{id}+result-bogus@auth_status", AFTER_PREAUTH, 2, 1,
             mentions=("bogus",)),
    ]
    return out


def format_table(rows: list[Row]) -> str:
    head = ("fault", "where", "failmode", "expected", "got", "secs", "bound", "wall", "ok", "log line")
    body = []
    for r in rows:
        want = r.cell.expect[r.mode][0]
        body.append((r.cell.fault, r.cell.where, r.mode, f"{want} {CODE_NAMES.get(want, '')}",
                     f"{r.code} {CODE_NAMES.get(r.code, '')}", f"{r.seconds:.2f}", f"{r.bound:.1f}",
                     f"{r.wall:.2f}",
                     "ok" if not r.problems else "FAIL",
                     (f"[{r.source}] " if r.source != "syslog" else "") + r.line))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]

    def fmt(values) -> str:
        return " | ".join(str(v).ljust(w) for v, w in zip(values, widths)) + " | " + values[-1]

    lines = [fmt(head), "-+-".join("-" * w for w in widths) + "-+-" + "-" * 8]
    lines += [fmt(b) for b in body]
    failed = [r for r in rows if r.problems]
    lines.append("")
    lines.append(f"{len(rows)} logins, {len(rows) - len(failed)} as expected, {len(failed)} not; "
                 f"timeout = {TIMEOUT} s, push_timeout = {PUSH_TIMEOUT} s; secs = pam_authenticate(), "
                 f"bound = calls x timeout + pushes x push_timeout + {MARGIN} s (+{BROKER_MARGIN} s through the broker); "
                 f"wall = the whole process")
    for r in failed:
        lines.append(f"  FAIL {r.cell.fault} @ {r.cell.where} [{r.mode}]: {'; '.join(r.problems)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("via", VIA)
def test_fault_matrix(via, simulator, extra_simulator, dead_ends, nxdomain_dns, test_users, write_config,
                      write_map_file, flt_service, flt_root, start_drive, syslog_capture, flt_brokers):
    started = time.monotonic()
    wrong = extra_simulator("wronghost", "--tls", "wronghost")
    skew = extra_simulator("skew", "--clock-offset", "3600")

    def duo_table(sim) -> dict:
        table = sim.duo_settings()
        return {k: table[k] for k in ("ikey", "skey", "host", "ca_file")}

    env = {"sim": simulator, "dead": dead_ends, "wronghost": duo_table(wrong), "skewed": duo_table(skew),
           "other_skey": other_skey()}
    user = test_users["alice"]
    jobs = []
    for index, cell in enumerate(cells()):
        for mode in MODES:
            tag = f"{index}{mode[1]}" + ("b" if via == "broker" else "")  # e: secure, a: safe; b: broker (fresh Duo names)
            duo_name = cell.duo_name.format(id=tag)
            map_file = write_map_file([f"{user} {duo_name}"])
            audit = flt_root / f"matrix-{tag}.jsonl"
            audit.unlink(missing_ok=True)
            duo = {"timeout": cell.timeout, **cell.duo(env)}
            sock = flt_brokers.socket_for(f"m{tag}") if via == "broker" else None
            conf = write_config(f"flt-matrix-{tag}", duo=duo,
                                auth={"failmode": mode, "push_timeout": PUSH_TIMEOUT, "prompts": 1},
                                users={"map_file": str(map_file)}, log={"audit_file": str(audit)},
                                extra_text=broker_text(sock) if sock else "")
            service = f"pdt-flt-m{tag}"
            flt_service(service, STACK_ONLY_FACTOR, conf=conf)
            jobs.append((Row(cell, mode, extra=BROKER_MARGIN if sock else 0.0), service, audit, conf, sock))

    def run(job) -> Row:
        row, service, audit, conf, sock = job
        options = {"tty": row.cell.tty} if row.cell.tty else {}
        prefix = nxdomain_dns.prefix() if row.cell.dns else []
        broker = flt_brokers.start(conf, sock, prefix=prefix) if sock else None
        if prefix and broker is None:
            options["prefix"] = prefix
        proc = start_drive(service, user, row.cell.answers, **options)
        result = proc.finish(timeout=60)
        logger = proc.pid
        if broker is not None:
            logger = broker.pid
            if not broker.running:
                row.problems.append(f"the broker ended: {broker.output()[-300:]}")
            broker.stop()
        row.code, row.wall = result.code, result.seconds
        row.seconds = result.auth_seconds[-1] if result.auth_seconds else result.seconds
        want_code, want_outcome, want_line = row.cell.expect[row.mode]
        if result.crashed:
            row.problems.append(f"pamdrive crashed or printed no RESULT (exit {result.returncode}): "
                                f"{result.stderr.strip()[:200]}")
        if row.code != want_code:
            row.problems.append(f"PAM result {row.code}, expected {want_code}")
        if row.seconds > row.bound:
            row.problems.append(f"took {row.seconds:.2f} s, bound {row.bound:.1f} s")
        records = read_audit(audit)
        if len(records) != 1:
            row.problems.append(f"{len(records)} audit records, expected 1")
        record = records[-1] if records else None
        row.outcome = record["outcome"] if record else ""
        if record and row.outcome != want_outcome:
            row.problems.append(f"outcome {row.outcome!r}, expected {want_outcome!r}")
        row.source, row.line = log_line(syslog_capture, record, logger)
        if row.source == "syslog-missing":
            row.problems.append("no syslog line from this login")
        if not row.line.startswith(want_line):
            row.problems.append(f"log line does not start with {want_line!r}")
        for word in row.cell.mentions:
            if not re.search(word, row.line):
                row.problems.append(f"log line does not mention {word!r}")
        return row

    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        rows = list(pool.map(run, jobs))

    assert "pdt-flt-nohost.invalid" in nxdomain_dns.asked(), "the DNS cell never asked the loopback DNS server"
    elapsed = time.monotonic() - started
    table = (format_table(rows) + f"whole matrix ({via}): {elapsed:.1f} s ({PARALLEL} logins at a time)\n")
    print("\n" + table)
    directory = report_dir()
    if directory is not None:
        name = "fault-matrix.txt" if via == "in-process" else "fault-matrix-broker.txt"
        (directory / name).write_text(table, encoding="utf-8")
    failed = [r for r in rows if r.problems]
    assert not failed, "cells that differ from docs/behaviour.md §5:\n" + "\n".join(
        f"{r.cell.fault} @ {r.cell.where} [{r.mode}]: {'; '.join(r.problems)} -- {r.line}" for r in failed)


# ------------------------------------------------------------------ a DNS server that never answers
@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("failmode", MODES)
def test_dns_server_that_never_answers(failmode, via, silent_dns, simulator, test_users, write_config,
                                       write_map_file, flt_service, flt_root, drive, syslog_capture, flt_brokers):
    """In-process, a known limit, measured here: the name lookup (getaddrinfo) is not under ``timeout``.

    No thread may be started inside pam_python and no signal handler set, so the module
    cannot interrupt the system resolver: a lookup lasts as long as resolv.conf's
    ``options timeout:N attempts:N`` allow (glibc's default: 5 s, 2 attempts). With a
    resolver that never answers (``timeout:1 attempts:1`` here), the login still follows
    the failmode rule, and takes about the resolver's timeout, then the call's deadline.

    The broker may use threads: it looks the name up in a worker thread and stops waiting
    at the call's deadline, so through the broker the login is bounded by ``timeout``.
    """
    user = test_users["alice"]
    audit = flt_root / f"silent-dns-{failmode}.jsonl"
    audit.unlink(missing_ok=True)
    sock = flt_brokers.socket_for(f"sdns-{failmode}") if via == "broker" else None
    conf = write_config(f"flt-silentdns-{failmode}", duo={"host": "pdt-flt-silent.invalid:443", "timeout": TIMEOUT},
                        auth={"failmode": failmode},
                        users={"map_file": str(write_map_file([f"{user} alice-silentdns"]))},
                        log={"audit_file": str(audit)}, extra_text=broker_text(sock) if sock else "")
    service = f"pdt-flt-sdns{failmode[1]}"
    flt_service(service, STACK_ONLY_FACTOR, conf=conf)
    if sock:
        broker = flt_brokers.start(conf, sock, prefix=silent_dns.prefix())
        run = drive(service, user)
        logger = broker.pid
        broker.stop()
    else:
        run = drive(service, user, prefix=silent_dns.prefix())
        logger = run.pid
    want_code, want_outcome, want_line = UNAVAILABLE[failmode]
    assert run.code == want_code, run
    [record] = read_audit(audit)
    assert record["outcome"] == want_outcome
    source, line = log_line(syslog_capture, record, logger)
    assert line.startswith(want_line) and "cannot resolve host" in line, line
    seconds = run.auth_seconds[-1]
    print(f"\nDNS server not answering, failmode {failmode}, {via}: PAM {run.code} after {seconds:.2f} s "
          f"(resolver timeout {NxdomainDns.RESOLVER_TIMEOUT} s, duo.timeout {TIMEOUT} s)")
    if sock:
        assert "name lookup timed out" in line, line
    assert seconds <= 2 * NxdomainDns.RESOLVER_TIMEOUT + TIMEOUT + MARGIN, f"{seconds:.2f} s"
