"""The user recipe against hostile HTTP servers on 127.0.0.1: bounded in bytes written and in time.

An endless `latest.asc` or signing key must stop at its cap (ulimit -f: the kernel refuses the
write), a trickled one at the overall time limit (MIRRORSEED_TIMEOUT), each with one line on stderr.
A fake `rm` first in PATH records how large each file the recipe deletes had grown: the most the
recipe ever wrote to it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.model import PackageRecord, Pointer
from pipeline.objects import POINTER_MAX_BYTES
from pipeline.render import KEY_MAX_BYTES, ListingInput, user_recipe
from pipeline.run import published_records, read_current, release
from pipeline.storage import open_storage
from tests.integration.conftest import SigningKey
from tests.integration.test_release_e2e import settings_for
from tests.mirror_servers import RawServer
from tests.tools import require_tools

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def tools() -> None:
    require_tools("aria2c", "bash", "timeout", "stat")


FPR = "DC87FD8B47FFA81270054CEFE2D360866D18689B"
# A small multiple of the cap: the recipe may write the cap plus 1 KiB before the kernel refuses.
SLACK = 2


class HostileServer(RawServer):
    """Answers every GET at once with `200`, then per `mode`: `endless` (no Content-Length, bytes
    until the client hangs up), `huge` (a 10 GB Content-Length, then the same), `trickle` (one byte
    every `interval` seconds). `sent` counts the body bytes sent."""

    def __init__(self, mode: str, interval: float = 0.5) -> None:
        self.mode = mode
        self.interval = interval
        self.sent = 0
        self._lock = threading.Lock()
        super().__init__()

    def answer(self, connection: socket.socket) -> None:
        connection.settimeout(5)
        connection.recv(65536)
        if self.mode == "endless":
            connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        elif self.mode == "huge":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        else:
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        chunk = b"x" if self.mode == "trickle" else b"-----BEGIN PGP SIGNED MESSAGE-----\n" * 2000
        while not self.stopping.is_set():
            connection.sendall(chunk)
            with self._lock:
                self.sent += len(chunk)
            if self.mode == "trickle":
                self.stopping.wait(self.interval)


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    with HostileServer(request.param) as server:
        yield server


def recipe_for(public_url: str) -> str:
    """A recipe whose every URL is under `public_url` (no example package: steps 1 to 3)."""
    pointer = Pointer(
        repo="demo",
        sequence=1,
        generated="2026-05-01T12:00:00Z",
        expires="2026-05-08T12:00:00Z",
        shards=(),
    )
    listing = ListingInput(
        repo="demo",
        snapshot_format="debian",
        public_url=public_url,
        pointer=pointer,
        fingerprint=FPR,
        records=(),
        webseeds=(),
    )
    return user_recipe(listing, None)


def run_recipe(recipe: str, cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float, dict[str, int]]:
    """Run `recipe` in `cwd` with a recording `rm`; (result, seconds taken, largest size of each deleted file)."""
    tools = cwd.parent / f"{cwd.name}-bin"
    tools.mkdir()
    log = cwd.parent / f"{cwd.name}-rm.log"
    real_rm = shutil.which("rm")
    assert real_rm is not None
    (tools / "rm").write_text(
        '#!/bin/sh\nfor f in "$@"; do if [ -f "$f" ]; then stat -c "%s %n" -- "$f" >> "$RM_LOG"; fi; done\n'
        f'exec {real_rm} "$@"\n'
    )
    (tools / "rm").chmod(0o755)
    environment = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "RM_LOG": str(log), "HOME": str(cwd), **env}
    start = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", recipe], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    took = time.monotonic() - start
    deleted: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else ():
        size, _, name = line.partition(" ")
        deleted[name] = max(deleted.get(name, 0), int(size))
    return done, took, deleted


def on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("hostile", ["endless", "huge"], indirect=True)
def test_an_endless_pointer_stops_at_its_cap(hostile: HostileServer, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "signing-key.gpg").write_bytes(b"")  # step 1 done: the next fetch is the pointer
    done, took, deleted = run_recipe(recipe_for(hostile.url), user)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"latest.asc: larger than {POINTER_MAX_BYTES} bytes, refused"]
    assert took < 30
    assert 0 < deleted["latest.asc"] <= POINTER_MAX_BYTES + 1024 <= SLACK * POINTER_MAX_BYTES
    assert not (user / "latest.asc").exists() and not (user / "pointer.json").exists()
    assert on_disk(user) <= SLACK * POINTER_MAX_BYTES


@pytest.mark.parametrize("hostile", ["endless"], indirect=True)
def test_an_endless_signing_key_stops_at_its_cap(hostile: HostileServer, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    done, took, deleted = run_recipe(recipe_for(hostile.url), user)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"signing-key.gpg: larger than {KEY_MAX_BYTES} bytes, refused"]
    assert took < 30
    assert 0 < deleted["signing-key.gpg"] <= KEY_MAX_BYTES + 1024
    assert not (user / "signing-key.gpg").exists()
    assert on_disk(user) <= SLACK * KEY_MAX_BYTES


@pytest.mark.parametrize("hostile", ["trickle"], indirect=True)
def test_a_trickled_pointer_times_out(hostile: HostileServer, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "signing-key.gpg").write_bytes(b"")
    # 1 byte every 0.5 s: the speed never reaches 0 and no single read waits long.
    done, took, _ = run_recipe(recipe_for(hostile.url), user, MIRRORSEED_TIMEOUT="2", MIRRORSEED_MIN_RATE="1048576")
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["latest.asc: download timed out"]
    assert 2 <= took < 15
    assert not (user / "latest.asc").exists()


def test_the_time_limit_override_is_checked(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    done, _, _ = run_recipe(recipe_for("http://127.0.0.1:9"), user, MIRRORSEED_TIMEOUT="2.5")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "MIRRORSEED_TIMEOUT, MIRRORSEED_MIN_RATE, MIRRORSEED_PEER_WAIT: not whole numbers (seconds, bytes per second)"
    ]


@pytest.mark.parametrize("hostile", ["trickle"], indirect=True)
def test_a_trickled_package_download_times_out(
    hostile: HostileServer,
    debian_repo: Path,
    servers: tuple[Path, str, str],
    signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    """Steps 1 to 3 against a real publication; the example package's .torrent URL trickles: the
    download stops at MIRRORSEED_TIMEOUT (plus MIRRORSEED_PEER_WAIT, 0 here) plus the package size at
    MIRRORSEED_MIN_RATE."""
    dest, public_url, mirror_url = servers
    release(settings_for(debian_repo, dest, public_url, mirror_url, signing_key))
    current = read_current(
        open_storage(str(dest)), repo="test", keyring=signing_key.keyring, fingerprint=signing_key.fingerprint
    )
    assert current is not None
    records = published_records(open_storage(str(dest)), current.pointer)
    example: PackageRecord = next(r for r in records if r.size > 0 and r.torrent is not None)
    recipe = user_recipe(
        ListingInput(
            repo="test",
            snapshot_format="debian",
            public_url=public_url,
            pointer=current.pointer,
            fingerprint=signing_key.fingerprint,
            records=records,
            webseeds=current.webseeds,
        ),
        example,
    )
    # the package's .torrent URL (its path from the index, at run time) on the trickling server instead
    step4 = "\"$BASE/$(jq -r '.torrent"
    assert recipe.count(step4) == 1
    recipe = recipe.replace(step4, f"\"{hostile.url}/$(jq -r '.torrent")
    user = tmp_path / "user"
    user.mkdir()
    done, took, _ = run_recipe(
        recipe, user, MIRRORSEED_TIMEOUT="3", MIRRORSEED_PEER_WAIT="0", MIRRORSEED_MIN_RATE="1073741824"
    )
    assert done.returncode == 1
    name = example.path.rsplit("/", 1)[-1]
    assert done.stderr.splitlines()[-1:] == [f"packages/{name}: download timed out"]
    assert 3 <= took < 40  # the key, pointer and index from loopback, then 3 s
    assert (user / "index.json").exists()  # steps 1 to 3 passed
