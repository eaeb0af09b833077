"""A small real-browser harness for the listing tests: Debian's Chromium driven by Playwright (sync API).

Playwright's own browser download cannot work here (and is never needed): the Python package ships only
its driver, `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1` is set, and Chromium is `/usr/bin/chromium` from
Debian (bootstrap.sh installs it). As root Chromium needs `--no-sandbox`. Each `launch()` gets a new
empty profile (Playwright makes a temporary `--user-data-dir` and removes it on close).

    with sync_playwright() as pw:
        browser = launch(pw)                          # fails with a clear message, never skips
        with visit(browser, url, width=360) as seen:  # one fresh context + page per visit
            seen.problems()                           # console errors, page errors, failed requests, >= 400
            horizontal_overflow(seen.page)            # None, or what sticks out past the viewport
            screenshot(seen.page, path)               # full page PNG, checked
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Playwright, Request, Response

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium keeps trying to reach Google's hosts, which this closed network refuses
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_MS = 15_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


class BrowserUnavailable(RuntimeError):
    """Chromium is missing or does not start: the test must fail with this message, not skip."""


def launch(playwright: Playwright, executable: Path = CHROMIUM) -> Browser:
    """Debian's Chromium, headless, with a fresh profile; `--no-sandbox` when running as root."""
    if not executable.is_file() or not os.access(executable, os.X_OK):
        found = shutil.which("chromium")
        hint = f" (but {found} exists)" if found else ""
        raise BrowserUnavailable(
            f"{executable}: no Chromium here{hint}; run ./bootstrap.sh (installs Debian's chromium package)"
        )
    args = list(CHROMIUM_FLAGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    try:
        return playwright.chromium.launch(
            executable_path=str(executable), args=args, headless=True, timeout=TIMEOUT_MS, env=_browser_env()
        )
    except Error as exc:
        raise BrowserUnavailable(f"{executable} did not start under Playwright: {exc.message}") from exc


def _browser_env() -> dict[str, str | float | bool]:
    env: dict[str, str | float | bool] = {
        k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")
    }
    env["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    return env


def same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


@dataclass
class Visit:
    """One page opened in its own browser context, and everything that went wrong while it loaded."""

    page: Page
    url: str
    status: int | None = None
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)  # same-origin, status >= 400

    def problems(self) -> list[str]:
        return [
            *(f"console error: {text}" for text in self.console_errors),
            *(f"page error: {text}" for text in self.page_errors),
            *(f"request failed: {text}" for text in self.failed_requests),
            *(f"HTTP error: {text}" for text in self.bad_responses),
        ]

    def hrefs(self) -> list[str]:
        """Every `<a href>` on the page, in document order, as written."""
        raw: list[str] = self.page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        return raw

    def icon_urls(self) -> list[str]:
        """What the browser fetches for the tab icon on its own: each `<link rel=icon>` that is not a
        `data:` URL, or `/favicon.ico` at the origin's root when the page declares none. Chromium asks
        for it by itself, not as one of the page's requests (Playwright reports no event for it, and
        its console error comes only sometimes, after a cache miss, late), so it is checked like a link."""
        declared: list[str] = self.page.eval_on_selector_all(
            "link[rel~='icon' i]", "els => els.map(e => e.getAttribute('href') || '')"
        )
        if not declared:
            parts = urlsplit(self.page.url)
            return [f"{parts.scheme}://{parts.netloc}/favicon.ico"]
        return [urljoin(self.page.url, href) for href in declared if not href.startswith("data:")]

    def resolved_hrefs(self) -> list[str]:
        """The page's hrefs as absolute URLs without fragment (the page URL is the base: no <base>)."""
        return [urldefrag(urljoin(self.page.url, href)).url for href in self.hrefs()]


@contextmanager
def visit(browser: Browser, url: str, *, width: int, height: int = 800) -> Iterator[Visit]:
    """Open `url` in a new context of `width` x `height` CSS px (scale 1), waiting for `load`."""
    context = browser.new_context(
        viewport={"width": width, "height": height},
        device_scale_factor=1,
        java_script_enabled=True,
        service_workers="block",
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        seen = Visit(page=page, url=url)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                location = message.location
                seen.console_errors.append(f"{message.text} ({location.get('url', '?')}:{location.get('lineNumber')})")

        def on_failed(request: Request) -> None:
            seen.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

        def on_response(response: Response) -> None:
            if response.status >= 400 and same_origin(response.url, url):
                seen.bad_responses.append(f"{response.status} {response.request.method} {response.url}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
        page.on("requestfailed", on_failed)
        page.on("response", on_response)
        response = page.goto(url, wait_until="load")
        seen.status = response.status if response is not None else None
        yield seen
    finally:
        context.close()


def check_urls(page: Page, urls: list[str]) -> dict[str, int]:
    """GET each URL once with the page's request context (no redirects followed): url -> status."""
    statuses: dict[str, int] = {}
    for url in dict.fromkeys(urls):
        response = page.request.get(url, max_redirects=0, timeout=TIMEOUT_MS, fail_on_status_code=False)
        statuses[url] = response.status
        response.dispose()
    return statuses


# Elements sticking out past the right edge of the viewport, unless an ancestor scrolls or clips them
# horizontally (a table inside its overflow-x:auto wrapper is fine); and elements that clip content.
_OVERFLOW_JS = """
() => {
  const width = window.innerWidth;
  const contained = (el) => {
    for (let p = el.parentElement; p && p !== document.body && p !== document.documentElement; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return true;
    }
    return false;
  };
  const describe = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    if (el.classList.length) s += '.' + Array.from(el.classList).join('.');
    const parent = el.parentElement;
    if (parent && parent !== document.body) s = describe(parent) + ' > ' + s;
    return s;
  };
  const sticking = [];
  const clipped = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > width + 0.5 && !contained(el)) {
      const text = (el.textContent || '').trim().slice(0, 60);
      sticking.push({element: describe(el), right: Math.round(r.right), text: text});
    }
    const o = getComputedStyle(el).overflowX;
    if ((o === 'hidden' || o === 'clip') && el.scrollWidth > el.clientWidth + 1) {
      clipped.push({element: describe(el), scrollWidth: el.scrollWidth, clientWidth: el.clientWidth});
    }
  }
  const scrollers = [];
  for (const el of document.body.querySelectorAll('*')) {
    const o = getComputedStyle(el).overflowX;
    if ((o === 'auto' || o === 'scroll') && el.scrollWidth > el.clientWidth + 1) {
      scrollers.push({element: describe(el), scrollWidth: el.scrollWidth, clientWidth: el.clientWidth});
    }
  }
  return {
    scrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    innerWidth: width,
    sticking: sticking.slice(0, 10),
    clipped: clipped.slice(0, 10),
    scrollers: scrollers,
  };
}
"""


@dataclass(frozen=True)
class Layout:
    scroll_width: int
    inner_width: int
    sticking: list[dict[str, Any]]  # elements past the right edge, not inside a scroller
    clipped: list[dict[str, Any]]  # overflow hidden/clip elements whose content is cut off
    scrollers: list[dict[str, Any]]  # overflow-x auto/scroll elements that do scroll (fine)

    @property
    def overflows(self) -> bool:
        return self.scroll_width > self.inner_width

    def explain(self) -> str:
        return (
            f"document scrollWidth {self.scroll_width} px > window.innerWidth {self.inner_width} px; "
            f"sticking out: {self.sticking or 'nothing found'}; clipped: {self.clipped or 'none'}"
        )


def layout(page: Page) -> Layout:
    found: dict[str, Any] = page.evaluate(_OVERFLOW_JS)
    return Layout(
        scroll_width=int(found["scrollWidth"]),
        inner_width=int(found["innerWidth"]),
        sticking=list(found["sticking"]),
        clipped=list(found["clipped"]),
        scrollers=list(found["scrollers"]),
    )


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; ValueError if `path` is not a PNG."""
    head = path.read_bytes()[:24]
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def screenshot(page: Page, path: Path) -> tuple[int, int]:
    """A full-page PNG at `path` (directories made); returns its pixel size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True, animations="disabled", timeout=TIMEOUT_MS)
    return png_size(path)
