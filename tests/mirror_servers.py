"""Bad HTTP mirrors on 127.0.0.1 for the mirror-probe tests, and a request counter for good ones.

- good, stale and partial mirrors are `pipeline.serve.serve_directory` on altered copies of a snapshot;
  `RequestLog` counts their requests from the server's debug log (one line per answered request);
- `NoRangeServer` ignores `Range` (always `200` and the whole body, like `python -m http.server`);
- `HangingServer` accepts connections and never answers; closing it drops them, so teardown never waits;
- `TricklingServer` answers at once, then sends its body one byte at a time (no read ever times out);
  with `in_headers=True` it sends `HTTP/1.1 200 OK` and then its headers one byte at a time, and
  `answers` lists paths it answers at once and in full (a mirror that goes slow after its first answer);
- `closed_port_url()` names a port nobody listens on (connection refused: a down mirror).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

_REQUEST_LINE = re.compile(r'"(GET|HEAD) (\S+) HTTP/1\.[01]" (\d{3})')


class RequestLog(logging.Handler):
    """Collects (method, decoded path, status) of every request `pipeline.serve` servers answer."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[tuple[str, str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _REQUEST_LINE.search(record.getMessage())
        if match is not None:
            path = unquote(urlsplit(match.group(2)).path)
            self.entries.append((match.group(1), path, int(match.group(3))))

    def under(self, prefix: str) -> list[tuple[str, str, int]]:
        """Requests whose path starts with `/<prefix>/`."""
        start = "/" + prefix.strip("/") + "/"
        return [entry for entry in self.entries if entry[1].startswith(start)]

    def clear(self) -> None:
        self.entries.clear()


@contextmanager
def request_log() -> Iterator[RequestLog]:
    """Count the requests of every `serve_directory` server while the block runs."""
    logger = logging.getLogger("pipeline.serve")
    handler = RequestLog()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def copy_tree(source: Path, target: Path) -> Path:
    """A mirror's copy of a snapshot (files are copied, not linked: tests alter them)."""
    shutil.copytree(source, target)
    return target


def rewrite(path: Path, data: bytes) -> None:
    """Replace a mirror's file by other bytes (an older copy of it)."""
    path.write_bytes(data)
    os.utime(path, (1_600_000_000, 1_600_000_000))


class _Tracked(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    def process_request(self, request: Any, client: Any) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-body (the probes read one piece, then close) is not an error."""
        return None

    def drop_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _NoRangeHandler(BaseHTTPRequestHandler):
    """Serves files under the root, always the whole body with 200, whatever `Range` says."""

    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _Tracked

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _respond(self, *, with_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.server._lock:
            self.server.requests.append((self.command, path))
        target = self.server.root / path.lstrip("/")
        if ".." in path.split("/") or not target.is_file():
            self.send_error(404)
            return
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Last-Modified", formatdate(target.stat().st_mtime, usegmt=True))
        self.end_headers()
        if with_body:
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


class NoRangeServer:
    """A mirror without Range support; `requests` lists (method, path) of what it was asked."""

    def __init__(self, root: Path) -> None:
        self._server = _Tracked(_NoRangeHandler, root)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._server.requests

    def close(self) -> None:
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> NoRangeServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HangingServer:
    """Accepts TCP connections and never answers; `accepted` counts them. Closing drops every connection."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self._socket.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()
        for connection in self._held:
            connection.close()
        self._held.clear()

    def __enter__(self) -> HangingServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RawServer:
    """A bare TCP server on 127.0.0.1 for hostile HTTP answers: one thread per connection runs `answer`,
    which ends when `stopping` is set; `close` stops and joins them all (bounded)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def answer(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._answer, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                self.answer(connection)
            except OSError:
                return

    def close(self) -> None:
        self.stopping.set()
        self._accepter.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TricklingServer(RawServer):
    """Answers every request at once with `200` and a large Content-Length, then sends one byte every
    `interval` seconds: no single read ever times out, only a whole-request deadline ends it.

    `in_headers`: sends the status line, then one header byte every `interval` (the headers never end).
    `answers`: path -> body answered at once and in full (then the connection is closed)."""

    def __init__(
        self, interval: float = 0.05, *, in_headers: bool = False, answers: dict[str, bytes] | None = None
    ) -> None:
        self.interval = interval
        self.in_headers = in_headers
        self.answers = answers or {}
        super().__init__()

    def answer(self, connection: socket.socket) -> None:
        connection.settimeout(1)
        request = connection.recv(65536)  # the request (small, one packet on loopback)
        path = request.split(b" ", 2)[1].decode("latin-1") if request.count(b" ") >= 2 else ""
        if path in self.answers:
            body = self.answers[path]
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            connection.sendall(head.encode() + body)
            return
        if self.in_headers:
            connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        else:
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while not self.stopping.wait(self.interval):
            connection.sendall(b"x")


def closed_port_url() -> str:
    """`http://127.0.0.1:<port>` where nothing listens (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
