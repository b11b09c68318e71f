"""Credentials: password hashing, personal access tokens, username/password rules.

Pure CPU, no I/O: randomness comes in as a callable so tests and the simulator can seed it.
Verifying a password costs about 25 ms of one core, so the server should run logins where
that pause does not stall other connections.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import argon2

from tidelog.wire.codes import (
    PASSWORD_LEN_MAX,
    PASSWORD_LEN_MIN,
    U64_MAX,
    USERNAME_LEN_MAX,
    USERNAME_LEN_MIN,
    IggyError,
    Status,
)

# Argon2id with the OWASP minimum (19 MiB, 2 passes, 1 lane). argon2-cffi's default profile
# (64 MiB, 3 passes, 4 lanes) costs ~130 ms on one core here, long enough to turn a burst of
# logins into seconds of server stall; this one measured ~25 ms, inside the 10-30 ms aim, and is
# still memory-hard. One lane because the server gives one core to a login. The parameters are
# stored in each hash, so changing them later keeps old hashes verifiable.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

TOKEN_RANDOM_BYTES = 50
TOKEN_LEN = 68  # standard base64 with padding of 50 bytes (section 2.8)
assert 4 * -(-TOKEN_RANDOM_BYTES // 3) == TOKEN_LEN


# The latest expiry a token may get: 9999-12-31T23:59:59.999999Z in µs since the epoch. It is
# the last instant common date types can hold (Python's datetime, most SDKs' formatting), so a
# listed expiry always converts, and it is far inside the u64 the wire carries.
MAX_PAT_EXPIRY_AT_US = 253_402_300_799_999_999
assert MAX_PAT_EXPIRY_AT_US < U64_MAX


def pat_expiry_at_us(now_us: int, expiry_us: int) -> int:
    """The absolute expiry (0 = never) for a CreatePersonalAccessToken ``expiry``.

    0 and u64::MAX mean never (IggyExpiry, section 2.10); anything else is microseconds from
    now, and the resulting instant must not pass ``MAX_PAT_EXPIRY_AT_US``: a bigger one would
    not fit the u64 the token listing sends, or no client could show it as a date.
    """
    if expiry_us in (0, U64_MAX):
        return 0
    expiry_at = now_us + expiry_us
    if expiry_us < 0 or expiry_at > MAX_PAT_EXPIRY_AT_US:
        raise IggyError(Status.INVALID_PERSONAL_ACCESS_TOKEN_EXPIRY, f"expiry {expiry_us} µs from {now_us}")
    return expiry_at


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when the password matches; False on a mismatch or a malformed stored hash."""
    try:
        return _HASHER.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def generate_token(random_bytes: Callable[[int], bytes]) -> str:
    """A new raw personal access token (given to the user once, stored only as a hash)."""
    raw = random_bytes(TOKEN_RANDOM_BYTES)
    assert len(raw) == TOKEN_RANDOM_BYTES
    token = base64.b64encode(raw).decode("ascii")
    assert len(token) == TOKEN_LEN
    return token


def hash_token(token: str) -> str:
    """Hex digest under which a token is stored and looked up.

    Iggy uses BLAKE3, which the standard library lacks; BLAKE2b with a 32-byte digest is an
    equally strong keyless hash of the same output size. On-disk compatibility with Iggy is not
    a goal, so the difference does not matter. A plain fast hash suffices (no salt, no
    stretching) because the token carries 400 random bits: there is nothing to brute-force.
    """
    return hashlib.blake2b(token.encode("utf-8"), digest_size=32).hexdigest()


def validate_username(username: str) -> None:
    n = len(username.encode("utf-8"))
    if not USERNAME_LEN_MIN <= n <= USERNAME_LEN_MAX:
        raise IggyError(Status.INVALID_USERNAME, f"length {n}")


def validate_password(password: str) -> None:
    n = len(password.encode("utf-8"))
    if not PASSWORD_LEN_MIN <= n <= PASSWORD_LEN_MAX:
        raise IggyError(Status.INVALID_PASSWORD, f"length {n}")
