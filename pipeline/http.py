"""One bounded HTTP/1.1 client for the mirror probes and `invoke verify` (notes/security-and-reliability.md:
slow retrieval, endless data).

Every request has a **total deadline**: connect (TLS handshake included), sending, the status line,
the headers and the body must all be done by it, and connect + status line + headers may have an
earlier one. Socket timeouts alone do not bound a request (a byte every few seconds resets them), so
a watchdog thread shuts the request's socket down when its deadline passes; whatever was blocked
returns at once and the request fails with a one-line "too slow" error. Socket timeouts are set too
(never longer than the time left, or the optional per-read `idle` timeout). Name resolution is not
bounded by the deadline (`getaddrinfo` cannot be interrupted).

Bodies are bounded: at most `max_body` bytes are read (an error page: at most `error_body` bytes).
With `exact=True` a body that announces or sends more than `max_body`, or ends before its
Content-Length, is refused; without it the body is cut at the cap and returned as received (the
caller compares lengths). Redirects (301/302/303/307/308) are followed at most `max_redirects`
times, to http(s) URLs only, keeping the method and headers. Connections are kept alive per
(scheme, host) and reused; a reused connection the server had closed is retried once on a fresh one.
An optional request budget counts every request sent, redirects included (`BudgetSpent` beyond it).

Everything that goes wrong is an `HttpError` with a one-line message; transport exceptions are
turned into messages by one table, `_TRANSPORT_ERRORS`. The network sits behind the `Transport`
protocol: `ConnectionTransport` (http.client) by default, `MockTransport` for tests (in the spirit
of httpx's `MockTransport`).
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urljoin, urlsplit

__all__ = [
    "BudgetSpent",
    "Client",
    "ConnectionTransport",
    "Deadline",
    "DeadlineExceeded",
    "Exchange",
    "Head",
    "HttpError",
    "MockResponse",
    "MockTransport",
    "Request",
    "Response",
    "Transport",
]

ERROR_BODY_MAX_BYTES = 16 * 1024  # read of an error page, enough to keep the connection for most
MAX_REDIRECTS = 3
CHUNK = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SLACK = 0.005  # s: a socket timeout that ends this close to the deadline is the deadline

Phase = Literal["connect", "headers", "body"]


# --- errors -------------------------------------------------------------------------------------


class HttpError(Exception):
    """One line: why a URL could not be read (transport error, status, too large, too slow, redirects).
    `slow` is True when the request's deadline passed."""

    def __init__(self, message: str, *, slow: bool = False) -> None:
        super().__init__(message)
        self.slow = slow


class BudgetSpent(Exception):
    """The client's request budget is spent (nothing was sent)."""


class DeadlineExceeded(Exception):
    """Raised by a transport when the request's deadline passed in `phase`."""

    def __init__(self, phase: Phase) -> None:
        super().__init__(phase)
        self.phase = phase


def _one_line(text: str, limit: int = 200) -> str:
    """Server-sent text ends up in messages: escape control characters, keep it short."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _strerror(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(str(exc)) or type(exc).__name__


# Transport exceptions to one-line messages: the first matching type wins (subclasses first).
_TRANSPORT_ERRORS: tuple[tuple[type[BaseException], Callable[[BaseException], str]], ...] = (
    (http.client.RemoteDisconnected, lambda e: "connection closed without an answer"),
    (ConnectionRefusedError, lambda e: "cannot connect: Connection refused"),
    (ConnectionResetError, lambda e: "connection reset"),
    (BrokenPipeError, lambda e: "connection reset"),
    (TimeoutError, lambda e: "timed out"),  # an idle read timeout; a passed deadline is DeadlineExceeded
    (ssl.SSLCertVerificationError, lambda e: f"TLS error ({getattr(e, 'verify_message', '') or e})"),
    (ssl.SSLError, lambda e: f"TLS error ({getattr(e, 'reason', '') or e})"),
    (socket.gaierror, lambda e: f"cannot resolve the host: {_strerror(e)}"),
    (http.client.IncompleteRead, lambda e: "the body ended early (incomplete chunk)"),
    (http.client.HTTPException, lambda e: f"not a valid HTTP answer ({type(e).__name__}: {_one_line(str(e), 80)})"),
    (OSError, lambda e: f"cannot connect: {_strerror(e)}"),
    (ValueError, lambda e: f"cannot fetch: {_one_line(str(e))}"),
)
_MAPPED = tuple(kind for kind, _ in _TRANSPORT_ERRORS)


def _transport_message(exc: BaseException) -> str:
    for kind, describe in _TRANSPORT_ERRORS:
        if isinstance(exc, kind):
            return describe(exc)
    return f"{type(exc).__name__}: {_one_line(str(exc))}"  # pragma: no cover - every mapped type is above


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


# --- the transport seam -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""  # sent as is (with its Content-Length); b"": none


@dataclass
class Deadline:
    """When one request must be done: `headers_by` for connect + status line + headers, `done_by` for all of
    it (monotonic seconds); `idle`: the longest any single read may wait (None: only the deadlines)."""

    start: float
    headers_by: float
    done_by: float
    idle: float | None = None

    @classmethod
    def after(cls, total: float, *, headers: float | None = None, idle: float | None = None) -> Deadline:
        start = time.monotonic()
        done_by = start + total
        return cls(start, min(done_by, start + headers) if headers is not None else done_by, done_by, idle)

    def end(self, phase: Phase) -> float:
        return self.done_by if phase == "body" else self.headers_by

    def socket_timeout(self, phase: Phase) -> float:
        """The timeout for the next socket operation of `phase`; DeadlineExceeded when no time is left."""
        left = self.end(phase) - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(phase)
        return left if self.idle is None else min(left, self.idle)

    def passed(self, phase: Phase) -> bool:
        return time.monotonic() >= self.end(phase) - _SLACK


@dataclass(frozen=True)
class Head:
    """Status line and headers; `length` is the body length to expect (None: until the end)."""

    status: int
    reason: str
    headers: Mapping[str, str]  # lower-case names
    length: int | None


class Exchange(Protocol):
    """One response whose body has not been read yet."""

    @property
    def head(self) -> Head: ...

    def read(self, n: int) -> bytes:
        """At most `n` body bytes (b"" at the end); DeadlineExceeded when the deadline passes."""
        ...

    def finish(self, complete: bool) -> None:
        """Done with it: `complete` when the whole body was read (the connection may be kept)."""
        ...


class Transport(Protocol):
    def open(self, request: Request, deadline: Deadline) -> Exchange:
        """Send `request` and read the status line and headers before `deadline.headers_by`."""
        ...

    def close(self) -> None: ...


# --- the watchdog -------------------------------------------------------------------------------


class _Alarm:
    __slots__ = ("sock", "done", "fired")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.done = False
        self.fired = False


WATCHDOG_THREAD = "http-deadlines"  # a fork leaves it behind safely (`pipeline.forked`)


class _Watchdog:
    """One daemon thread that shuts down the socket of every request still running at its deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, when: float, sock: socket.socket) -> _Alarm:
        alarm = _Alarm(sock)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=WATCHDOG_THREAD, daemon=True)
                self._thread.start()
            self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> bool:
        """Stop `alarm`; True when it had already fired (the socket is shut down)."""
        with self._cond:
            alarm.done = True
            return alarm.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, alarm = heapq.heappop(self._heap)
                    if not alarm.done:
                        alarm.done = alarm.fired = True
                        try:
                            alarm.sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()


# --- the http.client transport ------------------------------------------------------------------


class _HTTPSConnection(http.client.HTTPConnection):
    """http.client's request and response handling over a TLS socket ConnectionTransport makes itself
    (http.client.HTTPSConnection would build an SSLContext per connection and handshake without a deadline)."""

    default_port = http.client.HTTPS_PORT


class ConnectionTransport:
    """http.client connections, kept alive per (scheme, host); every blocking step bounded by the deadline."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._tls: ssl.SSLContext | None = None

    def open(self, request: Request, deadline: Deadline) -> Exchange:
        parts = urlsplit(request.url)
        key = (parts.scheme, parts.netloc)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            idle = self._idle.get(key)
            connection = idle.pop() if idle else None
        if connection is not None:
            try:
                return self._start(connection, key, request, target, deadline)
            except (BrokenPipeError, ConnectionResetError):  # RemoteDisconnected too: closed while idle
                pass  # once more on a fresh connection
        if not parts.hostname:
            raise ValueError(f"no host in {request.url}")
        kind = _HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.hostname, parts.port or kind.default_port)  # ValueError: a bad port
        return self._start(connection, key, request, target, deadline)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for connection in connections:
            connection.close()

    def _connect(self, connection: http.client.HTTPConnection, scheme: str, deadline: Deadline) -> _Alarm:
        sock = socket.create_connection((connection.host, connection.port), deadline.socket_timeout("connect"))
        alarm = _WATCHDOG.arm(deadline.headers_by, sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._handshake(sock, connection.host, deadline)
                alarm.sock = sock
        except BaseException:
            _WATCHDOG.disarm(alarm)
            sock.close()
            raise
        connection.sock = sock
        return alarm

    def _handshake(self, sock: socket.socket, host: str, deadline: Deadline) -> ssl.SSLSocket:
        """The TLS handshake, non-blocking, so that a server trickling it cannot pass the deadline."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        tls = self._tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)  # owns the fd now
        try:
            tls.setblocking(False)
            while True:
                try:
                    tls.do_handshake()
                    return tls
                except ssl.SSLWantReadError:
                    ready = select.select([tls], [], [], deadline.socket_timeout("connect"))[0]
                except ssl.SSLWantWriteError:
                    ready = select.select([], [tls], [], deadline.socket_timeout("connect"))[1]
                if not ready:
                    raise DeadlineExceeded("connect") if deadline.passed("connect") else TimeoutError
        except BaseException:
            tls.close()
            raise

    def _start(
        self,
        connection: http.client.HTTPConnection,
        key: tuple[str, str],
        request: Request,
        target: str,
        deadline: Deadline,
    ) -> _HttpExchange:
        phase: Phase = "connect"
        alarm: _Alarm | None = None
        response: http.client.HTTPResponse | None = None
        try:
            if connection.sock is None:
                alarm = self._connect(connection, key[0], deadline)
            else:
                alarm = _WATCHDOG.arm(deadline.headers_by, connection.sock)
            sock: socket.socket = connection.sock  # kept: http.client drops it when the response will close
            phase = "headers"
            sock.settimeout(deadline.socket_timeout(phase))
            connection.request(request.method, target, body=request.body or None, headers=dict(request.headers))
            response = connection.getresponse()
            if _WATCHDOG.disarm(alarm):
                raise DeadlineExceeded(phase)
        except BaseException as exc:
            fired = alarm is not None and _WATCHDOG.disarm(alarm)
            if response is not None:
                response.close()  # one that will close holds the socket, not the connection
            connection.close()
            if isinstance(exc, DeadlineExceeded):
                raise
            if fired or (isinstance(exc, TimeoutError) and deadline.passed(phase)):
                raise DeadlineExceeded(phase) from None
            raise  # a reused connection's BrokenPipe/ConnectionReset: open() retries on a fresh one
        head = Head(
            response.status,
            _one_line(response.reason or ""),
            {name.lower(): value for name, value in response.getheaders()},
            None if response.chunked else response.length,
        )
        return _HttpExchange(self, key, connection, sock, response, head, deadline)

    def _give_back(self, key: tuple[str, str], connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.setdefault(key, []).append(connection)
                return
        connection.close()


class _HttpExchange:
    def __init__(
        self,
        transport: ConnectionTransport,
        key: tuple[str, str],
        connection: http.client.HTTPConnection,
        sock: socket.socket,
        response: http.client.HTTPResponse,
        head: Head,
        deadline: Deadline,
    ) -> None:
        self.head = head
        self._transport = transport
        self._key = key
        self._connection = connection
        self._sock = sock
        self._response = response
        self._deadline = deadline
        self._alarm: _Alarm | None = None
        self._done = False

    def read(self, n: int) -> bytes:
        if self._alarm is None:
            self._alarm = _WATCHDOG.arm(self._deadline.done_by, self._sock)
        try:
            self._sock.settimeout(self._deadline.socket_timeout("body"))
            data = self._response.read1(n)  # one system call at most: read(n) would wait for all n bytes
        except TimeoutError:
            if self._alarm.fired or self._deadline.passed("body"):
                raise DeadlineExceeded("body") from None
            raise
        except (OSError, http.client.HTTPException):
            if self._alarm.fired:
                raise DeadlineExceeded("body") from None
            raise
        if not data and self._alarm.fired:
            raise DeadlineExceeded("body")
        return data

    def finish(self, complete: bool) -> None:
        if self._done:
            return
        self._done = True
        fired = self._alarm is not None and _WATCHDOG.disarm(self._alarm)
        keep = complete and not fired and not self._response.will_close
        if keep:
            try:
                self._response.read()  # nothing left (a known length was read): marks the response closed
            except (OSError, http.client.HTTPException):
                keep = False
            keep = keep and self._response.isclosed()
        if keep:
            self._transport._give_back(self._key, self._connection)
        else:
            self._response.close()  # a response that will close holds the socket, not the connection
            self._connection.close()


# --- the test double ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MockResponse:
    """What a MockTransport handler answers. `body`: chunks as the server would send them; an exception
    among them is raised when the reader gets there. `length`: the body length the transport expects
    (default: the Content-Length header, else until the chunks end)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | Sequence[bytes | BaseException] = b""
    reason: str = "OK"
    length: int | None = None


class _MockExchange:
    def __init__(self, head: Head, chunks: Iterable[bytes | BaseException], method: str) -> None:
        self.head = head
        self._chunks = iter(() if method == "HEAD" else chunks)
        self._pending = b""
        self.finished: bool | None = None

    def read(self, n: int) -> bytes:
        while not self._pending:
            item = next(self._chunks, b"")
            if isinstance(item, BaseException):
                raise item
            if not item:
                return b""
            self._pending = item
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def finish(self, complete: bool) -> None:
        self.finished = complete


class MockTransport:
    """A transport answering every request with `handler(request)` (which may raise, e.g.
    ConnectionResetError or DeadlineExceeded). `requests` lists what was sent, `exchanges` what was answered."""

    def __init__(self, handler: Callable[[Request], MockResponse]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.exchanges: list[_MockExchange] = []
        self.closed = False

    def open(self, request: Request, deadline: Deadline) -> Exchange:
        self.requests.append(request)
        answer = self.handler(request)
        headers = {k.lower(): v for k, v in answer.headers.items()}
        length = answer.length
        declared = headers.get("content-length", "")
        if length is None and declared.isdigit():
            length = int(declared)
        if request.method == "HEAD":
            length = 0
        chunks = [answer.body] if isinstance(answer.body, bytes) else list(answer.body)
        exchange = _MockExchange(Head(answer.status, answer.reason, headers, length), chunks, request.method)
        self.exchanges.append(exchange)
        return exchange

    def close(self) -> None:
        self.closed = True


# --- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    url: str  # after redirects


class Client:
    """Bounded requests over one transport (thread-safe); `requests` counts what was sent."""

    def __init__(
        self,
        *,
        user_agent: str,
        budget: int | None = None,
        max_redirects: int = MAX_REDIRECTS,
        error_body: int = ERROR_BODY_MAX_BYTES,
        transport: Transport | None = None,
    ) -> None:
        self.user_agent = user_agent
        self.budget = budget
        self.max_redirects = max_redirects
        self.error_body = error_body
        self.transport: Transport = transport if transport is not None else ConnectionTransport()
        self.requests = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        max_body: int,
        timeout: float,
        headers_timeout: float | None = None,
        idle: float | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        exact: bool = False,
        expect: int | None = None,
    ) -> Response:
        """`method url` done within `timeout` seconds in all (`headers_timeout`: connect + status line +
        headers; `idle`: any single read), following redirects. A 2xx body is read up to `max_body` bytes
        (`exact`: refuse more, or less than announced), another one up to `error_body`. With `expect`, any
        other final status is an HttpError. `body` is sent with the request (and again on a redirect).
        Raises HttpError, or BudgetSpent when the budget is spent."""
        deadline = Deadline.after(timeout, headers=headers_timeout, idle=idle)
        sent = {"User-Agent": self.user_agent, **(headers or {})}
        for _ in range(self.max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise HttpError(f"not an http(s) URL: {_one_line(url)}")
            response = self._once(Request(method, url, sent, body), deadline, max_body, exact, expect)
            location = response.headers.get("location")
            if response.status not in REDIRECTS or not location:
                if expect is not None and response.status != expect:
                    if 200 <= response.status < 300:
                        raise HttpError(f"HTTP {response.status}, expected {expect}")
                    raise HttpError(f"HTTP {response.status} {response.reason}".rstrip())
                return response
            target = urljoin(url, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise HttpError(f"redirected to a non-HTTP URL ({_one_line(target)})")
            url = target
        raise HttpError(f"more than {self.max_redirects} redirects")

    def _once(self, request: Request, deadline: Deadline, max_body: int, exact: bool, expect: int | None) -> Response:
        with self._lock:
            if self.budget is not None and self.requests >= self.budget:
                raise BudgetSpent
            self.requests += 1
        try:
            exchange = self.transport.open(request, deadline)
        except DeadlineExceeded as exc:
            raise self._too_slow(exc.phase, deadline) from None
        except _MAPPED as exc:
            raise HttpError(_transport_message(exc)) from None
        complete = False
        try:
            head = exchange.head
            wanted = 200 <= head.status < 300 and (expect is None or head.status == expect)
            if request.method == "HEAD":
                body, complete = b"", True
            elif wanted:
                body, complete = self._body(exchange, max_body, exact, deadline)
            else:
                body, complete = self._body(exchange, min(max_body, self.error_body), False, deadline)
            return Response(head.status, head.reason, head.headers, body, request.url)
        finally:
            exchange.finish(complete)

    def _body(self, exchange: Exchange, cap: int, exact: bool, deadline: Deadline) -> tuple[bytes, bool]:
        """The body (at most `cap` bytes) and whether all of it was read."""
        declared = exchange.head.length
        if exact and declared is not None and declared > cap:
            raise HttpError(f"announces {declared} bytes, more than the {cap} bytes expected: refused")
        chunks: list[bytes] = []
        total = 0
        ended = False
        want = cap + 1 if exact else cap  # exact: one byte more tells an endless body
        while total < want:
            try:
                chunk = exchange.read(min(CHUNK, want - total))
            except DeadlineExceeded:
                shown = f"{total} of {declared}" if declared is not None else str(total)
                raise self._too_slow("body", deadline, f" after {shown} body bytes") from None
            except _MAPPED as exc:
                raise HttpError(_transport_message(exc)) from None
            if not chunk:
                ended = True
                break
            chunks.append(chunk)
            total += len(chunk)
        if exact and total > cap:
            raise HttpError(f"more than the {cap} bytes expected: refused (endless data?)")
        if exact and declared is not None and total != declared:
            raise HttpError(f"the body ended after {total} of the {declared} bytes announced")
        complete = total == declared if declared is not None else ended
        return b"".join(chunks), complete

    @staticmethod
    def _too_slow(phase: Phase, deadline: Deadline, detail: str = "") -> HttpError:
        within = _seconds(deadline.end(phase) - deadline.start)
        what = {
            "connect": "no connection",
            "headers": "the headers did not arrive",
            "body": "no complete response",
        }[phase]
        return HttpError(f"too slow: {what} within {within} s (timed out{detail})", slow=True)
