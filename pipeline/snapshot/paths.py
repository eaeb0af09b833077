"""Repo-path rules shared by the format adapters: safe names, containment, display in one-line errors.

Every path the scan publishes is relative, '/'-separated, and each component is valid UTF-8, NFC,
free of control characters and backslashes. Nothing is normalised: a bad name is refused, because the
mirrors serve the bytes on disk. File-system calls use bytes paths so that names are never decoded
with the locale's encoding.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import NoReturn

from pipeline.errors import SnapshotError

_RENAME_HINT = "rename it (valid UTF-8, NFC, no control characters or backslashes) and run again"
_UNSAFE_ASCII = re.compile(rb"[\x00-\x1f\x7f\\]")
_LINE_BREAKING_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def shown(text: str) -> str:
    """`text` as it can appear in a one-line message: itself if printable, else its escaped repr."""
    return text if text.isprintable() else repr(text)


def join_rel(parent: str, name: str) -> str:
    """Repo path of `name` inside the repo directory `parent` ('' is the root)."""
    return f"{parent}/{name}" if parent else name


def decode_name(raw: bytes, parent: str) -> str:
    """Decode one on-disk name component; refuse it unless it is a safe repo-path component.

    `parent` is the (already checked) repo path of the directory holding it, for the message.
    """
    if raw.isascii():
        if _UNSAFE_ASCII.search(raw):
            _refuse(join_rel(parent, repr(raw.decode("ascii"))), "control character or backslash in name")
        return raw.decode("ascii")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        _refuse(join_rel(parent, repr(raw)), "name is not valid UTF-8")
    check_component(name, parent)
    return name


def check_component(name: str, parent: str) -> None:
    """Refuse a decoded name component that is not NFC or holds control characters or backslashes."""
    if "\\" in name or any(unicodedata.category(char) in _LINE_BREAKING_CATEGORIES for char in name):
        _refuse(join_rel(parent, repr(name)), "control character or backslash in name")
    if not unicodedata.is_normalized("NFC", name):
        _refuse(join_rel(parent, repr(name)), "name is not in Unicode NFC form")


def check_repo_path(path: str, where: str) -> str:
    """Validate a repo path taken from metadata (Debian `Filename`); return it unchanged.

    Refuses absolute paths, empty, '.' and '..' components, backslashes, control characters and
    non-NFC names. `where` names the metadata file, for the message.
    """
    if not path or path.startswith("/"):
        raise SnapshotError(
            f"{shown(path)}: absolute or empty path in {where}; the repository metadata is unsafe, "
            "fix or re-sync the mirror"
        )
    parent = ""
    for component in path.split("/"):
        if component in ("", ".", ".."):
            raise SnapshotError(
                f"{shown(path)}: '{component}' path component in {where}; the repository metadata is "
                "unsafe, fix or re-sync the mirror"
            )
        check_component(component, parent)
        parent = join_rel(parent, component)
    return path


def resolve_link_inside(link: bytes, root_real: bytes, rel: str) -> bytes:
    """Real path of the symlink `link` (repo path `rel`), which must exist and stay inside the root."""
    try:
        target = os.path.realpath(link, strict=True)
    except FileNotFoundError:
        raise SnapshotError(
            f"{shown(rel)}: dangling symlink; remove it or fix its target and run again"
        ) from None
    except OSError as exc:
        raise SnapshotError(
            f"{shown(rel)}: symlink cannot be resolved ({exc.strerror or 'symlink loop'}); "
            "remove the loop and run again"
        ) from None
    if not is_inside(target, root_real):
        raise SnapshotError(
            f"{shown(rel)}: symlink points outside the snapshot ({os.fsdecode(target)!r}); "
            "replace it with the file or a link inside the snapshot"
        )
    return target


def is_inside(path: bytes, root_real: bytes) -> bool:
    """True when the real path `path` is `root_real` or below it."""
    return os.path.commonpath([path, root_real]) == root_real


def as_path(raw: bytes) -> Path:
    """A Path for a bytes file-system path (lossless through the file-system encoding)."""
    return Path(os.fsdecode(raw))


def _refuse(what: str, problem: str) -> NoReturn:
    raise SnapshotError(f"{what}: {problem}; {_RENAME_HINT}")
