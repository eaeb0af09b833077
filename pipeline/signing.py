"""OpenPGP signing and verification: the only module that imports gnupg (python-gnupg, untyped).

Signing goes through python-gnupg (`Signer`); verification runs `gpgv` as a subprocess with a pinned
binary keyring, exactly as end users do, and accepts a signature only on `GOODSIG` plus a `VALIDSIG`
whose primary-key fingerprint (field 10 in GnuPG's doc/DETAILS) is the pinned one. Exit codes alone
cannot be trusted: a key that expired after signing still gives rc=0.

Secrets: the passphrase comes only from a file or `MIRRORSEED_KEY_PASSPHRASE`; python-gnupg writes it
to gpg's stdin (`--pinentry-mode loopback --passphrase-fd 0`), never to argv or to a log, and the
variable is removed from the environment of every gpg/gpgv child.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gnupg

from pipeline.errors import ConfigError, SigningError
from pipeline.model import KeyInfo

PASSPHRASE_ENV = "MIRRORSEED_KEY_PASSPHRASE"

# python-gnupg logs a WARNING for every non-zero gpg exit (e.g. "key not found" while listing); this
# module turns those outcomes into one-line SigningErrors itself, so only its errors get through.
logging.getLogger("gnupg").setLevel(logging.ERROR)

_FPR_RE = re.compile(r"[0-9A-F]{40}")
_KEYID_RE = re.compile(r"[0-9A-F]{16}")
_ARMOR_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
_ARMOR_PUBKEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_UNUSABLE_VALIDITY = {"e": "expired", "r": "revoked", "i": "invalid", "d": "disabled"}
# Status keywords that reject a verification whatever else gpgv said (GnuPG doc/DETAILS).
_REJECT = {
    "BADSIG": "bad signature",
    "ERRSIG": "signature could not be checked (unknown key or algorithm)",
    "EXPSIG": "the signature has expired",
    "EXPKEYSIG": "the signing key has expired",
    "REVKEYSIG": "the signing key is revoked",
    "NO_PUBKEY": "the signer's public key is not in the keyring",
    "NODATA": "no OpenPGP data found",
    "BADARMOR": "corrupt ASCII armor",
    "FAILURE": "gpgv failed",
}
_GPG_HINT = "install GnuPG 2.2 or later (apt-get install gnupg gpgv)"


def _child_env() -> dict[str, str]:
    """The environment for gpg/gpgv children: ours, minus the passphrase variable."""
    return {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}


def _which(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SigningError(f"{tool}: not found on PATH: {_GPG_HINT}")
    return path


def _date(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def _normalize_fingerprint(fingerprint: str) -> str:
    fpr = fingerprint.replace(" ", "").upper()
    if not _FPR_RE.fullmatch(fpr):
        raise ConfigError(f"{fingerprint!r}: not a 40-hex OpenPGP fingerprint")
    return fpr


def _normalize_key_spec(key: str) -> str:
    spec = key.replace(" ", "").upper()
    spec = spec.removeprefix("0X")
    if not (_FPR_RE.fullmatch(spec) or _KEYID_RE.fullmatch(spec)):
        raise ConfigError(
            f"--key {key!r}: pass the signing key's 40-hex fingerprint (or 16-hex long key id), "
            "as shown by gpg --list-secret-keys --with-colons"
        )
    return spec


def _fix_utf8(text: str) -> str:
    """python-gnupg decodes gpg's UTF-8 output as latin-1 (its default, which never fails): undo that."""
    return text.encode("latin-1").decode("utf-8", "replace")


def _last_gpg_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("[GNUPG:]")]
    return lines[-1] if lines else "no diagnostic"


@dataclass(frozen=True)
class _Verified:
    payload: bytes
    signing_key: str  # fingerprint of the (sub)key that made the signature (VALIDSIG field 1)


def _gpgv(args: list[str], *, keyring: Path, fingerprint: str, workdir: Path) -> str:
    """Run gpgv with status on stdout; return the signing key's fingerprint if accepted, else raise."""
    pinned = _normalize_fingerprint(fingerprint)
    if not keyring.is_file():
        raise SigningError(f"{keyring}: keyring not found: export the signing key there (gpg --export FPR)")
    cmd = [
        _which("gpgv"),
        "--homedir",
        str(workdir),
        "--status-fd",
        "1",
        "--keyring",
        str(keyring.resolve()),
        *args,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, env=_child_env(), timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SigningError(f"gpgv could not run: {err}") from err
    status = [
        line.split()[1:]
        for line in proc.stdout.decode("utf-8", "replace").splitlines()
        if line.startswith("[GNUPG:] ") and len(line.split()) > 1
    ]
    keywords = [fields[0] for fields in status]
    for keyword, reason in _REJECT.items():
        if keyword in keywords:
            raise SigningError(f"signature rejected: {reason} ({keyword}); expected a good signature by {pinned}")
    validsigs = [fields for fields in status if fields[0] == "VALIDSIG"]
    if proc.returncode != 0 or keywords.count("GOODSIG") != 1 or len(validsigs) != 1:
        detail = _last_gpg_line(proc.stderr.decode("utf-8", "replace"))
        raise SigningError(f"signature rejected by gpgv (exit {proc.returncode}): {detail}")
    valid = validsigs[0]
    if len(valid) < 11:  # field 10, the primary key's fingerprint, is always there since GnuPG 1.4
        raise SigningError(f"signature rejected: gpgv gave no primary-key fingerprint; expected {pinned}")
    primary = valid[10].upper()
    if primary != pinned:
        raise SigningError(f"signature rejected: made by key {primary}, not by the pinned key {pinned}")
    return valid[1].upper()


def _verify_message(signed: bytes, *, keyring: Path, fingerprint: str) -> _Verified:
    if signed.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        raise SigningError("signed message rejected: it is clearsigned; expected gpg --sign --armor output")
    if not signed.startswith(_ARMOR_MESSAGE):
        raise SigningError(f"signed message rejected: it does not start with {_ARMOR_MESSAGE.decode()}")
    with tempfile.TemporaryDirectory(prefix="msv") as tmp:
        work = Path(tmp)
        (work / "msg.asc").write_bytes(signed)
        out = work / "payload"
        signer = _gpgv(
            ["--output", str(out), str(work / "msg.asc")], keyring=keyring, fingerprint=fingerprint, workdir=work
        )
        return _Verified(out.read_bytes(), signer)


def _verify_detached(data: bytes, signature: bytes, *, keyring: Path, fingerprint: str) -> str:
    with tempfile.TemporaryDirectory(prefix="msv") as tmp:
        work = Path(tmp)
        (work / "data").write_bytes(data)
        (work / "data.sig").write_bytes(signature)
        return _gpgv(
            [str(work / "data.sig"), str(work / "data")], keyring=keyring, fingerprint=fingerprint, workdir=work
        )


def verify_signed_message(signed: bytes, *, keyring: Path, fingerprint: str) -> bytes:
    """The payload of an armored opaque signed message, if gpgv finds it signed by `fingerprint`.

    `keyring` is a binary keyring (gpg --export); every key in it is trusted by gpgv, so the signer is
    pinned by its primary fingerprint. Clearsigned input is rejected. Raises SigningError.
    """
    return _verify_message(signed, keyring=keyring, fingerprint=fingerprint).payload


def verify_detached(data: bytes, signature: bytes, *, keyring: Path, fingerprint: str) -> None:
    """Check a detached signature over exactly `data`, made by `fingerprint` (primary); else SigningError."""
    _verify_detached(data, signature, keyring=keyring, fingerprint=fingerprint)


@dataclass(frozen=True)
class _SigningKey:
    """The primary key as listed by gpg, and the (sub)key gpg will sign with."""

    fingerprint: str
    uids: tuple[str, ...]
    primary_expires: int | None
    primary_validity: str
    signer: str | None  # fingerprint of the key gpg picks for signing; None if there is none
    signer_expires: int | None


def _epoch(value: str) -> int | None:
    return int(value) if value else None


class Signer:
    """Signs with one key in one GNUPGHOME and checks every signature it makes with gpgv."""

    def __init__(self, *, gnupghome: Path | None, key: str, passphrase_file: Path | None = None) -> None:
        self._home = gnupghome
        self._spec = _normalize_key_spec(key)
        self._passphrase_file = passphrase_file
        self._gpg_instance: Any = None
        self._key: _SigningKey | None = None
        self._checked_signer: str | None = None
        self._public: tuple[bytes, bytes] | None = None

    # -- gpg access ---------------------------------------------------------------------------------

    def _home_label(self) -> str:
        if self._home is not None:
            return str(self._home)
        return os.environ.get("GNUPGHOME") or "~/.gnupg"

    def _gpg(self) -> Any:
        if self._gpg_instance is None:
            binary = _which("gpg")
            _which("gpgv")
            if self._home is not None and not self._home.is_dir():
                raise SigningError(
                    f"key {self._spec} not found in GNUPGHOME {self._home}: the directory does not exist; "
                    "import the key there or pass the right --gnupghome"
                )
            try:
                self._gpg_instance = gnupg.GPG(
                    gpgbinary=binary,
                    gnupghome=None if self._home is None else str(self._home),
                    env=_child_env(),
                    # Never a pinentry prompt: a protected key without a passphrase fails fast in --batch.
                    options=["--pinentry-mode", "loopback"],
                )
            except (OSError, ValueError) as err:
                raise SigningError(f"gpg does not start ({err}): {_GPG_HINT}") from err
        return self._gpg_instance

    def _passphrase(self) -> str | None:
        if self._passphrase_file is not None:
            source = str(self._passphrase_file)
            try:
                raw = self._passphrase_file.read_bytes()
            except OSError as err:
                raise ConfigError(f"{source}: cannot read the passphrase file: {err.strerror}") from err
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{source}: the passphrase file is not UTF-8") from err
            text = text.removesuffix("\n").removesuffix("\r")
        else:
            source = PASSPHRASE_ENV
            text = os.environ.get(PASSPHRASE_ENV, "")
        if not text:
            return None
        if any(c in text for c in "\r\n\x00"):
            raise ConfigError(
                f"{source}: the passphrase contains a line break or NUL, which gpg cannot read from a pipe; "
                "change the key's passphrase (gpg --change-passphrase)"
            )
        # python-gnupg encodes the passphrase as latin-1; this makes the bytes gpg reads the UTF-8 ones.
        return text.encode("utf-8").decode("latin-1")

    def _lookup(self) -> _SigningKey:
        if self._key is not None:
            return self._key
        listing = self._gpg().list_keys(True, keys=[self._spec])
        keys = [k for k in listing if isinstance(k, dict)]
        if not keys:
            raise SigningError(
                f"key {self._spec} not found in GNUPGHOME {self._home_label()}: "
                "import it (gpg --import) or pass the right --key"
            )
        mine = [k for k in keys if str(k.get("fingerprint", "")).upper().endswith(self._spec)]
        if not mine:
            primaries = ", ".join(str(k.get("fingerprint")) for k in keys)
            raise ConfigError(
                f"--key {self._spec} names a subkey of {primaries}: pass the primary key's fingerprint "
                "(clients pin the primary; gpg picks the signing subkey)"
            )
        if len(mine) > 1:
            raise ConfigError(
                f"--key {self._spec} matches {len(mine)} keys in GNUPGHOME {self._home_label()}: "
                "pass the full 40-hex fingerprint"
            )
        self._key = _describe(mine[0])
        return self._key

    # -- public API ---------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """The primary key's 40-hex fingerprint (what clients pin)."""
        if _FPR_RE.fullmatch(self._spec):
            return self._spec
        return self._lookup().fingerprint

    def check_key(self, *, must_be_valid_until: datetime) -> KeyInfo:
        """Refuse (SigningError) unless the key and the subkey gpg signs with are usable until then.

        `KeyInfo.expires` is the earlier of the primary's and the signing subkey's expiry.
        """
        if must_be_valid_until.tzinfo is None:
            raise ValueError("must_be_valid_until must be an aware datetime")
        key = self._lookup()
        fpr = key.fingerprint
        fix = f"extend the key's expiry with gpg --quick-set-expire {fpr} 1y and publish the new public key"
        if key.primary_validity in _UNUSABLE_VALIDITY:
            state = _UNUSABLE_VALIDITY[key.primary_validity]
            if key.primary_validity == "e" and key.primary_expires is not None:
                raise SigningError(f"signing key {fpr} expired on {_date(key.primary_expires)}: {fix}")
            raise SigningError(
                f"signing key {fpr} is {state}: create a new key, publish it and pass its fingerprint with --key"
            )
        if key.signer is None:
            raise SigningError(
                f"signing key {fpr} has no usable signing key with its secret in GNUPGHOME "
                f"{self._home_label()} (expired, revoked or not imported): add one with "
                f"gpg --quick-add-key {fpr} ed25519 sign 1y, or import the secret signing subkey"
            )
        limit = must_be_valid_until.timestamp()
        checks = [("", key.primary_expires, fix)]
        if key.signer != fpr:
            subkey_fix = fix.replace(" 1y ", f" 1y {key.signer} ")
            checks.append((f" (its signing subkey {key.signer})", key.signer_expires, subkey_fix))
        for which, expires, how in checks:
            if expires is not None and expires <= limit:
                raise SigningError(
                    f"signing key {fpr}{which} expires on {_date(expires)}, before {_date(int(limit))} "
                    f"(the pointer's expiry plus the safety margin): {how}"
                )
        self._checked_signer = key.signer
        ends = [e for e in (key.primary_expires, key.signer_expires) if e is not None]
        return KeyInfo(fingerprint=fpr, uids=key.uids, expires=min(ends) if ends else None)

    def sign_detached(self, data: bytes) -> bytes:
        """A binary detached signature over exactly `data`, self-verified with gpgv."""
        signature = self._sign(data, detach=True)
        with self.keyring() as keyring:
            signer = _verify_detached(data, signature, keyring=keyring, fingerprint=self.fingerprint)
        self._check_signer(signer)
        return signature

    def sign_message(self, data: bytes) -> bytes:
        """An ASCII-armored opaque signed message (`gpg --sign --armor`, not clearsigned), self-verified."""
        message = self._sign(data, detach=False)
        if not message.startswith(_ARMOR_MESSAGE):
            raise SigningError(f"gpg produced no armored signed message for key {self.fingerprint}")
        with self.keyring() as keyring:
            verified = _verify_message(message, keyring=keyring, fingerprint=self.fingerprint)
        if verified.payload != data:
            raise SigningError(f"self-verification failed for key {self.fingerprint}: the payload differs")
        self._check_signer(verified.signing_key)
        return message

    def export_public_key(self) -> tuple[bytes, bytes]:
        """(armored `.asc`, binary `.gpg`) public key with its subkeys; the same bytes for the same keyring."""
        if self._public is None:
            fpr = self.fingerprint
            gpg = self._gpg()
            binary = gpg.export_keys(fpr, armor=False)
            armored = gpg.export_keys(fpr, armor=True)
            if not isinstance(binary, bytes) or not binary or not isinstance(armored, str):
                raise SigningError(
                    f"key {fpr}: gpg --export returned nothing from GNUPGHOME {self._home_label()}: "
                    "import the public key there"
                )
            if not armored.startswith(_ARMOR_PUBKEY):
                raise SigningError(f"key {fpr}: gpg --export --armor returned no public key block")
            self._public = (armored.encode("ascii"), binary)
        return self._public

    # -- helpers ------------------------------------------------------------------------------------

    def _sign(self, data: bytes, *, detach: bool) -> bytes:
        fpr = self.fingerprint
        passphrase = self._passphrase()
        try:
            result = self._gpg().sign(
                data,
                keyid=fpr,
                passphrase=passphrase,
                clearsign=False,  # python-gnupg's default is a clearsigned message
                detach=detach,
                binary=detach,
            )
        except ValueError as err:  # python-gnupg refuses passphrases with line breaks
            raise SigningError(f"key {fpr}: gpg refused the passphrase: {err}") from err
        data_out = result.data
        if result.returncode != 0 or result.status != "signature created" or not isinstance(data_out, bytes):
            raise SigningError(f"gpg could not sign with key {fpr}: {_sign_failure(result.stderr, passphrase)}")
        return data_out

    def keyring(self) -> _TempKeyring:
        """A temporary binary keyring holding this key's public part, for gpgv (a context manager -> path)."""
        return _TempKeyring(self.export_public_key()[1])

    def _check_signer(self, signer: str) -> None:
        if self._checked_signer is not None and signer != self._checked_signer:
            raise SigningError(
                f"gpg signed with key {signer}, not with {self._checked_signer} that check_key validated: "
                "remove or revoke the stray signing subkey"
            )


class _TempKeyring:
    """A binary keyring in a private temporary directory, for gpgv."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        self._dir = tempfile.TemporaryDirectory(prefix="msk")
        path = Path(self._dir.name) / "key.gpg"
        path.write_bytes(self._key)
        return path

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            self._dir.cleanup()


def _sign_failure(stderr: Any, passphrase: str | None) -> str:
    text = stderr if isinstance(stderr, str) else ""
    if "Bad passphrase" in text or "BAD_PASSPHRASE" in text:
        return f"bad passphrase: check {PASSPHRASE_ENV} or the passphrase file"
    if passphrase is None and ("NEED_PASSPHRASE" in text or "batchmode" in text):
        return f"the key is passphrase-protected: set {PASSPHRASE_ENV} or pass a passphrase file"
    if "No secret key" in text or "unusable secret key" in text:
        return "no usable secret key: import the secret signing (sub)key into GNUPGHOME"
    return _last_gpg_line(text)


def _describe(key: dict[str, Any]) -> _SigningKey:
    """Which key gpg will sign with: the newest valid signing subkey with a secret, else the primary."""
    candidates: list[tuple[int, str, int | None]] = []
    for sub in (key.get("subkey_info") or {}).values():
        usable = (
            "s" in str(sub.get("cap", ""))
            and str(sub.get("trust", "")) not in _UNUSABLE_VALIDITY
            and str(sub.get("token", "")) not in ("", "#")
        )
        if usable:
            candidates.append((int(sub.get("date") or 0), str(sub["fingerprint"]).upper(), _epoch(sub["expires"])))
    fpr = str(key["fingerprint"]).upper()
    primary_expires = _epoch(str(key.get("expires", "")))
    signer: str | None = None
    signer_expires: int | None = None
    if candidates:
        _, signer, signer_expires = max(candidates, key=lambda c: c[0])
    elif "s" in str(key.get("cap", "")) and str(key.get("token", "")) not in ("", "#"):
        signer, signer_expires = fpr, primary_expires
    return _SigningKey(
        fingerprint=fpr,
        uids=tuple(_fix_utf8(str(u)) for u in key.get("uids", [])),
        primary_expires=primary_expires,
        primary_validity=str(key.get("trust", "")),
        signer=signer,
        signer_expires=signer_expires,
    )
