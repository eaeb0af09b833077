"""A real BitTorrent tracker for tests: Debian's `opentracker` (whitelist mode) on 127.0.0.1.

    with Tracker([infohash]) as tracker:          # temp dir with whitelist.txt, a free port (TCP = UDP)
        spec = BuildSpec(..., trackers=(tracker.announce_url,), ...)
        tracker.write_whitelist([infohash, other])
        tracker.reload()                          # SIGHUP by PID, then waits until every listed hash is accepted
        tracker.announce(other)                   # the bdecoded answer to one HTTP announce

Facts about this build (shared/notes/swarm.md, checked again here): started as root it chroots into
`-d DIR`, reads `-w FILE` relative to it and drops to `nobody` (it refuses `-u root`), so DIR and the
whitelist are made readable by everyone; it re-reads the whitelist on SIGHUP (verified by `reload`,
which fails rather than waits forever when the new hashes are not accepted).
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote_from_bytes, urlencode

from pipeline import bencode
from tests.processes import ServerProcess

HOST = "127.0.0.1"
WHITELIST = "whitelist.txt"
START_TIMEOUT = 10.0
RELOAD_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0  # opentracker exits about 1 s after SIGTERM
REQUEST_TIMEOUT = 3.0
PEER_ID = b"-MS0001-tracker-test"  # 20 bytes
PROBE_PORT = 9  # the port a probe announces (discard: nothing listens there)


class TrackerError(RuntimeError):
    """opentracker could not be started, or did not take a new whitelist."""


def opentracker_binary() -> Path:
    """Debian's /usr/bin/opentracker (or one on PATH); fail (never skip) when it is missing."""
    found = shutil.which("opentracker") or shutil.which("opentracker", path="/usr/bin:/usr/sbin")
    if found is None:
        raise TrackerError("opentracker not found: run ./bootstrap.sh (installs the opentracker package)")
    return Path(found)


def free_port(attempts: int = 50) -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (opentracker listens on both)."""
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
    raise TrackerError("no port free for both TCP and UDP on 127.0.0.1")


def _check_infohash(infohash: str) -> str:
    value = infohash.strip().lower()
    if len(value) != 40 or any(ch not in "0123456789abcdef" for ch in value):
        raise ValueError(f"{infohash!r} is not a 40-hex v1 infohash")
    return value


class Tracker(ServerProcess):
    """One opentracker process; a context manager (start on enter, stop by PID on exit)."""

    name = "opentracker"
    error = TrackerError
    stop_timeout = STOP_TIMEOUT

    def __init__(self, infohashes: Iterable[str] = (), *, port: int | None = None) -> None:
        self._initial = [_check_infohash(h) for h in infohashes]
        self._requested_port = port
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.root: Path | None = None  # the chroot dir, holding only the whitelist
        self.log_path: Path | None = None
        self.port = 0
        self.listed: list[str] = []

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def announce_url(self) -> str:
        return f"http://{HOST}:{self.port}/announce"

    @property
    def udp_announce_url(self) -> str:
        return f"udp://{HOST}:{self.port}/announce"

    @property
    def pid(self) -> int:
        assert self._process is not None, "tracker not started"
        return self._process.pid

    @property
    def whitelist_path(self) -> Path:
        assert self.root is not None, "tracker not started"
        return self.root / WHITELIST

    def command(self) -> list[str]:
        assert self.root is not None
        port = str(self.port)
        return [str(opentracker_binary()), "-i", HOST, "-p", port, "-P", port, "-d", str(self.root), "-w", WHITELIST]

    def start(self) -> Tracker:
        opentracker_binary()
        self._tempdir = tempfile.TemporaryDirectory(prefix="mirrorseed-tracker-")
        base = Path(self._tempdir.name)
        self.root = base / "root"
        self.root.mkdir()
        for directory in (base, self.root):
            directory.chmod(0o755)  # `nobody` reads the whitelist after the chroot
        self.log_path = base / "opentracker.log"
        self.write_whitelist(self._initial)
        try:
            self._start_attempts(1 if self._requested_port is not None else 3)
            return self
        except BaseException:
            self.stop()
            raise

    def _choose_ports(self, attempt: int) -> None:
        self.port = self._requested_port or free_port()

    def _wait_ready(self) -> None:
        """Ready = an announce gets a bencoded answer (accepted or not authorized), bounded."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._exited_while("while starting")
            try:
                self.announce("0" * 40)  # not listed: answered with a failure reason, no peer added
                return
            except (OSError, ValueError):
                time.sleep(0.1)
        raise self._fail(f"port {self.port} did not answer within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """SIGTERM by PID, up to 5 s, then SIGKILL; the temp dir is removed."""
        self._terminate()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def restart(self) -> None:
        """Stop and start the same process arguments again (same port and whitelist dir)."""
        self._terminate()
        self._launch()
        self._wait_ready()

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- whitelist -----------------------------------------------------------------------------------------

    def write_whitelist(self, infohashes: Iterable[str]) -> None:
        """Replace the whitelist (one 40-hex infohash a line) by a rename, as a release does; mode 0644."""
        listed = [_check_infohash(h) for h in infohashes]
        temporary = self.whitelist_path.with_name(WHITELIST + ".tmp")
        temporary.write_text("".join(h + "\n" for h in listed))
        temporary.chmod(0o644)
        temporary.replace(self.whitelist_path)
        self.listed = listed

    def reload(self) -> float:
        """SIGHUP by PID, then wait (bounded) until every listed infohash is accepted; the seconds it took."""
        assert self._process is not None and self._process.poll() is None, "tracker not running"
        started = time.monotonic()
        self._process.send_signal(signal.SIGHUP)
        deadline = started + RELOAD_TIMEOUT
        pending = list(self.listed)
        while True:
            if self._process.poll() is not None:
                raise self._fail(f"exited with code {self._process.returncode} on SIGHUP")
            pending = [h for h in pending if not self.accepts(h)]
            if not pending:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise self._fail(f"still refuses {pending[0]} {RELOAD_TIMEOUT:.0f} s after SIGHUP")
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
        """The peers the tracker lists for `infohash` (ValueError when it refuses it); the probe is taken out again."""
        answer = self.announce(infohash, port=PROBE_PORT)
        if b"failure reason" in answer:
            raise ValueError(f"tracker refuses {infohash}: {answer[b'failure reason']!r}")
        self.announce(infohash, port=PROBE_PORT, event="stopped")
        return [peer for peer in compact_peers(answer.get(b"peers", b"")) if peer[1] != PROBE_PORT]


def announce(
    tracker_port: int, infohash: str, *, port: int = 6881, left: int = 0, event: str | None = None
) -> dict[bytes, object]:
    """One HTTP announce to the tracker on 127.0.0.1:`tracker_port`: the bdecoded answer (ValueError: not bencoded)."""
    query = urlencode({"peer_id": PEER_ID, "port": port, "uploaded": 0, "downloaded": 0, "left": left})
    query += "&compact=1&info_hash=" + quote_from_bytes(bytes.fromhex(_check_infohash(infohash)), safe="")
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
