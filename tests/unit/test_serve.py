"""pipeline.serve: a Range-capable static server (aria2 needs real 206 answers)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from pipeline.serve import RangeServer, parse_range, serve_directory
from tests.tools import require_tools

DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
NAMES = {
    "libstdc++6_12.2.0-14+deb12u1_amd64.deb": b"plus",
    "with space.txt": b"space",
    "abiword-common_3.0.5~dfsg-3.2_all.deb": b"tilde",
    "vim_2:9.0.1378-2_amd64.deb": b"colon",
    "caf\u00e9-\u65e5\u672c.txt": b"utf8",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    (root / "data.bin").write_bytes(DATA)
    (root / "empty.txt").write_bytes(b"")
    (root / "index.html").write_text("<h1>front</h1>", encoding="utf-8")
    pool = root / "pool" / "main" / "h" / "hello"
    pool.mkdir(parents=True)
    (pool / "hello_2.10-3_amd64.deb").write_bytes(b"deb bytes")
    for name, content in NAMES.items():
        (root / name).write_bytes(content)
    (root / "latest.asc").write_text("-----BEGIN PGP MESSAGE-----\n", encoding="ascii")
    (root / "x.torrent").write_bytes(b"d4:infoe")
    (root / "x.json").write_bytes(b"{}")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "escape").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside, target_is_directory=True)
    (root / "inside-link.bin").symlink_to(root / "data.bin")
    return root


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[RangeServer]:
    with serve_directory(tree) as running:
        yield running


def request(
    server: RangeServer, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def test_url_is_loopback_without_trailing_slash(server: RangeServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert not server.url.endswith("/")


def test_full_body(server: RangeServer) -> None:
    status, headers, body = request(server, "/data.bin")
    assert status == 200
    assert body == DATA
    assert headers["content-length"] == str(len(DATA))
    assert headers["accept-ranges"] == "bytes"
    assert headers["last-modified"].endswith("GMT")
    assert headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=10000-99999", 10000, len(DATA) - 1),  # last clamped to the size
        ("bytes=5000-", 5000, len(DATA) - 1),
        ("bytes=-300", len(DATA) - 300, len(DATA) - 1),
        ("bytes=-999999", 0, len(DATA) - 1),  # a suffix longer than the file is the whole file
    ],
)
def test_single_ranges(server: RangeServer, spec: str, first: int, last: int) -> None:
    status, headers, body = request(server, "/data.bin", headers={"Range": spec})
    assert status == 206
    assert body == DATA[first : last + 1]
    assert headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert headers["content-length"] == str(last - first + 1)


@pytest.mark.parametrize("spec", ["bytes=10240-", "bytes=99999-100000", "bytes=-0"])
def test_unsatisfiable_range(server: RangeServer, spec: str) -> None:
    status, headers, body = request(server, "/data.bin", headers={"Range": spec})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(DATA)}"
    assert body == b""


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=5-2", "items=0-1", "bytes=abc", "bytes=-"])
def test_several_or_malformed_ranges_get_the_whole_body(server: RangeServer, spec: str) -> None:
    status, _, body = request(server, "/data.bin", headers={"Range": spec})
    assert status == 200
    assert body == DATA


def test_empty_file(server: RangeServer) -> None:
    status, headers, body = request(server, "/empty.txt")
    assert (status, headers["content-length"], body) == (200, "0", b"")
    status, _, _ = request(server, "/empty.txt", headers={"Range": "bytes=0-"})
    assert status == 416


def test_head(server: RangeServer) -> None:
    status, headers, body = request(server, "/data.bin", method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["content-length"] == str(len(DATA))
    status, headers, body = request(server, "/data.bin", method="HEAD", headers={"Range": "bytes=1-2"})
    assert (status, headers["content-range"], headers["content-length"], body) == (
        206,
        f"bytes 1-2/{len(DATA)}",
        "2",
        b"",
    )


def test_other_methods_refused(server: RangeServer) -> None:
    status, _, _ = request(server, "/data.bin", method="POST")
    assert status == 501


@pytest.mark.parametrize("name", sorted(NAMES))
def test_special_names_percent_encoded(server: RangeServer, name: str) -> None:
    status, _, body = request(server, "/" + quote(name, safe=""))
    assert status == 200
    assert body == NAMES[name]


def test_raw_plus_stays_plus(server: RangeServer) -> None:
    status, _, body = request(server, "/libstdc++6_12.2.0-14+deb12u1_amd64.deb")
    assert (status, body) == (200, b"plus")
    # `+` is not a space in a path: "with+space.txt" does not exist
    status, _, _ = request(server, "/with+space.txt")
    assert status == 404


def test_query_string_ignored_and_nested_paths(server: RangeServer) -> None:
    status, headers, body = request(server, "/pool/main/h/hello/hello_2.10-3_amd64.deb?x=1")
    assert (status, body) == (200, b"deb bytes")
    assert headers["content-type"] == "application/vnd.debian.binary-package"


@pytest.mark.parametrize(
    "path",
    [
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E%2Fetc%2Fpasswd",
        "/pool/../../etc/passwd",
        "/pool/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/%2Fetc%2Fpasswd",
        "/escape",
        "/escape-dir/secret.txt",
        "/data.bin%00.txt",
        "/%ff%fe",
        "/./data.bin",
        "/missing",
    ],
)
def test_outside_or_missing_is_404(server: RangeServer, path: str) -> None:
    status, _, body = request(server, path)
    assert status == 404
    assert b"secret" not in body and b"root:" not in body


def test_symlink_inside_root_is_served(server: RangeServer) -> None:
    status, _, body = request(server, "/inside-link.bin")
    assert (status, body) == (200, DATA)


@pytest.mark.parametrize("path", ["/pool", "/pool/", "/pool/main/h/hello/"])
def test_directories_are_404(server: RangeServer, path: str) -> None:
    status, _, _ = request(server, path)
    assert status == 404


def test_root_serves_index_html(server: RangeServer) -> None:
    status, headers, body = request(server, "/")
    assert (status, body) == (200, b"<h1>front</h1>")
    assert headers["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/latest.asc", "text/plain; charset=us-ascii"),
        ("/x.torrent", "application/x-bittorrent"),
        ("/x.json", "application/json"),
    ],
)
def test_content_types(server: RangeServer, path: str, content_type: str) -> None:
    _, headers, _ = request(server, path, method="HEAD")
    assert headers["content-type"] == content_type


def test_keep_alive_serves_several_requests_on_one_connection(server: RangeServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for first in (0, 1000, 2000):
            conn.request("GET", "/data.bin", headers={"Range": f"bytes={first}-{first + 9}"})
            response = conn.getresponse()
            assert response.status == 206
            assert response.read() == DATA[first : first + 10]
    finally:
        conn.close()


def test_parse_range_table() -> None:
    assert parse_range("", 10) is None
    assert parse_range("bytes=0-", 10) == (0, 9)
    assert parse_range("bytes = 2 - 3", 10) == (2, 3)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=10-", 10) is False
    assert parse_range("bytes=0-0,2-3", 10) is None


def test_close_releases_port_and_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    first = serve_directory(tmp_path)
    port = int(first.url.rsplit(":", 1)[1])
    # an open keep-alive connection must not keep the server alive
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/a.txt")
    assert conn.getresponse().read() == b"a"
    first.close()
    first.close()
    conn.close()
    with serve_directory(tmp_path, port=port) as second:  # allow_reuse_address
        status, _, body = request(second, "/a.txt")
        assert (status, body) == (200, b"a")


def test_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        serve_directory(tmp_path / "nope")


def test_aria2_multi_connection_download(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_tools("aria2c")
    root = tmp_path / "root"
    root.mkdir()
    name = "big file+1.0~rc1.bin"
    payload = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)
    (root / name).write_bytes(payload)
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG, logger="pipeline.serve")
    with serve_directory(root) as running:
        result = subprocess.run(
            [
                "aria2c",
                "--no-conf",
                "-x4",
                "-s4",
                "--min-split-size=1M",
                "--file-allocation=none",
                "--summary-interval=0",
                "--console-log-level=warn",
                "--download-result=hide",
                "-d",
                str(out),
                "-o",
                "got.bin",
                f"{running.url}/{quote(name, safe='')}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    assert result.returncode == 0, result.stdout + result.stderr
    got = (out / "got.bin").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    partial = [r for r in caplog.records if '" 206 ' in r.getMessage()]
    assert len(partial) >= 2, [r.getMessage() for r in caplog.records]
