"""The operator's seed box (issue 12.3) with real parts: aria2 as an RPC daemon, opentracker, gpg, a release.

Every process a test starts is stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.errors import SeedError
from pipeline.index import decode_pointer
from pipeline.localtracker import free_port
from pipeline.run import published_records, release
from pipeline.seed import SeedBox
from pipeline.signing import verify_signed_message
from pipeline.storage import open_storage
from tests.integration.conftest import ROOT, SigningKey, aria2_command, tree_state
from tests.integration.test_incremental import make_flat
from tests.tools import require_root

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def as_root() -> None:
    require_root("the seed box tests drop aria2 to user nobody")


DEAD = "http://127.0.0.1:9/m"  # nothing listens: no webseed ever serves a byte in these tests
WAIT = 30.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.3)


@dataclass(frozen=True)
class World:
    root: Path  # world-readable (nobody must read the snapshot): not under pytest's 0700 tmp dirs
    snap: Path
    dest: Path
    settings: Settings
    key: SigningKey

    def shard_infohashes(self) -> set[str]:
        """The infohashes of the current pointer's shard torrents."""
        signed = (self.dest / "latest.asc").read_bytes()
        pointer = decode_pointer(
            verify_signed_message(signed, keyring=self.key.keyring, fingerprint=self.key.fingerprint)
        )
        return set(pointer.infohashes)

    def package_infohashes(self) -> set[str]:
        """Every package torrent's infohash, as the current publication's shards list them."""
        signed = (self.dest / "latest.asc").read_bytes()
        pointer = decode_pointer(
            verify_signed_message(signed, keyring=self.key.keyring, fingerprint=self.key.fingerprint)
        )
        return {str(r.infohash) for r in published_records(open_storage(str(self.dest)), pointer) if r.infohash}

    def wanted(self) -> set[str]:
        return self.shard_infohashes() | self.package_infohashes()


@pytest.fixture
def world(signing_key: SigningKey, tmp_path: Path) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="seedtest-"))
    try:
        root.chmod(0o755)
        snap, dest = root / "snap", tmp_path / "dest"
        make_flat(snap, 5)
        secret = tmp_path / "rpc-secret"
        secret.write_text("test-secret-0123456789\n")
        settings = Settings(
            snapshot=snap, format="flat", dest=str(dest), public_url="http://127.0.0.1:9/pub", repo="seed",
            webseeds=(DEAD,), allow_peer_only=True, key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
            state=tmp_path / "state.sqlite", seed_poll=1, seed_port=free_port(), seed_rpc_port=free_port(),
            seed_rpc_secret_file=secret, seed_max_torrents=10,
        )  # fmt: skip
        yield World(root, snap, dest, settings, signing_key)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def seeding(box: SeedBox) -> set[str]:
    """Infohashes aria2 reports active and complete (every byte present and checked)."""
    return {
        infohash
        for infohash, item in box.status().items()
        if item["status"] == "active" and int(item["completedLength"]) == int(item["totalLength"]) > 0
    }


def box_workdir(box: SeedBox) -> Path:
    assert box._workdir is not None
    return box._workdir


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0


def test_seed_box_seeds_the_shards_and_follows_a_new_publication(world: World) -> None:
    release(world.settings)
    shards = world.shard_infohashes()
    first = world.wanted()
    assert len(shards) == 3  # the flat shards dir0, dir1, dir2
    before = tree_state(world.snap)
    box = SeedBox(world.settings)
    stop = threading.Event()
    follower = threading.Thread(target=box.serve, args=(stop,), daemon=True)
    try:
        box.start()
        assert box.aria2 is not None
        pid = box.aria2.pid
        assert set(box.seeding) == first and len(first) == 8  # 3 shards, 5 packages
        wait_for(lambda: seeding(box) == first, "every shard and package torrent seeding")
        shard_files = sorted(p.name for p in (box_workdir(box) / "shards").iterdir())
        assert len(shard_files) == 3 and all(name.endswith(".json.zst") for name in shard_files)
        assert Path(f"/proc/{pid}/status").read_text().count("Uid:\t65534") == 1  # aria2 runs as nobody
        assert "test-secret" not in Path(f"/proc/{pid}/cmdline").read_text()  # the secret is not in argv

        follower.start()
        assert tree_state(world.snap) == before  # nothing written, not even a control file
        (world.snap / "dir0" / "file-00.bin").write_bytes(b"new version" * 5000)
        release(world.settings)
        second = world.wanted()
        assert len(second - first) == 2  # the changed package and its shard (dir0)
        assert len(world.shard_infohashes() & shards) == 2  # dir1 and dir2 did not change: same torrents
        wait_for(lambda: seeding(box) == second, "the new publication seeding, the old torrents removed")
        assert set(box.seeding) == second
        assert len(list((box_workdir(box) / "shards").iterdir())) == 3  # the old dir0 shard's file removed
    finally:
        stop.set()
        if follower.is_alive():
            follower.join(timeout=10)
        box.stop()
    assert pid_gone(pid)


@pytest.mark.parametrize("trust", [False, True], ids=["check-integrity", "seed-unverified"])
def test_a_snapshot_file_whose_bytes_differ_is_left_untouched(world: World, trust: bool) -> None:
    release(world.settings)
    changed = world.snap / "dir1" / "file-01.bin"
    data = bytearray(changed.read_bytes())
    data[20_000:20_004] = b"XXXX"  # same size, other bytes: the torrent's pieces do not match
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(1_577_836_800_000_000_000, 1_577_836_800_000_000_000))
    before = tree_state(world.snap)
    wanted = world.wanted()
    with SeedBox(replace(world.settings, seed_trust_files=trust)) as box:
        assert box.aria2 is not None
        pid = box.aria2.pid
        changed_hash = next(h for h, label in box.seeding.items() if label == "dir1/file-01.bin")
        if trust:  # seeded as aria2 finds it (no re-hash): all complete at once, peers reject the bad pieces
            wait_for(lambda: seeding(box) == wanted, "every torrent seeding unverified")
        else:  # re-hashed: the changed file fails its check and is never completed, the others seed
            wait_for(lambda: seeding(box) == wanted - {changed_hash}, "the unchanged files seeding")
            wait_for(lambda: box.status()[changed_hash]["status"] == "error", "the changed file in error")
            # aria2 found bad pieces and opened the file for writing to fetch them again: the permission barrier
            # refused it ("Failed to open the file dir1/file-01.bin, cause: Permission denied")
            assert re.search(r"file-01\.bin, cause: Permission denied", box.aria2.log_path.read_text())
        for _ in range(3):  # let it run a while: a few polls
            box.sync()
            time.sleep(1)
        assert box.status()[changed_hash]["status"] == ("active" if trust else "error")
    assert pid_gone(pid)
    assert tree_state(world.snap) == before  # same bytes, same mtimes, no new (.aria2) files


def test_a_snapshot_the_seed_user_could_write_is_refused(world: World) -> None:
    release(world.settings)
    (world.snap / "dir2").chmod(0o777)
    with pytest.raises(SeedError, match=r"dir2: writable by nobody.*read-only"):
        SeedBox(world.settings).start()
    (world.snap / "dir2").chmod(0o755)
    (world.snap / "dir0" / "file-00.bin").chmod(0o666)
    with pytest.raises(SeedError, match=r"file-00.bin: writable by nobody"):
        SeedBox(world.settings).start()


@pytest.fixture
def opentracker(world: World) -> Iterator[tuple[str, Path]]:
    """opentracker on 127.0.0.1 (whitelist mode, chrooted in a dir nobody reads); yields (announce URL, whitelist)."""
    chroot = world.root / "tracker"
    chroot.mkdir(mode=0o755)
    whitelist = chroot / "whitelist.txt"
    whitelist.write_text("")
    port = free_port()
    yield f"http://127.0.0.1:{port}/announce", whitelist


def start_tracker(whitelist: Path, announce: str) -> subprocess.Popen[bytes]:
    port = announce.rsplit(":", 1)[1].split("/")[0]
    whitelist.chmod(0o644)
    process = subprocess.Popen(
        ["opentracker", "-i", "127.0.0.1", "-p", port, "-P", port, "-d", str(whitelist.parent), "-w", whitelist.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        assert process.poll() is None, "opentracker exited"
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", int(port))) == 0

    wait_for(up, "opentracker listening", timeout=10)
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_a_peer_fetches_a_package_from_the_seed_box_alone(
    world: World, opentracker: tuple[str, Path], tmp_path: Path
) -> None:
    announce, whitelist = opentracker
    settings = replace(world.settings, trackers=(announce,), tracker_whitelist=whitelist)
    release(settings)  # writes the tracker's whitelist: the shard and package infohashes
    tracker = start_tracker(whitelist, announce)
    try:
        with SeedBox(settings) as box:
            wanted = world.wanted()
            wait_for(lambda: seeding(box) == wanted, "every torrent seeding")
            out = tmp_path / "download"
            torrent = world.dest / "torrents" / "dir1" / "file-04.bin.torrent"
            result = subprocess.run(
                aria2_command(f"--dir={out}", f"--listen-port={free_port()}", "--bt-stop-timeout=40", str(torrent)),
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert (out / "file-04.bin").read_bytes() == (world.snap / "dir1" / "file-04.bin").read_bytes()
    finally:
        stop_process(tracker)


def test_invoke_seed_reads_the_release_settings_and_stops_on_sigterm(world: World, tmp_path: Path) -> None:
    release(world.settings)
    s = world.settings
    config = tmp_path / "mirror.toml"
    config.write_text(
        "[mirrorseed]\n"
        f'snapshot = "{s.snapshot}"\nformat = "flat"\ndest = "{s.dest}"\npublic_url = "{s.public_url}"\n'
        f'repo = "{s.repo}"\nkey = "{s.key}"\ngnupghome = "{s.gnupghome}"\nwebseeds = ["{DEAD}"]\n'
        f"seed_poll = 1\nseed_port = {s.seed_port}\nseed_rpc_port = {s.seed_rpc_port}\n"
        f'seed_rpc_secret_file = "{s.seed_rpc_secret_file}"\n'
    )
    log = tmp_path / "seed.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORSEED_") and k != "GNUPGHOME"}
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "seed", "--config", str(config)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_for(lambda: "torrents (8 added" in log.read_text() or process.poll() is not None, "the seed box up")
        text = log.read_text()
        assert process.poll() is None, text
        aria2_pid = int(text.split("running as PID ")[1].split()[0])
        assert "test-secret" not in text
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        stop_process(process)  # type: ignore[arg-type]
    assert process.returncode == 0, log.read_text()
    assert "stopped" in log.read_text()
    assert pid_gone(aria2_pid)
