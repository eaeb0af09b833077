"""One frozen Settings; precedence: defaults < mirror.toml < MIRRORSEED_* env < task flags."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.storage import S3Config

log = logging.getLogger(__name__)

ENV_PREFIX = "MIRRORSEED_"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
# A DHT node: a host name or IPv4 address, or an IPv6 address in brackets, then a port.
_DHT_NODE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
# The `executor` setting besides "local": a Dask scheduler (pipeline/executors.py).
DASK_EXECUTOR = re.compile(
    r"dask://(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})"
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, *, name: str) -> timedelta:
    """'7d', '12h', '30m', '45s', '2w' -> timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a duration; write it like 7d, 12h, 30m or 45s")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class MirrorConfig:
    """One HTTP mirror of the snapshot (it serves `<url>/<repo path>`), from mirror.toml or --webseed."""

    url: str
    country: str | None = None  # ISO 3166-1 alpha-2, upper case
    continent: str | None = None  # AF AN AS EU NA OC SA
    name: str | None = None
    contact: str | None = None
    bandwidth: str | None = None  # free text, e.g. "10 Gbit/s"
    lastsync: str | None = None  # path under url of a last-sync timestamp file (Debian trace, Arch lastsync)
    priority: int = 100  # metalink <url priority>: lower first; the operator's own mirror gets 1


def user_cache_dir() -> Path:
    """~/.cache/mirrorseed (XDG_CACHE_HOME honoured): the default state file's directory, and compiled templates'."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "mirrorseed"


def _setting(default: Any, help: str, *, flag: str | None = None, minimum: int = 1) -> Any:
    """A Settings field with its help text (the invoke flag's help), when the task parameter is named
    otherwise that name (`--webseed` fills `webseeds`), and for whole numbers their minimum."""
    return field(default=default, metadata={"help": help, "flag": flag, "minimum": minimum})


@dataclass(frozen=True)
class Settings:
    """Everything one run needs. Built once by load_settings(), passed explicitly, never mutated.

    Each field's type says how a value from mirror.toml, the environment or a flag is read (path, list,
    duration, bool, number, string); its help is the flag's help.
    """

    snapshot: Path | None = _setting(None, "the repository snapshot directory")
    format: str = _setting("auto", "debian | arch | flat | auto (auto: debian or arch by their metadata)")
    dest: str = _setting("./public", "destination: a local path, file:///dir or s3://bucket/prefix")
    public_url: str | None = _setting(None, "where the destination is readable over HTTP(S)")
    repo: str = _setting("mirror", "repository name used in the pointer and index")
    webseeds: tuple[str, ...] = _setting((), "base URL of an HTTP mirror of the snapshot (repeatable)", flag="webseed")
    trackers: tuple[str, ...] = _setting((), "tracker announce URL (repeatable)", flag="tracker")
    dht_nodes: tuple[str, ...] = _setting(
        (),
        "DHT bootstrap node HOST:PORT: in every announced torrent (BEP 5 nodes), the recipes' --dht-entry-point "
        "(repeatable)",
        flag="dht-node",
    )
    never_announce: tuple[str, ...] = _setting(
        (),
        "repo paths or globs of packages never announced: no tracker, the BEP 27 private flag, webseeds only",
    )
    tracker_whitelist: Path | None = _setting(
        None, "write the infohashes of the current publication here (opentracker's access.whitelist)"
    )
    tracker_pid_file: Path | None = _setting(None, "the tracker's PID file: it is sent SIGHUP to re-read the whitelist")
    key: str | None = _setting(None, "signing key fingerprint in $GNUPGHOME")
    gnupghome: Path | None = _setting(None, "GnuPG home holding the signing key (default $GNUPGHOME)")
    suites: tuple[str, ...] = _setting((), "Debian suites to publish (default: all found)")
    components: tuple[str, ...] = _setting((), "Debian components to publish (default: all found)")
    architectures: tuple[str, ...] = _setting((), "Debian architectures to publish (default: all found)")
    upstream_keyring: Path | None = _setting(None, "keyring that verifies the upstream InRelease/Release.gpg")
    sync_lock: tuple[Path, ...] = _setting((), "lock or trace files whose presence refuses the run (a sync is on)")
    expires_after: timedelta = _setting(timedelta(days=7), "pointer validity (default 7d)")
    resign_before: timedelta | None = _setting(
        None, "re-sign the pointer when less than this validity is left (default: half of expires_after)"
    )
    key_valid_margin: timedelta = _setting(timedelta(days=7), "the key must outlive the pointer by this (7d)")
    templates_dir: Path | None = _setting(None, "your templates for the listings (override templates/ by name)")
    state: Path | None = _setting(None, "SQLite state cache (default ~/.cache/mirrorseed/<repo>.sqlite)")
    workers: int = _setting(2, "hashing processes (default 2)")
    executor: str = _setting(
        "local",
        "where files are hashed: local (workers processes here) or dask://HOST:PORT, a Dask scheduler whose "
        "workers mount the snapshot at the same path (pip install 'mirrorseed[dask]')",
    )
    # S3 destinations (s3://bucket/prefix); credentials come from the standard AWS chain (env, profile)
    s3_endpoint_url: str | None = _setting(None, "S3 endpoint for s3:// destinations (AWS: leave unset)")
    s3_region: str | None = _setting(None, "S3 region (default: the AWS chain's)")
    s3_addressing_style: str = _setting("auto", "S3 addressing: auto | path | virtual")
    s3_profile: str | None = _setting(None, "AWS profile for the S3 credentials")
    s3_max_attempts: int = _setting(8, "S3 attempts per request, the first included")
    s3_connect_timeout: int = _setting(10, "S3 connect timeout, seconds")
    s3_read_timeout: int = _setting(60, "S3 read timeout, seconds")
    upload_concurrency: int = _setting(8, "parallel uploads to S3")
    retention: timedelta = _setting(timedelta(days=14), "keep objects of older indexes this long (default 14d)")
    audit_interval: timedelta = _setting(
        timedelta(days=1),
        "a run lists the destination and checks that every published object is still there as written (size "
        "and ETag against the manifest) when that was last checked longer ago than this; between audits only "
        "the index, keys, clients and top pages are checked (default 1d; 0s: every run)",
    )
    audit: bool = _setting(
        False, "check this run that every published object is still there as written (see audit_interval)"
    )
    no_cas: bool = _setting(False, "publish to a store without conditional writes (only with an external lock)")
    allow_peer_only: bool = _setting(
        False,
        "packages no webseed serves: release publishes them (a seed box of yours serves them to peers); "
        "verify accepts their torrents without a url-list",
    )
    # mirrors: health probes decide, per file, which mirrors are webseeds (issue on mirrors)
    mirrors: tuple[MirrorConfig, ...] = _setting((), "[[mirrorseed.mirrors]] tables of mirror.toml")
    mirror_timeout: int = _setting(10, "seconds a mirror has for a probe's headers (twice that for all of it)")
    mirror_budget: int = _setting(4000, "probe requests per mirror per run")
    mirror_concurrency: int = _setting(8, "probe requests in flight per mirror")
    mirror_down_runs: int = _setting(2, "a down mirror leaves torrent url-lists only after this many runs ...")
    mirror_down_after: timedelta = _setting(timedelta(hours=6), "... and this long")
    dry_run: bool = _setting(False, "do everything but write to the destination; print the upload plan")
    metrics: Path | None = _setting(None, "write a Prometheus textfile here")
    # invoke verify: a publication audited as its users see it
    verify_keyring: Path | None = _setting(
        None, "binary public keyring to pin, e.g. the saved signing-key.gpg", flag="keyring"
    )
    verify_fingerprint: str | None = _setting(
        None, "pinned primary key fingerprint (default: the keyring's only primary key)", flag="fingerprint"
    )
    verify_state: Path | None = _setting(
        None, "highest sequence seen (default ~/.cache/mirrorseed/verify-<host>.json)", flag="state_file"
    )
    verify_sample: int = _setting(20, "how many packages' webseed URLs to probe (default 20)", flag="sample", minimum=0)
    verify_timeout: float = _setting(10.0, "seconds per network read (default 10)", flag="timeout")
    # invoke seed: the operator's seed box (pipeline/seed.py)
    seed_max_torrents: int = _setting(
        1000, "package torrents the seed box serves at most, newest snapshot file (mtime) first (+ the index)"
    )
    seed_upload_limit: str = _setting("0", "aria2 --max-overall-upload-limit, e.g. 10M (bytes/s; 0: unlimited)")
    seed_poll: int = _setting(60, "seconds between two reads of latest.asc by the seed box")
    seed_port: int = _setting(6881, "BitTorrent port of the seed box (TCP; UDP too with seed_dht)")
    seed_rpc_port: int = _setting(6800, "aria2 JSON-RPC port of the seed box, on 127.0.0.1 only")
    seed_rpc_secret_file: Path | None = _setting(
        None, "file holding the aria2 RPC secret (default: a random one per start, never in argv or logs)"
    )
    seed_user: str = _setting(
        "nobody", "user aria2 runs as when the seed box starts as root; it must not write the snapshot"
    )
    seed_dir: Path | None = _setting(
        None, "where the seed box makes its private work directory (default: the temp dir)"
    )
    seed_trust_files: bool = _setting(
        False,
        "seed without re-hashing (aria2 --bt-seed-unverified): fast start; peers reject changed bytes",
    )
    seed_dht: bool = _setting(False, "also announce on the DHT (anyone can then see what the seed box holds)")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def all_mirrors(self) -> tuple[MirrorConfig, ...]:
        """mirror.toml's mirrors, then each --webseed not among them (no country), by URL."""
        known = {m.url.rstrip("/") for m in self.mirrors}
        extra = tuple(MirrorConfig(url=u) for u in dict.fromkeys(self.webseeds) if u.rstrip("/") not in known)
        return self.mirrors + extra

    @property
    def dht_node_pairs(self) -> tuple[tuple[str, int], ...]:
        """`dht_nodes` as (host, port) pairs, de-duplicated in order (checked by load_settings)."""
        return tuple(split_node(node) for node in dict.fromkeys(self.dht_nodes))

    @property
    def state_path(self) -> Path:
        """The SQLite state cache: `state` if set, else ~/.cache/mirrorseed/<repo>.sqlite (XDG_CACHE_HOME honoured)."""
        if self.state is not None:
            return self.state
        return user_cache_dir() / f"{self.repo}.sqlite"

    @property
    def effective_resign_before(self) -> timedelta:
        return self.resign_before if self.resign_before is not None else self.expires_after / 2


_MIRROR_KEYS = {"url", "country", "continent", "name", "contact", "bandwidth", "lastsync", "priority"}
_CONTINENTS = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}


def _mirrors(value: Any, origin: str) -> tuple[MirrorConfig, ...]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ConfigError(f"{origin}: mirrors must be an array of tables ([[mirrorseed.mirrors]])")
    out: list[MirrorConfig] = []
    for number, item in enumerate(value, start=1):
        where = f"{origin}: mirror {number}"
        unknown = sorted(set(item) - _MIRROR_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_MIRROR_KEYS))}")
        url = item.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"{where}: url must start with http:// or https://")
        country = item.get("country")
        if country is not None and (not isinstance(country, str) or not re.fullmatch(r"[A-Za-z]{2}", country)):
            raise ConfigError(f"{where}: country must be a two-letter ISO code such as DE")
        continent = item.get("continent")
        if continent is not None and (not isinstance(continent, str) or continent.upper() not in _CONTINENTS):
            raise ConfigError(f"{where}: continent must be one of {', '.join(sorted(_CONTINENTS))}")
        texts = {k: item.get(k) for k in ("name", "contact", "bandwidth", "lastsync")}
        for key, text in texts.items():
            if text is not None and not isinstance(text, str):
                raise ConfigError(f"{where}: {key} must be a string")
        priority = item.get("priority", 100)
        if not isinstance(priority, int) or isinstance(priority, bool) or priority < 1:
            raise ConfigError(f"{where}: priority must be a whole number >= 1")
        out.append(
            MirrorConfig(
                url=url,
                country=country.upper() if country else None,
                continent=continent.upper() if continent else None,
                priority=priority,
                **texts,
            )
        )
    return tuple(out)


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "sources"}
_FIELD_NAMES = set(_FIELDS)
# How a value is read, from the field's declared type (annotations are strings here).
_KINDS = {
    "Path | None": "path",
    "tuple[str, ...]": "list",
    "tuple[Path, ...]": "paths",
    "tuple[MirrorConfig, ...]": "mirrors",
    "timedelta": "duration",
    "timedelta | None": "duration",
    "bool": "bool",
    "int": "int",
    "float": "float",
    "str": "str",
    "str | None": "str",
}


def _kind(name: str) -> str:
    return _KINDS[str(_FIELDS[name].type)]


def flag_help(*flags: str, **extra: str) -> dict[str, str]:
    """invoke `help=` for a task's parameters: each setting's own help (by its flag name), plus `extra`."""
    by_flag = {f.metadata.get("flag") or name: f for name, f in _FIELDS.items()}
    return {flag: str(by_flag[flag].metadata["help"]) for flag in flags} | extra


def setting_flags(given: Mapping[str, Any]) -> dict[str, Any]:
    """A task's parameters (e.g. its `locals()`) -> the settings they set, by field name; others dropped."""
    names = {f.metadata.get("flag") or name: name for name, f in _FIELDS.items()}
    return {names[flag]: value for flag, value in given.items() if flag in names}


def _coerce(name: str, value: Any, origin: str, base: Path) -> Any:
    where = f"{origin}: {name}"
    if value is None:
        return None
    kind = _kind(name)
    if kind == "mirrors":
        if isinstance(value, tuple) and all(isinstance(m, MirrorConfig) for m in value):
            return value
        return _mirrors(value, origin)
    if kind in ("list", "paths"):
        if isinstance(value, str):
            items = [v for v in re.split(r"[\s,]+", value) if v]
        elif isinstance(value, list | tuple) and all(isinstance(v, str | Path) for v in value):
            items = [str(v) for v in value]
        else:
            raise ConfigError(f"{where} must be a list of strings")
        if kind == "paths":
            return tuple(Path(v) for v in items)  # sync_lock: relative paths resolve against the snapshot root
        return tuple(items)
    if kind == "path":
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where} must be a path string")
        return _as_path(str(value), base)
    if kind == "duration":
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a duration string such as 7d")
        return parse_duration(value, name=where)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise ConfigError(f"{where} must be true or false")
    if kind in ("int", "float"):
        try:
            number = int(value) if kind == "int" else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a {'whole' if kind == 'int' else 'decimal'} number") from None
        minimum = int(_FIELDS[name].metadata["minimum"])
        if kind == "int" and number < minimum:
            raise ConfigError(f"{where} must be at least {minimum}")
        if kind == "float" and (not number > 0 or number == float("inf")):
            raise ConfigError(f"{where} must be a positive number")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    return value


def _as_path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such settings file; pass an existing --config FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None
    section = data.get("mirrorseed", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [mirrorseed] must be a table")
    unknown = sorted(set(section) - _FIELD_NAMES)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; see README for the names")
    return {k: v for k, v in section.items() if k in _FIELD_NAMES}


def load_settings(
    *,
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    default_config: bool = True,
) -> Settings:
    """Merge defaults < settings file < MIRRORSEED_* environment < flags, validate, and return Settings.

    `config_file` None means `./mirror.toml` if it exists (when `default_config`). Flag values that are
    None (or empty tuples) are "not given". Secrets never pass through here.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    file_path = config_file
    if file_path is None and default_config and (cwd / "mirror.toml").is_file():
        file_path = cwd / "mirror.toml"
    if file_path is not None:
        file_path = _as_path(str(file_path), cwd)
        for name, raw in _read_file(file_path).items():
            values[name] = _coerce(name, raw, str(file_path), file_path.parent)
            sources[name] = str(file_path)

    for name in sorted(_FIELD_NAMES):
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and environ[env_name] != "":
            values[name] = _coerce(name, environ[env_name], env_name, cwd)
            sources[name] = env_name

    for name, raw in (flags or {}).items():
        if name not in _FIELD_NAMES:
            raise ConfigError(f"--{name.replace('_', '-')}: not a setting")
        if raw is None or raw == () or raw == [] or raw is False and _kind(name) == "bool":
            continue
        values[name] = _coerce(name, raw, "--" + name.replace("_", "-"), cwd)
        sources[name] = "flag"

    if "gnupghome" not in values and environ.get("GNUPGHOME"):
        values["gnupghome"] = Path(environ["GNUPGHOME"])
        sources["gnupghome"] = "GNUPGHOME"

    settings = Settings(**values, sources=sources)
    _validate(settings)
    for name, origin in sorted(sources.items()):
        log.debug("setting %s set by %s", name, origin)
    return settings


def _validate(settings: Settings) -> None:
    from pipeline.snapshot import FORMAT_NAMES  # lazy: the format modules only when settings are checked

    if settings.format not in FORMAT_NAMES:
        raise ConfigError(f"format: {settings.format!r} is not one of {', '.join(FORMAT_NAMES)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", settings.repo):
        raise ConfigError(f"repo: {settings.repo!r} must be 1-64 letters, digits, '.', '_' or '-'")
    for url in (*settings.webseeds, *((settings.public_url,) if settings.public_url else ())):
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"{url!r}: a webseed or public URL must start with http:// or https://")
    for url in settings.trackers:
        if not re.match(r"^(https?|udp)://[^/\s]+", url):
            raise ConfigError(f"{url!r}: a tracker URL must start with http://, https:// or udp://")
    for node in settings.dht_nodes:
        if _DHT_NODE.fullmatch(node) is None or not 1 <= split_node(node)[1] <= 65535:
            raise ConfigError(f"dht_nodes: {node!r} is not HOST:PORT (a host name or IP address, a port 1-65535)")
    if settings.expires_after < timedelta(hours=1):
        raise ConfigError("expires_after: must be at least 1h")
    if settings.effective_resign_before >= settings.expires_after:
        raise ConfigError("resign_before: must be shorter than expires_after")
    if settings.s3_addressing_style not in ("auto", "path", "virtual"):
        raise ConfigError(f"s3_addressing_style: {settings.s3_addressing_style!r} is not auto, path or virtual")
    if not re.fullmatch(r"[0-9]+[KkMm]?", settings.seed_upload_limit):
        raise ConfigError(f"seed_upload_limit: {settings.seed_upload_limit!r} is not a rate like 0, 500K or 10M")
    if settings.executor != "local" and (
        (match := DASK_EXECUTOR.fullmatch(settings.executor)) is None or not 1 <= int(match.group("port")) <= 65535
    ):
        raise ConfigError(
            f"executor: {settings.executor!r} is not local or dask://HOST:PORT (a Dask scheduler, e.g. dask://seed1:8786)"
        )
    if settings.retention < settings.expires_after:
        raise ConfigError("retention: must be at least expires_after (objects of a valid pointer are kept)")


def split_node(node: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host without brackets, port); ValueError when there is no port."""
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)


def s3_config(settings: Settings) -> S3Config:
    """The S3 destination's part of the settings."""
    return S3Config(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        addressing_style=settings.s3_addressing_style,
        profile=settings.s3_profile,
        max_attempts=settings.s3_max_attempts,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        upload_concurrency=settings.upload_concurrency,
    )


def require_release_inputs(settings: Settings) -> None:
    """`invoke release` needs a snapshot, a key and a public URL; refuse in one line otherwise."""
    if settings.snapshot is None:
        raise ConfigError(
            "no snapshot configured: pass --snapshot DIR or --config mirror.toml (invoke demo runs the demo)"
        )
    if settings.key is None:
        raise ConfigError("no signing key configured: pass --key FINGERPRINT or set key in mirror.toml")
    if settings.public_url is None:
        raise ConfigError(
            "no public URL configured: pass --public-url URL (where the destination is readable over HTTP)"
        )
