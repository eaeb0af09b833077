"""The one exception tree. Messages name the offending file/key first and end with what to do."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error mirrorseed reports as one line and a non-zero exit code."""

    exit_code = 1


class ConfigError(PipelineError):
    """Settings are missing, contradictory or malformed."""

    exit_code = 2


class SnapshotError(PipelineError):
    """The snapshot is unreadable, inconsistent with its own metadata, or unsafe to publish."""

    exit_code = 3


class SigningError(PipelineError):
    """The signing key is missing, expired, expiring too soon, or gpg failed."""

    exit_code = 4


class StorageError(PipelineError):
    """The destination cannot be read or written."""

    exit_code = 5


class PublishConflictError(StorageError):
    """Another run changed the pointer since this run started (compare-and-swap lost)."""

    exit_code = 6


class SeedError(PipelineError):
    """The seed box cannot run: aria2 missing or failing, a snapshot it could write, a torrent that does not check."""

    exit_code = 7


class TrackerError(PipelineError):
    """A local opentracker (demo, benchmark, tests) cannot start, or does not take its whitelist."""

    exit_code = 8


class ExecutorError(PipelineError):
    """The hashing executor cannot be used: its Dask scheduler does not answer, has no workers, or a worker
    cannot read the snapshot."""

    exit_code = 9
