"""pipeline.jsondoc: the one strict JSON reader, and the documents read through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, StorageError
from pipeline.jsondoc import StrictJSONError, loads_strict
from pipeline.objects import make_artifact
from pipeline.run import _published_mirror_summary
from pipeline.storage.local import LocalStorage
from pipeline.verify import _read_state

NOT_STRICT = {
    "nan": ('{"a": NaN}', "NaN is not a JSON number"),
    "infinity": ('{"a": [1, Infinity]}', "Infinity is not a JSON number"),
    "minus-infinity": ("-Infinity", "-Infinity is not a JSON number"),
    "repeated-key": ('{"a": 1, "b": 2, "a": 1}', "duplicate key 'a'"),
    "nested-repeated-key": ('[{"x": {"k": 1, "k": 2}}]', "duplicate key 'k'"),
    "lone-high-surrogate": ('{"a": "x\\ud800"}', "lone surrogate U\\+D800"),
    "lone-low-surrogate-key": ('{"\\udc00": 1}', "lone surrogate U\\+DC00"),
    "lone-surrogate-top": ('"\\ud83d"', "lone surrogate U\\+D83D"),
    "lone-surrogate-nested-list": ('{"a": [["\\udfff"]]}', "lone surrogate U\\+DFFF"),
}


@pytest.mark.parametrize(("text", "message"), NOT_STRICT.values(), ids=NOT_STRICT.keys())
def test_loads_strict_refuses_what_json_loads_accepts(text: str, message: str) -> None:
    json.loads(text)  # Python's reader takes it
    for data in (text, text.encode()):
        with pytest.raises(StrictJSONError, match=f"^doc.json: not strict JSON: {message}") as caught:
            loads_strict(data, what="doc.json")
        assert isinstance(caught.value, StorageError) and isinstance(caught.value, ValueError)
        assert "\n" not in str(caught.value)


def test_loads_strict_reads_standard_json() -> None:
    text = '{"a": [1, 2.5e3, -0, true, null, "\\ud83d\\ude00 é \\\\ud800"], "b": {"c": {}}}'
    assert loads_strict(text, what="x") == json.loads(text)
    assert loads_strict(text.encode(), what="x")["a"][5] == "\U0001f600 é \\ud800"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff{}", "not UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"", "not valid"),
    ],
)
def test_loads_strict_names_the_document_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(StrictJSONError, match=f"^state.json: {message}") as caught:
        loads_strict(data, what="state.json")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        '{"public_url": "http://x", "sequence": 3, "sequence": 9}',
        '{"public_url": "http://x", "sequence": 3, "repo": NaN}',
    ],
)
def test_verify_state_file_must_be_strict_json(text: str, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(text)
    with pytest.raises(ConfigError, match="not a verify state file"):
        _read_state(state, "http://x")


def test_published_mirrors_json_must_be_strict_json(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    row = '{"url": "http://m", "status": "ok", "webseed": true}'
    storage.put_many([make_artifact("mirrors/mirrors.json", f'{{"mirrors": [{row}]}}'.encode())])
    assert _published_mirror_summary(storage) == [("http://m", "ok", True)]
    twice = '{"url": "http://m", "status": "down", "status": "ok", "webseed": true}'
    storage.put_many([make_artifact("mirrors/mirrors.json", f'{{"mirrors": [{twice}]}}'.encode())])
    assert _published_mirror_summary(storage) == [("unreadable", "", False)]
