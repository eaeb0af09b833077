"""pipeline.spool: artifacts kept on disk, read back exactly."""

from __future__ import annotations

import hashlib

from pipeline.model import Artifact
from pipeline.objects import make_artifact
from pipeline.spool import Spool, SpooledArtifact


def test_spooled_artifacts_read_back_byte_for_byte_with_their_headers() -> None:
    artifacts = [make_artifact(f"torrents/p/{i}.torrent", bytes([i % 251]) * (i * 37)) for i in range(300)]
    with Spool() as spool:
        refs = spool.add_all(artifacts)
        assert spool.bytes_written == sum(len(a.data) for a in artifacts)
        for artifact, ref in zip(artifacts, refs, strict=True):
            assert ref.sha256 == hashlib.sha256(artifact.data).hexdigest() and ref.size == len(artifact.data)
            assert spool.load(ref) == artifact
        assert spool.load_many(list(reversed(refs))) == list(reversed(artifacts))


def test_a_ref_holds_no_bytes() -> None:
    with Spool() as spool:
        ref = spool.add(Artifact("k", b"x" * 100_000, "application/octet-stream", "no-cache"))
    assert not hasattr(ref, "data") and not hasattr(ref, "__dict__")
    assert isinstance(ref, SpooledArtifact) and ref.offset == 0
