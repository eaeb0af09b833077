"""Where files are hashed, chosen by the `executor` setting: `local` or `dask://HOST:PORT`.

`local` is hashing.local_pool (processes on this machine). `dask://HOST:PORT` connects a
`distributed.Client` to that Dask scheduler and sends it the same `hash_batch` calls, one task per
batch; its workers read the files at the paths this process scanned, so they must mount the snapshot
at the same path. Results come back to this process only, which alone writes the state cache and the
outputs: they are the same bytes as a local run's. `distributed` is imported only when a dask://
executor is opened (`pip install 'mirrorseed[dask]'`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config import DASK_EXECUTOR
from pipeline.errors import ConfigError, ExecutorError, SnapshotError
from pipeline.hashing import ExecutorFactory, local_pool

T = TypeVar("T")

DASK_SCHEME = "dask://"

# How long connecting to the scheduler, and then waiting for its first worker, may take.
CONNECT_TIMEOUT = 10
WORKERS_TIMEOUT = 10

MOUNT_FIX = "mount the snapshot at the same path on every worker (infra/dask/README.md)"


def open_executor(spec: str, *, snapshot: Path) -> ExecutorFactory:
    """The ExecutorFactory the `executor` setting names; `snapshot` is the root every worker must see."""
    if spec == "local":
        return local_pool
    if DASK_EXECUTOR.fullmatch(spec) is None:  # load_settings checked it
        raise ConfigError(f"executor: {spec!r} is not local or dask://HOST:PORT")
    address = "tcp://" + spec[len(DASK_SCHEME) :]

    @contextmanager
    def dask_cluster(workers: int) -> Iterator[Executor]:  # workers: the local pool's size, not used here
        yield from _dask_executor(spec, address, os.fspath(snapshot))

    return dask_cluster


def _dask_executor(spec: str, address: str, root: str) -> Iterator[Executor]:
    try:
        from distributed import Client, KilledWorker
    except ImportError:
        raise ConfigError(
            f"executor: {spec} needs Dask's distributed package; pip install 'mirrorseed[dask]' "
            '(or set executor = "local")'
        ) from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise ExecutorError(
            f"{spec}: no Dask scheduler answered within {CONNECT_TIMEOUT} s ({err}); start one there "
            f"(dask scheduler) or fix the executor setting"
        ) from err
    try:
        _check_workers(client, spec, root)
        inner = client.get_executor(pure=False)
        try:
            yield _OnWorker(inner, root)
        except KilledWorker as err:
            raise ExecutorError(
                f"{spec}: a hash batch lost its Dask worker too many times ({err}); check the workers' logs "
                "and memory, then re-run"
            ) from err
        except CancelledError as err:
            raise ExecutorError(f"{spec}: the Dask scheduler dropped the hash batches; check it and re-run") from err
        finally:
            inner.shutdown(wait=False)
    finally:
        client.close()


def _check_workers(client: Any, spec: str, root: str) -> None:
    """Wait (bounded) for a worker; then every worker must see the snapshot root."""
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
    except TimeoutError as err:
        raise ExecutorError(
            f"{spec}: the Dask scheduler has no worker after {WORKERS_TIMEOUT} s; start workers on the mirror "
            f"hosts (dask worker tcp://{spec[len(DASK_SCHEME) :]}), with the snapshot mounted at {root}"
        ) from err
    blind = {worker: problem for worker, problem in client.run(snapshot_problem, root).items() if problem}
    if blind:
        raise _blind_worker(root, blind)


def _blind_worker(root: str, problems: dict[str, str]) -> ExecutorError:
    named = "; ".join(f"{worker}: {problem}" for worker, problem in sorted(problems.items()))
    return ExecutorError(f"{root}: not readable on Dask worker {named}; {MOUNT_FIX}")


def snapshot_problem(root: str) -> str | None:
    """Run on a worker: why this process cannot read the snapshot directory `root`, or None."""
    try:
        os.listdir(root)
    except OSError as err:
        return err.strerror or str(err)
    return None


def _on_worker(root: str, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on a Dask worker; a file it cannot open because the whole snapshot is out of this worker's
    reach (a worker that joined after the check) is reported as that, naming the worker."""
    try:
        return fn(*args)
    except SnapshotError:
        problem = snapshot_problem(root)
        if problem is None:
            raise
        from distributed import get_worker

        raise _blind_worker(root, {get_worker().address: problem}) from None


class _OnWorker(Executor):
    """Submits `fn(*args)` to the Dask executor wrapped in `_on_worker`."""

    def __init__(self, inner: Executor, root: str) -> None:
        self._inner = inner
        self._root = root

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if kwargs:
            raise TypeError("keyword arguments are not sent to Dask workers")
        return self._inner.submit(_on_worker, self._root, fn, *args)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait)
