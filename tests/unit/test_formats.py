"""pipeline.snapshot.formats: the format adapter seam (debian, arch and flat behind one protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.snapshot as snapshot
from pipeline.errors import ConfigError, SnapshotError
from pipeline.model import FileEntry
from pipeline.snapshot import FORMAT_NAMES, ScanSpec, adapters, format_info, scan_snapshot
from pipeline.snapshot.formats import FormatInfo, Scanned


def test_every_format_is_registered_with_its_labels() -> None:
    assert FORMAT_NAMES == ("auto", "debian", "arch", "flat")
    assert [a.info.name for a in adapters()] == ["debian", "arch", "flat"]
    assert format_info("arch").suites_label == "Repositories" and format_info("arch").client_list == "mirrorlist"
    assert format_info("debian").client_list == "sources.list" and format_info("debian").client_list_needs_suites
    assert format_info("flat").client_list is None and not format_info("flat").detached_signatures
    with pytest.raises(ConfigError, match="unknown snapshot format"):
        format_info("rpm")


def test_auto_detection_asks_each_adapter_in_order(tmp_path: Path) -> None:
    debian = tmp_path / "debian" / "dists" / "stable" / "main" / "binary-amd64"
    debian.mkdir(parents=True)
    (debian / "Packages").write_text("")
    arch = tmp_path / "arch" / "core" / "os" / "x86_64"
    arch.mkdir(parents=True)
    (arch / "core.db").write_bytes(b"")
    assert [a.info.name for a in adapters() if a.detect(tmp_path / "debian")] == ["debian"]
    assert [a.info.name for a in adapters() if a.detect(tmp_path / "arch")] == ["arch"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(SnapshotError, match="--format flat"):
        scan_snapshot(ScanSpec(root=tmp_path / "plain"))


class ToyFormat:
    """A format added as its own module would add it: an adapter and one registration line."""

    info = FormatInfo(name="toy", label="Toy")

    def detect(self, root_real: Path) -> bool:
        return (root_real / "TOY").is_file()

    def check(self, spec: ScanSpec) -> None:
        if spec.components:
            raise ConfigError("format toy: no components")

    def scan(self, root_real: Path, spec: ScanSpec) -> Scanned:
        data = root_real / "TOY"
        stat = data.stat()
        return Scanned((FileEntry("TOY", str(data), stat.st_size, stat.st_mtime_ns),), suites=("one",))


TOY = ToyFormat()


def test_a_new_format_plugs_in_by_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(snapshot._ADAPTERS, "toy", (__name__, "TOY"))  # imported when first asked for
    monkeypatch.setattr(snapshot, "FORMAT_NAMES", (*FORMAT_NAMES, "toy"))
    (tmp_path / "TOY").write_bytes(b"toy")
    found = scan_snapshot(ScanSpec(root=tmp_path))  # auto: detected
    assert found.format == "toy" and [e.path for e in found.files] == ["TOY"] and found.suites == ("one",)
    with pytest.raises(ConfigError, match="no components"):
        scan_snapshot(ScanSpec(root=tmp_path, format="toy", components=("main",)))
