"""The operator's CLI: --dry-run writes nothing and prints the plan; --json and --metrics report the run."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.integration.conftest import SigningKey, run_cli, tree_state

pytestmark = pytest.mark.integration

EVIL = "<img src=x onerror=alert(1)>&\"'.deb"


def args(snapshot: Path, dest: Path, key: str, *extra: str) -> list[str]:
    return [
        "release",
        "--snapshot",
        str(snapshot),
        "--dest",
        str(dest),
        "--key",
        key,
        "--repo",
        "cli",
        "--public-url",
        "http://127.0.0.1:9/pub",
        "--webseed",
        "http://127.0.0.1:9/mirror",
        "--allow-peer-only",
        *extra,
    ]


def test_dry_run_json_and_metrics(debian_repo: Path, signing_key: SigningKey, tmp_path: Path) -> None:
    env = {"GNUPGHOME": str(signing_key.gnupghome)}
    dest = tmp_path / "dest"
    dry = run_cli(*args(debian_repo, dest, signing_key.fingerprint, "--dry-run"), env=env)
    assert dry.returncode == 0, dry.stderr
    assert not dest.exists() or tree_state(dest) == {}
    planned = [line.split(" ", 1)[1] for line in dry.stdout.splitlines() if line.startswith("put ")]
    assert "latest.asc" in planned and "index.html" in planned
    assert any(k.startswith("torrents/pool/") and k.endswith(".deb.torrent") for k in planned)

    metrics = tmp_path / "metrics" / "mirrorseed.prom"
    metrics.parent.mkdir()
    real = run_cli(*args(debian_repo, dest, signing_key.fingerprint, "--json", "--metrics", str(metrics)), env=env)
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    assert report["action"] == "publish" and report["sequence"] == 1 and report["dry_run"] is False
    assert set(report["stages"]) >= {"scan", "hash", "build", "sign", "render", "publish"}

    # the shards carry no time: the same keys in the dry run and the real one
    def shape(keys: list[str]) -> list[str]:
        return sorted(keys)

    assert shape(planned) == shape(report["planned_keys"])
    # one shard per suite, component and architecture (Architecture: all once per suite and component)
    shard_torrents = sum(k.startswith("index/shards/") and k.endswith(".torrent") for k in planned)
    assert shard_torrents == sum(k.startswith("index/shards/") and k.endswith(".json.zst") for k in planned) >= 2
    assert all((dest / key).is_file() for key in report["planned_keys"])
    text = metrics.read_text()
    assert "mirrorseed_pointer_sequence 1" in text
    assert 'mirrorseed_stage_duration_seconds{stage="hash"}' in text
    assert "mirrorseed_signing_key_expiry_timestamp_seconds" in text

    again = run_cli(*args(debian_repo, dest, signing_key.fingerprint, "--json"), env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["action"] == "noop"


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.hrefs += [v for k, v in attrs if k == "href" and v]


def test_flat_snapshot_with_a_hostile_name_is_published_escaped(signing_key: SigningKey, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    (flat / "evil").mkdir(parents=True)
    (flat / "evil" / EVIL).write_bytes(b"payload" * 1000)
    (flat / "empty.bin").write_bytes(b"")
    dest = tmp_path / "dest"
    done = run_cli(
        *args(flat, dest, signing_key.fingerprint, "--format", "flat"), env={"GNUPGHOME": str(signing_key.gnupghome)}
    )
    assert done.returncode == 0, done.stderr
    assert (dest / "torrents" / "evil" / (EVIL + ".torrent")).is_file()
    assert not (dest / "torrents" / "empty.bin.torrent").exists()
    assert (dest / "metalinks" / "empty.bin.meta4").is_file()
    page = (dest / "browse" / "evil" / "index.html").read_text()
    parser = TagCollector()
    parser.feed(page)
    assert "img" not in parser.tags and "script" not in parser.tags
    assert "<img src=x" not in page
    assert any(h.endswith("%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%26%22%27.deb.torrent") for h in parser.hrefs)
