"""mirrorseed's CLI (invoke). Thin: each task parses flags, builds Settings, calls one pipeline function.

PipelineError becomes invoke.Exit(one line, code) in exactly one place: `_pipeline_errors`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit, task

from pipeline.config import flag_help

ROOT = Path(__file__).resolve().parent


@contextmanager
def _pipeline_errors(verbose: bool = False) -> Iterator[None]:
    """The one error handler: known errors -> `ClassName: message` and their exit code; others keep the traceback."""
    from pipeline.errors import PipelineError

    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if verbose else logging.WARNING, format="mirrorseed: %(message)s"
    )
    try:
        yield
    except PipelineError as exc:
        if verbose:
            logging.getLogger("mirrorseed").exception("failed")
        message = " ".join(str(exc).split())
        raise Exit(f"{type(exc).__name__}: {message}", code=exc.exit_code) from None


def _progress() -> Any:
    """Bars on stderr when it is a terminal; none otherwise (a CI job's log), and rich is then not even
    imported (~20 ms of every run's start)."""
    if not sys.stderr.isatty():
        from pipeline.model import NullProgress

        return NullProgress()
    from pipeline.progress import StderrProgress

    return StderrProgress()


def _settings(config: str | None, parameters: dict[str, Any]) -> Any:
    """Settings from defaults < the settings file < MIRRORSEED_* < the task's own parameters (its locals())."""
    from pipeline.config import load_settings, setting_flags

    flags = {name: tuple(v) if isinstance(v, list) else v for name, v in setting_flags(parameters).items()}
    return load_settings(config_file=Path(config) if config else None, flags=flags)


CONFIG_HELP = "settings file (TOML); default ./mirror.toml if present"
VERBOSE_HELP = "debug logging and tracebacks"


@task(
    iterable=["webseed", "tracker"],
    help=flag_help(
        "snapshot", "format", "dest", "public_url", "webseed", "tracker", "key", "repo", "dry_run", "metrics",
        "resign_before", "expires_after", "state", "workers", "executor", "s3_endpoint_url", "no_cas",
        "allow_peer_only", "tracker_whitelist", "tracker_pid_file", "audit", "audit_interval",
        config=CONFIG_HELP,
        json="print the run report as JSON on stdout",
        verbose=VERBOSE_HELP,
    ),
)  # fmt: skip
def release(
    c: Context,
    config: str | None = None,
    snapshot: str | None = None,
    format: str | None = None,
    dest: str | None = None,
    public_url: str | None = None,
    webseed: list[str] | None = None,
    tracker: list[str] | None = None,
    key: str | None = None,
    repo: str | None = None,
    dry_run: bool = False,
    json_: bool = False,
    metrics: str | None = None,
    resign_before: str | None = None,
    expires_after: str | None = None,
    state: str | None = None,
    workers: int | None = None,
    executor: str | None = None,
    s3_endpoint_url: str | None = None,
    no_cas: bool = False,
    allow_peer_only: bool = False,
    tracker_whitelist: str | None = None,
    tracker_pid_file: str | None = None,
    verbose: bool = False,
    audit: bool = False,
    audit_interval: str | None = None,
) -> None:
    """Publish a snapshot: per-package torrents + metalinks, signed index and pointer, listings."""
    with _pipeline_errors(verbose):
        from pipeline.hashing import skip_main_script_in_workers
        from pipeline.heap import bound_heap, leave_to_exit
        from pipeline.run import release as run_release

        skip_main_script_in_workers()  # this script: invoke's; the workers need nothing of it

        settings = _settings(config, locals())
        bound_heap()
        report = run_release(settings, progress=_progress())
        _emit(report, as_json=json_, metrics=settings.metrics)
        leave_to_exit()


def _emit(report: Any, *, as_json: bool, metrics: Path | None) -> None:
    if metrics is not None:
        from pipeline.storage.local import LocalStorage

        LocalStorage(metrics.parent).put(
            metrics.name, report.to_prometheus().encode(), content_type="text/plain", cache_control="no-cache"
        )
    if as_json:
        sys.stdout.writelines(report.json_chunks())
        print()
    else:
        for line in report.summary_lines():
            print(line, file=sys.stderr)
        if report.dry_run:
            for key in report.planned_keys:
                print(f"put {key}")
            for key in report.deleted_keys:
                print(f"delete {key}")


@task(
    help={
        "serve": "then keep the mirror, the destination, the tracker and the seed box up until Ctrl-C",
        "dest": "where to publish (default ./public)",
        "verbose": "debug logging and tracebacks",
    }
)
def demo(c: Context, serve: bool = False, dest: str = "public", verbose: bool = False) -> None:
    """Demo on 127.0.0.1: publish the demo snapshot to ./public with a real tracker; a user fetches a package
    from the mirror, the seed box seeds, the mirror stops, a second user fetches it from the peer.

    Needs opentracker and aria2 (./bootstrap.sh installs them)."""
    with _pipeline_errors(verbose):
        from pipeline.demo import run_demo

        def announce(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        result = run_demo(
            cache_dir=ROOT / ".demo",
            dest=Path(dest) if os.path.isabs(dest) else ROOT / dest,
            serve=serve,
            progress=_progress(),
            announce=announce,
        )
        for line in result.report.summary_lines():
            announce(f"demo: {line}")
        announce("demo: the user recipe (also on the front page):")
        print(result.recipe)


@task(help={"k": "only run tests matching this expression", "fast": "skip lint and type checks"})
def test(c: Context, k: str | None = None, fast: bool = False) -> None:
    """The whole suite: ruff (lint + format), mypy --strict on pipeline/, bench/ and the client, pytest (all tiers)."""
    py = sys.executable
    with c.cd(str(ROOT)):
        if not fast:
            c.run(f"{py} -m ruff check .", echo=True)
            c.run(f"{py} -m ruff format --check .", echo=True)
            c.run(f"{py} -m mypy pipeline bench clients/apt/mirrorseed", echo=True)
        selection = f" -k {k!r}" if k else ""
        c.run(f"{py} -m pytest -q -ra{selection}", echo=True, pty=False)


@task(help={"update": "write the current output as the new golden files (review the diff before committing)"})
def golden(c: Context, update: bool = False) -> None:
    """Publish the demo and a flat snapshot with a fixed clock and key; compare with tests/golden/ (or update it)."""
    env = {"MIRRORSEED_GOLDEN_UPDATE": "1"} if update else {}
    with c.cd(str(ROOT)):
        c.run(f"{sys.executable} -m pytest -q tests/integration/test_golden.py", echo=True, pty=False, env=env)


@task(
    help={
        "files": "corpus size in files (default 3000), drawn from ../shared/data with a fixed seed",
        "total_gb": "cap on the corpus bytes; sizes are scaled down proportionally above it (default 4)",
        "runs": "timed runs per row, after one warm-up; the table shows medians (default 5)",
        "out": "JSON results file (default .bench/results.json)",
        "quick": "skip coreutils, torf CLI and transmission-create, and install nothing",
        "swarm": "also run the swarm benchmark (tracker, seed box, throttled mirror, aria2 users; ~4 min)",
        "swarm_only": "run only the swarm benchmark",
        "swarm_users": "swarm: aria2 users (default 8)",
        "swarm_packages": "swarm: packages in the set (default 40)",
        "swarm_mb": "swarm: package set size in MB (default 100)",
        "swarm_interval": "swarm: seconds between two users' arrivals (default 3)",
        "swarm_scenario": "swarm: offload, dead-mirror or both (default both)",
        "swarm_out": "swarm: JSON results file (default .bench/swarm.json)",
        "swarm_user_conf": "swarm: an extra KEY=VALUE line for every user's aria2.conf (repeatable; what-if runs)",
        "apt": "the apt row: apt-get --download-only through the method vs apt's http (default on; --no-apt skips)",
        "apt_only": "run only the apt row (--runs applies; --quick: no quiet wait)",
        "apt_packages": "apt: packages to download (default 20), real bookworm names and sizes",
        "apt_mb": "apt: cap on the packages' bytes in MB; sizes are scaled down above it (default 200)",
        "apt_out": "apt: JSON results file (default .bench/apt.json)",
        "apt_mib_s": "apt: the whole mirror's rate in MiB/s (default 4, the swarm bench's link; 0: loopback speed)",
        "scale": "run only the scale benchmark (issue 14) on N tiny files (--scale: 1,000,000; --scale 20000)",
        "scale_format": "scale: flat, debian or both (default both)",
        "scale_runs": "scale: timed runs per row after one warm-up (default 1; the dask rows at least 3)",
        "scale_no_dask": "scale: skip the dask row (3,000-file corpus, LocalCluster vs the local pool)",
        "scale_out": "scale: JSON results file (default .bench/scale.json)",
    },
    iterable=["swarm_user_conf"],
    optional=["scale"],
)
def bench(
    c: Context,
    files: int = 3000,
    total_gb: float = 4.0,
    runs: int = 5,
    out: str | None = None,
    quick: bool = False,
    swarm: bool = False,
    swarm_only: bool = False,
    swarm_users: int = 8,
    swarm_packages: int = 40,
    swarm_mb: float = 100.0,
    swarm_interval: float = 3.0,
    swarm_scenario: str = "both",
    swarm_out: str | None = None,
    swarm_user_conf: list[str] | None = None,
    apt: bool = True,
    apt_only: bool = False,
    apt_packages: int = 20,
    apt_mb: float = 200.0,
    apt_out: str | None = None,
    apt_mib_s: float = 4.0,
    scale: str | bool | None = None,
    scale_format: str = "both",
    scale_runs: int = 1,
    scale_no_dask: bool = False,
    scale_out: str | None = None,
) -> None:
    """Benchmark: hashlib ceiling, peers and mirrorseed (full, no-change, 1%-changed) on one corpus; print the table.

    --swarm adds (--swarm-only runs alone) the offload benchmark of issue 12: bytes the mirror, the seed box
    and the users serve when K aria2 users fetch the same packages through a tracker. The apt row (issue 13) times
    apt-get --download-only through the mirrorseed method against apt's http method; --apt-only runs it alone.
    --scale [N] runs only the scale benchmark (issue 14): flat and Debian archives of N tiny files (full, no-change
    and 1%-changed builds against a bare walk) and a Dask LocalCluster against the local pool."""

    def announce(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value) if os.path.isabs(value) else Path.cwd() / value

    with _pipeline_errors():
        from bench.apt import AptBenchOptions, run_apt_bench
        from bench.harness import QUIET_WAIT_S

        if scale is not None:
            from bench.scale import run_scale_bench, scale_options

            scale_result = run_scale_bench(
                scale_options(ROOT, scale, scale_format, runs=scale_runs, dask=not scale_no_dask, out=path(scale_out),
                              quiet_wait_s=0.0 if quick else QUIET_WAIT_S),
                announce=announce,
            )  # fmt: skip
            print(scale_result.table)
            announce(f"bench: scale results in {scale_result.json_path}")
            return
        apt_options = AptBenchOptions(
            repo_root=ROOT, packages=apt_packages, cap_mb=apt_mb, runs=runs, out=path(apt_out),
            quiet_wait_s=0.0 if quick else QUIET_WAIT_S, mirror_mib_s=apt_mib_s,
        )  # fmt: skip
        if apt_only:
            apt_result = run_apt_bench(apt_options, announce=announce)
            print(apt_result.table)
            announce(f"bench: apt results in {apt_result.json_path}")
            return
        if not swarm_only:
            from bench.harness import BenchOptions, run_bench

            result = run_bench(
                BenchOptions(repo_root=ROOT, files=files, total_gb=total_gb, runs=runs, out=path(out), quick=quick,
                             apt=apt_options if apt and not quick else None),
                announce=announce,
            )  # fmt: skip
            print(result.table)
            announce(f"bench: results in {result.json_path}")
            if not swarm:
                announce("bench: swarm benchmark skipped (invoke bench --swarm, or --swarm-only)")
                return
        from bench.swarm import SwarmOptions, run_swarm_bench

        scenarios = ("offload", "dead-mirror") if swarm_scenario == "both" else (swarm_scenario,)
        swarm_result = run_swarm_bench(
            SwarmOptions(
                repo_root=ROOT, users=swarm_users, packages=swarm_packages, total_mb=swarm_mb,
                interval_s=swarm_interval, scenarios=scenarios, out=path(swarm_out),
                user_conf=tuple(swarm_user_conf or ()),
            ),
            announce=announce,
        )  # fmt: skip
        print(swarm_result.table)
        announce(f"bench: swarm results in {swarm_result.json_path}")
        if not swarm_result.ok:
            raise Exit("bench: swarm: a user did not complete (see the table)", code=1)


@task(
    help=flag_help(
        "public_url", "keyring", "fingerprint", "state_file", "sample", "timeout", "allow_peer_only",
        config=CONFIG_HELP,
        json="print the report as JSON on stdout",
        verbose=VERBOSE_HELP,
    )
)  # fmt: skip
def verify(
    c: Context,
    config: str | None = None,
    public_url: str | None = None,
    keyring: str | None = None,
    fingerprint: str | None = None,
    state_file: str | None = None,
    sample: str | None = None,
    timeout: str | None = None,
    allow_peer_only: bool = False,
    json_: bool = False,
    verbose: bool = False,
) -> None:
    """Audit a publication as a user sees it, over HTTP only: OK line, or one line per problem and exit 1."""
    with _pipeline_errors(verbose):
        from pipeline.verify import verify_publication, verify_spec

        report = verify_publication(verify_spec(_settings(config, locals())))
    if json_:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for line in report.lines():
            print(line)
    if not report.ok:
        raise Exit(report.summary(), code=1)


@task(
    auto_shortflags=False,
    help=flag_help(
        "snapshot", "dest", "key", "repo", "keyring", "fingerprint", "s3_endpoint_url",
        "seed_max_torrents", "seed_upload_limit", "seed_poll", "seed_port", "seed_rpc_port",
        "seed_rpc_secret_file", "seed_user", "seed_dir", "seed_trust_files", "seed_dht",
        config=CONFIG_HELP,
        verbose=VERBOSE_HELP,
    ),
)  # fmt: skip
def seed(
    c: Context,
    config: str | None = None,
    snapshot: str | None = None,
    dest: str | None = None,
    key: str | None = None,
    repo: str | None = None,
    keyring: str | None = None,
    fingerprint: str | None = None,
    s3_endpoint_url: str | None = None,
    seed_max_torrents: str | None = None,
    seed_upload_limit: str | None = None,
    seed_poll: str | None = None,
    seed_port: str | None = None,
    seed_rpc_port: str | None = None,
    seed_rpc_secret_file: str | None = None,
    seed_user: str | None = None,
    seed_dir: str | None = None,
    seed_trust_files: bool = False,
    seed_dht: bool = False,
    verbose: bool = False,
) -> None:
    """Seed the current publication with aria2 from the snapshot (read-only) and follow new ones; stop on SIGTERM."""
    with _pipeline_errors(verbose):
        import signal
        import threading

        from pipeline.seed import run_seed_box

        settings = _settings(config, locals())
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())

        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        run_seed_box(settings, log=log, stop=stop)


ns = Collection(release, demo, test, bench, verify, golden, seed)


@task(
    name="bootstrap",
    auto_shortflags=False,
    help=flag_help(
        "s3_endpoint_url",
        "s3_region",
        "s3_profile",
        "s3_addressing_style",
        dest="the S3 destination, s3://bucket[/prefix] (default: dest from the settings)",
        config=CONFIG_HELP,
        create_bucket="create the bucket if it does not exist",
        verbose=VERBOSE_HELP,
    ),
)
def infra_bootstrap(
    c: Context,
    dest: str | None = None,
    config: str | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    s3_profile: str | None = None,
    s3_addressing_style: str | None = None,
    create_bucket: bool = False,
    verbose: bool = False,
) -> None:
    """Apply infra/ to the bucket: anonymous GetObject policy, multipart-abort lifecycle, CORS (idempotent)."""
    with _pipeline_errors(verbose):
        from pipeline.config import s3_config
        from pipeline.infra import bootstrap

        settings = _settings(config, locals())
        report = bootstrap(settings.dest, s3_config(settings), infra_dir=ROOT / "infra", create_bucket=create_bucket)
        for line in report.lines():
            print(line)


ns.add_collection(Collection("infra", infra_bootstrap))
