"""Static listings: the front page, one browse page per repository directory, the style sheet.

Pages are rendered by jinja2 with autoescape on and StrictUndefined; every href comes from a filter
defined here (relative to the page being rendered, each path segment percent-encoded), never from
string concatenation in a template. The user recipe (a bash script) is rendered from
`recipe.sh.j2` once and shown escaped on the front page, so the page and `user_recipe()` cannot
drift apart. Output is deterministic: no wall-clock time, no tool versions.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2.runtime import Context

from pipeline.errors import ConfigError, SnapshotError
from pipeline.model import Artifact, PackageRecord, Pointer
from pipeline.objects import make_artifact
from pipeline.urls import join_url, quote_path

BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

# DESIGN section 6: a dead tracker otherwise stalls each download for about two minutes, and
# without --seed-time=0 aria2 keeps seeding after the download.
ARIA2_FLAGS = (
    "--seed-time=0",
    "--bt-stop-timeout=60",
    "--bt-tracker-connect-timeout=5",
    "--bt-tracker-timeout=5",
)

FRONT_KEY = "index.html"
STYLE_KEY = "style.css"
FRONT_TEMPLATE = "front.html.j2"
BROWSE_TEMPLATE = "browse.html.j2"
RECIPE_TEMPLATE = "recipe.sh.j2"
STYLE_TEMPLATE = "style.css"

# Local directories the recipe downloads into (the demo checks `packages/<file name>`).
PACKAGES_DIR = "packages"
METALINK_DIR = "packages-metalink"

FORMAT_LABELS: Mapping[str, str] = {"debian": "Debian", "flat": "flat", "arch": "Arch Linux"}

_FINGERPRINT = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")
_MAGNET = re.compile(r"^magnet:\?[A-Za-z0-9%&=:._~+-]+$")
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_PATH_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ListingInput:
    """Everything the listings show; all of it already committed (the pointer) or about to be."""

    repo: str
    snapshot_format: str
    public_url: str
    pointer: Pointer
    fingerprint: str
    records: tuple[PackageRecord, ...]
    webseeds: tuple[str, ...]
    templates_dir: Path | None = None


@dataclass(frozen=True)
class Crumb:
    """One breadcrumb: a label and the repository directory it names ("" = root)."""

    label: str
    dir: str


@dataclass(frozen=True)
class Subdir:
    """An immediate subdirectory of a browse page's directory."""

    name: str
    dir: str


@dataclass(frozen=True)
class MirrorLink:
    """A direct link to a file on one HTTP mirror (webseed)."""

    label: str
    url: str


# --- href helpers (the only way templates get an href) ------------------------------------------


def relative_href(page_key: str, target_key: str) -> str:
    """The href from the page at `page_key` to the object at `target_key`, both relative to the
    destination root; each segment percent-encoded (`+`, space, `#`, `?`, `%` and UTF-8 safe)."""
    page_dir = page_key.split("/")[:-1]
    target = target_key.split("/")
    common = 0
    while common < len(page_dir) and common < len(target) - 1 and page_dir[common] == target[common]:
        common += 1
    ups = "../" * (len(page_dir) - common)
    return ups + quote_path("/".join(target[common:]))


def browse_key(directory: str) -> str:
    """Key of the browse page of a repository directory ("" = the root); always `…/index.html`."""
    return "browse/index.html" if directory == "" else f"browse/{directory}/index.html"


def magnet_href(magnet: str) -> str:
    """A magnet URI as an href, refused unless it is a percent-encoded `magnet:?…` (autoescape does
    not stop other schemes)."""
    if not _MAGNET.match(magnet):
        raise ValueError(f"{magnet!r}: not a percent-encoded magnet URI")
    return magnet


def mirror_links(path: str, webseeds: Iterable[str]) -> list[MirrorLink]:
    """The file at `path` on each webseed, labelled by host."""
    return [MirrorLink(label=urlsplit(base).netloc, url=join_url(base, path)) for base in webseeds]


# --- text filters ---------------------------------------------------------------------------------


def filesize(size: int) -> str:
    """Human size with binary units: 512 B, 1.5 KiB, 20.0 MiB."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} PiB"


def exact_bytes(size: int) -> str:
    """`1,234,567 bytes` (fixed separator: no locale)."""
    return f"{size:,} bytes"


def normalize_fingerprint(fingerprint: str) -> str:
    """40 (v4) or 64 (v5) upper-case hex digits, spaces removed; anything else is refused."""
    fpr = fingerprint.replace(" ", "").upper()
    if not _FINGERPRINT.match(fpr):
        raise ConfigError(
            f"{fingerprint!r}: signing key fingerprint is not 40 or 64 hex digits; pass the full fingerprint"
        )
    return fpr


def group_fingerprint(fingerprint: str) -> str:
    """`ABCD 1234 …`: the fingerprint in groups of four, as users compare it."""
    fpr = normalize_fingerprint(fingerprint)
    return " ".join(fpr[i : i + 4] for i in range(0, len(fpr), 4))


def basename(path: str) -> str:
    return path.rpartition("/")[2]


def synopsis(description: str) -> str:
    """The first line of a package description (Debian: the synopsis)."""
    return description.strip().split("\n", 1)[0].strip()


def shell_quote(value: object) -> str:
    """One shell word (POSIX single quotes when needed)."""
    return shlex.quote(str(value))


# --- environment ---------------------------------------------------------------------------------


@jinja2.pass_context
def _href_filter(ctx: Context, key: str) -> str:
    return relative_href(str(ctx["page_key"]), key)


@jinja2.pass_context
def _browse_href_filter(ctx: Context, directory: str) -> str:
    return relative_href(str(ctx["page_key"]), browse_key(directory))


@jinja2.pass_context
def _mirror_links_filter(ctx: Context, path: str) -> list[MirrorLink]:
    return mirror_links(path, ctx["webseeds"])


def make_environment(templates_dir: Path | None = None) -> jinja2.Environment:
    """The one jinja2 environment: the operator's directory first, then the built-in templates."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(jinja2.FileSystemLoader(BUILTIN_TEMPLATES))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        # select_autoescape() is False for *.html.j2: escape everything (recipe.sh.j2 opts out).
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        href=_href_filter,
        browse_href=_browse_href_filter,
        magnet_href=magnet_href,
        mirror_links=_mirror_links_filter,
        filesize=filesize,
        bytes=exact_bytes,
        fingerprint=group_fingerprint,
        basename=basename,
        synopsis=synopsis,
        shq=shell_quote,
    )
    return env


def _render(env: jinja2.Environment, template: str, context: Mapping[str, Any], where: Path | None) -> str:
    try:
        return env.get_template(template).render(context)
    except jinja2.TemplateError as exc:
        place = f"{where} or {BUILTIN_TEMPLATES}" if where is not None else str(BUILTIN_TEMPLATES)
        raise ConfigError(f"{template}: {type(exc).__name__}: {exc}; fix the template (searched in {place})") from exc


# --- checks ----------------------------------------------------------------------------------------


def _check_http_url(url: str, what: str) -> str:
    if _URL_UNSAFE.search(url):
        raise ConfigError(f"{url!r}: {what} URL contains whitespace or control characters; percent-encode them")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{url!r}: {what} URL must be http(s)://host/…; fix it in the settings")
    return url.rstrip("/")


def _check_path(path: str) -> None:
    segments = path.split("/")
    if not path or path.startswith("/") or any(s in ("", ".", "..") for s in segments) or _PATH_UNSAFE.search(path):
        raise SnapshotError(f"{path!r}: not a clean relative repository path; fix the snapshot and re-run")


def _checked(listing: ListingInput) -> tuple[str, str, tuple[str, ...]]:
    """Validate what ends up in hrefs or in the shell recipe: (public_url, fingerprint, webseeds)."""
    if listing.snapshot_format not in FORMAT_LABELS:
        raise ConfigError(f"{listing.snapshot_format!r}: unknown snapshot format; use debian, flat or arch")
    public_url = _check_http_url(listing.public_url, "public")
    webseeds = tuple(_check_http_url(w, "webseed") for w in listing.webseeds)
    fingerprint = normalize_fingerprint(listing.fingerprint)
    for record in listing.records:
        _check_path(record.path)
        if record.magnet is not None:
            magnet_href(record.magnet)
    magnet_href(listing.pointer.magnet)
    return public_url, fingerprint, webseeds


# --- the user recipe -------------------------------------------------------------------------------


def example_package(records: Iterable[PackageRecord]) -> PackageRecord | None:
    """The package the recipe fetches: the first non-empty one (a zero-length file has no torrent)."""
    return next((r for r in records if r.size > 0 and r.torrent is not None), None)


def _recipe(
    env: jinja2.Environment,
    listing: ListingInput,
    example: PackageRecord | None,
    *,
    public_url: str,
    fingerprint: str,
) -> str:
    package: dict[str, str | None] | None = None
    if example is not None:
        if example.torrent is None:
            raise ValueError(f"{example.path}: a zero-length file has no torrent; pick another example")
        _check_path(example.path)
        name = basename(example.path)
        package = {
            "path": example.path,
            "torrent_url": join_url(public_url, example.torrent),
            "metalink_url": join_url(public_url, example.metalink),
            "magnet": None if example.magnet is None else magnet_href(example.magnet),
            "file": f"{PACKAGES_DIR}/{name}",
            "metalink_file": f"{METALINK_DIR}/{name}",
        }
    context = {
        "repo": listing.repo,
        "pointer_repo": listing.pointer.repo,
        "public_url": public_url,
        "fingerprint": fingerprint,
        "flags": ARIA2_FLAGS,
        "packages_dir": PACKAGES_DIR,
        "metalink_dir": METALINK_DIR,
        "example": package,
    }
    text = _render(env, RECIPE_TEMPLATE, context, listing.templates_dir)
    return text.rstrip("\n") + "\n"


def user_recipe(listing: ListingInput, example: PackageRecord | None) -> str:
    """The bash script the front page shows: fetch and verify the key, the pointer, the index and
    `example` with aria2c, gpgv, zstd, sha256sum and jq. Runnable from an empty directory."""
    public_url, fingerprint, _ = _checked(listing)
    env = make_environment(listing.templates_dir)
    return _recipe(env, listing, example, public_url=public_url, fingerprint=fingerprint)


# --- the listings ----------------------------------------------------------------------------------


@dataclass
class _Dir:
    subdirs: set[str]
    packages: list[PackageRecord]


def _tree(records: Iterable[PackageRecord]) -> dict[str, _Dir]:
    """Every directory holding a package, every ancestor of one, and the root."""
    tree: dict[str, _Dir] = {"": _Dir(set(), [])}
    for record in records:
        parent = record.path.rpartition("/")[0]
        tree.setdefault(parent, _Dir(set(), [])).packages.append(record)
        child = parent
        while child:
            up = child.rpartition("/")[0]
            node = tree.setdefault(up, _Dir(set(), []))
            if child in node.subdirs:
                break
            node.subdirs.add(child)
            child = up
    return tree


def _crumbs(repo: str, directory: str) -> list[Crumb]:
    crumbs = [Crumb(repo, "")]
    if directory:
        parts = directory.split("/")
        crumbs.extend(Crumb(part, "/".join(parts[: i + 1])) for i, part in enumerate(parts))
    return crumbs


def render_listings(listing: ListingInput) -> tuple[Artifact, ...]:
    """`index.html`, `browse/…/index.html` for every directory, `style.css`; sorted by key."""
    public_url, fingerprint, webseeds = _checked(listing)
    env = make_environment(listing.templates_dir)
    where = listing.templates_dir
    records = tuple(sorted(listing.records, key=lambda r: r.path))
    example = example_package(records)
    common: dict[str, Any] = {
        "repo": listing.repo,
        "snapshot_format": listing.snapshot_format,
        "format_label": FORMAT_LABELS[listing.snapshot_format],
        "public_url": public_url,
        "pointer": listing.pointer,
        "fingerprint": fingerprint,
        "webseeds": webseeds,
        "package_count": len(records),
        "total_size": sum(r.size for r in records),
    }
    artifacts: list[Artifact] = []

    front = {
        **common,
        "page_key": FRONT_KEY,
        "recipe": _recipe(env, listing, example, public_url=public_url, fingerprint=fingerprint),
        "example": example,
        "flags": " ".join(ARIA2_FLAGS),
        "index_signature": listing.pointer.index.path + ".sig",
        "mirrors": [MirrorLink(label=base, url=base + "/") for base in webseeds],
    }
    artifacts.append(make_artifact(FRONT_KEY, _page(env, FRONT_TEMPLATE, front, where)))

    tree = _tree(records)
    for directory in sorted(tree):
        node = tree[directory]
        page = {
            **common,
            "page_key": browse_key(directory),
            "dir": directory,
            "crumbs": _crumbs(listing.repo, directory),
            "subdirs": [Subdir(basename(d), d) for d in sorted(node.subdirs)],
            "packages": node.packages,
        }
        artifacts.append(make_artifact(page["page_key"], _page(env, BROWSE_TEMPLATE, page, where)))

    artifacts.append(make_artifact(STYLE_KEY, _style(env, where)))
    return tuple(sorted(artifacts, key=lambda a: a.key))


def _page(env: jinja2.Environment, template: str, context: Mapping[str, Any], where: Path | None) -> bytes:
    return (_render(env, template, context, where).rstrip("\n") + "\n").encode("utf-8")


def _style(env: jinja2.Environment, where: Path | None) -> bytes:
    """The style sheet, copied as is (not a template), the operator's first."""
    assert env.loader is not None
    try:
        source, _, _ = env.loader.get_source(env, STYLE_TEMPLATE)
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(f"{STYLE_TEMPLATE}: not found in {where} or {BUILTIN_TEMPLATES}") from exc
    return source.encode("utf-8")
