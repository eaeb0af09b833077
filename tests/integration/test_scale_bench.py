"""`invoke bench --scale N` works end to end on a tiny archive: correctness only, never a timing threshold.

One real `invoke bench --scale 300 --scale-no-dask --quick` (both forms, real `release` processes, no quiet
wait), its cache under tmp_path; then the archives it left are checked: accepted by the scanners as built,
and restored after the 1%-changed runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.harness import distribution_path, load_distribution
from bench.scale import (
    ARCHITECTURES,
    DEFAULT_FILES,
    MAX_FILE_BYTES,
    MIN_FILE_BYTES,
    SUITES,
    ScalePlan,
    ensure_archive,
    scale_options,
)
from pipeline.errors import ConfigError
from pipeline.snapshot import ScanSpec, scan_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
FILES = 300
FORMS = ("flat", "debian")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """(the JSON report, stdout, the cache directory) of one `invoke bench --scale 300` run."""
    assert distribution_path(ROOT).is_file(), f"{distribution_path(ROOT)}: the bench needs ../shared beside the repo"
    tmp = tmp_path_factory.mktemp("scale")
    out = tmp / "scale.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORSEED_")}
    env.pop("GNUPGHOME", None)
    env["MIRRORSEED_BENCH_CACHE"] = str(tmp / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "bench", "--scale", str(FILES),
         "--scale-format", "both", "--scale-no-dask", "--quick", "--scale-out", str(out)],
        cwd=tmp, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout, tmp / "cache"


def test_rows_report_the_expected_actions(bench_run: tuple[dict[str, Any], str, Path]) -> None:
    doc, stdout, _ = bench_run
    rows = {row["key"]: row for row in doc["rows"]}
    changed = round(FILES * 0.01)
    for form in FORMS:
        for kind in ("walk", "full", "noop", "changed"):
            row = rows[f"{form}-{kind}"]
            assert row["status"] == "ok", (form, kind, row["reason"])
            assert row["files"] == FILES and row["runs"], (form, kind)
            assert all(run["wall_s"] > 0 and run["peak_rss_bytes"] > 0 for run in row["runs"]), (form, kind)
        full, noop, change = (rows[f"{form}-{kind}"]["runs"] for kind in ("full", "noop", "changed"))
        assert {(r["action"], r["files_hashed"]) for r in full} == {("publish", FILES)}
        assert {(r["action"], r["files_hashed"]) for r in noop} == {("noop", 0)}
        assert {(r["action"], r["files_hashed"], r["changed_files"]) for r in change} == {("publish", changed, changed)}
        for run in (*full, *noop, *change):
            assert run["stages"]["scan"] > 0 and "hash" in run["stages"], form
    for key in ("dask-local", "dask-cluster"):
        assert rows[key]["status"] == "skipped" and rows[key]["reason"] == "--scale-no-dask"

    targets = {t["name"]: t for t in doc["targets"]}
    assert len(targets) == 5 * len(FORMS) + 1
    for form in FORMS:
        measured = [t for name, t in targets.items() if name.startswith(f"{form}: ")]
        assert len(measured) == 5 and all(t["result"] in ("PASS", "MISS") for t in measured), measured
        # the last 1%-changed run published a delta for every shard that changed, smaller than the shard
        index = doc["corpus"]["archives"][form]["index"]
        assert index["shards"] >= 1 and index["changed_shards"] >= 1 and index["worst_delta"] is not None
        assert 0 < index["delta_bytes"] < index["changed_shard_bytes"]
        assert sum(index["packages_per_shard"]) >= FILES
    assert [t["result"] for name, t in targets.items() if name.startswith("dask")] == ["n/a"]

    assert doc["table"] in stdout and "| target (issue 14) | measured | limit | result |" in stdout
    fill = doc["machine"]["work_fs"]  # how full the file system was before the runs (it slows `publish`)
    assert 0 < fill["inodes_used"] < 1 and 0 < fill["space_used"] < 1
    assert f"{fill['inodes_used']:.0%} of its inodes and {fill['space_used']:.0%} of its space used" in doc["table"]
    for form in FORMS:
        assert f"| {form}: no-change re-run |" in stdout and f"| {form}: full build |" in stdout
    assert {form: info["files"] for form, info in doc["corpus"]["archives"].items()} == dict.fromkeys(FORMS, FILES)


def test_archives_are_valid_and_left_as_built(bench_run: tuple[dict[str, Any], str, Path]) -> None:
    _, _, cache = bench_run
    distribution = load_distribution(distribution_path(ROOT))
    for form in FORMS:
        plan = ScalePlan(distribution, FILES, form)
        said: list[str] = []
        archive = ensure_archive(cache, plan, announce=said.append)
        assert said == []  # reused as built: nothing rebuilt, nothing left to restore
        directory = archive.corpus.directory
        assert not (directory / "dirty.json").exists() and not archive.dists_dirty.exists()
        snapshot = scan_snapshot(ScanSpec(root=archive.root, format=form))
        assert len(snapshot.files) == FILES
        assert all(MIN_FILE_BYTES <= entry.size <= MAX_FILE_BYTES for entry in snapshot.files)
        if form == "flat":
            assert all(entry.path.startswith("pool/main/") for entry in snapshot.files)
            continue
        assert snapshot.suites == SUITES and snapshot.architectures == tuple(sorted(ARCHITECTURES))
        for entry in snapshot.files:  # Packages vouch for the files as built
            assert hashlib.sha256(Path(entry.source).read_bytes()).hexdigest() == entry.expected_sha256, entry.path
        assert tree_bytes(archive.root / "dists") == tree_bytes(archive.pristine_dists)
        assert len(tree_bytes(archive.pristine_dists)) == len(SUITES) * (1 + 2 * len(ARCHITECTURES))  # .gz, .xz


def tree_bytes(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def test_scale_flag_values() -> None:
    assert scale_options(ROOT, True, "both").files == DEFAULT_FILES
    options = scale_options(ROOT, "20_000", "debian", runs=2, dask=False)
    assert (options.files, options.formats, options.runs, options.dask) == (20_000, ("debian",), 2, False)
    for files, form in (("many", "both"), ("0", "both"), ("100", "rpm")):
        with pytest.raises(ConfigError):
            scale_options(ROOT, files, form)
