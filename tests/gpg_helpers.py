"""Throwaway OpenPGP keys for tests (real gpg, no network, no pinentry).

API (keep it small; other test modules use it):

- ``temp_gnupghome()``: context manager yielding a fresh, short, mode-0700 GNUPGHOME under /tmp (agent
  socket paths must fit 108 bytes). The agent is told not to cache passphrases, so a test that signs
  without a passphrase really fails after another one signed with it. On exit the home's gpg daemons are
  stopped (``stop_daemons``) and the directory is removed.
- ``stop_daemons(home)``: stop the gpg daemons (agent, dirmngr…) running for GNUPGHOME ``home``, as
  ``gpgconf --kill all`` with that GNUPGHOME does; for a gpg dir some other tool started them in.
- ``make_key(home, *, uid, expire, passphrase, algo, expired)``: a new primary key (sign + certify) and
  its fingerprint. ``expire`` is gpg's syntax ("1y", "10d", "2w", "0"/"never"). ``expired=True``
  back-dates its creation with ``--faked-system-time`` by ``expire`` + 2 days, so the key has already
  expired (its self-signature is valid; it just is not usable any more).
- ``add_signing_subkey(home, fingerprint, *, expire, passphrase, algo)``: add a signing subkey (gpg then
  signs with it rather than with the primary); returns the subkey fingerprint.
- ``export_keyring(home, fingerprint, dest)``: the binary public key(s) at ``dest``, a keyring gpgv reads.

Passphrases go to gpg through ``--passphrase-fd 0`` (stdin), never argv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

# No passphrase caching (tests of "no passphrase" stay honest); a cheap S2K count (test keys only:
# the calibrated default makes each passphrase-protected key take ~2 s).
_AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\ns2k-count 65536\n"


def _env(gnupghome: Path) -> dict[str, str]:
    return {**os.environ, "GNUPGHOME": str(gnupghome)}


@contextmanager
def temp_gnupghome() -> Iterator[Path]:
    """A fresh private GNUPGHOME (short path under /tmp); daemons killed and directory removed on exit."""
    home = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    home.chmod(0o700)
    (home / "gpg-agent.conf").write_text(_AGENT_CONF)
    try:
        yield home
    finally:
        stop_daemons(home)
        shutil.rmtree(home, ignore_errors=True)


def stop_daemons(home: Path) -> None:
    """Stop the gpg daemons running for GNUPGHOME `home` (`gpgconf --kill all`)."""
    subprocess.run(["gpgconf", "--kill", "all"], env=_env(home), capture_output=True, check=False, timeout=30)


def _gpg(gnupghome: Path, args: list[str], *, passphrase: str | None) -> subprocess.CompletedProcess[str]:
    cmd = ["gpg", "--homedir", str(gnupghome), "--batch", "--no-tty", "--pinentry-mode", "loopback"]
    cmd += ["--passphrase-fd", "0", "--status-fd", "1"]  # an empty line: no passphrase
    result = subprocess.run(
        cmd + args,
        input=(passphrase or "") + "\n",
        env=_env(gnupghome),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _created(result: subprocess.CompletedProcess[str]) -> str:
    """The fingerprint from gpg's `[GNUPG:] KEY_CREATED <type> <fpr>` status line."""
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["[GNUPG:]", "KEY_CREATED"] and len(fields) >= 4:
            return fields[3]
    raise RuntimeError(f"gpg reported no KEY_CREATED: {result.stderr.strip()}")


_UNIT_DAYS = {"d": 1, "w": 7, "m": 31, "y": 366}


def _backdated(expire: str) -> list[str]:
    """`--faked-system-time` far enough in the past that a key made with `expire` has already expired."""
    match = re.fullmatch(r"(\d+)([dwmy]?)", expire)
    if match is None or expire in ("0", "never"):
        raise ValueError(f"expired=True needs a relative expire like '1d' or '2w', not {expire!r}")
    days = int(match.group(1)) * _UNIT_DAYS[match.group(2) or "d"] + 2
    created = datetime.now(UTC) - timedelta(days=days)
    return ["--faked-system-time", created.strftime("%Y%m%dT%H%M%S") + "!"]


def make_key(
    gnupghome: Path,
    *,
    uid: str = "mirrorseed test <test@example.invalid>",
    expire: str = "1y",
    passphrase: str | None = None,
    algo: str = "ed25519",
    expired: bool = False,
) -> str:
    """Generate a primary sign+certify key in ``gnupghome``; return its 40-hex fingerprint."""
    args = [*(_backdated(expire) if expired else []), "--yes"]  # --yes: several test keys may share a uid
    expire = "never" if expire in ("0", "never") else expire
    return _created(_gpg(gnupghome, [*args, "--quick-gen-key", uid, algo, "sign,cert", expire], passphrase=passphrase))


def add_signing_subkey(
    gnupghome: Path,
    fingerprint: str,
    *,
    expire: str = "1y",
    passphrase: str | None = None,
    algo: str = "ed25519",
) -> str:
    """Add a signing subkey to ``fingerprint``; return the new subkey's fingerprint."""
    expire = "never" if expire in ("0", "never") else expire
    return _created(_gpg(gnupghome, ["--quick-add-key", fingerprint, algo, "sign", expire], passphrase=passphrase))


def export_keyring(gnupghome: Path, fingerprint: str, dest: Path) -> Path:
    """Write the binary public key of ``fingerprint`` (with its subkeys) to ``dest``; return ``dest``."""
    result = subprocess.run(
        ["gpg", "--homedir", str(gnupghome), "--batch", "--export", fingerprint],
        env=_env(gnupghome),
        capture_output=True,
        check=True,
        timeout=60,
    )
    if not result.stdout:
        raise RuntimeError(f"gpg --export {fingerprint}: no such public key")
    dest.write_bytes(result.stdout)
    return dest
