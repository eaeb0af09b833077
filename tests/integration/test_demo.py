"""`invoke demo` end to end (pipeline.demo.run_demo) on free loopback ports: a real opentracker fed by the
release, the front page's recipe by webseed, then from the seed box alone with the mirror stopped."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from pipeline import bencode
from pipeline.demo import DemoResult, run_demo
from pipeline.errors import TrackerError
from pipeline.localtracker import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo snapshot and key for the module (the snapshot is built once, then left read-only)."""
    return tmp_path_factory.mktemp("demo-cache")


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_demo_fetches_from_the_mirror_then_from_a_peer_with_the_mirror_down(demo_cache: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    ports = {name: free_port() for name in ("public", "mirror", "tracker", "seed", "seed_rpc")}
    result: DemoResult = run_demo(
        cache_dir=demo_cache,
        dest=tmp_path / "public",
        announce=lines.append,
        public_port=ports["public"],
        mirror_port=ports["mirror"],
        tracker_port=ports["tracker"],
        seed_port=ports["seed"],
        seed_rpc_port=ports["seed_rpc"],
    )
    text = "\n".join(lines)
    size = next(int(m) for m in re.findall(r"user 1 got (\d+) bytes", text))

    # the peer transfer: the seed box uploaded at least the whole package while the mirror refused connections
    assert result.peer_bytes >= size > 0, text
    assert f"mirror stopped: {result.mirror_url} refuses connections" in text
    assert re.search(r"user 2 runs the same recipe .*the tracker lists [1-9]\d* peers", text), text
    assert "the tracker listed 0 peers" in text  # user 1 had no peer: its bytes came from the mirror

    # the published torrents announce to the demo's tracker, which the release told about them
    torrent = tmp_path / "public" / "torrents" / (result.fetched + ".torrent")
    assert bencode.decode_dict(torrent.read_bytes()).value[b"announce"] == result.tracker_url.encode()
    assert result.tracker_url == f"http://127.0.0.1:{ports['tracker']}/announce"
    # the whitelist: every package torrent and every shard's torrent (one publication: all of them are current)
    shards = len(list((tmp_path / "public" / "index" / "shards").glob("*.torrent")))
    packages = len(list((tmp_path / "public" / "torrents").rglob("*.torrent")))
    assert shards >= 2 and packages == 24
    whitelist = rf"the release wrote the tracker's whitelist \({packages + shards} infohashes\) and sent SIGHUP"
    assert re.search(whitelist, text), text
    assert re.search(rf"seed box \(invoke seed\) aria2 PID \d+ seeds {packages + shards} torrents", text), text

    # every process the demo started is gone: the tracker and the seed box's aria2, by the PIDs it printed
    pids = [int(pid) for pid in re.findall(r"(?:opentracker|aria2) PID (\d+)", text)]
    assert len(pids) == 2, text
    assert not [pid for pid in pids if alive(pid)]


def test_demo_without_opentracker_says_to_run_bootstrap(
    demo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if os.path.basename(name) == "opentracker" else found(name, *a, **k)
    )
    with pytest.raises(TrackerError) as raised:
        run_demo(cache_dir=demo_cache, dest=tmp_path / "public", public_port=free_port(), mirror_port=free_port())
    assert str(raised.value) == "opentracker: not installed; run ./bootstrap.sh (installs the opentracker package)"
    assert not (tmp_path / "public" / "index.html").exists()
