"""Bad input through the operator's CLI: one line on stderr, exit code != 0, the destination as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gpg_helpers import make_key
from tests.integration.conftest import SigningKey, run_cli, tree_state

pytestmark = pytest.mark.integration


def release_args(snapshot: Path, dest: Path, key: str, *extra: str) -> list[str]:
    return [
        "release",
        "--snapshot",
        str(snapshot),
        "--dest",
        str(dest),
        "--key",
        key,
        "--public-url",
        "http://127.0.0.1:9/pub",
        "--webseed",
        "http://127.0.0.1:9/mirror",
        "--allow-peer-only",
        "--repo",
        "test",
        *extra,
    ]


def assert_refused(result: object, dest: Path, before: dict[str, tuple[bytes, int]], *needles: str) -> str:
    import subprocess

    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert tree_state(dest) == before
    return str(lines[0])


@pytest.fixture
def published(debian_repo: Path, signing_key: SigningKey, tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    """A destination holding a good publication, to prove a failed run leaves it untouched."""
    dest = tmp_path / "dest"
    ok = run_cli(
        *release_args(debian_repo, dest, signing_key.fingerprint), env={"GNUPGHOME": str(signing_key.gnupghome)}
    )
    assert ok.returncode == 0, ok.stderr
    return dest, tree_state(dest)


def test_no_configuration_refuses_and_never_falls_back_to_the_demo(tmp_path: Path) -> None:
    result = run_cli("release", cwd=tmp_path)
    assert_refused(result, tmp_path / "public", {}, "snapshot")
    assert not (tmp_path / "public").exists()


def test_missing_snapshot(
    signing_key: SigningKey, published: tuple[Path, dict[str, tuple[bytes, int]]], tmp_path: Path
) -> None:
    dest, before = published
    result = run_cli(
        *release_args(tmp_path / "nope", dest, signing_key.fingerprint), env={"GNUPGHOME": str(signing_key.gnupghome)}
    )
    assert_refused(result, dest, before, "nope")


@pytest.mark.parametrize("damage", ["size", "hash"])
def test_corrupt_package_is_named_and_nothing_is_published(
    debian_repo: Path, signing_key: SigningKey, published: tuple[Path, dict[str, tuple[bytes, int]]], damage: str
) -> None:
    dest, before = published
    victim = sorted(debian_repo.glob("pool/**/hello_*.deb"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "size":
        data += b"x"
    else:
        data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = run_cli(
        *release_args(debian_repo, dest, signing_key.fingerprint), env={"GNUPGHOME": str(signing_key.gnupghome)}
    )
    assert_refused(result, dest, before, victim.name)


def test_unknown_key(
    debian_repo: Path, signing_key: SigningKey, published: tuple[Path, dict[str, tuple[bytes, int]]]
) -> None:
    dest, before = published
    result = run_cli(
        *release_args(debian_repo, dest, "0123456789ABCDEF0123456789ABCDEF01234567"),
        env={"GNUPGHOME": str(signing_key.gnupghome)},
    )
    assert_refused(result, dest, before, "0123456789ABCDEF0123456789ABCDEF01234567")


@pytest.mark.parametrize("expire", ["expired", "3d"])
def test_expired_or_soon_expiring_key(
    debian_repo: Path, signing_key: SigningKey, published: tuple[Path, dict[str, tuple[bytes, int]]], expire: str
) -> None:
    dest, before = published
    fpr = make_key(
        signing_key.gnupghome,
        uid=f"short-lived {expire} <s@example.invalid>",
        expire="1d" if expire == "expired" else expire,
        expired=expire == "expired",
    )
    result = run_cli(*release_args(debian_repo, dest, fpr), env={"GNUPGHOME": str(signing_key.gnupghome)})
    assert_refused(result, dest, before, fpr)


def test_symlink_escaping_the_root(signing_key: SigningKey, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ok.bin").write_bytes(b"fine")
    os.symlink("/etc/hostname", flat / "escape.bin")
    dest = tmp_path / "dest"
    result = run_cli(
        *release_args(flat, dest, signing_key.fingerprint, "--format", "flat"),
        env={"GNUPGHOME": str(signing_key.gnupghome)},
    )
    assert_refused(result, dest, {}, "escape.bin")
    assert not dest.exists()


def test_destination_under_a_regular_file(debian_repo: Path, signing_key: SigningKey, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    result = run_cli(
        *release_args(debian_repo, blocker / "public", signing_key.fingerprint),
        env={"GNUPGHOME": str(signing_key.gnupghome)},
    )
    assert_refused(result, blocker, {}, str(blocker))
    assert blocker.read_text() == "a file, not a directory"


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_state_path_that_cannot_hold_a_file(
    debian_repo: Path, signing_key: SigningKey, tmp_path: Path, where: str
) -> None:
    if where == "directory":
        state = tmp_path / "state-dir"
        state.mkdir()
    else:
        (tmp_path / "blocker").write_text("a file")
        state = tmp_path / "blocker" / "state.sqlite"
    dest = tmp_path / "dest"
    result = run_cli(
        *release_args(debian_repo, dest, signing_key.fingerprint, "--state", str(state)),
        env={"GNUPGHOME": str(signing_key.gnupghome)},
    )
    line = assert_refused(result, dest, tree_state(dest) if dest.exists() else {}, str(state), "point --state at")
    assert "rebuilding" not in result.stderr and "Traceback" not in result.stderr, line


@pytest.mark.parametrize("char", ["\ufffe", "\u202e", "\u200b"], ids=ascii)
def test_flat_file_name_that_breaks_xml_or_listings(signing_key: SigningKey, tmp_path: Path, char: str) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ok.bin").write_bytes(b"fine")
    name = f"evil{char}.bin"
    (flat / name).write_bytes(b"bad name")
    dest = tmp_path / "dest"
    result = run_cli(
        *release_args(flat, dest, signing_key.fingerprint, "--format", "flat"),
        env={"GNUPGHOME": str(signing_key.gnupghome)},
    )
    line = assert_refused(result, dest, {}, ascii(name), f"U+{ord(char):04X}", "rename it")
    assert line.isascii()
    assert not dest.exists()
