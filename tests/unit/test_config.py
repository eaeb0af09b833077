"""pipeline.config: one Settings, read the same way for every task; per-concern configs built from it."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline import config
from pipeline.config import Settings, flag_help, load_settings, s3_config, setting_flags
from pipeline.errors import ConfigError
from pipeline.verify import verify_spec


def test_every_setting_has_help_and_a_known_kind() -> None:
    for f in fields(Settings):
        if f.name == "sources":
            continue
        assert f.metadata.get("help"), f.name
        assert config._kind(f.name) in config._KINDS.values(), f.name  # every type has a reader
    assert flag_help("webseed", "state_file", json="x") == {
        "webseed": "base URL of an HTTP mirror of the snapshot (repeatable)",
        "state_file": "highest sequence seen (default ~/.cache/mirrorseed/verify-<host>.json)",
        "json": "x",
    }


def test_task_parameters_map_to_settings() -> None:
    given = {"c": object(), "config": "x", "webseed": ["http://a"], "state_file": "s", "json_": True, "repo": "r"}
    assert setting_flags(given) == {"webseeds": ["http://a"], "verify_state": "s", "repo": "r"}


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("expires_after", "2w", timedelta(days=14)),
        ("webseeds", "http://a, http://b", ("http://a", "http://b")),
        ("sync_lock", ["lock"], (Path("lock"),)),
        ("snapshot", "snap", Path("/base/snap")),
        ("no_cas", "yes", True),
        ("workers", "3", 3),
        ("verify_sample", "0", 0),
        ("verify_timeout", "2.5", 2.5),
        ("repo", "r", "r"),
        ("executor", "dask://seed1.example.org:8786", "dask://seed1.example.org:8786"),
        ("executor", "dask://[::1]:8786", "dask://[::1]:8786"),
    ],
)
def test_values_are_read_by_the_fields_type(name: str, raw: str, expected: object) -> None:
    settings = load_settings(flags={name: raw}, environ={}, cwd=Path("/base"), default_config=False)
    assert getattr(settings, name) == expected


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("workers", "0", "at least 1"),
        ("workers", "two", "whole number"),
        ("verify_timeout", "-1", "positive"),
        ("verify_timeout", "inf", "positive"),
        ("expires_after", "7 days", "not a duration"),
        ("no_cas", "maybe", "true or false"),
        ("executor", "tcp://seed1:8786", "not local or dask://HOST:PORT"),
        ("executor", "dask://seed1", "not local or dask://HOST:PORT"),
        ("executor", "dask://seed1:99999", "not local or dask://HOST:PORT"),
    ],
)
def test_bad_values_are_one_line_errors(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(flags={name: raw}, environ={}, default_config=False)


def test_dht_nodes_are_host_port_pairs() -> None:
    nodes = "router.example.org:6881,192.0.2.7:51413,[2001:db8::1]:6881,router.example.org:6881"
    settings = load_settings(flags={"dht_nodes": nodes}, environ={}, default_config=False)
    assert settings.dht_node_pairs == (("router.example.org", 6881), ("192.0.2.7", 51413), ("2001:db8::1", 6881))


@pytest.mark.parametrize("node", ["router.example.org", "host:0", "host:70000", "a b:1", ":6881", "-x.org:1", "h:p"])
def test_bad_dht_nodes_are_refused_in_one_line(node: str) -> None:
    with pytest.raises(ConfigError, match=r"dht_nodes: .* is not HOST:PORT"):
        load_settings(flags={"dht_nodes": [node]}, environ={}, default_config=False)


def test_verify_reads_the_same_settings_as_release(tmp_path: Path) -> None:
    (tmp_path / "mirror.toml").write_text(
        '[mirrorseed]\npublic_url = "https://seed.example.org/debian"\nallow_peer_only = true\n'
    )
    env = {"MIRRORSEED_VERIFY_TIMEOUT": "4"}
    spec = verify_spec(load_settings(flags={"verify_keyring": "k.gpg"}, environ=env, cwd=tmp_path))
    assert spec.public_url == "https://seed.example.org/debian"  # from the file
    assert spec.allow_peer_only and spec.timeout == 4.0 and spec.keyring == tmp_path / "k.gpg"
    flagged = load_settings(
        flags={"verify_keyring": "k.gpg", "public_url": "https://b.example"}, environ=env, cwd=tmp_path
    )
    assert verify_spec(flagged).public_url == "https://b.example"  # a flag wins
    with pytest.raises(ConfigError, match="--keyring"):
        verify_spec(load_settings(flags={}, environ={}, cwd=tmp_path))


def test_executor_is_local_unless_mirror_toml_or_the_flag_names_a_dask_scheduler(tmp_path: Path) -> None:
    assert load_settings(environ={}, cwd=tmp_path).executor == "local"
    (tmp_path / "mirror.toml").write_text('[mirrorseed]\nexecutor = "dask://seed1:8786"\n')
    assert load_settings(environ={}, cwd=tmp_path).executor == "dask://seed1:8786"
    assert load_settings(flags={"executor": "local"}, environ={}, cwd=tmp_path).executor == "local"


def test_s3_config_is_the_s3_part_of_the_settings() -> None:
    config = s3_config(Settings(s3_endpoint_url="http://127.0.0.1:1", s3_max_attempts=2, upload_concurrency=3))
    assert config.endpoint_url == "http://127.0.0.1:1"
    assert (config.max_attempts, config.upload_concurrency, config.read_timeout) == (2, 3, 60)
