"""The static listings in a real browser (issue 5, point 6): headless Debian Chromium driven by Playwright.

One publication with two configured mirrors (DE: a live copy of the snapshot, FR: a closed port) is
made to a local folder, served by `serve_directory`, and to SeaweedFS (`s3://<bucket>/pub`, read
anonymously). On each server the front page, the browse page of a leaf directory with a package and
`mirrors/index.html` are opened at 390 and 1280 px: no console error, no failed request, every
same-origin `<a href>` answers 200, nothing sticks out horizontally at 390 px, and a full-page
screenshot per page and width lands in `test-artifacts/screenshots/<server>-<page>-<width>.png`.
"""

from __future__ import annotations

import itertools
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, sync_playwright

from pipeline.config import MirrorConfig, Settings
from pipeline.objects import browse_key
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.urls import quote_path
from tests.browser import check_urls, launch, layout, png_size, same_origin, screenshot, visit
from tests.integration.conftest import SigningKey
from tests.integration.test_s3_publish import s3_settings
from tests.s3_server import SeaweedServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
WIDTHS = (390, 1280)  # a phone (390 px: iPhone 12-15) and a desktop
NARROW = WIDTHS[0]
PAGES = ("front", "browse", "mirrors")
MIRROR_NAME = "Test mirror <b>"
LEAF_PACKAGE = "libstdc++-demo6"  # a '+' in the directory name: percent-encoding on both servers
_buckets = itertools.count()

# hrefs each page must have (by how the resolved URL's path ends), so "every link resolves" is not vacuous
EXPECTED_LINKS = {
    "front": ("/latest.asc", "/signing-key.asc", "/signing-key.gpg", ".torrent", "/browse/index.html",
              "/mirrors/index.html", "/mirrors/mirrors.json"),
    "browse": (".torrent", ".meta4", "/browse/index.html"),
    "mirrors": ("/mirrors/mirrors.json", "/mirrors/all.txt", "/mirrors/country/DE.txt", ".sources.list"),
}  # fmt: skip


@dataclass(frozen=True)
class Site:
    """A publication as a browser reaches it."""

    server: str
    base: str  # public URL, no trailing slash
    mirrors: tuple[str, ...]  # configured mirror base URLs (links to them are not same-origin)
    leaf: str  # repository directory whose browse page is opened

    def url(self, page: str) -> str:
        key = {"front": "index.html", "browse": browse_key(self.leaf), "mirrors": "mirrors/index.html"}[page]
        return f"{self.base}/{quote_path(key)}"


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections refused): a down mirror."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/debian"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; a missing or broken Chromium fails here with bootstrap's hint."""
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def snapshot(debian_repo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "snapshot"
    shutil.copytree(debian_repo_template, root, symlinks=True)
    return root


@pytest.fixture(scope="module")
def mirrors(snapshot: Path) -> Iterator[tuple[MirrorConfig, ...]]:
    with serve_directory(snapshot) as germany:
        yield (
            MirrorConfig(url=germany.url, country="DE", continent="EU", name=MIRROR_NAME, priority=1),
            MirrorConfig(url=closed_port_url(), country="FR", continent="EU", name="Down mirror", priority=50),
        )


@pytest.fixture(scope="module")
def leaf(snapshot: Path) -> str:
    deb = next(snapshot.rglob(f"{LEAF_PACKAGE}_*.deb"))
    return deb.parent.relative_to(snapshot).as_posix()


def with_mirrors(settings: Settings, mirrors: tuple[MirrorConfig, ...], state: Path) -> Settings:
    # the DE mirror is also a --webseed (same URL: one mirror), so pages name a webseed before probing lands
    return replace(settings, mirrors=mirrors, webseeds=(mirrors[0].url,), state=state, mirror_timeout=2)


@pytest.fixture(scope="module")
def local_site(
    snapshot: Path, mirrors: tuple[MirrorConfig, ...], leaf: str, signing_key: SigningKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:  # fmt: skip
    work = tmp_path_factory.mktemp("browser-local")
    dest = work / "public"
    dest.mkdir()
    with serve_directory(dest) as public:
        settings = Settings(
            snapshot=snapshot, format="debian", dest=str(dest), public_url=public.url, repo="browser",
            key=signing_key.fingerprint, gnupghome=signing_key.gnupghome,
        )  # fmt: skip
        report = release(with_mirrors(settings, mirrors, work / "state.sqlite"))
        assert report.action == "publish"
        yield Site("local", public.url, tuple(m.url for m in mirrors), leaf)


@pytest.fixture(scope="module")
def s3_site(
    s3_server: SeaweedServer, snapshot: Path, mirrors: tuple[MirrorConfig, ...], leaf: str,
    signing_key: SigningKey, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:  # fmt: skip
    bucket = s3_server.make_bucket(f"browser-{next(_buckets)}")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**s3_server.env(), "MIRRORSEED_S3_ENDPOINT_URL": s3_server.endpoint}.items():
            patch.setenv(name, value)
        settings = s3_settings(s3_server, bucket, snapshot, signing_key, mirrors[0].url)
        state = tmp_path_factory.mktemp("browser-s3") / "state.sqlite"
        report = release(with_mirrors(replace(settings, repo="browser"), mirrors, state))
        assert report.action == "publish"
        yield Site("s3", settings.public_url or "", tuple(m.url for m in mirrors), leaf)


def link_failures(
    site: Site, page_url: str, hrefs: list[str], resolved: list[str], statuses: dict[str, int]
) -> list[str]:
    """What is wrong with a page's links: a same-origin one not 200, an odd scheme, a foreign host."""
    failures = []
    for href, url in zip(hrefs, resolved, strict=True):
        scheme = urlsplit(url).scheme
        if scheme == "magnet":
            if not href.startswith("magnet:?xt=urn:btih:"):
                failures.append(f"magnet href does not start with magnet:?xt=urn:btih: : {href!r}")
        elif scheme not in ("http", "https"):
            failures.append(f"href with scheme {scheme!r}: {href!r}")
        elif same_origin(url, page_url):
            if statuses.get(url) != 200:
                failures.append(f"{href!r} -> {url}: HTTP {statuses.get(url)}")
        elif not any(url == m or url.startswith(m.rstrip("/") + "/") for m in site.mirrors):
            failures.append(f"{href!r} leads off-site, and not to a configured mirror")
    return failures


@pytest.mark.parametrize("page_name", PAGES)
@pytest.mark.parametrize("server", ("local", "s3"))
def test_listing_page_in_chromium(
    browser: Browser, request: pytest.FixtureRequest, server: str, page_name: str
) -> None:
    site: Site = request.getfixturevalue(f"{server}_site")
    url = site.url(page_name)
    failures: list[str] = []
    for width in WIDTHS:
        with visit(browser, url, width=width) as seen:
            where = f"{server} {page_name} at {width} px ({url})"
            shot = SCREENSHOTS / f"{server}-{page_name}-{width}.png"
            screenshot(seen.page, shot)  # first, so there is a picture of whatever fails below
            if seen.status != 200:
                failures.append(f"{where}: the page itself answered HTTP {seen.status}")
                continue
            failures += [f"{where}: {problem}" for problem in seen.problems()]
            for icon, status in check_urls(seen.page, seen.icon_urls()).items():
                if status != 200:
                    failures.append(
                        f"{where}: the browser's icon request {icon} gets HTTP {status} (a console error "
                        "and a failed request in every browser; declare the icon, e.g. <link rel=icon href=data:,>)"
                    )
            shape = layout(seen.page)
            if width == NARROW:
                if shape.overflows:
                    failures.append(f"{where}: horizontal overflow: {shape.explain()}")
                if shape.clipped:
                    failures.append(f"{where}: content cut off by overflow hidden/clip: {shape.clipped}")
            else:
                hrefs = seen.hrefs()
                resolved = seen.resolved_hrefs()
                statuses = check_urls(seen.page, [u for u in resolved if same_origin(u, url)])
                failures += [f"{where}: {problem}" for problem in link_failures(site, url, hrefs, resolved, statuses)]
                paths = [urlsplit(u).path for u in statuses]
                for ending in EXPECTED_LINKS[page_name]:
                    if not any(path.endswith(ending) for path in paths):
                        failures.append(f"{where}: no same-origin link ending in {ending!r} (links: {sorted(paths)})")
                if page_name == "browse" and not any(h.startswith("magnet:") for h in hrefs):
                    failures.append(f"{where}: no magnet link")
                if page_name == "browse":
                    # the package's mirror links: the verified DE mirror, never the FR one (down, verified nothing)
                    germany, france = (m.rstrip("/") + "/" for m in site.mirrors)
                    if not any(u.startswith(germany) for u in resolved):
                        failures.append(f"{where}: no link to the package on the verified mirror {germany}")
                    if any(u.startswith(france) for u in resolved):
                        failures.append(f"{where}: links the down mirror {france}, which holds nothing verified")
                if page_name == "mirrors":
                    text = seen.page.inner_text("main")
                    if MIRROR_NAME not in text or seen.page.locator("main b").count():
                        failures.append(f"{where}: the mirror name {MIRROR_NAME!r} is not shown as text")
                    if "DE" not in text or "FR" not in text:
                        failures.append(f"{where}: the countries DE and FR are not both listed")
        width_px, height_px = png_size(shot)
        if width_px < width or height_px < 300 or shot.stat().st_size < 4096:
            failures.append(f"{where}: screenshot {shot} is {width_px}x{height_px}, {shot.stat().st_size} bytes")
    assert not failures, "\n".join(failures)
