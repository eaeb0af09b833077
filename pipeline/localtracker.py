"""A real tracker on loopback for the demo, `invoke bench --swarm` and the tests: Debian's `opentracker`.

    with LocalTracker() as tracker:                # temp dir, a free port (TCP = UDP), an empty whitelist
        settings = Settings(..., trackers=(tracker.announce_url,),
                            tracker_whitelist=tracker.whitelist_path, tracker_pid_file=tracker.pid_file)
        release(settings)                          # writes the whitelist, SIGHUPs the PID in pid_file
        tracker.wait_tracked([infohash])           # bounded: until the tracker accepts it
        tracker.wait_for_peer(infohash, port)      # bounded: until a seeder's announce is listed
        tracker.peers(infohash)                    # who it lists now
    # stopped by its PID (SIGTERM, bounded wait, SIGKILL); the temp dir is removed

`write_whitelist` + `reload` do what a release does (pipeline.tracker) when no release runs. Facts about
Debian's build (shared/notes/swarm.md, checked by tests/integration/test_tracker.py): started as root it
chroots into `-d DIR`, reads `-w FILE` relative to it and drops to `nobody` (it refuses `-u root`), so DIR
and the whitelist are readable by everyone; it tracks only whitelisted infohashes and re-reads the
whitelist on SIGHUP. It listens on 127.0.0.1 only and writes no PID file of its own: `pid_file` (outside
the chroot) holds its PID for `tracker_pid_file`.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote_from_bytes, urlencode

from pipeline import bencode
from pipeline.errors import TrackerError
from pipeline.process import ServerProcess
from pipeline.tracker import update_whitelist, whitelist_text

HOST = "127.0.0.1"
WHITELIST = "whitelist.txt"
PID_FILE = "opentracker.pid"
START_TIMEOUT = 10.0
RELOAD_TIMEOUT = 10.0
PEER_TIMEOUT = 20.0  # a seeder announces once it has checked its files
STOP_TIMEOUT = 5.0  # opentracker exits about 1 s after SIGTERM
REQUEST_TIMEOUT = 3.0
PEER_ID = b"-MS0001-tracker-test"  # 20 bytes
PROBE_PORT = 9  # the port a probe announces (discard: nothing listens there)
INSTALL_HINT = "run ./bootstrap.sh (installs the opentracker package)"

__all__ = ["LocalTracker", "TrackerError", "announce", "compact_peers", "free_port", "opentracker_binary"]


def opentracker_binary() -> Path:
    """Debian's /usr/bin/opentracker (or one on PATH); TrackerError naming ./bootstrap.sh when missing."""
    found = shutil.which("opentracker") or shutil.which("opentracker", path="/usr/bin:/usr/sbin")
    if found is None:
        raise TrackerError(f"opentracker: not installed; {INSTALL_HINT}")
    return Path(found)


def free_port(attempts: int = 50) -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (opentracker and BitTorrent clients listen on both)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
        return port
    raise TrackerError(f"{HOST}: no port free for both TCP and UDP; free some ports and retry")


def _check(infohashes: Iterable[str]) -> list[str]:
    """Lowercased 40-hex infohashes (ValueError naming the first that is not one)."""
    values = [h.strip().lower() for h in infohashes]
    whitelist_text(values)  # raises on a malformed one
    return values


def announce(
    tracker_port: int, infohash: str, *, port: int = 6881, left: int = 0, event: str | None = None
) -> dict[bytes, object]:
    """One HTTP announce to the tracker on 127.0.0.1:`tracker_port`: the bdecoded answer.

    OSError when it does not answer, ValueError when the answer is not bencoded."""
    (value,) = _check([infohash])
    query = urlencode({"peer_id": PEER_ID, "port": port, "uploaded": 0, "downloaded": 0, "left": left})
    query += "&compact=1&info_hash=" + quote_from_bytes(bytes.fromhex(value), safe="")
    if event is not None:
        query += "&event=" + event
    connection = http.client.HTTPConnection(HOST, tracker_port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", "/announce?" + query)
        body = connection.getresponse().read()
    finally:
        connection.close()
    return bencode.decode_dict(body).value


def compact_peers(data: object) -> list[tuple[str, int]]:
    """BEP 23 compact IPv4 peers: 6 bytes each (address, port)."""
    if not isinstance(data, bytes) or len(data) % 6:
        raise ValueError(f"not a compact peer list: {data!r}")
    return [
        (socket.inet_ntoa(data[i : i + 4]), int.from_bytes(data[i + 4 : i + 6], "big")) for i in range(0, len(data), 6)
    ]


class LocalTracker(ServerProcess):
    """One opentracker process on 127.0.0.1; a context manager (start on enter, stop by PID on exit).

    `port` None: a free port (retried on another if taken while starting); a fixed port (the demo's) is
    tried once. `infohashes`: the whitelist it starts with (a release replaces it)."""

    name = "opentracker"
    error = TrackerError
    stop_timeout = STOP_TIMEOUT

    def __init__(self, infohashes: Iterable[str] = (), *, port: int | None = None) -> None:
        self._initial = _check(infohashes)
        self._requested_port = port
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.base: Path | None = None  # the temp dir: the log, the PID file and root/
        self.root: Path | None = None  # the chroot dir, holding only the whitelist
        self.log_path: Path | None = None
        self.port = 0
        self.listed: list[str] = []

    # --- where it is ------------------------------------------------------------------------------------

    @property
    def announce_url(self) -> str:
        return f"http://{HOST}:{self.port}/announce"

    @property
    def udp_announce_url(self) -> str:
        return f"udp://{HOST}:{self.port}/announce"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise TrackerError("opentracker: not started; use it as `with LocalTracker() as tracker:`")
        return self._process.pid

    @property
    def whitelist_path(self) -> Path:
        """The whitelist file it reads (give it to a release as `tracker_whitelist`)."""
        if self.root is None:
            raise TrackerError("opentracker: not started; use it as `with LocalTracker() as tracker:`")
        return self.root / WHITELIST

    @property
    def pid_file(self) -> Path:
        """A file holding its PID (give it to a release as `tracker_pid_file`: it is sent SIGHUP)."""
        if self.base is None:
            raise TrackerError("opentracker: not started; use it as `with LocalTracker() as tracker:`")
        return self.base / PID_FILE

    # --- lifecycle ---------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        assert self.root is not None
        port = str(self.port)
        return [str(opentracker_binary()), "-i", HOST, "-p", port, "-P", port, "-d", str(self.root), "-w", WHITELIST]

    def start(self) -> LocalTracker:
        opentracker_binary()
        self._tempdir = tempfile.TemporaryDirectory(prefix="mirrorseed-tracker-")
        self.base = Path(self._tempdir.name)
        self.root = self.base / "root"
        self.root.mkdir()
        for directory in (self.base, self.root):
            directory.chmod(0o755)  # `nobody` reads the whitelist after the chroot
        self.log_path = self.base / "opentracker.log"
        self.write_whitelist(self._initial)
        try:
            self._start_attempts(1 if self._requested_port is not None else 3)
        except BaseException:
            self.stop()
            raise
        return self

    def _choose_ports(self, attempt: int) -> None:
        self.port = self._requested_port or free_port()

    def _launch(self) -> None:
        super()._launch()
        assert self._process is not None
        self.pid_file.write_text(f"{self._process.pid}\n", encoding="ascii")

    def _wait_ready(self) -> None:
        """Ready = an announce gets a bencoded answer (accepted or not authorized), bounded."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._exited_while("while starting")
            try:
                self.announce("0" * 40)  # not listed: answered with a failure reason, no peer added
            except (OSError, ValueError):
                time.sleep(0.1)
                continue
            # opentracker reads the whitelist in a thread of its own after it starts answering
            self.wait_tracked(self.listed)
            return
        raise self._fail(f"did not answer on {HOST}:{self.port} within {START_TIMEOUT:.0f} s (port taken?)")

    def stop(self) -> None:
        """SIGTERM by PID, a bounded wait, then SIGKILL; the temp dir is removed. Safe to call twice."""
        self._terminate()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
            self.base = self.root = None

    def restart(self) -> None:
        """Stop and start the same process arguments again (same port and whitelist dir)."""
        self._terminate()
        self._launch()
        self._wait_ready()

    def __enter__(self) -> LocalTracker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- whitelist -----------------------------------------------------------------------------------------

    def write_whitelist(self, infohashes: Iterable[str]) -> None:
        """Replace the whitelist as a release does (atomically, mode 0644); `reload` makes it count."""
        listed = _check(infohashes)
        update_whitelist(self.whitelist_path, listed)
        self.listed = listed

    def reload(self) -> float:
        """SIGHUP by PID, then `wait_tracked(self.listed)`; the seconds it took."""
        self._running()
        started = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        self.wait_tracked(self.listed, timeout=RELOAD_TIMEOUT)
        return time.monotonic() - started

    def wait_tracked(self, infohashes: Iterable[str], *, timeout: float = RELOAD_TIMEOUT) -> float:
        """Bounded wait until every infohash is accepted (after a release's SIGHUP); the seconds it took."""
        started = time.monotonic()
        pending = _check(infohashes)
        while True:
            self._running()
            pending = [h for h in pending if not self.accepts(h)]
            if not pending:
                return time.monotonic() - started
            if time.monotonic() - started >= timeout:
                raise self._fail(f"still refuses {pending[0]} after {timeout:.0f} s (whitelist not re-read?)")
            time.sleep(0.05)

    # --- requests --------------------------------------------------------------------------------------------

    def announce(
        self, infohash: str, *, port: int = 6881, left: int = 0, event: str | None = None
    ) -> dict[bytes, object]:
        """One HTTP announce for `infohash` from 127.0.0.1: the bdecoded answer (ValueError: not bencoded)."""
        return announce(self.port, infohash, port=port, left=left, event=event)

    def accepts(self, infohash: str) -> bool:
        """Whether the tracker tracks `infohash`: an announce (a `stopped` one skips the whitelist check),
        then, when accepted, a `stopped` one that takes the probe's peer out again."""
        if b"failure reason" in self.announce(infohash, port=PROBE_PORT):
            return False
        self.announce(infohash, port=PROBE_PORT, event="stopped")
        return True

    def peers(self, infohash: str) -> list[tuple[str, int]]:
        """The peers it lists for `infohash` (ValueError when it refuses it); the probe is taken out again."""
        answer = self.announce(infohash, port=PROBE_PORT)
        if b"failure reason" in answer:
            raise ValueError(f"tracker refuses {infohash}: {answer[b'failure reason']!r}")
        self.announce(infohash, port=PROBE_PORT, event="stopped")
        return [peer for peer in compact_peers(answer.get(b"peers", b"")) if peer[1] != PROBE_PORT]

    def wait_for_peer(
        self,
        infohash: str,
        port: int,
        *,
        timeout: float = PEER_TIMEOUT,
        check: Callable[[], object] | None = None,
    ) -> float:
        """Bounded wait until it lists 127.0.0.1:`port` for `infohash`; the seconds it took. `check` is
        called on every round (e.g. to raise when the seeder has exited)."""
        started = time.monotonic()
        while True:
            self._running()
            if check is not None:
                check()
            if (HOST, port) in self.peers(infohash):
                return time.monotonic() - started
            if time.monotonic() - started >= timeout:
                raise TrackerError(
                    f"{self.announce_url}: no peer at {HOST}:{port} for {infohash} within {timeout:.0f} s; "
                    "is the seeder announcing to this tracker?"
                )
            time.sleep(0.2)

    def _running(self) -> None:
        if self._process is None:
            raise TrackerError("opentracker: not started; use it as `with LocalTracker() as tracker:`")
        self._exited_while("while in use")
