"""Shared fixtures for the integration tier: a real Debian repo (dpkg-deb), a real key (gnupg), loopback servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.demo import DebSpec, build_debian_repo
from pipeline.serve import serve_directory
from tests.gpg_helpers import export_keyring, make_key, temp_gnupghome

ROOT = Path(__file__).resolve().parents[2]

PACKAGES = (
    DebSpec(name="hello", version="2.10-3", description="example package based on GNU hello"),
    DebSpec(name="libstdc++-demo6", version="12.2.0-14", description="demo library with a plus in its name"),
    DebSpec(name="tilde-demo", version="1.0~rc1-1", description="version with a tilde"),
    DebSpec(
        name="markup-demo",
        version="1.0-1",
        arch="all",
        description="<script>alert(1)</script> & <b>bold</b> description",
    ),
    DebSpec(name="big-demo", version="3.0+b1", description="a larger package", payload_size=3_000_000, seed=7),
)


@dataclass(frozen=True)
class SigningKey:
    gnupghome: Path
    fingerprint: str
    keyring: Path  # binary public keyring for gpgv


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    with temp_gnupghome() as home:
        fpr = make_key(home, expire="2y")
        keyring = export_keyring(home, fpr, tmp_path_factory.mktemp("keyring") / "key.gpg")
        yield SigningKey(home, fpr, keyring)


@pytest.fixture(scope="session")
def debian_repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("debian-template") / "repo"
    build_debian_repo(root, PACKAGES)
    return root


@pytest.fixture
def debian_repo(debian_repo_template: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the test Debian repo per test."""
    root = tmp_path / "snapshot"
    shutil.copytree(debian_repo_template, root, symlinks=True)
    return root


@pytest.fixture
def servers(debian_repo: Path, tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """(destination dir, public URL serving it, mirror URL serving the snapshot), both Range-capable on 127.0.0.1."""
    dest = tmp_path / "public"
    dest.mkdir()
    with serve_directory(dest) as public, serve_directory(debian_repo) as mirror:
        yield dest, public.url, mirror.url


def aria2_command(*args: str) -> list[str]:
    """aria2c with the user-recipe flags of DESIGN section 6 and nothing leaving loopback (no DHT, LPD, PEX)."""
    return [
        "aria2c",
        "--no-conf",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-time=0",
        "--bt-stop-timeout=60",
        "--bt-tracker-connect-timeout=5",
        "--bt-tracker-timeout=5",
        "--summary-interval=0",
        "--console-log-level=warn",
        *args,
    ]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`invoke <args>` as an operator runs it, in a clean environment, no stdin."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORSEED_")}
    base.pop("GNUPGHOME", None)
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
        cwd=cwd or ROOT,
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def tree_state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root with its bytes and mtime: compare before/after to prove nothing was written."""
    state: dict[str, tuple[bytes, int]] = {}
    if not root.exists():
        return state
    for path in sorted(root.rglob("*")):
        if path.is_file():
            state[str(path.relative_to(root))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return state


from tests.s3_server import SeaweedServer  # noqa: E402  (kept beside the fixture that uses it)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """One SeaweedFS `weed mini` per test session on 127.0.0.1 (tests/s3_server.py); each test makes its own bucket."""
    with SeaweedServer() as server:
        yield server
