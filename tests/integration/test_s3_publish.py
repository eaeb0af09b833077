"""Publishing to a real S3 server (SeaweedFS on 127.0.0.1): what a user sees over anonymous HTTP, crashes,
a lost compare-and-swap, the endpoint going away mid-run, bad credentials and a missing bucket."""

from __future__ import annotations

import itertools
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import pipeline.publish
from pipeline.config import Settings, s3_config
from pipeline.errors import PublishConflictError, StorageError
from pipeline.render import ListingInput, user_recipe
from pipeline.run import published_records, read_current, release
from pipeline.serve import serve_directory
from pipeline.storage import open_storage
from tests.integration.conftest import PACKAGES, SigningKey, run_cli
from tests.integration.test_crash_safety import Fetch, client_view, crash_and_recover
from tests.s3_server import SeaweedServer, anonymous_request

pytestmark = pytest.mark.integration
_bucket_numbers = itertools.count()


@pytest.fixture
def bucket(s3_server: SeaweedServer) -> str:
    return s3_server.make_bucket(f"pub-{next(_bucket_numbers)}-{threading.get_ident() % 1000}")


@pytest.fixture
def s3_env(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {**s3_server.env(), "MIRRORSEED_S3_ENDPOINT_URL": s3_server.endpoint, "MIRRORSEED_S3_MAX_ATTEMPTS": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def s3_settings(server: SeaweedServer, bucket: str, snapshot: Path, key: SigningKey, mirror: str) -> Settings:
    return Settings(
        snapshot=snapshot,
        format="debian",
        dest=f"s3://{bucket}/pub",
        public_url=server.public_url(bucket, "pub"),
        repo="s3test",
        webseeds=(mirror,),
        allow_peer_only="127.0.0.1:9/" in mirror,  # a dead mirror: these tests are about the store
        key=key.fingerprint,
        gnupghome=key.gnupghome,
        s3_endpoint_url=server.endpoint,
        s3_max_attempts=2,
        s3_connect_timeout=1,
        s3_read_timeout=2,
    )


def anonymous_fetch(server: SeaweedServer, bucket: str) -> Fetch:
    base = server.public_url(bucket, "pub")

    def fetch(key: str) -> bytes | None:
        from pipeline.urls import join_url

        status, _, body = anonymous_request(join_url(base, key))
        return body if status == 200 else None

    return fetch


def test_user_recipe_against_the_bucket(
    s3_server: SeaweedServer, bucket: str, s3_env: dict[str, str], debian_repo: Path, signing_key: SigningKey,
    tmp_path: Path,
) -> None:  # fmt: skip
    with serve_directory(debian_repo) as mirror:
        settings = s3_settings(s3_server, bucket, debian_repo, signing_key, mirror.url)
        report = release(settings)
        assert report.action == "publish" and report.objects_put > 0
        # every object carries DESIGN section 4's headers, read anonymously as aria2 would
        status, headers, _ = anonymous_request(settings.public_url + "/latest.asc", method="HEAD")
        assert status == 200 and headers["Cache-Control"] == "no-cache"
        assert headers["Content-Type"].startswith("text/plain")
        storage = open_storage(settings.dest, s3_config(settings))
        current = read_current(storage, repo="s3test", keyring=signing_key.keyring, fingerprint=signing_key.fingerprint)
        assert current is not None
        shard = current.pointer.shards[0]
        status, headers, _ = anonymous_request(settings.public_url + "/" + shard.path, method="HEAD")
        assert headers["Content-Type"] == "application/zstd" and "immutable" in headers["Cache-Control"]
        records = published_records(open_storage(settings.dest, s3_config(settings)), current.pointer)
        example = next(r for r in records if "+" in r.path)
        recipe = user_recipe(
            ListingInput(repo="s3test", snapshot_format="debian", public_url=settings.public_url,
                         pointer=current.pointer, fingerprint=signing_key.fingerprint, records=records,
                         webseeds=current.webseeds),
            example,
        )  # fmt: skip
        user = tmp_path / "user"
        user.mkdir()
        done = subprocess.run(["bash", "-c", recipe], cwd=user, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert (user / "packages" / example.path.rsplit("/", 1)[1]).is_file()
        # every shard came from the bucket by its torrent (the bucket is the shards' webseed), kept by its JSON's hash
        assert all((user / "shards" / f"{s.uncompressed_sha256}.json").is_file() for s in current.pointer.shards)

        again = release(settings)
        assert again.action == "noop" and again.objects_put == 0


@pytest.mark.parametrize("fault", ["content:1", "pointer", "listings"])
def test_s3_destination_survives_a_kill(
    s3_server: SeaweedServer, bucket: str, s3_env: dict[str, str], debian_repo: Path, signing_key: SigningKey,
    fault: str,
) -> None:  # fmt: skip
    crash_and_recover(
        debian_repo, f"s3://{bucket}/pub", anonymous_fetch(s3_server, bucket), signing_key, fault, env=s3_env
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_run_that_loses_the_compare_and_swap_stops_and_changes_nothing_reachable(
    s3_server: SeaweedServer, s3_env: dict[str, str], debian_repo: Path, signing_key: SigningKey, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:  # fmt: skip
    if where == "s3":
        bucket = s3_server.make_bucket(f"cas-{next(_bucket_numbers)}")
        settings = s3_settings(s3_server, bucket, debian_repo, signing_key, "http://127.0.0.1:9/m")
        fetch = anonymous_fetch(s3_server, bucket)
    else:
        settings = Settings(
            snapshot=debian_repo, format="debian", dest=str(tmp_path / "dest"), public_url="http://127.0.0.1:9/p",
            repo="s3test", webseeds=("http://127.0.0.1:9/m",), allow_peer_only=True, key=signing_key.fingerprint,
            gnupghome=signing_key.gnupghome,
        )  # fmt: skip

        def fetch(key: str) -> bytes | None:
            path = tmp_path / "dest" / key
            return path.read_bytes() if path.is_file() else None

    release(settings)
    # Run B starts from sequence 1; while it is about to swap the pointer, run A (another machine, other
    # webseeds) commits sequence 2 first. B must lose cleanly.
    other = replace(settings, webseeds=("http://127.0.0.1:9/other",), state=tmp_path / "other.sqlite")
    original = pipeline.publish.fault_point
    raced = []

    def race(name: str, count: int = 0) -> None:
        if name == "pointer" and not raced:
            raced.append(True)
            monkeypatch.setattr(pipeline.publish, "fault_point", original)
            assert release(other).sequence == 2
        original(name, count)

    monkeypatch.setattr(pipeline.publish, "fault_point", race)
    loser = replace(settings, webseeds=("http://127.0.0.1:9/loser",))
    with pytest.raises(PublishConflictError, match="latest.asc"):
        release(loser)
    assert raced
    assert client_view(fetch, signing_key) == 2
    pointer_doc = fetch("latest.asc")
    assert pointer_doc is not None
    index = read_current(open_storage(settings.dest, s3_config(settings)), repo="s3test", keyring=signing_key.keyring,
                         fingerprint=signing_key.fingerprint)  # fmt: skip
    assert index is not None and index.webseeds == ("http://127.0.0.1:9/other",)


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server; `cut()` closes every connection and stops listening."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def proxy(s3_server: SeaweedServer) -> Iterator[CuttableProxy]:
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    proxy = CuttableProxy(port)
    yield proxy
    proxy.cut()


def test_endpoint_down_mid_run_is_a_clean_error_and_the_old_publication_stays(
    s3_server: SeaweedServer, bucket: str, s3_env: dict[str, str], debian_repo: Path, signing_key: SigningKey,
    proxy: CuttableProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = replace(
        s3_settings(s3_server, bucket, debian_repo, signing_key, "http://127.0.0.1:9/m"),
        s3_endpoint_url=f"http://127.0.0.1:{proxy.port}",
    )
    release(settings)
    original = pipeline.publish.fault_point

    def cut_at_index(name: str, count: int = 0) -> None:
        if name == "index":
            proxy.cut()
        original(name, count)

    monkeypatch.setattr(pipeline.publish, "fault_point", cut_at_index)
    changed = replace(settings, webseeds=("http://127.0.0.1:9/changed",))
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint") as caught:
        release(changed)
    assert "\n" not in str(caught.value)
    assert client_view(anonymous_fetch(s3_server, bucket), signing_key) == 1


@pytest.mark.parametrize("problem", ["wrong-secret", "missing-bucket"])
def test_bad_credentials_or_bucket_fail_in_one_line_and_write_nothing(
    s3_server: SeaweedServer, bucket: str, s3_env: dict[str, str], debian_repo: Path, signing_key: SigningKey,
    problem: str,
) -> None:  # fmt: skip
    env = {**s3_env, "GNUPGHOME": str(signing_key.gnupghome)}
    dest = f"s3://{bucket}/pub"
    if problem == "wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        needle = "AWS_SECRET_ACCESS_KEY"
    else:
        dest = "s3://no-such-bucket-here/pub"
        needle = "no-such-bucket-here"
    done = run_cli(
        "release", "--snapshot", str(debian_repo), "--dest", dest, "--key", signing_key.fingerprint,
        "--public-url", "http://127.0.0.1:9/pub", "--repo", "s3test", env=env,
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert len(PACKAGES) > 0


def test_a_store_without_conditional_writes_is_refused_unless_no_cas(
    s3_server: SeaweedServer, bucket: str, s3_env: dict[str, str], debian_repo: Path, signing_key: SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from pipeline.storage.s3 import S3Storage

    def ignores(self: S3Storage) -> None:
        raise StorageError(f"{self.endpoint}: the store ignores conditional writes (If-None-Match/If-Match)")

    monkeypatch.setattr(S3Storage, "probe_conditional_writes", ignores)
    settings = s3_settings(s3_server, bucket, debian_repo, signing_key, "http://127.0.0.1:9/m")
    with pytest.raises(StorageError, match="ignores conditional writes"):
        release(settings)
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert release(replace(settings, no_cas=True)).action == "publish"
    assert client_view(anonymous_fetch(s3_server, bucket), signing_key) == 1
