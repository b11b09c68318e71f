"""Unit tests of credentials: password hashes, token generation and hashing, name rules."""

from __future__ import annotations

import base64
import itertools

import pytest

from tidelog.auth import (
    TOKEN_LEN,
    generate_token,
    hash_password,
    hash_token,
    validate_password,
    validate_username,
    verify_password,
)
from tidelog.wire.codes import IggyError, Status


def counting_bytes(n: int) -> bytes:
    """Deterministic stand-in for os.urandom."""
    return bytes(itertools.islice(itertools.cycle(range(256)), n))


def test_hash_password_given_password_when_verified_should_accept_it_only() -> None:
    stored = hash_password("s3cret-pass")
    assert stored.startswith("$argon2id$")
    assert "s3cret-pass" not in stored
    assert verify_password(stored, "s3cret-pass")
    assert not verify_password(stored, "s3cret-pasS")
    assert not verify_password(stored, "")


def test_hash_password_given_same_password_twice_should_salt_each_hash() -> None:
    a, b = hash_password("iggy"), hash_password("iggy")
    assert a != b
    assert verify_password(a, "iggy") and verify_password(b, "iggy")


def test_verify_password_given_malformed_hash_should_return_false() -> None:
    assert not verify_password("not-a-hash", "iggy")
    assert not verify_password("", "iggy")


def test_generate_token_given_random_source_should_be_68_char_padded_base64_of_50_bytes() -> None:
    requested: list[int] = []

    def source(n: int) -> bytes:
        requested.append(n)
        return counting_bytes(n)

    token = generate_token(source)
    assert requested == [50]
    assert len(token) == TOKEN_LEN == 68
    assert token.endswith("=") and not token.endswith("==")  # 50 = 3 * 16 + 2 bytes
    assert base64.b64decode(token, validate=True) == counting_bytes(50)


def test_generate_token_given_different_random_bytes_should_differ() -> None:
    assert generate_token(counting_bytes) != generate_token(lambda n: bytes(n))


def test_hash_token_given_token_should_be_deterministic_hex_and_distinguish_tokens() -> None:
    token = generate_token(counting_bytes)
    digest = hash_token(token)
    assert digest == hash_token(token)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert hash_token(token[:-2] + "A=") != digest
    assert token not in digest


def test_validate_username_given_lengths_should_accept_3_to_50_bytes() -> None:
    validate_username("abc")
    validate_username("a" * 50)
    for bad in ("ab", "a" * 51, "é"):  # "é" is 2 bytes
        with pytest.raises(IggyError) as info:
            validate_username(bad)
        assert info.value.status == Status.INVALID_USERNAME


def test_validate_password_given_lengths_should_accept_3_to_100_bytes() -> None:
    validate_password("abc")
    validate_password("p" * 100)
    for bad in ("pw", "p" * 101):
        with pytest.raises(IggyError) as info:
            validate_password(bad)
        assert info.value.status == Status.INVALID_PASSWORD
