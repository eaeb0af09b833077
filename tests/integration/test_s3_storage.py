"""S3Storage against a real S3 server (SeaweedFS `weed mini`): the Storage protocol, keys S3 treats
specially, headers as an anonymous HTTP client sees them, conditional writes, and the bad-input cases.

Also the server regressions of shared/notes/object-storage.md: anonymous GET with the stored type, Range
-> 206, anonymous PUT/LIST denied, If-None-Match on an existing key -> 412, the conditional-write probe.
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from pipeline.config import Settings, s3_config
from pipeline.errors import PublishConflictError, StorageError
from pipeline.model import Artifact
from pipeline.objects import make_artifact
from pipeline.storage import S3Config, Storage, open_storage
from pipeline.storage.s3 import MULTIPART_THRESHOLD, S3Storage
from pipeline.urls import join_url
from tests.s3_server import SeaweedServer
from tests.s3_server import anonymous_request as http

pytestmark = pytest.mark.integration

SPECIAL_KEYS = (
    "torrents/pool/main/libs/libstdc++6/libstdc++6_12.2.0-14_amd64.deb.torrent",
    "torrents/with space/a b.torrent",
    "torrents/tilde/1.0~rc1-1.torrent",
    "metalinks/epoch/2:1.0-1.meta4",
    "listings/ünïcödé/日本語.html",
    "odd/percent%20and&amp;=;.txt",
)


def fast_settings(endpoint: str, **overrides: object) -> S3Config:
    """What the tests use: 2 attempts, 1-2 s timeouts."""
    values: dict[str, object] = {
        "s3_endpoint_url": endpoint,
        "s3_region": "us-east-1",
        "s3_max_attempts": 2,
        "s3_connect_timeout": 1,
        "s3_read_timeout": 2,
        "upload_concurrency": 4,
    }
    values.update(overrides)
    return s3_config(Settings(**values))  # type: ignore[arg-type]


@pytest.fixture
def s3_env(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


@pytest.fixture
def bucket(s3_env: SeaweedServer) -> str:
    return s3_env.make_bucket(f"t-{uuid.uuid4().hex[:16]}")


@pytest.fixture
def storage(s3_env: SeaweedServer, bucket: str) -> Iterator[S3Storage]:
    store = open_storage(f"s3://{bucket}/mirror/v1", fast_settings(s3_env.endpoint))
    assert isinstance(store, S3Storage)
    yield store


# --- server regressions (object-storage.md) ---------------------------------------------------------------


def test_anonymous_reads_allowed_writes_and_listing_denied(s3_env: SeaweedServer, storage: S3Storage) -> None:
    data = bytes(range(256)) * 4
    storage.put("index/1-abc/index.json.zst", data, content_type="application/zstd", cache_control="no-cache")
    base = s3_env.public_url(storage.bucket, storage.prefix)
    url = join_url(base, "index/1-abc/index.json.zst")

    status, headers, body = http(url)
    assert (status, body) == (200, data)
    assert headers["Content-Type"] == "application/zstd"

    status, headers, body = http(url, headers={"Range": "bytes=0-99"})
    assert status == 206 and body == data[:100]
    assert headers["Content-Range"] == f"bytes 0-99/{len(data)}"

    status, headers, _ = http(url, method="HEAD")
    assert status == 200 and headers["Content-Type"] == "application/zstd"

    assert http(join_url(base, "index/evil"), method="PUT", data=b"x")[0] == 403
    assert http(url, method="PUT", data=b"x")[0] == 403
    assert http(url)[2] == data, "an anonymous PUT must not change the object"
    assert http(url, method="DELETE")[0] == 403
    bucket_url = s3_env.public_url(storage.bucket)
    assert http(bucket_url + "?list-type=2")[0] == 403
    assert http(bucket_url + "/")[0] == 403


def test_bucket_without_policy_is_private(s3_env: SeaweedServer) -> None:
    private = s3_env.make_bucket(f"p-{uuid.uuid4().hex[:16]}", public_read=False)
    store = S3Storage.from_url(f"s3://{private}", fast_settings(s3_env.endpoint))
    store.put("a.txt", b"secret", content_type="text/plain", cache_control="no-cache")
    assert store.get("a.txt") is not None
    assert http(join_url(s3_env.public_url(private), "a.txt"))[0] == 403


def test_if_none_match_on_existing_key_is_412(s3_env: SeaweedServer, bucket: str) -> None:
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"1", ContentType="text/plain", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", ContentType="text/plain", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1"


def test_probe_passes_on_seaweedfs_and_leaves_nothing(storage: S3Storage) -> None:
    storage.probe_conditional_writes()
    assert storage.list() == []


# --- the Storage protocol ---------------------------------------------------------------------------------


def test_put_get_head_list_delete(storage: S3Storage) -> None:
    store: Storage = storage  # used through the protocol only
    assert store.url == f"s3://{storage.bucket}/mirror/v1"
    assert store.get("latest.asc") is None and store.head("latest.asc") is None

    before = time.time()
    info = store.put("latest.asc", b"pointer", content_type="text/plain; charset=us-ascii", cache_control="no-cache")
    assert info.key == "latest.asc" and info.size == 7
    assert info.etag == '"' + hashlib.md5(b"pointer").hexdigest() + '"', "ETag kept verbatim, quotes included"

    stored = store.get("latest.asc")
    assert stored is not None and stored.data == b"pointer"
    assert stored.info.etag == info.etag and stored.info.size == 7
    assert stored.info.modified is not None and stored.info.modified >= before - 5

    head = store.head("latest.asc")
    assert head is not None and (head.key, head.size, head.etag) == ("latest.asc", 7, info.etag)

    store.put("index/1-a/index.json.zst", b"z" * 10, content_type="application/zstd", cache_control="no-cache")
    store.put("index/1-a.torrent", b"t", content_type="application/x-bittorrent", cache_control="no-cache")
    listed = {i.key: i for i in store.list()}
    assert set(listed) == {"latest.asc", "index/1-a/index.json.zst", "index/1-a.torrent"}, "relative keys"
    assert listed["latest.asc"].etag == info.etag and listed["index/1-a/index.json.zst"].size == 10
    assert listed["latest.asc"].modified is not None
    assert {i.key for i in store.list("index/")} == {"index/1-a/index.json.zst", "index/1-a.torrent"}
    assert {i.key for i in store.list("index/1-a/")} == {"index/1-a/index.json.zst"}
    assert store.list("nothing/") == []

    store.delete("index/1-a.torrent")
    store.delete("index/1-a.torrent")  # deleting a missing key is not an error
    assert store.head("index/1-a.torrent") is None
    assert {i.key for i in store.list()} == {"latest.asc", "index/1-a/index.json.zst"}


def test_prefix_isolates_destinations(s3_env: SeaweedServer, bucket: str) -> None:
    settings = fast_settings(s3_env.endpoint)
    one = S3Storage.from_url(f"s3://{bucket}/one", settings)
    two = S3Storage.from_url(f"s3://{bucket}/one-two", settings)
    root = S3Storage.from_url(f"s3://{bucket}", settings)
    one.put("a", b"1", content_type="text/plain", cache_control="no-cache")
    two.put("a", b"2", content_type="text/plain", cache_control="no-cache")
    assert [i.key for i in one.list()] == ["a"] and [i.key for i in two.list()] == ["a"]
    assert sorted(i.key for i in root.list()) == ["one-two/a", "one/a"]
    assert root.get("one/a") is not None and root.get("one/a").data == b"1"  # type: ignore[union-attr]


def test_list_paginates(storage: S3Storage) -> None:
    artifacts = [make_artifact(f"torrents/p/{i:04d}.torrent", b"%d" % i) for i in range(1100)]
    storage.put_many(artifacts)
    listed = storage.list("torrents/")
    assert sorted(i.key for i in listed) == sorted(a.key for a in artifacts)  # > 1000 keys: two pages


def test_keys_s3_treats_specially_round_trip_over_anonymous_http(s3_env: SeaweedServer, storage: S3Storage) -> None:
    artifacts = [make_artifact(key, f"payload of {key}".encode()) for key in SPECIAL_KEYS]
    infos = storage.put_many(artifacts)
    assert [i.key for i in infos] == list(SPECIAL_KEYS)
    assert sorted(i.key for i in storage.list()) == sorted(SPECIAL_KEYS)
    base = s3_env.public_url(storage.bucket, storage.prefix)
    for artifact in artifacts:
        stored = storage.get(artifact.key)
        assert stored is not None and stored.data == artifact.data, artifact.key
        status, headers, body = http(join_url(base, artifact.key))
        assert (status, body) == (200, artifact.data), artifact.key
        assert headers["Content-Type"] == artifact.content_type
        assert headers["Cache-Control"] == artifact.cache_control


def test_headers_stored_per_key(s3_env: SeaweedServer, storage: S3Storage) -> None:
    table = {
        "latest.asc": ("text/plain; charset=us-ascii", "no-cache"),
        "index/2-abcdef012345/index.json.zst": ("application/zstd", "public, max-age=31536000, immutable"),
        "index/2-abcdef012345/index.json.zst.sig": ("application/pgp-signature", "public, max-age=31536000, immutable"),
        "torrents/pool/h/hello.deb.torrent": ("application/x-bittorrent", "public, max-age=300"),
        "metalinks/pool/h/hello.deb.meta4": ("application/metalink4+xml", "public, max-age=300"),
        "signing-key.gpg": ("application/pgp-keys", "public, max-age=3600"),
        "index.html": ("text/html; charset=utf-8", "no-cache"),
        "blob.bin": ("application/octet-stream", "no-cache"),
    }
    for key in table:
        artifact = make_artifact(key, b"x" * 10)
        assert (artifact.content_type, artifact.cache_control) == table[key]
        storage.put(key, artifact.data, content_type=artifact.content_type, cache_control=artifact.cache_control)
    base = s3_env.public_url(storage.bucket, storage.prefix)
    for key, (content_type, cache_control) in table.items():
        status, headers, _ = http(join_url(base, key), method="HEAD")
        assert status == 200, key
        assert (headers["Content-Type"], headers["Cache-Control"]) == (content_type, cache_control), key
    metadata = s3_env.client().head_object(Bucket=storage.bucket, Key="mirror/v1/latest.asc")["Metadata"]
    assert metadata == {"sha256": hashlib.sha256(b"x" * 10).hexdigest()}


def test_put_conditional_create_only_and_compare_and_swap(storage: S3Storage) -> None:
    kw = {"content_type": "text/plain; charset=us-ascii", "cache_control": "no-cache"}
    first = storage.put_conditional("latest.asc", b"seq 1", if_match=None, **kw)
    with pytest.raises(PublishConflictError, match="latest.asc: already exists"):
        storage.put_conditional("latest.asc", b"seq 1 again", if_match=None, **kw)

    second = storage.put_conditional("latest.asc", b"seq 2", if_match=first.etag, **kw)
    assert second.etag != first.etag
    with pytest.raises(PublishConflictError) as caught:
        storage.put_conditional("latest.asc", b"seq 2 by a loser", if_match=first.etag, **kw)
    message = str(caught.value)
    assert "\n" not in message and "latest.asc" in message and "run again" in message
    stored = storage.get("latest.asc")
    assert stored is not None and stored.data == b"seq 2" and stored.info.etag == second.etag

    with pytest.raises(PublishConflictError):  # If-Match on a key that does not exist
        storage.put_conditional("never-written", b"x", if_match=first.etag, **kw)
    assert storage.head("never-written") is None


def test_put_many_returns_infos_in_order(storage: S3Storage) -> None:
    artifacts = [make_artifact(f"torrents/{i:03d}.torrent", bytes([i]) * (i + 1)) for i in range(60)]
    infos = storage.put_many(artifacts)
    assert [i.key for i in infos] == [a.key for a in artifacts]
    for artifact, info in zip(artifacts, infos, strict=True):
        assert info.size == len(artifact.data)
        assert info.etag == '"' + hashlib.md5(artifact.data).hexdigest() + '"'
    assert storage.put_many([]) == []


def test_put_many_failure_is_raised_after_the_pool_drains(storage: S3Storage) -> None:
    good = [make_artifact(f"torrents/{i}.torrent", b"x") for i in range(10)]
    bad = Artifact(key="torrents/../escape", data=b"x", content_type="text/plain", cache_control="no-cache")
    with pytest.raises(StorageError, match="escape"):
        storage.put_many([*good[:5], bad, *good[5:]])


def test_same_content(storage: S3Storage) -> None:
    info = storage.put("a.torrent", b"abc", content_type="application/x-bittorrent", cache_control="no-cache")
    listed = storage.list("a.torrent")[0]
    assert storage.same_content(listed, b"abc") and storage.same_content(info, b"abc")
    assert not storage.same_content(listed, b"abd")
    assert not storage.same_content(listed, b"abcd")


def test_large_object_goes_multipart_and_round_trips(s3_env: SeaweedServer, storage: S3Storage) -> None:
    data = hashlib.sha256(b"seed").digest() * (MULTIPART_THRESHOLD // 32 + 1000)
    info = storage.put("index/9-big/index.json.zst", data, content_type="application/zstd", cache_control="no-cache")
    assert info.size == len(data) and info.etag.rstrip('"').endswith("-2"), info.etag
    assert [(i.key, i.etag) for i in storage.list("index/9-big/")] == [(info.key, info.etag)], "same ETag as listed"
    stored = storage.get("index/9-big/index.json.zst")
    assert stored is not None and stored.data == data
    assert storage.same_content(info, data) and not storage.same_content(info, data[:-1] + b"\0")
    status, headers, _ = http(join_url(s3_env.public_url(storage.bucket, storage.prefix), info.key), method="HEAD")
    assert status == 200 and headers["Content-Type"] == "application/zstd"


@pytest.mark.parametrize("size", [1000, MULTIPART_THRESHOLD + 5000], ids=["one-put", "multipart"])
def test_a_file_is_put_and_got_through_a_file(s3_env: SeaweedServer, storage: S3Storage, size: int) -> None:
    data = (hashlib.sha256(b"file").digest() * (size // 32 + 1))[:size]
    key = ".mirrorseed/manifest.jsonl.zst"
    with tempfile.TemporaryFile() as source:
        source.write(data)  # read from its start, wherever it stands
        info = storage.put_file(key, source, content_type="application/zstd", cache_control="no-cache")
    assert info.size == size and [(i.key, i.etag) for i in storage.list(".mirrorseed/")] == [(key, info.etag)]
    metadata = s3_env.client().head_object(Bucket=storage.bucket, Key=f"mirror/v1/{key}")["Metadata"]
    assert metadata == {"sha256": hashlib.sha256(data).hexdigest()}
    with tempfile.TemporaryFile() as copy:
        got = storage.get_file(key, copy)
        copy.seek(0)
        assert copy.read() == data
    assert got is not None and (got.key, got.size, got.etag) == (key, size, info.etag)
    with tempfile.TemporaryFile() as copy:
        assert storage.get_file("missing", copy) is None and copy.tell() == 0


# --- bad input and faults ---------------------------------------------------------------------------------


def test_wrong_secret_is_one_line_without_the_secret(
    s3_env: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-123")
    store = S3Storage.from_url(f"s3://{bucket}", fast_settings(s3_env.endpoint))
    for call in (
        lambda: store.put("a", b"x", content_type="text/plain", cache_control="no-cache"),
        lambda: store.get("a"),
        lambda: store.list(),
    ):
        with pytest.raises(StorageError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message
        assert "SignatureDoesNotMatch" in message and "AWS_SECRET_ACCESS_KEY or s3_profile" in message
        assert "not-the-secret-123" not in message and "testkey" not in message


def test_unknown_access_key(s3_env: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    store = S3Storage.from_url(f"s3://{bucket}", fast_settings(s3_env.endpoint))
    with pytest.raises(StorageError, match="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or s3_profile"):
        store.put("a", b"x", content_type="text/plain", cache_control="no-cache")
    with pytest.raises(StorageError, match="check AWS_ACCESS_KEY_ID"):
        store.head("a")  # a bare 403: still points at the credentials


def test_missing_bucket(s3_env: SeaweedServer) -> None:
    store = S3Storage.from_url("s3://no-such-bucket-here/p", fast_settings(s3_env.endpoint))
    for call in (
        lambda: store.put("a", b"x", content_type="text/plain", cache_control="no-cache"),
        lambda: store.put("big", bytes(MULTIPART_THRESHOLD), content_type="text/plain", cache_control="no-cache"),
        lambda: store.put_conditional("a", b"x", content_type="text/plain", cache_control="no-cache", if_match=None),
        lambda: store.get("a"),
        lambda: store.list(),
        lambda: store.probe_conditional_writes(),
    ):
        with pytest.raises(StorageError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and not isinstance(caught.value, PublishConflictError)
        assert "no-such-bucket-here" in message and "does not exist" in message and "infra.bootstrap" in message


def test_endpoint_down_fails_within_the_timeouts(s3_env: SeaweedServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Storage.from_url("s3://webseed", fast_settings(f"http://127.0.0.1:{port}"))
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.put("latest.asc", b"x", content_type="text/plain", cache_control="no-cache")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in message
    assert "check s3_endpoint_url and the network" in message
    with pytest.raises(StorageError, match="cannot reach"):
        store.list()
