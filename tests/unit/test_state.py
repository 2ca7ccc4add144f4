"""Remembered authentication and preferred devices: the stores and how the engine uses them."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import threading

import pytest

from fakes import APPROVED, DENIED, FRAUD, FakeClock, FakeDuo, FakePrompter
from pam_duo_py.config import AuthSettings, DuoIdentity
from pam_duo_py.engine import Engine, Login, Result
from pam_duo_py.replies import AuthResult, Device, Preauth
from pam_duo_py import state as state_mod
from pam_duo_py.state import PreferredDevices, Remember, address_key

PHONE = Device("DPHONE1", "phone", "XXX-XXX-1234", ("push", "phone", "sms"))
PHONE2 = Device("DPHONE2", "phone", "XXX-XXX-5678", ("push", "phone"))
AUTH = Preauth("auth", "Account is active", devices=(PHONE, PHONE2))


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def problems():
    return []


def remember(state_dir, problems, clock, seconds=300, services=()):
    return Remember(state_dir, seconds, tuple(services), on_problem=problems.append, clock=clock)


def test_address_key_ipv4_exact_and_ipv6_by_64():
    assert address_key("203.0.113.5") == "203.0.113.5"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.5") == "203.0.113.5"
    assert address_key("host.example") is None
    assert address_key(None) is None


def test_key_needs_a_parsed_address_or_a_listed_service(state_dir, problems):
    store = remember(state_dir, problems, FakeClock(), services=("sudo",))
    assert store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    assert store.key("alice", "sshd", "client.example", None) is None  # a host name never counts
    assert store.key("alice", "sshd", "203.0.113.5 (claimed)", None) is None  # a client's claim never counts
    assert store.key("alice", "sshd", None, None) is None  # no address, service not listed
    assert store.key("alice", "sudo", None, None)  # no address, service listed
    assert remember(state_dir, problems, FakeClock(), seconds=0).key("alice", "sshd", "1.2.3.4", "1.2.3.4") is None


def test_record_then_remaining_until_expiry(state_dir, problems):
    clock = FakeClock()
    store = remember(state_dir, problems, clock, seconds=300)
    key = store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    assert store.remaining(key) is None
    store.record(key)
    assert store.remaining(key) == pytest.approx(300)
    clock.advance(299)
    assert store.remaining(key) == pytest.approx(1)
    clock.advance(2)
    assert store.remaining(key) is None
    st = os.stat(os.path.join(state_dir, "remember.json"))
    assert st.st_mode & 0o777 == 0o600


def test_other_address_service_or_user_is_not_remembered(state_dir, problems):
    store = remember(state_dir, problems, FakeClock())
    store.record(store.key("alice", "sshd", "203.0.113.5", "203.0.113.5"))
    assert store.remaining(store.key("alice", "sshd", "203.0.113.6", "203.0.113.6")) is None
    assert store.remaining(store.key("alice", "sudo", "203.0.113.5", "203.0.113.5")) is None
    assert store.remaining(store.key("bob", "sshd", "203.0.113.5", "203.0.113.5")) is None


def test_forget_user_clears_every_entry_of_that_user_only(state_dir, problems):
    store = remember(state_dir, problems, FakeClock())
    for user, ip in [("alice", "203.0.113.5"), ("alice", "198.51.100.7"), ("bob", "203.0.113.5")]:
        store.record(store.key(user, "sshd", ip, ip))
    store.forget_user("alice")
    assert store.remaining(store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")) is None
    assert store.remaining(store.key("alice", "sshd", "198.51.100.7", "198.51.100.7")) is None
    assert store.remaining(store.key("bob", "sshd", "203.0.113.5", "203.0.113.5"))


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"v": 2, "entries": {}}', b"\xff\xfe"])
def test_corrupted_store_is_ignored_and_reported_never_allowing(state_dir, problems, content):
    path = os.path.join(state_dir, "remember.json")
    with open(path, "wb") as handle:
        handle.write(content)
    os.chmod(path, 0o600)
    store = remember(state_dir, problems, FakeClock())
    assert store.remaining(store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")) is None
    assert problems and "state file ignored" in problems[0]


def test_store_with_bad_permissions_is_ignored(state_dir, problems):
    clock = FakeClock()
    store = remember(state_dir, problems, clock)
    key = store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    store.record(key)
    os.chmod(os.path.join(state_dir, "remember.json"), 0o666)
    assert store.remaining(key) is None
    assert any("writable by group or others" in p for p in problems)


def test_far_future_expiry_is_not_trusted(state_dir, problems):
    """An entry longer than the configured window (a tampered or stale file) is ignored."""
    clock = FakeClock()
    store = remember(state_dir, problems, clock, seconds=60)
    key = store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    path = os.path.join(state_dir, "remember.json")
    with open(path, "w") as handle:
        json.dump({"v": 1, "entries": {key: clock() + 10**6}}, handle)
    os.chmod(path, 0o600)
    assert store.remaining(key) is None


def test_store_is_bounded(state_dir, problems):
    store = remember(state_dir, problems, FakeClock())
    store.store.max_entries = 5
    for n in range(20):
        store.record(store.key(f"user{n}", "sshd", "203.0.113.5", "203.0.113.5"))
    with open(os.path.join(state_dir, "remember.json")) as handle:
        assert len(json.load(handle)["entries"]) == 5


# -- the state lock -----------------------------------------------------------------------


class UnboundedWait(Exception):
    """Not an OSError, so that no ``except OSError`` on the way swallows it."""


@pytest.fixture
def no_hang():
    """Turns a wait that never ends into a test failure (SIGALRM after 5 s)."""
    def too_long(signum, frame):
        raise UnboundedWait("waited 5 s for the state lock: the wait is not bounded")

    old = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, 5)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def held_lock(state_dir):
    """Another process's locks on both stores (separate open file descriptions)."""
    fds = [os.open(os.path.join(state_dir, name), os.O_RDWR | os.O_CREAT, 0o600)
           for name in ("remember.json.lock", "devices.json.lock")]
    for fd in fds:
        fcntl.flock(fd, fcntl.LOCK_EX)
    yield
    for fd in fds:
        os.close(fd)


def test_a_held_lock_skips_the_write_and_reports_it(state_dir, problems, no_hang, held_lock, monkeypatch):
    monkeypatch.setattr(state_mod, "LOCK_WAIT", 0.05, raising=False)
    store = remember(state_dir, problems, FakeClock())
    key = store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    store.record(key)
    assert store.remaining(key) is None
    assert not os.path.exists(os.path.join(state_dir, "remember.json"))
    assert len(problems) == 1 and problems[0].startswith("remembering this login skipped: ")
    assert "held by another process" in problems[0]
    prefs = PreferredDevices(state_dir, on_problem=problems.append)
    prefs.set("alice", "DPHONE1")
    assert prefs.get("alice") is None
    assert problems[-1].startswith("saving the preferred device skipped: ")


def test_a_held_lock_still_clears_a_users_remembered_logins(state_dir, problems, no_hang, monkeypatch):
    monkeypatch.setattr(state_mod, "LOCK_WAIT", 0.05, raising=False)
    store = remember(state_dir, problems, FakeClock())
    alice = store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    bob = store.key("bob", "sshd", "203.0.113.5", "203.0.113.5")
    store.record(alice)
    store.record(bob)
    fd = os.open(os.path.join(state_dir, "remember.json.lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        store.forget_user("alice")  # a fraud report: clearing must not wait for, nor depend on, the lock
    finally:
        os.close(fd)
    assert store.remaining(alice) is None and store.remaining(bob)
    assert problems and "done without the lock" in problems[-1]


def test_the_lock_wait_is_at_most_one_second():
    assert 0 < state_mod.LOCK_WAIT <= 1.0


def test_a_lock_released_in_time_is_taken(state_dir, problems, no_hang):
    fd = os.open(os.path.join(state_dir, "remember.json.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    timer = threading.Timer(0.05, os.close, (fd,))
    timer.start()
    store = remember(state_dir, problems, FakeClock())
    key = store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    store.record(key)
    timer.join()
    assert store.remaining(key) and problems == []


def test_a_failed_write_does_not_break_later_writes(state_dir, problems, monkeypatch):
    store = remember(state_dir, problems, FakeClock())
    key = store.key("alice", "sshd", "203.0.113.5", "203.0.113.5")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    store.record(key)
    assert problems and "cannot write state file" in problems[0]
    monkeypatch.setattr(os, "fsync", real_fsync)
    store.record(key)
    assert store.remaining(key)
    assert sorted(os.listdir(state_dir)) == ["remember.json", "remember.json.lock"]


# -- su: remembered per calling uid --------------------------------------------------------


@pytest.mark.parametrize("service", ["su", "su-l"])
def test_su_is_remembered_per_calling_uid(state_dir, problems, service):
    def as_caller(uid):
        return Remember(state_dir, 300, ("su", "su-l"), on_problem=problems.append, clock=FakeClock(),
                        per_caller=True, caller_uid=uid)

    alice_herself = as_caller(1001)
    alice_herself.record(alice_herself.key("alice", service, None, None))   # alice's own su, approved
    assert alice_herself.remaining(alice_herself.key("alice", service, None, None))
    bob = as_caller(1002)
    assert bob.remaining(bob.key("alice", service, None, None)) is None    # bob's "su alice" is asked


def test_su_without_a_known_caller_is_never_remembered(state_dir, problems):
    su = Remember(state_dir, 300, ("su", "sudo"), on_problem=problems.append, clock=FakeClock(), per_caller=True)
    assert su.key("alice", "su", None, None) is None
    sudo = Remember(state_dir, 300, ("su", "sudo"), on_problem=problems.append, clock=FakeClock())
    assert sudo.key("alice", "sudo", None, None)


# -- the engine with the stores ------------------------------------------------------------


def run(state_dir, problems, clock, *, preauth=AUTH, answers=("1",), status=None, remember_seconds=300,
        devices=True, **login_overrides):
    duo = FakeDuo(preauth, [], status or [APPROVED], clock=clock, status_takes=0.5,
                  auth_default=lambda factor, params: {"txid": "TX1"})
    ui = FakePrompter(answers)
    store = remember(state_dir, problems, clock, seconds=remember_seconds) if remember_seconds else None
    prefs = PreferredDevices(state_dir, on_problem=problems.append, clock=clock) if devices else None
    values = dict(user="alice", identity=DuoIdentity(username="alice"), service="sshd", interactive=True,
                  rhost="203.0.113.5", ipaddr="203.0.113.5", tty="ssh", hostname="server1")
    values.update(login_overrides)
    engine = Engine(AuthSettings(push_timeout=5), duo, ui, clock=clock, sleep=clock.sleep, remember=store, devices=prefs)
    return engine.run(Login(**values)), duo, ui


def test_engine_skips_the_factor_when_remembered_but_still_runs_preauth(state_dir, problems):
    clock = FakeClock()
    first, duo1, _ = run(state_dir, problems, clock)
    assert first.result is Result.SUCCESS and duo1.factors == ["push"]
    second, duo2, ui2 = run(state_dir, problems, clock, answers=())
    assert second.result is Result.SUCCESS and second.factor == "remembered"
    assert [c.name for c in duo2.calls] == ["preauth"] and not ui2.asked


def test_engine_preauth_deny_wins_over_a_remembered_login_and_clears_it(state_dir, problems):
    clock = FakeClock()
    run(state_dir, problems, clock)
    denied, _, _ = run(state_dir, problems, clock, preauth=Preauth("deny", "Locked out"), answers=())
    assert denied.result is Result.AUTH_ERR
    again, duo, _ = run(state_dir, problems, clock)
    assert again.factor == "push" and duo.factors == ["push"]  # asked again


@pytest.mark.parametrize("status", [[DENIED], [FRAUD]])
def test_denied_or_fraud_push_clears_remembered_logins(state_dir, problems, status):
    clock = FakeClock()
    run(state_dir, problems, clock)  # remembered from 203.0.113.5
    other, _, _ = run(state_dir, problems, clock, status=status, rhost="198.51.100.7", ipaddr="198.51.100.7")
    assert other.result is Result.AUTH_ERR
    again, duo, _ = run(state_dir, problems, clock)
    assert duo.factors == ["push"]


def test_a_push_that_duo_timed_out_keeps_remembered_logins(state_dir, problems):
    clock = FakeClock()
    run(state_dir, problems, clock)  # remembered from 203.0.113.5
    timed_out = AuthResult("deny", "timeout", "Login timed out.")
    other, _, _ = run(state_dir, problems, clock, status=[timed_out] * 3, rhost="198.51.100.7", ipaddr="198.51.100.7",
                      answers=("1", "1", "1"))
    assert other.result is Result.MAXTRIES  # nobody answered: not a refusal
    again, duo, _ = run(state_dir, problems, clock, answers=())
    assert again.factor == "remembered" and duo.factors == []


def test_locked_out_clears_remembered_logins(state_dir, problems):
    clock = FakeClock()
    run(state_dir, problems, clock)
    locked = AuthResult("deny", "locked_out", "Locked out")
    other, _, _ = run(state_dir, problems, clock, status=[locked], rhost="198.51.100.7", ipaddr="198.51.100.7")
    assert other.result is Result.AUTH_ERR
    again, duo, _ = run(state_dir, problems, clock)
    assert duo.factors == ["push"]


def test_remembered_login_expires(state_dir, problems):
    clock = FakeClock()
    run(state_dir, problems, clock)
    clock.advance(301)
    again, duo, _ = run(state_dir, problems, clock)
    assert again.factor == "push" and duo.factors == ["push"]


def test_preferred_device_is_offered_first_and_dropped_when_gone(state_dir, problems):
    clock = FakeClock()
    first, duo, _ = run(state_dir, problems, clock, answers=("push2",), remember_seconds=0)
    assert first.result is Result.SUCCESS and first.device == "DPHONE2"
    _, _, ui = run(state_dir, problems, clock, answers=("1",), remember_seconds=0)
    assert " 1. Duo Push to XXX-XXX-5678" in ui.asked[0]
    only_first = Preauth("auth", "", devices=(PHONE,))
    _, _, ui = run(state_dir, problems, clock, preauth=only_first, answers=("1",), remember_seconds=0)
    assert PreferredDevices(state_dir, on_problem=problems.append).get("alice") == "DPHONE1"


def test_one_device_one_method_means_no_menu(state_dir, problems):
    clock = FakeClock()
    lone = Preauth("auth", "", devices=(Device("DONE", "phone", "XXX-XXX-0001", ("push",)),))
    outcome, duo, ui = run(state_dir, problems, clock, preauth=lone, answers=(), remember_seconds=0, devices=False)
    assert outcome.result is Result.SUCCESS and not ui.asked and duo.factors == ["push"]
