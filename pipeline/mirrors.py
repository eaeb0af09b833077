"""Mirror health probes and per-file webseed selection (DESIGN section 1; notes/aria2-client.md 1-2).

`check_mirrors()` probes every configured HTTP mirror, concurrently across mirrors and at most
`ProbeLimits.concurrency` requests at once within one, at most `ProbeLimits.budget` requests per
mirror per run, each request with a total deadline (connect, status line and headers within the
timeout, the whole response within SLOW_BODY x the timeout), and the whole stage within
`ProbeLimits.stage_budget` (default STAGE_TIMEOUTS x the timeout, 60 s for the default 10 s):

1. its last-sync file, if configured (`MirrorConfig.lastsync`: Arch `lastsync`, Debian
   `project/trace/<host>`; at most 64 KiB read): epoch seconds, an RFC 2822 / `date -u` line or
   RFC 3339. `lag = snapshot time - last sync`.
2. Range support: the first ranged GET must get `206` with the right `Content-Range`. A `200` with
   the whole body makes the mirror `no-range`: never a webseed (aria2 fails without Range).
3. per file: HEAD (200, Content-Length = size, Last-Modified noted) and one ranged GET of one piece
   whose SHA-1 must equal ours (the piece is chosen from the SHA-256 and the number of earlier
   checks: reproducible, and a re-check reads another piece). Zero-length files: HEAD only.

Verification is incremental: each fact (mirror, path, SHA-256, when) is kept in the state cache, so
a run spends its budget on files not yet verified for that mirror (in a fixed order spread over the
tree) and on a small re-check sample of verified ones, least recently verified first (to notice
mirrors that lost files). A fact for another SHA-256 of the same path counts for nothing, and a
probe that finds a file missing or different drops the fact. One piece checked per file is a
sample, not proof: the client still checks every piece (aria2) and the SHA-256 (the recipes).

A mirror is `down` when its first requests get no answer (refused, reset, or too slow: headers or
a body trickling in past their deadline; at most 2x the timeout is spent waiting for its first
answer), when no probe got a usable answer (e.g. every one a 5xx), or when the stage's time budget
ran out before any of its files was checked ("too slow: not done within the mirror stage's N s");
`no-range`; `stale` (its last sync is behind the snapshot's time, or, when that time is unknown,
files differ and its last sync is older than another mirror's); `partial` (probed files missing
(4xx) or different); or `ok`. After ABORT_FAILURES failed probes in a row a mirror is not probed
further in that run. No request outlives the stage's budget, so the stage ends within it however a
mirror trickles; a mirror still being probed then keeps the verdict its answers gave, with that
note, and the files left are probed in the next run. `sampled` counts the probes it answered;
408/429/5xx answers are inconclusive and change no fact.

A down mirror stays in torrent url-lists for the files it was verified to hold until it has been
down for `down_runs` runs and for `down_after`, so one flaky mirror does not rewrite every torrent;
metalinks and listings use the current status at once.

All HTTP goes through `pipeline.http.Client` (total deadlines, bounded reads: never more than a piece
for a ranged GET, at most a few redirects, keep-alive), with URLs from `pipeline.urls.join_url`. Name
resolution is the one step its deadline does not cover. The state cache is read and written on the
calling thread only; probe threads see plain values.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import re
import threading
import time
from array import array
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal, NamedTuple, TypeVar, overload

from pipeline.config import MirrorConfig
from pipeline.filetable import FileTable, KnownDigests
from pipeline.http import BudgetSpent, Client, HttpError, Response
from pipeline.index import rfc3339
from pipeline.model import MirrorHealth, MirrorStatus, NullProgress, Progress
from pipeline.scratch import FixedColumn
from pipeline.state import MirrorFact, MirrorHealthRecord, StateCache
from pipeline.strcolumn import SortedColumn
from pipeline.urls import join_url

__all__ = [
    "MirrorReport",
    "ProbeFile",
    "ProbeFiles",
    "ProbeLimits",
    "check_mirrors",
    "choose_piece",
    "keeps_url_lists",
    "parse_last_sync",
    "probe_files",
]

log = logging.getLogger(__name__)

LASTSYNC_MAX_BYTES = 64 * 1024  # a last-sync file is one line (Debian traces: a few hundred bytes)
RECHECK_SHARE = 0.05  # at most this share of the budget goes to re-checking verified files ...
RECHECK_FRACTION = 0.01  # ... and at most this fraction of them (at least one) per run
START_FAILURES = 2  # requests that fail before the mirror's first answer: it is down
ANSWER_WINDOW = 2.0  # timeouts: the longest wait for a mirror's first answer
ABORT_FAILURES = 3  # consecutive failed probes after that: stop probing it in this run
SLOW_BODY = 2.0  # timeouts: the longest one request may take in all (the headers: one timeout)
STAGE_TIMEOUTS = 6.0  # timeouts: the whole probe stage's time budget (default 60 s), see ProbeLimits
SEQUENTIAL_PROBES = 3  # files probed one at a time first, until Range support is known
MAX_PARALLEL_MIRRORS = 16
USER_AGENT = "mirrorseed-probe (mirror health check)"
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_EPOCH = re.compile(r"[0-9]{1,12}(?:\.[0-9]+)?")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


# --- inputs and the report ----------------------------------------------------------------------


class ProbeFile(NamedTuple):
    """A file of the snapshot as the probes need it (zero-length files too). A NamedTuple: one per
    file on every run, ~5x cheaper to build than a frozen dataclass."""

    path: str
    size: int
    sha256: str
    piece_size: int


@dataclass(frozen=True)
class ProbeLimits:
    """Bounds of one run: per-request timeout (s: connect + status line + headers; SLOW_BODY x it for the
    whole response), requests per mirror, requests in flight per mirror, the flapping rule (a down mirror
    leaves url-lists after `down_runs` runs AND `down_after`), and the stage's time budget (`stage_budget`)."""

    timeout: float = 10.0
    budget: int = 4000
    concurrency: int = 8
    down_runs: int = 2
    down_after: timedelta = timedelta(hours=6)
    stage_timeout: float | None = None  # the whole probe stage, s; None: STAGE_TIMEOUTS x timeout

    @property
    def stage_budget(self) -> float:
        """Seconds the probe stage may take in all: no request of a run outlives it."""
        return self.stage_timeout if self.stage_timeout is not None else STAGE_TIMEOUTS * self.timeout


class ProbeFiles(Sequence[ProbeFile]):
    """The snapshot's files as the probes need them, sorted by path, held in columns: the paths in compressed
    blocks (`strcolumn.SortedColumn`) and the 32-byte SHA-256s in the scratch file (`scratch.FixedColumn`),
    two machine integers a file in memory (16 bytes, where a tuple of ProbeFiles and a path -> index dict
    cost ~450). Looked up by path with `position`, which is O(1) for lookups in path order (the order every
    caller asks in) and a binary search otherwise."""

    __slots__ = ("_digests", "_hint", "_paths", "_pieces", "_sizes")

    def __init__(self, rows: Iterable[tuple[str, int, str, int]]) -> None:
        """`rows`: (path, size, SHA-256 hex, piece size), sorted by path and unique (a scan's order)."""
        paths = SortedColumn()
        self._fill(paths, rows, add_path=paths.append)

    @classmethod
    def over(cls, paths: SortedColumn, facts: Iterable[tuple[int, str, int]]) -> ProbeFiles:
        """ProbeFiles over paths already in a column (a scan's table: shared, neither decoded into a second
        column nor copied), with the (size, SHA-256 hex, piece size) of each, in the same order."""
        files = cls.__new__(cls)
        files._fill(paths, ((path, *fact) for path, fact in zip(paths, facts, strict=True)), add_path=None)
        return files

    def _fill(
        self,
        paths: SortedColumn,
        rows: Iterable[tuple[str, int, str, int]],
        add_path: Callable[[str], None] | None,
    ) -> None:
        sizes = array("q")
        pieces = array("q")
        digests = FixedColumn(32)
        last: str | None = None
        for path, size, sha256, piece_size in rows:
            if last is not None and path <= last:
                raise ValueError(f"probe files must be sorted by path and unique: {path!r} after {last!r}")
            digest = bytes.fromhex(sha256)
            if len(digest) != 32:
                raise ValueError(f"{path}: {sha256!r} is not a SHA-256")
            if add_path is not None:
                add_path(path)
            last = path
            sizes.append(size)
            pieces.append(piece_size)
            digests.append(digest)
        self._paths = paths
        self._sizes = sizes
        self._pieces = pieces
        self._digests = digests
        # where the last lookup ended, and the path found there (compared, not read from the column)
        self._hint: tuple[int, str | None] = (0, None)

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, i: int) -> ProbeFile: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[ProbeFile]: ...
    def __getitem__(self, i: int | slice) -> ProbeFile | Sequence[ProbeFile]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # a negative index counts from the end; out of range raises IndexError
        return ProbeFile(self._paths[i], self._sizes[i], self.digest(i).hex(), self._pieces[i])

    @property
    def paths(self) -> Sequence[str]:
        return self._paths

    def path(self, i: int) -> str:
        return self._paths[i]

    def size(self, i: int) -> int:
        return self._sizes[i]

    def piece_size(self, i: int) -> int:
        return self._pieces[i]

    def digest(self, i: int) -> bytes:
        """File i's SHA-256, 32 bytes (their order is that of the hex digests)."""
        return self._digests[i]

    def position(self, path: str) -> int | None:
        """The index of `path`, or None. Lookups in path order (each path once or twice in a row: a torrent,
        then a metalink) cost a comparison or two each."""
        paths = self._paths
        hint, hint_path = self._hint  # one tuple: threads may race to replace it, never tear it
        if path == hint_path:
            return hint
        for guess in (hint + 1, hint):
            if guess < len(paths) and paths[guess] == path:
                self._hint = (guess, path)
                return guess
        i = paths.bisect_left(path)
        if i < len(paths) and paths[i] == path:
            self._hint = (i, path)
            return i
        return None


def probe_files(files: FileTable, known: KnownDigests) -> ProbeFiles:
    """The ProbeFiles of the hashing stage's files and what is known of each (by row), read from columns:
    over the table's own paths."""
    return ProbeFiles.over(files.paths, ((files.size_at(row), *known[row][:2]) for row in range(len(files))))


_T = TypeVar("_T")


class _Holders(Mapping[str, tuple[int, ...]]):
    """path -> indices of the mirrors verified to hold it (paths nobody holds are left out), in path
    order: a view over the files and one byte a file per mirror, not a dict of every held path."""

    def __init__(self, files: ProbeFiles, columns: Sequence[bytearray]) -> None:
        self._files = files
        self._columns = tuple(bytes(c) for c in columns)
        anyone = 0
        for column in self._columns:  # 0/1 bytes: OR-ing the columns as integers ORs them byte by byte
            anyone |= int.from_bytes(column, "big")
        self._anyone = anyone.to_bytes(len(files), "big") if self._columns else b""
        self._count = self._anyone.count(1)

    def _held(self, i: int) -> tuple[int, ...]:
        return tuple(k for k, column in enumerate(self._columns) if column[i])

    def __getitem__(self, path: str) -> tuple[int, ...]:
        held = self.get(path)
        if held is None:
            raise KeyError(path)
        return held

    @overload
    def get(self, path: str, /) -> tuple[int, ...] | None: ...

    @overload
    def get(self, path: str, /, default: tuple[int, ...] | _T) -> tuple[int, ...] | _T: ...

    def get(self, path: str, /, default: object = None) -> object:
        """`self[path]` or `default`, without raising and catching a KeyError for a path nobody holds (each
        file is asked ~4 times a run; every file, when no mirror holds anything)."""
        if not self._count:
            return default
        i = self._files.position(path)
        held = () if i is None else self._held(i)
        return held or default

    def __iter__(self) -> Iterator[str]:
        return (self._files.path(i) for i in self._positions())

    def items(self) -> ItemsView[str, tuple[int, ...]]:
        return _HolderItems(self)

    def _positions(self) -> Iterator[int]:
        anyone = self._anyone
        i = anyone.find(1)
        while i >= 0:
            yield i
            i = anyone.find(1, i + 1)

    def __len__(self) -> int:
        return self._count


class _HolderItems(ItemsView[str, tuple[int, ...]]):
    """(path, holders) in path order without a lookup per path."""

    _mapping: _Holders

    def __iter__(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        holders = self._mapping
        return ((holders._files.path(i), holders._held(i)) for i in holders._positions())


_WEBSEED_SETS = 4096  # sets of holders whose webseeds a MirrorReport remembers


@dataclass(frozen=True)
class MirrorReport:
    """What the probes found: one status per configured mirror and, per file, who holds it.

    `holders[path]` lists indices into `statuses` of the mirrors verified to hold that file's exact
    bytes (this run or earlier); `url_list[i]` says whether mirror i may be named in torrent url-lists
    in this run (never `no-range`; a down one until the flapping rule drops it), `metalink[i]` whether
    it may be named in metalinks now (neither down nor no-range).
    """

    statuses: tuple[MirrorStatus, ...] = ()
    holders: Mapping[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)
    url_list: tuple[bool, ...] = ()
    metalink: tuple[bool, ...] = ()

    # webseeds_for's answer by holders: few sets of mirrors hold the files, and each file is asked ~4 times
    _webseeds_of: dict[tuple[int, ...], tuple[str, ...]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def webseeds_for(self, path: str) -> tuple[str, ...]:
        """Base URLs for the url-list of `path`'s torrent, sorted (aria2 sorts them anyway)."""
        held = self.holders.get(path, ())
        found = self._webseeds_of.get(held)
        if found is None:
            found = tuple(sorted({self.statuses[i].url for i in held if self.url_list[i]}))
            if len(self._webseeds_of) < _WEBSEED_SETS:
                self._webseeds_of[held] = found
        return found

    def metalink_urls_for(self, path: str) -> tuple[tuple[str, int, str | None], ...]:
        """(base URL, priority, country) for `path`'s metalink, by priority then URL; current status only."""
        chosen: dict[str, tuple[str, int, str | None]] = {}
        for i in self.holders.get(path, ()):
            if self.metalink[i]:
                status = self.statuses[i]
                entry = (status.url, status.priority, status.country)
                if status.url not in chosen or entry[1:2] < chosen[status.url][1:2]:
                    chosen[status.url] = entry
        return tuple(sorted(chosen.values(), key=lambda e: (e[1], e[0])))


# --- pure helpers ------------------------------------------------------------------------------


def parse_last_sync(data: bytes | str) -> datetime | None:
    """A last-sync file's time as aware UTC, or None when it cannot be read as one.

    Accepted (first non-empty line): epoch seconds (Arch `lastsync`), an RFC 2822 date or `date -u`
    output (Debian trace: `Mon Nov 23 18:01:01 UTC 2026`), RFC 3339 (`2026-11-23T18:01:01Z`); a Debian
    trace's `Date:` line is tried next. A zone other than UTC/GMT/Z or a numeric offset is ambiguous: None.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    candidates = [lines[0]] + [line.partition(":")[2].strip() for line in lines[1:] if line.startswith("Date:")]
    for candidate in candidates:
        found = _parse_time(candidate)
        if found is not None:
            return found
    return None


def _parse_time(text: str) -> datetime | None:
    if _EPOCH.fullmatch(text):
        seconds = float(text)
        if seconds <= 0:
            return None
        try:
            return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=0)
        except (OverflowError, OSError, ValueError):
            return None
    if _RFC3339.fullmatch(text):
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            return None
        return parsed.astimezone(UTC)
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        if not text.endswith("-0000"):
            return None
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def choose_piece(sha256: str, pieces: int, check: int = 0) -> int:
    """The piece index to fetch for a file's `check`-th verification: reproducible, spread over files."""
    if pieces <= 1:
        return 0
    digest = hashlib.sha256(f"{sha256.lower()}:{check}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % pieces


def keeps_url_lists(down_runs: int, down_since: datetime | None, now: datetime, limits: ProbeLimits) -> bool:
    """Whether a mirror that has been down for `down_runs` consecutive runs (this one included) since
    `down_since` still belongs in torrent url-lists: until both `limits.down_runs` and `limits.down_after`."""
    if down_runs <= 0:
        return True
    elapsed = now - down_since if down_since is not None else timedelta(0)
    return not (down_runs >= limits.down_runs and elapsed >= limits.down_after)


def _from_rfc3339(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def _mirror_key(url: str) -> str:
    return url.rstrip("/")


# --- probing one mirror -------------------------------------------------------------------------

_Kind = Literal["ok", "missing", "different", "error", "no-range", "skipped"]


class _Probe(NamedTuple):  # a plan holds up to `budget` of them, made on every run: a tuple is cheap
    order: int  # position in the mirror's plan
    file: int  # index in the files given to check_mirrors
    path: str
    base: str  # the mirror's base URL
    size: int
    first: int  # byte range of the chosen piece, inclusive (unused for zero-length files)
    last: int
    piece: int
    expected: bytes  # that piece's SHA-1 (b"" for a zero-length file)
    checks: int  # successful verifications before this one

    @property
    def url(self) -> str:
        """Built when the request is sent: a plan names up to `budget` files and a down mirror is
        asked about one or two of them."""
        return join_url(self.base, self.path)


@dataclass(frozen=True)
class _Outcome:
    probe: _Probe
    kind: _Kind
    reason: str = ""
    last_modified: str | None = None
    range_seen: bool = False  # a ranged GET got a 206 with the Content-Range asked for
    answered: bool = True  # False: the mirror did not answer (refused, reset, timed out)


@dataclass(frozen=True)
class _MirrorPlan:
    key: str
    base: str
    lastsync: str | None
    probes: tuple[_Probe, ...]


@dataclass
class _MirrorRun:
    """What probing one mirror found (plain values, built on a probe thread)."""

    outcomes: list[_Outcome] = field(default_factory=list)
    last_sync: datetime | None = None
    last_sync_problem: str | None = None
    range_ok: bool | None = None
    range_problem: str | None = None
    down: str | None = None  # why it is down
    stopped: str | None = None  # why probing stopped early, when not down
    requests: int = 0


class _Prober:
    """Probes one mirror: last sync, then files one at a time until Range support is known, then in parallel."""

    def __init__(self, plan: _MirrorPlan, limits: ProbeLimits, stage_end: float) -> None:
        self.plan = plan
        self.limits = limits
        self.client = Client(user_agent=USER_AGENT, budget=limits.budget)
        self._stage_end = stage_end  # monotonic: no request of this run outlives it
        self.run = _MirrorRun()
        self._lock = threading.Lock()
        self._answered = False
        self._window_end = 0.0  # set when probing starts
        self._failures = 0  # before the first answer: failed requests; after: consecutive failed probes
        self._last_failure = ""
        self._stop: str | None = None

    def probe(self) -> _MirrorRun:
        self._window_end = time.monotonic() + self.limits.timeout * ANSWER_WINDOW
        try:
            if self.plan.lastsync is not None:
                self._last_sync(self.plan.lastsync)
            probes = list(self.plan.probes)
            sequential = 0
            while probes and self._stop is None and self.run.range_ok is None and sequential < SEQUENTIAL_PROBES:
                self._probe_and_record(probes.pop(0))
                sequential += 1
            if probes and self._stop is None:
                workers = max(1, min(self.limits.concurrency, len(probes)))
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
                    for _ in pool.map(self._probe_and_record, probes):
                        pass
        finally:
            self.client.close()
        run = self.run
        run.requests = self.client.requests
        run.outcomes.sort(key=lambda o: o.probe.order)
        conclusive = any(o.kind in ("ok", "missing", "different") for o in run.outcomes)
        errors = [o for o in run.outcomes if o.kind == "error"]
        if run.range_ok is False:
            return run
        if not conclusive and (self._stop is not None or errors or (not self._answered and self._last_failure)):
            run.down = self._stop or (
                f"all {len(errors)} probes failed ({errors[0].reason})"
                if errors
                else f"no answer: {self._last_failure}"
            )
        elif self._stop is not None:
            run.stopped = self._stop
        return run

    # -- requests with the mirror-level bookkeeping

    def _send(self, method: str, url: str, headers: Mapping[str, str], max_body: int) -> Response:
        """One request: headers within the timeout, all of it within SLOW_BODY timeouts, both cut to the
        answer window before the mirror's first answer and to the stage's end."""
        with self._lock:
            if self._stop is not None:
                raise BudgetSpent
            now = time.monotonic()
            headers_timeout = self.limits.timeout
            timeout = self.limits.timeout * SLOW_BODY
            if not self._answered:
                window = self._window_end - now
                if window <= 0.01:
                    self._stop_for(f"no answer within {ANSWER_WINDOW * self.limits.timeout:g}s ({self._last_failure})")
                    raise BudgetSpent
                headers_timeout, timeout = min(headers_timeout, window), min(timeout, window)
            left = self._stage_end - now
            if left <= 0.01:
                self._stop_for(self._out_of_time())
                raise BudgetSpent
            capped = timeout > left
            headers_timeout, timeout = min(headers_timeout, left), min(timeout, left)
        try:
            response = self.client.request(
                method, url, headers=headers, max_body=max_body, timeout=timeout, headers_timeout=headers_timeout
            )
        except HttpError as exc:
            with self._lock:
                if capped and exc.slow and time.monotonic() >= self._stage_end - 0.05:
                    self._stop_for(self._out_of_time())  # cut by the stage's end: abandoned, not a failure
                    raise BudgetSpent from None
                self._last_failure = f"{url}: {exc}"
                if not self._answered:
                    self._failures += 1
                    if self._failures >= START_FAILURES:
                        self._stop_for(f"no answer: {url}: {exc} ({self._failures} attempts)")
            raise
        with self._lock:
            if not self._answered:
                self._answered = True
                self._failures = 0
        return response

    def _stop_for(self, reason: str) -> None:
        if self._stop is None:
            self._stop = reason

    def _out_of_time(self) -> str:
        done = sum(1 for o in self.run.outcomes if o.kind != "skipped")
        return (
            f"too slow: not done within the mirror stage's {self.limits.stage_budget:g} s "
            f"({done} of {len(self.plan.probes)} files probed, the rest left for the next run)"
        )

    def _probe_and_record(self, probe: _Probe) -> None:
        outcome = _Outcome(probe, "skipped") if self._stop is not None else self._file(probe)
        with self._lock:
            if outcome.kind == "skipped":
                return
            self.run.outcomes.append(outcome)
            if outcome.range_seen and self.run.range_ok is None:
                self.run.range_ok = True
            if outcome.kind == "no-range":
                self.run.range_ok = False
                self.run.range_problem = outcome.reason
                self._stop_for(outcome.reason)
            elif outcome.kind == "error":
                if self._answered:
                    self._failures += 1
                    if self._failures >= ABORT_FAILURES:
                        self._stop_for(f"stopped after {self._failures} failed probes in a row ({outcome.reason})")
            elif self._answered:
                self._failures = 0

    # -- last sync

    def _last_sync(self, lastsync: str) -> None:
        url = join_url(self.plan.base, lastsync)
        try:
            response = self._send("GET", url, {}, LASTSYNC_MAX_BYTES)
        except HttpError as exc:
            self.run.last_sync_problem = f"last-sync file: {exc}"
            return
        except BudgetSpent:
            self.run.last_sync_problem = "last-sync file: not fetched"
            return
        if response.status != 200:
            self.run.last_sync_problem = f"last-sync file: HTTP {response.status}"
            return
        found = parse_last_sync(response.body)
        if found is None:
            self.run.last_sync_problem = "last-sync file: not a timestamp"
        self.run.last_sync = found

    # -- one file

    def _file(self, probe: _Probe) -> _Outcome:
        try:
            return self._check_file(probe)
        except HttpError as exc:
            return _Outcome(probe, "error", str(exc), answered=False)
        except BudgetSpent:
            return _Outcome(probe, "skipped")

    def _check_file(self, probe: _Probe) -> _Outcome:
        head = self._send("HEAD", probe.url, {}, 0)
        last_modified = head.headers.get("last-modified")
        head_ok = head.status == 200
        if not head_ok:
            verdict = _status_verdict(head.status)
            if verdict is not None:
                return _Outcome(probe, verdict, f"HTTP {head.status}")
            # 405/501: no HEAD here; the ranged GET's Content-Range still gives the size
        else:
            length = head.headers.get("content-length")
            if length is not None and length.strip().isdigit() and int(length) != probe.size:
                return _Outcome(probe, "different", f"size {int(length)}, expected {probe.size}", last_modified)
        if probe.size == 0:
            if head_ok:
                return _Outcome(probe, "ok", "", last_modified)
            whole = self._send("GET", probe.url, {}, 1)
            if whole.status == 200 and not whole.body:
                return _Outcome(probe, "ok", "", whole.headers.get("last-modified"))
            verdict = _status_verdict(whole.status) or "different"
            return _Outcome(probe, verdict, f"HTTP {whole.status}" if whole.status != 200 else "not empty")
        wanted = probe.last - probe.first + 1
        ranged = self._send("GET", probe.url, {"Range": f"bytes={probe.first}-{probe.last}"}, wanted)
        last_modified = last_modified or ranged.headers.get("last-modified")
        if ranged.status == 200:
            return _Outcome(probe, "no-range", "answered a ranged GET with 200 and the whole body")
        if ranged.status == 416:
            return _Outcome(probe, "different", "range not satisfiable (file shorter)", last_modified)
        if ranged.status != 206:
            verdict = _status_verdict(ranged.status) or "error"
            return _Outcome(probe, verdict, f"HTTP {ranged.status}", last_modified)
        match = _CONTENT_RANGE.match(ranged.headers.get("content-range", ""))
        if match is None:
            return _Outcome(probe, "no-range", "answered a ranged GET with 206 but no usable Content-Range")
        first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
        if total != "*" and int(total) != probe.size:
            return _Outcome(probe, "different", f"size {total}, expected {probe.size}", last_modified)
        if (first, last) != (probe.first, probe.last):
            return _Outcome(probe, "no-range", f"answered bytes {probe.first}-{probe.last} with {first}-{last}")
        if len(ranged.body) != wanted:
            return _Outcome(probe, "error", f"short body ({len(ranged.body)} of {wanted} bytes)", range_seen=True)
        if hashlib.sha1(ranged.body).digest() != probe.expected:
            return _Outcome(probe, "different", f"piece {probe.piece} differs", last_modified, range_seen=True)
        return _Outcome(probe, "ok", "", last_modified, range_seen=True)


def _status_verdict(status: int) -> _Kind | None:
    """How an unexpected status counts: a 4xx means the file is not there, 408/429/5xx are inconclusive;
    None for 405/501 (no HEAD: fall back to GET)."""
    if status in (405, 501):
        return None
    if 400 <= status < 500 and status not in (408, 429):
        return "missing"
    return "error"


# --- the run ------------------------------------------------------------------------------------


def check_mirrors(
    mirrors: Sequence[MirrorConfig],
    files: Sequence[ProbeFile],
    *,
    pieces_of: Callable[[Sequence[str]], Mapping[str, bytes]],
    state: StateCache,
    snapshot_time: datetime | None,
    now: datetime,
    limits: ProbeLimits,
    progress: Progress | None = None,
) -> MirrorReport:
    """Probe `mirrors` for `files` within `limits`, update the state's mirror facts and health, and return
    one status per mirror (in the given order) with the per-file selection.

    `pieces_of(paths)` gives, by path, the concatenated 20-byte SHA-1 piece hashes of those files it
    knows (one call per run, on this thread). `now` and `snapshot_time` must be aware datetimes; `now`
    is recorded in the state. Facts of mirrors and paths not given here are dropped from the state.
    """
    if now.tzinfo is None or (snapshot_time is not None and snapshot_time.tzinfo is None):
        raise ValueError("check_mirrors: now and snapshot_time must be timezone-aware")
    sink: Progress = progress if progress is not None else NullProgress()
    files = files if isinstance(files, ProbeFiles) else ProbeFiles(files)
    keys = list(dict.fromkeys(_mirror_key(m.url) for m in mirrors))
    config_of = {key: [m for m in mirrors if _mirror_key(m.url) == key] for key in keys}
    state.forget_mirrors_except(keys, files.paths)

    verified: dict[str, bytearray] = {}
    picks: dict[str, _Pick] = {}
    for key in keys:
        verified[key], rechecks = _known(state.mirror_facts(key), files, limits)
        picks[key] = _pick(key, config_of[key], files, verified[key], rechecks, limits)
    plans = _plans(config_of, files, picks, pieces_of)

    runs: dict[str, _MirrorRun] = {}
    sink.start("mirrors", total=len(keys), unit="mirrors")
    if keys:
        stage_end = time.monotonic() + limits.stage_budget  # every request is cut to it: the pool ends by then
        with ThreadPoolExecutor(max_workers=min(len(keys), MAX_PARALLEL_MIRRORS), thread_name_prefix="mirror") as pool:
            futures = {pool.submit(_Prober(plans[key], limits, stage_end).probe): key for key in keys}
            for future in as_completed(futures):
                runs[futures[future]] = future.result()
                sink.advance(1)
    sink.finish()

    stamp = rfc3339(now)
    newest_sync = max((r.last_sync for r in runs.values() if r.last_sync is not None), default=None)
    health: list[MirrorHealthRecord] = []
    results: dict[str, tuple[MirrorHealth, str, bool, bool, _MirrorRun]] = {}
    for key in keys:
        run = runs[key]
        _apply(state, key, run, files, verified[key], stamp)
        status, detail = _classify(run, snapshot_time, newest_sync)
        record = _health(state.mirror_health(key), key, status, stamp, run)
        health.append(record)
        url_list = status != "no-range" and keeps_url_lists(
            record.down_runs, _from_rfc3339(record.down_since), now, limits
        )
        held_count = verified[key].count(1)
        if status in ("ok", "stale", "partial") and files:
            verified_note = "so far" if held_count < len(files) else ""
            detail += f"; {held_count} of {len(files)} files verified {verified_note}".rstrip()
        if status == "down" and held_count:
            detail += (
                f"; kept in url-lists until down for {limits.down_runs} runs and {_human(limits.down_after)}"
                if url_list
                else f"; dropped from url-lists (down for {record.down_runs} runs since {record.down_since})"
            )
        results[key] = (status, detail, url_list, status not in ("down", "no-range"), run)
    state.store_mirror_health(health)

    statuses: list[MirrorStatus] = []
    url_lists: list[bool] = []
    metalinks: list[bool] = []
    columns: list[bytearray] = []
    for mirror in mirrors:
        key = _mirror_key(mirror.url)
        status, detail, url_list, metalink, run = results[key]
        held = verified[key]
        count = held.count(1)
        statuses.append(_status(mirror, status, detail, run, snapshot_time, count, len(files), url_list and count > 0))
        url_lists.append(url_list)
        metalinks.append(metalink)
        columns.append(held)
    holders = _Holders(files, columns)
    for status_ in statuses:
        requests = runs[_mirror_key(status_.url)].requests
        log.info("mirror %s: %s (%s); %d requests", status_.url, status_.status, status_.detail, requests)
    return MirrorReport(tuple(statuses), holders, tuple(url_lists), tuple(metalinks))


def _known(
    kept: Iterable[MirrorFact], files: ProbeFiles, limits: ProbeLimits
) -> tuple[bytearray, list[tuple[int, int]]]:
    """Which files a mirror holds per the state (facts for the current SHA-256 only), and the re-check
    sample: (file index, checks so far), non-empty files first, least recently verified first.

    Facts are streamed in path order: memory is one byte per file plus the sample, however many facts
    there are, and each fact costs one comparison to place.
    """
    held = bytearray(len(files))

    def matching() -> Iterator[tuple[str, int, int]]:
        for fact in kept:
            i = files.position(fact.path)
            if i is not None and files.digest(i).hex() == fact.sha256:
                held[i] = 1
                yield fact.verified_at, i, fact.checks

    most = max(1, int(limits.budget * RECHECK_SHARE) // 2)
    oldest = heapq.nsmallest(
        most, matching(), key=lambda t: (files.size(t[1]) == 0, t[0], files.digest(t[1]), files.path(t[1]))
    )
    goal = min(most, max(1, math.ceil(held.count(1) * RECHECK_FRACTION)))
    return held, [(i, checks) for _, i, checks in oldest[:goal]]


@dataclass(frozen=True)
class _Pick:
    """Files chosen for one mirror this run: (file index, prior checks), in probing order."""

    chosen: tuple[tuple[int, int], ...]


def _pick(
    key: str,
    configs: Sequence[MirrorConfig],
    files: ProbeFiles,
    held: bytearray,
    rechecks: Sequence[tuple[int, int]],
    limits: ProbeLimits,
) -> _Pick:
    """Unverified files first (by SHA-256, then path: a fixed order spread over the tree), then the
    re-check sample of verified ones, within the budget. Only the first `budget` unverified files are
    ever ordered: memory is bounded by the budget, not the file count."""
    lastsync = next((c.lastsync for c in configs if c.lastsync), None)
    budget = max(0, limits.budget - (1 if lastsync else 0))
    reserve = min(budget, sum(1 if files.size(i) == 0 else 2 for i, _ in rechecks))
    # nsmallest is stable and the indices ascend in path order: keyed by the digest alone, ties go by path
    first = heapq.nsmallest(budget - reserve, _unheld(held), key=files.digest)
    chosen: list[tuple[int, int]] = []
    spent = 0
    for i in first:
        cost = 1 if files.size(i) == 0 else 2
        if spent + cost > budget - reserve:
            break
        chosen.append((i, 0))
        spent += cost
    taken = 0
    for i, checks in rechecks:
        cost = 1 if files.size(i) == 0 else 2
        if spent + cost > budget:
            break
        chosen.append((i, checks))
        spent += cost
        taken += 1
    first_sized = next((n for n, (i, _) in enumerate(chosen) if files.size(i) > 0), 0)
    if first_sized:  # the first ranged GET tells whether Range works: put a non-empty file first
        chosen.insert(0, chosen.pop(first_sized))
    log.debug("mirror %s: %d files to probe (%d re-checks)", key, len(chosen), taken)
    return _Pick(tuple(chosen))


def _unheld(held: bytearray) -> Iterator[int]:
    """Indices of the files not held, ascending (a mirror verified long ago skips its held ones at C speed)."""
    i = held.find(0)
    while i >= 0:
        yield i
        i = held.find(0, i + 1)


def _plans(
    config_of: Mapping[str, Sequence[MirrorConfig]],
    files: Sequence[ProbeFile],
    picks: Mapping[str, _Pick],
    pieces_of: Callable[[Sequence[str]], Mapping[str, bytes]],
) -> dict[str, _MirrorPlan]:
    """Probes with their expected piece hashes; `pieces_of` is called once, with every path needed."""
    # each chosen file read once, in path order: its path and SHA-256 come from compressed blocks, which the
    # chosen order (by SHA-256) would decode again for nearly every file (~10 us each; a budget is 4,000)
    chosen = {i: files[i] for i in sorted({i for pick in picks.values() for i, _ in pick.chosen})}
    wanted: dict[int, set[int]] = {}
    piece_of: dict[tuple[int, int], int] = {}
    for pick in picks.values():
        for i, checks in pick.chosen:
            f = chosen[i]
            if f.size == 0:
                continue
            count = -(-f.size // f.piece_size)
            piece = choose_piece(f.sha256, count, checks)
            piece_of[(i, checks)] = piece
            wanted.setdefault(i, set()).add(piece)
    digests: dict[tuple[int, int], bytes] = {}
    unusable: list[str] = []
    blobs: Mapping[str, bytes] = {}
    try:
        blobs = pieces_of([chosen[i].path for i in wanted]) if wanted else {}
    except (OSError, ValueError) as exc:
        unusable.append(f"{len(wanted)} files ({type(exc).__name__}: {exc})")
    for i, pieces in wanted.items():
        f = chosen[i]
        blob = blobs.get(f.path)
        if blob is None:
            if not unusable or blobs:
                unusable.append(f"{f.path} (no piece hashes)")
            continue
        if len(blob) != 20 * -(-f.size // f.piece_size):
            unusable.append(f"{f.path} ({len(blob)} bytes of piece hashes for {f.size} bytes)")
            continue
        for piece in pieces:
            digests[(i, piece)] = blob[20 * piece : 20 * piece + 20]
    if unusable:
        more = f" and {len(unusable) - 3} more" if len(unusable) > 3 else ""
        log.warning("piece hashes unusable for %s%s; not probed this run", "; ".join(unusable[:3]), more)
    plans: dict[str, _MirrorPlan] = {}
    for key, pick in picks.items():
        configs = config_of[key]
        base = configs[0].url
        probes: list[_Probe] = []
        for i, checks in pick.chosen:
            f = chosen[i]
            if f.size == 0:
                probes.append(_Probe(len(probes), i, f.path, base, 0, 0, -1, 0, b"", checks))
                continue
            piece = piece_of[(i, checks)]
            digest = digests.get((i, piece))
            if digest is None:
                continue
            first = piece * f.piece_size
            last = min(f.size, first + f.piece_size) - 1
            probes.append(_Probe(len(probes), i, f.path, base, f.size, first, last, piece, digest, checks))
        lastsync = next((c.lastsync for c in configs if c.lastsync), None)
        plans[key] = _MirrorPlan(key, base, lastsync, tuple(probes))
    return plans


def _apply(
    state: StateCache, key: str, run: _MirrorRun, files: Sequence[ProbeFile], held: bytearray, stamp: str
) -> None:
    """Record this run's verdicts: facts for verified files, none for missing or different ones."""
    fresh: list[MirrorFact] = []
    forgotten: list[str] = []
    for outcome in run.outcomes:
        i = outcome.probe.file
        if outcome.kind == "ok":
            fresh.append(
                MirrorFact(files[i].path, files[i].sha256, stamp, outcome.probe.checks + 1, outcome.last_modified)
            )
            held[i] = 1
        elif outcome.kind in ("missing", "different"):
            if held[i]:
                forgotten.append(files[i].path)
            held[i] = 0
    if fresh or forgotten:
        state.update_mirror_facts(key, fresh, forgotten)


def _classify(
    run: _MirrorRun, snapshot_time: datetime | None, newest_sync: datetime | None
) -> tuple[MirrorHealth, str]:
    """The mirror's status and a one-line reason."""
    if run.down is not None:
        return "down", run.down
    if run.range_ok is False:
        return "no-range", f"no Range support: {run.range_problem} (aria2 needs 206 answers)"
    probed = _answered(run)
    ok = sum(1 for o in probed if o.kind == "ok")
    missing = [o for o in probed if o.kind == "missing"]
    different = [o for o in probed if o.kind == "different"]
    errors = [o for o in run.outcomes if o.kind == "error"]
    problems = _problems(len(probed), missing, different, errors)
    notes = [n for n in (run.last_sync_problem, run.stopped) if n]
    if run.last_sync is not None and snapshot_time is not None and run.last_sync < snapshot_time:
        line = f"last sync {rfc3339(run.last_sync)} is {_human(snapshot_time - run.last_sync)} behind the snapshot"
        return "stale", "; ".join([line, *([problems] if missing or different else []), *notes])
    if snapshot_time is None and different and newest_sync is not None and run.last_sync is not None:
        if run.last_sync < newest_sync:
            line = f"{problems}, and its last sync {rfc3339(run.last_sync)} is older than another mirror's"
            return "stale", "; ".join([line, *notes])
    if missing or different:
        return "partial", "; ".join([problems, *notes])
    summary = f"{ok} of {len(probed)} probed files OK" if probed else "no files probed"
    if errors:
        summary += f", {len(errors)} inconclusive ({errors[0].reason})"
    return "ok", "; ".join([summary, *notes])


def _problems(
    probed: int, missing: Sequence[_Outcome], different: Sequence[_Outcome], errors: Sequence[_Outcome]
) -> str:
    parts: list[str] = []
    if missing:
        codes = sorted({o.reason for o in missing})
        parts.append(f"{len(missing)} of {probed} probed files missing ({', '.join(codes)})")
    if different:
        reason = different[0].reason + (", …" if len(different) > 1 else "")
        lead = f"{len(different)} of {probed} probed files" if not missing else f"{len(different)}"
        parts.append(f"{lead} different ({reason})")
    if errors:
        parts.append(f"{len(errors)} inconclusive ({errors[0].reason})")
    return ", ".join(parts)


def _answered(run: _MirrorRun) -> list[_Outcome]:
    """The probes the mirror answered (what `sampled` counts)."""
    return [o for o in run.outcomes if o.kind != "skipped" and o.answered]


def _health(
    previous: MirrorHealthRecord | None, key: str, status: MirrorHealth, stamp: str, run: _MirrorRun
) -> MirrorHealthRecord:
    last_sync = rfc3339(run.last_sync) if run.last_sync is not None else None
    if status != "down":
        return MirrorHealthRecord(key, status, stamp, 0, None, last_sync)
    if previous is not None and previous.down_runs > 0:
        return MirrorHealthRecord(key, status, stamp, previous.down_runs + 1, previous.down_since or stamp, last_sync)
    return MirrorHealthRecord(key, status, stamp, 1, stamp, last_sync)


def _status(
    mirror: MirrorConfig,
    status: MirrorHealth,
    detail: str,
    run: _MirrorRun,
    snapshot_time: datetime | None,
    verified: int,
    total: int,
    webseed: bool,
) -> MirrorStatus:
    probed = _answered(run)
    lag = None
    if run.last_sync is not None and snapshot_time is not None:
        lag = max(0, int((snapshot_time - run.last_sync).total_seconds()))
    return MirrorStatus(
        url=mirror.url,
        country=mirror.country,
        continent=mirror.continent,
        name=mirror.name,
        contact=mirror.contact,
        bandwidth=mirror.bandwidth,
        priority=mirror.priority,
        status=status,
        last_sync=rfc3339(run.last_sync) if run.last_sync is not None else None,
        lag_seconds=lag,
        range_ok=run.range_ok,
        sampled=len(probed),
        sampled_ok=sum(1 for o in probed if o.kind == "ok"),
        verified_files=verified,
        total_files=total,
        webseed=webseed,
        detail=detail,
    )
