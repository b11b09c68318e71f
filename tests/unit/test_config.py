from __future__ import annotations

from pathlib import Path

import pytest

from tidelog.config import Config, ConfigError, FsyncPolicy, load_config


def test_config_given_nothing_when_loaded_should_use_documented_defaults() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.tcp.address == "127.0.0.1:8090"
    assert config.durability.fsync is FsyncPolicy.INTERVAL
    assert (config.root.username, config.root.password) == ("iggy", "iggy")


def test_config_given_toml_env_and_flags_when_loaded_should_apply_in_precedence_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tidelog.toml"
    path.write_text(
        'data_dir = "from-file"\n'
        '[tcp]\naddress = "127.0.0.1:1111"\n'
        '[durability]\nfsync = "always"\nflush_messages = 10\n'
        "[system]\nsegment_size_bytes = 65536\n"
    )
    env = {"TIDELOG_TCP_ADDRESS": "127.0.0.1:2222", "TIDELOG_DURABILITY_FLUSH_MESSAGES": "20"}
    config = load_config(path, environ=env, overrides={"tcp": {"address": "127.0.0.1:3333"}})
    assert config.data_dir == Path("from-file")
    assert config.tcp.address == "127.0.0.1:3333"  # flag beats env beats file
    assert config.durability.flush_messages == 20  # env beats file
    assert config.durability.fsync is FsyncPolicy.ALWAYS
    assert config.system.segment_size_bytes == 65536


def test_config_given_iggy_root_variables_when_both_set_should_override_root() -> None:
    config = load_config(environ={"IGGY_ROOT_USERNAME": "admin", "IGGY_ROOT_PASSWORD": "secret"})
    assert (config.root.username, config.root.password) == ("admin", "secret")
    with pytest.raises(ConfigError, match="both"):
        load_config(environ={"IGGY_ROOT_USERNAME": "admin"})


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[tcp]\nnope = 1\n", "unknown key"),
        ('[durability]\nfsync = "sometimes"\n', "invalid value"),
        ("[system]\nsegment_size_bytes = 10\n", "segment_size_bytes"),
        ('[tcp]\naddress = "no-port"\n', "HOST:PORT"),
        ("[durability]\nflush_messages = 0\n", "positive"),
        ("this is not toml", "cannot read"),
    ],
)
def test_config_given_bad_values_when_loaded_should_raise_clear_error(
    tmp_path: Path, toml: str, match: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_config(path, environ={})
