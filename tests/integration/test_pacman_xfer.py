"""pacman through the torrents (issue 13, points 2 and 5): the real pacman, with the published
`mirrorseed-xfer` as its XferCommand, on a throwaway root, config, db, cache and gpg dir, against a real
makepkg/repo-add repository whose packages are signed with a test key (`SigLevel = Required
DatabaseOptional`, Arch's default: pacman 6.0 never asks an XferCommand for a database's `.sig`, a
known pacman bug, so `Required` alone fails with any XferCommand).

`pacman -Sy` gets the databases and their signatures over plain HTTP through the helper; `pacman -S` of
a package with a dependency gets both packages by their `.torrent` (the publication's request log) from
the mirror as aria2's webseed (ranged GETs), and pacman checks their signatures (repo-add put them in
the database; a `.sig` pacman asks for goes over plain HTTP).

The index is sharded (docs/sharded-index.md), one shard per repo: with `Shards` not set, the helper
follows the shard of the URL it fetches (`core/os/x86_64/…` -> `core/x86_64`) and never fetches
`extra/x86_64`. A pointer of another format, and a `Shards` pattern that matches nothing, are refused in
one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import MirrorConfig, Settings
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.signing import Signer
from tests.fixtures.archrepo import ArchPkgSpec, build_arch_repo
from tests.gpg_helpers import stop_daemons
from tests.integration.conftest import SigningKey
from tests.mirror_servers import request_log
from tests.tools import require_tools
from tests.tracker import free_port

pytestmark = pytest.mark.integration

TOOLS = ("makepkg", "repo-add", "pacman", "bsdtar", "zstd", "fakeroot", "runuser", "aria2c", "gpgv", "gpg")
PACMAN_TIMEOUT = 240
HELPER_TIMEOUT = 120

LIB = ArchPkgSpec("ms-arch-lib", "1.0", payload_size=300_000, seed=21, description="a library")
TOOL = ArchPkgSpec("ms-arch-tool", "2.0", epoch=1, seed=22, depends=("ms-arch-lib>=1.0",), description="a tool")
OTHER = ArchPkgSpec("ms-arch-other", "1.0", seed=23, description="in the other repo")
REPOS = {"core": (LIB, TOOL), "extra": (OTHER,)}


@dataclass(frozen=True)
class ArchPublication:
    """The mirror's tree and its publication (published once for the module), and the ports they are served on."""

    mirror_root: Path
    dest: Path
    mirror_port: int
    public_port: int

    @property
    def mirror_url(self) -> str:
        return f"http://127.0.0.1:{self.mirror_port}"

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"


@pytest.fixture(scope="module")
def arch_publication(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> Iterator[ArchPublication]:
    require_tools(*TOOLS)
    base = tmp_path_factory.mktemp("pacman-xfer")
    root, dest = base / "mirror", base / "public"
    dest.mkdir()
    signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
    build_arch_repo(root, REPOS, sign=signer.sign_detached)
    mirror_port, public_port = free_port(), free_port()
    with serve_directory(root, port=mirror_port) as mirror, serve_directory(dest, port=public_port) as public:
        report = release(
            Settings(
                snapshot=root,
                format="auto",
                dest=str(dest),
                public_url=public.url,
                repo="arch-xfer",
                mirrors=(MirrorConfig(url=mirror.url, country="DE", name="test mirror"),),
                key=signing_key.fingerprint,
                gnupghome=signing_key.gnupghome,
                state=base / "state.sqlite",
            )  # fmt: skip
        )
    assert report.action == "publish" and report.files == 3
    yield ArchPublication(root, dest, mirror_port, public_port)


@dataclass(frozen=True)
class User:
    helper: Path  # the published mirrorseed-xfer
    env: dict[str, str]  # its settings: the pinned key, a state directory, no DHT


def user_side(publication: ArchPublication, dest: Path, tmp_path: Path) -> User:
    """The published helper (it knows the publication) and the pinned key, from `dest`."""
    helper = tmp_path / "mirrorseed-xfer"
    shutil.copyfile(dest / "clients" / "pacman" / "mirrorseed-xfer", helper)
    helper.chmod(0o755)
    keyring = tmp_path / "signing-key.gpg"
    shutil.copyfile(dest / "signing-key.gpg", keyring)
    env = {k: v for k, v in os.environ.items() if k != "GNUPGHOME" and not k.startswith("MIRRORSEED_")}
    env |= {"MIRRORSEED_KEYRING": str(keyring), "MIRRORSEED_STATEDIR": str(tmp_path / "xfer-state"),
            "MIRRORSEED_DHT": "false"}  # fmt: skip
    return User(helper, env)


@pytest.fixture(autouse=True)
def stop_root_gpg_agent(tmp_path: Path) -> Iterator[None]:
    """pacman's signature checks start a gpg-agent in the throwaway root's gpg dir: stop it with the test."""
    yield
    gpgdir = tmp_path / "root" / "etc" / "pacman.d" / "gnupg"
    if gpgdir.is_dir():
        stop_daemons(gpgdir)


def pacman(config: Path, root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pacman", "--config", str(config), "--root", str(root), "--dbpath", f"{root}/var/lib/pacman",
         "--cachedir", f"{root}/var/cache/pacman/pkg", "--gpgdir", f"{root}/etc/pacman.d/gnupg",
         "--logfile", f"{root}/var/log/pacman.log", "--noconfirm", "--noscriptlet", "--noprogressbar", *args],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PACMAN_TIMEOUT, check=False,
    )  # fmt: skip


def pacman_root(tmp_path: Path, user: User, signing_key: SigningKey, mirror_url: str) -> tuple[Path, Path]:
    """A throwaway root trusting the test key, with a pacman.conf using the helper: (root, config)."""
    root = tmp_path / "root"
    for sub in ("var/lib/pacman", "var/cache/pacman/pkg", "etc/pacman.d/gnupg", "var/log"):
        (root / sub).mkdir(parents=True)
    gpgdir = root / "etc/pacman.d/gnupg"
    gpgdir.chmod(0o700)
    for args, stdin in (
        (["--import", user.env["MIRRORSEED_KEYRING"]], None),
        (["--import-ownertrust"], f"{signing_key.fingerprint}:6:\n"),
    ):
        subprocess.run(["gpg", "--homedir", str(gpgdir), "--batch", *args], input=stdin, text=True,
                       capture_output=True, check=True, timeout=60)  # fmt: skip
    config = root / "etc/pacman.conf"
    config.write_text(
        "[options]\n"
        "Architecture = x86_64\n"
        "SigLevel = Required DatabaseOptional\n"
        f"XferCommand = {user.helper} %u %o\n"
        "[core]\n"
        f"Server = {mirror_url}/$repo/os/$arch\n"
    )
    return root, config


def shard_paths(dest: Path) -> dict[str, str]:
    """Shard name -> its object's key, from the signed pointer in `dest`."""
    out = subprocess.run(
        ["gpgv", "--keyring", str(dest / "signing-key.gpg"), "--output", "-", str(dest / "latest.asc")],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return {shard["name"]: shard["path"] for shard in json.loads(out.stdout)["shards"]}


def test_pacman_installs_through_the_torrents_and_checks_signatures(
    arch_publication: ArchPublication, signing_key: SigningKey, tmp_path: Path
) -> None:
    dest = arch_publication.dest
    user = user_side(arch_publication, dest, tmp_path)
    root, config = pacman_root(tmp_path, user, signing_key, arch_publication.mirror_url)
    with request_log() as log:
        with (
            serve_directory(arch_publication.mirror_root, port=arch_publication.mirror_port),
            serve_directory(dest, port=arch_publication.public_port),
        ):
            synced = pacman(config, root, user.env, "-Sy")
            assert synced.returncode == 0, synced.stdout + synced.stderr
            assert not log.under("torrents") and not log.under("index")  # databases: plain HTTP
            installed = pacman(config, root, user.env, "-S", "ms-arch-tool")
            output = installed.stdout + installed.stderr
            assert installed.returncode == 0, output

    assert "ms-arch-lib" in output  # pulled in as a dependency
    assert "checking package integrity" in output  # the signatures repo-add put in the database (%PGPSIG%)
    listed = subprocess.run(["pacman", "--root", str(root), "--dbpath", f"{root}/var/lib/pacman", "-Q"],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert listed.stdout.splitlines() == ["ms-arch-lib 1.0-1", "ms-arch-tool 1:2.0-1"]
    assert (root / "usr/share/ms-arch-tool/README").is_file()
    torrents = {path for method, path, status in log.under("torrents") if method == "GET" and status == 200}
    assert torrents == {f"/torrents/core/os/x86_64/{spec.filename()}.torrent" for spec in (LIB, TOOL)}
    for spec in (LIB, TOOL):
        package = f"/core/os/x86_64/{spec.filename()}"
        assert {status for _, path, status in log.entries if path == package} == {206}, spec.name  # webseed
        assert (root / "var/cache/pacman/pkg" / spec.filename()).is_file()
    assert "Traceback" not in output + synced.stdout + synced.stderr
    # the shard of the URLs fetched, once (the second package found it kept), never the other repo's
    shards = shard_paths(dest)
    assert sorted(shards) == ["core/x86_64", "extra/x86_64"]
    assert [path for method, path, _ in log.under("index") if method == "GET"] == ["/" + shards["core/x86_64"]]
    assert len(list((tmp_path / "xfer-state").glob("*/shards/*.json"))) == 1


def test_a_pointer_of_another_format_fails_the_package_in_one_line(
    arch_publication: ArchPublication, signing_key: SigningKey, tmp_path: Path
) -> None:
    dest = shutil.copytree(arch_publication.dest, tmp_path / "public", symlinks=True)
    user = user_side(arch_publication, dest, tmp_path)
    root, config = pacman_root(tmp_path, user, signing_key, arch_publication.mirror_url)
    future = {"format": "mirrorseed-pointer/4", "repo": "arch-xfer", "sequence": 7}
    signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
    (dest / "latest.asc").write_bytes(signer.sign_message(json.dumps(future).encode()))
    with request_log() as log:
        with (
            serve_directory(arch_publication.mirror_root, port=arch_publication.mirror_port),
            serve_directory(dest, port=arch_publication.public_port),
        ):
            synced = pacman(config, root, user.env, "-Sy")
            assert synced.returncode == 0, synced.stdout + synced.stderr
            installed = pacman(config, root, user.env, "-S", "ms-arch-lib")
    output = installed.stdout + installed.stderr
    assert installed.returncode != 0 and "Traceback" not in output, output
    url = arch_publication.public_url
    line = (
        f"mirrorseed: {url}/latest.asc: format 'mirrorseed-pointer/4', this client reads 'mirrorseed-pointer/3': "
        f"the publication's current client is at {url}/clients/apt/mirrorseed"
    )
    assert line in output.splitlines(), output
    assert not log.under("index") and not log.under("torrents")
    assert not list((root / "var/cache/pacman/pkg").glob("ms-arch-lib*.pkg.tar.zst"))


def test_a_shards_pattern_that_matches_nothing_is_refused_naming_the_shards(
    arch_publication: ArchPublication, tmp_path: Path
) -> None:
    user = user_side(arch_publication, arch_publication.dest, tmp_path)
    url = f"{arch_publication.mirror_url}/core/os/x86_64/{LIB.filename()}"
    with request_log() as log:
        with (
            serve_directory(arch_publication.mirror_root, port=arch_publication.mirror_port),
            serve_directory(arch_publication.dest, port=arch_publication.public_port),
        ):
            result = subprocess.run(
                [str(user.helper), url, str(tmp_path / "out.part")],
                env=user.env | {"MIRRORSEED_SHARDS": "core/* testing/*"},
                capture_output=True, text=True, timeout=HELPER_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    where = f"{arch_publication.public_url}/latest.asc"
    assert result.stderr == (
        f"mirrorseed: Shards: testing/* matches no shard of {where}; its shards: core/x86_64 extra/x86_64\n"
    )
    assert not log.under("index") and not (tmp_path / "out.part").exists()
