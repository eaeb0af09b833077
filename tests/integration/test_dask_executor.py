"""executor = "dask://HOST:PORT": the hash batches run on a Dask cluster (here a LocalCluster of two worker
processes on 127.0.0.1, or a `dask worker` started as another user), the outputs are a local run's bytes.

Every cluster is closed and every process started here is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import pipeline.executors
import pipeline.hashing
from pipeline.config import Settings
from pipeline.errors import ExecutorError
from pipeline.localtracker import free_port
from pipeline.run import release
from tests.integration.conftest import ROOT, SigningKey
from tests.integration.test_golden import published_files

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MOMENT = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
MiB = 1024 * 1024


def local_cluster(n_workers: int) -> Any:
    """Scheduler and nannied worker processes on 127.0.0.1; every port picked free (the scheduler's HTTP
    server too: by default it takes 8787, which a concurrent test run may hold)."""
    return distributed.LocalCluster(
        n_workers=n_workers, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0"
    )


@pytest.fixture
def cluster() -> Iterator[Any]:
    with local_cluster(2) as local:
        yield local


@pytest.fixture
def many_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send even these few files to the executor (decided in this process), a few per batch."""
    monkeypatch.setattr(pipeline.hashing, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(pipeline.hashing, "POOL_MIN_BYTES", 1)
    monkeypatch.setattr(pipeline.hashing, "BATCH_MAX_FILES", 3)


def dask_url(scheduler_address: str) -> str:
    return "dask://" + scheduler_address.removeprefix("tcp://")


def make_snapshot(root: Path, count: int = 30, big: int = 0) -> None:
    """Small files of several piece counts, then `big` sparse files of 8 MiB (hashed like any others)."""
    for i in range(count):
        path = root / f"dir{i % 3}" / f"file-{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (20_000 + 35_317 * i))
    for i in range(big):
        path = root / "big" / f"big-{i:02d}.iso"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"big file {i}\n".encode())
        os.truncate(path, 8 * MiB)


def settings(snapshot: Path, dest: Path, key: SigningKey, executor: str = "local") -> Settings:
    return Settings(
        snapshot=snapshot,
        format="flat",
        dest=str(dest),
        public_url="http://127.0.0.1:9/pub",
        repo="dask",
        webseeds=("http://127.0.0.1:9/mirror",),
        allow_peer_only=True,  # no mirror is up: these tests are about hashing
        key=key.fingerprint,
        gnupghome=key.gnupghome,
        state=dest.with_suffix(".sqlite"),
        executor=executor,
    )


def count_dask_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Files in each batch submitted to the Dask executor."""
    sent: list[int] = []
    real = pipeline.executors._OnWorker.submit

    def spy(self: Any, fn: Any, /, *args: Any) -> Any:
        sent.append(len(args[0]))
        return real(self, fn, *args)

    monkeypatch.setattr(pipeline.executors._OnWorker, "submit", spy)
    return sent


@pytest.mark.usefixtures("many_batches")
def test_dask_run_publishes_the_bytes_of_a_local_run(
    cluster: Any, signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "snap"
    make_snapshot(snap)
    local = release(settings(snap, tmp_path / "local", signing_key), now=lambda: MOMENT)
    sent = count_dask_batches(monkeypatch)
    on_dask = release(
        settings(snap, tmp_path / "dask", signing_key, dask_url(cluster.scheduler_address)), now=lambda: MOMENT
    )

    assert sum(sent) == 30 and len(sent) == 10  # every file went to the cluster, 3 a batch
    assert (on_dask.action, on_dask.files_hashed) == (local.action, local.files_hashed) == ("publish", 30)
    files = published_files(tmp_path / "dask", signing_key.fingerprint)
    assert any(k.startswith("torrents/") for k in files) and any(k.startswith("metalinks/") for k in files)
    assert files == published_files(tmp_path / "local", signing_key.fingerprint)


class KillOneWorker:
    """Progress sink: when the first hashed file comes back, SIGKILL a worker process that is hashing."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.stage = ""
        self.killed: tuple[str, int] | None = None

    def start(self, stage: str, total: int, unit: str = "files") -> None:
        self.stage = stage

    def advance(self, count: int = 1, nbytes: int = 0) -> None:
        if self.stage != "hash" or self.killed is not None:
            return
        busy = sorted(worker for worker, keys in self.client.processing().items() if keys)
        assert busy, "no worker had a batch left: make the snapshot bigger"
        pid = self.client.run(os.getpid, workers=[busy[0]])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        self.killed = (busy[0], pid)

    def finish(self) -> None:
        pass


def test_a_worker_killed_mid_run_costs_a_retry_not_the_run(
    cluster: Any, signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "snap"
    make_snapshot(snap, count=6, big=24)  # 192 MiB: above POOL_MIN_BYTES, 2 big files a batch
    monkeypatch.setattr(pipeline.hashing, "BATCH_MAX_BYTES", 16 * MiB)
    local = release(settings(snap, tmp_path / "local", signing_key), now=lambda: MOMENT)
    with distributed.Client(cluster, set_as_default=False) as client:
        killer = KillOneWorker(client)
        survived = release(
            settings(snap, tmp_path / "dask", signing_key, dask_url(cluster.scheduler_address)),
            progress=killer,
            now=lambda: MOMENT,
        )
        assert killer.killed is not None
        worker, pid = killer.killed
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # really gone (the nanny starts a new one)
    assert survived.files_hashed == local.files_hashed == 30
    assert published_files(tmp_path / "dask", signing_key.fingerprint) == published_files(
        tmp_path / "local", signing_key.fingerprint
    )


@pytest.mark.usefixtures("many_batches")
def test_an_unreachable_scheduler_is_one_line_naming_it(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "snap"
    make_snapshot(snap, count=4)
    monkeypatch.setattr(pipeline.executors, "CONNECT_TIMEOUT", 1)  # 10 s for operators
    url = f"dask://127.0.0.1:{free_port()}"
    with pytest.raises(ExecutorError) as caught:
        release(settings(snap, tmp_path / "dest", signing_key, url))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{url}: no Dask scheduler answered within 1 s")
    assert message.endswith("start one there (dask scheduler) or fix the executor setting")
    assert not (tmp_path / "dest" / "latest.asc").exists()


@pytest.mark.usefixtures("many_batches")
def test_a_scheduler_without_workers_is_one_line_saying_to_start_them(
    signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "snap"
    make_snapshot(snap, count=4)
    monkeypatch.setattr(pipeline.executors, "WORKERS_TIMEOUT", 1)  # 10 s for operators
    with local_cluster(0) as scheduler_only:
        url = dask_url(scheduler_only.scheduler_address)
        with pytest.raises(ExecutorError) as caught:
            release(settings(snap, tmp_path / "dest", signing_key, url))
    assert str(caught.value) == (
        f"{url}: the Dask scheduler has no worker after 1 s; start workers on the mirror hosts "
        f"(dask worker {scheduler_only.scheduler_address}), with the snapshot mounted at {snap}"
    )


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.usefixtures("many_batches")
# nobody may not reach the Python the venv links to (here under /root) and runs another patch release
@pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")
def test_a_worker_that_cannot_read_the_snapshot_is_one_line_naming_path_worker_and_fix(
    signing_key: SigningKey, tmp_path: Path
) -> None:
    """The worker runs as nobody: the snapshot (under pytest's 0700 temp dir) exists for this process only."""
    snap = tmp_path / "snap"
    make_snapshot(snap, count=4)
    scratch = Path(tempfile.mkdtemp(prefix="mirrorseed-dask-worker-"))
    scratch.chmod(0o777)
    log = tmp_path / "worker.log"  # what the worker said, if this test fails
    with (
        local_cluster(0) as scheduler_only,
        log.open("wb") as worker_log,
    ):
        worker = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(ROOT / ".venv/bin/dask"),
             "worker", scheduler_only.scheduler_address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
             "--local-directory", str(scratch)],
            env={"PATH": os.environ["PATH"], "HOME": str(scratch), "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL, stdout=worker_log, stderr=worker_log,
        )  # fmt: skip
        try:
            with distributed.Client(scheduler_only, set_as_default=False) as client:
                client.wait_for_workers(1, timeout=60)
                (address,) = client.scheduler_info()["workers"]
            url = dask_url(scheduler_only.scheduler_address)
            with pytest.raises(ExecutorError) as caught:
                release(settings(snap, tmp_path / "dest", signing_key, url))
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
            shutil.rmtree(scratch, ignore_errors=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"{snap}: not readable on Dask worker {address}: Permission denied; "
        "mount the snapshot at the same path on every worker (infra/dask/README.md)"
    )
    assert not (tmp_path / "dest" / "latest.asc").exists()
