"""The demo snapshot (a small Debian repository of real `.deb` files) and the demo signing key.

Both are built once and cached under a directory the caller chooses (`invoke demo` uses `.demo/`):

- `build_demo_snapshot(cache_dir)` makes `cache_dir/snapshot` with `dpkg-deb`, `dpkg-scanpackages` and
  `apt-ftparchive`, reproducibly (fixed `SOURCE_DATE_EPOCH`, mtimes, seeds and Release date). It builds in
  a temporary directory and renames it into place, so an interrupted build never leaves half a snapshot;
  a marker file inside the snapshot records the recipe it was built from.
- `demo_key(cache_dir)` yields a throwaway ed25519 key labelled as a demo key, imported into a short private
  `GNUPGHOME` under /tmp (gpg-agent's socket path must fit 108 bytes), and removes that home afterwards.

`build_debian_repo` is shared with the tests, which build small repositories of their own with it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import lzma
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import PipelineError, SeedError, SigningError, SnapshotError, TrackerError
from pipeline.model import PackageRecord, Progress
from pipeline.report import RunReport

if TYPE_CHECKING:  # imported where used: building the snapshot needs none of them
    from pipeline.localtracker import LocalTracker
    from pipeline.seed import SeedBox
    from pipeline.serve import RangeServer

log = logging.getLogger(__name__)

# Bump when the recipe changes in a way the package list below does not show (e.g. control fields).
RECIPE_VERSION = 1
SOURCE_DATE_EPOCH = 1_700_000_000  # 2023-11-14T22:13:20Z: every timestamp in the demo snapshot
MARKER = ".mirrorseed-demo.json"
MAINTAINER = "mirrorseed demo <demo@mirrorseed.invalid>"

DEMO_UID = "mirrorseed DEMO key (not for production) <demo@mirrorseed.invalid>"
DEMO_KEY_FILE = "demo-signing-key.asc"
DEMO_KEY_EXPIRY = "2y"
DEMO_KEY_MIN_VALIDITY_S = 30 * 86400  # regenerate a cached key that expires sooner than this


class Runner(Protocol):
    """Runs one command (argv, never a shell string) and returns its stdout.

    Raises `subprocess.CalledProcessError` (with `stderr`) on a non-zero exit and `FileNotFoundError` if the
    program is missing. Injected so callers can log or count the commands; `run_command` is the default.
    """

    def __call__(
        self, args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> bytes: ...


def run_command(args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> bytes:
    """The default Runner: subprocess.run, output captured, checked."""
    log.debug("run %s (cwd %s)", " ".join(args), cwd)
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, check=True)
    return done.stdout


def _call(run: Runner, args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> bytes:
    """`run(args)` with failures turned into one-line SnapshotErrors naming the program."""
    try:
        return run(args, cwd=cwd, env=env)
    except FileNotFoundError:
        raise SnapshotError(f"{args[0]}: not installed; run ./bootstrap.sh to install the system packages") from None
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode("utf-8", "replace").strip() if isinstance(exc.stderr, bytes) else ""
        last = stderr.splitlines()[-1] if stderr else "no error output"
        raise SnapshotError(f"{args[0]}: failed with exit code {exc.returncode} ({' '.join(args)}): {last}") from None


# --------------------------------------------------------------------------------------------------------
# Debian repositories


@dataclass(frozen=True)
class DebSpec:
    """One binary package to build. `version` may carry an epoch (`2:9.0-1`), which file names drop."""

    name: str
    version: str
    arch: str = "amd64"
    description: str = "mirrorseed demo package\nA small package built by mirrorseed for its demo and tests."
    payload_size: int = 2000
    seed: int = 0
    source: str | None = None  # the Source field: "foo" or "foo (1.0-1)" for a binNMU; None = same as name
    section: str = "misc"
    # dpkg-deb -Z: xz, gzip, zstd or none; None: xz, or none from 1 MiB (random payloads do not compress,
    # and xz would spend about half a second per MB finding that out)
    compression: str | None = None

    @property
    def source_name(self) -> str:
        return (self.source or self.name).split(" ", 1)[0]

    @property
    def compression_type(self) -> str:
        if self.compression is not None:
            return self.compression
        return "none" if self.payload_size >= 1024 * 1024 else "xz"

    @property
    def filename(self) -> str:
        """`<name>_<version without epoch>_<arch>.deb`, as the Debian archive names it."""
        return f"{self.name}_{self.version.partition(':')[2] or self.version}_{self.arch}.deb"

    def pool_path(self, component: str = "main") -> str:
        """`pool/<component>/<h or libh>/<source>/<file>`."""
        source = self.source_name
        prefix = source[:4] if source.startswith("lib") and len(source) > 3 else source[:1]
        return f"pool/{component}/{prefix}/{source}/{self.filename}"

    def control(self) -> str:
        synopsis, _, extended = self.description.partition("\n")
        lines = [
            f"Package: {self.name}",
            *([f"Source: {self.source}"] if self.source else []),
            f"Version: {self.version}",
            f"Architecture: {self.arch}",
            f"Maintainer: {MAINTAINER}",
            f"Installed-Size: {(self.payload_size + 1023) // 1024 + 4}",
            f"Section: {self.section}",
            "Priority: optional",
            f"Description: {synopsis}",
        ]
        lines.extend(f" {line}" if line.strip() else " ." for line in extended.splitlines())
        return "\n".join(lines) + "\n"


def _set_tree_modes(top: Path, *, file_mode: int, dir_mode: int, mtime: int | None = None) -> None:
    """Every file and directory of `top` (itself included) to these modes, and to `mtime` if given (children
    before parents, so a directory's mtime is not changed again by setting its children's)."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for names, mode in ((filenames, file_mode), (dirnames, dir_mode)):
            for name in names:
                path = os.path.join(dirpath, name)
                os.chmod(path, mode)
                if mtime is not None:
                    os.utime(path, (mtime, mtime))
    os.chmod(top, dir_mode)
    if mtime is not None:
        os.utime(top, (mtime, mtime))


def _set_tree_mode_and_mtime(top: Path) -> None:
    """Fixed modes and mtimes so dpkg-deb writes the same tar every time."""
    _set_tree_modes(top, file_mode=0o644, dir_mode=0o755, mtime=SOURCE_DATE_EPOCH)


def _stage(spec: DebSpec, staging: Path) -> None:
    doc = staging / "usr" / "share" / "doc" / spec.name
    doc.mkdir(parents=True)
    (staging / "DEBIAN").mkdir()
    (staging / "DEBIAN" / "control").write_text(spec.control(), encoding="utf-8")
    (doc / "README.demo").write_text(
        f"{spec.name} {spec.version}: a mirrorseed demo package. It installs nothing but this directory.\n",
        encoding="utf-8",
    )
    (doc / "payload.bin").write_bytes(random.Random(spec.seed).randbytes(spec.payload_size))
    _set_tree_mode_and_mtime(staging)


def build_deb(spec: DebSpec, out: Path, *, run: Runner | None = None) -> None:
    """Build one real `.deb` at `out` with `dpkg-deb --build --root-owner-group`, reproducibly."""
    run = run or run_command
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    with tempfile.TemporaryDirectory(prefix="msdeb") as tmp:
        staging = Path(tmp) / "root"
        _stage(spec, staging)
        out.parent.mkdir(parents=True, exist_ok=True)
        _call(
            run,
            ["dpkg-deb", "--root-owner-group", f"-Z{spec.compression_type}", "--build", str(staging), str(out)],
            env=env,
        )
    os.utime(out, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))


def build_debian_repo(
    root: Path,
    packages: Sequence[DebSpec],
    *,
    suite: str = "stable",
    component: str = "main",
    architectures: Sequence[str] = ("amd64",),
    codename: str | None = None,
    origin: str = "mirrorseed demo",
    label: str = "mirrorseed demo",
    run: Runner | None = None,
    reuse_pool: bool = False,
) -> None:
    """Write a Debian repository under `root`: pool/ of real .debs, Packages{,.gz,.xz} per arch, Release.

    `all` packages are listed in every `binary-<arch>/Packages`, as Debian does. Release is unsigned and
    dated `SOURCE_DATE_EPOCH`, so the same inputs give the same bytes. With `reuse_pool`, a .deb already
    in the pool is listed as it is (not built again).
    """
    run = run or run_command
    paths = [spec.pool_path(component) for spec in packages]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise ValueError(f"two packages build the same file: {', '.join(duplicates)}")
    for spec, path in zip(packages, paths, strict=True):
        if not (reuse_pool and (root / path).is_file()):
            build_deb(spec, root / path, run=run)

    dist = root / "dists" / suite
    for arch in architectures:
        listing = _call(run, ["dpkg-scanpackages", "--multiversion", "-a", arch, f"pool/{component}"], cwd=root)
        binary = dist / component / f"binary-{arch}"
        binary.mkdir(parents=True, exist_ok=True)
        (binary / "Packages").write_bytes(listing)
        (binary / "Packages.gz").write_bytes(gzip.compress(listing, compresslevel=9, mtime=0))
        (binary / "Packages.xz").write_bytes(lzma.compress(listing, preset=6))

    release = dist / "Release"
    release.unlink(missing_ok=True)
    fields = {
        "Origin": origin,
        "Label": label,
        "Suite": suite,
        "Codename": codename or suite,
        "Date": formatdate(SOURCE_DATE_EPOCH, usegmt=True).replace("GMT", "UTC"),
        "Architectures": " ".join(architectures),
        "Components": component,
    }
    options = [arg for key, value in fields.items() for arg in ("-o", f"APT::FTPArchive::Release::{key}={value}")]
    text = _call(run, ["apt-ftparchive", *options, "release", f"dists/{suite}"], cwd=root)
    release.write_bytes(text)


# --------------------------------------------------------------------------------------------------------
# The demo snapshot


def _demo_packages() -> tuple[DebSpec, ...]:
    """Realistic names and versions (`+`, `~`, epochs, binNMUs, `all`, lib prefixes), each with its own seed."""
    markup = (
        "demo package whose description has <b>bold</b> & <script>\n"
        'Listings must show this text, not run it: <script>alert("x")</script> & <a href="#">link</a>.'
    )
    specs = [
        DebSpec("hello", "2.10-2", description="example package based on GNU hello (older version)"),
        DebSpec("hello", "2.10-3", description="example package based on GNU hello"),
        DebSpec("hello", "2.10-3", arch="arm64", description="example package based on GNU hello"),
        DebSpec("hello-traditional", "2.10-6", description="the classic greeting, and a good example"),
        DebSpec("libstdc++-demo6", "12.2.0-14+deb12u1", source="gcc-demo", section="libs"),
        DebSpec("libstdc++-demo-dev", "12.2.0-14+deb12u1", source="gcc-demo", section="libdevel"),
        DebSpec("gcc-demo-base", "12.2.0-14+deb12u1", source="gcc-demo", section="libs"),
        DebSpec("libfoo1", "1.2.3-1", source="foo", section="libs"),
        DebSpec("libfoo-dev", "1.2.3-1", source="foo", section="libdevel"),
        DebSpec("foo-doc", "1.2.3-1", arch="all", source="foo", section="doc"),
        DebSpec("demo-tool", "1.0~rc1-1", description="a release candidate: tilde sorts before 1.0"),
        DebSpec("aaphoto-demo", "0.45-1+b1", source="aaphoto-demo (0.45-1)", section="graphics"),
        DebSpec("2048-demo", "0.1.6-2+b2", source="2048-demo (0.1.6-2)", section="games"),
        DebSpec("python3-demo", "0.9.1-2", arch="all", source="python-demo", section="python"),
        DebSpec("vim-demo-common", "2:9.0.1378-2", arch="all", source="vim-demo", section="editors"),
        DebSpec("libssl-demo3", "3.0.11-1~deb12u2", source="openssl-demo", section="libs"),
        DebSpec("openssl-demo", "3.0.11-1~deb12u2", section="utils"),
        DebSpec("zlib1g-demo", "1:1.2.13.dfsg-1", source="zlib-demo", section="libs"),
        DebSpec("tzdata-demo", "2024a-0+deb12u1", arch="all", section="localization"),
        DebSpec("gir1.2-demo-1.0", "1.74.0-3", source="gobject-demo", section="introspection"),
        DebSpec("nodejs-demo", "18.19.0+dfsg-6~deb12u1", section="javascript", payload_size=40_000),
        DebSpec("x11-demo-utils", "7.7+5", section="x11"),
        DebSpec("markup-demo", "1.0-1", description=markup),
        DebSpec(
            "demo-big-data",
            "1.0-1",
            arch="all",
            description="a package of several megabytes\nBig enough for multi-connection downloads.",
            payload_size=6 * 1024 * 1024,  # stored uncompressed (-Znone): the .deb is 6 MB too
            section="misc",
        ),
    ]
    return tuple(replace(spec, seed=seed) for seed, spec in enumerate(specs, start=1))


DEMO_PACKAGES: tuple[DebSpec, ...] = _demo_packages()
DEMO_SUITE = "stable"
DEMO_ARCHITECTURES: tuple[str, ...] = ("amd64", "arm64")


@dataclass(frozen=True)
class DemoSnapshot:
    root: Path
    package_count: int


def _recipe_id() -> str:
    recipe = repr((RECIPE_VERSION, SOURCE_DATE_EPOCH, DEMO_SUITE, DEMO_ARCHITECTURES, DEMO_PACKAGES))
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _read_marker(snapshot: Path) -> DemoSnapshot | None:
    """The cached snapshot if its marker names the current recipe, else None."""
    try:
        doc = json.loads((snapshot / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("recipe") != _recipe_id() or not isinstance(doc.get("packages"), int):
        return None
    return DemoSnapshot(root=snapshot, package_count=doc["packages"])


def build_demo_snapshot(cache_dir: Path, *, run: Runner | None = None) -> DemoSnapshot:
    """The demo Debian snapshot at `cache_dir/snapshot`, built on first use and reused after.

    A snapshot from another recipe version is rebuilt. The build happens in a temporary sibling
    directory that is renamed into place complete, marker included.
    """
    target = cache_dir / "snapshot"
    cached = _read_marker(target)
    if cached is not None:
        log.debug("demo snapshot: reusing %s", target)
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log.info("demo snapshot: building %d packages in %s", len(DEMO_PACKAGES), target)
    building = Path(tempfile.mkdtemp(prefix=".snapshot-build.", dir=cache_dir))
    try:
        os.chmod(building, 0o755)
        build_debian_repo(building, DEMO_PACKAGES, suite=DEMO_SUITE, architectures=DEMO_ARCHITECTURES, run=run)
        count = sum(1 for _ in (building / "pool").rglob("*.deb"))
        (building / MARKER).write_text(
            json.dumps({"recipe": _recipe_id(), "packages": count}, sort_keys=True) + "\n", encoding="utf-8"
        )
        _move_into_place(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    built = _read_marker(target)
    if built is None:
        raise SnapshotError(f"{target}: the demo snapshot was replaced while building; run the demo again")
    log.info("demo snapshot: %d packages built in %.1f s", built.package_count, time.monotonic() - started)
    return built


def _move_into_place(building: Path, target: Path) -> None:
    """Rename `building` to `target`, setting aside (then deleting) a stale `target` first."""
    stale: Path | None = None
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=".snapshot-stale.", dir=target.parent))
        os.rename(target, stale / "snapshot")
    try:
        os.rename(building, target)
    except OSError:
        # another process put a snapshot there in the meantime; build_demo_snapshot checks its marker
        log.debug("demo snapshot: %s appeared while building", target)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# The demo key


@dataclass(frozen=True)
class DemoKey:
    gnupghome: Path
    fingerprint: str


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    env = {**os.environ, "GNUPGHOME": str(home)}
    argv = ["gpg", "--batch", "--no-tty", "--quiet", *args]
    try:
        done = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    except FileNotFoundError:
        raise SigningError("gpg: not installed; run ./bootstrap.sh to install gnupg") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SigningError(f"gpg {args[0]}: failed ({message[-1] if message else 'no output'})")
    return done.stdout


def _kill_agent(home: Path) -> None:
    try:
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"],
            env={**os.environ, "GNUPGHOME": str(home)},
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        pass


def _usable_demo_key(home: Path) -> str | None:
    """Fingerprint of a secret demo key in `home` that can sign and stays valid long enough, else None."""
    listing = _gpg(home, "--with-colons", "--list-secret-keys").decode("utf-8", "replace")
    key: dict[str, str] = {}
    found: list[dict[str, str]] = []
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            key = {"expires": fields[6], "caps": fields[11] if len(fields) > 11 else ""}
            found.append(key)
        elif fields[0] == "fpr" and "fpr" not in key and key:
            key["fpr"] = fields[9]
        elif fields[0] == "uid" and key:
            key.setdefault("uids", "")
            key["uids"] += fields[9] + "\n"
    deadline = time.time() + DEMO_KEY_MIN_VALIDITY_S
    for candidate in found:
        expires = candidate["expires"]
        if (
            DEMO_UID in candidate.get("uids", "").splitlines()
            and "S" in candidate["caps"]
            and expires.isdigit()
            and int(expires) > deadline
            and "fpr" in candidate
        ):
            return candidate["fpr"]
    return None


def _new_home() -> Path:
    """A fresh GNUPGHOME, mode 0700, on a short path: /tmp/msdXXXXXXXX (the agent socket must fit 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="msd", dir="/tmp"))


def _remove_home(home: Path) -> None:
    """Stop the home's agent and delete it. The agent removes its sockets as it exits, racing rmtree: retry."""
    _kill_agent(home)
    for _ in range(5):
        shutil.rmtree(home, ignore_errors=True)
        if not home.exists():
            return
        time.sleep(0.05)
    log.warning("demo key: could not remove %s", home)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _import_cached_key(cached: Path, home: Path) -> str | None:
    """Import the cached demo key into `home`; its fingerprint if usable for 30 more days, else None."""
    if not cached.is_file():
        return None
    try:
        _gpg(home, "--import", str(cached))
        fingerprint = _usable_demo_key(home)
    except SigningError as exc:
        log.warning("demo key: %s is unusable (%s); generating a new one", cached, exc)
        return None
    if fingerprint is None:
        log.info("demo key: %s expires within 30 days or is not the demo key; generating a new one", cached)
        return None
    _gpg(home, "--import-ownertrust", stdin=f"{fingerprint}:6:\n".encode())
    return fingerprint


def _generate_key(cached: Path, home: Path) -> str:
    """Generate the demo key in `home` and cache its secret key material in `cached` (0600)."""
    _gpg(
        home,
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",  # the demo key has no passphrase (it protects nothing)
        "--quick-gen-key",
        DEMO_UID,
        "ed25519",
        "sign",
        DEMO_KEY_EXPIRY,
    )
    fingerprint = _usable_demo_key(home)
    if fingerprint is None:
        raise SigningError(f"gpg: generated a demo key in {home} but cannot list it; check the gnupg install")
    _write_private(cached, _gpg(home, "--armor", "--export-secret-keys", fingerprint))
    log.info("demo key: generated %s, cached in %s", fingerprint, cached)
    return fingerprint


@contextmanager
def demo_key(cache_dir: Path) -> Iterator[DemoKey]:
    """Yield the demo signing key in a fresh short GNUPGHOME under /tmp; kill its agent and remove it after.

    The key (ed25519, no passphrase, valid 2 years, uid saying it is a demo key) is generated once and cached
    as exported secret key material in `cache_dir` (mode 0600); it is regenerated when it would expire
    within 30 days.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / DEMO_KEY_FILE
    home = _new_home()
    try:
        fingerprint = _import_cached_key(cached, home)
        if fingerprint is None:
            _remove_home(home)  # nothing stale stays next to the new key
            home = _new_home()
            fingerprint = _generate_key(cached, home)
        yield DemoKey(gnupghome=home, fingerprint=fingerprint)
    finally:
        _remove_home(home)


# --------------------------------------------------------------------------------------------------------
# The demo run (`invoke demo`)

DEMO_PUBLIC_PORT = 8780
DEMO_MIRROR_PORT = 8781
DEMO_TRACKER_PORT = 8782  # in the demo torrents' announce URL: a fixed port keeps a re-run a no-op release
DEMO_SEED_PORT = 8783  # the seed box's BitTorrent port
DEMO_SEED_RPC_PORT = 8784  # the seed box's aria2 JSON-RPC port (127.0.0.1)
RECIPE_TIMEOUT = 300.0  # the recipe bounds each aria2c run itself; this bounds the whole script
SEED_ANNOUNCE_TIMEOUT = 30.0  # the seed box hashes the snapshot's files, then announces them
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class DemoResult:
    report: RunReport
    recipe: str
    fetched: str
    public_url: str
    mirror_url: str
    tracker_url: str
    peer_bytes: int  # what the seed box uploaded of `fetched` while the mirror was down (the second user)
    peer_seconds: float  # how long that second user's recipe took


def run_demo(
    *,
    cache_dir: Path,
    dest: Path,
    serve: bool = False,
    progress: Progress | None = None,
    announce: Callable[[str], None] = lambda line: None,
    wait: Callable[[], None] | None = None,
    public_port: int = DEMO_PUBLIC_PORT,
    mirror_port: int = DEMO_MIRROR_PORT,
    tracker_port: int = DEMO_TRACKER_PORT,
    seed_port: int = DEMO_SEED_PORT,
    seed_rpc_port: int = DEMO_SEED_RPC_PORT,
) -> DemoResult:
    """`invoke demo`, all on 127.0.0.1: demo snapshot + demo key + a real opentracker -> publish to `dest`
    through release() (torrents announce to the tracker, the release writes its whitelist and SIGHUPs it)
    -> serve the destination and a mirror of the snapshot -> a first user runs the front page's recipe
    (bytes from the mirror, no peer yet) -> the seed box (`invoke seed`) seeds the snapshot -> the mirror
    is stopped -> a second user runs the same recipe in a fresh folder and gets the package from the seed
    box, found through the tracker. Both fetches are checked against the signed index's SHA-256."""
    from pipeline.config import MirrorConfig, Settings
    from pipeline.render import example_package
    from pipeline.run import published_records, read_pointer, release
    from pipeline.seed import SeedBox
    from pipeline.signing import Signer
    from pipeline.storage import open_storage

    public_url = f"http://127.0.0.1:{public_port}"
    mirror_url = f"http://127.0.0.1:{mirror_port}"
    announce(f"demo: building the demo Debian snapshot in {cache_dir} (cached after the first run)")
    snapshot = build_demo_snapshot(cache_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tracker = _start_tracker(tracker_port)
        stack.callback(tracker.stop)
        announce(f"demo: tracker opentracker PID {tracker.pid} at {tracker.announce_url} (whitelist mode, loopback)")
        stack.enter_context(_listening(dest, public_port))
        mirror = stack.enter_context(_listening(snapshot.root, mirror_port))
        announce(f"demo: mirror of the snapshot at {mirror_url}/ (probed before it becomes a webseed)")
        key = stack.enter_context(demo_key(cache_dir))
        settings = Settings(
            snapshot=snapshot.root,
            format="debian",
            dest=str(dest),
            public_url=public_url,
            repo="demo",
            mirrors=(
                MirrorConfig(url=mirror_url, country="DE", continent="EU", name="demo mirror (loopback)", priority=1),
            ),
            key=key.fingerprint,
            gnupghome=key.gnupghome,
            trackers=(tracker.announce_url,),
            tracker_whitelist=tracker.whitelist_path,
            tracker_pid_file=tracker.pid_file,
            seed_port=seed_port,
            seed_rpc_port=seed_rpc_port,
            seed_dht=False,  # loopback only: peers come from the tracker
        )
        announce(f"demo: publishing {snapshot.package_count} packages to {dest} with DEMO key {key.fingerprint}")
        report = release(settings, progress=progress)
        with Signer(gnupghome=key.gnupghome, key=key.fingerprint).keyring() as keyring:
            current = read_pointer(open_storage(str(dest)), repo="demo", keyring=keyring, fingerprint=key.fingerprint)
        assert current is not None
        example = example_package(published_records(open_storage(str(dest)), current.pointer))
        if example is None or example.infohash is None:
            raise PipelineError("demo: the demo snapshot has no package to fetch; delete .demo/ and run again")
        seconds = tracker.wait_tracked([*current.pointer.infohashes, example.infohash])
        announce(
            f"demo: the release wrote the tracker's whitelist ({_count_lines(tracker.whitelist_path)} infohashes) and "
            f"sent SIGHUP to PID {tracker.pid}: it tracks them ({seconds:.1f} s)"
        )
        recipe = front_page_recipe((dest / "index.html").read_text(encoding="utf-8"))
        announce(f"demo: destination served at {public_url}/index.html")

        peers = len(tracker.peers(example.infohash))
        announce(f"demo: user 1 fetches {example.path} with aria2 exactly as the front page says")
        took = _fetch_as_user(recipe, example, "user 1")
        announce(
            f"demo: user 1 got {example.size} bytes in {took:.1f} s from the mirror (webseed {mirror_url}; "
            f"the tracker listed {peers} peers); SHA-256 matches the signed index"
        )

        seeded = stack.enter_context(_read_only_copy(snapshot.root))
        box = stack.enter_context(SeedBox(replace(settings, snapshot=seeded), log=log.info))
        assert box.aria2 is not None
        aria2 = box.aria2

        def seeding() -> None:
            if aria2.process.poll() is not None:
                raise SeedError(f"demo: the seed box's aria2c exited: {aria2.last_log_line()}")

        seconds = tracker.wait_for_peer(example.infohash, seed_port, timeout=SEED_ANNOUNCE_TIMEOUT, check=seeding)
        announce(
            f"demo: seed box (invoke seed) aria2 PID {box.aria2.pid} seeds {len(box.seeding)} torrents from a "
            f"read-only copy of the snapshot; the tracker lists it at 127.0.0.1:{seed_port} ({seconds:.1f} s)"
        )
        mirror.close()
        if not _refused(mirror_port):
            raise PipelineError(f"127.0.0.1:{mirror_port}: still answers after the demo mirror stopped; stop it")
        announce(f"demo: mirror stopped: {mirror_url} refuses connections")
        peers = len(tracker.peers(example.infohash))
        announce(
            f"demo: user 2 runs the same recipe in a fresh folder, the mirror down (the tracker lists {peers} peers)"
        )
        before = _uploaded(box, example.infohash)
        peer_seconds = _fetch_as_user(recipe, example, "user 2")
        peer_bytes = _uploaded(box, example.infohash) - before
        if peer_bytes < example.size:
            raise PipelineError(
                f"demo: user 2 got {example.path} but the seed box uploaded only {peer_bytes} of its "
                f"{example.size} bytes; where did the rest come from?"
            )
        announce(
            f"demo: user 2 got {example.size} bytes in {peer_seconds:.1f} s from a peer: the seed box uploaded "
            f"{peer_bytes} bytes to it ({peer_bytes / example.size:.1f} copies of the package), the mirror none; "
            "SHA-256 matches the signed index"
        )
        if serve:
            stack.enter_context(_listening(snapshot.root, mirror_port))
            announce(f"demo: mirror back at {mirror_url}; tracker and seed box stay up; serving until Ctrl-C")
            (wait or _wait_forever)()
    return DemoResult(
        report, recipe, example.path, public_url, mirror_url, tracker.announce_url, peer_bytes, peer_seconds
    )


def _start_tracker(port: int) -> LocalTracker:
    """The demo's opentracker on 127.0.0.1:`port`; its failure as one line (a missing one names ./bootstrap.sh)."""
    from pipeline.localtracker import LocalTracker

    tracker = LocalTracker(port=port)
    try:
        return tracker.start()
    except TrackerError as exc:
        first = str(exc).splitlines()[0]
        if "not installed" in first:
            raise
        raise TrackerError(f"127.0.0.1:{port}: {first}; stop the other demo (or what holds the port)") from None


@contextmanager
def _listening(root: Path, port: int) -> Iterator[RangeServer]:
    from pipeline.serve import serve_directory

    try:
        server = serve_directory(root, port=port)
    except OSError as exc:
        raise PipelineError(f"127.0.0.1:{port}: cannot listen ({exc.strerror}); stop the other demo and retry") from exc
    with server:
        yield server


@contextmanager
def _read_only_copy(snapshot: Path) -> Iterator[Path]:
    """A copy of the snapshot the seed box may seed: files 0444 and directories 0555 under a 0755 temp dir
    (it refuses a snapshot its aria2 could write, and started as root it runs aria2 as nobody, who may not
    reach the demo's cache: pytest's and /root are 0700). Removed afterwards. A real seed box seeds the
    snapshot in place (infra/ runs it with ReadOnlyPaths=)."""
    base = Path(tempfile.mkdtemp(prefix="mirrorseed-demo-seed-"))
    try:
        base.chmod(0o755)
        copy = base / "snapshot"
        shutil.copytree(snapshot, copy)
        _set_tree_modes(copy, file_mode=0o444, dir_mode=0o555)
        yield copy
    finally:
        if (base / "snapshot").is_dir():
            _set_tree_modes(base / "snapshot", file_mode=0o644, dir_mode=0o755)
        shutil.rmtree(base, ignore_errors=True)


def _fetch_as_user(recipe: str, example: PackageRecord, who: str) -> float:
    """Run the recipe as a new user would, in a fresh folder with a fresh HOME (no aria2 configuration, no
    DHT routing table: nothing leaves loopback) and LPD off; check the package against the signed index's
    SHA-256. The seconds it took."""
    with tempfile.TemporaryDirectory(prefix="mirrorseed-demo-user-") as scratch:
        folder, home = Path(scratch) / "folder", Path(scratch) / "home"
        folder.mkdir()
        home.mkdir()
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "MIRRORSEED_LPD": "false",
        }
        started = time.monotonic()
        code, output = _run_bounded(["bash", "-c", recipe], cwd=folder, env=env, timeout=RECIPE_TIMEOUT)
        took = time.monotonic() - started
        if code != 0:
            tail = " | ".join(output.strip().splitlines()[-5:])
            raise PipelineError(f"demo: {who}: the user recipe failed (exit {code}): {tail}")
        fetched = folder / "packages" / example.path.rsplit("/", 1)[-1]
        if not fetched.is_file() or hashlib.sha256(fetched.read_bytes()).hexdigest() != example.sha256:
            raise PipelineError(f"demo: {who}: {fetched.name} was not fetched intact by the recipe")
    return took


def _run_bounded(args: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """Run `args` in a session of its own, output captured; past `timeout` (or on an interrupt) its whole
    process group (the recipe's aria2c included) is killed by the PID it started with."""
    process = subprocess.Popen(
        list(args), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return 124, f"did not finish within {timeout:.0f} s"
    except BaseException:
        _kill_group(process)
        raise
    return process.returncode, output


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.communicate(timeout=STOP_TIMEOUT)


def _uploaded(box: SeedBox, infohash: str) -> int:
    """Bytes the seed box's aria2 has uploaded of the torrent `infohash` since it was added."""
    assert box.aria2 is not None
    items = box.aria2.call("aria2.tellActive", ["infoHash", "uploadLength"])
    return sum(int(item.get("uploadLength", 0)) for item in items if item.get("infoHash") == infohash)


def _refused(port: int) -> bool:
    """Whether 127.0.0.1:`port` refuses TCP connections (the stopped mirror)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True


def _count_lines(path: Path) -> int:
    return len(path.read_text(encoding="ascii").split())


def front_page_recipe(front_page: str) -> str:
    """The first copy-paste recipe of a published front page, as a user copies it."""
    import html
    import re

    found = re.search(r'<pre class="recipe"><code>(.*?)</code></pre>', front_page, re.DOTALL)
    if found is None:
        raise PipelineError("index.html: no recipe on the front page; check templates_dir")
    return html.unescape(found.group(1))


def _wait_forever() -> None:
    """Until Ctrl-C or SIGTERM (then the demo stops what it started: tracker, seed box, servers)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
