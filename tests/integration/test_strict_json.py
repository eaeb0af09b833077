"""`verify` refuses a correctly signed index that is not strict JSON (NaN, a repeated key).

The publication of tests/integration/test_verify.py is reused: each test writes a new index whose JSON
is changed, signs it (detached) and a pointer naming it with the test key, and runs the audit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from pipeline.index import decode_pointer, encode_pointer
from pipeline.model import IndexRef
from pipeline.objects import index_key, index_torrent_key
from pipeline.signing import Signer, verify_signed_message
from pipeline.urls import join_url
from pipeline.verify import verify_publication
from tests.integration.test_verify import Published, pub, published  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def publish_index_text(pub: Published, mutate: object) -> tuple[str, Path]:  # noqa: F811
    """Re-publish the current index with `mutate(text)` applied, signed, under a pointer signed by
    the test key; (the index URL, the state file to use)."""
    key = pub.key
    current = decode_pointer(
        verify_signed_message((pub.dest / "latest.asc").read_bytes(), keyring=key.keyring, fingerprint=key.fingerprint)
    )
    original = zstandard.ZstdDecompressor().decompress((pub.dest / current.index.path).read_bytes()).decode()
    assert callable(mutate)
    text = mutate(original)
    assert text != original
    raw = text.encode()
    data = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    sha = hashlib.sha256(data).hexdigest()
    target = pub.dest / index_key(1, sha)
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    signer = Signer(gnupghome=key.gnupghome, key=key.fingerprint)
    target.with_name(target.name + ".sig").write_bytes(signer.sign_detached(data))
    hostile = replace(
        current, index=IndexRef(index_key(1, sha), len(data), len(raw), sha), index_torrent=index_torrent_key(1, sha)
    )
    (pub.dest / "latest.asc").write_bytes(signer.sign_message(encode_pointer(hostile)))
    return join_url(pub.public_url, index_key(1, sha)), pub.dest.parent / f"strict-{sha[:8]}.json"


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
    url, state = publish_index_text(pub, mutate)
    report = verify_publication(pub.spec(state_file=state))
    assert not report.ok
    assert f"{url}: index: not strict JSON: {message}" in report.problems, report.problems
    assert f"{url}: not usable, so no package was checked" in report.problems
    assert report.checked["packages"] == 0
    assert not state.exists()
