"""Suite-wide hygiene: no test reads or writes the real user's cache or settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The state cache defaults to $XDG_CACHE_HOME/mirrorseed/<repo>.sqlite: point it at a fresh dir per test."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for name in [n for n in os.environ if n.startswith("MIRRORSEED_")]:
        monkeypatch.delenv(name)
    # The recipes multicast on the LAN (LPD) by default: no test may send traffic off loopback, so every
    # recipe a test runs has it off, except the LPD test, which runs in network namespaces of its own.
    monkeypatch.setenv("MIRRORSEED_LPD", "false")
    yield cache
