"""Local Peer Discovery (BEP 14), as the recipes turn it on: two aria2 on one LAN find each other by
multicast alone (no tracker, no DHT, every webseed dead) and one fetches a package from the other.

LPD multicasts to 239.192.152.143:6771 and does not work across loopback (shared/notes/swarm.md), and
no test may send traffic off this machine: the LAN is two network namespaces of this test's own,
joined by a veth pair that leads nowhere else. Both are deleted at the end (with the veth pair).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.render import aria2_flags
from pipeline.run import release
from pipeline.serve import serve_directory
from tests.integration.conftest import SigningKey
from tests.integration.test_incremental import make_flat
from tests.integration.test_tracker import stop
from tests.tools import require_root, require_tools

pytestmark = pytest.mark.integration

FETCH_TIMEOUT = 90  # seconds for the peer fetch (about 12 s here: LPD announces at start)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def lan() -> Iterator[tuple[str, str]]:
    """Two network namespaces on one veth link (10.231.0.1 and .2, a default route over it for the
    multicast), each with its loopback up; nothing else is attached."""
    require_root("the LPD test makes network namespaces")
    require_tools("ip")
    tag = f"{os.getpid() % 100000}"
    names = (f"mslpd-a{tag}", f"mslpd-b{tag}")
    links = (f"mslpa{tag}", f"mslpb{tag}")
    made: list[str] = []
    try:
        for name in names:
            ip("netns", "add", name)
            made.append(name)
        ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for number, (name, link) in enumerate(zip(names, links, strict=True), start=1):
            ip("link", "set", link, "netns", name)
            ip("-n", name, "addr", "add", f"10.231.0.{number}/24", "dev", link)
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "link", "set", link, "up")
            ip("-n", name, "route", "add", "default", "dev", link)
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)


def in_namespace(name: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", name, *command]


def test_two_lan_peers_find_each_other_by_lpd_alone(
    lan: tuple[str, str], signing_key: SigningKey, tmp_path: Path
) -> None:
    snap, dest, user = tmp_path / "snap", tmp_path / "dest", tmp_path / "user"
    make_flat(snap, 2)
    user.mkdir()
    with serve_directory(snap) as mirror:  # up for the release; gone (and in another namespace) for the fetch
        done = release(
            Settings(
                snapshot=snap,
                format="flat",
                dest=str(dest),
                public_url="http://127.0.0.1:9/pub",
                repo="lan",
                webseeds=(mirror.url,),
                key=signing_key.fingerprint,
                gnupghome=signing_key.gnupghome,
                state=tmp_path / "state.sqlite",
            )  # fmt: skip
        )
    assert done.action == "publish"
    torrent = dest / "torrents/dir1/file-01.bin.torrent"
    quiet = ["--no-conf", "--enable-dht=false", "--enable-dht6=false", "--enable-peer-exchange=false"]
    # the recipe's aria2 options and its LPD default (MIRRORSEED_LPD unset: --bt-enable-lpd=true)
    fetch = [*aria2_flags(()), "--bt-enable-lpd=true", *quiet, "--summary-interval=0", "-d", str(user), str(torrent)]
    seed = ["--bt-enable-lpd=true", *quiet, "-V", "--seed-ratio=0.0", "-d", str(snap / "dir1"), str(torrent)]
    # The fetcher starts first, so the seeder's first announce reaches a peer that listens and connects out.
    # Started the other way round, discovery rested on the seeder connecting to the fetcher it heard, and
    # once in dozens of runs the fetcher found no peer within its --bt-stop-timeout.
    fetcher = subprocess.Popen(
        in_namespace(lan[1], "aria2c", *fetch), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seeder: subprocess.Popen[str] | None = None
    try:
        time.sleep(1)
        seeder = subprocess.Popen(in_namespace(lan[0], "aria2c", *seed), stdout=subprocess.DEVNULL, text=True)
        output, _ = fetcher.communicate(timeout=FETCH_TIMEOUT)
        assert seeder.poll() is None, "the seeder exited early"
    finally:
        if fetcher.poll() is None:
            stop(fetcher)
        if seeder is not None:
            stop(seeder)
    assert fetcher.returncode == 0, output[-4000:]
    assert (user / "file-01.bin").read_bytes() == (snap / "dir1/file-01.bin").read_bytes()
