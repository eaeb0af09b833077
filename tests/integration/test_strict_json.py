"""`verify` refuses a correctly signed index shard that is not strict JSON (NaN, a repeated key).

The publication of tests/integration/test_verify.py is reused: each test writes a new shard whose JSON is
changed, and a pointer naming it (its size and SHA-256, of the object and of the JSON, all true), signed
with the test key, and runs the audit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from pipeline.objects import shard_key
from pipeline.urls import join_url
from pipeline.verify import verify_publication
from tests.integration.test_verify import Published, pub, published, sign_pointer  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def publish_index_text(pub: Published, mutate: object) -> tuple[str, Path, str, int]:  # noqa: F811
    """Re-publish the first shard with `mutate(text)` applied, under a pointer signed by the test key;
    (the shard URL, the state file to use, the shard's name, the packages of the other shards)."""
    pointer = pub.pointer()
    first = pointer.shards[0]
    original = zstandard.ZstdDecompressor().decompress((pub.dest / first.path).read_bytes()).decode()
    assert callable(mutate)
    text = mutate(original)
    assert text != original
    raw = text.encode()
    data = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    sha = hashlib.sha256(data).hexdigest()
    (pub.dest / shard_key(sha)).write_bytes(data)
    hostile = replace(
        first, path=shard_key(sha), size=len(data), sha256=sha, uncompressed_size=len(raw),
        uncompressed_sha256=hashlib.sha256(raw).hexdigest(),
    )  # fmt: skip
    sign_pointer(pub.dest, pub.key, replace(pointer, shards=(hostile, *pointer.shards[1:])))
    others = sum(shard.packages for shard in pointer.shards[1:])
    return join_url(pub.public_url, shard_key(sha)), pub.dest.parent / f"strict-{sha[:8]}.json", first.name, others


def first_size(text: str) -> str:
    match = re.search(r'"size":[0-9]+', text)
    assert match is not None
    return match.group()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        # the same key twice with the same value: json.loads keeps one, every other check passes
        (lambda t: t.replace(first_size(t), first_size(t) + "," + first_size(t), 1), "duplicate key 'size'"),
        (lambda t: t.replace('"repo":', '"repo":"other","repo":', 1), "duplicate key 'repo'"),
        (lambda t: t.replace(first_size(t), '"size":NaN', 1), "NaN is not a JSON number"),
        (lambda t: t.replace(first_size(t), first_size(t) + ',"x":-Infinity', 1), "-Infinity is not a JSON number"),
    ],
    ids=["repeated-size", "repeated-repo", "nan", "minus-infinity"],
)
def test_verify_refuses_a_signed_index_that_is_not_strict_json(
    pub: Published,  # noqa: F811
    mutate: object,
    message: str,
) -> None:
    url, state, name, others = publish_index_text(pub, mutate)
    report = verify_publication(pub.spec(state_file=state))
    assert not report.ok
    assert f"{url}: index: not strict JSON: {message}" in report.problems, report.problems
    assert f"{url}: not usable, so no package of shard {name!r} was checked" in report.problems
    assert report.checked["packages"] == others  # the other shards' packages only: none of this shard's
    assert not state.exists()
