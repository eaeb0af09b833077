"""pipeline.bencode: the writers' bytes and the strict reader."""

from __future__ import annotations

import hashlib

import pytest

from pipeline import bencode


def test_writers() -> None:
    assert bencode.string("ab") == b"2:ab"
    assert bencode.string("é") == b"2:\xc3\xa9"
    assert bencode.string(b"\x00\x01") == b"2:\x00\x01"
    assert bencode.string_list(["a", "bc"]) == b"l1:a2:bce"
    assert bencode.integer(-3) == b"i-3e"


def test_decode_keeps_the_raw_info_bytes() -> None:
    info = b"d6:lengthi5e4:name1:xe"
    data = b"d8:announce3:url4:info" + info + b"8:url-listl1:aee"
    decoded = bencode.decode_dict(data)
    assert decoded.info == info
    assert decoded.value[b"info"] == {b"length": 5, b"name": b"x"}
    assert decoded.value[b"url-list"] == [b"a"]
    assert hashlib.sha1(decoded.info).hexdigest() == hashlib.sha1(info).hexdigest()
    assert bencode.decode_dict(b"d1:ai0ee").info is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"d1:ai01ee", "malformed integer"),
        (b"d1:ai-0ee", "malformed integer"),
        (b"d1:aie", "malformed integer"),
        (b"d1:a01:xe", "malformed string length"),
        (b"d1:bi1e1:ai2ee", "not sorted or repeated"),
        (b"d1:ai1e1:ai2ee", "not sorted or repeated"),
        (b"di1ei2ee", "not a string"),
        (b"d1:ai1eeX", "unexpected data"),
        (b"d1:a5:abc", "truncated"),
        (b"d1:ai1e", "truncated"),
        (b"li1ee", "not a bencoded dictionary"),
        (b"d1:a" + b"l" * 40 + b"e" * 40 + b"e", "nested too deeply"),
        (b"d1:ax1:be", "unexpected byte"),
    ],
)
def test_decode_refuses_what_is_not_canonical(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        bencode.decode_dict(data)


def test_encode_round_trips_what_decode_reads() -> None:
    data = b"d8:announce3:url4:infod6:lengthi5e4:name1:xe5:nodesll9:127.0.0.1i6881eeee"
    assert bencode.encode(bencode.decode_dict(data).value) == data
    assert bencode.encode({b"b": -1, b"a": [b"x", 2]}) == b"d1:al1:xi2ee1:bi-1ee"
    with pytest.raises(ValueError, match="cannot bencode str"):
        bencode.encode("text")
