"""The broker's client pool over real HTTPS against a simulator that closes idle connections quickly.

A login after an idle period longer than the server's keep-alive timeout finds a
connection already open: no TCP connection and no TLS handshake of its own.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Callable, Iterator

import pytest

from pam_duo_py.broker_server import ClientPool
from pam_duo_py.config import DuoIdentity, DuoSettings
from pam_duo_py.duo import DuoClient
from pam_duo_sim.simulator import Simulator

pytestmark = pytest.mark.integration

IDLE_TIMEOUT = 1.0


@pytest.fixture
def sim(tmp_path: pathlib.Path) -> Iterator[Simulator]:
    s = Simulator(tmp_path / "sim", approve_delay=0.05, idle_timeout=IDLE_TIMEOUT)
    s.start()
    yield s
    s.stop()


def settings_for(sim: Simulator) -> DuoSettings:
    return DuoSettings(ikey=sim.ikey, skey=sim.skey, host="localhost", port=sim.port,
                       ca_file=str(sim.ca_file), proxy=None, timeout=5.0)


def events(sim: Simulator, since: int = 0) -> list[dict]:
    return [json.loads(line) for line in sim.request_log.read_text().splitlines()[since:]]


def wait_for(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def handshakes(sim: Simulator) -> int:
    return sum(e["event"] == "tls" for e in events(sim))


def warm_client_idle(pool: ClientPool) -> bool:
    """The client the next login gets is back in the pool with an open connection."""
    with pool._lock:
        return bool(pool._idle) and pool._idle[-1].connected()


def preauth(client: DuoClient, user: str) -> str:
    return client.preauth(DuoIdentity(username=user), ipaddr=None, hostname=None, verified_push=False).result


def test_a_login_after_the_servers_idle_timeout_opens_no_new_connection(sim: Simulator) -> None:
    settings = settings_for(sim)
    pool = ClientPool(settings)
    try:
        client = pool.get(settings)
        assert preauth(client, "allow-1") == "allow"
        client.close()
        ended = time.monotonic()
        # The server closes the idle connection after IDLE_TIMEOUT; the pool opens the next one then.
        # The simulator logs the handshake as soon as its side is done; the keeper puts the client
        # back in the pool a moment later, so wait for both.
        wait_for(lambda: handshakes(sim) == 2 and warm_client_idle(pool),
                 "the pool did not reconnect after the server closed its connection")
        assert time.monotonic() - ended >= IDLE_TIMEOUT
        mark = len(events(sim))
        client = pool.get(settings)
        assert preauth(client, "allow-2") == "allow"
        client.close()
        after = events(sim, mark)
        assert [e["event"] for e in after] == ["request"], after
        warm = [e["conn"] for e in events(sim) if e["event"] == "tls"][-1]
        assert after[0]["conn"] == warm and after[0]["path"] == "/auth/v2/preauth"
        assert not [e for e in events(sim) if e.get("path") == "/auth/v2/preauth" and e["username"] == "allow-2"][1:]
    finally:
        pool.close()


def test_warm_up_and_ping_send_no_login_request(sim: Simulator) -> None:
    client = DuoClient(settings_for(sim))
    try:
        assert client.fileno() is None and not client.connected()
        assert client.warm_up(5.0)
        assert client.connected()
        assert client.ping(5.0)
        assert client.take_calls() == []  # pings are not a login's calls
        log = events(sim)
        assert [e["event"] for e in log if e["event"] != "start"] == ["connection", "tls", "request"]
        assert log[-1]["path"] == "/auth/v2/ping" and log[-1]["status"] == 200
        assert client.connections_opened == 1
    finally:
        client.close()


def test_a_failed_ping_leaves_the_client_closed(sim: Simulator) -> None:
    client = DuoClient(settings_for(sim))
    try:
        assert client.warm_up(5.0)
        sim.stop()
        assert not client.ping(1.0)
        assert client.fileno() is None and not client.connected()
    finally:
        client.close()


def test_a_login_waiting_for_its_user_finds_its_next_call_warm(sim: Simulator) -> None:
    """The user takes longer to choose a factor than the server keeps an idle connection open.

    The login holds no connection while it waits, so the pool's keeper reopens the one
    the server closed, and the login's next call (the push) is a request on it: no TCP
    connection and no TLS handshake of its own.
    """
    settings = settings_for(sim)
    pool = ClientPool(settings)
    try:
        login = pool.get(settings)
        assert preauth(login, "push-1") == "auth"
        ended = time.monotonic()
        # The user reads the menu; meanwhile the server closes the idle connection and the keeper reopens it.
        wait_for(lambda: handshakes(sim) == 2 and warm_client_idle(pool),
                 "the pool did not reconnect while the login waited for its user")
        assert time.monotonic() - ended >= IDLE_TIMEOUT
        mark = len(events(sim))
        started = login.start_push(DuoIdentity(username="push-1"), "auto", ipaddr=None, hostname=None)
        assert started.txid
        after = events(sim, mark)
        assert [e["event"] for e in after] == ["request"], after
        assert after[0]["path"] == "/auth/v2/auth"
        assert after[0]["conn"] == [e["conn"] for e in events(sim) if e["event"] == "tls"][-1]
        assert [endpoint for endpoint, _, _ in login.take_calls()] == ["preauth", "auth"]
        login.close()
    finally:
        pool.close()
