"""`invoke bench --apt` (issue 13, point 6): `apt-get install --download-only` of 20 packages through the
mirrorseed apt method against apt's own `http` method, on the same loopback mirror, with zero peers.

A real Debian repository (dpkg-deb, dpkg-scanpackages, a clearsigned InRelease) of `packages` packages whose
names and sizes come from `../shared/data` (real bookworm sizes, scaled to `total_mb`), served by the
project's RangeServer; a real release of it (webseed: that mirror; no tracker, so no peer) served by another.
Two throwaway apt roots (tests/fixtures/aptroot.py: apt's own configuration, lists, cache and methods folder,
nothing of the machine's /etc/apt or dpkg database) read the same repository: one with `http://`, one with
`mirrorseed+http://` and the published method. After one `apt-get update` each, every run empties the
archives cache and times the whole `apt-get install --download-only` process; the two take turns, `runs`
times, and the medians are compared (target: the method within 1.3x apt's http). Each run is checked: all
the .debs in the cache, with the SHA-256 of the signed index (the method's tests show they come by torrent).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from bench.harness import default_cache_dir, distribution_path, load_distribution, plan_corpus
from pipeline.config import MirrorConfig, Settings
from pipeline.demo import DebSpec, build_debian_repo, demo_key
from pipeline.errors import ConfigError, PipelineError
from pipeline.run import release
from pipeline.serve import RangeServer, serve_directory
from tests.fixtures.aptroot import AptRoot  # the throwaway apt root the method's tests use

TARGET_RATIO = 1.3
# The mirror as a user's apt sees it: 4 MiB/s (about 35 Mbit/s), the swarm benchmark's link. Unthrottled on
# loopback, apt's http took 0.20 s for these 40 MB against 10.6 s for the method: the comparison then
# measures nothing but aria2's start-up and stop (about 2 s for each torrent download, whatever its size).
MIRROR_RATE = 4 * 1024 * 1024
PACKAGES = 20
TOTAL_MB = 40.0
RUNS = 3
SEED = 13
SUITE = "stable"
TOOLS = ("apt-get", "dpkg-deb", "dpkg-scanpackages", "apt-ftparchive", "aria2c", "gpgv", "gpg", "zstd")


@dataclass(frozen=True)
class AptOptions:
    repo_root: Path
    packages: int = PACKAGES
    total_mb: float = TOTAL_MB
    runs: int = RUNS
    cache_dir: Path | None = None
    mirror_rate: int = MIRROR_RATE  # bytes/s for the whole mirror; 0: loopback speed


@dataclass(frozen=True)
class AptResult:
    packages: int
    package_bytes: int
    http_s: tuple[float, ...]
    method_s: tuple[float, ...]
    table: str
    rate_label: str = "loopback speed"

    @property
    def ratio(self) -> float:
        return statistics.median(self.method_s) / statistics.median(self.http_s)

    @property
    def ok(self) -> bool:
        return self.ratio <= TARGET_RATIO


def plan_debs(distribution: Sequence[tuple[str, int]], count: int, total_bytes: int) -> tuple[DebSpec, ...]:
    """`count` packages drawn like the main bench's corpus, one per name, sizes scaled to `total_bytes`."""
    drawn, _ = plan_corpus(distribution, count * 2, 1 << 62, SEED)
    chosen: dict[str, tuple[str, int]] = {}
    for entry in drawn:
        name, version, _arch = entry.path.rsplit("/", 1)[1].removesuffix(".deb").split("_")
        chosen.setdefault(name, (version.replace("%3a", ":"), entry.size))
        if len(chosen) == count:
            break
    real = sum(size for _, size in chosen.values())
    return tuple(
        DebSpec(name=name, version=version, payload_size=max(1024, round(size * total_bytes / real)), seed=i,
                compression="none")
        for i, (name, (version, size)) in enumerate(sorted(chosen.items()))
    )  # fmt: skip


def _sign_release(root: Path, gnupghome: Path, fingerprint: str) -> None:
    dist = root / "dists" / SUITE
    subprocess.run(
        ["gpg", "--homedir", str(gnupghome), "--batch", "--local-user", fingerprint, "--clearsign",
         "--output", str(dist / "InRelease"), str(dist / "Release")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _download(apt: AptRoot, names: Sequence[str]) -> float:
    for deb in apt.archives.glob("*.deb"):
        deb.unlink()
    started = time.monotonic()
    done = apt.apt_get("install", "--download-only", *names)
    took = time.monotonic() - started
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise PipelineError(f"bench --apt: apt-get install --download-only failed: {' | '.join(tail)}")
    return took


def _check(apt: AptRoot, expected: dict[str, str], what: str) -> None:
    """Every .deb apt left in the cache has the SHA-256 of the signed index, and none is missing."""
    found = {deb.name: hashlib.sha256(deb.read_bytes()).hexdigest() for deb in apt.archives.glob("*.deb")}
    if found != expected:
        raise PipelineError(f"bench --apt: {what}: the archives cache does not hold the index's {len(expected)} .debs")


def run_apt_bench(options: AptOptions, *, announce: Callable[[str], None] = lambda line: None) -> AptResult:
    """Build, publish, then time both methods `runs` times each, taking turns; the markdown table."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: not installed; run ./bootstrap.sh")
    if options.packages < 1 or options.runs < 1 or options.total_mb <= 0:
        raise ConfigError("--apt-packages, --apt-mb, --runs: must be positive")
    debs = plan_debs(load_distribution(distribution_path(options.repo_root)), options.packages,
                     int(options.total_mb * 1e6))  # fmt: skip
    names = [deb.name for deb in debs]
    with tempfile.TemporaryDirectory(prefix="mirrorseed-bench-apt-") as scratch, \
            demo_key((options.cache_dir or default_cache_dir()).resolve()) as key:  # fmt: skip
        base = Path(scratch)
        mirror_root, dest = base / "mirror", base / "public"
        dest.mkdir()
        announce(f"apt: building {len(debs)} packages ({options.total_mb:g} MB) with dpkg-deb")
        build_debian_repo(mirror_root, debs, suite=SUITE)
        _sign_release(mirror_root, key.gnupghome, key.fingerprint)
        limit = options.mirror_rate or None
        with RangeServer(mirror_root, rate_limit=limit) as mirror, serve_directory(dest) as public:
            report = release(
                Settings(
                    snapshot=mirror_root,
                    format="debian",
                    dest=str(dest),
                    public_url=public.url,
                    repo="bench-apt",
                    mirrors=(MirrorConfig(url=mirror.url),),
                    key=key.fingerprint,
                    gnupghome=key.gnupghome,
                    state=base / "state.sqlite",
                )  # fmt: skip
            )
            (index_zst,) = dest.glob("index/*/index.json.zst")
            index = json.loads(zstandard.ZstdDecompressor().decompress(index_zst.read_bytes()))
            expected = {r["path"].rsplit("/", 1)[1]: r["sha256"] for r in index["packages"]}
            announce(f"apt: published sequence {report.sequence}; {len(expected)} packages in the signed index")
            installed = base / "usr-lib-apt-methods-mirrorseed"  # the published copy, installed as a user does
            shutil.copyfile(dest / "clients" / "apt" / "mirrorseed", installed)
            installed.chmod(0o755)
            signed_by = dest / "signing-key.gpg"
            keyring = base / "keyring" / "signing-key.gpg"
            keyring.parent.mkdir()
            shutil.copyfile(signed_by, keyring)
            http = AptRoot.create(base / "apt-http", sources=[f"deb [signed-by={signed_by}] {mirror.url} {SUITE} main"],
                                  config={})  # fmt: skip
            method = AptRoot.create(
                base / "apt-method",
                sources=[f"deb [signed-by={signed_by}] mirrorseed+{mirror.url} {SUITE} main"],
                config={
                    "Acquire::mirrorseed::Publication": public.url, "Acquire::mirrorseed::Keyring": str(keyring),
                    "Acquire::mirrorseed::StateDir": str(base / "state"), "Acquire::mirrorseed::DHT": "false",
                    "Acquire::mirrorseed::LPD": "false",
                },
                client=installed,
            )  # fmt: skip
            for apt, what in ((http, "http"), (method, "mirrorseed")):
                done = apt.apt_get("update")
                if done.returncode != 0:
                    raise PipelineError(f"bench --apt: apt-get update ({what}) failed: {done.stderr.strip()[-300:]}")
            http_s: list[float] = []
            method_s: list[float] = []
            for run in range(1, options.runs + 1):
                http_s.append(_download(http, names))
                _check(http, expected, "http")
                method_s.append(_download(method, names))
                _check(method, expected, "mirrorseed")
                announce(f"apt: run {run}: http {http_s[-1]:.2f} s, mirrorseed method {method_s[-1]:.2f} s")
    total = sum(deb.payload_size for deb in debs)
    rate = f"{options.mirror_rate / 1048576:g} MiB/s" if options.mirror_rate else "loopback speed"
    result = AptResult(len(debs), total, tuple(http_s), tuple(method_s), "", rate)
    return AptResult(result.packages, total, result.http_s, result.method_s, render_table(result), rate)


def render_table(result: AptResult) -> str:
    http, method = statistics.median(result.http_s), statistics.median(result.method_s)
    verdict = "PASS" if result.ok else "MISS"
    return (
        f"**apt-get install --download-only of {result.packages} packages ({result.package_bytes / 1e6:.1f} MB), "
        f"loopback mirror at {result.rate_label}, no peers** (median of {len(result.http_s)} runs each, "
        "whole apt-get process)\n\n"
        "| method | median (s) | runs (s) |\n|---|---:|---|\n"
        f"| apt's `http` | {http:.2f} | {', '.join(f'{s:.2f}' for s in result.http_s)} |\n"
        f"| mirrorseed (`mirrorseed+http`, every .deb by its .torrent) | {method:.2f} | "
        f"{', '.join(f'{s:.2f}' for s in result.method_s)} |\n\n"
        f"Method / http: **{result.ratio:.2f}×** (target ≤ {TARGET_RATIO}×: {verdict})\n"
    )
