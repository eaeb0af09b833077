"""The only stage that writes to the destination: upload plan, then DESIGN section 4's order.

Content (package torrents, metalinks, signing keys) -> immutable index objects (create-only) ->
`latest.asc` (compare-and-swap on the ETag the run started from) -> listings.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import StorageError
from pipeline.model import Artifact, NullProgress, Progress
from pipeline.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Publication:
    """Everything one run publishes, grouped by how it must be written."""

    content: tuple[Artifact, ...]
    immutable: tuple[Artifact, ...]
    pointer: Artifact
    pointer_etag: str | None
    listings: tuple[Artifact, ...]


@dataclass(frozen=True)
class UploadPlan:
    put: tuple[Artifact, ...]
    skip: tuple[str, ...]

    @property
    def put_bytes(self) -> int:
        return sum(len(a.data) for a in self.put)


@dataclass(frozen=True)
class PublishResult:
    plan: UploadPlan
    written: bool


def plan_uploads(storage: Storage, artifacts: Sequence[Artifact]) -> UploadPlan:
    """Put what is missing or different; skip what the destination already holds byte for byte."""
    put: list[Artifact] = []
    skip: list[str] = []
    for artifact in artifacts:
        existing = storage.head(artifact.key)
        if existing is not None and existing.etag == hashlib.sha256(artifact.data).hexdigest():
            skip.append(artifact.key)
        else:
            put.append(artifact)
    return UploadPlan(tuple(put), tuple(skip))


def _check_immutable(storage: Storage, plan: UploadPlan) -> None:
    for artifact in plan.put:
        if storage.head(artifact.key) is not None:
            raise StorageError(
                f"{artifact.key}: exists in the destination with different bytes and index objects are never "
                "overwritten; another publisher uses this destination, or the previous pointer was lost"
            )


def _put(storage: Storage, artifact: Artifact) -> None:
    storage.put(artifact.key, artifact.data, content_type=artifact.content_type, cache_control=artifact.cache_control)


def publish(
    storage: Storage, publication: Publication, *, dry_run: bool = False, progress: Progress | None = None
) -> PublishResult:
    """Write `publication` in order. With dry_run, only compute the plan."""
    progress = progress or NullProgress()
    content_plan = plan_uploads(storage, publication.content)
    immutable_plan = plan_uploads(storage, publication.immutable)
    _check_immutable(storage, immutable_plan)
    listing_plan = plan_uploads(storage, publication.listings)
    plan = UploadPlan(
        put=content_plan.put + immutable_plan.put + (publication.pointer,) + listing_plan.put,
        skip=content_plan.skip + immutable_plan.skip + listing_plan.skip,
    )
    if dry_run:
        return PublishResult(plan, written=False)

    progress.start("publish", total=len(plan.put), unit="objects")
    for artifact in content_plan.put:
        _put(storage, artifact)
        progress.advance(1, len(artifact.data))
    for artifact in immutable_plan.put:
        storage.put_conditional(
            artifact.key,
            artifact.data,
            content_type=artifact.content_type,
            cache_control=artifact.cache_control,
            if_match=None,
        )
        progress.advance(1, len(artifact.data))
    pointer = publication.pointer
    storage.put_conditional(
        pointer.key,
        pointer.data,
        content_type=pointer.content_type,
        cache_control=pointer.cache_control,
        if_match=publication.pointer_etag,
    )
    progress.advance(1, len(pointer.data))
    log.info("committed %s", pointer.key)
    for artifact in listing_plan.put:
        _put(storage, artifact)
        progress.advance(1, len(artifact.data))
    progress.finish()
    return PublishResult(plan, written=True)
