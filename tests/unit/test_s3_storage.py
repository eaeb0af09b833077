"""S3Storage without a real S3 server: URL parsing, the requests it sends, and error translation, against a
scripted stub HTTP server on 127.0.0.1 (including a store that ignores conditional headers)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from pipeline.config import Settings, s3_config
from pipeline.errors import ConfigError, PublishConflictError, StorageError
from pipeline.model import Artifact
from pipeline.storage import S3Config, open_storage
from pipeline.storage.s3 import REDACTED, S3Storage, parse_s3_url, redact

Reply = tuple[int, dict[str, str], bytes]


def s3_error(status: int, code: str, message: str = "stub error") -> Reply:
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return status, {"Content-Type": "application/xml"}, body.encode()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Stub:
    """`answer(request)` decides each reply; every request is recorded."""

    answer: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)
    endpoint: str = ""


def ignoring_store(request: Request) -> Reply:
    """A store that accepts every write and ignores If-None-Match / If-Match."""
    if request.method == "DELETE":
        return 204, {}, b""
    return 200, {"ETag": '"0123456789abcdef0123456789abcdef"'}, b""


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stub]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "stubkey",
        "AWS_SECRET_ACCESS_KEY": "stubsecret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    state = Stub(answer=ignoring_store)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                              self.rfile.read(length))  # fmt: skip
            state.requests.append(request)
            status, headers, body = state.answer(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _handle

        def log_message(self, format: str, *args: object) -> None:
            return None

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            return None  # a client that timed out and hung up: expected in test_read_timeout

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fast(endpoint: str, **overrides: object) -> S3Config:
    values: dict[str, object] = {
        "s3_endpoint_url": endpoint,
        "s3_region": "us-east-1",
        "s3_addressing_style": "path",
        "s3_max_attempts": 2,
        "s3_connect_timeout": 1,
        "s3_read_timeout": 1,
    }
    values.update(overrides)
    return s3_config(Settings(**values))  # type: ignore[arg-type]


# --- URLs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://webseed", ("webseed", "")),
        ("s3://webseed/", ("webseed", "")),
        ("s3://webseed/mirror", ("webseed", "mirror")),
        ("s3://my.bucket-1/a/b/", ("my.bucket-1", "a/b")),
    ],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3://Upper",
        "s3://ab",
        "s3://under_score",
        "s3://key:secret@bucket/p",
        "s3://bucket/p?x=1",
        "s3://bucket/a/../b",
        "s3://bucket/a//b",
        "http://bucket/p",
    ],
)
def test_parse_s3_url_refuses(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_s3_url(url)
    assert "\n" not in str(caught.value)


def test_open_storage_picks_s3(stub: Stub) -> None:
    store = open_storage("s3://webseed/mirror", fast(stub.endpoint))
    assert isinstance(store, S3Storage)
    assert (store.url, store.bucket, store.prefix, store.endpoint) == (
        "s3://webseed/mirror",
        "webseed",
        "mirror",
        stub.endpoint,
    )
    assert S3Storage.from_url("s3://webseed", s3_config(Settings())).url == "s3://webseed"


def test_unknown_profile_is_a_config_error(stub: Stub) -> None:
    with pytest.raises(ConfigError, match="s3_profile: no AWS profile 'nope'"):
        S3Storage.from_url("s3://webseed", fast(stub.endpoint, s3_profile="nope"))


def test_no_credentials(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Storage.from_url("s3://webseed", fast(stub.endpoint))
    with pytest.raises(StorageError, match="no usable AWS credentials .*AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"):
        store.get("latest.asc")
    assert stub.requests == []


# --- what goes on the wire --------------------------------------------------------------------------------


def test_put_sends_headers_and_no_default_checksums(stub: Stub) -> None:
    store = S3Storage.from_url("s3://webseed/mirror", fast(stub.endpoint))
    info = store.put("torrents/a b+c.torrent", b"data", content_type="application/x-bittorrent", cache_control="x")
    assert info.etag == '"0123456789abcdef0123456789abcdef"', "ETag kept as S3 returns it"
    (request,) = stub.requests
    assert request.method == "PUT" and request.path == "/webseed/mirror/torrents/a%20b%2Bc.torrent"
    assert request.body == b"data"
    headers = request.headers
    assert headers["content-type"] == "application/x-bittorrent" and headers["cache-control"] == "x"
    assert headers["x-amz-meta-sha256"] == "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
    assert headers["content-md5"] == "jXd/OF09/siBXSD3SWAm3A=="
    assert not [h for h in headers if h.startswith("x-amz-checksum") or h == "x-amz-sdk-checksum-algorithm"]
    assert "if-none-match" not in headers and "if-match" not in headers


def test_put_conditional_headers(stub: Stub) -> None:
    store = S3Storage.from_url("s3://webseed", fast(stub.endpoint))
    store.put_conditional("latest.asc", b"p", content_type="text/plain", cache_control="no-cache", if_match=None)
    store.put_conditional("latest.asc", b"p", content_type="text/plain", cache_control="no-cache", if_match='"e1"')
    first, second = stub.requests
    assert first.headers["if-none-match"] == "*" and "if-match" not in first.headers
    assert second.headers["if-match"] == '"e1"' and "if-none-match" not in second.headers


@pytest.mark.parametrize(
    ("reply", "if_match"),
    [
        (s3_error(412, "PreconditionFailed"), None),
        (s3_error(412, "PreconditionFailed"), '"old"'),
        (s3_error(409, "ConditionalRequestConflict"), '"old"'),
    ],
)
def test_conditional_failures_are_conflicts(stub: Stub, reply: Reply, if_match: str | None) -> None:
    stub.answer = lambda request: reply
    store = S3Storage.from_url("s3://webseed", fast(stub.endpoint))
    with pytest.raises(PublishConflictError) as caught:
        store.put_conditional(
            "latest.asc", b"p", content_type="text/plain", cache_control="no-cache", if_match=if_match
        )
    assert "latest.asc" in str(caught.value) and "\n" not in str(caught.value)
    assert len(stub.requests) == 1, "a lost compare-and-swap is not retried"


# --- the conditional-write probe --------------------------------------------------------------------------


def test_probe_refuses_a_store_that_ignores_conditional_headers(stub: Stub) -> None:
    store = S3Storage.from_url("s3://webseed/mirror", fast(stub.endpoint))
    with pytest.raises(StorageError) as caught:
        store.probe_conditional_writes()
    assert str(caught.value) == (
        f"{stub.endpoint}: the store ignores conditional writes (If-None-Match/If-Match); publishing would not be "
        "atomic; use a store that supports them or pass --no-cas with an external lock"
    )
    methods = [(r.method, r.path.split("?")[0]) for r in stub.requests]
    assert methods[0][0] == "PUT" and methods[0][1].startswith("/webseed/mirror/.mirrorseed/probe-")
    assert methods[-1] == ("DELETE", methods[0][1]), "the probe key is cleaned up"


def test_probe_passes_on_a_store_that_enforces_them(stub: Stub) -> None:
    def enforcing(request: Request) -> Reply:
        if request.method == "DELETE":
            return 204, {}, b""
        if len(stub.requests) > 1 and ("if-none-match" in request.headers or "if-match" in request.headers):
            return s3_error(412, "PreconditionFailed")
        return 200, {"ETag": '"e1"'}, b""

    stub.answer = enforcing
    S3Storage.from_url("s3://webseed", fast(stub.endpoint)).probe_conditional_writes()
    assert [r.method for r in stub.requests] == ["PUT", "PUT", "PUT", "DELETE"]
    assert stub.requests[2].headers["if-match"] != '"e1"'


def test_probe_refuses_a_store_that_ignores_only_if_match(stub: Stub) -> None:
    def half(request: Request) -> Reply:
        if request.method == "DELETE":
            return 204, {}, b""
        if len(stub.requests) > 1 and "if-none-match" in request.headers:
            return s3_error(412, "PreconditionFailed")
        return 200, {"ETag": '"e1"'}, b""

    stub.answer = half
    with pytest.raises(StorageError, match="ignores conditional writes"):
        S3Storage.from_url("s3://webseed", fast(stub.endpoint)).probe_conditional_writes()


def test_probe_on_a_store_without_them(stub: Stub) -> None:
    stub.answer = lambda r: (204, {}, b"") if r.method == "DELETE" else s3_error(501, "NotImplemented")
    with pytest.raises(StorageError, match="does not implement conditional writes .*--no-cas"):
        S3Storage.from_url("s3://webseed", fast(stub.endpoint)).probe_conditional_writes()


# --- error translation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (s3_error(403, "InvalidAccessKeyId"), "refused the credentials (InvalidAccessKeyId); check AWS_ACCESS_KEY_ID"),
        (s3_error(403, "SignatureDoesNotMatch"), "(SignatureDoesNotMatch); check AWS_ACCESS_KEY_ID/AWS_SECRET"),
        (s3_error(403, "AccessDenied"), "access denied (AccessDenied) when trying to write it"),
        (s3_error(404, "NoSuchBucket"), "the bucket 'webseed' does not exist at http://127.0.0.1:"),
        (s3_error(400, "InvalidArgument", "bad\nthing"), "S3 refused to write it (InvalidArgument: bad thing)"),
    ],
)
def test_client_errors_become_one_line(stub: Stub, reply: Reply, expected: str) -> None:
    stub.answer = lambda request: reply
    store = S3Storage.from_url("s3://webseed/m", fast(stub.endpoint))
    with pytest.raises(StorageError) as caught:
        store.put("torrents/x.torrent", b"x", content_type="text/plain", cache_control="no-cache")
    message = str(caught.value)
    assert message.startswith("s3://webseed/m/torrents/x.torrent: ") and expected in message, message
    assert "\n" not in message and "stubsecret" not in message and "stubkey" not in message
    assert not isinstance(caught.value, PublishConflictError)


def test_missing_key_is_none_and_server_errors_are_retried(stub: Stub) -> None:
    store = S3Storage.from_url("s3://webseed", fast(stub.endpoint))
    stub.answer = lambda request: s3_error(404, "NoSuchKey") if request.method == "GET" else (404, {}, b"")
    assert store.get("nothing") is None and store.head("nothing") is None
    stub.requests.clear()
    stub.answer = lambda request: s3_error(500, "InternalError")
    with pytest.raises(StorageError, match=r"S3 refused to read it \(InternalError"):
        store.get("x")
    assert len(stub.requests) == 2, "s3_max_attempts = 2"


def test_read_timeout(stub: Stub) -> None:
    def slow(request: Request) -> Reply:
        time.sleep(2.5)
        return 200, {}, b""

    stub.answer = slow
    store = S3Storage.from_url("s3://webseed", fast(stub.endpoint))
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.get("latest.asc")
    assert time.monotonic() - started < 9
    assert str(caught.value) == (
        f"s3://webseed/latest.asc: cannot reach the S3 endpoint {stub.endpoint} (read timed out while trying to "
        "read it); check s3_endpoint_url and the network"
    )


def test_endpoint_down(stub: Stub) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store = S3Storage.from_url("s3://webseed", fast(closed))
    started = time.monotonic()
    for call in (
        lambda: store.head("latest.asc"),
        lambda: store.put_many([]) or store.delete("x"),
        lambda: store.probe_conditional_writes(),
    ):
        with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint {closed} .*check s3_endpoint_url"):
            call()
    assert time.monotonic() - started < 15


def test_put_many_is_a_bounded_parallel_pool(stub: Stub) -> None:
    lock = threading.Lock()
    in_flight = [0, 0]  # now, highest

    def slow_put(request: Request) -> Reply:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return 200, {"ETag": f'"{request.path[-2:]}"'}, b""

    stub.answer = slow_put
    store = S3Storage.from_url("s3://webseed", fast(stub.endpoint, upload_concurrency=3))
    artifacts = [Artifact(f"t/{i:02d}", b"x", "application/x-bittorrent", "no-cache") for i in range(18)]
    infos = store.put_many(artifacts)
    assert [i.etag for i in infos] == [f'"{i:02d}"' for i in range(18)], "infos in input order"
    assert 1 < in_flight[1] <= 3


# --- secrets in debug logs -------------------------------------------------------------------------------

SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDM+stub/session+token=="


def test_debug_logs_never_show_the_session_token(
    stub: Stub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`--verbose` logs botocore at DEBUG: the request headers, the canonical request and the
    signature. The session token is sent (the store needs it) but never logged, nor the signatures."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    caplog.set_level(logging.DEBUG)
    store = S3Storage.from_url("s3://webseed/mirror", fast(stub.endpoint))
    store.put("torrents/a.torrent", b"data", content_type="application/x-bittorrent", cache_control="x")
    store.get("torrents/a.torrent")
    assert stub.requests[0].headers["x-amz-security-token"] == SESSION_TOKEN
    signature = stub.requests[0].headers["authorization"].rpartition("Signature=")[2]
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "x-amz-security-token" in logged.lower() and REDACTED in logged  # the debug lines were captured
    assert "stubsecret" not in logged
    for secret in (SESSION_TOKEN, SESSION_TOKEN[:20], quote(SESSION_TOKEN, safe=""), signature):
        assert secret not in logged, secret


@pytest.mark.parametrize(
    "line",
    [
        f"headers={{'Content-Type': b'a/b', 'X-Amz-Security-Token': b'{SESSION_TOKEN}', "
        "'Authorization': b'AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-security-token, Signature={'ab' * 32}'}}",
        f"CanonicalRequest:\nGET\n/b/k\n\nhost:h\nx-amz-security-token:{SESSION_TOKEN}\n\nhost;x-amz-security-token\n",
        f'http://h:9 "GET /b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Security-Token={quote(SESSION_TOKEN, safe="")}'
        f'&X-Amz-Signature={"cd" * 32} HTTP/1.1" 200 4',
        f"Signature:\n{'ef' * 32}",
    ],
    ids=["header", "canonical-request", "presigned-query", "botocore-auth"],
)
def test_redact_hides_tokens_and_signatures(line: str) -> None:
    cleaned = redact(line)
    for secret in (SESSION_TOKEN, quote(SESSION_TOKEN, safe=""), "ab" * 32, "cd" * 32, "ef" * 32, "FwoGZX"):
        assert secret not in cleaned
    assert REDACTED in cleaned
    assert redact(cleaned) == cleaned
    if "SignedHeaders" in line:  # the header names stay
        assert "SignedHeaders=host;x-amz-security-token, Signature=<redacted>" in cleaned
