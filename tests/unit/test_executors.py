"""pipeline.executors: the `executor` setting picks where batches are hashed (the cluster itself: integration)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import executors
from pipeline.errors import ExecutorError, SnapshotError
from pipeline.hashing import local_pool


def test_local_is_the_process_pool(tmp_path: Path) -> None:
    assert executors.open_executor("local", snapshot=tmp_path) is local_pool


def test_a_batch_failing_on_a_worker_that_cannot_see_the_snapshot_names_path_worker_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that joined after the check: its first batch fails, and the line says why."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(distributed, "get_worker", lambda: SimpleNamespace(address="tcp://10.0.0.3:40123"))

    def unreadable(path: str) -> None:
        raise SnapshotError(f"{path}: cannot open it")

    missing = tmp_path / "not-mounted"
    with pytest.raises(ExecutorError) as caught:
        executors._on_worker(str(missing), unreadable, "pool/a.deb")
    assert str(caught.value) == (
        f"{missing}: not readable on Dask worker tcp://10.0.0.3:40123: No such file or directory; "
        "mount the snapshot at the same path on every worker (infra/dask/README.md)"
    )
    # the snapshot is there: the file's own error, as a local run gives it
    with pytest.raises(SnapshotError, match="pool/a.deb: cannot open it"):
        executors._on_worker(str(tmp_path), unreadable, "pool/a.deb")
