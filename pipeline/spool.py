"""A spool: the run's generated objects kept on disk, not in memory, until publish sends them.

Torrents, metalinks and listing pages of a 63,000-package repository weigh a few hundred MB in
memory; here each is appended once to one anonymous temporary file (unlinked at creation, so it
vanishes with the process) and the run keeps only a `SpooledArtifact` per object: key, headers,
size, SHA-256 and its offset. Publish reads them back in batches.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from pipeline.errors import PipelineError
from pipeline.model import Artifact


@dataclass(frozen=True, slots=True)
class SpooledArtifact:
    """An object written to a Spool: what the upload plan needs, without the bytes."""

    key: str
    size: int
    sha256: str
    content_type: str
    cache_control: str
    offset: int


class Spool:
    """Append-only store of artifact bytes in one unlinked temporary file."""

    def __init__(self, directory: str | None = None) -> None:
        try:
            self._file = tempfile.TemporaryFile(prefix="mirrorseed-spool-", dir=directory)
        except OSError as exc:
            where = directory or tempfile.gettempdir()
            raise PipelineError(f"{where}: cannot create the spool file ({exc.strerror}); set TMPDIR") from exc
        self._end = 0

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def bytes_written(self) -> int:
        return self._end

    def add(self, artifact: Artifact) -> SpooledArtifact:
        data = artifact.data
        try:
            written = os.pwrite(self._file.fileno(), data, self._end)
        except OSError as exc:
            raise PipelineError(f"spool: cannot write {artifact.key} ({exc.strerror}); free space in TMPDIR") from exc
        if written != len(data):
            raise PipelineError(f"spool: short write of {artifact.key}; free space in TMPDIR")
        ref = SpooledArtifact(
            key=artifact.key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=artifact.content_type,
            cache_control=artifact.cache_control,
            offset=self._end,
        )
        self._end += len(data)
        return ref

    def add_all(self, artifacts: Iterable[Artifact]) -> tuple[SpooledArtifact, ...]:
        return tuple(self.add(artifact) for artifact in artifacts)

    def read(self, ref: SpooledArtifact) -> bytes:
        data = os.pread(self._file.fileno(), ref.size, ref.offset)
        if len(data) != ref.size:
            raise PipelineError(f"spool: {ref.key} is truncated in the spool file")
        return data

    def load(self, ref: SpooledArtifact) -> Artifact:
        return Artifact(
            key=ref.key, data=self.read(ref), content_type=ref.content_type, cache_control=ref.cache_control
        )

    def load_many(self, refs: Sequence[SpooledArtifact]) -> list[Artifact]:
        return [self.load(ref) for ref in refs]
