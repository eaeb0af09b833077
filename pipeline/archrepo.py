"""Small Arch Linux repositories of real packages, for the tests (and a future Arch demo).

`build_arch_repo(root, repos)` lays a snapshot out as Arch mirrors do: every package file (and its
detached `.sig`, when a signer is given) once in `pool/packages/`, a relative symlink to it in each
`<repo>/os/<arch>/` that carries it (`any` packages in every arch of their repo), and the repo
database made by `repo-add` (`<repo>.db` -> `<repo>.db.tar.gz`, `<repo>.files` likewise).

Packages are built by `makepkg` from a PKGBUILD written here: no sources, `package()` installs a
README and a seeded random payload from the build directory. Debian's makepkg refuses to run as
root, so as root it runs as the unprivileged system user `mirrorseed-build` (created on first use,
no home, no shell) via `runuser`, in a private temporary directory that user owns.
"""

from __future__ import annotations

import logging
import os
import pwd
import random
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.demo import Runner, run_command
from pipeline.errors import SnapshotError

__all__ = ["BUILD_USER", "ArchPkgSpec", "build_arch_package", "build_arch_repo", "ensure_build_user"]

log = logging.getLogger(__name__)

BUILD_USER = "mirrorseed-build"
SOURCE_DATE_EPOCH = 1_700_000_000
PACKAGER = "mirrorseed tests <tests@mirrorseed.invalid>"
HOST_ARCH = "x86_64"  # Debian's makepkg.conf: CARCH="x86_64" on amd64


@dataclass(frozen=True)
class ArchPkgSpec:
    """One package to build: `name-[epoch:]pkgver-pkgrel-arch.pkg.tar.zst`."""

    name: str
    pkgver: str
    pkgrel: str = "1"
    epoch: int | None = None
    arch: str = HOST_ARCH  # or "any"
    description: str = "mirrorseed test package"
    payload_size: int = 2000
    seed: int = 0

    @property
    def version(self) -> str:
        """The db's %VERSION%: `[epoch:]pkgver-pkgrel`."""
        prefix = f"{self.epoch}:" if self.epoch else ""
        return f"{prefix}{self.pkgver}-{self.pkgrel}"

    def filename(self, pkgext: str = ".pkg.tar.zst") -> str:
        return f"{self.name}-{self.version}-{self.arch}{pkgext}"

    def pkgbuild(self) -> str:
        q = shlex.quote
        lines = [
            f"pkgname={q(self.name)}",
            f"pkgver={q(self.pkgver)}",
            f"pkgrel={q(self.pkgrel)}",
            *([f"epoch={self.epoch}"] if self.epoch else []),
            f"pkgdesc={q(self.description)}",
            f"arch=({q(self.arch)})",
            "license=('MIT')",
            "options=('!strip' '!debug')",
            "package() {",
            f'  install -Dm644 "$startdir/payload.bin" "$pkgdir/usr/share/{self.name}/payload.bin"',
            f"  printf '%s\\n' {q(f'{self.name} {self.version}: a mirrorseed test package')} \\",
            f'    > "$pkgdir/usr/share/{self.name}/README"',
            "}",
        ]
        return "\n".join(lines) + "\n"


def _call(run: Runner, args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> None:
    """`run(args)`; a missing program or a failure becomes one SnapshotError line naming the command."""
    try:
        run(args, cwd=cwd, env=env)
    except FileNotFoundError:
        raise SnapshotError(
            f"{args[0]}: not installed; run ./bootstrap.sh (makepkg, pacman-package-manager, libarchive-tools)"
        ) from None
    except subprocess.CalledProcessError as exc:
        output = b"\n".join(part for part in (exc.stderr, exc.stdout) if isinstance(part, bytes))
        lines = output.decode("utf-8", "replace").strip().splitlines()
        last = lines[-1] if lines else "no output"
        raise SnapshotError(f"{args[0]}: exit code {exc.returncode} ({shlex.join(args)}): {last}") from None


def ensure_build_user(*, run: Runner | None = None) -> str | None:
    """The user makepkg must run as: None when not root (run it directly), else BUILD_USER, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(BUILD_USER)
    except KeyError:
        _call(
            run or run_command,
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", BUILD_USER],
        )
        log.info("created the system user %s to run makepkg", BUILD_USER)
    return BUILD_USER


def build_arch_package(
    spec: ArchPkgSpec, out_dir: Path, *, pkgext: str = ".pkg.tar.zst", run: Runner | None = None
) -> Path:
    """Build `spec` with makepkg (as BUILD_USER when root); the package file lands in `out_dir`."""
    run = run or run_command
    user = ensure_build_user(run=run)
    build = Path(tempfile.mkdtemp(prefix="msarch", dir="/tmp"))  # not under a 0700 root-owned pytest dir
    try:
        (build / "PKGBUILD").write_text(spec.pkgbuild(), encoding="utf-8")
        (build / "payload.bin").write_bytes(random.Random(spec.seed).randbytes(spec.payload_size))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(build),
            "LC_ALL": "C.UTF-8",
            "PKGEXT": pkgext,
            "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
            "PACKAGER": PACKAGER,
        }
        makepkg = ["makepkg", "--nocheck", "--skipinteg", "--nodeps", "--noconfirm", "--noprogressbar", "--force"]
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (build, build / "PKGBUILD", build / "payload.bin"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *makepkg]
        else:
            argv = makepkg
        _call(run, argv, cwd=build, env=env)
        built = build / spec.filename(pkgext)
        if not built.is_file():
            found = ", ".join(sorted(p.name for p in build.glob("*.pkg.tar*"))) or "nothing"
            raise RuntimeError(f"makepkg built {found}, not {built.name}")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / built.name
        shutil.copyfile(built, target)
        os.utime(target, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
        return target
    finally:
        shutil.rmtree(build, ignore_errors=True)


def build_arch_repo(
    root: Path,
    repos: Mapping[str, Sequence[ArchPkgSpec]],
    *,
    architectures: Sequence[str] = (HOST_ARCH,),
    pkgext: str = ".pkg.tar.zst",
    db_ext: str = ".tar.gz",
    sign: Callable[[bytes], bytes] | None = None,
    run: Runner | None = None,
) -> None:
    """Write an Arch mirror tree under `root` (see the module docstring); `sign` makes each `.sig`.

    Packages whose arch is not in `architectures` nor `any` are refused (makepkg builds for the host).
    """
    run = run or run_command
    pool = root / "pool" / "packages"
    built: dict[ArchPkgSpec, Path] = {}
    for specs in repos.values():
        for spec in specs:
            if spec.arch not in (*architectures, "any"):
                raise ValueError(f"{spec.name}: arch {spec.arch} not among {', '.join(architectures)} or any")
            if spec not in built:
                built[spec] = build_arch_package(spec, pool, pkgext=pkgext, run=run)
                if sign is not None:
                    sig = built[spec].with_name(built[spec].name + ".sig")
                    sig.write_bytes(sign(built[spec].read_bytes()))
    for repo, specs in repos.items():
        for arch in architectures:
            directory = root / repo / "os" / arch
            directory.mkdir(parents=True, exist_ok=True)
            names: list[str] = []
            for spec in specs:
                if spec.arch not in (arch, "any"):
                    continue
                package = built[spec]
                for source in (package, package.with_name(package.name + ".sig")):
                    if source.exists():
                        link = directory / source.name
                        link.unlink(missing_ok=True)
                        link.symlink_to(os.path.relpath(source, directory))
                names.append(package.name)
            _call(run, ["repo-add", "--quiet", f"{repo}.db{db_ext}", *names], cwd=directory)
