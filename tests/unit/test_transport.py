"""The HTTPS transport's HTTP/1.1 without a network: sockets are scripted fakes.

What runs over real TLS sockets (deadline, failover, proxy tunnel, reconnects, 429 against
the simulator) is in tests/integration/test_duo_client.py.
"""
from __future__ import annotations

import pytest

from fakes import FakeClock
from pam_duo_py import transport as transport_mod
from pam_duo_py.config import DuoSettings
from pam_duo_py.transport import BadReply, HTTPSTransport

HOST = "api-test.duosecurity.com"


def settings(port=None):
    return DuoSettings(ikey="DIABCDEFGHIJKLMNOPQR", skey="S" * 40, host=HOST, port=port, ca_file=None, proxy=None,
                       timeout=10.0)


class FakeSock:
    """A connected socket: ``replies`` are handed out by recv (a chunk at a time), sends are recorded.

    An exception instance in ``replies`` is raised by that recv; ``send_error`` by the next sendall.
    """

    def __init__(self, *replies, send_error=None):
        self.replies = list(replies)
        self.sent = []
        self.timeouts = []
        self.closed = False
        self.send_error = send_error

    def sendall(self, data):
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(bytes(data))

    def recv(self, size):
        if not self.replies:
            return b""
        chunk = self.replies.pop(0)
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk

    def settimeout(self, seconds):
        self.timeouts.append(seconds)

    def close(self):
        self.closed = True


def https_over(*socks, port=None, clock=None):
    """An HTTPSTransport whose connections are the given fake sockets, in order."""
    clock = clock or FakeClock()
    https = HTTPSTransport(settings(port), clock=clock)
    queue = list(socks)

    def connect(host):
        https.connections_opened += 1
        https._conn_host = host
        return transport_mod._Connection(queue.pop(0), https.remaining)

    https._connect = connect
    return https, clock


def call(https, clock, method="POST", body=b'{"a":"1"}'):
    return https(method, HOST, "/auth/v2/preauth", {"Authorization": "Basic x", "Date": "d"}, body, clock() + 10)


OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"stat\":1}\n"


def test_one_write_per_request_with_host_length_and_body():
    sock = FakeSock(OK_JSON)
    https, clock = https_over(sock)
    assert call(https, clock) == (200, {"content-type": "application/json", "content-length": "11"}, b'{"stat":1}\n')
    assert sock.sent == [b"POST /auth/v2/preauth HTTP/1.1\r\nHost: api-test.duosecurity.com\r\n"
                         b"Accept-Encoding: identity\r\nAuthorization: Basic x\r\nDate: d\r\nContent-Length: 9\r\n\r\n"
                         b'{"a":"1"}']
    assert not sock.closed and https.connections_opened == 1


def test_a_port_other_than_443_is_in_the_host_header_and_a_get_has_no_length():
    sock = FakeSock(OK_JSON)
    https, clock = https_over(sock, port=8443)
    call(https, clock, method="GET", body=None)
    assert sock.sent[0].startswith(b"GET /auth/v2/preauth HTTP/1.1\r\nHost: api-test.duosecurity.com:8443\r\n")
    assert b"Content-Length" not in sock.sent[0]


def test_keep_alive_serves_the_next_request_on_the_same_connection(monkeypatch):
    monkeypatch.setattr(transport_mod, "_peer_closed", lambda sock: False)
    sock = FakeSock(OK_JSON, OK_JSON)
    https, clock = https_over(sock)
    call(https, clock)
    call(https, clock)
    assert len(sock.sent) == 2 and https.connections_opened == 1


@pytest.mark.parametrize("reply,body", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n",
     b'{"a":1}'),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
])
def test_bodies_by_chunks_and_length_keep_the_connection(reply, body):
    sock = FakeSock(*[reply[i:i + 7] for i in range(0, len(reply), 7)])  # arriving in pieces
    https, clock = https_over(sock)
    status, _, data = call(https, clock)
    assert data == body and not sock.closed


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\n\r\n{}",  # no length: the body ends with the connection
])
def test_replies_that_end_the_connection_close_it(reply):
    sock = FakeSock(reply)
    https, clock = https_over(sock)
    assert call(https, clock)[2] == b"{}"
    assert sock.closed and https.fileno() is None


def test_interim_replies_are_skipped():
    sock = FakeSock(b"HTTP/1.1 100 Continue\r\n\r\n", OK_JSON)
    https, clock = https_over(sock)
    assert call(https, clock)[0] == 200


@pytest.mark.parametrize("reply,problem", [
    (b"HTTP/2 200\r\n\r\n", "bad status line"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "too many headers"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000, "header line too long"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "cut short"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX\r\n", "bad chunk end"),
    (b"HTTP/1.1 200 OK\r\nContent", "closed inside the reply's head"),
    (b"", "closed inside the reply's head"),
])
def test_what_is_not_an_http_reply_is_a_bad_reply_and_drops_the_connection(reply, problem):
    sock = FakeSock(reply)
    https, clock = https_over(sock)
    with pytest.raises(BadReply, match=problem):
        call(https, clock)
    assert sock.closed and https.fileno() is None


def test_every_read_is_bounded_by_what_is_left_of_the_deadline():
    clock = FakeClock()

    class Slow(FakeSock):
        def recv(self, size):
            clock.advance(4)
            return super().recv(size)

    sock = Slow(b"HTTP/1.1 200 OK\r\n", b"X: 1\r\n", b"\r\n")
    https, _ = https_over(sock, clock=clock)
    with pytest.raises(TimeoutError):
        https("GET", HOST, "/p", {}, None, clock() + 10)
    assert sock.timeouts == [10, 10, 6, 2]  # the send, then each read gets only what is left
    assert sock.closed


def test_a_request_is_sent_again_only_when_the_idle_connection_was_found_dead(monkeypatch):
    monkeypatch.setattr(transport_mod, "_peer_closed", lambda sock: False)
    first = FakeSock(OK_JSON, send_error=None)
    second = FakeSock(OK_JSON)
    https, clock = https_over(first, second)
    call(https, clock)
    first.send_error = BrokenPipeError(32, "Broken pipe")  # the server had closed it while idle
    assert call(https, clock)[0] == 200
    assert len(first.sent) == 1 and len(second.sent) == 1 and https.connections_opened == 2


def test_a_request_that_left_is_never_sent_twice(monkeypatch):
    monkeypatch.setattr(transport_mod, "_peer_closed", lambda sock: False)
    first = FakeSock(OK_JSON, ConnectionResetError(104, "reset"))
    spare = FakeSock(OK_JSON)
    https, clock = https_over(first, spare)
    call(https, clock)
    with pytest.raises(ConnectionResetError):
        call(https, clock)  # sent, then the reply was lost: an error, not a second push
    assert len(first.sent) == 2 and spare.sent == []


def test_a_fresh_connection_that_fails_to_send_is_not_retried():
    sock = FakeSock(send_error=BrokenPipeError(32, "Broken pipe"))
    https, clock = https_over(sock, FakeSock(OK_JSON))
    with pytest.raises(BrokenPipeError):
        call(https, clock)
    assert https.connections_opened == 1


def test_a_header_with_a_line_break_is_never_sent():
    sock = FakeSock(OK_JSON)
    https, clock = https_over(sock)
    with pytest.raises(ValueError):
        https("GET", HOST, "/p", {"X-Duo-Bad": "a\r\nInjected: 1"}, None, clock() + 10)
    assert sock.sent == []


def test_connections_share_one_tls_context_while_the_ca_file_stays_the_same(tmp_path):
    import importlib.util
    import pathlib

    bundle = pathlib.Path(importlib.util.find_spec("duo_client").submodule_search_locations[0]) / "ca_certs.pem"
    ca = tmp_path / "ca.pem"
    ca.write_bytes(bundle.read_bytes())
    first = transport_mod._ssl_context(str(ca))
    assert transport_mod._ssl_context(str(ca)) is first
    assert first.verify_mode.name == "CERT_REQUIRED" and first.check_hostname
    ca.write_bytes(bundle.read_bytes() + b"\n")  # the bundle is replaced: loaded afresh
    second = transport_mod._ssl_context(str(ca))
    assert second is not first and transport_mod._ssl_context(str(ca)) is second
    ca.unlink()
    with pytest.raises(OSError):
        transport_mod._ssl_context(str(ca))
