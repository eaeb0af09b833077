"""pipeline.snapshot.paths: the ASCII fast path refuses exactly the control characters and backslash; non-ASCII
names are refused for code points XML 1.0 forbids, noncharacters, invisible and bidi formatting characters."""

from __future__ import annotations

import re
import unicodedata

import pytest

from pipeline.errors import SnapshotError
from pipeline.snapshot.paths import check_repo_path, component_problem, decode_name, is_plain_ascii

_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")  # the rule, written out once more
_HINT = (
    "rename it (valid UTF-8, NFC, no control, invisible or bidi formatting characters, noncharacters or backslashes) "
    "and run again"
)


@pytest.mark.parametrize("code", range(128))
def test_ascii_fast_path_agrees_with_the_rule_for_every_character(code: int) -> None:
    name = f"a{chr(code)}b"
    bad = _CONTROL_OR_BACKSLASH.search(name) is not None

    assert is_plain_ascii(name) is not bad
    assert (component_problem(name) is not None) is bad
    if bad:
        with pytest.raises(SnapshotError, match=r"^pool/'a.*b': control character or backslash in name; rename"):
            decode_name(name.encode("ascii"), "pool")
    else:
        assert decode_name(name.encode("ascii"), "pool") == name


def test_non_ascii_is_never_plain_and_takes_the_full_checks() -> None:
    assert not is_plain_ascii("caf\u00e9")
    assert decode_name("caf\u00e9".encode(), "") == "caf\u00e9"
    with pytest.raises(SnapshotError, match="not in Unicode NFC form"):
        decode_name("cafe\u0301".encode(), "")
    with pytest.raises(SnapshotError, match="not valid UTF-8"):
        decode_name(b"caf\xe9", "")


# --- names that break XML or hide what they are (issue 10) ----------------------------------------

_XML_FORBIDDEN = [
    "\ufffe",  # the case found: valid UTF-8, NFC, and not well-formed in a .meta4
    "\uffff",
    "\ud800",  # a surrogate (cannot come from UTF-8, but never passes either)
    "\udfff",
]
_NONCHARACTERS = ["\ufdd0", "\ufdef", "\U0001fffe", "\U0001ffff", "\U0008fffe", "\U0010fffe", "\U0010ffff"]
_BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]
_BIDI.append("\u061c")
_INVISIBLE = [
    "\u200b",  # zero-width space
    "\u200c",  # zero-width non-joiner
    "\u200d",  # zero-width joiner
    "\u2060",  # word joiner
    "\ufeff",  # BOM / zero-width no-break space
    "\u180e",  # Mongolian vowel separator
    "\u00ad",  # soft hyphen (Cf)
    "\u2064",  # invisible plus (Cf)
    "\U000e0041",  # tag latin capital A (Cf)
    "\u3164",  # Hangul filler: default-ignorable, though a letter (Lo)
    "\ufe0f",  # variation selector 16: default-ignorable (Mn)
    "\u034f",  # combining grapheme joiner: default-ignorable (Mn)
    "\u0600",  # Arabic number sign: category Cf, not default-ignorable
]


@pytest.mark.parametrize("char", _XML_FORBIDDEN + _NONCHARACTERS, ids=ascii)
def test_code_points_xml_forbids_and_noncharacters_are_refused(char: str) -> None:
    name = f"a{char}.deb"
    problem = f"code point U+{ord(char):04X} not allowed in XML 1.0 (or a noncharacter) in name"

    assert component_problem(name) == problem
    assert component_problem(char) == problem
    if not 0xD800 <= ord(char) <= 0xDFFF:  # a surrogate has no UTF-8 form
        with pytest.raises(SnapshotError) as caught:
            decode_name(name.encode("utf-8"), "pool")
        assert str(caught.value) == f"pool/{ascii(name)}: {problem}; {_HINT}"


@pytest.mark.parametrize("char", _BIDI + _INVISIBLE, ids=ascii)
def test_bidi_controls_and_invisible_characters_are_refused(char: str) -> None:
    name = f"caf\u00e9{char}.deb"
    problem = f"invisible or bidi formatting character U+{ord(char):04X} in name"

    assert component_problem(name) == problem
    with pytest.raises(SnapshotError) as caught:
        decode_name(name.encode("utf-8"), "pool/main")
    assert str(caught.value) == f"pool/main/{ascii(name)}: {problem}; {_HINT}"
    assert "\n" not in str(caught.value) and str(caught.value).isascii()  # the message shows no bidi itself


def test_every_format_character_is_refused() -> None:
    """Whatever the Unicode version: category Cf is refused even where the default-ignorable list misses it."""
    for code in range(0x80, 0x110000):
        char = chr(code)
        if unicodedata.category(char) == "Cf":
            assert component_problem(f"x{char}") is not None, f"U+{code:04X}"


@pytest.mark.parametrize(
    "name",
    [
        "caf\u00e9.deb",
        "\u00fcber-1.0.tar.xz",
        "\u2603 snow \u00a0nbsp.deb",  # a no-break space is visible (as a space): allowed
        "\u05d0\u05d1\u05d2.deb",  # Hebrew letters (right-to-left) without formatting characters
        "\U0001f600.deb",  # an emoji outside the BMP, valid XML
        "\ue000-private.deb",  # private use is valid XML
        "\ufffd.deb",  # U+FFFD, the last BMP character XML allows
        "\U0010fffd.deb",
    ],
    ids=ascii,
)
def test_visible_non_ascii_nfc_names_are_accepted(name: str) -> None:
    assert component_problem(name) is None
    assert decode_name(name.encode("utf-8"), "") == name


def test_check_repo_path_names_the_escaped_path_and_the_metadata_file() -> None:
    with pytest.raises(SnapshotError) as caught:
        check_repo_path("pool/main/h/hello/hello\ufffe_1_amd64.deb", "dists/x/main/binary-amd64/Packages")

    assert str(caught.value) == (
        "'pool/main/h/hello/hello\\ufffe_1_amd64.deb': code point U+FFFE not allowed in XML 1.0 (or a noncharacter) "
        "in name in dists/x/main/binary-amd64/Packages; the repository metadata is unsafe, fix or re-sync the mirror"
    )
