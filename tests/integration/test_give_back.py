"""Users give back (issue 12, point 4) with real parts: a release fed to a real opentracker, the published
front-page recipe and the published give-back.sh run with bash in a user's folder, aria2 peers on 127.0.0.1.

Nothing leaves loopback: MIRRORSEED_LPD=false (tests/conftest.py), and every aria2 the scripts start reads
a test aria2.conf (DHT and PEX off, `interface=127.0.0.1`, a fixed free listen port) through the standard
`$XDG_CONFIG_HOME/aria2/aria2.conf`. give-back.sh runs in a session of its own and is stopped by its process
group (bash waits for its aria2c, so none is left behind); every wait is bounded. Run as root, the test of
the package managers' caches runs give-back.sh as `nobody` (setpriv) over a root-owned read-only cache.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import bencode
from pipeline.config import Settings
from pipeline.demo import front_page_recipe
from pipeline.objects import GIVE_BACK_KEY, GIVE_BACK_SERVICE_KEY, GIVE_BACK_TIMER_KEY
from pipeline.render import GIVE_BACK_WORK_DIR
from pipeline.run import read_pointer, release
from pipeline.serve import serve_directory
from pipeline.storage import open_storage
from tests.integration.conftest import SigningKey, aria2_command
from tests.integration.test_incremental import make_flat
from tests.integration.test_tracker import DOWNLOAD_TIMEOUT
from tests.tools import require_tools
from tests.tracker import Tracker, free_port

pytestmark = pytest.mark.integration

RECIPE_TIMEOUT = 120
STOP_TIMEOUT = 15.0  # aria2 sends its `stopped` announces before it exits (tracker timeout: 5 s)
SEEDING_TIMEOUT = 60.0  # give-back verifies, fetches the torrents, hashes the files and announces
SECRET = "dir1/*"  # never announced: dir1/file-01.bin


@dataclass
class User:
    """A user's folder made by the published recipe, and the environment the user's scripts run in."""

    folder: Path
    env: dict[str, str]
    listen_port: int  # where the user's aria2 listens (the test aria2.conf)
    log: Path
    run_as: Sequence[str] = ()  # a command give-back.sh runs under (setpriv: another user)

    @property
    def packages(self) -> Path:
        return self.folder / "packages"


@dataclass(frozen=True)
class World:
    snap: Path
    dest: Path
    tracker: Tracker
    signing_key: SigningKey
    tmp_path: Path


def infohash_of(torrent: Path) -> str:
    return hashlib.sha1(bencode.decode_dict(torrent.read_bytes()).info or b"").hexdigest()


def package_infohash(world: World, path: str) -> str:
    return infohash_of(world.dest / "torrents" / f"{path}.torrent")


def shard_infohashes(world: World, *names: str) -> list[str]:
    """The torrents' infohashes of the current pointer's index shards (flat: dir0, dir1, dir2), all or those named."""
    key = world.signing_key
    storage = open_storage(str(world.dest))
    found = read_pointer(storage, repo="giveback", keyring=key.keyring, fingerprint=key.fingerprint)
    assert found is not None
    return [shard.infohash for shard in found.pointer.shards if not names or shard.name in names]


def loopback_env(tmp_path: Path, listen_port: int) -> dict[str, str]:
    """The user's environment: a HOME and an aria2.conf of the test's own (loopback only, DHT and PEX off)."""
    home, config = tmp_path / "home", tmp_path / "config"
    (config / "aria2").mkdir(parents=True)
    home.mkdir()
    (config / "aria2" / "aria2.conf").write_text(
        "enable-dht=false\nenable-dht6=false\nenable-peer-exchange=false\n"
        f"interface=127.0.0.1\ndisable-ipv6=true\nlisten-port={listen_port}\n"
    )
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(config), "MIRRORSEED_LPD": "false"}


@pytest.fixture
def world(signing_key: SigningKey, tmp_path: Path) -> Iterator[World]:
    """A flat snapshot of four files (dir0/file-00, dir1/file-01 never announced, dir2/file-02, dir0/file-03)
    and a running opentracker."""
    require_tools("bash", "aria2c", "gpgv", "jq", "zstd", "sha256sum", "timeout")
    snap, dest = tmp_path / "snap", tmp_path / "dest"
    make_flat(snap, 4)
    dest.mkdir()
    with Tracker() as tracker:
        yield World(snap, dest, tracker, signing_key, tmp_path)


def publish(world: World, public_url: str, mirror_url: str) -> None:
    """A release (the mirror up) whose whitelist reaches the tracker (SIGHUP by its PID file), then a
    bounded wait until the tracker took it."""
    pid_file = world.tmp_path / "opentracker.pid"
    pid_file.write_text(f"{world.tracker.pid}\n")
    settings = Settings(
        snapshot=world.snap, format="flat", dest=str(world.dest), public_url=public_url, repo="giveback",
        webseeds=(mirror_url,), trackers=(world.tracker.announce_url,), key=world.signing_key.fingerprint,
        gnupghome=world.signing_key.gnupghome, state=world.tmp_path / "state.sqlite",
        tracker_whitelist=world.tracker.whitelist_path, tracker_pid_file=pid_file, never_announce=(SECRET,),
    )  # fmt: skip
    assert release(settings).action == "publish"
    shared = package_infohash(world, "dir0/file-03.bin")
    deadline = time.monotonic() + 10
    while not world.tracker.accepts(shared):
        assert time.monotonic() < deadline, "the tracker never took the release's whitelist"
        time.sleep(0.05)


def run_recipe(world: World, tmp_path: Path) -> User:
    """The front page's recipe, as a user copies it, run in a new folder: signing key, pointer, index and
    the example package (dir0/file-00.bin) in packages/."""
    port = free_port()
    env = loopback_env(tmp_path, port)
    folder = tmp_path / "user"
    folder.mkdir()
    recipe = front_page_recipe((world.dest / "index.html").read_text())
    done = subprocess.run(
        ["bash", "-c", recipe], cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=RECIPE_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (folder / "packages" / "file-00.bin").read_bytes() == (world.snap / "dir0/file-00.bin").read_bytes()
    return User(folder, env, port, tmp_path / "give-back.log")


def start_give_back(world: World, user: User, **env: str) -> subprocess.Popen[bytes]:
    """The published give-back.sh, saved in the user's folder and run with bash (a session of its own)."""
    shutil.copyfile(world.dest / GIVE_BACK_KEY, user.folder / GIVE_BACK_KEY)
    with user.log.open("wb") as log:  # this run's output only
        return subprocess.Popen(
            [*user.run_as, "bash", GIVE_BACK_KEY], cwd=user.folder, env={**user.env, **env}, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def give_back_to_the_end(world: World, user: User, **env: str) -> tuple[int, str]:
    """give-back.sh until it exits by itself (bounded; else stopped by its process group): exit code, output."""
    process = start_give_back(world, user, **env)
    try:
        code = process.wait(timeout=SEEDING_TIMEOUT)
    finally:
        stop_group(process)
    return code, user.log.read_text()


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to give-back's process group (bash, timeout, aria2c), a bounded wait, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            continue
    try:  # bash exited after its aria2c: nothing of the group may be left
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_seeding(world: World, user: User, process: subprocess.Popen[bytes], infohashes: list[str]) -> None:
    """Bounded wait until the tracker lists the user's aria2 for every one of `infohashes`."""
    deadline = time.monotonic() + SEEDING_TIMEOUT
    pending = list(infohashes)
    while pending:
        if process.poll() is not None:
            pytest.fail(f"give-back.sh exited with {process.returncode}:\n{user.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not seeding {pending} within {SEEDING_TIMEOUT:.0f} s:\n{user.log.read_text()[-3000:]}")
        pending = [h for h in pending if ("127.0.0.1", user.listen_port) not in world.tracker.peers(h)]
        time.sleep(0.2)


def seeded_torrents(user: User) -> list[str]:
    """The infohashes give-back.sh handed to its seeding aria2c (its input file)."""
    lines = (user.folder / GIVE_BACK_WORK_DIR / "seed.txt").read_text().splitlines()
    return sorted(Path(line).stem for line in lines if not line.startswith(" "))


def test_a_peer_fetches_from_the_give_back_seeder_alone_with_every_mirror_dead(world: World, tmp_path: Path) -> None:
    with serve_directory(world.dest) as public:
        with serve_directory(world.snap) as mirror:
            publish(world, public.url, mirror.url)
            user = run_recipe(world, tmp_path)
        # the mirror is gone: package webseeds are dead from here on
        shutil.copyfile(world.snap / "dir2/file-02.bin", user.packages / "file-02.bin")  # fetched some other day
        (user.packages / "notes.txt").write_text("not a package\n")
        process = start_give_back(world, user, MIRRORSEED_SEED_MINUTES="1")
        try:
            wanted = [package_infohash(world, p) for p in ("dir0/file-00.bin", "dir2/file-02.bin")]
            wait_seeding(world, user, process, [*wanted, *shard_infohashes(world)])
            peer = tmp_path / "peer"
            torrent = world.dest / "torrents/dir2/file-02.bin.torrent"
            done = subprocess.run(
                aria2_command(f"--listen-port={free_port()}", "--interface=127.0.0.1", "-d", str(peer), str(torrent)),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            assert (peer / "file-02.bin").read_bytes() == (world.snap / "dir2/file-02.bin").read_bytes()
            assert seeded_torrents(user) == sorted([*wanted, *shard_infohashes(world)])
        finally:
            stop_group(process)
    log = user.log.read_text()
    assert process.returncode == 143 and "give-back: stopped" in log, log
    assert "seeding packages/file-02.bin" in log and "seeding packages/file-00.bin" in log, log
    assert "notes.txt" not in log
    # the user's files are what they were: seeding only read them
    assert (user.packages / "file-02.bin").read_bytes() == (world.snap / "dir2/file-02.bin").read_bytes()


def test_a_stale_version_is_not_seeded(world: World, tmp_path: Path) -> None:
    with serve_directory(world.dest) as public, serve_directory(world.snap) as mirror:
        publish(world, public.url, mirror.url)
        user = run_recipe(world, tmp_path)  # packages/file-00.bin, the version of the first release
        old = package_infohash(world, "dir0/file-00.bin")
        old_bytes = (user.packages / "file-00.bin").read_bytes()
        shutil.copyfile(world.snap / "dir0/file-03.bin", user.packages / "file-03.bin")
        (world.snap / "dir0/file-00.bin").write_bytes(b"a new version" * 5000)  # the next sync replaced it
        publish(world, public.url, mirror.url)
        assert package_infohash(world, "dir0/file-00.bin") != old
        # the tracker would still track the old version: only give-back.sh can keep it unannounced
        world.tracker.write_whitelist([*world.tracker.whitelist_path.read_text().split(), old])
        world.tracker.reload()
        current = package_infohash(world, "dir0/file-03.bin")
        process = start_give_back(world, user, MIRRORSEED_SEED_MINUTES="1")
        try:
            # dir0's shard came as a delta (no whole copy to seed); dir1's and dir2's are the ones fetched before
            unchanged = shard_infohashes(world, "dir1", "dir2")
            wait_seeding(world, user, process, [current, *unchanged])
            assert world.tracker.peers(old) == []
            assert seeded_torrents(user) == sorted([current, *unchanged])
        finally:
            stop_group(process)
    log = user.log.read_text()
    assert "seeding packages/file-03.bin" in log and "file-00.bin" not in log, log
    assert "give-back: not seeding index shard dir0: no whole copy of it here (updated by a delta)" in log, log
    assert "give-back: seeding index shard dir1" in log and "give-back: seeding index shard dir2" in log, log
    assert (user.packages / "file-00.bin").read_bytes() == old_bytes  # left alone, never "repaired"


def test_a_never_announced_package_is_not_seeded_and_seeding_stops_by_itself(world: World, tmp_path: Path) -> None:
    with serve_directory(world.dest) as public, serve_directory(world.snap) as mirror:
        publish(world, public.url, mirror.url)
        user = run_recipe(world, tmp_path)
        (user.packages / "file-00.bin").unlink()
        shutil.copyfile(world.snap / "dir1/file-01.bin", user.packages / "file-01.bin")  # never announced
        code, log = give_back_to_the_end(world, user)
        assert code == 0, log
        assert "give-back: nothing to seed: no package in packages/ of index 1 is announced" in log, log
        assert (
            "not seeding packages/file-01.bin: the operator never announces it" in log
            and not (user.folder / GIVE_BACK_WORK_DIR / "seed.txt").read_text()
        )

        # with a shared package beside it: only that one and the index shards, until the (short) time is up
        shutil.copyfile(world.snap / "dir0/file-03.bin", user.packages / "file-03.bin")
        code, log = give_back_to_the_end(world, user, MIRRORSEED_SEED_MINUTES="0.1", MIRRORSEED_UPLOAD_LIMIT="200K")
    assert code == 0, log
    assert seeded_torrents(user) == sorted([package_infohash(world, "dir0/file-03.bin"), *shard_infohashes(world)])
    assert "give-back: done" in log and "stops at ratio 2.0 or after 0.1 min; upload at most 200K/s" in log, log


def test_nothing_to_seed_and_a_swapped_torrent_exit_0(world: World, tmp_path: Path) -> None:
    with serve_directory(world.dest) as public, serve_directory(world.snap) as mirror:
        publish(world, public.url, mirror.url)
        user = run_recipe(world, tmp_path)
        fetched = (user.packages / "file-00.bin").read_bytes()
        (user.packages / "file-00.bin").write_bytes(b"not what the index says")
        code, log = give_back_to_the_end(world, user)
        assert code == 0, log
        assert "give-back: nothing to seed: none of the 1 files in packages/ is a package of index 1" in log, log
        if os.geteuid() == 0 and Path("/var/cache/apt/archives").is_dir():  # root could write there: left out
            assert "give-back: not seeding /var/cache/apt/archives/: this user can write to it" in log, log

        # the server swapped the package's .torrent for another's: never handed to aria2, the file untouched
        (user.packages / "file-00.bin").write_bytes(fetched)
        torrent = world.dest / "torrents/dir0/file-00.bin.torrent"
        torrent.write_bytes((world.dest / "torrents/dir0/file-03.bin.torrent").read_bytes())
        code, log = give_back_to_the_end(world, user)
    assert code == 0, log
    assert "not seeding packages/file-00.bin: its .torrent is not of infohash" in log, log
    assert (user.packages / "file-00.bin").read_bytes() == fetched


def test_the_published_units_verify(world: World, tmp_path: Path) -> None:
    """systemd's own parser accepts the published user unit and timer (every option known, ExecStart found)."""
    require_tools("systemd-analyze")
    with serve_directory(world.dest) as public, serve_directory(world.snap) as mirror:
        publish(world, public.url, mirror.url)
    units = tmp_path / "units"
    units.mkdir()
    for key in (GIVE_BACK_SERVICE_KEY, GIVE_BACK_TIMER_KEY):
        shutil.copyfile(world.dest / key, units / key)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--user", GIVE_BACK_SERVICE_KEY, GIVE_BACK_TIMER_KEY], cwd=units,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
    service = (units / GIVE_BACK_SERVICE_KEY).read_text()
    for line in ("ExecStart=/bin/bash give-back.sh", "WorkingDirectory=%h/mirrorseed", "Nice=19",
                 "IOSchedulingClass=idle"):  # fmt: skip
        assert line + "\n" in service
    assert "OnCalendar=daily\n" in (units / GIVE_BACK_TIMER_KEY).read_text()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can traverse (pytest's own are root-only), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mirrorseed-give-back-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in (folder, *folder.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder)


def as_other_user(user: User, shared: Path) -> User:
    """The user's folder and environment moved to `shared`; as root, owned by `nobody`, and give-back.sh run as
    `nobody` (setpriv), so that the kernel, not root's privilege, decides what aria2 may write."""
    port = free_port()
    env = loopback_env(shared / "env", port)
    folder = shared / "user"
    shutil.copytree(user.folder, folder, symlinks=True)
    if os.geteuid() != 0:
        return User(folder, env, port, shared / "give-back.log")
    require_tools("setpriv")
    nobody = pwd.getpwnam("nobody")
    for path in (shared / "env", folder):
        for item in (path, *path.rglob("*")):
            os.chown(item, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
    run_as = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"]
    return User(folder, env, port, shared / "give-back.log", run_as)


def snapshot_of(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder` by relative path: a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_the_package_caches_are_seeded_by_hash_and_only_read(world: World, tmp_path: Path, shared_dir: Path) -> None:
    """An apt-style cache (epoch as `%3a`, a stale version of a current size, an unrelated file, a `partial/`
    download, apt's `lock`), root-owned and read-only: give-back seeds only the current package, under its
    torrent's name, a peer fetches it from give-back alone with every mirror dead, and the cache is unchanged."""
    require_tools("find", "realpath")
    cache = shared_dir / "archives"
    (cache / "partial").mkdir(parents=True)
    with serve_directory(world.dest) as public:
        with serve_directory(world.snap) as mirror:
            publish(world, public.url, mirror.url)
            stale = (world.snap / "dir0/file-03.bin").read_bytes()
            stale_infohash = package_infohash(world, "dir0/file-03.bin")
            (world.snap / "dir0/file-03.bin").write_bytes(b"3" * len(stale))  # a new version, the same size
            publish(world, public.url, mirror.url)
            user = as_other_user(run_recipe(world, tmp_path), shared_dir)  # packages/file-00.bin
        # the tracker would still track the old version: only give-back.sh can keep it unannounced
        world.tracker.write_whitelist([*world.tracker.whitelist_path.read_text().split(), stale_infohash])
        world.tracker.reload()
        # the mirror is gone: package webseeds are dead from here on
        current = (world.snap / "dir2/file-02.bin").read_bytes()
        (cache / "file-02_1%3a2.0-1_amd64.deb").write_bytes(current)
        (cache / "file-03_1%3a1.0-1_amd64.deb").write_bytes(stale)  # the version of the first release
        (cache / "file-00_0.1_all.deb").write_bytes((user.packages / "file-00.bin").read_bytes())  # seeded once
        (cache / "notes.txt").write_text("not a package\n")
        (cache / "lock").write_bytes(b"")
        (cache / "partial" / "file-02_1%3a2.0-1_amd64.deb").write_bytes(current[:1000])
        for path in (*cache.rglob("*"), cache):
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = snapshot_of(cache)
        process = start_give_back(world, user, MIRRORSEED_SEED_MINUTES="1", MIRRORSEED_SEED_DIRS=f"packages:{cache}")
        try:
            wanted = [package_infohash(world, p) for p in ("dir0/file-00.bin", "dir2/file-02.bin")]
            wait_seeding(world, user, process, [*wanted, *shard_infohashes(world)])
            peer = tmp_path / "peer"
            torrent = world.dest / "torrents/dir2/file-02.bin.torrent"
            done = subprocess.run(
                aria2_command(f"--listen-port={free_port()}", "--interface=127.0.0.1", "-d", str(peer), str(torrent)),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            assert (peer / "file-02.bin").read_bytes() == current
            assert seeded_torrents(user) == sorted([*wanted, *shard_infohashes(world)])
            assert world.tracker.peers(stale_infohash) == []
        finally:
            stop_group(process)
    log = user.log.read_text()
    assert process.returncode == 143 and "give-back: stopped" in log, log
    assert f"looking for the packages of index 2 in packages/, {cache}/\n" in log, log
    assert f"seeding {cache}/file-02_1%3a2.0-1_amd64.deb as file-02.bin\n" in log, log
    assert "seeding packages/file-00.bin\n" in log and "file-00_0.1_all.deb" not in log, log
    assert "file-03" not in log and "notes.txt" not in log and "partial" not in log, log
    # aria2 read the cache through links in give-back's own folder; nothing in the cache changed or appeared
    link = user.folder / GIVE_BACK_WORK_DIR / "seed" / wanted[1] / "file-02.bin"
    assert link.is_symlink() and link.resolve() == cache / "file-02_1%3a2.0-1_amd64.deb"
    assert snapshot_of(cache) == before
    assert all(p.stat().st_uid == cache.stat().st_uid for p in cache.rglob("*"))
    if user.run_as:  # it ran as nobody: its own files are nobody's
        assert (user.folder / GIVE_BACK_WORK_DIR / "seed.txt").stat().st_uid == pwd.getpwnam("nobody").pw_uid
