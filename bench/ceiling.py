"""The hashing cost floor for `invoke bench`: read every file once, feed hashlib's SHA-1 and SHA-256.

    python bench/ceiling.py --workers N FILES_TSV

FILES_TSV is the bench corpus list (`size<TAB>piece size<TAB>log2<TAB>absolute path` per line). Each file
is read once in 1 MiB blocks into a reused buffer; every block goes to one SHA-1 and one SHA-256 of the
whole file (OpenSSL through hashlib, SHA-NI where the CPU has it). No piece bookkeeping, no output files:
the least work any single-pass torrent + SHA-256 tool must do. With `--workers 1` the files are hashed in
this process; with more, a pool of worker processes takes batches of files, largest first (as
mirrorseed's hashing stage does), so the pool's tail holds only small files.

Prints one line: `files <n> bytes <total>`.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import sys

BLOCK = 1024 * 1024
BATCH_MAX_FILES = 128
BATCH_MAX_BYTES = 16 * 1024 * 1024

_buffer: bytearray | None = None


def hash_files(paths: list[str]) -> int:
    """SHA-1 + SHA-256 of each file, block by block; returns the bytes read."""
    global _buffer
    if _buffer is None:
        _buffer = bytearray(BLOCK)
    buffer = _buffer
    view = memoryview(buffer)
    total = 0
    for path in paths:
        sha1 = hashlib.sha1()
        sha256 = hashlib.sha256()
        with open(path, "rb", buffering=0) as raw:
            while n := raw.readinto(buffer):
                block = view[:n]
                sha1.update(block)
                sha256.update(block)
                total += n
        sha1.digest()
        sha256.digest()
    return total


def batches(files: list[tuple[int, str]]) -> list[list[str]]:
    """Largest files first, grouped so a batch of tiny files costs one round trip."""
    out: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for size, path in sorted(files, key=lambda item: -item[0]):
        current.append(path)
        current_bytes += size
        if len(current) >= BATCH_MAX_FILES or current_bytes >= BATCH_MAX_BYTES:
            out.append(current)
            current, current_bytes = [], 0
    if current:
        out.append(current)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("files_tsv")
    args = parser.parse_args()
    files: list[tuple[int, str]] = []
    with open(args.files_tsv, encoding="utf-8") as listing:
        for line in listing:
            size, _piece, _log2, path = line.rstrip("\n").split("\t", 3)
            files.append((int(size), path))
    if args.workers <= 1:
        total = hash_files([path for _, path in files])
    else:
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            total = sum(pool.imap_unordered(hash_files, batches(files), chunksize=1))
    sys.stdout.write(f"files {len(files)} bytes {total}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
