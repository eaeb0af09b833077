"""pipeline.snapshot.stanzas: the same field values as python-debian's pure-Python parser, read a chunk at a time.

The reference is python-debian's `Deb822.iter_paragraphs(lines, use_apt_pkg=False)` without a `fields`
filter (field names case-insensitive, as in Debian policy and apt); the scanner used it with the filter,
which gives the same values whenever the names are in their usual case.
"""

from __future__ import annotations

import io
import random

import pytest
from debian import deb822

from pipeline.errors import SnapshotError
from pipeline.snapshot import stanzas
from pipeline.snapshot.stanzas import UNICODE_SPACES, read_stanzas

FIELDS = ("Package", "Version", "Architecture", "Description", "Filename", "Size", "SHA256")
BIG = 1 << 20


def parsed(text: str | bytes, *, line: int = BIG, stanza: int = BIG) -> list[list[str]]:
    data = text.encode() if isinstance(text, str) else text
    return list(read_stanzas(io.BytesIO(data), "P", FIELDS, max_line_bytes=line, max_stanza_bytes=stanza))


def reference(text: str, fields: tuple[str, ...] = FIELDS) -> list[list[str]]:
    paragraphs = deb822.Deb822.iter_paragraphs(text.split("\n"), use_apt_pkg=False)
    return [[str(paragraph.get(name) or "") for name in fields] for paragraph in paragraphs]


def filtered_reference(text: str) -> list[list[str]]:
    """Exactly what the scanner called before (a case-sensitive `fields` filter)."""
    paragraphs = deb822.Deb822.iter_paragraphs(text.split("\n"), fields=list(FIELDS), use_apt_pkg=False)
    return [[str(paragraph.get(name) or "") for name in FIELDS] for paragraph in paragraphs if paragraph]


SHA = "ab" * 32
PLAIN = (
    f"Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nMaintainer: Santiago Vila <sanvila@debian.org>\n"
    f"Description: example package based on GNU hello\n The GNU hello program produces a familiar,\n .\n"
    f" friendly greeting.\nTag: devel::lang:c, implemented-in::c,\n role::program\n"
    f"Filename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 53000\nSHA256: {SHA}\n"
)

TRICKY = {
    "plain": PLAIN + "\n" + PLAIN.replace("hello", "hi"),
    "no final newline": PLAIN + "\n" + PLAIN.rstrip("\n"),
    "crlf": (PLAIN + "\n" + PLAIN).replace("\n", "\r\n"),
    "crlf in one stanza only": PLAIN.replace("\n", "\r\n") + "\n" + PLAIN,
    "names in other cases": "package: a\nVERSION: 1\nsha256: " + SHA + "\nFiLeNaMe: pool/a.deb\nsize: 3\n",
    "missing fields": "Package: a\nVersion: 1\n\nFilename: pool/b.deb\n",
    "duplicate fields": "Package: a\nSize: 1\nPackage: b\nsize: 2\n\nPackage: c\n",
    "tabs": "Package:\ta\t\nSize\t:\t9\nDescription:\tsyn\n\tsecond line\n \tthird\n",
    "space before the colon": "Package : a\nSize  :  5\n",
    "value only on the continuation line": "Package: a\nSize:\n 123\nFilename:\n pool/x.deb\n",
    "empty values": "Package:\nSize:   \nFilename: f\n",
    "many blank lines": "\n\n\nPackage: a\n\n\n\nPackage: b\n\n\n",
    "blank lines of spaces, tabs, \\r, \\v, \\f": (
        "Package: a\n  \nPackage: b\n\t\nPackage: c\n\r\nPackage: d\n\x0b\nPackage: e\n\x0c\nPackage: f\n"
    ),
    "comments": "#top\nPackage: a\n#Size: 9\nSize: 1\nDescription: d\n#inside\n more\n\n#between\n\nPackage: b\n",
    "ignored line inside a field": "Package: a\nDescription: syn\ngarbage line\n more\nFoo bar: x\n again\n",
    "unicode whitespace": (
        "Package:\u3000a\u2003\nSize \xa0: 1\nVersion\xa0: 2\nDescription: s\n \xa0\n x\u2028 y\n\u2028\n \u3000\n"
    ),
    "unicode whitespace only line": "Package: a\n\xa0\nDescription: d\n\u3000\n more\n",
    "line starting with unicode whitespace": "Package: a\nDescription: d\n\xa0continued\n\u3000again\n\xa0Size: 7\n",
    "non-ascii and nul": "Package: caf\u00e9\nDescription: \u65e5\u672c\x00 text\n \u00fc\nSize: 1\n",
    "colons everywhere": "Package: a: b\nDescription:: x\n :\nFilename:pool/a:b.deb\n",
    "key-like continuation": "Package: a\nDescription: d\n Size: 99\n Package: z\n",
    "long lines": "Package: " + "a" * 70000 + "\nDescription: " + "word " * 20000 + "\n " + "x" * 50000 + "\n",
    "dashes": "Package: a\n-----not armor\n--x: y\nSize: 1\n",
}


@pytest.mark.parametrize("text", TRICKY.values(), ids=TRICKY.keys())
@pytest.mark.parametrize("chunk", [1, 3, 64, BIG])
def test_tricky_stanzas_as_python_debian_reads_them(text: str, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.snapshot.bounded.CHUNK_BYTES", chunk)

    assert parsed(text) == reference(text)


@pytest.mark.parametrize(
    "name", ["plain", "no final newline", "crlf", "missing fields", "tabs", "comments", "unicode whitespace"]
)
def test_usual_names_give_what_the_scanner_read_before(name: str) -> None:
    assert parsed(TRICKY[name]) == filtered_reference(TRICKY[name])


def test_names_in_other_cases_are_read_where_the_filter_dropped_them() -> None:
    text = TRICKY["names in other cases"]

    assert filtered_reference(text) == []  # no name in its usual case: an empty stanza, which ended the file
    assert parsed(text) == [["a", "1", "", "", "pool/a.deb", "3", SHA]]


def test_field_names_are_ascii_case_insensitive_only() -> None:
    assert parsed("Pac\u212aage: kelvin\nPackage: a\n")[0][0] == "a"  # U+212A lowercases to "k"
    assert parsed("Pac\u212aage: kelvin\n")[0][0] == ""


def test_a_stanza_without_requested_fields_is_yielded_not_the_end() -> None:
    text = "Package: a\n\nMaintainer: x\n\nPackage: b\n"

    assert filtered_reference(text) == [["a", "", "", "", "", "", ""]]  # python-debian stopped there
    assert [values[0] for values in parsed(text)] == ["a", "", "b"]
    assert [values[0] for values in parsed("Package: a\n\ngarbage\n\nPackage: b\n")] == ["a", "", "b"]


@pytest.mark.parametrize(
    "line",
    ["-----BEGIN PGP SIGNED MESSAGE-----", "-----BEGIN PGP SIGNATURE-----", "-----END PGP SIGNATURE----- \r"],
)
def test_openpgp_armor_is_refused(line: str) -> None:
    with pytest.raises(SnapshotError) as caught:
        parsed(f"Package: a\n\n{line}\nHash: SHA256\n\nPackage: b\n")

    assert str(caught.value).startswith("P: an OpenPGP armor line ('-----")
    assert str(caught.value).endswith("in a Packages file, which is never signed inline; re-sync the mirror")


def test_lines_and_stanzas_beyond_the_limits_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.snapshot.bounded.CHUNK_BYTES", 100)
    with pytest.raises(SnapshotError, match=r"^P: a line longer than 1000 bytes \(byte 12\); it is damaged"):
        parsed("Package: a\n\nDescription: " + "x" * 2000, line=1000)
    with pytest.raises(SnapshotError, match=r"^P: a stanza longer than 3000 bytes \(byte 12\); it is damaged"):
        parsed("Package: a\n\nDescription: x\n" + " more\n" * 1000, line=1000, stanza=3000)
    assert len(parsed("Package: a\n\nDescription: " + "x" * 900 + "\n" + ("Package: b\n\n" * 300), line=1000)) == 301


@pytest.mark.parametrize("chunk", [1, 5, BIG])
def test_invalid_utf8_is_refused_with_its_offset(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.snapshot.bounded.CHUNK_BYTES", chunk)
    data = b"Package: caf\xc3\xa9\n\nPackage: x\n\nPackage: b\xff\n"
    bad = data.index(0xFF)

    with pytest.raises(SnapshotError, match=rf"^P: not valid UTF-8 \(byte {bad}\); re-sync the mirror$"):
        parsed(data)


def test_a_line_break_python_debian_refused_inside_a_value_is_text() -> None:
    text = "Package: a\nDescription: d\n x\u2028y\n\x1cz\n"
    with pytest.raises(ValueError, match="each line must start with whitespace"):
        reference(text)  # it splits values with str.splitlines() to check them

    assert parsed(text)[0][3] == "d\n x\u2028y\n\x1cz"


def test_unicode_spaces_are_all_of_str_isspace_beyond_ascii() -> None:
    every = {chr(code) for code in range(0x110000) if chr(code).isspace()}

    assert set(UNICODE_SPACES) == every - set(" \t\n\r\x0b\x0c")


# --- random Packages-like text: the fast path and the line-by-line path against python-debian ----------------

_VALUES = ["a", " spaced  value ", "caf\u00e9", "x\u00a0y", "\u3000lead", "trail\u2003", "", "a: b", "\t", "p/q.deb"]
_CONTINUATIONS = [" more", "\tmore", " .", " \u00a0", " \u3000x", "  two", " \u2028", " Size: 1"]
_OTHER = ["Maintainer: M <m@example.org>", "Foo-Bar: baz", "Depends: libc6 (>= 2.36)", "X:"]
_IGNORED = ["garbage", "a b: c", "\u00a0foo", "\u00a0", "#Package: evil", "#", "--x", "-----dashes"]
_GAPS = ["", " ", "\t", " \u00a0", "  ", "\u00a0"]
_SEPARATORS = ["", "", "", " ", "\t", "\r", "\x0b", " \r"]


def random_text(rng: random.Random, *, odd: bool) -> str:
    lines: list[str] = []
    for number in range(rng.randint(1, 6)):
        if number:
            lines += [rng.choice(_SEPARATORS if odd else [""]) for _ in range(rng.choice([1, 1, 1, 2]))]
        lines.append(f"Package: p{number}")  # every paragraph has a field (python-debian stops at one without)
        for _ in range(rng.randint(0, 12)):
            kind = rng.random()
            if kind < 0.45:
                name = rng.choice(FIELDS + ("Sha256", "FILENAME", "size"))
                value = rng.choice(_VALUES) if odd else rng.choice(["v", " v ", "caf\u00e9 w"])
                lines.append(f"{name}{rng.choice(_GAPS if odd else ['', ' '])}:{rng.choice(['', ' '])}{value}")
            elif kind < 0.75:
                lines.append(rng.choice(_CONTINUATIONS if odd else [" more", "\tmore", " ."]))
            elif kind < 0.9:
                lines.append(rng.choice(_OTHER))
            elif odd:
                lines.append(rng.choice(_IGNORED))
    if odd:
        lines = [line + "\r" if rng.random() < 0.05 else line for line in lines]
    return "\n".join(lines) + rng.choice(["", "\n", "\n\n"])


@pytest.mark.parametrize("odd", [False, True], ids=["usual", "odd"])
def test_random_text_as_python_debian_reads_it(odd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20261204 + odd)
    compared = 0
    for _ in range(1500):
        text = random_text(rng, odd=odd)
        monkeypatch.setattr("pipeline.snapshot.bounded.CHUNK_BYTES", rng.choice([1, 2, 16, 300, BIG]))
        try:
            expected = reference(text)
        except ValueError:  # a value python-debian's own check refuses (see above)
            continue
        compared += 1

        assert parsed(text) == expected, text
    assert compared > 1000


def test_fast_path_equals_the_line_by_line_path_whenever_it_applies() -> None:
    parser = stanzas._parser(FIELDS)
    rng = random.Random(7)
    fast = 0
    for _ in range(3000):
        core = "\n" + random_text(rng, odd=rng.random() < 0.5).strip("\n")
        if any(char in core for char in stanzas._FAST_BLOCKERS):
            continue  # `parse` never takes the fast path for these
        result = parser._parse_fast(core)
        if result is not None:
            fast += 1
            assert result == parser._parse_lines(core, "P"), core
    assert fast > 800
