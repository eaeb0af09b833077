"""The operator's seed box (issue 12): a real aria2 seeding the current publication from the snapshot.

`SeedBox` reads the current publication the way release does (`run.read_pointer` verifies `latest.asc`
with the operator's key, `run.published_records` reads the index shards it names, each checked against
the pointer), starts aria2 as a JSON-RPC daemon on 127.0.0.1 and hands it, by `aria2.addTorrent`, the
torrent of every shard of the index (docs/sharded-index.md) and up to `seed_max_torrents` package
torrents whose files it seeds in place from the snapshot (no copy). It then polls the pointer every
`seed_poll` seconds and follows each new publication: torrents of new shards and packages are added,
those the pointer and its shards no longer list are removed (a shard that did not change keeps its key,
hence its infohash, and is not touched).

It can never write into the snapshot (aria2 rewrites an existing file in place when it thinks the file
is not complete, see the swarm notes), by construction, not by aria2's good behaviour:

- started as root, aria2 runs as `seed_user` (default `nobody`, through `setpriv --no-new-privs`);
  started as another user (e.g. systemd `User=` with `ReadOnlyPaths=`), aria2 runs as that user;
- before aria2 starts and at every new publication, `find SNAPSHOT -writable` is run *as that user*:
  if it can write any file or directory of the snapshot (or cannot read it), the seed box refuses;
- so aria2 opens snapshot files read-only or fails (EACCES): a file whose bytes differ from its torrent
  ends in aria2's error state, untouched, and is reported; `.aria2` control files cannot be created
  next to snapshot files either (and `--force-save=false --auto-save-interval=0` asks for none);
- aria2 is given each package torrent without its `url-list` (outside `info`: same infohash), so it
  never fetches a package from an HTTP mirror in the first place.

By default aria2 re-hashes each file before seeding it (`--check-integrity`: a changed file is never
served); `seed_trust_files` seeds without re-hashing (`--bt-seed-unverified`: fast start, a changed
file's pieces are rejected by peers). Either way, writes are impossible as above.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline import bencode
from pipeline.config import Settings, s3_config
from pipeline.errors import ConfigError, PipelineError, SeedError
from pipeline.http import Client, HttpError
from pipeline.model import PackageRecord, Pointer, ShardRef
from pipeline.run import published_records as read_records
from pipeline.run import read_pointer, shard_bytes
from pipeline.signing import Signer
from pipeline.storage import Storage, open_storage

Log = Callable[[str], None]

RPC_HOST = "127.0.0.1"
START_TIMEOUT = 15.0  # seconds aria2 has to answer its RPC after it was started
STOP_TIMEOUT = 10.0  # seconds aria2 has to exit after aria2.shutdown, then SIGTERM, then SIGKILL
RPC_TIMEOUT = 10.0
RPC_MAX_BODY = 64 * 1024 * 1024  # tellStopped/tellActive of a whole archive's torrents, a few keys each
USER_AGENT = "mirrorseed-seed"
# aria2's max-concurrent-downloads beyond the packages and shards at start: room for shards a later
# publication adds (more than that raises it through aria2.changeGlobalOption)
SHARD_SLACK = 64


@dataclass(frozen=True)
class SeedTorrent:
    """One torrent the seed box wants aria2 to serve: metainfo as handed to aria2 and where its files are."""

    infohash: str
    label: str  # the repo path, or the shard torrent's key
    metainfo: bytes  # url-list dropped (never download from a mirror); announce lists kept
    directory: Path  # aria2's `dir` for it
    verify: bool  # aria2 `check-integrity` for this one
    file_name: str = ""  # a shard torrent: its one file's name in `directory`


@dataclass(frozen=True)
class Wanted:
    """What one publication asks the seed box to serve: the shards' torrents first, then the packages."""

    pointer_sha256: str
    sequence: int
    shards: tuple[SeedTorrent, ...]
    packages: tuple[PackageRecord, ...]  # at most seed_max_torrents, newest snapshot file first
    skipped: int  # listed packages not seeded: missing, of another size on disk, or beyond the bound


@dataclass(frozen=True)
class SyncResult:
    sequence: int
    added: int
    removed: int
    seeding: int
    skipped: int


def seed_order(snapshot: Path, records: Sequence[PackageRecord], limit: int) -> tuple[tuple[PackageRecord, ...], int]:
    """The packages to seed: those with a torrent whose file is in the snapshot with the index's size,
    newest file first (mtime: the most recently synced packages are the ones being fetched), then by
    path; at most `limit`. Returns them and how many listed packages were left out."""
    present: list[tuple[int, str, PackageRecord]] = []
    for record in records:
        if record.infohash is None or record.torrent is None:
            continue  # zero-length: no torrent
        try:
            st = (snapshot / record.path).stat()
        except OSError:
            continue
        if st.st_size == record.size:
            present.append((-st.st_mtime_ns, record.path, record))
    present.sort(key=lambda row: (row[0], row[1]))
    chosen = tuple(row[2] for row in present[:limit])
    return chosen, len(records) - len(chosen)


def seed_metainfo(data: bytes, *, infohash: str, where: str) -> tuple[bytes, dict[bytes, object]]:
    """A published torrent checked against the infohash the signed index gives, re-encoded for the seed box:
    `info` byte for byte and the announce lists; no `url-list` (aria2 must never fetch from a mirror)."""
    try:
        decoded = bencode.decode_dict(data)
    except ValueError as exc:
        raise SeedError(f"{where}: not a torrent ({exc}); re-publish it with invoke release") from None
    if decoded.info is None or hashlib.sha1(decoded.info).hexdigest() != infohash:
        raise SeedError(f"{where}: its infohash is not {infohash} that the signed index lists; re-publish")
    kept = b"".join(
        bencode.encode(key) + bencode.encode(decoded.value[key])
        for key in (b"announce", b"announce-list")
        if key in decoded.value
    )
    info = decoded.value[b"info"]
    assert isinstance(info, dict)
    return b"d" + kept + b"4:info" + decoded.info + b"e", info


def _text(value: object, where: str) -> str:
    if not isinstance(value, bytes):
        raise SeedError(f"{where}: a torrent name is not a string; re-publish")
    text = value.decode("utf-8", "replace")
    if text in ("", ".", "..") or "/" in text or "\x00" in text:
        raise SeedError(f"{where}: unsafe name {text!r} in the torrent; re-publish")
    return text


# --- aria2 ------------------------------------------------------------------------------------------


class Aria2:
    """aria2c as a JSON-RPC daemon on 127.0.0.1, started and stopped by its PID. The RPC secret is in a
    0600 configuration file (`--conf-path`), never in argv or logs."""

    def __init__(self, argv: Sequence[str], *, port: int, secret: str, log_path: Path) -> None:
        self.port = port
        self._secret = secret
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 (argv built here, no shell)
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._ids = 0
        self._lock = threading.Lock()
        self._http = Client(user_agent=USER_AGENT, max_redirects=0, error_body=RPC_MAX_BODY)

    @property
    def pid(self) -> int:
        return self.process.pid

    def call(self, method: str, *params: object, timeout: float = RPC_TIMEOUT) -> Any:
        """One JSON-RPC call; SeedError on an RPC error or when aria2 is unreachable."""
        with self._lock:
            self._ids += 1
            ident = str(self._ids)
        body = json.dumps(
            {"jsonrpc": "2.0", "id": ident, "method": method, "params": [f"token:{self._secret}", *params]}
        ).encode()
        try:
            # aria2 answers an RPC error with a 400 whose body is the JSON error: read it either way
            response = self._http.request(
                "POST", f"http://{RPC_HOST}:{self.port}/jsonrpc", body=body, max_body=RPC_MAX_BODY, timeout=timeout,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            reply = json.loads(response.body)
        except HttpError as exc:
            raise SeedError(f"aria2 RPC {method}: {exc}; see {self.log_path}") from None
        except ValueError:
            raise SeedError(f"aria2 RPC {method}: HTTP {response.status}, not JSON; see {self.log_path}") from None
        if "error" in reply:
            message = reply["error"].get("message", reply["error"])
            raise SeedError(f"aria2 RPC {method}: {message}")
        return reply.get("result")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Poll aria2.getVersion until it answers (its version), or fail naming aria2's own last log line."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise SeedError(f"aria2c exited with code {self.process.returncode}: {self.last_log_line()}")
            try:
                return str(self.call("aria2.getVersion", timeout=2.0)["version"])
            except SeedError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SeedError(
                        f"aria2c did not answer on {RPC_HOST}:{self.port} within {timeout:.0f} s "
                        f"({self.last_log_line()}); is seed_rpc_port free?"
                    ) from None
                time.sleep(0.2)

    def last_log_line(self) -> str:
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """aria2.forceShutdown (no waiting for trackers' "stopped" answers), a bounded wait, then SIGTERM
        and SIGKILL to its PID, each with a bounded wait; its exit code."""
        if self.process.poll() is None:
            try:
                self.call("aria2.forceShutdown", timeout=2.0)
            except SeedError:
                pass
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and self.process.poll() is None:
                    os.kill(self.process.pid, sig)
                try:
                    self.process.wait(timeout=timeout / 2 if sig is not None else timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._http.close()
        return self.process.poll()


def _drop_to(user: str) -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a child as `user` when we are root (else nothing) and that user."""
    if os.geteuid() != 0:
        return [], None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"seed_user: no user {user!r} on this machine; name an unprivileged user") from None
    if entry.pw_uid == 0:
        raise ConfigError(f"seed_user: {user!r} is root; aria2 must run as a user that cannot write the snapshot")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise SeedError("setpriv: not found (util-linux); install it, or start the seed box as an unprivileged user")
    return [
        setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--no-new-privs",
    ], entry  # fmt: skip


def check_read_only(snapshot: Path, prefix: Sequence[str], user: str) -> None:
    """Refuse unless the user aria2 runs as can read the snapshot and write none of it (`find -writable`,
    run as that user: access(2) answers, so a read-only mount counts as not writable)."""
    result = subprocess.run(  # noqa: S603
        [*prefix, "find", str(snapshot), "-writable", "-print", "-quit"],
        cwd="/",  # not the caller's folder, which that user may not be able to enter (find then fails)
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
        check=False,
    )
    writable = result.stdout.strip()
    if writable:
        raise SeedError(
            f"{writable}: writable by {user}, who runs aria2; the seed box never seeds a snapshot it could "
            "write: make the snapshot read-only for that user (chmod/chown, or systemd ReadOnlyPaths=)"
        )
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["find failed"])[0]
        raise SeedError(f"{snapshot}: not readable by {user}, who runs aria2 ({first}); make it world-readable")


def _rpc_secret(settings: Settings) -> str:
    if settings.seed_rpc_secret_file is None:
        return secrets.token_hex(24)
    try:
        secret = settings.seed_rpc_secret_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{settings.seed_rpc_secret_file}: cannot read the RPC secret ({exc.strerror}); fix seed_rpc_secret_file"
        ) from None
    if not secret or any(c.isspace() for c in secret):
        raise ConfigError(f"{settings.seed_rpc_secret_file}: the RPC secret must be one word on one line")
    return secret


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


# --- the seed box -----------------------------------------------------------------------------------


class SeedBox:
    """Start with `start()` (or `with SeedBox(...)`), follow with `sync()` or `serve(stop)`, end with `stop()`."""

    def __init__(self, settings: Settings, *, log: Log | None = None) -> None:
        if settings.snapshot is None:
            raise ConfigError("no snapshot configured: pass --snapshot DIR or --config mirror.toml")
        fingerprint = settings.verify_fingerprint or settings.key
        if fingerprint is None:
            raise ConfigError("no signing key configured: pass --key FINGERPRINT (the pointer is verified with it)")
        self.settings = settings
        self.snapshot = settings.snapshot.resolve()
        self._fingerprint = fingerprint
        self._log: Log = log or (lambda line: None)
        self._storage: Storage | None = None
        self._workdir: Path | None = None
        self.aria2: Aria2 | None = None
        self._gids: dict[str, str] = {}  # infohash -> aria2 GID
        self._labels: dict[str, str] = {}  # infohash -> repo path / shard torrent key
        self._reported: set[str] = set()  # infohashes whose error was logged
        self._pointer_sha256: str | None = None
        self._prefix: list[str] = []
        self._user = pwd.getpwuid(os.geteuid()).pw_name
        self._jobs = 0  # aria2's max-concurrent-downloads

    def __enter__(self) -> SeedBox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Check the snapshot is read-only for aria2's user, read the publication, start aria2, add torrents."""
        settings = self.settings
        if not self.snapshot.is_dir():
            raise ConfigError(f"{self.snapshot}: the snapshot is not a directory; pass --snapshot DIR")
        prefix, entry = _drop_to(settings.seed_user)
        self._prefix = prefix
        if entry is not None:
            self._user = entry.pw_name
        check_read_only(self.snapshot, prefix, self._user)
        self._storage = open_storage(settings.dest, s3_config(settings))
        with self._keyring() as keyring:
            current = read_pointer(self._storage, repo=settings.repo, keyring=keyring, fingerprint=self._fingerprint)
        if current is None:
            raise SeedError(f"{settings.dest}: no latest.asc; publish with invoke release before seeding")
        workdir = Path(tempfile.mkdtemp(prefix="mirrorseed-seed-", dir=settings.seed_dir))
        self._workdir = workdir
        try:
            workdir.chmod(0o755)
            self._start_aria2(workdir, entry, len(current.pointer.shards))
            self._follow(current.pointer, current.pointer_sha256)
        except BaseException:
            self.stop()
            raise

    def _keyring(self) -> Any:
        if self.settings.verify_keyring is not None:
            return _Fixed(self.settings.verify_keyring)
        return Signer(gnupghome=self.settings.gnupghome, key=self._fingerprint).keyring()

    def _start_aria2(self, workdir: Path, entry: pwd.struct_passwd | None, shards: int) -> None:
        settings = self.settings
        aria2c = shutil.which("aria2c")
        if aria2c is None:
            raise SeedError("aria2c: not found; install aria2 (apt-get install aria2)")
        secret = _rpc_secret(settings)
        state = workdir / "state"  # the only place aria2 may write (DHT routing table)
        state.mkdir(mode=0o700)
        conf = workdir / "aria2.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"rpc-secret={secret}\n")
        if entry is not None:
            os.chown(conf, entry.pw_uid, entry.pw_gid)
            os.chown(state, entry.pw_uid, entry.pw_gid)
        jobs = settings.seed_max_torrents + shards + SHARD_SLACK  # + the shards' torrents
        self._jobs = jobs
        _raise_nofile(2 * jobs + 512)
        dht = "true" if settings.seed_dht else "false"
        argv = [
            *self._prefix, aria2c,
            f"--conf-path={conf}",
            "--enable-rpc=true", "--rpc-listen-all=false", f"--rpc-listen-port={settings.seed_rpc_port}",
            f"--stop-with-process={os.getpid()}",  # aria2 ends with us, even on SIGKILL
            f"--dir={workdir}",
            f"--listen-port={settings.seed_port}",
            f"--max-concurrent-downloads={jobs}", "--bt-detach-seed-only=true",
            f"--bt-max-open-files={min(jobs, 1024)}",
            f"--max-overall-upload-limit={settings.seed_upload_limit}",
            "--seed-ratio=0.0",  # seed until removed
            "--auto-save-interval=0", "--force-save=false", "--bt-save-metadata=false",
            "--file-allocation=none", "--allow-overwrite=false", "--auto-file-renaming=false",
            f"--enable-dht={dht}", f"--enable-dht6={dht}", f"--dht-file-path={state / 'dht.dat'}",
            f"--dht-file-path6={state / 'dht6.dat'}", f"--dht-listen-port={settings.seed_port}",
            "--bt-enable-lpd=false",
            "--summary-interval=0", "--console-log-level=warn", "--quiet=false",
        ]  # fmt: skip
        self.aria2 = Aria2(argv, port=settings.seed_rpc_port, secret=secret, log_path=workdir / "aria2.log")
        version = self.aria2.wait_ready()
        self._log(
            f"seed: aria2 {version} running as PID {self.aria2.pid} (user {self._user}), "
            f"RPC on {RPC_HOST}:{settings.seed_rpc_port}, at most {settings.seed_max_torrents} packages"
        )

    def stop(self) -> None:
        """Stop aria2 by its PID (bounded) and remove the work directory; safe to call twice."""
        if self.aria2 is not None:
            code = self.aria2.stop()
            self._log(f"seed: aria2 PID {self.aria2.pid} stopped (exit code {code})")
            self.aria2 = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- following the publication --------------------------------------------------------------

    def sync(self) -> SyncResult | None:
        """One poll: re-read the pointer; on a new publication, add and remove torrents. Also reports torrents
        aria2 gave up on (e.g. a snapshot file whose bytes differ). None when nothing changed."""
        assert self._storage is not None
        self._report_errors()
        with self._keyring() as keyring:
            current = read_pointer(
                self._storage, repo=self.settings.repo, keyring=keyring, fingerprint=self._fingerprint
            )
        if current is None or current.pointer_sha256 == self._pointer_sha256:
            return None
        check_read_only(self.snapshot, self._prefix, self._user)
        return self._follow(current.pointer, current.pointer_sha256)

    def serve(self, stop: threading.Event) -> None:
        """Poll every seed_poll seconds until `stop` is set; a failed poll is logged and retried next time."""
        while not stop.wait(self.settings.seed_poll):
            if self.aria2 is None or self.aria2.process.poll() is not None:
                code = None if self.aria2 is None else self.aria2.process.returncode
                last = "" if self.aria2 is None else f": {self.aria2.last_log_line()}"
                raise SeedError(f"aria2c exited with code {code}{last}; the seed box stops (systemd restarts it)")
            try:
                self.sync()
            except PipelineError as exc:
                self._log(f"seed: {type(exc).__name__}: {' '.join(str(exc).split())}; keeping the current torrents")

    def _follow(self, pointer: Pointer, pointer_sha256: str) -> SyncResult:
        assert self._storage is not None and self.aria2 is not None
        records = read_records(self._storage, pointer)
        packages, skipped = seed_order(self.snapshot, records, self.settings.seed_max_torrents)
        shards = [self._shard_torrent(shard) for shard in pointer.shards]
        wanted = {t.infohash: t.label for t in shards} | {str(r.infohash): r.path for r in packages}
        removed = 0
        for infohash in [h for h in self._gids if h not in wanted]:
            self._remove(infohash)
            removed += 1
        kept = {t.file_name for t in shards}
        for old in self._shards_dir().iterdir():
            if old.name not in kept:
                old.unlink(missing_ok=True)  # an earlier shard, no longer served
        if len(wanted) > self._jobs:  # more shards than at the start: let aria2 serve them all
            self._jobs = len(wanted) + SHARD_SLACK
            self.aria2.call("aria2.changeGlobalOption", {"max-concurrent-downloads": str(self._jobs)})
        added = 0
        for shard in shards:
            if shard.infohash not in self._gids:
                self._add(shard)
                added += 1
        for record in packages:
            assert record.infohash is not None and record.torrent is not None
            if record.infohash in self._gids:
                continue
            try:
                self._add(self._package_torrent(record))
                added += 1
            except SeedError as exc:
                self._log(f"seed: {exc}")
        self._pointer_sha256 = pointer_sha256
        result = SyncResult(pointer.sequence, added, removed, len(self._gids), skipped)
        self._log(
            f"seed: publication {pointer.sequence}: {result.seeding} torrents ({added} added, {removed} removed); "
            f"{skipped} listed packages not seeded (missing, resized, or beyond seed_max_torrents)"
        )
        return result

    def _package_torrent(self, record: PackageRecord) -> SeedTorrent:
        assert self._storage is not None and record.torrent is not None and record.infohash is not None
        stored = self._storage.get(record.torrent)
        if stored is None:
            raise SeedError(f"{record.torrent}: listed by the index but missing from the destination; re-publish")
        metainfo, info = seed_metainfo(stored.data, infohash=record.infohash, where=record.torrent)
        parent, _, name = record.path.rpartition("/")
        if _text(info.get(b"name"), record.torrent) != name:
            raise SeedError(f"{record.torrent}: its file name is not that of {record.path}; re-publish")
        directory = self.snapshot / parent if parent else self.snapshot
        return SeedTorrent(record.infohash, record.path, metainfo, directory, not self.settings.seed_trust_files)

    def _shards_dir(self) -> Path:
        assert self._workdir is not None
        directory = self._workdir / "shards"
        directory.mkdir(mode=0o755, exist_ok=True)
        return directory

    def _shard_torrent(self, shard: ShardRef) -> SeedTorrent:
        """A shard's torrent, its one file fetched into the work directory (checked: the torrent's infohash
        against the signed pointer, a single file named as the shard's key, the shard against its size and
        SHA-256; aria2 re-hashes it before seeding)."""
        assert self._storage is not None
        key = shard.torrent
        stored = self._storage.get(key)
        if stored is None:
            raise SeedError(f"{key}: named by latest.asc but missing from the destination; re-publish")
        metainfo, info = seed_metainfo(stored.data, infohash=shard.infohash, where=key)
        name = PurePosixPath(shard.path).name
        if b"files" in info or _text(info.get(b"name"), key) != name or info.get(b"length") != shard.size:
            raise SeedError(f"{key}: not a single-file torrent of {shard.path}; re-publish")
        directory = self._shards_dir()
        target = directory / name
        if not target.is_file() or target.stat().st_size != shard.size:
            data = shard_bytes(self._storage, shard)  # size and SHA-256 checked against latest.asc
            partial = directory / f".{name}.part"
            partial.write_bytes(data)
            partial.chmod(0o644)
            os.replace(partial, target)
        return SeedTorrent(shard.infohash, key, metainfo, directory, True, name)

    def _add(self, torrent: SeedTorrent) -> None:
        assert self.aria2 is not None
        options = {"dir": str(torrent.directory), "seed-ratio": "0.0"}
        options |= {"check-integrity": "true"} if torrent.verify else {"bt-seed-unverified": "true"}
        gid = self.aria2.call("aria2.addTorrent", base64.b64encode(torrent.metainfo).decode("ascii"), [], options)
        self._gids[torrent.infohash] = str(gid)
        self._labels[torrent.infohash] = torrent.label

    def _remove(self, infohash: str) -> None:
        assert self.aria2 is not None
        gid = self._gids.pop(infohash)
        self._labels.pop(infohash, None)
        self._reported.discard(infohash)
        try:
            self.aria2.call("aria2.forceRemove", gid)
        except SeedError:
            pass  # already stopped (error or complete): only its result is left
        try:
            self.aria2.call("aria2.removeDownloadResult", gid)
        except SeedError:
            pass  # the result appears once the removal settles; purge later

    def _report_errors(self) -> None:
        """Log once each torrent aria2 stopped with an error (a changed snapshot file, an unreadable one)."""
        assert self.aria2 is not None
        keys = ["gid", "infoHash", "status", "errorCode", "errorMessage"]
        for item in self.aria2.call("aria2.tellStopped", 0, 1000, keys):
            infohash = item.get("infoHash", "")
            if item.get("status") == "error" and infohash in self._gids and infohash not in self._reported:
                self._reported.add(infohash)
                self._log(
                    f"seed: {self._labels.get(infohash, infohash)}: not seeded, aria2 error {item.get('errorCode')} "
                    f"{item.get('errorMessage') or ''}(its bytes on disk differ from the torrent?); left untouched"
                )
            elif infohash not in self._gids:
                try:
                    self.aria2.call("aria2.removeDownloadResult", item["gid"])
                except SeedError:
                    pass

    def status(self) -> Mapping[str, Mapping[str, str]]:
        """aria2's view of every torrent, by infohash: status, completedLength, totalLength, gid."""
        assert self.aria2 is not None
        keys = ["gid", "infoHash", "status", "completedLength", "totalLength", "errorCode", "errorMessage"]
        items = [*self.aria2.call("aria2.tellActive", keys), *self.aria2.call("aria2.tellWaiting", 0, 100000, keys)]
        items += self.aria2.call("aria2.tellStopped", 0, 100000, keys)
        return {str(item["infoHash"]): item for item in items if item.get("gid") in self._gids.values()}

    @property
    def seeding(self) -> Mapping[str, str]:
        """infohash -> label of every torrent handed to aria2 for the current publication."""
        return dict(self._labels)


class _Fixed:
    """A pinned keyring path as the same context manager as Signer.keyring()."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __enter__(self) -> Path:
        return self._path

    def __exit__(self, *exc: object) -> None:
        return None


def run_seed_box(settings: Settings, *, log: Log, stop: threading.Event) -> None:
    """`invoke seed`: start, follow the publication until `stop` is set (SIGTERM), stop aria2."""
    with SeedBox(settings, log=log) as box:
        box.serve(stop)
