"""The broker's pool keeps the next login's Duo connection warm: background reconnects and pings, bounded.

Pure logic: a fake clock and fake clients whose connection the test opens and closes.
"""
from __future__ import annotations

import threading
import time

import pytest

from pam_duo_py import broker_server, keepwarm
from pam_duo_py.broker_server import ClientPool
from pam_duo_py.config import DuoSettings
from tests.unit.fakes import FakeClock

SETTINGS = DuoSettings(ikey="DIABCDEFGHIJKLMNOPQR", skey="S" * 40, host="api-test.duosecurity.com", port=None,
                       ca_file=None, proxy=None, timeout=10.0)


class Conn:
    """A pooled client: ``log`` records every action taken on it (a login's requests included)."""

    def __init__(self, settings: DuoSettings) -> None:
        self.settings = settings
        self.open = False
        self.server_closed = False
        self.ping_ok = True
        self.log: list[str] = []

    def connected(self) -> bool:
        return self.open and not self.server_closed

    def fileno(self) -> int | None:
        return 7 if self.open else None

    def warm_up(self, timeout: float) -> bool:
        self.log.append("connect")
        self.open, self.server_closed = True, False
        return True

    def ping(self, timeout: float) -> bool:
        self.log.append("ping")
        return self.ping_ok

    def close(self) -> None:
        if self.open:
            self.log.append("close")
        self.open = self.server_closed = False

    def login(self) -> None:
        if not self.connected():
            self.close()
            self.warm_up(10)
        self.log.append("request")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pool(clock: FakeClock) -> ClientPool:
    return ClientPool(SETTINGS, factory=Conn, clock=clock, background=False)


def login(pool: ClientPool) -> Conn:
    """One Duo call, as a login makes it: a client borrowed for the call and given back."""
    client = pool.borrow(SETTINGS)
    client.login()
    pool.give_back(client)
    return client


def test_a_connection_the_server_closes_after_a_login_is_reopened_at_once(pool, clock) -> None:
    client = login(pool)
    clock.advance(5)
    pool.keeper.maintain()
    assert client.log == ["connect", "request"]  # still open: nothing to do
    client.server_closed = True
    pool.keeper.maintain()
    assert client.log == ["connect", "request", "close", "connect"]
    assert client.connected()
    assert login(pool) is client
    assert client.log[-1] == "request" and client.log.count("connect") == 2  # the login found it open


def test_background_reconnects_are_at_most_one_a_minute_after_the_first(pool, clock) -> None:
    client = login(pool)
    client.server_closed = True
    pool.keeper.maintain()
    assert client.log.count("connect") == 2
    clock.advance(30)
    client.server_closed = True  # the server closes the new one too, within the minute
    pool.keeper.maintain()
    assert client.log[-1] == "close" and client.fileno() is None  # socket released, no reconnect
    clock.advance(29)
    pool.keeper.maintain()
    assert client.log.count("connect") == 2
    clock.advance(1)
    pool.keeper.maintain()
    assert client.log.count("connect") == 3 and client.connected()


def test_a_quiet_connection_is_pinged_once_a_minute(pool, clock) -> None:
    client = login(pool)
    for _ in range(600):  # ten minutes, one pass a second
        clock.advance(1)
        pool.keeper.maintain()
    assert client.log.count("ping") == 10
    assert "request" not in client.log[2:] and client.log.count("connect") == 1


def test_a_failed_ping_closes_the_connection_and_a_new_one_is_opened(pool, clock) -> None:
    client = login(pool)
    client.ping_ok = False
    clock.advance(60)
    pool.keeper.maintain()
    assert client.log[-2:] == ["ping", "close"]
    pool.keeper.maintain()  # the first reconnect after the login is due at once
    assert client.log[-1] == "connect" and client.connected()


def test_no_login_for_a_day_means_no_pings_no_reconnects_and_no_open_connection(pool, clock) -> None:
    client = login(pool)
    for _ in range(25):
        clock.advance(3600)
        client.server_closed = client.open  # the server hangs up every hour
        pool.keeper.maintain()
    actions = len(client.log)
    for _ in range(48):
        clock.advance(3600)
        pool.keeper.maintain()
    assert len(client.log) == actions and not client.open
    assert pool.keeper.pings <= 25 and pool.keeper.reconnects <= 25
    assert login(pool).log == ["connect", "request"]  # a new client: the old one was let go


def test_a_client_out_for_a_call_is_never_touched(pool, clock) -> None:
    login(pool)
    client = pool.borrow(SETTINGS)
    client.server_closed = True
    clock.advance(120)
    pool.keeper.maintain()
    assert client.log == ["connect", "request"]
    pool.give_back(client)


def test_only_the_next_call_s_client_is_kept_warm(pool, clock) -> None:
    first, second = pool.borrow(SETTINGS), pool.borrow(SETTINGS)  # two concurrent calls
    first.login()
    second.login()
    pool.give_back(first)
    pool.give_back(second)
    clock.advance(61)
    pool.keeper.maintain()
    assert pool._idle == [second]
    assert first.log[-1] == "close"
    assert second.log[-1] == "ping"


class Calls(Conn):
    """A pooled client with a login's Duo calls; ``server_time_offset`` as the last reply set it."""

    def __init__(self, settings: DuoSettings) -> None:
        super().__init__(settings)
        self.calls: list = []
        self.server_time_offset = None

    def preauth(self, user: str) -> str:
        self.login()
        self.calls.append(("preauth", 0.1, None))
        self.server_time_offset = 2.0
        return "auth"

    def auth_status(self, txid: str, timeout: float) -> str:
        self.login()
        self.calls.append(("auth_status", 0.2, "timeout"))
        return "allow"

    def take_calls(self) -> list:
        calls, self.calls = self.calls, []
        return calls


def test_a_login_holds_a_client_only_during_each_call(clock) -> None:
    pool = ClientPool(SETTINGS, factory=Calls, clock=clock, background=False)
    first, second = pool.get(SETTINGS), pool.get(SETTINGS)  # two concurrent logins
    assert first.preauth("alice") == "auth"
    assert pool._idle and len(pool._idle) == 1  # given back at once: the login is now waiting for its user
    assert second.preauth("bob") == "auth"
    assert second.auth_status("T", 60) == first.auth_status("T", 60) == "allow"
    assert len(pool._idle) == 1  # one warm connection served both logins' four calls
    only = pool._idle[0]
    assert only.log == ["connect"] + ["request"] * 4
    assert first.take_calls() == [("preauth", 0.1, None), ("auth_status", 0.2, "timeout")]
    assert first.server_time_offset == 2.0 and first.take_calls() == []
    first.close()
    assert pool._idle == [only] and only.connected()  # closing a login's view gives nothing back


def test_a_call_that_fails_still_gives_its_client_back(clock) -> None:
    class Failing(Calls):
        def preauth(self, user: str) -> str:
            self.login()
            raise OSError("reset")

    pool = ClientPool(SETTINGS, factory=Failing, clock=clock, background=False)
    with pytest.raises(OSError):
        pool.get(SETTINGS).preauth("alice")
    assert len(pool._idle) == 1


def test_a_login_s_view_offers_only_the_login_calls(pool) -> None:
    with pytest.raises(AttributeError):
        pool.get(SETTINGS).ping  # the keeper's, not a login's


def test_bounded_over_a_busy_day(pool, clock) -> None:
    """A server that closes idle connections every 20 s, a login every 10 minutes, one pass a second."""
    client = login(pool)
    for second in range(1, 6 * 3600):
        clock.advance(1)
        if second % 20 == 0 and client.open:
            client.server_closed = True
        if second % 600 == 0:
            assert login(pool) is client
        pool.keeper.maintain()
    minutes = 6 * 60
    assert pool.keeper.pings <= minutes
    assert pool.keeper.reconnects <= minutes + 36  # one a minute, plus one after each login


def test_close_stops_the_keeper_and_closes_idle_clients(pool, clock) -> None:
    client = login(pool)
    pool.close()
    assert client.log[-1] == "close" and pool._idle == []
    clock.advance(120)
    pool.keeper.maintain()
    assert client.log[-1] == "close"


def test_constants_stay_within_the_documented_bounds() -> None:
    assert keepwarm.PING_INTERVAL >= 60 and keepwarm.RECONNECT_INTERVAL >= 60
    assert keepwarm.QUIET_LIMIT == 24 * 3600


# -- a burst: a call waits for a client that a call in flight gives back, rather than connect anew ----

class Made:
    """The pool's factory, remembering every client it made (each a new connection)."""

    def __init__(self) -> None:
        self.clients: list[Conn] = []

    def __call__(self, settings: DuoSettings) -> Conn:
        self.clients.append(Conn(settings))
        return self.clients[-1]


def borrow_in_thread(pool: ClientPool) -> tuple[threading.Thread, dict]:
    got: dict = {}
    thread = threading.Thread(target=lambda: got.setdefault("client", pool.borrow(SETTINGS, returns_soon=True)))
    thread.start()
    return thread, got


def until_waiting(pool: ClientPool, count: int) -> None:
    """Until ``count`` calls wait in ``borrow`` (state, not time: a bounded poll of the pool's count)."""
    deadline = time.monotonic() + 10
    while pool._waiting != count:
        assert time.monotonic() < deadline, "no call is waiting"
        threading.Event().wait(0.001)


def test_a_call_waits_for_the_client_a_call_in_flight_gives_back() -> None:
    made = Made()
    pool = ClientPool(SETTINGS, factory=made, background=False)
    pool.call_time = 60.0  # the wait is bounded by MAX_WAIT here
    first = pool.borrow(SETTINGS, returns_soon=True)
    thread, got = borrow_in_thread(pool)
    until_waiting(pool, 1)
    pool.give_back(first)
    thread.join(10)
    assert got["client"] is first and made.clients == [first]  # one connection for both calls
    assert pool.waited == 1


def test_one_waiting_call_for_each_call_in_flight_the_next_connects() -> None:
    made = Made()
    pool = ClientPool(SETTINGS, factory=made, background=False)
    pool.call_time = 60.0
    first = pool.borrow(SETTINGS, returns_soon=True)
    thread, got = borrow_in_thread(pool)
    until_waiting(pool, 1)
    third = pool.borrow(SETTINGS, returns_soon=True)  # the call in flight is spoken for: a new client at once
    assert third is not first and made.clients == [first, third]
    pool.give_back(first)
    thread.join(10)
    assert got["client"] is first


def test_a_long_poll_in_flight_is_not_waited_for() -> None:
    made = Made()
    pool = ClientPool(SETTINGS, factory=made, background=False)
    status = pool.borrow(SETTINGS)  # auth_status: may hold its client until the user answers
    assert pool.borrow(SETTINGS, returns_soon=True) is not status
    assert len(made.clients) == 2 and pool.waited == 0


def test_a_call_in_flight_that_does_not_come_back_is_waited_for_a_bounded_time() -> None:
    made = Made()
    pool = ClientPool(SETTINGS, factory=made, background=False)
    pool.call_time = 0.005  # the wait ends after two such calls' time: then a new connection
    first = pool.borrow(SETTINGS, returns_soon=True)
    second = pool.borrow(SETTINGS, returns_soon=True)  # same thread: nobody gives ``first`` back meanwhile
    assert second is not first and made.clients == [first, second] and pool.waited == 0


def test_the_wait_follows_how_long_warm_calls_take() -> None:
    pool = ClientPool(SETTINGS, factory=Conn, background=False)
    client = pool.borrow(SETTINGS, returns_soon=True)  # a new client: its call includes the handshakes, not timed
    pool.give_back(client)
    assert pool.call_time == broker_server.FIRST_CALL_ESTIMATE
    for _ in range(50):
        pool.give_back(pool.borrow(SETTINGS, returns_soon=True))  # warm calls that return at once
    assert pool.call_time < broker_server.FIRST_CALL_ESTIMATE / 10


def test_a_slow_duo_never_makes_a_call_wait_longer_than_max_wait(monkeypatch) -> None:
    """Calls that took long (a slow Duo) lengthen the wait, up to MAX_WAIT and no further."""
    monkeypatch.setattr(broker_server, "MAX_WAIT", 0.01)
    made = Made()
    pool = ClientPool(SETTINGS, factory=made, background=False)
    pool.call_time = 3600.0  # as if warm calls had taken an hour
    first = pool.borrow(SETTINGS, returns_soon=True)
    second = pool.borrow(SETTINGS, returns_soon=True)  # same thread: ``first`` never comes back meanwhile
    assert second is not first and made.clients == [first, second] and pool.waited == 0
