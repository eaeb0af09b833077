"""Listings: escaping, link integrity, one page per directory, jinja2 settings, determinism, recipe."""

from __future__ import annotations

import hashlib
import html
import posixpath
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import jinja2
import pytest

from pipeline.errors import ConfigError, SnapshotError
from pipeline.model import Artifact, IndexRef, PackageRecord, Pointer, SignatureRef
from pipeline.render import (
    ARIA2_FLAGS,
    ListingInput,
    example_package,
    filesize,
    group_fingerprint,
    make_environment,
    relative_href,
    render_listings,
    user_recipe,
)

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
    "h1", "h2", "p", "a", "ul", "ol", "li", "dl", "dt", "dd", "div", "table", "thead", "tbody", "tr",
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


POINTER = Pointer(
    repo="demo",
    sequence=42,
    generated="2026-05-01T12:00:00Z",
    expires="2026-05-08T12:00:00Z",
    index=IndexRef("index/42-0123456789ab/index.json.zst", 2345, 9876, "ab" * 32),
    index_torrent="index/42-0123456789ab.torrent",
    infohash="cd" * 20,
    magnet=f"magnet:?xt=urn:btih:{'cd' * 20}&dn=42-0123456789ab&ws=https%3A%2F%2Fseed.example.org%2Fdebian%2Findex%2F",
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
        self.pre: list[str] = []
        self._in_pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.hrefs.append(value)
            if name == "style" or name.startswith("on"):
                self.styled.append(f"{tag} {name}")
        if tag == "pre":
            self._in_pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_pre -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_pre:
            self.pre.append(data)


def parse(artifact: Artifact) -> PageParser:
    parser = PageParser()
    parser.feed(artifact.data.decode("utf-8"))
    parser.close()
    return parser


def pages(artifacts: tuple[Artifact, ...]) -> dict[str, PageParser]:
    return {a.key: parse(a) for a in artifacts if a.key.endswith(".html")}


def expected_published_keys(data: ListingInput) -> set[str]:
    """What the other stages publish beside the listings (DESIGN section 4)."""
    keys = {"latest.asc", "signing-key.asc", "signing-key.gpg"}
    keys |= {data.pointer.index.path, data.pointer.index.path + ".sig", data.pointer.index_torrent}
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
    assert {POINTER.index_torrent, POINTER.index.path, POINTER.index.path + ".sig"} <= front
    linked = set().union(*resolved.values())
    assert expected_published_keys(data) - linked == set()  # every package torrent/metalink is reachable
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
    assert keys == {browse_page(d) for d in dirs} | {"index.html", "style.css"}
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
    assert [a.key for a in artifacts] == ["browse/index.html", "index.html", "style.css"]
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
    assert POINTER.magnet in front.hrefs
    assert "does not start from a magnet" in text
    example = example_package(data.records)
    assert example is not None and example.path == EVIL_PATH  # first non-empty, in path order
    assert "".join(front.pre) == user_recipe(data, example)  # one source for page and script


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
    assert differ == {"index.html"}  # only the recipe names the public URL


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
    )
    assert " ".join(ARIA2_FLAGS) in recipe
    assert recipe.count("sha256sum -c") == 3  # index, package by torrent, package by metalink
    assert "--follow-torrent=mem -d index" in recipe
    assert f"--follow-torrent=mem -d packages {PUBLIC}/torrents/{HELLO}.torrent" in recipe
    assert f"{PUBLIC}/metalinks/{HELLO}.meta4" in recipe
    assert "gpg --show-keys signing-key.asc" in recipe
    assert "date -u" in recipe and ".expires > $now" in recipe
    assert "FPR=DC87FD8B47FFA81270054CEFE2D360866D18689B" in recipe
    for line in recipe.splitlines():  # every aria2c call passes the flags
        if line.strip().startswith("aria2c"):
            assert line.strip().startswith('aria2c "${FLAGS[@]}"'), line
    assert "&amp;" not in recipe and "&#34;" not in recipe  # shell text, not HTML


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("path", [HELLO, ODD, EVIL_PATH])
def test_user_recipe_is_valid_bash_and_quotes_names(path: str, tmp_path: Path) -> None:
    example = next(r for r in RECORDS if r.path == path)
    recipe = user_recipe(listing(), example)
    script = tmp_path / "recipe.sh"
    script.write_text(recipe)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    # The assignments evaluate back to the exact values (no injection through a file name).
    assignments = "\n".join(
        line for line in recipe.splitlines() if re.match(r"^(BASE|FPR|REPO|FLAGS|PKG|FILE|MFILE|MAGNET)=", line)
    )
    shown = subprocess.run(
        ["bash", "-c", assignments + '\nprintf "%s\\n" "$PKG" "$FILE" "$BASE" "${FLAGS[*]}" "$MAGNET"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    name = path.rpartition("/")[2]
    assert shown[:5] == [path, f"packages/{name}", PUBLIC, " ".join(ARIA2_FLAGS), example.magnet]


def test_user_recipe_bash_n_rejects_broken_text(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
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
