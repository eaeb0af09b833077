"""pipeline.signing with real gpg/gpgv in throwaway GNUPGHOMEs (no network, no pinentry)."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline import signing
from pipeline.errors import ConfigError, SigningError
from pipeline.signing import Signer, verify_detached, verify_signed_message
from tests.gpg_helpers import add_signing_subkey, export_keyring, make_key, temp_gnupghome

PAYLOAD = '{"format": "mirrorseed-pointer/1", "repo": "dé"}\r\n  trailing spaces  \n'.encode()
SOON = datetime.now(UTC) + timedelta(days=14)


@dataclass(frozen=True)
class Keys:
    home: Path
    fpr: str  # the signer
    other: str  # a second key in the same GNUPGHOME, same uid
    keyring: Path  # binary public keyring holding only `fpr`
    both: Path  # binary public keyring holding both keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    with temp_gnupghome() as home:
        fpr = make_key(home)
        other = make_key(home)
        out = tmp_path_factory.mktemp("keyrings")
        keyring = export_keyring(home, fpr, out / "key.gpg")
        (out / "both.gpg").write_bytes(
            keyring.read_bytes() + export_keyring(home, other, out / "other.gpg").read_bytes()
        )
        yield Keys(home, fpr, other, keyring, out / "both.gpg")


@pytest.fixture(autouse=True)
def _no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signing.PASSPHRASE_ENV, raising=False)


def gpgv(*args: str | Path, home: Path) -> subprocess.CompletedProcess[bytes]:
    """gpgv exactly as the README's user recipe runs it (keyring given as a path with a slash)."""
    return subprocess.run(
        ["gpgv", *map(str, args)], capture_output=True, env={**os.environ, "GNUPGHOME": str(home)}, check=False
    )


def crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def rearmor(message: bytes, edit: Any) -> bytes:
    """Decode an armored message, apply `edit` to the binary packets, re-armor with a correct CRC."""
    lines = message.decode().splitlines()
    body = lines[lines.index("") + 1 : -2]  # between the blank line and "=CRC", "-----END"
    binary = edit(base64.b64decode("".join(body)))
    crc = base64.b64encode(crc24(binary).to_bytes(3, "big")).decode()
    encoded = base64.b64encode(binary).decode()
    chunks = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    return "\n".join([lines[0], "", *chunks, "=" + crc, lines[-1], ""]).encode()


# -- signing output --------------------------------------------------------------------------------


def test_sign_message_is_opaque_and_gpgv_recovers_exact_payload(keys: Keys, tmp_path: Path) -> None:
    message = Signer(gnupghome=keys.home, key=keys.fpr).sign_message(PAYLOAD)
    assert message.startswith(b"-----BEGIN PGP MESSAGE-----\n")
    assert b"SIGNED MESSAGE" not in message and PAYLOAD not in message
    (tmp_path / "latest.asc").write_bytes(message)
    result = gpgv("--keyring", keys.keyring, "--output", tmp_path / "out", tmp_path / "latest.asc", home=keys.home)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    assert verify_signed_message(message, keyring=keys.keyring, fingerprint=keys.fpr) == PAYLOAD


def test_detached_signature_covers_exact_bytes(keys: Keys, tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    signature = Signer(gnupghome=keys.home, key=keys.fpr).sign_detached(data)
    assert signature[0] & 0x80 and not signature.startswith(b"-----")  # a binary OpenPGP packet
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "f.sig").write_bytes(signature)
    assert gpgv("--keyring", keys.keyring, tmp_path / "f.sig", tmp_path / "f", home=keys.home).returncode == 0
    verify_detached(data, signature, keyring=keys.keyring, fingerprint=keys.fpr)
    flipped = bytearray(data)
    flipped[1000] ^= 0x01
    (tmp_path / "f").write_bytes(bytes(flipped))
    assert gpgv("--keyring", keys.keyring, tmp_path / "f.sig", tmp_path / "f", home=keys.home).returncode != 0
    with pytest.raises(SigningError, match="BADSIG"):
        verify_detached(bytes(flipped), signature, keyring=keys.keyring, fingerprint=keys.fpr)


def test_verify_detached_refuses_an_opaque_message_as_signature(keys: Keys) -> None:
    message = Signer(gnupghome=keys.home, key=keys.fpr).sign_message(b"something else")
    with pytest.raises(SigningError):
        verify_detached(b"data", message, keyring=keys.keyring, fingerprint=keys.fpr)


# -- verification pins the primary fingerprint -------------------------------------------------------


def test_verify_pins_fingerprint_even_when_keyring_trusts_both(keys: Keys) -> None:
    by_other = Signer(gnupghome=keys.home, key=keys.other).sign_message(PAYLOAD)
    assert verify_signed_message(by_other, keyring=keys.both, fingerprint=keys.other) == PAYLOAD
    with pytest.raises(SigningError, match=f"made by key {keys.other}, not by the pinned key {keys.fpr}"):
        verify_signed_message(by_other, keyring=keys.both, fingerprint=keys.fpr)
    with pytest.raises(SigningError):  # the other key is not in this keyring at all
        verify_signed_message(by_other, keyring=keys.keyring, fingerprint=keys.fpr)
    signature = Signer(gnupghome=keys.home, key=keys.other).sign_detached(b"x")
    with pytest.raises(SigningError, match="not by the pinned key"):
        verify_detached(b"x", signature, keyring=keys.both, fingerprint=keys.fpr)


def test_verify_rejects_tampered_armor_and_clearsigned(keys: Keys) -> None:
    message = Signer(gnupghome=keys.home, key=keys.fpr).sign_message(PAYLOAD)
    assert rearmor(message, lambda b: b).replace(b"\n", b"") == message.replace(b"\n", b"")  # helper is faithful
    # An uncompressed message, so that each edit lands on a known byte: a bit flipped in the last bytes of a
    # deflate stream can fall on bits gpg never reads, and such a flip went unnoticed once in CI.
    plain = subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--batch", "--sign", "--armor", "--compress-algo", "none"]
        + ["--default-key", keys.fpr],
        input=PAYLOAD,
        capture_output=True,
        check=True,
    ).stdout
    assert verify_signed_message(plain, keyring=keys.keyring, fingerprint=keys.fpr) == PAYLOAD

    def flip_payload(binary: bytes) -> bytes:
        at = binary.index(PAYLOAD) + len(PAYLOAD) // 2
        return binary[:at] + bytes([binary[at] ^ 0x01]) + binary[at + 1 :]

    def flip_signature(binary: bytes) -> bytes:  # the last byte is the signature's own value
        return binary[:-1] + bytes([binary[-1] ^ 0x01])

    for edit in (flip_payload, flip_signature):
        with pytest.raises(SigningError):
            verify_signed_message(rearmor(plain, edit), keyring=keys.keyring, fingerprint=keys.fpr)
    lines = message.split(b"\n")
    lines[3] = lines[3][:10] + (b"A" if lines[3][10:11] != b"A" else b"B") + lines[3][11:]
    with pytest.raises(SigningError):  # naive edit: the armor CRC catches it
        verify_signed_message(b"\n".join(lines), keyring=keys.keyring, fingerprint=keys.fpr)
    clear = subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--batch", "--clearsign", "--default-key", keys.fpr],
        input=PAYLOAD,
        capture_output=True,
        check=True,
    ).stdout
    with pytest.raises(SigningError, match="clearsigned"):
        verify_signed_message(clear, keyring=keys.keyring, fingerprint=keys.fpr)


def test_verify_rejects_signature_by_key_expired_since(tmp_path: Path) -> None:
    """gpgv exits 0 for a key that expired after signing (EXPKEYSIG + VALIDSIG): the status decides."""
    with temp_gnupghome() as home:
        fpr = make_key(home, expire="1d", expired=True)
        listing = subprocess.run(
            ["gpg", "--homedir", str(home), "--with-colons", "--list-keys", fpr], capture_output=True, text=True
        ).stdout
        created = int(next(line for line in listing.splitlines() if line.startswith("pub:")).split(":")[5])
        message = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--faked-system-time", f"{created + 3600}!"]
            + ["--sign", "--armor", "--default-key", fpr],
            input=PAYLOAD,
            capture_output=True,
            check=True,
        ).stdout
        keyring = export_keyring(home, fpr, tmp_path / "k.gpg")
        (tmp_path / "m.asc").write_bytes(message)
        assert gpgv("--keyring", keyring, tmp_path / "m.asc", home=home).returncode == 0  # the trap
        with pytest.raises(SigningError, match="EXPKEYSIG"):
            verify_signed_message(message, keyring=keyring, fingerprint=fpr)


def test_verify_needs_a_full_fingerprint_and_an_existing_keyring(keys: Keys, tmp_path: Path) -> None:
    message = Signer(gnupghome=keys.home, key=keys.fpr).sign_message(b"x")
    with pytest.raises(ConfigError):
        verify_signed_message(message, keyring=keys.keyring, fingerprint=keys.fpr[-16:])
    with pytest.raises(SigningError, match="keyring not found"):
        verify_signed_message(message, keyring=tmp_path / "missing.gpg", fingerprint=keys.fpr)


# -- check_key -------------------------------------------------------------------------------------


def test_check_key_valid(keys: Keys) -> None:
    info = Signer(gnupghome=keys.home, key=keys.fpr.lower()).check_key(must_be_valid_until=SOON)
    assert info.fingerprint == keys.fpr
    assert info.uids == ("mirrorseed test <test@example.invalid>",)
    assert info.expires is not None
    one_year = datetime.now(UTC) + timedelta(days=365)
    assert abs(info.expires - one_year.timestamp()) < 2 * 86400


def test_check_key_accepts_long_key_id(keys: Keys) -> None:
    signer = Signer(gnupghome=keys.home, key="0x" + keys.fpr[-16:])
    assert signer.fingerprint == keys.fpr
    assert signer.check_key(must_be_valid_until=SOON).fingerprint == keys.fpr


def test_check_key_no_expiry() -> None:
    with temp_gnupghome() as home:
        fpr = make_key(home, expire="never")
        info = Signer(gnupghome=home, key=fpr).check_key(must_be_valid_until=SOON + timedelta(days=3650))
        assert info.expires is None


@pytest.mark.parametrize("key", ["mirrorseed test", "ABCDEF", "G" * 40, "test@example.invalid", ""])
def test_key_spec_must_be_fingerprint_or_long_id(key: str) -> None:
    with pytest.raises(ConfigError, match="40-hex fingerprint"):
        Signer(gnupghome=None, key=key)


def test_check_key_unknown_key(keys: Keys) -> None:
    missing = "0123456789ABCDEF0123456789ABCDEF01234567"
    with pytest.raises(SigningError, match=f"key {missing} not found in GNUPGHOME {keys.home}: import it"):
        Signer(gnupghome=keys.home, key=missing).check_key(must_be_valid_until=SOON)


def test_check_key_missing_gnupghome(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="not found in GNUPGHOME"):
        Signer(gnupghome=tmp_path / "nope", key="0123456789ABCDEF").check_key(must_be_valid_until=SOON)


def test_check_key_expired() -> None:
    with temp_gnupghome() as home:
        fpr = make_key(home, expire="1d", expired=True)
        with pytest.raises(SigningError, match=f"signing key {fpr} expired on 20.*--quick-set-expire {fpr}") as err:
            Signer(gnupghome=home, key=fpr).check_key(must_be_valid_until=SOON)
        assert "\n" not in str(err.value) and "publish the new public key" in str(err.value)


def test_check_key_expiring_before_required_date(keys: Keys) -> None:
    with temp_gnupghome() as home:
        fpr = make_key(home, expire="10d")
        expiry = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%d")
        with pytest.raises(SigningError, match=f"signing key {fpr} expires on {expiry}, before .*quick-set-expire"):
            Signer(gnupghome=home, key=fpr).check_key(must_be_valid_until=SOON)
        assert Signer(gnupghome=home, key=fpr).check_key(must_be_valid_until=SOON - timedelta(days=7)).expires


def test_check_key_checks_the_signing_subkey() -> None:
    with temp_gnupghome() as home:
        fpr = make_key(home, expire="2y")
        sub = add_signing_subkey(home, fpr, expire="10d")
        with pytest.raises(SigningError, match=f"its signing subkey {sub}.*quick-set-expire {fpr} 1y {sub}"):
            Signer(gnupghome=home, key=fpr).check_key(must_be_valid_until=SOON)
        signer = Signer(gnupghome=home, key=fpr)
        info = signer.check_key(must_be_valid_until=datetime.now(UTC) + timedelta(days=5))
        assert info.fingerprint == fpr and info.expires is not None
        assert info.expires < (datetime.now(UTC) + timedelta(days=11)).timestamp()  # the subkey's expiry
        signer.sign_message(b"x")


def test_check_key_subkey_fingerprint_is_not_the_key() -> None:
    with temp_gnupghome() as home:
        fpr = make_key(home)
        sub = add_signing_subkey(home, fpr)
        with pytest.raises(ConfigError, match=f"names a subkey of {fpr}"):
            Signer(gnupghome=home, key=sub).check_key(must_be_valid_until=SOON)


def test_check_key_revoked() -> None:
    with temp_gnupghome() as home:
        fpr = make_key(home)
        cert = (home / "openpgp-revocs.d" / f"{fpr}.rev").read_text().replace(":-----BEGIN", "-----BEGIN")
        subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--import"], input=cert.encode(), check=True, capture_output=True
        )
        with pytest.raises(SigningError, match=f"signing key {fpr} is revoked"):
            Signer(gnupghome=home, key=fpr).check_key(must_be_valid_until=SOON)


def test_offline_primary_with_secret_subkey_only(tmp_path: Path) -> None:
    """The CI setup: only the signing subkey's secret (gpg --export-secret-subkeys SUB!); clients pin the primary."""
    with temp_gnupghome() as home, temp_gnupghome() as ci:
        fpr = make_key(home)
        sub = add_signing_subkey(home, fpr)
        secret = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--export-secret-subkeys", sub + "!"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(
            ["gpg", "--homedir", str(ci), "--batch", "--import"], input=secret, check=True, capture_output=True
        )
        signer = Signer(gnupghome=ci, key=fpr)
        assert signer.check_key(must_be_valid_until=SOON).fingerprint == fpr
        message = signer.sign_message(PAYLOAD)
        keyring = export_keyring(home, fpr, tmp_path / "pinned.gpg")
        assert verify_signed_message(message, keyring=keyring, fingerprint=fpr) == PAYLOAD


def test_gpg_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: Keys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SigningError, match="apt-get install gnupg"):
        Signer(gnupghome=keys.home, key=keys.fpr).check_key(must_be_valid_until=SOON)
    with pytest.raises(SigningError, match="gpgv: not found"):
        verify_detached(b"x", b"y", keyring=keys.keyring, fingerprint=keys.fpr)


# -- self-verification -----------------------------------------------------------------------------


def test_self_verification_failure_is_an_error(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    signer = Signer(gnupghome=keys.home, key=keys.fpr)
    other_public = Signer(gnupghome=keys.home, key=keys.other).export_public_key()
    monkeypatch.setattr(signer, "export_public_key", lambda: other_public)
    with pytest.raises(SigningError):
        signer.sign_message(b"x")
    with pytest.raises(SigningError):
        signer.sign_detached(b"x")


def test_signing_with_a_key_other_than_the_checked_one_fails() -> None:
    with temp_gnupghome() as home:
        fpr = make_key(home)
        signer = Signer(gnupghome=home, key=fpr)
        signer.check_key(must_be_valid_until=SOON)
        newer = add_signing_subkey(home, fpr)  # gpg now prefers this one; check_key did not see it
        with pytest.raises(SigningError, match=f"gpg signed with key {newer}, not with {fpr}"):
            signer.sign_message(b"x")


# -- passphrases -----------------------------------------------------------------------------------

PASSPHRASE = "correct hörse ✓ battery"


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    with temp_gnupghome() as home:
        fpr = make_key(home, passphrase=PASSPHRASE)
        keyring = export_keyring(home, fpr, tmp_path_factory.mktemp("protected") / "key.gpg")
        yield home, fpr, keyring


def test_passphrase_from_file(protected: tuple[Path, str, Path], tmp_path: Path) -> None:
    home, fpr, keyring = protected
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    message = Signer(gnupghome=home, key=fpr, passphrase_file=tmp_path / "pass").sign_message(PAYLOAD)
    assert verify_signed_message(message, keyring=keyring, fingerprint=fpr) == PAYLOAD


def test_passphrase_from_env(protected: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    home, fpr, keyring = protected
    monkeypatch.setenv(signing.PASSPHRASE_ENV, PASSPHRASE)
    signature = Signer(gnupghome=home, key=fpr).sign_detached(b"data")
    verify_detached(b"data", signature, keyring=keyring, fingerprint=fpr)


def test_missing_or_wrong_passphrase(protected: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    home, fpr, _ = protected
    with pytest.raises(SigningError, match=f"passphrase-protected: set {signing.PASSPHRASE_ENV}"):
        Signer(gnupghome=home, key=fpr).sign_message(b"x")
    monkeypatch.setenv(signing.PASSPHRASE_ENV, "wrong")
    with pytest.raises(SigningError, match="bad passphrase"):
        Signer(gnupghome=home, key=fpr).sign_message(b"x")


@pytest.mark.parametrize("bad", ["two\nlines", "cr\rhere", "nul\x00here"])
def test_passphrase_with_line_break_or_nul_refused(protected: tuple[Path, str, Path], tmp_path: Path, bad: str) -> None:
    home, fpr, _ = protected
    (tmp_path / "pass").write_text(bad, newline="")
    with pytest.raises(ConfigError, match="line break or NUL"):
        Signer(gnupghome=home, key=fpr, passphrase_file=tmp_path / "pass").sign_message(b"x")


def test_unreadable_passphrase_file(protected: tuple[Path, str, Path], tmp_path: Path) -> None:
    home, fpr, _ = protected
    with pytest.raises(ConfigError, match="cannot read the passphrase file"):
        Signer(gnupghome=home, key=fpr, passphrase_file=tmp_path / "missing").sign_message(b"x")


def test_passphrase_never_in_argv_env_or_logs(
    protected: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home, fpr, _ = protected
    spawned: list[tuple[list[str], dict[str, str] | None]] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            spawned.append(([str(a) for a in args], kwargs.get("env")))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr("pipeline.signing.gnupg.Popen", RecordingPopen)  # python-gnupg's own reference
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)  # subprocess.run (gpgv)
    monkeypatch.setenv(signing.PASSPHRASE_ENV, PASSPHRASE)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="gnupg")  # python-gnupg logs argv and gpg output at DEBUG
    Signer(gnupghome=home, key=fpr).sign_message(PAYLOAD)
    signs = [argv for argv, _ in spawned if "-sa" in argv]
    assert signs and all("--passphrase-fd" in argv and "--pinentry-mode" in argv for argv in signs)
    assert any(argv[0].endswith("gpgv") for argv, _ in spawned)
    for argv, env in spawned:
        assert not any(PASSPHRASE in arg for arg in argv)
        assert "--passphrase" not in argv
        assert env is not None and signing.PASSPHRASE_ENV not in env
    assert "--passphrase-fd" in caplog.text  # the gpg command lines were logged and seen
    assert PASSPHRASE not in caplog.text


# -- export --------------------------------------------------------------------------------------


def test_export_public_key(keys: Keys, tmp_path: Path) -> None:
    signer = Signer(gnupghome=keys.home, key=keys.fpr)
    armored, binary = signer.export_public_key()
    assert armored.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert armored.rstrip().endswith(b"-----END PGP PUBLIC KEY BLOCK-----")
    assert binary[0] & 0x80 and b"PRIVATE" not in armored
    assert Signer(gnupghome=keys.home, key=keys.fpr).export_public_key() == (armored, binary)  # deterministic
    (tmp_path / "signing-key.gpg").write_bytes(binary)
    (tmp_path / "f").write_bytes(b"payload")
    (tmp_path / "f.sig").write_bytes(signer.sign_detached(b"payload"))
    ok = gpgv("--keyring", tmp_path / "signing-key.gpg", tmp_path / "f.sig", tmp_path / "f", home=keys.home)
    assert ok.returncode == 0, ok.stderr
    shown = subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--show-keys", "--with-colons"],
        input=armored,
        capture_output=True,
        check=True,
    )
    assert f"fpr:::::::::{keys.fpr}:" in shown.stdout.decode()
    assert keys.other not in shown.stdout.decode()
