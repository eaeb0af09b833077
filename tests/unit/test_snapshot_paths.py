"""pipeline.snapshot.paths: the ASCII fast path refuses exactly the control characters and backslash."""

from __future__ import annotations

import re

import pytest

from pipeline.errors import SnapshotError
from pipeline.snapshot.paths import component_problem, decode_name, is_plain_ascii

_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")  # the rule, written out once more


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
