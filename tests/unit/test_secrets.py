"""Secrets in the config never show (defect 1), and token expiry is bounded and always encodable
(defect 12): the pure parts, without a server."""

from __future__ import annotations

import dataclasses
import tomllib
from typing import Any

import pytest

from tidelog.auth import MAX_PAT_EXPIRY_AT_US, pat_expiry_at_us
from tidelog.config import REDACTED, SECRET, Config, load_config, render_config
from tidelog.wire.codes import U64_MAX, IggyError, Status
from tidelog.wire.primitives import Reader
from tidelog.wire.records import PersonalAccessTokenInfo

SECRET_WORDS = {"password", "secret", "token", "key", "passphrase", "credentials"}
NOW_US = 1_700_000_000_000_000


def _config_fields(obj: Any, prefix: str = "") -> list[tuple[str, dataclasses.Field[Any]]]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _config_fields(value, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f))
    return out


def test_render_config_given_root_password_when_rendered_should_redact_it_and_keep_the_rest() -> None:
    config = load_config(environ={"IGGY_ROOT_USERNAME": "admin", "IGGY_ROOT_PASSWORD": "hunter2-xyz"})
    text = render_config(config)
    assert "hunter2-xyz" not in text
    parsed = tomllib.loads(text)  # TOML-ish is real TOML: it reads back
    assert parsed["root"] == {"username": "admin", "password": REDACTED}
    assert parsed["tcp"]["max_send_payload_bytes"] == config.tcp.max_send_payload_bytes
    assert parsed["durability"]["fsync"] == str(config.durability.fsync)
    assert parsed["data_dir"] == str(config.data_dir)
    # Every non-secret field is shown, so the snapshot stays useful for troubleshooting.
    for name, f in _config_fields(config):
        section, _, key = name.rpartition(".")
        table = parsed
        for part in filter(None, section.split(".")):  # [system.sharding] is a table in [system]
            table = table[part]
        assert key in table, name
        if not f.metadata.get(SECRET):
            assert table[key] != REDACTED, name


def test_config_repr_given_root_password_should_not_show_it() -> None:
    config = load_config(environ={"IGGY_ROOT_USERNAME": "admin", "IGGY_ROOT_PASSWORD": "hunter2-xyz"})
    assert "hunter2-xyz" not in repr(config)
    assert "hunter2-xyz" not in str(config.root)


def test_config_fields_given_a_name_that_reads_like_a_credential_should_be_marked_secret() -> None:
    """A guard for future keys (TLS keys, tokens): naming one so without marking it fails here."""
    named_like_secret = [
        name for name, f in _config_fields(Config()) if SECRET_WORDS & set(name.rpartition(".")[2].split("_"))
    ]
    assert "root.password" in named_like_secret
    unmarked = [
        name
        for name, f in _config_fields(Config())
        if name in named_like_secret and not f.metadata.get(SECRET)
    ]
    assert unmarked == []


@pytest.mark.parametrize(("expiry", "expected"), [(0, 0), (U64_MAX, 0), (1, NOW_US + 1)])
def test_pat_expiry_given_never_or_small_when_resolved_should_give_absolute_instant(
    expiry: int, expected: int
) -> None:
    assert pat_expiry_at_us(NOW_US, expiry) == expected


@pytest.mark.parametrize("expiry", [U64_MAX - 1, 1 << 63, MAX_PAT_EXPIRY_AT_US - NOW_US + 1])
def test_pat_expiry_given_instant_past_the_limit_when_resolved_should_raise_56(expiry: int) -> None:
    with pytest.raises(IggyError) as info:
        pat_expiry_at_us(NOW_US, expiry)
    assert info.value.status == Status.INVALID_PERSONAL_ACCESS_TOKEN_EXPIRY


def test_pat_expiry_given_instant_at_the_limit_when_resolved_should_accept_it() -> None:
    assert pat_expiry_at_us(NOW_US, MAX_PAT_EXPIRY_AT_US - NOW_US) == MAX_PAT_EXPIRY_AT_US


@pytest.mark.parametrize(
    ("stored", "listed"),
    [(0, 0), (NOW_US, NOW_US), (U64_MAX, U64_MAX), (U64_MAX + 1, 0), (1 << 70, 0), (-5, 1)],
)
def test_pat_info_encode_given_any_stored_expiry_should_encode_a_u64(stored: int, listed: int) -> None:
    encoded = PersonalAccessTokenInfo("tok", stored).encode()
    assert PersonalAccessTokenInfo.decode(Reader(encoded)) == PersonalAccessTokenInfo("tok", listed)
