"""`invoke bench --swarm`: how much a swarm takes off the operator, measured with real parts (issue 12 point 6).

Everything runs on loopback: Debian's opentracker (whitelist mode), a release published by `pipeline.run.release`
with `trackers=[announce]` writing the tracker's whitelist, the operator's seed box (`pipeline.seed.SeedBox`, what
`invoke seed` runs, bounded by `seed_upload_limit`), an HTTP mirror (the project's `RangeServer`, throttled) and
the publication site (an unthrottled `RangeServer` over the destination, standing in for the operator's CDN).

K users (aria2, default 8) arrive `interval` seconds apart, each in its own HOME and on its own loopback address
(127.0.1.N, so the servers count bytes per user), and does what the site tells users to do: the front page's
recipe (key, signed pointer, index, one example package), the front page's update script with WANT naming the
package set, then gives back (seeding opted in: the site's `give-back.sh`, left running to the end). Each
user's `~/.aria2/aria2.conf` binds aria2 to the user's address and turns DHT and LPD off (and
MIRRORSEED_LPD=false): no packet leaves the machine.

The package set: `packages` names and sizes drawn from `../shared/data` (real Debian bookworm sizes, scaled to
`total_mb`), content deterministic (bench.harness's writer), laid out as an Arch repository (a repo db listing
them), because the site publishes its update script (many packages by name, one aria2 run) for Arch snapshots.

Bytes: the mirror's and the site's come from their servers' per-address counters, the seed box's from its aria2
RPC (`uploadLength` per torrent; package torrents only). What each user received is the bytes of its package
files; what users gave each other is what they received minus what came from the mirror and the seed box
(payload only: duplicate or failed pieces are not counted). The operator egress is (mirror + seed box) bytes
in copies of the package set; a plain HTTP mirror serves K copies.

Scenarios: `offload` (the throttled mirror and the seed box up) and `dead-mirror` (the mirror is stopped after
the release, before any user; the seed box stops as soon as the first user has its packages: later users must
complete from peers). Every process is stopped by its PID, every wait is bounded, and nothing is printed:
`run_swarm_bench` returns the rendered tables and writes a JSON file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from bench.harness import (
    SEED,
    CorpusFile,
    _content_pool,
    _read_stat,
    _write_file,
    default_cache_dir,
    distribution_path,
    load_distribution,
    plan_corpus,
)
from pipeline.config import Settings
from pipeline.errors import ConfigError, PipelineError
from pipeline.localtracker import LocalTracker, free_port
from pipeline.objects import GIVE_BACK_KEY, RECIPE_KEY, UPDATE_KEY
from pipeline.run import release
from pipeline.seed import SeedBox
from pipeline.serve import serve_directory

Announce = Callable[[str], None]

# The mirror as the users' LAN sees it: 4 MiB/s (about 35 Mbit/s) for the whole mirror, shared by every user:
# a public mirror reached through the LAN's one internet link. aria2 peers on loopback move 50-100 MB/s here,
# the ratio of a gigabit LAN to such a link, so peers matter as they would between neighbours; a mirror at
# loopback speed would serve nearly every byte before any peer could (shared/notes/swarm.md).
MIRROR_RATE = 4 * 1024 * 1024
# The seed box is bounded as an operator bounds it (seed_upload_limit): 2 MiB/s, half the mirror's share of
# the link, so it adds a source without being a second full-speed mirror.
SEED_BOX_RATE = "2M"
USERS = 8
PACKAGES = 40
TOTAL_MB = 100.0
INTERVAL_S = 3.0
# Per scenario, from the first user's arrival; users not done by then failed. Without the mirror the seed box
# (2 MiB/s) is the only source of new pieces, and it sends the same pieces to several users (aria2 has no
# super-seeding): 100 MB took longer than 150 s in a run here.
SCENARIO_TIMEOUT_S = 210.0
TARGET_COPIES = 1.5  # issue 12 point 6: at most 1.5 copies of the package set for 8 users
REPO = "swarm-bench"
ARCH_REPO = "swarm"  # the Arch repository (and db) name in the snapshot
ARCH_DIR = f"{ARCH_REPO}/os/x86_64"
USER_NET = "127.0.1."  # user N (1-based) is 127.0.1.N: loopback, its own address for the servers' counters

# The opted-in user's seeding bounds (the site's give-back.sh reads them): seed half an hour with no ratio
# stop, 100 MiB/s (no real cap between LAN neighbours), every package of the set.
# Only what the recipe fetched: never the host's own package caches.
GIVE_BACK_ENV = {
    "MIRRORSEED_SEED_RATIO": "0",
    "MIRRORSEED_SEED_MINUTES": "30",
    "MIRRORSEED_UPLOAD_LIMIT": "100M",
    "MIRRORSEED_SEED_DIRS": "packages",
}

STEP_GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL
SEED_READY_TIMEOUT_S = 60.0
TRACKER_TIMEOUT_S = 15.0


def _quiet(line: str) -> None:
    return None


@dataclass(frozen=True)
class SwarmOptions:
    repo_root: Path
    users: int = USERS
    packages: int = PACKAGES
    total_mb: float = TOTAL_MB
    interval_s: float = INTERVAL_S
    mirror_rate: int = MIRROR_RATE
    seed_rate: str = SEED_BOX_RATE
    timeout_s: float = SCENARIO_TIMEOUT_S
    scenarios: tuple[str, ...] = ("offload", "dead-mirror")
    user_conf: tuple[str, ...] = ()  # extra `key=value` lines for every user's aria2.conf (what-if runs)
    out: Path | None = None  # JSON results; None: <repo>/.bench/swarm.json
    cache_dir: Path | None = None  # the demo key's cache; None: bench.harness.default_cache_dir()


# --------------------------------------------------------------------------------------------------------
# The package set, as an Arch repository


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    size: int
    index: int  # the content recipe (bench.harness._write_file)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.arch}.pkg.tar.zst"

    @property
    def path(self) -> str:
        return f"{ARCH_DIR}/{self.filename}"


def plan_package_set(distribution: Sequence[tuple[str, int]], count: int, total_bytes: int) -> tuple[Package, ...]:
    """`count` Debian packages drawn as the main bench draws its corpus (same seed), sizes scaled by one factor
    to `total_bytes`; names and versions from the Debian file names, made Arch-like (`-rel` added if missing)."""
    drawn, _ = plan_corpus(distribution, count, 1 << 62, SEED)
    real = sum(f.size for f in drawn)
    packages: list[Package] = []
    seen: set[str] = set()
    for entry in drawn:
        name, version, arch = entry.path.rsplit("/", 1)[1].removesuffix(".deb").split("_")
        if name in seen:
            continue
        seen.add(name)
        version = version.replace(":", ".").replace("~", ".")  # no epoch or tilde in a file name here
        version = version if "-" in version else f"{version}-1"
        size = max(1024, round(entry.size * total_bytes / real))
        packages.append(Package(name, version, "any" if arch == "all" else "x86_64", size, entry.index))
    return tuple(packages)


def _desc(package: Package, sha256: str) -> bytes:
    fields = {
        "FILENAME": package.filename, "NAME": package.name, "VERSION": package.version, "ARCH": package.arch,
        "CSIZE": str(package.size), "SHA256SUM": sha256, "DESC": "mirrorseed swarm bench package (random bytes)",
    }  # fmt: skip
    return "".join(f"%{key}%\n{value}\n\n" for key, value in fields.items()).encode()


def build_snapshot(root: Path, packages: Sequence[Package]) -> None:
    """The Arch snapshot: `swarm/os/x86_64/<package files>` and the repo db `swarm.db` (a gzip tar of `desc`s)."""
    directory = root / ARCH_DIR
    directory.mkdir(parents=True)
    pool = memoryview(_content_pool(SEED))
    db = io.BytesIO()
    with tarfile.open(fileobj=db, mode="w:gz", format=tarfile.USTAR_FORMAT) as archive:
        for package in packages:
            target = directory / package.filename
            _write_file(target, CorpusFile(package.index, package.path, package.size, 0), pool, SEED)
            desc = _desc(package, _sha256(target))
            member = tarfile.TarInfo(f"{package.name}-{package.version}/desc")
            member.size, member.mtime, member.mode = len(desc), 1_700_000_000, 0o644
            archive.addfile(member, io.BytesIO(desc))
    (directory / f"{ARCH_REPO}.db").write_bytes(db.getvalue())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _set_writable(root: Path, writable: bool) -> None:
    """The seed box refuses a snapshot its aria2 user could write: make it read-only for everyone (and back)."""
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o755 if writable else 0o555)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644 if writable else 0o444)


# --------------------------------------------------------------------------------------------------------
# Processes: each started in its own session, stopped by PID with its descendants


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            status = _read_stat(int(name))
            if status is not None:
                parents[int(name)] = status[0]
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process and every descendant by PID (`timeout` in the recipes starts a process group of its
    own, so a group signal would miss aria2), a bounded wait, then SIGKILL to whatever is left."""
    if process.poll() is not None:
        return
    tree = [process.pid, *_descendants(process.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STEP_GRACE_S
        while time.monotonic() < deadline and any(_read_stat(pid) is not None for pid in tree):
            process.poll()  # reap ours; the others are reaped by their parents or init
            time.sleep(0.1)
        if process.poll() is not None and all(_alive(pid) is False for pid in tree[1:]):
            break
    process.wait(timeout=STEP_GRACE_S)


def stop_user(user: UserRun) -> None:
    for process in user.processes:
        stop_process(process)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return state[state.rfind(b")") + 2 : state.rfind(b")") + 3] != b"Z"


# --------------------------------------------------------------------------------------------------------
# Users


@dataclass
class UserRun:
    number: int  # 1-based
    address: str
    home: Path
    arrived_s: float = 0.0  # since the first arrival
    done_s: float | None = None  # update.sh finished (its packages verified), since the first arrival
    status: str = "waiting"  # waiting, recipe, update, seeding, failed: <why>, timeout
    received: int = 0  # bytes of its package files
    from_mirror: int = 0
    from_site: int = 0
    give_back: str = ""  # which give-back ran
    steps: dict[str, float] = field(default_factory=dict)  # seconds each step took
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def recipe_dir(self) -> Path:
        return self.home / "recipe"

    @property
    def completed(self) -> bool:
        return self.done_s is not None


@dataclass(frozen=True)
class SiteScripts:
    """What the front page tells users to download and run, and the names they give update.sh."""

    recipe: str  # recipe.sh
    update: str  # update.sh, run with `names` as its arguments
    give_back: str  # give-back.sh
    names: tuple[str, ...]


def site_scripts(site_url: str, names: Sequence[str]) -> SiteScripts:
    """The site's published scripts, as a user downloads them."""
    texts = []
    for key in (RECIPE_KEY, UPDATE_KEY, GIVE_BACK_KEY):
        try:
            with urlopen(f"{site_url}/{key}", timeout=10) as response:  # noqa: S310 (our loopback server)
                texts.append(response.read().decode("utf-8"))
        except OSError as err:
            raise PipelineError(f"{site_url}/{key}: {err} (a Debian or Arch publication has it)") from err
    return SiteScripts(texts[0], texts[1], texts[2], tuple(names))


def _user_env(user: UserRun) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    return {**env, "HOME": str(user.home), "MIRRORSEED_LPD": "false", **GIVE_BACK_ENV}


def prepare_user(user: UserRun, scripts: SiteScripts, extra_conf: Sequence[str] = ()) -> None:
    """HOME with `~/.aria2/aria2.conf` (aria2 reads it before the command line's options): the user's own loopback
    address, no DHT, no LPD. The recipe folder with the site's scripts."""
    conf = user.home / ".aria2" / "aria2.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        f"interface={user.address}\ndisable-ipv6=true\nenable-dht=false\nenable-dht6=false\nbt-enable-lpd=false\n"
        + "".join(f"{line}\n" for line in extra_conf),
        encoding="utf-8",
    )
    user.recipe_dir.mkdir()
    (user.recipe_dir / "recipe.sh").write_text(scripts.recipe, encoding="utf-8")
    (user.recipe_dir / "update.sh").write_text(scripts.update, encoding="utf-8")
    (user.recipe_dir / GIVE_BACK_KEY).write_text(scripts.give_back, encoding="utf-8")


def _start(user: UserRun, argv: Sequence[str], log_name: str) -> subprocess.Popen[bytes]:
    with (user.home / log_name).open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 (our argv)
            list(argv), cwd=user.recipe_dir, env=_user_env(user), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    user.processes.append(process)
    return process


def _run_step(user: UserRun, argv: Sequence[str], log_name: str, deadline: float) -> bool:
    started = time.monotonic()
    process = _start(user, argv, log_name)
    try:
        code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_process(process)
        user.status = "timeout"
        return False
    finally:
        user.steps[log_name.removesuffix(".log")] = round(time.monotonic() - started, 2)
    if code != 0:
        tail = (user.home / log_name).read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        user.status = f"failed: {log_name} exit {code}: {tail[0][:160]}"
        return False
    return True


def run_user(user: UserRun, scripts: SiteScripts, site_url: str, start: float, deadline: float) -> None:
    """One user, from arrival to seeding: recipe.sh, update.sh (timed), then the give-back step left running."""
    user.status = "recipe"
    if not _run_step(user, ["bash", "recipe.sh"], "recipe.log", deadline):
        return
    user.status = "update"
    if not _run_step(user, ["bash", "update.sh", *scripts.names], "update.log", deadline):
        return
    user.done_s = time.monotonic() - start
    user.give_back = "the site's give-back.sh"
    _start(user, ["bash", "give-back.sh"], "give-back.log")
    user.status = "seeding"


def received_bytes(user: UserRun) -> int:
    """Bytes of complete package files the user holds (the update's folder and the recipe's Metalink copy); a
    file with an aria2 control file beside it is incomplete (aria2 allocates the whole file first): not counted."""
    total = 0
    for folder in ("packages", "packages-metalink"):
        directory = user.recipe_dir / folder
        if directory.is_dir():
            total += sum(
                p.stat().st_size
                for p in directory.iterdir()
                if p.is_file() and p.suffix != ".aria2" and not p.with_name(p.name + ".aria2").exists()
            )
    return total


# --------------------------------------------------------------------------------------------------------
# One scenario


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    users: tuple[UserRun, ...]
    package_bytes: int
    mirror: int
    seed_box: int
    site: int
    seed_box_stopped_s: float | None
    wall_s: float

    @property
    def received(self) -> int:
        return sum(u.received for u in self.users)

    @property
    def by_users(self) -> int:
        """What users gave each other: received minus what came from the mirror and the seed box."""
        return max(0, self.received - self.mirror - self.seed_box)

    @property
    def copies(self) -> float:
        return (self.mirror + self.seed_box) / self.package_bytes

    @property
    def all_completed(self) -> bool:
        return all(u.completed for u in self.users)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "package_bytes": self.package_bytes, "mirror_bytes": self.mirror,
            "seed_box_bytes": self.seed_box, "site_bytes": self.site, "users_bytes": self.by_users,
            "received_bytes": self.received, "operator_copies": round(self.copies, 3),
            "seed_box_stopped_s": self.seed_box_stopped_s, "wall_s": round(self.wall_s, 1),
            "users": [
                {
                    "user": u.number, "address": u.address, "arrived_s": round(u.arrived_s, 1),
                    "done_s": None if u.done_s is None else round(u.done_s, 1), "status": u.status,
                    "received_bytes": u.received, "mirror_bytes": u.from_mirror, "site_bytes": u.from_site,
                    "give_back": u.give_back, "steps_s": u.steps,
                }
                for u in self.users
            ],
        }  # fmt: skip


def _seed_box_upload(box: Any, packages: set[str]) -> int:
    """Bytes the seed box's aria2 uploaded for package torrents (RPC uploadLength, active and stopped)."""
    keys = ["infoHash", "uploadLength"]
    items = [*box.aria2.call("aria2.tellActive", keys), *box.aria2.call("aria2.tellStopped", 0, 10000, keys)]
    return sum(int(i["uploadLength"]) for i in items if i.get("infoHash") in packages)


def _wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise PipelineError(f"swarm bench: not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def _keep_logs(users: Sequence[UserRun], target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    for user in users:
        for log in user.home.glob("*.log"):
            (target / f"u{user.number}").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target / f"u{user.number}" / log.name)


@contextmanager
def _work_dir() -> Iterator[Path]:
    # world-readable (the seed box's aria2 runs as `nobody` when we are root): not under a 0700 home or tmp dir
    work = Path(tempfile.mkdtemp(prefix="mirrorseed-swarm-"))
    try:
        work.chmod(0o755)
        yield work
    finally:
        if (work / "snapshot").exists():
            _set_writable(work / "snapshot", True)
        shutil.rmtree(work, ignore_errors=True)


def run_scenario(
    name: str, options: SwarmOptions, packages: Sequence[Package], key: Any, announce: Announce, logs: Path
) -> ScenarioResult:
    """One scenario from an empty work dir to every process stopped; the users' logs are kept under `logs`."""
    dead_mirror = name == "dead-mirror"
    with ExitStack() as stack:
        work = stack.enter_context(_work_dir())
        snapshot, dest = work / "snapshot", work / "public"
        build_snapshot(snapshot, packages)
        dest.mkdir()
        tracker = stack.enter_context(LocalTracker())
        site = stack.enter_context(serve_directory(dest))
        mirror = stack.enter_context(serve_directory(snapshot, rate_limit=options.mirror_rate))
        secret = work / "rpc-secret"
        secret.write_text(os.urandom(16).hex() + "\n")
        secret.chmod(0o600)
        settings = Settings(
            snapshot=snapshot, format="arch", dest=str(dest), public_url=site.url, repo=REPO,
            webseeds=(mirror.url,), trackers=(tracker.announce_url,), key=key.fingerprint,
            gnupghome=key.gnupghome, state=work / "state.sqlite", tracker_whitelist=tracker.whitelist_path,
            tracker_pid_file=tracker.pid_file, seed_max_torrents=len(packages), seed_upload_limit=options.seed_rate,
            seed_port=free_port(), seed_rpc_port=free_port(), seed_rpc_secret_file=secret, seed_poll=3600,
        )  # fmt: skip
        report = release(settings)
        announce(f"swarm/{name}: published sequence {report.sequence} ({len(packages)} packages)")
        tracker.wait_tracked(tracker.whitelist_path.read_text().split(), timeout=TRACKER_TIMEOUT_S)
        mirror_before, site_before = mirror.bytes_served, site.bytes_served  # the release's own probes

        _set_writable(snapshot, False)
        box = SeedBox(settings)
        box.start()
        stack.callback(box.stop)
        package_hashes = {h for h, label in box.seeding.items() if label.startswith(ARCH_DIR + "/")}

        def seeding() -> bool:
            status = box.status()
            return all(
                status.get(h, {}).get("status") == "active"
                and int(status[h]["completedLength"]) == int(status[h]["totalLength"])
                for h in package_hashes
            )

        _wait(seeding, "the seed box seeding every package", SEED_READY_TIMEOUT_S)
        announce(f"swarm/{name}: seed box up ({len(package_hashes)} packages, {options.seed_rate}B/s)")
        if dead_mirror:
            mirror.close()
            announce(f"swarm/{name}: mirror stopped")

        scripts = site_scripts(site.url, [p.name for p in packages])
        users = [UserRun(n, f"{USER_NET}{n}", work / "users" / f"u{n}") for n in range(1, options.users + 1)]
        for user in users:
            prepare_user(user, scripts, options.user_conf)
            stack.callback(stop_user, user)

        start = time.monotonic()
        deadline = start + options.timeout_s
        threads: list[threading.Timer] = []
        seed_box_upload: int | None = None
        seed_box_stopped: float | None = None
        for i, user in enumerate(users):
            user.arrived_s = i * options.interval_s
            timer = threading.Timer(
                max(0.0, start + user.arrived_s - time.monotonic()), run_user,
                args=(user, scripts, site.url, start, deadline),
            )  # fmt: skip
            timer.daemon = True
            threads.append(timer)
            timer.start()
        announced: set[int] = set()

        def report_done() -> None:
            for user in users:
                if user.completed and user.number not in announced:
                    announced.add(user.number)
                    announce(f"swarm/{name}: user {user.number} has its packages at {user.done_s:.1f} s")

        while True:
            running = any(t.is_alive() for t in threads) and time.monotonic() < deadline + STEP_GRACE_S
            report_done()
            # checked once more after the last user thread ended: a tiny set can be done between two looks
            if dead_mirror and seed_box_stopped is None and any(u.completed for u in users):
                seed_box_stopped = time.monotonic() - start  # when it was told to stop
                seed_box_upload = _seed_box_upload(box, package_hashes)
                box.stop()
                announce(f"swarm/{name}: seed box stopped at {seed_box_stopped:.1f} s (first user done)")
            if not running:
                break
            time.sleep(0.2)
        for timer in threads:
            timer.cancel()
            timer.join(timeout=STEP_GRACE_S)
        report_done()
        wall = time.monotonic() - start
        if seed_box_upload is None:
            seed_box_upload = _seed_box_upload(box, package_hashes)
        for user in users:
            if not user.completed and user.status in ("waiting", "recipe", "update"):
                user.status = "timeout"
            user.received = received_bytes(user)
            user.from_mirror = mirror.served.get(user.address, 0)
            user.from_site = site.served.get(user.address, 0)
        _keep_logs(users, logs / name)
        return ScenarioResult(
            name=name, users=tuple(users), package_bytes=sum(p.size for p in packages),
            mirror=mirror.bytes_served - mirror_before, seed_box=seed_box_upload,
            site=site.bytes_served - site_before, seed_box_stopped_s=seed_box_stopped, wall_s=wall,
        )  # fmt: skip
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------------
# The run and the tables


@dataclass(frozen=True)
class SwarmResult:
    scenarios: tuple[ScenarioResult, ...]
    table: str
    json_path: Path
    options: SwarmOptions

    @property
    def ok(self) -> bool:
        return all(s.all_completed for s in self.scenarios)


def run_swarm_bench(options: SwarmOptions, *, announce: Announce = _quiet) -> SwarmResult:
    """Both scenarios (or those asked for) on one package set; the markdown tables and a JSON file."""
    from pipeline.demo import demo_key

    if options.users < 1 or options.packages < 1 or options.total_mb <= 0:
        raise ConfigError("--swarm-users, --swarm-packages, --swarm-mb: must be positive")
    for tool in ("aria2c", "opentracker", "gpgv", "jq", "zstd"):
        if shutil.which(tool) is None and not (tool == "opentracker" and Path("/usr/bin/opentracker").exists()):
            raise ConfigError(f"{tool}: not installed; run ./bootstrap.sh")
    unknown = [s for s in options.scenarios if s not in ("offload", "dead-mirror")]
    if unknown:
        raise ConfigError(f"swarm scenario {unknown[0]!r}: expected offload or dead-mirror")
    distribution = load_distribution(distribution_path(options.repo_root))
    packages = plan_package_set(distribution, options.packages, int(options.total_mb * 1e6))
    total = sum(p.size for p in packages)
    announce(
        f"swarm: {len(packages)} packages, {total / 1e6:.1f} MB, {options.users} users every {options.interval_s:g} s"
    )
    results: list[ScenarioResult] = []
    cache_dir = (options.cache_dir or default_cache_dir()).resolve()
    out = options.out or options.repo_root / ".bench" / "swarm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = out.parent / "swarm-logs"
    with demo_key(cache_dir) as key:
        for name in options.scenarios:
            results.append(run_scenario(name, options, packages, key, announce, logs))
    table = render_tables(results, options)
    doc = {
        "options": {
            "users": options.users, "packages": len(packages), "package_bytes": total,
            "interval_s": options.interval_s, "mirror_rate": options.mirror_rate, "seed_rate": options.seed_rate,
            "target_copies": TARGET_COPIES, "user_conf": list(options.user_conf),
        },
        "scenarios": [r.to_json() for r in results],
        "table": table,
        "logs": str(logs),
    }  # fmt: skip
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return SwarmResult(tuple(results), table, out, options)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def render_tables(results: Sequence[ScenarioResult], options: SwarmOptions) -> str:
    lines: list[str] = []
    for result in results:
        k = len(result.users)
        title = {
            "offload": f"Swarm offload: {k} users, mirror throttled to {options.mirror_rate / 2**20:g} MiB/s, "
            f"seed box at {options.seed_rate}B/s",
            "dead-mirror": f"Dead mirror: {k} users, no mirror; the seed box stops once the first user is done",
        }[result.name]
        conf = f"; users' aria2.conf adds {', '.join(options.user_conf)}" if options.user_conf else ""
        lines += [
            f"**{title}** (package set {_mb(result.package_bytes)} MB, users {options.interval_s:g} s apart{conf})",
            "",
        ]
        lines += [
            "| user | arrived (s) | packages at (s) | took (s) | received (MB) | from mirror (MB) | "
            "from peers: seed box + users (MB) | status |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for u in result.users:
            took = None if u.done_s is None else u.done_s - u.arrived_s
            peers = max(0, u.received - u.from_mirror)
            lines.append(
                f"| {u.number} | {u.arrived_s:.0f} | {_s(u.done_s)} | {_s(took)} | {_mb(u.received)} | "
                f"{_mb(u.from_mirror)} | {_mb(peers)} | {'complete' if u.completed else u.status} |"
            )
        lines += ["", "| served by | MB | copies of the package set |", "|---|---:|---:|"]
        for label, value in (
            ("HTTP mirror", result.mirror),
            ("seed box (aria2 uploadLength)", result.seed_box),
            ("users, to each other (received − mirror − seed box)", result.by_users),
            ("publication site (pointer, index, torrents; not counted below)", result.site),
        ):
            lines.append(f"| {label} | {_mb(value)} | {value / result.package_bytes:.2f} |")
        verdict = "PASS" if result.copies <= TARGET_COPIES else "MISS"
        if result.name == "offload":
            lines.append(
                f"| **operator egress (mirror + seed box)** | {_mb(result.mirror + result.seed_box)} | "
                f"**{result.copies:.2f}** (target ≤ {TARGET_COPIES:g} for 8 users: {verdict}; "
                f"plain HTTP mirror: {k}) |"
            )
        else:
            done = sum(u.completed for u in result.users)
            stopped = result.seed_box_stopped_s
            after = sum(1 for u in result.users if u.done_s is not None and stopped is not None and u.done_s > stopped)
            lines.append(f"| **operator egress (seed box only)** | {_mb(result.seed_box)} | **{result.copies:.2f}** |")
            lines += [
                "",
                f"Seed box stopped at {_s(result.seed_box_stopped_s)} s; {done} of {k} users complete "
                f"({after} finished after it stopped, from peers only): "
                f"{'PASS' if done == k else 'MISS'}.",
            ]
        giveback = sorted({u.give_back for u in result.users if u.give_back})
        lines += ["", f"Give-back step: {'; '.join(giveback) or 'none ran'}. Wall time {result.wall_s:.0f} s.", ""]
    return "\n".join(lines).rstrip() + "\n"
