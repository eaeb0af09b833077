"""Real clients download the package torrents and metalinks we build, from a Range-capable server on 127.0.0.1.

aria2c (the documented end-user client) and libtorrent (Python bindings) each fetch every awkward name
through the torrent's `url-list` only: no tracker, DHT, LSD, UPnP or peers.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.hashing import hash_files
from pipeline.model import BuiltPackages, FileEntry
from pipeline.serve import serve_directory
from pipeline.torrents import METALINK_NS, BuildSpec, build_packages
from pipeline.urls import join_url

pytestmark = pytest.mark.integration

NAMES = (
    "libstdc++6_12.2.0-14_amd64.deb",
    "foo_1:2.0~rc1-1_amd64.deb",
    "bar baz_1.0_all.deb",
    "ünïcode_1.0_all.deb",
)
ARIA2 = [
    "aria2c",
    "--no-conf",
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--seed-time=0",
    "--bt-stop-timeout=30",
    "--summary-interval=0",
    "--bt-tracker-connect-timeout=5",
    "--bt-tracker-timeout=5",
    "--console-log-level=warn",
    "--interface=127.0.0.1",
]
ARIA2_TIMEOUT = 45
LIBTORRENT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Site:
    url: str
    dest: Path  # the published destination (torrents/, metalinks/), served at <url>/pub
    contents: dict[str, bytes]  # repo path -> bytes
    built: BuiltPackages


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    www = tmp_path_factory.mktemp("www")
    mirror = www / "debian"
    dest = www / "pub"
    rng = random.Random(20240601)
    contents: dict[str, bytes] = {}
    entries: list[FileEntry] = []
    for index, name in enumerate(NAMES):
        path = f"pool/main/x/xdemo{index}/{name}"
        data = rng.randbytes(rng.randrange(200_000, 400_000))
        source = mirror / path
        source.parent.mkdir(parents=True)
        source.write_bytes(data)
        st = source.stat()
        entries.append(FileEntry(path=path, source=source, size=st.st_size, mtime_ns=st.st_mtime_ns))
        contents[path] = data
    with serve_directory(www) as server:
        spec = BuildSpec(webseeds=(server.url + "/debian",), trackers=(), public_url=server.url + "/pub")
        built = build_packages(hash_files(entries, workers=1), spec)
        for artifact in built.artifacts:
            target = dest / artifact.key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(artifact.data)
        yield Site(url=server.url, dest=dest, contents=contents, built=built)


def run_aria2(args: list[str], download_dir: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("aria2c") is None:
        pytest.fail("aria2c is not installed: run ./bootstrap.sh")
    return subprocess.run(
        [*ARIA2, "-d", str(download_dir), *args],
        capture_output=True,
        text=True,
        timeout=ARIA2_TIMEOUT,
        check=False,
    )


def test_aria2_downloads_each_torrent(site: Site, tmp_path: Path) -> None:
    """All four local .torrent files in one aria2c call, as the user docs show."""
    torrents = [str(site.dest / record.torrent) for record in site.built.records if record.torrent]
    assert len(torrents) == len(NAMES)
    result = run_aria2(torrents, tmp_path)
    assert result.returncode == 0, f"aria2c rc={result.returncode}\n{result.stdout}{result.stderr}"
    for path, data in site.contents.items():
        assert (tmp_path / path.rpartition("/")[2]).read_bytes() == data, path


def test_aria2_torrent_over_http(site: Site, tmp_path: Path) -> None:
    """The documented path: aria2 follows an HTTP(S) .torrent URL (`--follow-torrent=mem`)."""
    record = next(r for r in site.built.records if r.path.endswith("ünïcode_1.0_all.deb"))
    assert record.torrent is not None
    result = run_aria2(["--follow-torrent=mem", join_url(site.url + "/pub", record.torrent)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "ünïcode_1.0_all.deb").read_bytes() == site.contents[record.path]


def test_aria2_downloads_a_metalink(site: Site, tmp_path: Path) -> None:
    record = next(r for r in site.built.records if r.path.endswith("libstdc++6_12.2.0-14_amd64.deb"))
    result = run_aria2(["--follow-metalink=mem", join_url(site.url + "/pub", record.metalink)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "libstdc++6_12.2.0-14_amd64.deb").read_bytes() == site.contents[record.path]


def test_aria2_checks_metalink_pieces_over_plain_urls(site: Site, tmp_path: Path) -> None:
    """Without the torrent metaurl, aria2 uses the `<url>`s and checks each `<pieces>` SHA-1."""
    record = next(r for r in site.built.records if r.path.endswith("bar baz_1.0_all.deb"))
    document = ET.fromstring((site.dest / record.metalink).read_bytes())
    file = document.find(f"{{{METALINK_NS}}}file")
    assert file is not None
    metaurl = file.find(f"{{{METALINK_NS}}}metaurl")
    assert metaurl is not None
    file.remove(metaurl)
    local = tmp_path / "plain.meta4"
    local.write_bytes(ET.tostring(document, encoding="UTF-8", xml_declaration=True))
    out = tmp_path / "out"
    result = run_aria2(["--log=-", "--log-level=info", str(local)], out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.count("Good chunk checksum") == -(-record.size // (record.piece_size or 1))
    assert ".torrent" not in result.stdout
    assert (out / "bar baz_1.0_all.deb").read_bytes() == site.contents[record.path]


def test_libtorrent_downloads_each_torrent(site: Site, tmp_path: Path) -> None:
    try:
        import libtorrent as lt
    except ImportError:
        pytest.fail("libtorrent is not importable: run ./bootstrap.sh (libtorrent is a pinned Python dependency)")
    session = lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "outgoing_interfaces": "127.0.0.1",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "alert_mask": lt.alert_category.error,
        }
    )
    try:
        handles = {}
        for record in site.built.records:
            assert record.torrent is not None
            params = lt.add_torrent_params()
            params.ti = lt.torrent_info(lt.bdecode((site.dest / record.torrent).read_bytes()))
            params.save_path = str(tmp_path)
            handles[record.path] = session.add_torrent(params)
        deadline = time.monotonic() + LIBTORRENT_TIMEOUT
        while time.monotonic() < deadline:
            statuses = {path: handle.status() for path, handle in handles.items()}
            errors = {path: s.errc.message() for path, s in statuses.items() if s.errc.value()}
            assert not errors, errors
            if all(s.is_seeding for s in statuses.values()):
                break
            time.sleep(0.1)
        unfinished = {path: f"{s.state} {s.progress:.0%}" for path, s in statuses.items() if not s.is_seeding}
        alerts = [a.message() for a in session.pop_alerts()]
        assert not unfinished, f"unfinished after {LIBTORRENT_TIMEOUT}s: {unfinished}; alerts: {alerts}"
        for path, data in site.contents.items():
            assert (tmp_path / path.rpartition("/")[2]).read_bytes() == data, path
    finally:
        for handle in list(session.get_torrents()):
            session.remove_torrent(handle)
        del session
