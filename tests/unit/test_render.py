"""Listings: escaping, link integrity, one page per directory, jinja2 settings, determinism, recipe."""

from __future__ import annotations

import hashlib
import html
import json
import os
import posixpath
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import jinja2
import jsonschema
import pytest

from pipeline import render
from pipeline.errors import ConfigError, SnapshotError
from pipeline.model import Artifact, DeltaRef, MirrorStatus, PackageRecord, Pointer, ShardRef, SignatureRef
from pipeline.objects import (
    APT_METHOD_KEY,
    CLIENT_KEYS,
    GIVE_BACK_KEY,
    GIVE_BACK_SERVICE_KEY,
    GIVE_BACK_TIMER_KEY,
    PACMAN_XFER_KEY,
    RECIPE_KEY,
    UPDATE_KEY,
    browse_key,
    content_type_for,
)
from pipeline.render import (
    ARIA2_FLAGS,
    FETCH_TIMEOUT,
    KEY_MAX_BYTES,
    MIN_RATE,
    POINTER_MAX_BYTES,
    ListingInput,
    _crumbs,
    _Tree,
    duration,
    example_package,
    filesize,
    give_back_files,
    give_back_seed_flags,
    group_fingerprint,
    make_environment,
    relative_href,
    render_listings,
    rfc3339,
    root_href,
    update_recipe,
    user_recipe,
    words,
)
from tests.tools import require_tools

GIVE_BACK_KEYS = {GIVE_BACK_KEY, GIVE_BACK_SERVICE_KEY, GIVE_BACK_TIMER_KEY}
SCRIPT_KEYS = {RECIPE_KEY, UPDATE_KEY}  # the user scripts (update.sh: formats with package names)
FPR = "dc87fd8b47ffa81270054cefe2d360866d18689b"
PUBLIC = "https://seed.example.org/debian"
WEBSEEDS = ("https://mirror-a.example.net/debian", "http://mirror-b.example.com/pub/debian/")
EVIL_NAME = "<img src=x onerror=alert(1)>&\"'.deb"
EVIL_PATH = f"evil/{EVIL_NAME}"
EVIL_DESCRIPTION = "<script>alert(1)</script> & <b>bold</b>"
HELLO = "pool/main/h/hello/hello_2.12-1_amd64.deb"
ODD = "pool/main/libs/libstdc++6 1:2.0~rc1 #?%é.deb"
EMPTY = "pool/main/e/empty/empty_1.0_all.deb"
ARCH = "extra/os/x86_64/pacman-6.1-1-x86_64.pkg.tar.zst"

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "link", "body", "header", "nav", "main", "footer", "section",
    "h1", "h2", "h3", "p", "a", "ul", "ol", "li", "dl", "dt", "dd", "div", "table", "thead", "tbody", "tr",
    "th", "td", "span", "code", "pre", "time",
}  # fmt: skip


def record(path: str, size: int = 1000, **extra: object) -> PackageRecord:
    empty = size == 0
    return PackageRecord(
        path=path,
        size=size,
        sha256=hashlib.sha256(path.encode()).hexdigest(),
        infohash=None if empty else "12" * 20,
        piece_size=None if empty else 16384,
        torrent=None if empty else f"torrents/{path}.torrent",
        metalink=f"metalinks/{path}.meta4",
        magnet=None if empty else f"magnet:?xt=urn:btih:{'12' * 20}&dn=x%20y&xl={size}",
        **extra,  # type: ignore[arg-type]
    )


def shard(name: str, number: int, delta: bool = False) -> ShardRef:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return ShardRef(
        name=name,
        path=f"index/shards/{digest[:16]}.json.zst",
        size=2345 * number,
        sha256=digest,
        uncompressed_size=9876 * number,
        uncompressed_sha256=hashlib.sha256(digest.encode()).hexdigest(),
        packages=3 * number,
        torrent=f"index/shards/{digest[16:32]}.torrent",
        infohash="cd" * 20,
        delta=DeltaRef("ef" * 32, f"index/shards/{digest[:16]}.from-{'ef' * 8}.zst", 321, "01" * 32) if delta else None,
    )


SHARDS = (shard("bookworm/contrib/amd64", 1), shard("bookworm/main/all", 2), shard("bookworm/main/amd64", 3, True))
POINTER = Pointer(
    repo="demo",
    sequence=42,
    generated="2026-05-01T12:00:00Z",
    expires="2026-05-08T12:00:00Z",
    shards=SHARDS,
)

RECORDS = tuple(
    sorted(
        (
            record(EVIL_PATH),
            record(HELLO, 58_000, name="hello", version="2.12-1", arch="amd64", description=EVIL_DESCRIPTION),
            record(ODD, 3_500_000),
            record(EMPTY, 0),
            record(ARCH, 900_000, signature=SignatureRef(ARCH + ".sig", 566, "ef" * 32)),
            record("top-level.deb", 10),
        ),
        key=lambda r: r.path,
    )
)


def listing(**changes: object) -> ListingInput:
    base = ListingInput(
        repo="demo",
        snapshot_format="debian",
        public_url=PUBLIC,
        pointer=POINTER,
        fingerprint=FPR,
        records=RECORDS,
        webseeds=WEBSEEDS,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class PageParser(HTMLParser):
    """Tag names, hrefs (entities decoded by the parser), text, style attributes of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.hrefs: list[str] = []
        self.text: list[str] = []
        self.styled: list[str] = []
        self.pre: list[str] = []  # the text of each <pre class="recipe"> (a whole script), in page order
        self.commands: list[str] = []  # the text of each <pre class="commands"> (lines to type)
        self.headings: list[str] = []  # the text of each h2 and h3, in page order
        self._in_pre: list[str] | None = None
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.hrefs.append(value)
            if name == "style" or name.startswith("on"):
                self.styled.append(f"{tag} {name}")
        if tag == "pre":
            self._in_pre = self.commands if ("class", "commands") in attrs else self.pre
            self._in_pre.append("")
        if tag in ("h2", "h3"):
            self._in_heading = True
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_pre = None
        if tag in ("h2", "h3"):
            self._in_heading = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_heading:
            self.headings[-1] += data
        if self._in_pre is not None:
            self._in_pre[-1] += data


def parse(artifact: Artifact) -> PageParser:
    parser = PageParser()
    parser.feed(artifact.data.decode("utf-8"))
    parser.close()
    return parser


def pages(artifacts: tuple[Artifact, ...]) -> dict[str, PageParser]:
    return {a.key: parse(a) for a in artifacts if a.key.endswith(".html")}


def expected_published_keys(data: ListingInput) -> set[str]:
    """What the other stages publish beside the listings (DESIGN section 4)."""
    keys = {"latest.asc", "signing-key.asc", "signing-key.gpg", *CLIENT_KEYS}
    keys |= {key for key in data.pointer.keys if ".from-" not in key}  # deltas: for the scripts only
    for rec in data.records:
        keys.add(rec.metalink)
        if rec.torrent is not None:
            keys.add(rec.torrent)
    return keys


def resolve(page_key: str, href: str) -> str:
    """The destination key a relative href names, as a browser would resolve it under any prefix."""
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_key), href))
    return unquote(joined, errors="strict")


def check_links(data: ListingInput, artifacts: tuple[Artifact, ...]) -> dict[str, set[str]]:
    """Every href on every page: relative ones resolve to a known key, absolute ones are http(s) or
    magnet. Returns the resolved keys per page."""
    known = {a.key for a in artifacts} | expected_published_keys(data)
    resolved: dict[str, set[str]] = {}
    for key, page in pages(artifacts).items():
        resolved[key] = set()
        for href in page.hrefs:
            scheme = urlsplit(href).scheme
            if href == "data:,":  # the empty favicon: no /favicon.ico request, no 404
                continue
            if scheme:
                assert scheme in ("http", "https", "magnet"), (key, href)
                continue
            assert re.fullmatch(r"[A-Za-z0-9._~%/-]+", href), (key, href)  # every segment quoted
            assert not href.endswith("/"), (key, href)  # object stores serve no directory index
            target = resolve(key, href)
            assert not target.startswith(".."), (key, href)
            assert target in known, (key, href, target)
            resolved[key].add(target)
    return resolved


def expected_dirs(records: tuple[PackageRecord, ...]) -> set[str]:
    dirs = {""}
    for rec in records:
        parts = rec.path.split("/")[:-1]
        dirs |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
    return dirs


def browse_page(directory: str) -> str:
    return "browse/index.html" if not directory else f"browse/{directory}/index.html"


# --- escaping --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["flat", "debian", "arch"])
def test_hostile_names_and_descriptions_are_escaped(fmt: str) -> None:
    artifacts = render_listings(listing(snapshot_format=fmt))
    for artifact in artifacts:
        text = artifact.data.decode("utf-8")
        if artifact.key.endswith(".sh"):  # shell text (names shell-quoted), served as plain text
            assert artifact.content_type == "text/plain; charset=utf-8", artifact.key
            continue
        assert "<img" not in text and "<script" not in text and "<b>" not in text, artifact.key
    parsed = pages(artifacts)
    for key, page in parsed.items():
        assert page.tags <= ALLOWED_TAGS, (key, page.tags - ALLOWED_TAGS)
        assert not page.styled, (key, page.styled)
    evil = parsed["browse/evil/index.html"]
    assert EVIL_NAME in "".join(evil.text)
    hello = parsed["browse/pool/main/h/hello/index.html"]
    assert EVIL_DESCRIPTION in "".join(hello.text)


def test_hrefs_decode_back_to_the_file_names() -> None:
    artifacts = render_listings(listing())
    parsed = pages(artifacts)
    evil = parsed["browse/evil/index.html"].hrefs
    assert resolve("browse/evil/index.html", relative(evil, ".torrent")) == f"torrents/{EVIL_PATH}.torrent"
    assert resolve("browse/evil/index.html", relative(evil, ".meta4")) == f"metalinks/{EVIL_PATH}.meta4"
    mirrors = [h for h in evil if h.startswith("http")]
    assert [unquote(urlsplit(h).path) for h in mirrors] == [f"/debian/{EVIL_PATH}", f"/pub/debian/{EVIL_PATH}"]
    assert all('"' not in h and "<" not in h and "'" not in h for h in evil)

    odd = parsed["browse/pool/main/libs/index.html"].hrefs
    torrent = relative(odd, ".torrent")
    assert "%2B%2B6%201%3A2.0~rc1%20%23%3F%25%C3%A9.deb.torrent" in torrent
    assert resolve("browse/pool/main/libs/index.html", torrent) == f"torrents/{ODD}.torrent"
    assert f"https://mirror-a.example.net/debian/{ODD}" in [unquote(h) for h in odd if h.startswith("http")]


def relative(hrefs: list[str], suffix: str) -> str:
    (match,) = [h for h in hrefs if not urlsplit(h).scheme and h.endswith(suffix)]
    return match


# --- link integrity and the tree -------------------------------------------------------------------


def test_every_relative_href_resolves_to_a_published_key() -> None:
    data = listing()
    artifacts = render_listings(data)
    resolved = check_links(data, artifacts)
    front = resolved["index.html"]
    assert {"signing-key.asc", "signing-key.gpg", "latest.asc", "browse/index.html", "style.css"} <= front
    assert {key for s in SHARDS for key in (s.path, s.torrent)} <= front  # the shard table
    assert not {s.delta.path for s in SHARDS if s.delta} & front  # deltas are for the scripts
    linked = set().union(*resolved.values())
    # every package torrent/metalink is reachable, and the client of this format (Debian: the apt method)
    assert expected_published_keys(data) - linked == {PACMAN_XFER_KEY} and APT_METHOD_KEY in linked
    assert {a.key for a in artifacts} - linked == set()  # and every page


def test_link_check_catches_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "front.html.j2").write_text(
        '{% extends "base.html.j2" %}{% block content %}<a href="{{ "nowhere.html" | href }}">x</a>{% endblock %}'
    )
    data = listing(templates_dir=tmp_path)
    with pytest.raises(AssertionError):
        check_links(data, render_listings(data))


def test_one_browse_page_per_directory() -> None:
    artifacts = render_listings(listing())
    keys = {a.key for a in artifacts}
    dirs = expected_dirs(RECORDS)
    assert {"", "pool", "pool/main", "pool/main/h", "pool/main/h/hello", "evil", "extra/os/x86_64"} <= dirs
    assert {k for k in keys if k.startswith("browse/")} == {browse_page(d) for d in dirs}
    assert keys == {browse_page(d) for d in dirs} | {"index.html", "style.css"} | GIVE_BACK_KEYS | SCRIPT_KEYS
    parsed = pages(artifacts)
    for directory in dirs:
        key = browse_page(directory)
        hrefs = [h for h in parsed[key].hrefs if not urlsplit(h).scheme]
        children = {d for d in dirs if d and posixpath.dirname(d) == directory}
        for child in children:
            assert f"{quote_segment(posixpath.basename(child))}/index.html" in hrefs, (key, child)
        ancestors = [a for a in dirs if a != directory and (a == "" or directory.startswith(a + "/"))]
        for ancestor in ancestors:  # breadcrumbs
            assert browse_page(ancestor) in {resolve(key, h) for h in hrefs}, (key, ancestor)
        assert all(h.endswith(("index.html", ".torrent", ".meta4", ".asc", ".gpg", ".css")) for h in hrefs)


def quote_segment(segment: str) -> str:
    return quote(segment, safe="")


def test_package_rows_show_what_is_known() -> None:
    parsed = pages(render_listings(listing()))
    hello = parsed["browse/pool/main/h/hello/index.html"]
    text = " ".join(hello.text)
    assert "hello 2.12-1 amd64" in text and "56.6 KiB" in text and "58,000 bytes" in text
    assert RECORDS[[r.path for r in RECORDS].index(HELLO)].sha256 in text
    assert any(h.startswith("magnet:?xt=urn:btih:") and "&dn=" in h for h in hello.hrefs)
    arch = parsed["browse/extra/os/x86_64/index.html"].hrefs
    assert f"https://mirror-a.example.net/debian/{ARCH}.sig" in arch


def test_zero_length_file_has_no_torrent_or_magnet() -> None:
    parsed = pages(render_listings(listing()))
    page = parsed["browse/pool/main/e/empty/index.html"]
    assert not [h for h in page.hrefs if h.endswith(".torrent") or h.startswith("magnet:")]
    assert [h for h in page.hrefs if h.endswith(".meta4")] == [
        "../../../../../metalinks/pool/main/e/empty/empty_1.0_all.deb.meta4"
    ]
    assert "0 B" in " ".join(page.text)


def test_no_webseeds_means_no_mirror_links() -> None:
    data = listing(webseeds=())
    artifacts = render_listings(data)
    for page in pages(artifacts).values():
        assert not [h for h in page.hrefs if h.startswith("http")]
    check_links(data, artifacts)


def test_empty_repository_still_has_a_front_page_and_root() -> None:
    data = listing(records=())
    artifacts = render_listings(data)
    assert [a.key for a in artifacts] == sorted(
        ["browse/index.html", "index.html", "style.css", RECIPE_KEY, *GIVE_BACK_KEYS]  # no package: no update.sh
    )
    check_links(data, artifacts)
    assert "no non-empty package" in user_recipe(data, None)


# --- front page ------------------------------------------------------------------------------------


def test_front_page_content() -> None:
    data = listing()
    artifacts = render_listings(data)
    front = parse(next(a for a in artifacts if a.key == "index.html"))
    text = " ".join(" ".join(front.text).split())
    assert "per-package torrents with HTTP webseeds, a signed index" in text
    assert "DC87 FD8B 47FF A812 7005 4CEF E2D3 6086 6D18 689B" in text
    assert "42" in text and POINTER.generated in text and POINTER.expires in text
    assert "does not start from a magnet" in text
    example = example_package(data.records)
    assert example is not None and example.path == EVIL_PATH  # first non-empty, in path order
    recipe = user_recipe(data, example)
    assert recipe in front.pre  # one source for page and script
    scripts = {a.key: a.data.decode("utf-8") for a in artifacts if a.key in SCRIPT_KEYS}
    assert scripts[RECIPE_KEY] == recipe and scripts[UPDATE_KEY] in front.pre
    # what to do comes first: the tools, the key, apt, then the aria2-only path; the details after it
    headings = front.headings
    assert headings[:4] == ["Get started", "apt", "With aria2 alone", "The recipe, step by step"], headings
    assert "sudo apt install aria2 gpgv jq zstd" in text


def test_artifacts_have_listing_headers() -> None:
    by_key = {a.key: a for a in render_listings(listing())}
    assert by_key["index.html"].content_type == "text/html; charset=utf-8"
    assert by_key["style.css"].content_type == "text/css"
    assert {a.cache_control for a in by_key.values()} == {"no-cache"}


def test_style_sheet_is_self_contained_and_wraps() -> None:
    css = next(a for a in render_listings(listing()) if a.key == "style.css").data.decode()
    assert "overflow-wrap: anywhere" in css and "overflow-x: auto" in css
    assert "url(" not in css and "@import" not in css and "http" not in css
    for artifact in render_listings(listing()):
        text = artifact.data.decode()
        assert "<style" not in text and "<script" not in text and "style=" not in text


# --- jinja2 settings, overrides, determinism -------------------------------------------------------


def test_autoescape_and_strict_undefined_are_on() -> None:
    env = make_environment()
    assert env.autoescape is True
    assert isinstance(env.undefined, type) and issubclass(env.undefined, jinja2.StrictUndefined)
    assert env.from_string("{{ x }}").render(x="<b>&") == "&lt;b&gt;&amp;"
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing }}").render()


def test_template_with_a_missing_variable_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "browse.html.j2").write_text("{{ no_such_variable }}")
    with pytest.raises(ConfigError, match="browse.html.j2") as caught:
        render_listings(listing(templates_dir=tmp_path))
    assert isinstance(caught.value.__cause__, jinja2.UndefinedError)


def test_operator_templates_override_the_front_page(tmp_path: Path) -> None:
    (tmp_path / "front.html.j2").write_text(
        '{% extends "base.html.j2" %}{% block content %}<p>Operator page for {{ repo }} {{ x }}</p>{% endblock %}'
    )
    builtin = {a.key: a for a in render_listings(listing())}
    with pytest.raises(ConfigError):  # StrictUndefined applies to operator templates too
        render_listings(listing(templates_dir=tmp_path))
    (tmp_path / "front.html.j2").write_text(
        '{% extends "base.html.j2" %}{% block content %}<p>Operator page for {{ repo }}</p>{% endblock %}'
    )
    custom = {a.key: a for a in render_listings(listing(templates_dir=tmp_path))}
    assert b"Operator page for demo" in custom["index.html"].data
    assert b"Operator page" not in builtin["index.html"].data
    assert {k: v for k, v in custom.items() if k != "index.html"} == {
        k: v for k, v in builtin.items() if k != "index.html"
    }


class KeptTemplates:
    """A CompiledTemplates in memory: the state cache's two methods over a dict."""

    def __init__(self) -> None:
        self.code: dict[str, bytes] = {}
        self.dumped = 0

    def template_code(self, key: str) -> bytes | None:
        return self.code.get(key)

    def dump_template_code(self, key: str, code: bytes) -> None:
        self.code[key] = code
        self.dumped += 1


def test_templates_compiled_by_one_run_are_not_compiled_by_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = KeptTemplates()
    first = render_listings(listing(compiled=kept))
    assert first == render_listings(listing())
    assert len(kept.code) >= 3  # at least base, front and browse pages
    assert all(code for code in kept.code.values())

    def compile_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("a kept template was compiled again")

    monkeypatch.setattr(jinja2.Environment, "compile", compile_again)
    assert render_listings(listing(compiled=kept)) == first
    assert kept.dumped == len(kept.code)  # nothing compiled or written the second time
    with pytest.raises(AssertionError, match="compiled again"):
        render_listings(listing())  # without the kept code, the same run would compile


def test_an_operator_template_changed_since_it_was_compiled_is_compiled_again(tmp_path: Path) -> None:
    kept = KeptTemplates()
    front = tmp_path / "front.html.j2"
    front.write_text("<p>first {{ repo }}</p>")

    def front_page() -> bytes:
        pages = render_listings(listing(templates_dir=tmp_path, compiled=kept))
        return next(a.data for a in pages if a.key == "index.html")

    assert front_page() == b"<p>first demo</p>\n"
    dumped = kept.dumped
    front.write_text("<p>second {{ repo }}</p>")
    assert front_page() == b"<p>second demo</p>\n"
    assert kept.dumped == dumped + 1  # only the changed template compiled, and kept in its place
    assert front_page() == b"<p>second demo</p>\n" and kept.dumped == dumped + 1


def test_a_new_state_takes_compiled_templates_from_the_users_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "cache" / "templates"
    first_state = KeptTemplates()
    first = render_listings(listing(compiled=render.KeptInEither(first_state, render.TemplateCodeFiles(directory))))
    assert sorted(p.name for p in directory.iterdir()) == sorted(f"{key}.code" for key in first_state.code)
    assert directory.stat().st_mode & 0o777 == 0o700

    def compile_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("a kept template was compiled again")

    monkeypatch.setattr(jinja2.Environment, "compile", compile_again)
    new_state = KeptTemplates()  # a run with a new state file
    kept = render.KeptInEither(new_state, render.TemplateCodeFiles(directory))
    assert render_listings(listing(compiled=kept)) == first
    assert new_state.code == first_state.code  # copied into the state as read


def test_compiled_templates_in_a_directory_others_may_write_are_not_used(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    files = render.TemplateCodeFiles(directory)
    files.dump_template_code("k", b"code")
    assert files.template_code("k") is None and not list(directory.iterdir())
    directory.chmod(0o700)
    fresh = render.TemplateCodeFiles(directory)
    fresh.dump_template_code("k", b"code")
    assert fresh.template_code("k") == b"code" and [p.name for p in directory.iterdir()] == ["k.code"]


def test_operator_templates_autoescape_too(tmp_path: Path) -> None:
    (tmp_path / "front.html.j2").write_text("<p>{{ repo }}</p>")
    front = next(a for a in render_listings(listing(templates_dir=tmp_path, repo="<i>x</i>")) if a.key == "index.html")
    assert front.data == b"<p>&lt;i&gt;x&lt;/i&gt;</p>\n"


def test_deterministic() -> None:
    first = render_listings(listing())
    second = render_listings(listing(records=tuple(reversed(RECORDS))))
    assert first == second
    assert [a.key for a in first] == sorted(a.key for a in first)


def test_same_pages_under_any_prefix() -> None:
    one = render_listings(listing())
    other = render_listings(listing(public_url="http://127.0.0.1:8780/x/y"))
    differ = {a.key for a, b in zip(one, other, strict=True) if a != b}
    assert differ == {"index.html"} | GIVE_BACK_KEYS | SCRIPT_KEYS  # only the recipes name the public URL


# --- inputs that must be refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"fingerprint": "1234"},
        {"fingerprint": FPR + "'; rm -rf ~; '"},
        {"public_url": "javascript:alert(1)"},
        {"public_url": "https://seed.example.org/a b"},
        {"webseeds": ("file:///srv/mirror",)},
        {"snapshot_format": "rpm"},
    ],
)
def test_bad_settings_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        render_listings(listing(**changes))


@pytest.mark.parametrize("path", ["../etc/passwd.deb", "/abs.deb", "a//b.deb", "a/./b.deb", "a/b\n.deb"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(SnapshotError):
        render_listings(listing(records=(record(path),)))


def test_non_magnet_magnet_is_refused() -> None:
    bad = replace(record("a/b.deb"), magnet="javascript:alert(1)")
    with pytest.raises(ValueError, match="magnet"):
        render_listings(listing(records=(bad,)))


# --- helpers ---------------------------------------------------------------------------------------


def test_relative_href() -> None:
    assert relative_href("index.html", "browse/index.html") == "browse/index.html"
    assert relative_href("browse/a/b/index.html", "browse/a/index.html") == "../index.html"
    assert relative_href("browse/a/index.html", "browse/a/c d/index.html") == "c%20d/index.html"
    assert relative_href("browse/index.html", "style.css") == "../style.css"
    assert relative_href("browse/torrents/index.html", "torrents/torrents/x+y.torrent") == (
        "../../torrents/torrents/x%2By.torrent"
    )
    assert relative_href("browse/a/index.html", "browsex/y") == "../../browsex/y"  # a prefix, not a segment
    assert relative_href("browse/a/index.html", "browse") == "../../browse"
    assert relative_href("browse/a/index.html", "browse/a") == "../a"


@pytest.mark.parametrize("directory", ["", "pool", "pool/main/a/abc", "c d/x+y"])
def test_crumbs_and_root_link_where_relative_href_does(directory: str) -> None:
    """A crumb's href and the fixed links (`root` + key) name what `relative_href` names from that page."""
    page = browse_key(directory)
    crumbs = _crumbs("repo", directory)
    assert [c.dir for c in crumbs] == [""] + ["/".join(directory.split("/")[: i + 1]) for i in range(len(crumbs) - 1)]
    assert [c.label for c in crumbs] == ["repo", *(directory.split("/") if directory else [])]
    assert _crumbs("other", directory)[0].label == "other"  # the parents' crumbs are made once per repository
    for crumb in crumbs:
        assert crumb.href == relative_href(page, browse_key(crumb.dir))
    for key in ("style.css", "index.html", "latest.asc", "browse/index.html", "mirrors/index.html"):
        assert resolve(page, root_href(page) + key) == resolve(page, relative_href(page, key)) == key
    assert root_href("index.html") == "" and root_href("mirrors/index.html") == "../"


def test_words_joins_what_is_there() -> None:
    assert words(["abc", None, "amd64"]) == "abc amd64" and words([None, None]) is None and words(["", None]) == ""


# 3 pieces a row and 1 after: 10 pieces; exactly one batch; two batches; four
@pytest.mark.parametrize("items", [3, (render._PAGE_PIECES - 1) // 3, render._PAGE_PIECES // 2, render._PAGE_PIECES])
def test_a_page_of_many_pieces_is_joined_a_batch_at_a_time_to_the_same_bytes(tmp_path: Path, items: int) -> None:
    """`_page` gives what the whole render gives, trailing newlines made one, below, at and above one batch."""
    (tmp_path / "big.j2").write_text("{% for i in items %}<li>{{ i }} é</li>\n{% endfor %}\n\n\n")
    env = make_environment(tmp_path)
    context = {"items": [f"<{n}>" for n in range(items)]}
    whole = render._render(env, "big.j2", context, tmp_path)
    page = render._page(env, "big.j2", context, tmp_path)
    assert page == (whole.rstrip("\n") + "\n").encode("utf-8")
    assert page.count(b"<li>") == items and page.endswith(b"</li>\n") and b"&lt;0&gt; \xc3\xa9" in page


def test_a_template_error_after_the_first_batch_names_the_template(tmp_path: Path) -> None:
    (tmp_path / "big.j2").write_text("{% for i in items %}{{ i }}{% endfor %}{{ no_such_variable }}")
    env = make_environment(tmp_path)
    with pytest.raises(ConfigError, match=r"^big\.j2: UndefinedError: .*fix the template") as caught:
        render._page(env, "big.j2", {"items": range(3 * render._PAGE_PIECES)}, tmp_path)
    assert isinstance(caught.value.__cause__, jinja2.UndefinedError)


def test_subdirectories_are_made_as_the_template_reads_them() -> None:
    dirs = ["pool/main/r/r-a", "pool/main/r/r-b", "pool/main/r/r-c"]
    subdirs = render._Subdirs(dirs)
    made = [render.Subdir(d.rpartition("/")[2], d) for d in dirs]
    assert list(subdirs) == made and len(subdirs) == 3 and subdirs[-1] == made[-1] and subdirs[1:] == made[1:]
    assert not render._Subdirs([]) and list(render._Subdirs([])) == []


def test_filters() -> None:
    assert [filesize(n) for n in (0, 1023, 1024, 1536, 20 * 2**20, 2**40 - 1)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "20.0 MiB",
        "1.0 TiB",
    ]
    assert group_fingerprint("dc87 fd8b" + FPR[8:]) == "DC87 FD8B 47FF A812 7005 4CEF E2D3 6086 6D18 689B"


# --- the user recipe -------------------------------------------------------------------------------


def test_user_recipe_has_the_required_steps() -> None:
    data = listing()
    example = next(r for r in RECORDS if r.path == HELLO)
    recipe = user_recipe(data, example)
    assert recipe.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in recipe
    assert "gpgv --keyring ./signing-key.gpg" in recipe
    assert "|| { rm -f pointer.json; exit 1; }" in recipe
    assert " ".join(ARIA2_FLAGS) == (
        "--seed-time=0 --bt-stop-timeout=60 --bt-tracker-connect-timeout=5 --bt-tracker-timeout=5"
        " --connect-timeout=10 --timeout=20 --max-tries=3 --lowest-speed-limit=1K --stream-piece-selector=random"
        " --bt-tracker-interval=30"
    )
    assert " ".join(ARIA2_FLAGS) in recipe
    assert recipe.count("sha256sum -c") == 1  # the package (each file fetched once)
    assert recipe.count('sha_is "') == 6  # kept JSON, a delta's base, a delta, a compressed shard (2), a JSON
    assert '--follow-torrent=mem -d "$(dirname "$ZPATH")"' in recipe
    assert "--follow-metalink" not in recipe and "signing-key.asc" not in recipe
    assert "WANT=${1:-hello}" in recipe  # by name: the current version, whichever it is
    assert "gpg --show-keys signing-key.gpg" in recipe
    assert recipe.split("\n(\n", 1)[1].rstrip().endswith("\n)")  # the body is one subshell
    assert 'command -v "$TOOL"' in recipe and "sudo apt install aria2 gpgv jq zstd" in recipe
    assert "SEEN=${XDG_STATE_HOME:-$HOME/.local/state}/mirrorseed/$REPO-$FPR.sequence" in recipe
    assert "date -u" in recipe and ".expires > $now" in recipe
    assert "FPR=DC87FD8B47FFA81270054CEFE2D360866D18689B" in recipe
    # aria2c runs in one place, with the flags, under a time limit and a file-size limit
    calls = [line.strip() for line in recipe.splitlines() if re.search(r"\baria2c [\"-]", line)]
    bounded = """(trap '' XFSZ; ulimit -f "$blocks"; exec timeout --foreground -k 5 "$seconds" aria2c "${FLAGS[@]}" """
    assert calls == [bounded + '--bt-enable-lpd="$LPD" "$@")']
    assert "LPD=${MIRRORSEED_LPD:-true}" in recipe  # LAN peers by default, the user's switch to turn it off
    assert "fetch_small signing-key.gpg 262144" in recipe
    assert "fetch_small latest.asc 262144" in recipe
    assert "&amp;" not in recipe and "&#34;" not in recipe  # shell text, not HTML


def test_recipes_enter_the_dht_at_the_first_configured_node() -> None:
    data = listing(dht_nodes=("[2001:db8::1]:6881", "router.example.org:6881", "192.0.2.7:6881"))
    recipe = user_recipe(data, data.records[0])
    assert "--enable-dht=true --dht-entry-point=router.example.org:6881" in recipe
    assert recipe.count("--dht-entry-point") == 1  # aria2 takes one; the torrents carry every node
    assert "--dht-entry-point" not in user_recipe(listing(), data.records[0])  # no nodes: aria2's defaults


@pytest.mark.parametrize("path", [HELLO, ODD, EVIL_PATH])
def test_user_recipe_is_valid_bash_and_quotes_names(path: str, tmp_path: Path) -> None:
    example = next(r for r in RECORDS if r.path == path)
    recipe = user_recipe(listing(), example)
    script = tmp_path / "recipe.sh"
    script.write_text(recipe)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    # The assignments evaluate back to the exact values (no injection through a file name); the
    # package's path, file name, torrent and magnet come from the signed index at run time.
    assignments = "\n".join(
        line for line in recipe.splitlines() if re.match(r"^(BASE|FPR|REPO|FLAGS|WANT|ARCH)=", line)
    )
    shown = subprocess.run(
        ["bash", "-c", assignments + '\nprintf "%s\\n" "$WANT" "$ARCH" "$BASE" "${FLAGS[*]}"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert shown[:4] == [example.name or path, example.arch or "", PUBLIC, " ".join(ARIA2_FLAGS)]


def test_recipe_bounds_by_default() -> None:
    """The pointer and the key give up within 60 s by default (timeout, plus 5 s to SIGKILL)."""
    for cap in (POINTER_MAX_BYTES, KEY_MAX_BYTES):
        assert FETCH_TIMEOUT + cap // MIN_RATE + 5 <= 60
    assert (POINTER_MAX_BYTES, KEY_MAX_BYTES) == (262144, 262144)
    recipe = user_recipe(listing(), next(r for r in RECORDS if r.path == HELLO))
    assert f"TIMEOUT=${{MIRRORSEED_TIMEOUT:-{FETCH_TIMEOUT}}}" in recipe
    assert f"MIN_RATE=${{MIRRORSEED_MIN_RATE:-{MIN_RATE}}}" in recipe
    assert 'fetch "$FILE" "$SIZE" --follow-torrent=mem' in recipe  # the package: its size from the index
    assert 'fetch "$ZPATH" "$ZSIZE" --follow-torrent=mem' in recipe  # a shard: its size from the pointer
    assert 'fetch_capped "$DPATH" "$DSIZE"' in recipe  # a delta: likewise


def rendered_recipes() -> list[tuple[str, str]]:
    """Every shape of published shell text: each format, with and without an example, Arch with
    and without a mirror or a signature, and the update script."""
    odd = replace(ARCH_RECORD, path="core/os/x86_64/lib'foo++ $(x).pkg.tar.zst")
    unsigned = replace(ARCH_RECORD, signature=None)
    texts = [
        ("debian.sh", user_recipe(listing(), next(r for r in RECORDS if r.path == HELLO))),
        ("debian-odd.sh", user_recipe(listing(), next(r for r in RECORDS if r.path == ODD))),
        ("debian-none.sh", user_recipe(listing(), None)),
        ("flat.sh", user_recipe(listing(snapshot_format="flat"), next(r for r in RECORDS if r.path == HELLO))),
        ("arch.sh", user_recipe(with_mirrors("arch"), ARCH_RECORD)),
        ("arch-odd.sh", user_recipe(with_mirrors("arch"), odd)),
        ("arch-unsigned.sh", user_recipe(listing(snapshot_format="arch"), unsigned)),
        ("arch-nowhere.sh", user_recipe(listing(snapshot_format="arch", webseeds=()), ARCH_RECORD)),
    ]
    for name, data in [
        ("update.sh", with_mirrors("arch")),
        ("update-nowhere.sh", listing(snapshot_format="arch", webseeds=())),
    ]:
        text = update_recipe(data)
        assert text is not None
        texts.append((name, text))
    texts.append(("give-back.sh", give_back_files(listing())[GIVE_BACK_KEY]))
    texts.append(("give-back-dht.sh", give_back_files(listing(dht_nodes=("router.example.org:6881",)))[GIVE_BACK_KEY]))
    return texts


def test_published_shell_texts_pass_shellcheck(tmp_path: Path) -> None:
    assert shutil.which("shellcheck"), "shellcheck is not installed: run ./bootstrap.sh"
    for script in ("bootstrap.sh", "ci/post-sync.sh"):  # the shell scripts shipped in the repository
        shipped = subprocess.run(
            ["shellcheck", str(Path(__file__).resolve().parents[2] / script)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    for name, text in rendered_recipes():
        (tmp_path / name).write_text(text)
        # A name like `lib'foo $(x)` is one single-quoted word (checked above): SC2016 (info) only
        # notes that `$(x)` does not expand there, which is the point.
        exclude = ["--exclude=SC2016"] if "-odd" in name else []
        checked = subprocess.run(
            ["shellcheck", "--shell=bash", *exclude, str(tmp_path / name)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


# --- give back (opt-in user seeding) ----------------------------------------------------------------


def run_give_back(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The rendered give-back.sh run with bash in `folder` (nothing listens at the example URLs)."""
    require_tools("bash")
    (folder / GIVE_BACK_KEY).write_text(give_back_files(listing())[GIVE_BACK_KEY])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORSEED_")}
    return subprocess.run(
        ["bash", GIVE_BACK_KEY], cwd=folder, env={**environment, **env}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MIRRORSEED_SEED_RATIO", "two"), ("MIRRORSEED_SEED_RATIO", "-1"), ("MIRRORSEED_SEED_RATIO", "2,0"),
        ("MIRRORSEED_SEED_MINUTES", "0"), ("MIRRORSEED_SEED_MINUTES", "0.0"), ("MIRRORSEED_SEED_MINUTES", "1h"),
        ("MIRRORSEED_UPLOAD_LIMIT", "0"), ("MIRRORSEED_UPLOAD_LIMIT", "1G"), ("MIRRORSEED_UPLOAD_LIMIT", "fast"),
        ("MIRRORSEED_MAX_TORRENTS", "0"), ("MIRRORSEED_MAX_TORRENTS", "1001"), ("MIRRORSEED_MAX_TORRENTS", "9" * 30),
        ("MIRRORSEED_LPD", "yes"), ("MIRRORSEED_TIMEOUT", "2.5"),
        ("MIRRORSEED_SEED_DIRS", "packages"), ("MIRRORSEED_SEED_DIRS", "/nonexistent"),
        ("MIRRORSEED_SEED_DIRS", "give-back.sh"), ("MIRRORSEED_SEED_DIRS", ":/tmp"),
        ("MIRRORSEED_SEED_DIRS", "/tmp\n  dir=/etc"), ("MIRRORSEED_SEED_DIRS", "/tmp\t"),
    ],
)  # fmt: skip
def test_give_back_settings_are_checked_in_one_line(tmp_path: Path, name: str, value: str) -> None:
    done = run_give_back(tmp_path, **{name: value})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(name) and done.stderr.count("\n") == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [GIVE_BACK_KEY]  # refused before doing anything


def test_give_back_outside_a_recipe_folder_says_so(tmp_path: Path) -> None:
    done = run_give_back(
        tmp_path, MIRRORSEED_SEED_MINUTES="0.5", MIRRORSEED_UPLOAD_LIMIT="300k", MIRRORSEED_LPD="false"
    )
    assert done.returncode == 1
    assert done.stderr == (
        "signing-key.gpg, packages/: not here; run the recipe in this folder first, then give-back.sh in it\n"
    )


def test_give_back_seeds_bounded_and_never_stops_at_completion() -> None:
    flags = give_back_seed_flags(("router.example.org:6881",))
    assert not any(f.startswith(("--seed-time", "--bt-stop-timeout")) for f in flags)
    assert "--bt-tracker-timeout=5" in flags and "--dht-entry-point=router.example.org:6881" in flags
    script = give_back_files(listing())[GIVE_BACK_KEY]
    seeding = script.split('"$SEED_SECONDS" aria2c', 1)[1].split("|| STATUS", 1)[0]
    for option in ('"${SEED_FLAGS[@]}"', '--bt-enable-lpd="$LPD"', "--check-integrity=true", '--seed-ratio="$RATIO"',
                   '--seed-time="$MINUTES"', '--max-overall-upload-limit="$UPLOAD"', '-j "$COUNT"',
                   "--bt-max-open-files="):  # fmt: skip
        assert option in seeding
    assert "--seed-time=0" not in script.split("SEED_FLAGS=(", 1)[1].split(")", 1)[0]
    assert "RATIO=${MIRRORSEED_SEED_RATIO:-2.0}" in script and "MINUTES=${MIRRORSEED_SEED_MINUTES:-1440}" in script


def test_give_back_seed_folders_are_checked_and_only_read_through_links(tmp_path: Path) -> None:
    script = give_back_files(listing())[GIVE_BACK_KEY]
    assert "SYSTEM_CACHES=(/var/cache/apt/archives /var/cache/pacman/pkg)" in script
    assert "#   MIRRORSEED_SEED_DIRS " in script
    # aria2's folder is always one of give-back's own (a link per torrent), never a seed folder
    assert "index-out" not in script
    assert [line for line in script.splitlines() if "dir=" in line] == [
        '    printf \'%s\\n  dir=%s\\n\' "$WORK/$IH.torrent" "$WORK/seed/$IH" >> "$WORK/seed.txt"',
        '    printf \'%s\\n  dir=%s\\n\' "$WORK/$IH.torrent" "$PWD/${ZPATH%/*}" >> "$WORK/seed.txt"',
    ]
    # folders that exist pass the check (then the key is missing); names may hold spaces
    (tmp_path / "my debs").mkdir()
    done = run_give_back(tmp_path, MIRRORSEED_SEED_DIRS=f"{tmp_path}/my debs:/tmp:")
    assert done.returncode == 1
    assert done.stderr.startswith("signing-key.gpg, packages/: not here"), done.stderr


def test_give_back_units_escape_what_they_show() -> None:
    files = give_back_files(listing(repo="50% off\nExecStart=/bin/evil"))
    service, timer = files[GIVE_BACK_SERVICE_KEY], files[GIVE_BACK_TIMER_KEY]
    assert "Description=Give back to 50%% off ExecStart=/bin/evil: seed" in service
    assert [line for line in service.splitlines() if line.startswith("ExecStart=")] == [
        "ExecStart=/bin/bash give-back.sh"
    ]
    assert "Environment=MIRRORSEED_SEED_MINUTES=1320\n" in service and "OnCalendar=daily\n" in timer
    assert "# to seed only what the recipe fetched, add Environment=MIRRORSEED_SEED_DIRS=packages\n" in service
    assert content_type_for(GIVE_BACK_KEY) == content_type_for(GIVE_BACK_TIMER_KEY) == "text/plain; charset=utf-8"


def test_front_page_shows_give_back_opt_in() -> None:
    front = next(a for a in render_listings(listing()) if a.key == "index.html").data.decode()
    section = html.unescape(front.split('<section id="give-back">', 1)[1].split("</section>", 1)[0])
    assert f"-o give-back.sh {PUBLIC}/give-back.sh" in section
    assert (
        "MIRRORSEED_SEED_RATIO=2.0 MIRRORSEED_SEED_MINUTES=1440 MIRRORSEED_UPLOAD_LIMIT=1M bash give-back.sh" in section
    )
    assert "systemctl --user enable --now mirrorseed-give-back.timer" in section
    assert {a.key for a in render_listings(listing())} >= GIVE_BACK_KEYS


def test_user_recipe_bash_n_rejects_broken_text(tmp_path: Path) -> None:
    script = tmp_path / "broken.sh"
    script.write_text(user_recipe(listing(), None) + "\nif true; then\n")
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode != 0


def test_user_recipe_refuses_a_zero_length_example() -> None:
    empty = next(r for r in RECORDS if r.size == 0)
    with pytest.raises(ValueError, match="zero-length"):
        user_recipe(listing(), empty)


def test_front_page_recipe_is_escaped_once() -> None:
    front = next(a for a in render_listings(listing()) if a.key == "index.html").data.decode()
    block = front.split('<pre class="recipe"><code>', 1)[1].split("</code></pre>", 1)[0]
    assert "&amp;&amp;" in block and "<" not in block
    assert html.unescape(block) == user_recipe(listing(), example_package(RECORDS))


# --- mirror listings -------------------------------------------------------------------------------

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EVIL_MIRROR_NAME = "<script>alert(1)</script> Mirror & <b>co</b>"
EVIL_CONTACT = '"><img src=x onerror=alert(1)> admin@example.org'
SNAPSHOT_TIME = "2026-05-01T11:00:00Z"


def mirror(url: str, status: str, country: str | None = "DE", **extra: object) -> MirrorStatus:
    fields: dict[str, object] = {
        "url": url,
        "country": country,
        "continent": None if country is None else "EU",
        "name": None,
        "contact": None,
        "bandwidth": None,
        "priority": 100,
        "status": status,
        "last_sync": "2026-05-01T08:55:00Z",
        "lag_seconds": 7500,
        "range_ok": status != "no-range",
        "sampled": 4,
        "sampled_ok": 4 if status == "ok" else 3,
        "verified_files": 10,
        "total_files": 12,
        "webseed": status in ("ok", "partial"),
        "detail": f"{status}: why",
    }
    fields.update(extra)
    return MirrorStatus(**fields)  # type: ignore[arg-type]


MIRRORS = (
    mirror(
        "https://ok.example.de/debian/",
        "ok",
        name=EVIL_MIRROR_NAME,
        contact=EVIL_CONTACT,
        bandwidth="10 Gbit/s",
        priority=50,
    ),
    mirror("https://ok2.example.de/pub/debian", "ok", name="Second DE", priority=60),
    mirror("https://partial.example.de/debian", "partial", priority=1),
    mirror("https://stale.example.fr/debian", "stale", country="FR"),
    mirror("http://norange.example.us/debian", "no-range", country="US", continent="NA"),
    mirror(
        "https://down.example.jp/debian",
        "down",
        country="JP",
        continent="AS",
        range_ok=None,
        last_sync=None,
        lag_seconds=None,
        sampled=0,
        sampled_ok=0,
        webseed=False,
    ),
    mirror("https://nocountry.example.net/x", "ok", country=None, priority=100),
)
UNLISTED_HOSTS = ("stale.example.fr", "norange.example.us", "down.example.jp")


def with_mirrors(fmt: str = "debian", **changes: object) -> ListingInput:
    base: dict[str, object] = {
        "snapshot_format": fmt,
        "mirrors": MIRRORS,
        "suites": ("bookworm", "bookworm-updates") if fmt == "debian" else ("core", "extra") if fmt == "arch" else (),
        "components": ("main", "contrib") if fmt == "debian" else (),
        "architectures": ("amd64",) if fmt == "debian" else ("x86_64",) if fmt == "arch" else (),
        "snapshot_time": SNAPSHOT_TIME,
    }
    base.update(changes)
    return listing(**base)


def by_key(data: ListingInput) -> dict[str, Artifact]:
    return {a.key: a for a in render_listings(data)}


class TableParser(HTMLParser):
    """The rows of the page's `<table class="mirrors">`: per cell its text and its elements' classes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[tuple[str, set[str]]]] = []
        self._in_table = False
        self._cell: tuple[list[str], set[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        if tag == "table":
            self._in_table = "mirrors" in classes
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag == "td":
            self._cell = ([], classes)
        elif self._cell is not None:
            self._cell[1].update(classes)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append((" ".join("".join(self._cell[0]).split()), self._cell[1]))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[0].append(data + " ")


def mirror_table(artifacts: dict[str, Artifact]) -> dict[str, list[tuple[str, set[str]]]]:
    """The status table's rows by the mirror's host."""
    parser = TableParser()
    parser.feed(artifacts["mirrors/index.html"].data.decode())
    rows = [row for row in parser.rows if row]
    hrefs = [h for h in parse(artifacts["mirrors/index.html"]).hrefs if h.startswith("http")]
    assert len(rows) == len(MIRRORS) == len(hrefs)
    return {urlsplit(href).netloc: row for href, row in zip(hrefs, rows, strict=True)}


def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "mirrors.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def list_files(artifacts: dict[str, Artifact]) -> dict[str, str]:
    return {
        k: a.data.decode()
        for k, a in artifacts.items()
        if k.startswith("mirrors/") and k.endswith((".txt", ".sources.list", ".mirrorlist"))
    }


def test_no_mirrors_means_no_mirror_pages() -> None:
    artifacts = by_key(listing())
    assert not [k for k in artifacts if k.startswith("mirrors/")]
    assert b"mirrors/" not in artifacts["index.html"].data


@pytest.mark.parametrize("fmt", ["debian", "arch", "flat"])
def test_mirror_listing_keys(fmt: str) -> None:
    keys = {k for k in by_key(with_mirrors(fmt)) if k.startswith("mirrors/")}
    kinds = {"debian": ["txt", "sources.list"], "arch": ["txt", "mirrorlist"], "flat": ["txt"]}[fmt]
    # DE has two ok mirrors and a partial one; FR (stale), US (no-range), JP (down) have none listed.
    expected = {"mirrors/index.html", "mirrors/mirrors.json"}
    expected |= {f"mirrors/all.{kind}" for kind in kinds} | {f"mirrors/country/DE.{kind}" for kind in kinds}
    assert keys == expected


def test_mirror_table_shows_every_status() -> None:
    table = mirror_table(by_key(with_mirrors()))
    expected = {
        "ok.example.de": "ok",
        "ok2.example.de": "ok",
        "partial.example.de": "partial",
        "stale.example.fr": "stale",
        "norange.example.us": "no-range",
        "down.example.jp": "down",
        "nocountry.example.net": "ok",
    }
    for host, status in expected.items():
        row = table[host]
        assert len(row) == 11, row  # mirror, status, country, continent, sync, lag, range, files, bw, contact, webseed
        text, classes = row[1]
        assert text == f"{status} {status}: why", (host, text)
        assert f"status-{status}" in classes and "status" in classes
        assert row[10][0] == ("yes" if status in ("ok", "partial") else "no")
    ok = [cell for cell, _ in table["ok.example.de"]]
    assert ok[0] == f"{EVIL_MIRROR_NAME} ok.example.de"
    assert ok[2:4] == ["DE", "EU"]
    assert ok[4:8] == ["2026-05-01T08:55:00Z", "2 h 5 min", "yes", "4/4 sampled 10/12 verified"]
    assert ok[8:10] == ["10 Gbit/s", EVIL_CONTACT]
    down = [cell for cell, _ in table["down.example.jp"]]
    assert down[4:8] == ["unknown", "unknown", "unknown", "none sampled 10/12 verified"]
    assert [cell for cell, _ in table["norange.example.us"]][6] == "no"
    assert [cell for cell, _ in table["nocountry.example.net"]][2:4] == ["–", "–"]
    # rows by country (none last), then status, priority, URL
    assert list(table) == [
        "ok.example.de",
        "ok2.example.de",
        "partial.example.de",
        "stale.example.fr",
        "down.example.jp",
        "norange.example.us",
        "nocountry.example.net",
    ]


def test_mirrors_page_links_the_json_and_every_list() -> None:
    data = with_mirrors("arch")
    artifacts = render_listings(data)
    resolved = check_links(data, artifacts)
    assert resolved["mirrors/index.html"] >= {
        "mirrors/mirrors.json",
        "mirrors/all.txt",
        "mirrors/all.mirrorlist",
        "mirrors/country/DE.txt",
        "mirrors/country/DE.mirrorlist",
        "index.html",
        "browse/index.html",
        "style.css",
    }
    assert {"mirrors/index.html", "mirrors/mirrors.json"} <= resolved["index.html"]
    for key, targets in resolved.items():
        assert "mirrors/index.html" in targets, key  # the site nav


@pytest.mark.parametrize("fmt", ["debian", "arch", "flat"])
def test_link_check_covers_the_mirror_pages(fmt: str) -> None:
    data = with_mirrors(fmt)
    artifacts = render_listings(data)
    resolved = check_links(data, artifacts)
    assert "mirrors/index.html" in resolved
    linked = set().union(*resolved.values())
    assert {a.key for a in artifacts} - linked == set()  # every list and page is reachable
    page = parse(next(a for a in artifacts if a.key == "mirrors/index.html"))
    absolute = {h for h in page.hrefs if urlsplit(h).scheme and h != "data:,"}
    assert absolute == {mirror_base_of(m.url) for m in MIRRORS}


def mirror_base_of(url: str) -> str:
    return url.rstrip("/")


def test_link_check_catches_a_broken_link_on_the_mirrors_page(tmp_path: Path) -> None:
    (tmp_path / "mirrors.html.j2").write_text(
        '{% extends "base.html.j2" %}{% block content %}<a href="{{ "mirrors/country/XX.txt" | href }}">x</a>'
        "{% endblock %}"
    )
    data = with_mirrors(templates_dir=tmp_path)
    with pytest.raises(AssertionError):
        check_links(data, render_listings(data))


def test_mirrors_json_validates_and_holds_the_table_data() -> None:
    artifacts = by_key(with_mirrors())
    raw = artifacts["mirrors/mirrors.json"].data
    doc = json.loads(raw)
    assert raw == (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
    schema_validator().validate(doc)
    assert (doc["format"], doc["repo"], doc["sequence"], doc["snapshot_time"]) == (
        "mirrorseed-mirrors/1",
        "demo",
        42,
        SNAPSHOT_TIME,
    )
    urls = [m["url"] for m in doc["mirrors"]]
    assert urls == sorted(mirror_base_of(m.url) for m in MIRRORS)
    ok = next(m for m in doc["mirrors"] if m["url"] == "https://ok.example.de/debian")
    assert ok == {
        "url": "https://ok.example.de/debian",
        "name": EVIL_MIRROR_NAME,
        "country": "DE",
        "continent": "EU",
        "contact": EVIL_CONTACT,
        "bandwidth": "10 Gbit/s",
        "priority": 50,
        "status": "ok",
        "detail": "ok: why",
        "last_sync": "2026-05-01T08:55:00Z",
        "lag_seconds": 7500,
        "range_ok": True,
        "sampled": 4,
        "sampled_ok": 4,
        "verified_files": 10,
        "total_files": 12,
        "webseed": True,
    }
    down = next(m for m in doc["mirrors"] if m["status"] == "down")
    assert (down["last_sync"], down["lag_seconds"], down["range_ok"]) == (None, None, None)
    assert {m["status"] for m in doc["mirrors"]} == {"ok", "partial", "stale", "no-range", "down"}


def test_mirrors_json_without_snapshot_time_validates() -> None:
    doc = json.loads(by_key(with_mirrors("flat", snapshot_time=None))["mirrors/mirrors.json"].data)
    assert doc["snapshot_time"] is None
    schema_validator().validate(doc)


def _broken(doc: dict[str, Any], change: str) -> dict[str, Any]:
    broken: dict[str, Any] = json.loads(json.dumps(doc))
    first = broken["mirrors"][0]
    match change:
        case "extra top-level key":
            broken["generated"] = "2026-05-01T12:00:00Z"
        case "missing key":
            del first["webseed"]
        case "unknown status":
            first["status"] = "slow"
        case "lower-case country":
            first["country"] = "de"
        case "offset time":
            first["last_sync"] = "2026-05-01T08:55:00+00:00"
        case "trailing slash":
            first["url"] += "/"
        case "newline in name":
            first["name"] = "a\nServer = http://evil"
        case "negative count":
            first["sampled"] = -1
        case "wrong format":
            broken["format"] = "mirrorseed-mirrors/2"
        case "extra mirror key":
            first["ip"] = "192.0.2.1"
    return broken


@pytest.mark.parametrize(
    "change",
    [
        "extra top-level key",
        "missing key",
        "unknown status",
        "lower-case country",
        "offset time",
        "trailing slash",
        "newline in name",
        "negative count",
        "wrong format",
        "extra mirror key",
    ],
)
def test_mirrors_schema_rejects_a_broken_document(change: str) -> None:
    doc = json.loads(by_key(with_mirrors())["mirrors/mirrors.json"].data)
    validator = schema_validator()
    validator.validate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(_broken(doc, change))


def test_debian_country_lists() -> None:
    files = list_files(by_key(with_mirrors("debian")))
    assert files["mirrors/country/DE.txt"] == (
        "https://ok.example.de/debian\nhttps://ok2.example.de/pub/debian\nhttps://partial.example.de/debian\n"
    )
    assert files["mirrors/all.txt"] == (
        "https://ok.example.de/debian\nhttps://ok2.example.de/pub/debian\nhttps://nocountry.example.net/x\n"
        "https://partial.example.de/debian\n"
    )  # ok by priority (50, 60, 100), then partial although its priority is 1
    deb = [line for line in files["mirrors/country/DE.sources.list"].splitlines() if not line.startswith("#")]
    assert deb == [
        "deb https://ok.example.de/debian bookworm main contrib",
        "deb https://ok.example.de/debian bookworm-updates main contrib",
        "deb https://ok2.example.de/pub/debian bookworm main contrib",
        "deb https://ok2.example.de/pub/debian bookworm-updates main contrib",
        "deb https://partial.example.de/debian bookworm main contrib",
        "deb https://partial.example.de/debian bookworm-updates main contrib",
    ]
    all_deb = [line for line in files["mirrors/all.sources.list"].splitlines() if line.startswith("deb ")]
    assert len(all_deb) == 8 and "deb https://nocountry.example.net/x bookworm main contrib" in all_deb
    comments = [line for line in files["mirrors/all.sources.list"].splitlines() if not line.startswith("deb ")]
    assert all(line.startswith("# ") for line in comments)
    assert "# nocountry.example.net" in comments and "# Second DE (DE)" in comments


def test_debian_sources_list_defaults_to_main_and_needs_a_suite() -> None:
    files = list_files(by_key(with_mirrors("debian", components=())))
    assert "deb https://ok.example.de/debian bookworm main" in files["mirrors/country/DE.sources.list"].splitlines()
    no_suite = by_key(with_mirrors("debian", suites=()))
    assert not [k for k in no_suite if k.endswith(".sources.list")]
    assert "mirrors/country/DE.txt" in no_suite
    assert b"names no suite" in no_suite["mirrors/index.html"].data


def test_arch_mirrorlist() -> None:
    odd = mirror("https://odd.example.de/ar$ch/pkgs+x/", "ok", name="Odd\nServer = http://evil.example/", priority=10)
    files = list_files(by_key(with_mirrors("arch", mirrors=(*MIRRORS, odd))))
    lines = files["mirrors/country/DE.mirrorlist"].splitlines()
    entries = [line for line in lines if line and not line.startswith("# ")]
    assert entries == [
        "## Odd Server = http://evil.example/ (DE)",  # a name cannot add a line
        "Server = https://odd.example.de/ar%24ch/pkgs+x/$repo/os/$arch",
        f"## {EVIL_MIRROR_NAME} (DE)",
        "Server = https://ok.example.de/debian/$repo/os/$arch",
        "## Second DE (DE)",
        "Server = https://ok2.example.de/pub/debian/$repo/os/$arch",
        "## partial.example.de (DE)",
        "Server = https://partial.example.de/debian/$repo/os/$arch",
    ]
    servers = [line for line in files["mirrors/all.mirrorlist"].splitlines() if line.startswith("Server")]
    assert "Server = https://nocountry.example.net/x/$repo/os/$arch" in servers and len(servers) == 5
    assert "## nocountry.example.net" in files["mirrors/all.mirrorlist"].splitlines()
    assert files["mirrors/country/DE.txt"].splitlines()[0] == "https://odd.example.de/ar%24ch/pkgs+x"


@pytest.mark.parametrize("fmt", ["debian", "arch", "flat"])
def test_unverified_mirrors_never_reach_package_manager_lists(fmt: str) -> None:
    files = list_files(by_key(with_mirrors(fmt)))
    assert files
    for key, text in files.items():
        for host in UNLISTED_HOSTS:
            assert host not in text, (key, host)
    assert not [k for k in files if "/FR." in k or "/US." in k or "/JP." in k]


def test_a_mirror_without_country_is_only_in_the_all_lists() -> None:
    files = list_files(by_key(with_mirrors("arch")))
    holding = {k for k, text in files.items() if "nocountry.example.net" in text}
    assert holding == {"mirrors/all.txt", "mirrors/all.mirrorlist"}


def test_all_lists_exist_even_when_no_mirror_is_listed() -> None:
    down = tuple(m for m in MIRRORS if m.status in ("stale", "down", "no-range"))
    artifacts = by_key(with_mirrors("arch", mirrors=down))
    assert artifacts["mirrors/all.txt"].data == b""
    assert b"Server" not in artifacts["mirrors/all.mirrorlist"].data
    assert not [k for k in artifacts if k.startswith("mirrors/country/")]
    check_links(with_mirrors("arch", mirrors=down), tuple(artifacts.values()))


@pytest.mark.parametrize("fmt", ["flat", "debian", "arch"])
def test_mirror_markup_is_escaped(fmt: str) -> None:
    artifacts = render_listings(with_mirrors(fmt))
    for artifact in artifacts:
        if artifact.key.endswith(".html"):
            text = artifact.data.decode()
            assert "<script" not in text and "<img" not in text and "<b>" not in text, artifact.key
    parsed = pages(artifacts)
    for key, page in parsed.items():
        assert page.tags <= ALLOWED_TAGS, (key, page.tags - ALLOWED_TAGS)
        assert not page.styled, (key, page.styled)
    text = "".join(parsed["mirrors/index.html"].text)
    assert EVIL_MIRROR_NAME in text and EVIL_CONTACT in text


def test_front_page_links_the_mirror_pages_only_when_there_are_mirrors() -> None:
    front = parse(by_key(with_mirrors())["index.html"])
    assert {"mirrors/index.html", "mirrors/mirrors.json"} <= set(front.hrefs)
    text = " ".join(" ".join(front.text).split())
    assert "each of the 7 HTTP mirrors" in text and "only the 4 mirrors verified" in text
    assert not [h for h in parse(by_key(listing())["index.html"]).hrefs if "mirrors/" in h]


def test_mirror_artifacts_have_listing_headers() -> None:
    artifacts = by_key(with_mirrors("debian")) | by_key(with_mirrors("arch"))
    expected = {
        "mirrors/index.html": "text/html; charset=utf-8",
        "mirrors/mirrors.json": "application/json",
        "mirrors/all.txt": "text/plain; charset=utf-8",
        "mirrors/country/DE.txt": "text/plain; charset=utf-8",
        "mirrors/all.sources.list": "text/plain; charset=utf-8",
        "mirrors/country/DE.sources.list": "text/plain; charset=utf-8",
        "mirrors/all.mirrorlist": "text/plain; charset=utf-8",
        "mirrors/country/DE.mirrorlist": "text/plain; charset=utf-8",
    }
    for key, content_type in expected.items():
        assert content_type_for(key) == content_type, key
        assert artifacts[key].content_type == content_type and artifacts[key].cache_control == "no-cache", key
    assert {k for k in artifacts if k.startswith("mirrors/")} == set(expected)


@pytest.mark.parametrize("fmt", ["flat", "debian", "arch"])
def test_mirror_listings_are_deterministic(fmt: str) -> None:
    first = render_listings(with_mirrors(fmt))
    shuffled = (*MIRRORS[3:], *reversed(MIRRORS[:3]))
    second = render_listings(with_mirrors(fmt, mirrors=shuffled, records=tuple(reversed(RECORDS))))
    assert first == second
    assert [a.key for a in first] == sorted(a.key for a in first)


def test_mirror_listings_are_the_same_under_any_prefix() -> None:
    one = render_listings(with_mirrors("arch"))
    other = render_listings(with_mirrors("arch", public_url="http://127.0.0.1:8780/x/y"))
    assert {a.key for a, b in zip(one, other, strict=True) if a != b} == {"index.html"} | GIVE_BACK_KEYS | SCRIPT_KEYS


def test_mirror_values_are_normalised() -> None:
    offset = mirror("https://ok.example.de/debian", "ok", last_sync="2026-05-01T10:55:00.5+02:00")
    doc = json.loads(
        by_key(with_mirrors(mirrors=(offset,), snapshot_time="2026-05-01T13:00:00+02:00"))["mirrors/mirrors.json"].data
    )
    assert doc["snapshot_time"] == "2026-05-01T11:00:00Z"
    assert doc["mirrors"][0]["last_sync"] == "2026-05-01T08:55:00Z"
    assert rfc3339("2026-05-01T12:00:00Z", "x") == "2026-05-01T12:00:00Z"
    assert [duration(n) for n in (None, -5, 0, 45, 60, 754, 3600, 7500, 86400, 90000)] == [
        "unknown",
        "none",
        "none",
        "45 s",
        "1 min",
        "12 min",
        "1 h",
        "2 h 5 min",
        "1 d",
        "1 d 1 h",
    ]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"url": "https://m.example/debian?x=1"}, ConfigError),
        ({"url": "https://user:secret@m.example/debian"}, ConfigError),
        ({"url": "ftp://m.example/debian"}, ConfigError),
        ({"url": "https://m.example/a b"}, ConfigError),
        ({"url": "https://m.example/a/../b"}, ConfigError),
        ({"url": "https://m<x>.example/a"}, ConfigError),
        ({"country": "de"}, ConfigError),
        ({"country": "DEU"}, ConfigError),
        ({"country": "../x"}, ConfigError),
        ({"continent": "XX"}, ConfigError),
        ({"status": "slow"}, ValueError),
        ({"last_sync": "yesterday"}, ValueError),
        ({"last_sync": "2026-05-01T10:00:00"}, ValueError),  # no offset
    ],
)
def test_bad_mirror_values_are_refused(change: dict[str, object], error: type[Exception]) -> None:
    bad = replace(MIRRORS[0], **change)  # type: ignore[arg-type]
    with pytest.raises(error):
        render_listings(with_mirrors(mirrors=(bad, *MIRRORS[1:])))


@pytest.mark.parametrize(
    "changes",
    [
        {"suites": ("book worm",)},
        {"suites": ("bookworm\ndeb http://evil.example/ x main",)},
        {"components": ("main contrib",)},
        {"architectures": ("",)},
    ],
)
def test_bad_suites_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(SnapshotError):
        render_listings(replace(with_mirrors(), **changes))  # type: ignore[arg-type]


def test_a_mirror_listed_twice_is_refused() -> None:
    twice = replace(MIRRORS[1], url=MIRRORS[1].url + "/")
    with pytest.raises(ConfigError, match="twice"):
        render_listings(with_mirrors(mirrors=(*MIRRORS, twice)))


# --- Arch and Debian front pages -------------------------------------------------------------------

ARCH_RECORD = next(r for r in RECORDS if r.path == ARCH)


def test_arch_front_page_has_the_pacman_recipe() -> None:
    data = with_mirrors("arch")
    front = parse(by_key(data)["index.html"])
    example = example_package(data.records)
    recipe, update = front.pre
    assert recipe == user_recipe(data, example)
    assert update == update_recipe(data)
    text = " ".join(" ".join(front.text).split())
    assert "pacman -U" in text and "signature.path" in text and "aria2c -i list.txt" in text


def test_arch_user_recipe_fetches_the_signature_and_prints_pacman() -> None:
    recipe = user_recipe(with_mirrors("arch"), ARCH_RECORD)
    # the .sig over plain HTTP from the first ok mirror by priority (its path from the index), saved
    # beside the package
    assert "MIRROR=https://ok.example.de/debian\n" in recipe and f"WANT=${{1:-{ARCH}}}" in recipe
    assert '-d packages -o "${SIG##*/}"' in recipe and "\"$MIRROR/$(jq -r '.signature.path" in recipe
    assert ".signature.sha256 // empty" in recipe
    assert recipe.count("sha256sum -c") == 2  # package, its .sig (the index shards: sha_is)
    assert "printf 'now: sudo pacman -U %q\\n' \"$FILE\"" in recipe
    assert not [line for line in recipe.splitlines() if line.lstrip().startswith(("pacman", "sudo"))]
    for line in recipe.splitlines():
        if line.strip().startswith("aria2c"):
            assert line.strip().startswith('aria2c "${FLAGS[@]}"'), line
    # no mirror probed: the first webseed
    only_webseeds = user_recipe(listing(snapshot_format="arch"), ARCH_RECORD)
    assert "MIRROR=https://mirror-a.example.net/debian\n" in only_webseeds


def test_arch_user_recipe_without_signature_or_mirror_skips_the_sig_step() -> None:
    unsigned = replace(ARCH_RECORD, signature=None)
    recipe = user_recipe(listing(snapshot_format="arch"), unsigned)
    assert "names no detached signature" in recipe  # decided at run time, from the index record
    assert "sudo pacman -U" in recipe
    nowhere = user_recipe(listing(snapshot_format="arch", webseeds=()), ARCH_RECORD)
    assert "no HTTP mirror is known" in nowhere and 'fetch_capped "$SIG"' not in nowhere
    assert nowhere.count("sha256sum -c") == 1


@pytest.mark.parametrize("webseeds", [WEBSEEDS, ()])
def test_arch_recipes_are_valid_bash(webseeds: tuple[str, ...], tmp_path: Path) -> None:
    data = with_mirrors("arch", webseeds=webseeds, mirrors=() if not webseeds else MIRRORS)
    odd = replace(ARCH_RECORD, path="core/os/x86_64/lib'foo++ $(x).pkg.tar.zst")
    for name, text in [
        ("recipe.sh", user_recipe(data, ARCH_RECORD)),
        ("odd.sh", user_recipe(data, odd)),
        ("update.sh", update_recipe(data)),
    ]:
        assert text is not None
        script = tmp_path / name
        script.write_text(text)
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, (name, checked.stderr)
    assignments = "\n".join(line for line in user_recipe(data, odd).splitlines() if re.match(r"^(WANT|MIRROR)=", line))
    shown = subprocess.run(
        ["bash", "-c", assignments + '\nprintf "%s\\n" "$WANT" "${MIRROR-}"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert shown[:2] == [odd.path, "https://ok.example.de/debian" if webseeds else ""]


def test_update_recipe_for_formats_with_package_names() -> None:
    debian = update_recipe(with_mirrors("debian"))
    assert debian is not None and "printf 'now: sudo apt install'" in debian and "WANT=(hello)" in debian
    assert "dpkg-query -W" in debian and "MIRROR=''" in debian  # Debian: no detached signatures
    assert update_recipe(with_mirrors("flat")) is None
    assert update_recipe(listing(snapshot_format="arch", records=(record("core/os/x86_64/a.pkg.tar.zst"),))) is None
    assert len(parse(by_key(with_mirrors("debian"))["index.html"]).pre) == 2
    assert len(parse(by_key(with_mirrors("flat"))["index.html"]).pre) == 1


def test_update_recipe_builds_the_aria2_input_file_from_the_index(tmp_path: Path) -> None:
    """Run the update script with a stand-in aria2c: the input file lists each wanted package's
    .torrent URL and its .sig URL (with `out=`), segments percent-encoded; checks pass; the pacman
    command is printed."""
    contents = {"core/os/x86_64/lib+foo 1:2-1-x86_64.pkg.tar.zst": b"pkg one", "extra/os/any/py.thing-1-any.pkg": b"2"}
    packages = []
    for path, data in contents.items():
        sig = data + b" sig"
        packages.append(
            {
                "path": path,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "torrent": f"torrents/{path}.torrent",
                "name": path.rpartition("/")[2].split("-")[0],
                "signature": {"path": f"{path}.sig", "size": len(sig), "sha256": hashlib.sha256(sig).hexdigest()},
            }
        )
        (tmp_path / "packages").mkdir(exist_ok=True)
        name = path.rpartition("/")[2]
        (tmp_path / "packages" / name).write_bytes(data)
        (tmp_path / "packages" / f"{name}.sig").write_bytes(sig)
    packages.append({"path": "core/os/x86_64/other.pkg", "size": 1, "sha256": "0" * 64, "torrent": "t", "name": "x"})
    (tmp_path / "index.json").write_text(json.dumps({"packages": packages}))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "aria2c").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > aria2c.args\n')
    (fake / "aria2c").chmod(0o755)
    script = update_recipe(with_mirrors("arch"))
    assert script is not None
    # steps 1 to 3 (key, pointer, index) are the recipe's, run for real by the integration tests: here
    # the index is given, and the script runs from step 4 with the names as its arguments
    script = script[: script.index("# 1. Once")] + script[script.index("# 4. The wanted") :]
    done = subprocess.run(
        ["bash", "-c", script, "update.sh", "lib+foo 1:2", "py.thing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "list.txt").read_text().splitlines() == [
        f"{PUBLIC}/torrents/core/os/x86_64/lib%2Bfoo%201%3A2-1-x86_64.pkg.tar.zst.torrent",
        "https://ok.example.de/debian/core/os/x86_64/lib%2Bfoo%201%3A2-1-x86_64.pkg.tar.zst.sig",
        "  out=lib+foo 1:2-1-x86_64.pkg.tar.zst.sig",
        f"{PUBLIC}/torrents/extra/os/any/py.thing-1-any.pkg.torrent",
        "https://ok.example.de/debian/extra/os/any/py.thing-1-any.pkg.sig",
        "  out=py.thing-1-any.pkg.sig",
    ]
    args = (tmp_path / "aria2c.args").read_text().splitlines()
    assert args[: len(ARIA2_FLAGS)] == list(ARIA2_FLAGS) and args[-2:] == ["-i", "list.txt"]
    assert done.stdout.count(": OK") == 4
    assert "now: sudo pacman -U packages/lib+foo\\ 1:2-1-x86_64.pkg.tar.zst packages/py.thing-1-any.pkg" in done.stdout

    # a file whose bytes differ from the index stops it
    (tmp_path / "packages" / "py.thing-1-any.pkg.sig").write_bytes(b"tampered")
    failed = subprocess.run(
        ["bash", "-c", script, "update.sh", "lib+foo 1:2", "py.thing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert failed.returncode != 0 and "now: sudo pacman" not in failed.stdout


def test_debian_recipe_prints_the_apt_hint_and_flat_none() -> None:
    example = next(r for r in RECORDS if r.path == HELLO)
    debian = user_recipe(listing(), example)
    assert 'printf \'now: sudo apt install ./%q   (or: sudo dpkg -i %q)\\n\' "$FILE" "$FILE"' in debian
    assert ".sig" not in debian
    flat = user_recipe(listing(snapshot_format="flat"), example)
    assert "printf 'now:" not in flat and "pacman -U" not in flat and "apt install ./" not in flat
    front = " ".join(" ".join(parse(by_key(listing())["index.html"]).text).split())
    assert "sudo apt install ./packages/<file>" in front


def test_debian_install_hint_runs_and_quotes(tmp_path: Path) -> None:
    example = next(r for r in RECORDS if r.path == ODD)
    recipe = user_recipe(listing(), example)
    lines = recipe.splitlines()
    hint = next(line for line in lines if line.startswith("printf 'now:"))
    file_line = next(line for line in lines if line.startswith("FILE="))
    pkg = subprocess.run(["bash", "-c", 'printf %q "$0"', ODD], capture_output=True, text=True, check=True).stdout
    script = f"PKG={pkg}\n{file_line}\n{hint}"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    name = ODD.rpartition("/")[2]
    quoted = subprocess.run(
        ["bash", "-c", 'printf %q "$0"', f"packages/{name}"], capture_output=True, text=True, check=True
    ).stdout
    assert out == f"now: sudo apt install ./{quoted}   (or: sudo dpkg -i {quoted})\n"


def test_arch_browse_page_links_the_signature() -> None:
    page_key = "browse/extra/os/x86_64/index.html"
    hrefs = parse(by_key(with_mirrors("arch"))[page_key]).hrefs
    assert [h for h in hrefs if h.endswith(".sig")] == [
        f"https://mirror-a.example.net/debian/{ARCH}.sig",
        f"http://mirror-b.example.com/pub/debian/{ARCH}.sig",
    ]
    # no webseed: the mirror the recipe fetches it from (first ok by priority)
    hrefs = parse(by_key(with_mirrors("arch", webseeds=()))[page_key]).hrefs
    assert [h for h in hrefs if h.endswith(".sig")] == [f"https://ok.example.de/debian/{ARCH}.sig"]
    hrefs = parse(by_key(listing(snapshot_format="arch", webseeds=()))[page_key]).hrefs
    assert not [h for h in hrefs if h.startswith("http")]
    unsigned = tuple(replace(r, signature=None) for r in RECORDS)
    hrefs = parse(by_key(with_mirrors("arch", records=unsigned))[page_key]).hrefs
    assert not [h for h in hrefs if h.endswith(".sig")]


@pytest.mark.parametrize("run", [65536, 2, 1])
def test_the_browse_tree_names_every_directory_its_subdirs_and_its_files(
    run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_Tree` against the obvious dict of sets, on names where a file, a sibling directory and a
    directory's contents interleave in path order ("a-b" < "a/x" < "a.c"); its names sorted in one run
    or merged from runs of 2 and 1 (a name and its ancestors named again in a later run)."""
    monkeypatch.setattr(render, "NAMES_RUN", run)
    paths = sorted(["a-b", "a/x", "a/y/z", "a.c/q", "b", "a/y-1", "c/d/e/f", "c/d/g"])
    tree = _Tree(paths)
    expected: dict[str, tuple[set[str], list[int]]] = {"": (set(), [])}
    for row, path in enumerate(paths):
        parent = path.rpartition("/")[0]
        expected.setdefault(parent, (set(), []))[1].append(row)
        while parent:
            up = parent.rpartition("/")[0]
            expected.setdefault(up, (set(), []))[0].add(parent)
            parent = up
    assert tree.dirs == sorted(expected) == ["", "a", "a.c", "a/y", "c", "c/d", "c/d/e"]
    for number, directory in enumerate(tree.dirs):
        subdirs, rows = expected[directory]
        assert (tree.subdirs(number), list(tree.rows(number))) == (sorted(subdirs), rows), directory
    assert (_Tree([]).dirs, list(_Tree([]).rows(0)), _Tree([]).subdirs(0)) == ([""], [], [])


def test_browse_inputs_change_with_everything_a_browse_page_shows_and_nothing_else() -> None:
    from pipeline.render import BROWSE_CONTEXT, _BrowseInputs

    held = {"a/x.deb": ["http://m1/"], "a/y.deb": ["http://m1/", "http://m2/"]}
    context: dict[str, object] = {key: f"value of {key}" for key in BROWSE_CONTEXT}
    context["webseeds_for"] = lambda path: held[path]
    rows = [("a/x.deb", b"1" * 16), ("a/y.deb", b"2" * 16)]
    base = _BrowseInputs("templates", context)("a", ["a/b"], rows)
    assert base == _BrowseInputs("templates", dict(context))("a", ["a/b"], iter(rows))
    others = {
        _BrowseInputs("other templates", context)("a", ["a/b"], rows),
        _BrowseInputs("templates", {**context, "repo": "other"})("a", ["a/b"], rows),
        _BrowseInputs("templates", context)("b", ["a/b"], rows),
        _BrowseInputs("templates", context)("a", ["a/c"], rows),
        _BrowseInputs("templates", context)("a", [], rows),
        _BrowseInputs("templates", context)("a", ["a/b"], rows[:1]),
        _BrowseInputs("templates", context)("a", ["a/b"], [rows[0], ("a/y.deb", b"3" * 16)]),
        _BrowseInputs("templates", {**context, "webseeds_for": None})("a", ["a/b"], rows),
        _BrowseInputs("templates", {**context, "webseeds_for": lambda path: held[path][:1]})("a", ["a/b"], rows),
    }
    assert base not in others and len(others) == 9
    # one instance for every page of a run: the webseed sets' JSON kept (a few) changes nothing
    inputs = _BrowseInputs("templates", context)
    assert [inputs("a", ["a/b"], rows) for _ in range(3)] == [base] * 3
    assert inputs("a", ["a/b"], rows[1:]) == _BrowseInputs("templates", context)("a", ["a/b"], rows[1:])
