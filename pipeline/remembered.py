"""What the state cache remembers of the publication a run made, so that the next run need not read it back.

A run that publishes compares what it built with the current publication, path by path (`pipeline.shards`
fingerprints). Reading them back means fetching, decompressing and parsing every shard the pointer names: ~28 s
of a 1%-changed run at a million Debian files. The run that made (or verified) the publication knows them
already: it keeps every path's fingerprint and the shards' header in the state cache, under the SHA-256 of the
`latest.asc` that names the shards. The next run whose destination's verified `latest.asc` has that SHA-256
reads them from there (~1 s at a million files); any other, or an audit, reads the shards.

The state vouches for them as it vouches for an unchanged index (`StateCache.remember_publication`): a lost or
stale cache costs the reading, never a wrong publication. The fingerprints are the same in every process
(`pipeline.shards.record_hash`); `RECIPE` names how they are made, and a cache of another recipe is not read.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence

from pipeline.filetable import FileTable
from pipeline.index import distinct
from pipeline.shards import PublishedFingerprints
from pipeline.state import StateCache

# Bump when a fingerprint is made differently (pipeline.shards, pipeline.index.package_json); `hash()` of a tuple of
# ints may differ between Python versions.
RECIPE = f"fingerprints/1 py{sys.version_info[0]}.{sys.version_info[1]}"

Header = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # the shards' webseeds, trackers, DHT nodes


def shard_header(webseeds: Sequence[str], trackers: Sequence[str], dht_nodes: Sequence[str]) -> Header:
    """The header every shard of a publication lists, as `run.read_index` reads it back (each de-duplicated)."""
    return tuple(distinct(webseeds)), tuple(distinct(trackers)), tuple(distinct(dht_nodes))


def remember(state: StateCache, pointer_sha256: str, header: Header | None, fingerprints: Mapping[str, int]) -> None:
    """Keep the `fingerprints` of every path the shards named by the `latest.asc` of SHA-256 `pointer_sha256`
    list, and their `header` (None: there is no shard)."""
    state.remember_published_files(pointer_sha256, RECIPE, _about(header), fingerprints.items())


def update(
    state: StateCache,
    before: str,
    pointer_sha256: str,
    header: Header | None,
    fingerprints: Mapping[str, int],
    paths: Iterable[str],
    removed: Iterable[str],
) -> bool:
    """`remember`, from what the state kept of the publication `before` (a `latest.asc`'s SHA-256): the
    fingerprints of `paths` (new or changed since) written and the `removed` paths dropped; False, and nothing
    written, when the state holds another publication's (then `remember` them all)."""
    rows = ((path, fingerprints[path]) for path in paths)
    return state.update_published_files(before, pointer_sha256, RECIPE, _about(header), rows, removed)


def _about(header: Header | None) -> list[list[str]] | None:
    """The header as the state keeps it (JSON)."""
    return None if header is None else [list(names) for names in header]


def recall(
    state: StateCache, pointer_sha256: str, files: FileTable
) -> tuple[PublishedFingerprints, Header | None] | None:
    """The fingerprints (by row of `files`, this run's scan) and header `remember` kept for `pointer_sha256`;
    None when the state holds none, or holds another publication's, or what it holds is malformed."""
    kept = state.published_files(pointer_sha256, RECIPE)
    if kept is None:
        return None
    about, rows = kept
    try:
        fingerprints = PublishedFingerprints.remembered(files, rows)
    except ValueError:
        return None
    if about is None:
        return fingerprints, None
    if not (isinstance(about, list) and len(about) == 3 and all(isinstance(names, list) for names in about)):
        return None
    if not all(isinstance(name, str) for names in about for name in names):
        return None
    return fingerprints, (tuple(about[0]), tuple(about[1]), tuple(about[2]))
