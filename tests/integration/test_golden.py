"""Golden publications: the demo snapshot and a flat snapshot, published with a fixed clock and a fixed key,
compared byte for byte with the files committed under tests/golden/.

What is compared: every package torrent and metalink, every listing page, each index shard's JSON
(decoded), the shards' torrents and deltas. What is not: `latest.asc`, which gpg makes anew at each
signing, and the signing keys. The mirror is served on a fixed loopback port (GOLDEN_PORT),
since its URL is in every torrent, metalink and magnet.

After a change that is meant to change the output: `invoke golden --update`, then review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from pipeline.config import MirrorConfig, Settings
from pipeline.demo import build_demo_snapshot
from pipeline.index import decode_pointer
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.signing import verify_signed_message
from tests.gpg_helpers import temp_gnupghome

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("MIRRORSEED_GOLDEN_UPDATE") == "1"
MOMENT = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
KEY_FINGERPRINT = "EB39D9883B090A72AE83A80B17999E7D92DF6708"  # tests/golden/signing-key.secret.asc (test only)
SIGNED = ("latest.asc", "signing-key.asc", "signing-key.gpg")
GOLDEN_PORT = 18791  # the mirror's URL is in every torrent: a fixed port keeps the bytes fixed


@pytest.fixture(scope="module")
def golden_key() -> Iterator[Path]:
    """A GNUPGHOME holding the committed golden test key (no passphrase, no expiry)."""
    with temp_gnupghome() as home:
        subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--import", str(GOLDEN / "signing-key.secret.asc")],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield home


def published_files(dest: Path, fingerprint: str = KEY_FINGERPRINT) -> dict[str, bytes]:
    """What the golden files hold for a publication in `dest`: see the module docstring."""
    signed = verify_signed_message(
        (dest / "latest.asc").read_bytes(), keyring=dest / "signing-key.gpg", fingerprint=fingerprint
    )
    pointer = decode_pointer(signed)
    shards = {shard.path for shard in pointer.shards}
    files: dict[str, bytes] = {}
    for path in sorted(dest.rglob("*")):
        key = path.relative_to(dest).as_posix()
        if not path.is_file() or key in SIGNED or key.startswith(".mirrorseed") or key.endswith(".sig"):
            continue
        data = path.read_bytes()
        if key in shards:  # shown as the JSON it holds (no time in it: the bytes are deterministic too)
            doc = json.loads(zstandard.ZstdDecompressor().decompress(data))
            key, data = key[: -len(".zst")], (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        files[key] = data
    return files


def compare_with_golden(case: str, files: dict[str, bytes]) -> None:
    where = GOLDEN / case
    if UPDATE:
        shutil.rmtree(where, ignore_errors=True)
        for key, data in files.items():
            (where / key).parent.mkdir(parents=True, exist_ok=True)
            (where / key).write_bytes(data)
        return
    expected = {p.relative_to(where).as_posix(): p.read_bytes() for p in sorted(where.rglob("*")) if p.is_file()}
    assert sorted(files) == sorted(expected), "the set of published objects changed"
    differing = [key for key in files if files[key] != expected[key]]
    assert not differing, f"{len(differing)} objects differ from tests/golden/{case}/, first: {differing[:5]}"


def publish(snapshot: Path, fmt: str, dest: Path, gnupghome: Path, state: Path, mirror: MirrorConfig) -> None:
    settings = Settings(
        snapshot=snapshot, format=fmt, dest=str(dest), public_url="https://seed.example.org/golden", repo="golden",
        mirrors=(mirror,), key=KEY_FINGERPRINT, gnupghome=gnupghome, state=state,
    )  # fmt: skip
    report = release(settings, now=lambda: MOMENT)
    assert report.action == "publish" and report.sequence == 1


def test_demo_snapshot_publishes_the_golden_bytes(golden_key: Path, tmp_path: Path) -> None:
    snapshot = build_demo_snapshot(tmp_path / "demo").root
    dest = tmp_path / "dest"
    with serve_directory(snapshot, port=GOLDEN_PORT) as mirror:
        config = MirrorConfig(url=mirror.url, country="DE", continent="EU", name="golden mirror", priority=1)
        publish(snapshot, "debian", dest, golden_key, tmp_path / "state.sqlite", config)
    compare_with_golden("demo", published_files(dest))


def make_flat_snapshot(root: Path) -> None:
    """Names that need encoding (space, '+', '%', '#', non-ASCII), an empty file, several directories."""
    contents = {
        "README.txt": b"flat snapshot for the golden test\n",
        "iso/debian 12.6 netinst+firmware.iso": bytes(range(256)) * 700,
        "iso/SHA256SUMS": b"",
        "tools/caf\u00e9/r\u00e9sum\u00e9 #1 100%.tar.gz": b"\x1f\x8b" + b"z" * 70_000,
        "tools/bin/x86_64/tool": b"\x7fELF" + bytes(i % 251 for i in range(300_000)),
    }
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_flat_snapshot_publishes_the_golden_bytes(golden_key: Path, tmp_path: Path) -> None:
    snapshot, dest = tmp_path / "flat", tmp_path / "dest"
    make_flat_snapshot(snapshot)
    with serve_directory(snapshot, port=GOLDEN_PORT) as mirror:
        publish(snapshot, "flat", dest, golden_key, tmp_path / "state.sqlite", MirrorConfig(url=mirror.url))
    compare_with_golden("flat", published_files(dest))
