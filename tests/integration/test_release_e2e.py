"""End to end with the real client: release -> gpgv -> aria2 (index shards, package torrents, metalink) -> dpkg."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import zstandard

from pipeline.config import Settings
from pipeline.demo import DebSpec, build_debian_repo
from pipeline.render import ListingInput, user_recipe
from pipeline.run import published_records, read_current, release
from pipeline.storage import open_storage
from tests.integration.conftest import PACKAGES, SigningKey, aria2_command, tree_state

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def schema(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    return loaded


def settings_for(
    snapshot: Path, dest: Path, public_url: str, mirror_url: str, key: SigningKey, **extra: object
) -> Settings:
    return Settings(
        snapshot=snapshot,
        format="debian",
        dest=str(dest),
        public_url=public_url,
        repo="test",
        webseeds=(mirror_url,),
        key=key.fingerprint,
        gnupghome=key.gnupghome,
        **extra,  # type: ignore[arg-type]
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_user_fetches_and_verifies_everything_with_aria2_and_gpgv(
    debian_repo: Path, servers: tuple[Path, str, str], signing_key: SigningKey, tmp_path: Path
) -> None:
    dest, public_url, mirror_url = servers
    report = release(settings_for(debian_repo, dest, public_url, mirror_url, signing_key))
    assert report.action == "publish" and report.sequence == 1
    assert report.files == len(PACKAGES)

    user = tmp_path / "user"
    user.mkdir()
    # 1. the pointer, verified with gpgv and the published binary key
    subprocess.run(
        aria2_command("-Z", "-d", str(user), f"{public_url}/latest.asc", f"{public_url}/signing-key.gpg"),
        check=True,
        timeout=120,
        capture_output=True,
    )
    gpgv = subprocess.run(
        ["gpgv", "--keyring", "./signing-key.gpg", "--output", "pointer.json", "latest.asc"],
        cwd=user,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert gpgv.returncode == 0, gpgv.stderr
    pointer = json.loads((user / "pointer.json").read_text())
    jsonschema.Draft202012Validator(schema("pointer")).validate(pointer)
    assert pointer["sequence"] == 1 and pointer["repo"] == "test"
    assert not (user / "latest.asc").read_bytes().startswith(b"-----BEGIN PGP SIGNED MESSAGE")

    # 2. each index shard by its .torrent (webseed = the destination), SHA-256 against the pointer
    records: dict[str, dict[str, object]] = {}
    assert [s["name"] for s in pointer["shards"]] == ["stable/main/all", "stable/main/amd64"]
    for shard in pointer["shards"]:
        subprocess.run(
            aria2_command("-d", str(user / "index"), "--follow-torrent=mem", f"{public_url}/{shard['torrent']}"),
            check=True,
            timeout=120,
            capture_output=True,
        )
        shard_zst = user / "index" / shard["path"].rsplit("/", 1)[1]
        assert sha256_file(shard_zst) == shard["sha256"] and shard_zst.stat().st_size == shard["size"]
        raw = zstandard.ZstdDecompressor().decompress(shard_zst.read_bytes())
        assert (
            len(raw) == shard["uncompressed_size"] and hashlib.sha256(raw).hexdigest() == shard["uncompressed_sha256"]
        )
        index = json.loads(raw)
        jsonschema.Draft202012Validator(schema("index")).validate(index)
        assert index["shard"] == shard["name"] and len(index["packages"]) == shard["packages"]
        records |= {p["path"]: p for p in index["packages"]}
    assert len(records) == len(PACKAGES)

    # 3. three packages (one with '+', one with '~') by their .torrent, SHA-256 against the index
    plus = next(p for p in records if "+" in p.rsplit("/", 1)[-1])
    tilde = next(p for p in records if "~" in p)
    hello = next(p for p in records if "/hello_" in p)
    wanted = [plus, tilde, hello]
    urls = [f"{public_url}/{records[p]['torrent']}".replace("+", "%2B") for p in wanted]
    subprocess.run(
        aria2_command("-Z", "-d", str(user / "pkgs"), "--follow-torrent=mem", *urls),
        check=True,
        timeout=180,
        capture_output=True,
    )
    for path in wanted:
        fetched = user / "pkgs" / path.rsplit("/", 1)[-1]
        assert sha256_file(fetched) == records[path]["sha256"], path
    info = subprocess.run(
        ["dpkg-deb", "-I", str(user / "pkgs" / hello.rsplit("/", 1)[-1])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "Package: hello" in info.stdout

    # 4. one package by its .meta4
    big = next(p for p in records if "big-demo" in p)
    subprocess.run(
        aria2_command("-d", str(user / "meta"), f"{public_url}/{records[big]['metalink']}"),
        check=True,
        timeout=180,
        capture_output=True,
    )
    assert sha256_file(user / "meta" / big.rsplit("/", 1)[-1]) == records[big]["sha256"]

    # 5. the listings exist and link the package pages explicitly
    front = (dest / "index.html").read_text()
    assert "browse/index.html" in front and signing_key.fingerprint[-4:] in front.replace(" ", "")
    for shard in pointer["shards"]:  # the shard table: name, torrent, compressed shard
        assert f"<code>{shard['name']}</code>" in front
        assert f'href="{shard["torrent"]}"' in front and f'href="{shard["path"]}"' in front
    assert "MIRRORSEED_SHARDS=&#39;stable/*/amd64 stable/*/all&#39; bash recipe.sh" in front
    assert "<script>alert(1)</script>" not in "".join(p.read_text() for p in dest.rglob("*.html"))


def test_front_page_recipe_runs_and_a_tampered_pointer_stops_it(
    debian_repo: Path, servers: tuple[Path, str, str], signing_key: SigningKey, tmp_path: Path
) -> None:
    dest, public_url, mirror_url = servers
    release(settings_for(debian_repo, dest, public_url, mirror_url, signing_key))
    current = read_current(
        open_storage(str(dest)), repo="test", keyring=signing_key.keyring, fingerprint=signing_key.fingerprint
    )
    assert current is not None
    records = published_records(open_storage(str(dest)), current.pointer)
    example = next(r for r in records if "+" in r.path)
    recipe = user_recipe(
        ListingInput(
            repo="test",
            snapshot_format="debian",
            public_url=public_url,
            pointer=current.pointer,
            fingerprint=signing_key.fingerprint,
            records=records,
            webseeds=current.webseeds,
        ),
        example,
    )
    good = tmp_path / "good"
    good.mkdir()
    done = subprocess.run(["bash", "-c", recipe], cwd=good, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(p.name == example.path.rsplit("/", 1)[-1] for p in good.rglob("*"))

    # tamper with one byte of the signed pointer's payload (inside the armor the base64 changes)
    asc = (dest / "latest.asc").read_text().splitlines()
    body = next(i for i, line in enumerate(asc) if i > 2 and len(line) > 20)
    flipped = asc[body][:10] + ("A" if asc[body][10] != "A" else "B") + asc[body][11:]
    (dest / "latest.asc").write_text("\n".join(asc[:body] + [flipped] + asc[body + 1 :]) + "\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    done = subprocess.run(["bash", "-c", recipe], cwd=bad, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert not (bad / "pointer.json").exists()


def test_rerun_noop_resign_and_change(
    debian_repo: Path, servers: tuple[Path, str, str], signing_key: SigningKey
) -> None:
    dest, public_url, mirror_url = servers
    t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    settings = settings_for(debian_repo, dest, public_url, mirror_url, signing_key)
    first = release(settings, now=lambda: t0)
    assert first.action == "publish" and first.sequence == 1
    before = tree_state(dest)

    # unchanged snapshot, plenty of validity left: nothing written at all
    again = release(settings, now=lambda: t0 + timedelta(hours=1))
    assert again.action == "noop" and again.objects_put == 0
    assert tree_state(dest) == before

    # expiry near: only a re-signed pointer (same sequence and index), listings updated; index untouched
    resign = release(settings, now=lambda: t0 + timedelta(days=5))
    assert resign.action == "resign" and resign.sequence == 1
    after = tree_state(dest)
    changed = {k for k in after if before.get(k) != after[k]}
    assert "latest.asc" in changed
    assert not any(k.startswith(("index/", "torrents/", "metalinks/")) for k in changed)

    # a new package: sequence + 1, the report names it
    build_debian_repo(
        debian_repo,
        (*PACKAGES, DebSpec(name="newpkg", version="0.1-1", description="added later")),
    )
    change = release(settings, now=lambda: t0 + timedelta(days=5, hours=1))
    assert change.action == "publish" and change.sequence == 2
    assert [p for p in change.new if "newpkg" in p] and not change.removed


def test_same_input_gives_byte_identical_torrents_and_metalinks(
    debian_repo: Path, signing_key: SigningKey, tmp_path: Path
) -> None:
    outputs = []
    for name in ("a", "b"):
        dest = tmp_path / name
        release(
            settings_for(
                debian_repo,
                dest,
                "http://127.0.0.1:9/pub",
                "http://127.0.0.1:9/mirror",
                signing_key,
                allow_peer_only=True,
            )
        )
        outputs.append(
            {
                str(p.relative_to(dest)): p.read_bytes()
                for p in dest.rglob("*")
                if p.is_file()
                and p.suffix in (".torrent", ".meta4")
                and not str(p.relative_to(dest)).startswith("index/")
            }
        )
    assert outputs[0] and outputs[0] == outputs[1]
    assert all(b"creation date" not in data for key, data in outputs[0].items() if key.endswith(".torrent"))
