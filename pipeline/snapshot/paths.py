"""Repo-path rules shared by the format adapters: safe names, containment, display in one-line errors.

Every path the scan publishes is relative, '/'-separated, and each component is valid UTF-8, NFC,
free of control characters and backslashes, of code points XML 1.0 forbids and of Unicode
noncharacters (a `.meta4` names the file: it must stay well-formed XML), and of invisible and
bidirectional formatting characters (they let a listing show one name for another file). Nothing is
normalised: a bad name is refused, because the mirrors serve the bytes on disk. File-system calls use
bytes paths so that names are never decoded with the locale's encoding. `component_problem` is the one
place these rules live: Debian `Filename`s, Arch `%FILENAME%`s and on-disk names all go through it.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import NoReturn, Protocol

from pipeline.errors import SnapshotError
from pipeline.model import FileEntry, SignatureRef

_RENAME_HINT = (
    "rename it (valid UTF-8, NFC, no control, invisible or bidi formatting characters, noncharacters "
    "or backslashes) and run again"
)
_CONTROL_OR_BACKSLASH = "control character or backslash in name"
_LINE_BREAKING_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
# Non-ASCII code points outside XML 1.0's Char production (#x9 | #xA | #xD | [#x20-#xD7FF] |
# [#xE000-#xFFFD] | [#x10000-#x10FFFF]: the surrogates, U+FFFE, U+FFFF; the C0 controls are Cc) and
# the other Unicode noncharacters (U+FDD0-U+FDEF, U+xxFFFE and U+xxFFFF in every plane).
_NOT_XML_OR_NONCHARACTER = re.compile(
    "[\\ud800-\\udfff\\ufdd0-\\ufdef" + "".join(f"\\U{plane:04x}fffe-\\U{plane:04x}ffff" for plane in range(0x11)) + "]"
)
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt): drawn as nothing, so "a\u200b.deb"
# looks like "a.deb". Format characters (category Cf: bidi controls such as U+202E, which reorder what
# follows, zero-width joiners, U+FEFF, tags) are refused by category as well, whatever this list misses.
_DEFAULT_IGNORABLE = re.compile(
    "[\\u00ad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f\\u200b-\\u200f\\u202a-\\u202e"
    "\\u2060-\\u206f\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8"
    "\\U0001bca0-\\U0001bca3\\U0001d173-\\U0001d17a\\U000e0000-\\U000e0fff]"
)


def shown(text: str) -> str:
    """`text` as it can appear in a one-line message: itself if printable, else its escaped repr."""
    return text if text.isprintable() else repr(text)


def escaped(text: str) -> str:
    """`text` itself if it is printable ASCII, else its `ascii()` form (shows NFD and odd characters)."""
    return text if text.isascii() and text.isprintable() else ascii(text)


def join_rel(parent: str, name: str) -> str:
    """Repo path of `name` inside the repo directory `parent` ('' is the root)."""
    return f"{parent}/{name}" if parent else name


def decode_name(raw: bytes, parent: str) -> str:
    """Decode one on-disk name component; refuse it unless it is a safe repo-path component.

    `parent` is the (already checked) repo path of the directory holding it, for the message.
    """
    if raw.isascii():
        name = raw.decode("ascii")
        if not is_plain_ascii(name):
            _refuse(join_rel(parent, ascii(name)), _CONTROL_OR_BACKSLASH)
        return name
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        _refuse(join_rel(parent, repr(raw)), "name is not valid UTF-8")
    check_component(name, parent)
    return name


def check_component(name: str, parent: str) -> None:
    """Refuse an on-disk name component that is not NFC or holds control characters or backslashes."""
    problem = component_problem(name)
    if problem is not None:
        _refuse(join_rel(parent, ascii(name)), problem)


def component_problem(name: str) -> str | None:
    """Why a decoded name component is not a safe repo-path component, or None.

    Refused: control characters (Cc, and the line/paragraph separators) and backslashes; code points
    XML 1.0 forbids and noncharacters; invisible and bidi formatting characters (Cf and
    Default_Ignorable_Code_Point); names not in NFC.
    """
    if name.isascii():  # fast path: ASCII is always NFC, and printable ASCII is valid XML and visible
        return None if is_plain_ascii(name) else _CONTROL_OR_BACKSLASH
    categories = [unicodedata.category(char) for char in name]
    if "\\" in name or not _LINE_BREAKING_CATEGORIES.isdisjoint(categories):
        return _CONTROL_OR_BACKSLASH
    forbidden = _NOT_XML_OR_NONCHARACTER.search(name)
    if forbidden is not None:
        return f"code point {_code_point(forbidden.group())} not allowed in XML 1.0 (or a noncharacter) in name"
    hidden = next(
        (
            char
            for char, category in zip(name, categories, strict=True)
            if category == "Cf" or _DEFAULT_IGNORABLE.match(char)
        ),
        None,
    )
    if hidden is not None:
        return f"invisible or bidi formatting character {_code_point(hidden)} in name"
    if not unicodedata.is_normalized("NFC", name):
        return "name is not in Unicode NFC form"
    return None


def _code_point(char: str) -> str:
    return f"U+{ord(char):04X}"


def is_plain_ascii(name: str) -> bool:
    """True when `name` is ASCII without control characters (0x00-0x1f, 0x7f) or backslashes.

    For ASCII text `str.isprintable` is exactly "no control character": three C-level tests, no regex.
    """
    return name.isascii() and name.isprintable() and "\\" not in name


def check_repo_path(path: str, where: str) -> str:
    """Validate a repo path taken from metadata (Debian `Filename`); return it unchanged.

    Refuses absolute paths, empty, '.' and '..' components, backslashes, control characters and
    non-NFC names. `where` names the metadata file, for the message.
    """
    problem = "absolute or empty path" if not path or path.startswith("/") else None
    for component in path.split("/"):
        if problem is None and component in ("", ".", ".."):
            problem = f"{component!r} path component"
        problem = problem or component_problem(component)
    if problem is not None:
        raise SnapshotError(
            f"{escaped(path)}: {problem} in {where}; the repository metadata is unsafe, fix or re-sync the mirror"
        )
    return path


def resolve_link_inside(link: bytes, root_real: bytes, rel: str) -> bytes:
    """Real path of the symlink `link` (repo path `rel`), which must exist and stay inside the root."""
    try:
        target = os.path.realpath(link, strict=True)
    except FileNotFoundError:
        raise SnapshotError(f"{shown(rel)}: dangling symlink; remove it or fix its target and run again") from None
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


def as_source(raw: bytes) -> str:
    """A FileEntry's `source` for a bytes file-system path (lossless through the file-system encoding; an
    ASCII path, nearly every one, decodes the same without `os.fsdecode`'s checks)."""
    return raw.decode("ascii") if raw.isascii() else os.fsdecode(raw)


def _refuse(what: str, problem: str) -> NoReturn:
    raise SnapshotError(f"{what}: {problem}; {_RENAME_HINT}")


class Listed(Protocol):
    """A file as the repository's own metadata lists it (a Debian stanza, an Arch `desc` entry)."""

    @property
    def path(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def version(self) -> str | None: ...
    @property
    def arch(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...


class StatFacts(Protocol):
    """What a file's entry takes of its stat: an `os.stat_result`, or what a walk saw (`seen.SeenStat`)."""

    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_dev(self) -> int: ...
    @property
    def st_ino(self) -> int: ...


def listed_entry(
    item: Listed,
    source: str,
    status: StatFacts,
    signature: SignatureRef | None = None,
    shards: tuple[str, ...] = (),
) -> FileEntry:
    """The FileEntry of a listed file as it was found on disk (its stat key, the metadata's facts)."""
    return FileEntry(
        path=item.path,
        source=source,
        size=status.st_size,
        mtime_ns=status.st_mtime_ns,
        dev=status.st_dev,
        inode=status.st_ino,
        expected_sha256=item.sha256,
        name=item.name,
        version=item.version,
        arch=item.arch,
        description=item.description,
        signature=signature,
        shards=shards,
    )
