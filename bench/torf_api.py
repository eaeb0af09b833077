"""torf's API in one process, as a peer for `invoke bench`: one torrent per file plus a separate SHA-256 pass.

    python bench/torf_api.py FILES_TSV OUT_DIR

FILES_TSV is the bench corpus list (`size<TAB>piece size<TAB>log2<TAB>absolute path` per line). For each
file: `torf.Torrent(path=..., created_by=None, piece_size=<mirrorseed's piece size>)`, `generate()`, write
`OUT_DIR/<n>.torrent`; then read the file again for its SHA-256 (torf has no hook to compute it in the same
read). `generate(threads=1)` for files under 16 MiB and torf's default threads above: on many small files
torf's per-call thread pool makes more threads slower (see ../shared/notes/performance.md), so this is
torf's faster setting for this corpus, not its default.
"""

from __future__ import annotations

import hashlib
import os
import sys

import torf

SMALL_FILE = 16 * 1024 * 1024
BLOCK = 1024 * 1024


def main() -> int:
    if len(sys.argv) != 3:
        sys.stderr.write("usage: torf_api.py FILES_TSV OUT_DIR\n")
        return 2
    files_tsv, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    count = 0
    with open(files_tsv, encoding="utf-8") as listing:
        for line in listing:
            size, piece, _log2, path = line.rstrip("\n").split("\t", 3)
            torrent = torf.Torrent(path=path, created_by=None, piece_size=int(piece))
            if int(size) < SMALL_FILE:
                torrent.generate(threads=1)
            else:
                torrent.generate()
            count += 1
            torrent.write(os.path.join(out_dir, f"{count}.torrent"))
            sha256 = hashlib.sha256()
            with open(path, "rb", buffering=0) as raw:
                while n := raw.readinto(buffer):
                    sha256.update(view[:n])
            sha256.hexdigest()
    sys.stdout.write(f"files {count}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
