"""The run report: what changed, what was written, time per stage; as JSON and as a Prometheus textfile."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

_INDENT = 2


@dataclass(frozen=True)
class RunReport:
    action: str  # "publish" | "resign" | "finish" | "refresh" | "noop"
    sequence: int
    dry_run: bool
    files: int
    bytes_hashed: int
    files_hashed: int
    new: Sequence[str]  # all the files in a full build: read as asked
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int
    objects_put: int
    objects_skipped: int
    bytes_put: int
    planned_keys: Sequence[str]  # read as asked: two and a half million keys in a million-package build
    deleted_keys: tuple[str, ...]
    pointer_expires: str
    pointer_expires_epoch: int
    key_fingerprint: str
    key_expires_epoch: int | None
    stages: tuple[tuple[str, float], ...]
    destination: str
    mirrors: tuple[tuple[str, str, str], ...] = ()  # (url, status, detail)

    def to_json(self) -> dict[str, Any]:
        return self._document(list(self.new), list(self.planned_keys))

    def json_chunks(self) -> Iterator[str]:
        """`json.dumps(self.to_json(), indent=2, sort_keys=True)` in pieces of about `_CHUNK_CHARS`, with the new
        packages and the planned keys encoded one at a time: as one string (or as lists) a full build of a
        million packages would hold ~500 MB of them (and a write a key, ~2 µs each, took seconds)."""
        return _joined(self._json_pieces())

    def _json_pieces(self) -> Iterator[str]:
        token = secrets.token_hex(8)  # a placeholder no value of the report can spell
        new, planned = f"\0new {token}\0", f"\0planned {token}\0"
        encoder = json.JSONEncoder(indent=_INDENT, sort_keys=True)
        lists = {encoder.encode(new): (self.new, 2), encoder.encode(planned): (self.planned_keys, 1)}
        for chunk in encoder.iterencode(self._document(new, planned)):
            found = lists.get(chunk)
            if found is None:
                yield chunk
            else:
                yield from _list_chunks(found[0], level=found[1])

    def _document(self, new: object, planned_keys: object) -> dict[str, Any]:
        return {
            "action": self.action,
            "sequence": self.sequence,
            "dry_run": self.dry_run,
            "destination": self.destination,
            "files": self.files,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "packages": {
                "new": new,
                "changed": list(self.changed),
                "removed": list(self.removed),
                "unchanged": self.unchanged,
            },
            "objects": {
                "put": self.objects_put,
                "skipped": self.objects_skipped,
                "deleted": len(self.deleted_keys),
                "bytes_put": self.bytes_put,
            },
            "planned_keys": planned_keys,
            "deleted_keys": list(self.deleted_keys),
            "pointer_expires": self.pointer_expires,
            "key": {"fingerprint": self.key_fingerprint, "expires_epoch": self.key_expires_epoch},
            "stages": {name: round(seconds, 6) for name, seconds in self.stages},
            "mirrors": [{"url": u, "status": s, "detail": d} for u, s, d in self.mirrors],
        }

    def summary_lines(self) -> list[str]:
        verb = {
            "publish": "published",
            "resign": "re-signed",
            "finish": "completed (listings and retention of an interrupted run)",
            "refresh": "unchanged; metalinks and pages updated for the mirrors' status",
            "noop": "unchanged, nothing written",
        }[self.action]
        if self.dry_run:
            verb = f"would be {verb}" if self.action != "noop" else verb
        lines = [
            f"sequence {self.sequence}: {verb}; pointer valid until {self.pointer_expires}",
            f"packages: {len(self.new)} new, {len(self.changed)} changed, {self.unchanged} unchanged, "
            f"{len(self.removed)} removed ({self.files} in the snapshot)",
            f"hashed: {self.files_hashed} files, {self.bytes_hashed / 1e6:.1f} MB",
            f"objects: {self.objects_put} {'to put' if self.dry_run else 'put'} "
            f"({self.bytes_put / 1e3:.1f} kB), {self.objects_skipped} unchanged, "
            f"{len(self.deleted_keys)} {'to delete' if self.dry_run else 'deleted'} (retention)",
            "time: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.stages),
        ]
        lines += [f"mirror {url}: {status} ({detail})" for url, status, detail in self.mirrors]
        return lines

    def to_prometheus(self) -> str:
        """Prometheus textfile-collector format (DESIGN section 6)."""
        out = [
            "# HELP mirrorseed_stage_duration_seconds Time spent per stage of the last run.",
            "# TYPE mirrorseed_stage_duration_seconds gauge",
        ]
        out += [f'mirrorseed_stage_duration_seconds{{stage="{n}"}} {s:.6f}' for n, s in self.stages]
        gauges = [
            ("files_hashed", "Files hashed by the last run.", self.files_hashed),
            ("bytes_hashed", "Bytes hashed by the last run.", self.bytes_hashed),
            ("objects_put", "Objects written by the last run.", self.objects_put),
            ("objects_skipped", "Objects already present and skipped.", self.objects_skipped),
            ("objects_deleted", "Objects deleted by retention.", len(self.deleted_keys)),
            ("pointer_sequence", "Sequence of the current pointer.", self.sequence),
            ("pointer_expiry_timestamp_seconds", "When the current pointer expires.", self.pointer_expires_epoch),
        ]
        if self.key_expires_epoch is not None:
            gauges.append(
                ("signing_key_expiry_timestamp_seconds", "When the signing key expires.", self.key_expires_epoch)
            )
        for name, help_text, value in gauges:
            out += [
                f"# HELP mirrorseed_{name} {help_text}",
                f"# TYPE mirrorseed_{name} gauge",
                f"mirrorseed_{name} {value}",
            ]
        return "\n".join(out) + "\n"


_CHUNK_CHARS = 1 << 16


def _joined(pieces: Iterable[str]) -> Iterator[str]:
    """`pieces` joined into strings of `_CHUNK_CHARS` or a little more (the last may be shorter)."""
    held: list[str] = []
    count = 0
    for piece in pieces:
        held.append(piece)
        count += len(piece)
        if count >= _CHUNK_CHARS:
            yield "".join(held)
            held.clear()
            count = 0
    if held:
        yield "".join(held)


def _list_chunks(items: Sequence[str], *, level: int) -> Iterator[str]:
    """A list of strings as `json.JSONEncoder(indent=2)` writes one as a value at indent `level`."""
    if not items:
        yield "[]"
        return
    inner = "\n" + " " * _INDENT * (level + 1)
    separator = "[" + inner
    for item in items:
        yield separator + encode_basestring_ascii(item)
        separator = "," + inner
    yield "\n" + " " * _INDENT * level + "]"
