"""Clock skew is reported in words; a dead first address hands over to the next (docs/behaviour.md §5, duo.py).

Clock skew: a simulator whose clock runs 3600 s ahead (or behind) refuses every request
with 401 40105. The login is refused in both failmodes, and the decision's log line says
by how much our clock differs from Duo's (measured from the reply's ``Date`` header; the
product reports it, it does not correct for it).

Failover: ``_open_tcp`` tries each address of the host name in turn, each with an equal
share of the call's deadline. The test name ``pdt-flt-failover.test`` is mapped in
``/etc/hosts`` (a marked block, added for the test and removed afterwards) to ``::1``
and ``127.0.0.1``; glibc sorts ``::1`` first (RFC 6724 precedence), the simulator listens
on ``127.0.0.1`` only, with a certificate for that name (the test makes the CA and the
certificate; the simulator reuses certificates it finds in its state directory).

* refused first: nothing listens on ``[::1]:port``: the kernel refuses at once and the
  login goes on through ``127.0.0.1`` without losing time;
* black-holed first: ``[::1]:port`` is a socket with a full accept queue (SYNs dropped):
  the first address uses its share (half of ``timeout``), then the login goes on through
  ``127.0.0.1`` within the same deadline.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import (
    PAM_AUTHINFO_UNAVAIL,
    PAM_SUCCESS,
    STACK_ONLY_FACTOR,
    clean_env,
    log_line,
    read_audit,
)

pytestmark = pytest.mark.system

FAILOVER_NAME = "pdt-flt-failover.test"
HOSTS = Path("/etc/hosts")
MARGIN = 1.0


# ------------------------------------------------------------------ clock skew
@pytest.mark.parametrize("offset", [3600, -3600])
@pytest.mark.parametrize("failmode", ["secure", "safe"])
def test_clock_skew_is_logged_in_plain_words(offset, failmode, extra_simulator, test_users, write_config,
                                             write_map_file, flt_service, flt_root, drive, syslog_capture):
    sim = extra_simulator(f"skew{offset:+d}", f"--clock-offset={offset}")
    table = sim.duo_settings()
    user = test_users["alice"]
    audit = flt_root / f"skew{offset:+d}-{failmode}.jsonl"
    audit.unlink(missing_ok=True)
    conf = write_config(f"flt-skew{offset:+d}-{failmode}",
                        duo={k: table[k] for k in ("ikey", "skey", "host", "ca_file")} | {"timeout": 2},
                        auth={"failmode": failmode},
                        users={"map_file": str(write_map_file([f"{user} alice-skew"]))},
                        log={"audit_file": str(audit)})
    service = f"pdt-flt-skew{'p' if offset > 0 else 'm'}{failmode[1]}"
    flt_service(service, STACK_ONLY_FACTOR, conf=conf)
    run = drive(service, user)
    assert run.code == PAM_AUTHINFO_UNAVAIL, run  # Duo answered: failmode does not apply
    [record] = read_audit(audit)
    assert record["outcome"] == "error"
    source, line = log_line(syslog_capture, record, run.pid)
    assert source != "syslog-missing"
    match = re.search(r"our clock differs from Duo\\?'s by about ([+-]\d+) s", line)
    assert match, line
    assert abs(int(match.group(1)) - offset) <= 2, line
    assert "40105" in line and "too far from server time" in line, line


# ------------------------------------------------------------------ failover
def make_pki(state: Path, names: list[str]) -> None:
    """ca.pem/ca.key and server.pem/server.key (DNS names ``names``) in ``state``."""
    env = clean_env()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], env=env, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", str(state / "ca.key"), "-out", str(state / "ca.pem"),
            "-days", "30", "-sha256", "-subj", "/CN=pam_duo_py failover test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ext = state / "leaf.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
    openssl("req", "-new", *ec, "-keyout", str(state / "server.key"), "-out", str(state / "server.csr"),
            "-subj", f"/CN={names[0]}")
    openssl("x509", "-req", "-in", str(state / "server.csr"), "-CA", str(state / "ca.pem"),
            "-CAkey", str(state / "ca.key"), "-CAcreateserial", "-days", "30", "-sha256",
            "-extfile", str(ext), "-out", str(state / "server.pem"))
    for name, mode in (("ca.key", 0o600), ("server.key", 0o600), ("ca.pem", 0o644), ("server.pem", 0o644)):
        os.chmod(state / name, mode)


@contextlib.contextmanager
def hosts_entries(lines: list[str]):
    """Append a marked block to /etc/hosts; remove exactly that block afterwards."""
    block = f"# pdt-flt-failover begin {os.getpid()}\n" + "".join(f"{line}\n" for line in lines) \
        + f"# pdt-flt-failover end {os.getpid()}\n"
    text = HOSTS.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        block = "\n" + block
    with open(HOSTS, "a", encoding="utf-8") as f:
        f.write(block)
    try:
        yield
    finally:
        text = HOSTS.read_text(encoding="utf-8")
        if block in text:
            with open(HOSTS, "w", encoding="utf-8") as f:  # in place: keeps the inode and the mode
                f.write(text.replace(block, "", 1))


@pytest.fixture(scope="module")
def failover_sim(extra_simulator):
    return extra_simulator("failover", prepare=lambda state: make_pki(state, ["localhost", FAILOVER_NAME]))


class V6BlackHole:
    """[::1]:port with a full accept queue: SYNs to it are dropped."""

    def __init__(self, port: int) -> None:
        self.listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.listener.bind(("::1", port))
        self.listener.listen(0)
        self.filler = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.filler.settimeout(5)
        self.filler.connect(("::1", port))
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(("::1", port))
        except (TimeoutError, socket.timeout):
            self.works = True
        except OSError:
            self.works = False
        else:
            self.works = False
        finally:
            probe.close()

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


@pytest.mark.parametrize("first", ["refused", "black hole"])
def test_dead_first_address_hands_over_to_the_next(first, failover_sim, test_users, write_config,
                                                   write_map_file, flt_service, flt_root, drive):
    timeout = 2.0
    port = failover_sim.port
    table = failover_sim.duo_settings()
    user = test_users["alice"]
    audit = flt_root / f"failover-{first.replace(' ', '')}.jsonl"
    audit.unlink(missing_ok=True)
    conf = write_config(f"flt-failover-{first.replace(' ', '')}",
                        duo={"ikey": table["ikey"], "skey": table["skey"], "ca_file": table["ca_file"],
                             "host": f"{FAILOVER_NAME}:{port}", "timeout": timeout},
                        auth={"failmode": "secure"},
                        users={"map_file": str(write_map_file([f"{user} allow-failover"]))},
                        log={"audit_file": str(audit)})
    service = f"pdt-flt-fo-{'r' if first == 'refused' else 'b'}"
    flt_service(service, STACK_ONLY_FACTOR, conf=conf)
    hole = None
    with hosts_entries([f"::1 {FAILOVER_NAME}", f"127.0.0.1 {FAILOVER_NAME}"]):
        order = [info[4][0] for info in socket.getaddrinfo(FAILOVER_NAME, port, 0, socket.SOCK_STREAM)]
        assert order == ["::1", "127.0.0.1"], f"the dead address must come first: {order}"
        try:
            if first == "refused":
                probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                probe.settimeout(1)
                with pytest.raises(ConnectionRefusedError):
                    probe.connect(("::1", port))
                probe.close()
            else:
                hole = V6BlackHole(port)
                assert hole.works, "could not build a black hole on [::1]"
            mark = failover_sim.mark()
            run = drive(service, user)
        finally:
            if hole is not None:
                hole.close()
    assert run.code == PAM_SUCCESS, run
    [record] = read_audit(audit)
    assert record["outcome"] == "preauth_allow"
    assert [r["path"] for r in failover_sim.requests(mark) if r.get("event") == "request"] == ["/auth/v2/preauth"]
    seconds = run.auth_seconds[-1]
    print(f"\nfailover, {first} first: PAM {run.code} after {seconds:.2f} s (timeout {timeout} s)")
    if first == "refused":
        assert seconds < timeout / 2, f"a refused first address cost {seconds:.2f} s"
    else:
        # the black hole gets its share (half the deadline), then 127.0.0.1 answers within the rest
        assert timeout / 2 - 0.05 <= seconds <= timeout + MARGIN, f"{seconds:.2f} s"
