"""pipeline.http: the one bounded client. Failures are injected through the transport seam (MockTransport);
the deadline is checked against hostile servers on 127.0.0.1 that trickle their headers or body."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.http import (
    BudgetSpent,
    Client,
    DeadlineExceeded,
    HttpError,
    MockResponse,
    MockTransport,
    Request,
)
from tests.mirror_servers import HangingServer, TricklingServer, closed_port_url

URL = "http://mirror.example/debian/pool/a.deb"


def client(transport: MockTransport, *, budget: int | None = None, error_body: int = 16 * 1024) -> Client:
    return Client(user_agent="test", transport=transport, budget=budget, error_body=error_body)


def fails(transport: MockTransport, **request: object) -> HttpError:
    with pytest.raises(HttpError) as caught:
        client(transport).request("GET", URL, **{"max_body": 100, "timeout": 5, **request})  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    return caught.value


# --- through the transport seam -----------------------------------------------------------------


def test_user_agent_and_headers_are_sent_and_a_body_is_read() -> None:
    transport = MockTransport(lambda r: MockResponse(200, {"Content-Length": "5"}, [b"he", b"llo"]))
    response = client(transport).request("GET", URL, max_body=100, timeout=5, headers={"Range": "bytes=0-4"})
    assert (response.status, response.body, response.url) == (200, b"hello", URL)
    assert transport.requests[0].headers == {"User-Agent": "test", "Range": "bytes=0-4"}
    assert transport.exchanges[0].finished is True  # all of it read: the connection may be kept


@pytest.mark.parametrize(
    "error, message",
    [
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset"),
        (http.client.RemoteDisconnected("Remote end closed connection"), "connection closed without an answer"),
        (ConnectionRefusedError(111, "Connection refused"), "cannot connect: Connection refused"),
        (TimeoutError("timed out"), "timed out"),
        (ssl.SSLError(1, "[SSL] record layer failure"), "TLS error ("),
        (http.client.BadStatusLine("garbage\r\nmore garbage"), "not a valid HTTP answer (BadStatusLine: "),
        (OSError(113, "No route to host"), "cannot connect: No route to host"),
        (DeadlineExceeded("headers"), "too slow: the headers did not arrive within 5 s (timed out)"),
        (DeadlineExceeded("connect"), "too slow: no connection within 5 s (timed out)"),
    ],
)
def test_transport_errors_are_one_line_messages(error: BaseException, message: str) -> None:
    def handler(request: Request) -> MockResponse:
        raise error

    assert str(fails(MockTransport(handler))).startswith(message)


def test_connection_reset_in_the_body() -> None:
    reset = MockTransport(lambda r: MockResponse(200, {"Content-Length": "10"}, [b"abc", ConnectionResetError()]))
    assert str(fails(reset)) == "connection reset"
    assert reset.exchanges[0].finished is False  # not reusable


def test_a_deadline_in_the_body_names_what_arrived() -> None:
    slow = MockTransport(lambda r: MockResponse(200, {"Content-Length": "10"}, [b"abc", DeadlineExceeded("body")]))
    error = fails(slow, timeout=2, headers_timeout=1)
    assert error.slow and str(error) == "too slow: no complete response within 2 s (timed out after 3 of 10 body bytes)"


def test_short_body() -> None:
    def short(request: Request) -> MockResponse:
        return MockResponse(200, {"Content-Length": "100"}, b"x" * 40)

    assert str(fails(MockTransport(short), exact=True)) == "the body ended after 40 of the 100 bytes announced"
    lenient = MockTransport(short)
    response = client(lenient).request("GET", URL, max_body=100, timeout=5)
    assert response.body == b"x" * 40 and lenient.exchanges[0].finished is False  # the caller compares lengths


def test_over_cap_bodies() -> None:
    announced = MockTransport(lambda r: MockResponse(200, {"Content-Length": "1000"}, b"x" * 1000))
    assert str(fails(announced, exact=True)) == "announces 1000 bytes, more than the 100 bytes expected: refused"
    endless = MockTransport(lambda r: MockResponse(200, {}, [b"x" * 64] * 1000))
    assert str(fails(endless, exact=True)) == "more than the 100 bytes expected: refused (endless data?)"
    cut = MockTransport(lambda r: MockResponse(200, {}, [b"x" * 64] * 1000))
    assert client(cut).request("GET", URL, max_body=100, timeout=5).body == b"x" * 100  # not exact: cut at the cap
    assert cut.exchanges[0].finished is False


def test_error_pages_are_capped_and_unexpected_statuses_refused() -> None:
    page = MockTransport(lambda r: MockResponse(404, {}, [b"e" * 4096] * 100, reason="Not Found"))
    response = client(page, error_body=1000).request("GET", URL, max_body=10**6, timeout=5)
    assert response.status == 404 and len(response.body) == 1000
    assert str(fails(page, expect=200)) == "HTTP 404 Not Found"
    whole = MockTransport(lambda r: MockResponse(200, {"Content-Length": "1000"}, b"x" * 1000))
    assert str(fails(whole, exact=True, expect=206)) == "HTTP 200, expected 206"  # not "announces ... refused"


def test_redirect_loop_and_non_http_redirects() -> None:
    loop = MockTransport(lambda r: MockResponse(302, {"Location": r.url}))
    counted = client(loop)
    with pytest.raises(HttpError, match=r"^more than 3 redirects$"):
        counted.request("GET", URL, max_body=100, timeout=5)
    assert len(loop.requests) == 4 and counted.requests == 4  # every hop is a request
    away = MockTransport(lambda r: MockResponse(301, {"Location": "ftp://mirror.example/x"}))
    assert str(fails(away)) == "redirected to a non-HTTP URL (ftp://mirror.example/x)"


def test_redirects_keep_method_and_headers() -> None:
    def handler(request: Request) -> MockResponse:
        if request.url == URL:
            return MockResponse(307, {"Location": "/elsewhere/a.deb"})
        return MockResponse(206, {"Content-Length": "2"}, b"ab")

    transport = MockTransport(handler)
    response = client(transport).request("GET", URL, max_body=2, timeout=5, headers={"Range": "bytes=0-1"}, expect=206)
    assert response.url == "http://mirror.example/elsewhere/a.deb" and response.body == b"ab"
    assert [r.headers.get("Range") for r in transport.requests] == ["bytes=0-1", "bytes=0-1"]


def test_request_budget() -> None:
    transport = MockTransport(lambda r: MockResponse(200, {"Content-Length": "0"}))
    limited = client(transport, budget=2)
    limited.request("HEAD", URL, max_body=0, timeout=5)
    limited.request("HEAD", URL, max_body=0, timeout=5)
    with pytest.raises(BudgetSpent):
        limited.request("HEAD", URL, max_body=0, timeout=5)
    assert len(transport.requests) == 2 and limited.requests == 2


def test_not_an_http_url() -> None:
    with pytest.raises(HttpError, match="not an http"):
        client(MockTransport(lambda r: MockResponse())).request("GET", "file:///etc/passwd", max_body=1, timeout=1)


# --- the deadline against real sockets ----------------------------------------------------------


def test_trickled_headers_end_at_the_deadline() -> None:
    """`HTTP/1.1 200 OK`, then one header byte every 0.2 s: no read ever times out, the deadline ends it."""
    with TricklingServer(0.2, in_headers=True) as server, Client(user_agent="test") as real:
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            real.request("GET", server.url + "/latest.asc", max_body=1000, timeout=1)
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 5, elapsed
    assert caught.value.slow
    assert str(caught.value) == "too slow: the headers did not arrive within 1 s (timed out)"


def test_trickled_body_ends_at_the_deadline() -> None:
    with TricklingServer(0.2) as server, Client(user_agent="test") as real:
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            real.request("GET", server.url + "/big", max_body=10**6, timeout=1, headers_timeout=0.5)
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    message = str(caught.value)
    assert message.startswith("too slow: no complete response within 1 s (timed out after ") and message.endswith(
        " of 1000000 body bytes)"
    )


def test_silence_and_idle_reads() -> None:
    with HangingServer() as server, Client(user_agent="test") as real:
        started = time.monotonic()
        with pytest.raises(HttpError, match=r"^too slow: the headers did not arrive within 1 s"):
            real.request("GET", server.url + "/x", max_body=10, timeout=1)
        with pytest.raises(HttpError, match=r"^timed out$"):  # a read idle for `idle` s, long before the deadline
            real.request("GET", server.url + "/x", max_body=10, timeout=30, idle=0.3)
        assert time.monotonic() - started < 6
    with Client(user_agent="test") as real, pytest.raises(HttpError, match="^cannot connect: Connection refused$"):
        real.request("GET", closed_port_url() + "/x", max_body=10, timeout=2)


def test_a_tls_handshake_has_the_deadline_too() -> None:
    """A server that accepts and never completes the handshake (https to a silent port)."""
    with HangingServer() as server, Client(user_agent="test") as real:
        started = time.monotonic()
        with pytest.raises(HttpError, match=r"^too slow: no connection within 1 s \(timed out\)$"):
            real.request("GET", server.url.replace("http:", "https:") + "/x", max_body=10, timeout=1)
        assert time.monotonic() - started < 5


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_GET(self) -> None:
        body = b"hello" if self.path == "/ok" else b""
        self.send_response(200 if body else 302)
        if not body:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # echoes the body it was sent, reversed
        body = self.rfile.read(int(self.headers["Content-Length"]))[::-1]
        self.send_response(400 if body.startswith(b"!") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def counting() -> Iterator[str]:
    _Counting.connections = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_keep_alive_reuses_one_connection_across_requests_and_redirects(counting: str) -> None:
    with Client(user_agent="test") as real:
        for _ in range(3):
            response = real.request("GET", counting + "/start", max_body=100, timeout=5)
            assert response.body == b"hello" and response.url == counting + "/ok"
    assert real.requests == 6 and _Counting.connections == 1


def test_a_request_body_is_sent_and_an_error_answer_read(counting: str) -> None:
    """What the seed box's aria2 RPC needs: a POST body, and a 400's body (aria2's JSON error) returned."""
    with Client(user_agent="test", max_redirects=0) as real:
        answer = real.request("POST", counting + "/rpc", body=b'{"a": 1}', max_body=100, timeout=5)
        assert (answer.status, answer.body) == (200, b'}1 :"a"{')
        error = real.request("POST", counting + "/rpc", body=b"oops!", max_body=100, timeout=5)
        assert (error.status, error.body) == (400, b"!spoo")
    transport = MockTransport(lambda r: MockResponse(200, {"Content-Length": "0"}, b""))
    client(transport).request("POST", URL, body=b"payload", max_body=10, timeout=5)
    assert transport.requests[0].body == b"payload" and transport.requests[0].method == "POST"
