"""The package-manager client (clients/apt/mirrorseed, also pacman's mirrorseed-xfer) piece by piece, and
its published copies. The real apt-get and pacman runs are in tests/integration/test_apt_method.py and
test_pacman_xfer.py."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pipeline import bencode
from pipeline.errors import ConfigError
from pipeline.index import make_delta
from pipeline.objects import APT_METHOD_KEY, CLIENT_KEYS, PACMAN_XFER_KEY, POINTER_MAX_BYTES, content_type_for
from pipeline.render import ARIA2_FLAGS, client_artifacts

ROOT = Path(__file__).resolve().parents[2]
FPR = "EB39D9883B090A72AE83A80B17999E7D92DF6708"


def load_client(path: Path = ROOT / APT_METHOD_KEY) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("mirrorseed_client", str(path))
    spec = importlib.util.spec_from_loader("mirrorseed_client", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mirrorseed_client"] = module  # dataclass-free, but keep imports resolvable
    try:
        loader.exec_module(module)
    finally:
        del sys.modules["mirrorseed_client"]
    return module


def test_the_client_uses_the_recipes_aria2_options() -> None:
    assert load_client().ARIA2_FLAGS == ARIA2_FLAGS


def test_the_client_reads_a_pointer_as_large_as_the_publisher_writes() -> None:
    assert load_client().POINTER_MAX_BYTES == POINTER_MAX_BYTES


def test_the_pacman_helper_is_the_same_program() -> None:
    assert (ROOT / PACMAN_XFER_KEY).resolve() == (ROOT / APT_METHOD_KEY).resolve()


def test_published_copies_know_the_publication_and_the_key(tmp_path: Path) -> None:
    artifacts = client_artifacts("https://seed.example.org/pub", FPR)
    assert [a.key for a in artifacts] == list(CLIENT_KEYS)
    assert artifacts[0].data == artifacts[1].data
    assert {content_type_for(a.key) for a in artifacts} == {"text/plain; charset=utf-8"}
    published = tmp_path / "mirrorseed"
    published.write_bytes(artifacts[0].data)
    client = load_client(published)
    assert (client.PUBLICATION, client.FINGERPRINT) == ("https://seed.example.org/pub", FPR)
    source = (ROOT / APT_METHOD_KEY).read_text().splitlines()
    changed = [line for line in artifacts[0].data.decode().splitlines() if line not in source]
    assert [line.split(" = ")[0] for line in changed] == ["PUBLICATION", "FINGERPRINT"]


def test_a_client_without_its_marker_lines_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clients" / "apt").mkdir(parents=True)
    (tmp_path / "clients" / "pacman").mkdir()
    for key in CLIENT_KEYS:
        (tmp_path / key).write_text("PUBLICATION = 'x'\n")
    monkeypatch.setattr("pipeline.render.CLIENTS_ROOT", tmp_path)
    with pytest.raises(ConfigError, match='no single line starting PUBLICATION = ""'):
        client_artifacts("https://seed.example.org", FPR)


def test_settings_apt_configuration_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    client = load_client()
    monkeypatch.setenv("MIRRORSEED_PUBLICATION", "https://env.example")
    assert client.Settings().get("Publication", "https://baked.example") == "https://env.example"
    apt = client.Settings({"acquire::mirrorseed::publication": "https://apt.example"})
    assert apt.get("Publication", "https://baked.example") == "https://apt.example"
    monkeypatch.delenv("MIRRORSEED_PUBLICATION")
    assert client.Settings().get("Publication", "https://baked.example") == "https://baked.example"
    monkeypatch.setenv("MIRRORSEED_LPD", "maybe")
    with pytest.raises(client.Refused, match="LPD: 'maybe' is not true or false"):
        client.Settings().flag("LPD")


def test_schemes_and_apt_messages() -> None:
    client = load_client()
    assert (
        client.plain_url("mirrorseed+https://deb.example/debian/pool/x.deb") == "https://deb.example/debian/pool/x.deb"
    )
    assert client.plain_url("mirrorseed+http://h/x") == "http://h/x"
    assert client.plain_url("mirrorseed://h/x") == "http://h/x"  # as apt's tor:// is http
    stream = io.StringIO(
        "601 Configuration\nConfig-Item: Acquire::mirrorseed::Publication=http%3a//p\n\n"
        "600 URI Acquire\nURI: mirrorseed+http://h/a.deb\nFilename: /tmp/a%3a1.deb\nExpected-SHA256: ab\n\n"
    )
    messages = list(client.read_messages(stream))
    assert messages[0] == ("601", [("Config-Item", "Acquire::mirrorseed::Publication=http%3a//p")])
    assert dict(messages[1][1])["Filename"] == "/tmp/a%3a1.deb"
    method = client.AptMethod()
    method.configure(messages[0][1])
    assert method.settings.get("Publication") == "http://p"


def test_the_infohash_is_the_sha1_of_the_info_bytes_as_published() -> None:
    client = load_client()
    info = {b"length": 5, b"name": b"a.deb", b"piece length": 16384, b"pieces": b"x" * 20}
    data = bencode.encode({b"announce": b"http://t/announce", b"info": info, b"url-list": [b"http://m/"]})
    top, raw = client.bdecode_info(data)
    assert raw == bencode.encode(info) and top[b"info"][b"length"] == 5
    assert hashlib.sha1(raw).hexdigest() == hashlib.sha1(bencode.encode(info)).hexdigest()
    for bad in (b"", b"d4:infoi1ee", data + b"x", b"l" * 40):
        with pytest.raises((ValueError, IndexError)):
            client.bdecode_info(bad)


def test_shards_are_chosen_by_shell_globs_where_star_matches_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    client = load_client()
    refs = [{"name": name} for name in ("bookworm/contrib/amd64", "bookworm/main/all", "bookworm/main/amd64", ".")]

    def chosen(setting: str | None, hint: str | None = None) -> list[str]:
        if setting is None:
            monkeypatch.delenv("MIRRORSEED_SHARDS", raising=False)
        else:
            monkeypatch.setenv("MIRRORSEED_SHARDS", setting)
        publication = client.Publication(client.Settings(), shard_hint=hint)
        return [ref["name"] for ref in publication.choose(refs)]

    assert chosen(None) == [ref["name"] for ref in refs]  # default: every shard
    assert chosen("*") == chosen(None)
    assert chosen("bookworm/*/amd64 bookworm/*/all") == ["bookworm/contrib/amd64", "bookworm/main/all",
                                                         "bookworm/main/amd64"]  # fmt: skip
    assert chosen("*amd64") == ["bookworm/contrib/amd64", "bookworm/main/amd64"]  # `*` spans `/`
    assert chosen("bookworm/main/a[lm]*  .") == ["bookworm/main/all", "bookworm/main/amd64", "."]
    assert chosen(None, hint="bookworm/main/all") == ["bookworm/main/all"]  # pacman: the URL's shard ...
    assert chosen(None, hint="core/x86_64") == chosen(None)  # ... when the pointer has it, else all
    assert chosen("*", hint="bookworm/main/all") == chosen(None)  # a setting wins over the hint
    with pytest.raises(client.Refused) as refused:
        chosen("bookworm/main/all trixie/* sid")
    assert str(refused.value) == (
        "Shards: trixie/* sid matches no shard of /latest.asc; "
        "its shards: bookworm/contrib/amd64 bookworm/main/all bookworm/main/amd64 ."
    )


def shard_ref(name: str, part: object) -> dict[str, object]:
    return {
        "name": name, "part": part, "path": "index/shards/0123456789abcdef.json.zst", "size": 1, "sha256": "a" * 64,
        "uncompressed_size": 2, "uncompressed_sha256": "b" * 64, "packages": 1,
        "torrent": "index/shards/0123456789abcdef.torrent", "infohash": "c" * 40, "delta": None,
    }  # fmt: skip


def test_a_shard_in_parts_is_chosen_whole_and_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    client = load_client()
    parts = [("bookworm/main/all", 0), ("bookworm/main/amd64", 0), ("bookworm/main/amd64", 1), ("sid/main/all", 0)]
    refs = client.shard_refs({"shards": [shard_ref(name, part) for name, part in parts]}, "u")
    publication = client.Publication(client.Settings())
    monkeypatch.setenv("MIRRORSEED_SHARDS", "*/amd64")
    assert [(r["name"], r["part"]) for r in publication.choose(refs)] == parts[1:3]
    monkeypatch.setenv("MIRRORSEED_SHARDS", "trixie/*")
    with pytest.raises(client.Refused) as refused:
        publication.choose(refs)
    assert str(refused.value).endswith("its shards: bookworm/main/all bookworm/main/amd64 sid/main/all")

    with pytest.raises(client.Refused, match="a part of a shard repeats"):
        client.shard_refs({"shards": [shard_ref("a", 0), shard_ref("a", 0)]}, "u")
    for bad in (True, -1, "0", None, 0.0):
        with pytest.raises(client.Refused, match="not a valid mirrorseed-pointer/3 list"):
            client.shard_refs({"shards": [shard_ref("a", bad)]}, "u")
    unparted = shard_ref("a", 0)
    del unparted["part"]  # a mirrorseed-pointer/2 shard
    with pytest.raises(client.Refused, match="not a valid"):
        client.shard_refs({"shards": [unparted]}, "u")


def test_the_arch_shard_of_a_package_url() -> None:
    client = load_client()
    assert client.arch_shard("https://m.example/archlinux/core/os/x86_64/a-1-1-x86_64.pkg.tar.zst") == "core/x86_64"
    assert client.arch_shard("http://m/extra/os/aarch64/b%2Bc-1-1-any.pkg.tar.zst") == "extra/aarch64"
    assert client.arch_shard("http://m/pool/packages/a-1-1-x86_64.pkg.tar.zst") is None
    assert client.arch_shard("http://m/os/x86_64/a.pkg.tar.zst") is None


def test_zstd_patch_from_applies_the_publishers_delta_and_bounds_the_output(tmp_path: Path) -> None:
    """The client's `zstd -d --patch-from` reads the deltas pipeline.index.make_delta writes."""
    client = load_client()
    old = b'{"packages":[' + b",".join(b'{"path":"p%d","size":%d}' % (i, i) for i in range(2000)) + b"]}"
    new = old.replace(b'"p1000","size":1000', b'"p1000","size":1001')
    base = tmp_path / "old.json"
    base.write_bytes(old)
    delta = make_delta(old, new)
    assert len(delta) < len(new) // 20
    assert client.zstd(["--patch-from", str(base)], delta, len(new), "d") == new
    short = len(new) - 1
    with pytest.raises(client.Refused, match=f"^d: decompresses to more than {short} bytes, not {short}$"):
        client.zstd(["--patch-from", str(base)], delta, short, "d")  # reads at most size + 1 bytes
    with pytest.raises(client.Refused, match="decompresses to 0 bytes"):
        client.zstd([], delta, len(new), "d")  # without its dictionary


def test_a_kept_shard_is_reused_and_a_damaged_one_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = load_client()
    monkeypatch.setenv("MIRRORSEED_STATEDIR", str(tmp_path))
    monkeypatch.setenv("MIRRORSEED_PUBLICATION", "http://127.0.0.1:9")  # nothing listens: nothing may be fetched
    raw = b'{"format":"mirrorseed-index/2","packages":[{"path":"a"}],"repo":"r","shard":"s"}'
    sha = hashlib.sha256(raw).hexdigest()
    ref = {"name": "s", "part": 0, "path": "index/shards/x.json.zst", "size": 1, "sha256": "0" * 64,
           "uncompressed_size": len(raw), "uncompressed_sha256": sha, "packages": 1, "torrent": "t",
           "infohash": "0" * 40, "delta": None}  # fmt: skip
    assert client.shard_ref_ok(ref) and not client.shard_ref_ok(ref | {"size": -1})
    publication = client.Publication(client.Settings())
    kept = tmp_path / "k" / "shards" / f"{sha}.json"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(raw)
    assert publication.shard(tmp_path / "k", {"repo": "r"}, ref)["packages"] == [{"path": "a"}]
    with pytest.raises(client.Refused, match="not the mirrorseed-index/2 shard 's' of 'q'"):
        publication.shard(tmp_path / "k", {"repo": "q"}, ref)
    kept.write_bytes(raw[:-1] + b" ")
    with pytest.raises(client.Unreachable):  # damaged: deleted, and fetched again
        publication.shard(tmp_path / "k", {"repo": "r"}, ref)
    assert not kept.exists()
