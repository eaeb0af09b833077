"""A read-only static HTTP server with real byte ranges, for the demo and the tests.

`python -m http.server` answers every request with `200` and the whole body; aria2 refuses that for
anything but a fresh single-connection download (notes/aria2-client.md section 2), so the demo and the
tests serve snapshots and destinations with this instead. It behaves like an object store:

- GET and HEAD only; `Accept-Ranges: bytes`; a single `Range` (`a-b`, `a-`, `-n`) gets `206` with
  `Content-Range`, an unsatisfiable one `416`; several ranges get the whole body (`200`, allowed by
  RFC 9110 and never asked for by aria2); a malformed `Range` is ignored;
- the request path is percent-decoded as UTF-8 (`%2B` is `+`, a raw `+` stays `+`, as on S3 with
  encoded keys), and `Content-Type` comes from `pipeline.objects.content_type_for(key)`;
- no directory listings: a directory is `404`, except `/` which serves `index.html` if present;
- nothing outside the root: `..` segments, NUL bytes and symlinks leading out of the root are `404`;
- optionally throttled (`rate_limit`: bytes per second for the whole server, as a mirror reached
  through one internet link); it counts the body bytes it sent, per client address (`served`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal
from urllib.parse import unquote, urlsplit

from pipeline.objects import content_type_for

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
THROTTLED_CHUNK_SIZE = 16 * 1024  # a throttled server sends small chunks: its rate stays smooth across connections
_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str, size: int) -> tuple[int, int] | Literal[False] | None:
    """One `Range` header against a file of `size` bytes.

    Returns `(first, last)` (inclusive) for a satisfiable single range, `False` for an unsatisfiable
    one (416), and None when the whole body should be sent (no usable header, several ranges, or a
    malformed one: RFC 9110 says to ignore what cannot be parsed).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec or "," in spec:
        return None
    match = _RANGE.match(spec)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if first_text:
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
        if last_text and last < first:
            return None
        if first >= size:
            return False
        return first, min(last, size - 1)
    if not last_text:
        return None
    suffix = int(last_text)
    if suffix == 0 or size == 0:
        return False
    return max(0, size - suffix), size - 1


class RateLimit:
    """At most `rate` bytes per second on average, shared by every caller (threads), bursts of `burst` bytes.

    Virtual scheduling: each `take(n)` reserves the next n/rate seconds of the link and sleeps until its
    reservation ends, so concurrent connections share the rate instead of each getting it."""

    def __init__(self, rate: int, *, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate {rate}: must be positive (bytes per second)")
        self.rate = rate
        self._burst_s = (burst if burst is not None else THROTTLED_CHUNK_SIZE) / rate
        self._free_at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._free_at, now)  # the link is busy until _free_at
            self._free_at = start + n / self.rate
            wait = self._free_at - now - self._burst_s  # up to a burst may be ahead of the rate
        if wait > 0:
            time.sleep(wait)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mirrorseed-serve"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection holds a thread at most this long
    server: _HTTPServer

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _respond(self, *, with_body: bool) -> None:
        found = self._resolve()
        if found is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        path, key = found
        try:
            handle = path.open("rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            wanted = parse_range(self.headers.get("Range", ""), size)
            if wanted is False:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if isinstance(wanted, tuple):
                first, last = wanted
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            else:
                first, last = 0, size - 1
                self.send_response(HTTPStatus.OK)
            length = last - first + 1
            self.send_header("Content-Type", content_type_for(key))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
            self.end_headers()
            if with_body and length > 0:
                self._copy(handle, first, length)

    def _copy(self, handle: BinaryIO, offset: int, length: int) -> None:
        handle.seek(offset)
        limit = self.server.rate_limit
        size = CHUNK_SIZE if limit is None else THROTTLED_CHUNK_SIZE
        try:
            while length > 0:
                chunk = handle.read(min(size, length))
                if not chunk:  # the file shrank under us: the client sees a short body
                    self.close_connection = True
                    return
                if limit is not None:
                    limit.take(len(chunk))
                self.wfile.write(chunk)
                self.server.count(self.client_address[0], len(chunk))
                length -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            # aria2 drops connections whose segment another connection finished
            self.close_connection = True

    def _resolve(self) -> tuple[Path, str] | None:
        """The file a request path names, and its key; None for anything that must be 404."""
        raw = self.path if self.path.startswith("/") else urlsplit(self.path).path  # origin or absolute form
        raw = raw.partition("?")[0].partition("#")[0]
        try:
            decoded = unquote(raw, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            return None
        if not decoded.startswith("/") or "\x00" in decoded:
            return None
        key = decoded[1:] or "index.html"
        segments = key.split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            return None
        root = self.server.root
        target = os.path.realpath(os.path.join(root, *segments))
        if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
            return None
        return Path(target), key


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 64  # aria2 and the mirror probes open many connections at once
    allow_reuse_address = True
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], root: str, family: socket.AddressFamily, rate_limit: RateLimit | None
    ) -> None:
        self.address_family = family
        self.root = root
        self.rate_limit = rate_limit
        self.served: dict[str, int] = {}  # body bytes sent, by client address
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def count(self, client: str, n: int) -> None:
        with self._lock:
            self.served[client] = self.served.get(client, 0) + n

    def served_copy(self) -> dict[str, int]:
        with self._lock:
            return dict(self.served)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client: Any) -> None:
        if isinstance(request, socket.socket):
            with self._lock:
                self._connections.add(request)
        super().process_request(request, client)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake every handler blocked on a keep-alive connection so its thread ends."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RangeServer:
    """A running server; `url` is `http://HOST:PORT` without a trailing slash. Use it as a context manager.

    `rate_limit` (bytes per second, None: as fast as it goes) caps what the whole server sends."""

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 0, rate_limit: int | None = None) -> None:
        real_root = os.path.realpath(root)
        if not os.path.isdir(real_root):
            raise NotADirectoryError(f"{root}: not a directory to serve")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        limit = None if rate_limit is None else RateLimit(rate_limit)
        self._server = _HTTPServer((host, port), real_root, family, limit)
        bound_port = self._server.server_address[1]
        self.root = Path(real_root)
        self.url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"serve {self.url}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False
        log.debug("serving %s at %s", real_root, self.url)

    def __enter__(self) -> RangeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def served(self) -> dict[str, int]:
        """Body bytes sent so far, by client address (a copy)."""
        return self._server.served_copy()

    @property
    def bytes_served(self) -> int:
        """Body bytes sent so far to every client (GET bodies; headers and HEAD not counted)."""
        return sum(self.served.values())

    def close(self) -> None:
        """Stop accepting, drop open connections and release the port. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._thread.join()


def serve_directory(
    root: Path, *, host: str = "127.0.0.1", port: int = 0, rate_limit: int | None = None
) -> RangeServer:
    """Serve `root` read-only at `host:port` (0 = a free port) from a daemon thread; returns it running."""
    return RangeServer(root, host=host, port=port, rate_limit=rate_limit)
