"""The swarm through a real tracker: Debian's opentracker (whitelist mode) and two aria2c on 127.0.0.1.

A package torrent whose only webseed is dead is downloaded from an aria2 seeder found through the
tracker; the tracker refuses infohashes missing from its whitelist and takes new ones on SIGHUP; the
shipped infra/opentracker files parse. DHT, LPD and PEX are off (tests/integration/conftest.py).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import random
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.hashing import hash_files
from pipeline.model import FileEntry
from pipeline.torrents import BuildSpec, build_packages
from tests.integration.conftest import aria2_command
from tests.tools import require_tools
from tests.tracker import Tracker, TrackerError, announce, free_port, opentracker_binary

pytestmark = pytest.mark.integration

INFRA = Path(__file__).resolve().parents[2] / "infra" / "opentracker"
NAME = "swarm-demo_1.0-1_amd64.deb"
DEAD_MIRROR = "http://127.0.0.1:9/debian"  # discard port: nothing listens, connection refused
DOWNLOAD_TIMEOUT = 60
SEEDER_READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
NOT_AUTHORIZED = b"Requested download is not authorized for use with this tracker."


@dataclass(frozen=True)
class Package:
    data: bytes
    torrent: Path
    infohash: str


def build_package(tmp_path: Path, announce_url: str) -> Package:
    """One ~1.3 MB package (several pieces) and its torrent: tracker `announce_url`, the only webseed dead."""
    path = f"pool/main/s/swarm-demo/{NAME}"
    source = tmp_path / "snapshot" / path
    source.parent.mkdir(parents=True)
    data = random.Random(12).randbytes(1_300_000)
    source.write_bytes(data)
    st = source.stat()
    entry = FileEntry(path=path, source=source, size=st.st_size, mtime_ns=st.st_mtime_ns)
    spec = BuildSpec(webseeds=(DEAD_MIRROR,), trackers=(announce_url,), public_url="http://127.0.0.1:9/pub")
    built = build_packages(hash_files([entry], workers=1), spec)
    record = built.records[0]
    assert record.infohash is not None and record.torrent is not None
    artifact = next(a for a in built.artifacts if a.key == record.torrent)
    torrent = tmp_path / "swarm-demo.torrent"
    torrent.write_bytes(artifact.data)
    return Package(data=data, torrent=torrent, infohash=record.infohash)


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    with Tracker() as running:
        yield running


def stop(process: subprocess.Popen[str]) -> str:
    """Terminate by PID, bounded wait, then kill; the process's output."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    out, _ = process.communicate(timeout=STOP_TIMEOUT)
    return out or ""


def seeder_command(torrent: Path, directory: Path, listen_port: int) -> list[str]:
    """aria2 seeding a complete copy: `-V` hashes it (without it aria2 refetches over it), seeds until stopped.

    On loopback nothing else is needed: opentracker lists the announcing socket's address (127.0.0.1)
    with the announced `--listen-port`, so no `--bt-external-ip`; `--interface` only keeps it on loopback.
    """
    command = aria2_command(
        "-V",
        "--seed-ratio=0.0",
        f"--listen-port={listen_port}",
        "--interface=127.0.0.1",
        "-d",
        str(directory),
        str(torrent),
    )
    return [arg for arg in command if arg not in ("--seed-time=0", "--bt-stop-timeout=60")]


def wait_for_peer(tracker: Tracker, infohash: str, port: int, seeder: subprocess.Popen[str]) -> float:
    """Bounded wait until the tracker lists 127.0.0.1:`port` for `infohash`; the seconds it took."""

    def alive() -> None:
        if seeder.poll() is not None:
            pytest.fail(f"seeder exited with code {seeder.returncode}:\n{stop(seeder)}")

    try:
        return tracker.wait_for_peer(infohash, port, timeout=SEEDER_READY_TIMEOUT, check=alive)
    except TrackerError as exc:
        pytest.fail(f"{exc}\n{stop(seeder)}")


def test_download_completes_through_the_tracker_with_every_mirror_dead(tracker: Tracker, tmp_path: Path) -> None:
    """The swarm: aria2 finds an aria2 seeder through opentracker and fetches exact bytes; the webseed is dead."""
    require_tools("aria2c")
    package = build_package(tmp_path, tracker.announce_url)
    tracker.write_whitelist([package.infohash])
    tracker.reload()
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / NAME).write_bytes(package.data)
    seed_port = free_port()
    seeder = subprocess.Popen(
        seeder_command(package.torrent, seed_dir, seed_port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_peer(tracker, package.infohash, seed_port, seeder)
        out = tmp_path / "out"
        result = subprocess.run(
            aria2_command(
                f"--listen-port={free_port()}", "--interface=127.0.0.1", "-d", str(out), str(package.torrent)
            ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"aria2c rc={result.returncode}\n{result.stdout}{result.stderr}"
    finally:
        seeder_output = stop(seeder)
    got = (out / NAME).read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(package.data).hexdigest(), seeder_output[-2000:]
    assert (seed_dir / NAME).read_bytes() == package.data  # the seed was not written over


def test_an_infohash_missing_from_the_whitelist_is_refused(tracker: Tracker, tmp_path: Path) -> None:
    package = build_package(tmp_path, tracker.announce_url)
    other = hashlib.sha1(b"another package").hexdigest()
    tracker.write_whitelist([other])
    tracker.reload()
    answer = tracker.announce(package.infohash, left=1)
    assert answer == {b"failure reason": NOT_AUTHORIZED}
    assert not tracker.accepts(package.infohash)
    assert tracker.accepts(other)
    with pytest.raises(ValueError, match="not authorized"):
        tracker.peers(package.infohash)


def test_sighup_reloads_the_whitelist(tracker: Tracker, tmp_path: Path) -> None:
    """What `systemctl reload opentracker` relies on: the same process takes added and drops removed hashes."""
    package = build_package(tmp_path, tracker.announce_url)
    old = hashlib.sha1(b"last release").hexdigest()
    tracker.write_whitelist([old])
    tracker.reload()
    pid = tracker.pid
    assert not tracker.accepts(package.infohash)
    tracker.write_whitelist([package.infohash])
    seconds = tracker.reload()
    assert seconds < 5
    assert tracker.pid == pid
    assert tracker.accepts(package.infohash)
    assert b"failure reason" not in tracker.announce(package.infohash, left=1)
    assert not tracker.accepts(old)


def shipped_config(port: int, rootdir: Path) -> tuple[str, list[str]]:
    """infra/opentracker/opentracker.conf with only its address and root dir changed; its keys, in order."""
    lines = []
    keys = []
    for line in (INFRA / "opentracker.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key = line.split()[0]
            keys.append(key)
            if key == "listen.tcp_udp":
                line = f"listen.tcp_udp 127.0.0.1:{port}"
            elif key == "tracker.rootdir":
                line = f"tracker.rootdir {rootdir}"
        lines.append(line)
    return "\n".join(lines) + "\n", keys


def test_the_shipped_config_parses_and_serves_its_whitelist(tmp_path: Path) -> None:
    """opentracker -f <shipped config> on 127.0.0.1: no unknown key, whitelist read from the root dir."""
    binary = opentracker_binary()
    with tempfile.TemporaryDirectory(prefix="mirrorseed-otconf-") as temporary:
        rootdir = Path(temporary)
        rootdir.chmod(0o755)  # started as root it chroots here and drops to tracker.user
        listed = hashlib.sha1(b"listed").hexdigest()
        (rootdir / "whitelist.txt").write_text(listed + "\n")
        (rootdir / "whitelist.txt").chmod(0o644)
        port = free_port()
        text, keys = shipped_config(port, rootdir)
        assert keys == ["listen.tcp_udp", "access.whitelist", "tracker.rootdir", "tracker.user"]
        config = tmp_path / "opentracker.conf"
        config.write_text(text)
        log = tmp_path / "opentracker.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(binary), "-f", str(config)], stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        try:
            # opentracker reads its whitelist in a thread of its own, after it starts answering: until then
            # every hash is refused. Bounded wait for the listed one to be accepted.
            deadline = time.monotonic() + 10
            answer: dict[bytes, object] = {}
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    answer = announce(port, listed)
                    if b"failure reason" not in answer:
                        break
                except (OSError, ValueError):
                    pass
                assert time.monotonic() < deadline, (
                    f"{listed} not accepted on port {port}: {answer!r}\n{log.read_text()}"
                )
                time.sleep(0.1)
            refused = announce(port, hashlib.sha1(b"unlisted").hexdigest())
            assert refused == {b"failure reason": NOT_AUTHORIZED}
            if os.geteuid() == 0:
                assert Path(f"/proc/{process.pid}/root").resolve() == rootdir.resolve()
                status = Path(f"/proc/{process.pid}/status").read_text()
                uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
                assert int(uid) == pwd.getpwnam("_opentracker").pw_uid
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
    output = log.read_text()
    assert "Unhandled line" not in output, output
    assert "Can't open accesslist" not in output, output


def test_the_shipped_unit_verifies() -> None:
    """systemd's own parser accepts opentracker.service (ExecStart binary present, every option known)."""
    require_tools("systemd-analyze")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(INFRA / "opentracker.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
    unit = (INFRA / "opentracker.service").read_text()
    assert "ExecStart=/usr/bin/opentracker -f /etc/opentracker/mirrorseed.conf" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
