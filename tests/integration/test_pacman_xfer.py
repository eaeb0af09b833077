"""pacman through the torrents (issue 13, points 2 and 5): the real pacman, with the published
`mirrorseed-xfer` as its XferCommand, on a throwaway root, config, db, cache and gpg dir, against a real
makepkg/repo-add repository whose packages are signed with a test key (`SigLevel = Required
DatabaseOptional`, Arch's default: pacman 6.0 never asks an XferCommand for a database's `.sig`, a
known pacman bug, so `Required` alone fails with any XferCommand).

`pacman -Sy` gets the databases and their signatures over plain HTTP through the helper; `pacman -S` of
a package with a dependency gets both packages by their `.torrent` (the publication's request log) from
the mirror as aria2's webseed (ranged GETs), and pacman checks their signatures (repo-add put them in
the database; a `.sig` pacman asks for goes over plain HTTP).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import MirrorConfig, Settings
from pipeline.run import release
from pipeline.serve import serve_directory
from pipeline.signing import Signer
from tests.fixtures.archrepo import ArchPkgSpec, build_arch_repo
from tests.integration.conftest import SigningKey
from tests.mirror_servers import request_log
from tests.tools import require_tools
from tests.tracker import free_port

pytestmark = pytest.mark.integration

TOOLS = ("makepkg", "repo-add", "pacman", "bsdtar", "zstd", "fakeroot", "runuser", "aria2c", "gpgv", "gpg")
PACMAN_TIMEOUT = 240

LIB = ArchPkgSpec("ms-arch-lib", "1.0", payload_size=300_000, seed=21, description="a library")
TOOL = ArchPkgSpec("ms-arch-tool", "2.0", epoch=1, seed=22, depends=("ms-arch-lib>=1.0",), description="a tool")
REPOS = {"core": (LIB, TOOL)}


@pytest.fixture(scope="module")
def arch_publication(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> Iterator[tuple[Path, Path]]:
    """(the mirror's tree; its publication), published once for the module."""
    require_tools(*TOOLS)
    base = tmp_path_factory.mktemp("pacman-xfer")
    root, dest = base / "mirror", base / "public"
    dest.mkdir()
    signer = Signer(gnupghome=signing_key.gnupghome, key=signing_key.fingerprint)
    build_arch_repo(root, REPOS, sign=signer.sign_detached)
    yield root, dest


def pacman(config: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GNUPGHOME"}
    return subprocess.run(
        ["pacman", "--config", str(config), "--root", str(root), "--dbpath", f"{root}/var/lib/pacman",
         "--cachedir", f"{root}/var/cache/pacman/pkg", "--gpgdir", f"{root}/etc/pacman.d/gnupg",
         "--logfile", f"{root}/var/log/pacman.log", "--noconfirm", "--noscriptlet", "--noprogressbar", *args],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PACMAN_TIMEOUT, check=False,
    )  # fmt: skip


def test_pacman_installs_through_the_torrents_and_checks_signatures(
    arch_publication: tuple[Path, Path], signing_key: SigningKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror_root, dest = arch_publication
    mirror_port, public_port = free_port(), free_port()
    with request_log() as log:
        with (
            serve_directory(mirror_root, port=mirror_port) as mirror,
            serve_directory(dest, port=public_port) as public,
        ):
            report = release(
                Settings(
                    snapshot=mirror_root,
                    format="auto",
                    dest=str(dest),
                    public_url=public.url,
                    repo="arch-xfer",
                    mirrors=(MirrorConfig(url=mirror.url, country="DE", name="test mirror"),),
                    key=signing_key.fingerprint,
                    gnupghome=signing_key.gnupghome,
                    state=tmp_path / "state.sqlite",
                )  # fmt: skip
            )
            assert report.action == "publish" and report.files == 2
            log.clear()

            # the user's side: the published helper (it knows the publication) and the pinned key
            helper = tmp_path / "mirrorseed-xfer"
            shutil.copyfile(dest / "clients" / "pacman" / "mirrorseed-xfer", helper)
            helper.chmod(0o755)
            keyring = tmp_path / "signing-key.gpg"
            shutil.copyfile(dest / "signing-key.gpg", keyring)
            monkeypatch.setenv("MIRRORSEED_KEYRING", str(keyring))
            monkeypatch.setenv("MIRRORSEED_STATE_DIR", str(tmp_path / "xfer-state"))
            monkeypatch.setenv("MIRRORSEED_DHT", "false")

            root = tmp_path / "root"
            for sub in ("var/lib/pacman", "var/cache/pacman/pkg", "etc/pacman.d/gnupg", "var/log"):
                (root / sub).mkdir(parents=True)
            gpgdir = root / "etc/pacman.d/gnupg"
            gpgdir.chmod(0o700)
            for args, stdin in (
                (["--import", str(keyring)], None),
                (["--import-ownertrust"], f"{signing_key.fingerprint}:6:\n"),
            ):
                subprocess.run(["gpg", "--homedir", str(gpgdir), "--batch", *args], input=stdin, text=True,
                               capture_output=True, check=True, timeout=60)  # fmt: skip
            config = root / "etc/pacman.conf"
            config.write_text(
                "[options]\n"
                "Architecture = x86_64\n"
                "SigLevel = Required DatabaseOptional\n"
                f"XferCommand = {helper} %u %o\n"
                "[core]\n"
                f"Server = {mirror.url}/$repo/os/$arch\n"
            )
            synced = pacman(config, root, "-Sy")
            assert synced.returncode == 0, synced.stdout + synced.stderr
            assert not log.under("torrents")  # databases: plain HTTP
            installed = pacman(config, root, "-S", "ms-arch-tool")
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
