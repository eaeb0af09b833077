"""A tree's mark: one digest of every name and stat under a snapshot root.

With it a run tells, in one walk and without reading or parsing anything, that the tree is exactly the
one an earlier scan saw (`pipeline.run`'s unchanged-snapshot path). It covers every entry under the root,
dot files too, without following symlinks:
- a directory by its name (its entries are walked);
- a symlink by its name, target text and ctime;
- any other entry by its name, mode, device, inode, size, mtime and ctime (ns).

ctime cannot be set from user space, so a file rewritten in place changes the mark even with its size
and mtime put back. The mark is stricter than the state cache's own test (device, inode, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from operator import attrgetter
from pathlib import Path

MARK_RECIPE = "1"  # bump when what the mark covers changes: an older state's mark then matches nothing

_by_name = attrgetter("name")


def tree_mark(root_real: Path, context: str) -> str | None:
    """The mark of the tree under `root_real`, with `context` (what else the scan's result depends on)
    folded in; None when some directory cannot be listed or some entry cannot be stat'ed (the scan then
    says what is wrong)."""
    root = os.fsencode(root_real)
    digest = hashlib.blake2b(f"{MARK_RECIPE}\n{context}\n".encode("utf-8", "surrogateescape"), digest_size=32)
    stack = [b""]
    try:
        while stack:
            rel = stack.pop()
            with os.scandir(root + rel) as listing:
                entries = sorted(listing, key=_by_name)
            # NUL-separated tokens (no name or link target holds a NUL): a kind token, then that kind's fields;
            # an empty token ends the directory
            tokens = [rel]
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel + b"/" + entry.name)
                    tokens += (b"d", entry.name)
                    continue
                st = entry.stat(follow_symlinks=False)
                if entry.is_symlink():
                    tokens += (b"l", entry.name, os.readlink(entry.path), b"%d" % st.st_ctime_ns)
                else:
                    facts = (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    tokens += (b"f", entry.name, b"%o %d %d %d %d %d" % facts)
            digest.update(b"\0".join(tokens) + b"\0\0")
    except OSError:
        return None
    return digest.hexdigest()
