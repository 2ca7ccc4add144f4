"""Secrets, the file rule and the environment, through the real PAM stack (docs/behaviour.md §4, §8, docs/platform.md).

* ``test_skey_and_passcodes_never_leak``: the skey (inline and from ``skey_file``) and the
  passcodes typed never show up in the syslog lines, the audit files, the error texts, the
  simulator's request log, the output of any run, nor in ``/proc/*/cmdline`` or
  ``/proc/*/environ`` of any process while a login waits for Duo. (pamdrive's own argv
  carries the answers it types, standing in for the user's keyboard; it is the only
  command line not searched for the passcodes.)
* ``test_file_rule_through_pam``: every file of docs/behaviour.md §4's rule (config, skey_file,
  map_file, ca_file, audit_file) with a bad mode, a non-root owner, a group-writable parent
  directory, or as a symlink, is refused with PAM_SERVICE_ERR under ``failmode = "safe"``,
  with nothing sent to Duo; the same files done right log in.
* ``test_environment_changes_no_outcome``: proxy, CA bundle and Python variables in the
  environment of the PAM application (sudo passes the invoking user's) change no result.
"""
from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
import string
import time
from pathlib import Path

import pytest

from .conftest import (
    PAM_AUTH_ERR,
    PAM_AUTHINFO_UNAVAIL,
    PAM_MAXTRIES,
    PAM_SERVICE_ERR,
    PAM_SUCCESS,
    STACK_ONLY_FACTOR,
    _ensure_root_dir,
    _write_root_file,
    read_audit,
    toml_table,
)

pytestmark = pytest.mark.system

TTY = "/dev/pts/9"
MODHEX = "cbdefghijklnrtuv"


def random_skey() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


def proc_texts(skip_pid: int | None = None) -> dict[int, tuple[bytes, bytes]]:
    """(cmdline, environ) of every process now (``skip_pid``'s cmdline left out)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        parts = []
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    parts.append(f.read())
            except OSError:
                parts.append(b"")
        if pid == skip_pid:
            parts[0] = b""
        out[pid] = (parts[0], parts[1])
    return out


def wait_for_request(sim, mark: int, path: str, username: str, proc, timeout: float = 10.0) -> bool:
    """True once the simulator logged ``path`` for ``username`` while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            return False
        if any(r.get("path") == path and r.get("username") == username for r in sim.requests(mark)):
            return True
        time.sleep(0.02)  # polling the request log for a condition, not a fixed wait
    return False


# ------------------------------------------------------------------ secrets
def test_skey_and_passcodes_never_leak(simulator, test_users, write_config, write_map_file, flt_service,
                                       flt_root, start_drive, syslog_capture):
    user = test_users["alice"]
    skey = simulator.duo_settings()["skey"]
    wrong_skey = random_skey()
    otp = "cccccc" + "".join(secrets.choice(MODHEX) for _ in range(38))   # valid at the simulator
    bad_code = "".join(secrets.choice(string.digits) for _ in range(20))  # refused by the simulator
    invalid_skey = skey[:39] + "!"  # one character off: a config error, whose text must not quote it
    needles = {"skey": skey, "wrong skey": wrong_skey, "invalid skey": invalid_skey, "passcode (OTP)": otp,
               "passcode (wrong)": bad_code}
    base = flt_root / "secrets"
    _ensure_root_dir(base)
    skey_file = _write_root_file(base / "skey", skey + "\n", 0o600)
    audits: list[Path] = []

    def service(name: str, duo_name: str, duo=None, auth=None, extra_text="") -> str:
        audit = base / f"{name}.jsonl"
        audit.unlink(missing_ok=True)
        audits.append(audit)
        conf = write_config(f"flt-sec-{name}", duo=duo, auth={"prompts": 1, **(auth or {})},
                            users={"map_file": str(write_map_file([f"{user} {duo_name}"]))},
                            log={"audit_file": str(audit)}, extra_text=extra_text)
        flt_service(f"pdt-flt-sec-{name}", STACK_ONLY_FACTOR, conf=conf)
        return f"pdt-flt-sec-{name}"

    runs = []
    seen_during_wait = []

    # 1. a push whose approval is slow (auth_status answers after 2 s): scan every process meanwhile
    for variant, duo in (("inline", None), ("file", {"skey": None, "skey_file": str(skey_file)})):
        name = f"push-{variant}"
        duo_name = f"alice-sec-{variant}+slow2@auth_status"
        svc = service(name, duo_name, duo=duo, auth={"push_timeout": 10})
        mark = simulator.mark()
        proc = start_drive(svc, user)
        assert wait_for_request(simulator, mark, "/auth/v2/auth", duo_name, proc), "the push never started"
        seen_during_wait.append((name, proc_texts()))
        run = proc.finish()
        assert run.code == PAM_SUCCESS, run
        runs.append(run)

    # 2. a typed passcode that Duo is slow to check (sync /auth answers after 2 s)
    duo_name = "alice-sec-otp+slow2@auth"
    svc = service("otp", duo_name)
    mark = simulator.mark()
    proc = start_drive(svc, user, [otp], tty=TTY)
    assert wait_for_request(simulator, mark, "/auth/v2/preauth", duo_name, proc), "preauth never happened"
    seen_during_wait.append(("passcode", proc_texts(skip_pid=proc.pid)))
    run = proc.finish()
    assert run.code == PAM_SUCCESS, run
    runs.append(run)

    # 3. a wrong passcode, a rejected key, and configuration errors that quote the config
    runs.append(start_drive(service("badcode", "alice-sec-bad"), user, [bad_code], tty=TTY).finish())
    assert runs[-1].code == PAM_MAXTRIES, runs[-1]
    runs.append(start_drive(service("wrongkey", "alice-sec-wk", duo={"skey": wrong_skey}), user).finish())
    assert runs[-1].code == PAM_AUTHINFO_UNAVAIL, runs[-1]
    runs.append(start_drive(service("unknownkey", "alice-sec-uk", extra_text='[secret]\nskey = "%s"\n' % skey),
                            user).finish())
    assert runs[-1].code == PAM_SERVICE_ERR, runs[-1]
    bad_toml = base / "bad-syntax.toml"
    _write_root_file(bad_toml, f'[duo]\nikey = "DIABCDEFGHIJKLMNOPQR"\nskey = "{skey}" trailing\n', 0o600)
    flt_service("pdt-flt-sec-syntax", STACK_ONLY_FACTOR, conf=bad_toml)
    runs.append(start_drive("pdt-flt-sec-syntax", user).finish())
    assert runs[-1].code == PAM_SERVICE_ERR, runs[-1]
    bad_skey = base / "bad-skey.toml"
    _write_root_file(bad_skey, simulator.config_path.read_text().replace(skey, invalid_skey), 0o600)
    flt_service("pdt-flt-sec-badskey", STACK_ONLY_FACTOR, conf=bad_skey)
    runs.append(start_drive("pdt-flt-sec-badskey", user).finish())
    assert runs[-1].code == PAM_SERVICE_ERR, runs[-1]

    # Where secrets could end up
    haystacks: dict[str, bytes] = {}
    for i, run in enumerate(runs):
        haystacks[f"run {i} stdout+stderr"] = (run.stdout + run.stderr).encode()
    for audit in audits:
        haystacks[f"audit {audit.name}"] = audit.read_bytes() if audit.exists() else b""
    haystacks["simulator request log"] = simulator.request_log.read_bytes()
    haystacks["simulator stderr"] = simulator.stderr_text().encode()
    haystacks["simulator stdout"] = "\n".join(simulator.output).encode()
    if syslog_capture.available:
        haystacks["syslog"] = "\n".join(syslog_capture.lines()).encode()
    for label, snapshot in seen_during_wait:
        for pid, (cmdline, environ) in snapshot.items():
            haystacks[f"{label}: /proc/{pid}/cmdline"] = cmdline
            haystacks[f"{label}: /proc/{pid}/environ"] = environ
    leaks = [f"{what} in {where}" for where, text in haystacks.items()
             for what, needle in needles.items() if needle.encode() in text]
    assert leaks == []
    # ... and the places searched did hold the logins: decisions were written, requests logged
    records = [r for audit in audits for r in read_audit(audit)]
    assert {r["outcome"] for r in records} >= {"success", "failure", "error"}, records
    assert any(r.get("factor") == "passcode" for r in simulator.requests()), "no passcode reached the simulator"
    assert len(seen_during_wait) == 3 and all(len(s) > 3 for _, s in seen_during_wait)
    if syslog_capture.available:
        assert any("configuration error" in line for line in syslog_capture.lines())


# ------------------------------------------------------------------ the file rule
TARGETS = ("config", "skey_file", "map_file", "ca_file", "audit_file")
# (target, problem) -> mode to set, for the "mode" problems
MODE_PROBLEMS = {
    ("config", "readable by others (0644)"): 0o644,
    ("skey_file", "readable by others (0644)"): 0o644,
    ("skey_file", "readable by group (0640)"): 0o640,
    ("map_file", "writable by group (0660)"): 0o660,
    ("map_file", "writable by others (0602)"): 0o602,
    ("ca_file", "writable by others (0666)"): 0o666,
    ("audit_file", "writable by group (0620)"): 0o620,
    ("audit_file", "readable by others (0644)"): 0o644,
}
OTHER_PROBLEMS = ("owned by a non-root user", "group-writable parent directory", "a symlink")
# Modes that are not problems: the config holds no skey (it uses skey_file), so a group may read it.
ALLOWED_MODES = {("config", "group-readable (0640), key in skey_file"): 0o640}


def file_rule_cases() -> list[tuple[str, str]]:
    cases = [("none", "control: every file right")]
    cases += list(ALLOWED_MODES)
    cases += list(MODE_PROBLEMS)
    cases += [(target, problem) for target in TARGETS for problem in OTHER_PROBLEMS]
    return cases


def test_file_rule_through_pam(simulator, test_users, flt_service, flt_root, drive, syslog_capture):
    user = test_users["alice"]
    alice_uid = test_users.uid(user)
    duo = simulator.duo_settings()
    root = _ensure_root_dir(flt_root / "filerule")
    jobs = []
    for index, (target, problem) in enumerate(file_rule_cases()):
        case = _ensure_root_dir(root / f"case{index}")
        gw = case / "gw"
        gw.mkdir(exist_ok=True)
        os.chown(gw, 0, 0)
        os.chmod(gw, 0o775)  # root-owned, group-writable
        real = _ensure_root_dir(case / "real")
        paths = {}
        for name, content, mode in (
                ("skey_file", duo["skey"] + "\n", 0o600),
                ("map_file", f"{user} allow-fr{index}\n", 0o600),
                ("ca_file", Path(duo["ca_file"]).read_text(), 0o644),
                ("audit_file", "", 0o600)):
            where = gw if (name == target and problem == "group-writable parent directory") else case
            path = _write_root_file(where / name, content, mode)
            paths[name] = path
        conf_dir = gw if (target == "config" and problem == "group-writable parent directory") else case
        conf_text = (toml_table("duo", {"ikey": duo["ikey"], "skey_file": str(paths["skey_file"]),
                                        "host": duo["host"], "ca_file": str(paths["ca_file"]), "timeout": 5})
                     + toml_table("auth", {"failmode": "safe"})
                     + toml_table("users", {"map_file": str(paths["map_file"])})
                     + toml_table("log", {"audit_file": str(paths["audit_file"])}))
        paths["config"] = _write_root_file(conf_dir / "pam_duo.toml", conf_text, 0o600)
        if target != "none":
            path = paths[target]
            if (target, problem) in MODE_PROBLEMS or (target, problem) in ALLOWED_MODES:
                os.chmod(path, {**MODE_PROBLEMS, **ALLOWED_MODES}[(target, problem)])
            elif problem == "owned by a non-root user":
                os.chown(path, alice_uid, -1)
            elif problem == "a symlink":
                moved = real / path.name
                os.replace(path, moved)
                os.symlink(moved, path)  # a root-owned link in a root-owned directory, to a good file
        service = f"pdt-flt-fr{index}"
        flt_service(service, STACK_ONLY_FACTOR, conf=paths["config"])
        jobs.append((target, problem, service, paths))

    mark = simulator.mark()

    def run(job):
        target, problem, service, paths = job
        return job, drive(service, user)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))

    problems, table = [], []
    for (target, problem, service, paths), result in results:
        allowed = target == "none" or (target, problem) in ALLOWED_MODES
        want = PAM_SUCCESS if allowed else PAM_SERVICE_ERR
        table.append(f"{target:10} | {problem:34} | {result.code}")
        if result.code != want:
            problems.append(f"{target} {problem}: PAM result {result.code}, expected {want}")
        records = read_audit(paths["audit_file"]) if not paths["audit_file"].is_symlink() else []
        if allowed:
            if [r["outcome"] for r in records] != ["preauth_allow"]:
                problems.append(f"control: audit {records}")
        elif records:
            problems.append(f"{target} {problem}: a decision was logged: {records}")
        if syslog_capture.available and not allowed:
            tag = f"pam_duo_py[{result.pid}]: configuration error: "
            line = syslog_capture.wait_for(lambda l: tag in l, timeout=5)
            if line is None:
                problems.append(f"{target} {problem}: no 'configuration error' line in syslog")
            elif str(paths[target]) not in line:
                problems.append(f"{target} {problem}: the error does not name {paths[target]}: {line}")
    users_asked = {r.get("username") for r in simulator.requests(mark)}
    refused_asked = {f"allow-fr{i}" for i, (t, p) in enumerate(file_rule_cases())
                     if t != "none" and (t, p) not in ALLOWED_MODES} & users_asked
    if refused_asked:
        problems.append(f"Duo was asked about refused logins: {sorted(refused_asked)}")
    print("\n" + "\n".join(table))
    assert problems == []


# ------------------------------------------------------------------ the environment
def test_environment_changes_no_outcome(simulator, dead_ends, test_users, write_config, write_map_file,
                                        flt_service, flt_root, drive):
    user = test_users["alice"]
    duo = simulator.duo_settings()
    root = _ensure_root_dir(flt_root / "env")
    # A PYTHONPATH full of traps: each one, if imported, leaves a marker and lets the login in.
    trap = _ensure_root_dir(root / "pythonpath")
    marker = root / "imported-from-pythonpath"
    marker.unlink(missing_ok=True)
    payload = (f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
               "def pam_sm_authenticate(pamh, flags, argv):\n    return pamh.PAM_SUCCESS\n")
    for name in ("sitecustomize.py", "usercustomize.py", "pam_duo_py/__init__.py", "pam_duo_py/pam.py",
                 "duo_client/__init__.py", "duo_client/auth.py", "duo_client/client.py", "ssl.py", "json.py"):
        path = trap / name
        _ensure_root_dir(path.parent)
        _write_root_file(path, payload, 0o644)
    startup = _write_root_file(root / "startup.py", payload, 0o644)
    ca_dir = _ensure_root_dir(root / "certs")
    shutil.copy(duo["ca_file"], ca_dir / "sim-ca.pem")
    subprocess_env = {"PATH": "/usr/bin:/bin"}
    import subprocess
    subprocess.run(["openssl", "rehash", str(ca_dir)], env=subprocess_env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = f"http://127.0.0.1:{dead_ends.refused}"

    scenarios = {  # name -> (Duo user, [duo] overrides, expected PAM result)
        "preauth allow": ("allow-env", {}, PAM_SUCCESS),
        "push approved": ("alice-env", {}, PAM_SUCCESS),
        "preauth deny": ("deny-env", {}, PAM_AUTH_ERR),
        "Duo CA bundle (simulator not trusted)": ("alice-env2", {"ca_file": None}, PAM_AUTHINFO_UNAVAIL),
    }
    environments = {
        "none": {},
        "proxies": {name: proxy for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                             "ALL_PROXY", "all_proxy")},
        "CA bundles": {"SSL_CERT_FILE": duo["ca_file"], "SSL_CERT_DIR": str(ca_dir),
                       "REQUESTS_CA_BUNDLE": duo["ca_file"], "CURL_CA_BUNDLE": duo["ca_file"]},
        "PYTHONPATH and friends": {"PYTHONPATH": str(trap), "PYTHONSTARTUP": str(startup), "PYTHONINSPECT": "1",
                                   "PYTHONUSERBASE": str(trap), "PYTHONWARNINGS": "error",
                                   "PYTHONNOUSERSITE": "", "PYTHONSAFEPATH": ""},
        "PYTHONHOME": {"PYTHONHOME": str(trap)},
        "Duo variables": {"DUO_PASSCODE": "123456", "DUO_FACTOR": "passcode", "DUO_HOST": "127.0.0.1"},
    }
    services = {}
    for index, (name, (duo_name, overrides, expect)) in enumerate(scenarios.items()):
        conf = write_config(f"flt-env-{index}", duo={"timeout": 5, **overrides}, auth={"failmode": "secure"},
                            users={"map_file": str(write_map_file([f"{user} {duo_name}"]))})
        services[name] = f"pdt-flt-env{index}"
        flt_service(services[name], STACK_ONLY_FACTOR, conf=conf)
    jobs = [(env_name, scenario) for env_name in environments for scenario in scenarios]

    def run(job):
        env_name, scenario = job
        return job, drive(services[scenario], user, env=environments[env_name])

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))

    problems, table = [], []
    for (env_name, scenario), result in results:
        expect = scenarios[scenario][2]
        table.append(f"{env_name:24} | {scenario:40} | {result.code}")
        if result.code != expect or result.crashed:
            problems.append(f"{env_name} / {scenario}: PAM result {result.code}, expected {expect} "
                            f"(exit {result.returncode}) {result.stderr.strip()[:300]}")
    if marker.exists():
        problems.append(f"modules were imported from the environment's paths: {marker.read_text().split()}")
    print("\n" + "\n".join(table))
    assert problems == []


# ------------------------------------------------------------------ values that once slipped through
@pytest.mark.parametrize("case,duo", [
    ("host with a trailing newline", {"host": "localhost\n"}),
    ("port in superscript digits", {"host": "localhost:\u00b2"}),
    ("timeout too large for a float", {"timeout": 10 ** 400}),
    ("ikey with a trailing newline", {"ikey": "DIABCDEFGHIJKLMNOPQR\n"}),
])
def test_invalid_config_values_fail_closed(case, duo, simulator, test_users, write_config, write_map_file,
                                           flt_service, flt_root, drive, nxdomain_dns, syslog_capture):
    """Values the old checks let through: under failmode safe, a host name with a trailing
    newline failed its lookup at login time and was let in as 'Duo unreachable'. A bad
    value is a configuration error: PAM_SERVICE_ERR, whatever failmode says, nothing sent."""
    user = test_users["alice"]
    index = ["newline", "superscript", "bigtimeout", "ikeynewline"][
        ["host with a trailing newline", "port in superscript digits", "timeout too large for a float",
         "ikey with a trailing newline"].index(case)]
    conf = write_config(f"flt-badval-{index}", duo=duo, auth={"failmode": "safe"},
                        users={"map_file": str(write_map_file([f"{user} allow-badval"]))})
    service = f"pdt-flt-bv-{index}"
    flt_service(service, STACK_ONLY_FACTOR, conf=conf)
    mark = simulator.mark()
    run = drive(service, user, prefix=nxdomain_dns.prefix())  # no lookup may leave the machine
    assert run.code == PAM_SERVICE_ERR, run
    assert simulator.requests(mark) == []
    if syslog_capture.available:
        line = syslog_capture.wait_for(lambda l: f"pam_duo_py[{run.pid}]: " in l, timeout=5)
        assert line is not None and "configuration error" in line, line
