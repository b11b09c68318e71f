"""Request bodies and reply payloads of Iggy 0.9 (``shared/protocol/iggy-0.9-vsr.md`` sections
2, 3, 4.3, 4.4), sans-IO: the part after the 256-byte VSR header.

Headers, framing and result sections live in :mod:`.header` and :mod:`.frames` (login bodies
too); the batch of a SendMessages body is parsed by :func:`.batch.parse_batch`. Reply
encoders here return the *payload*: for result-framed operations (section 1.4) the caller
wraps it with :func:`.frames.encode_result_ok`.

What 0.9 shares with 0.8, byte for byte, is reused from the 0.8 codec
(:mod:`tidelog.wire.primitives`, :mod:`~tidelog.wire.requests`, :mod:`~tidelog.wire.records`,
:mod:`~tidelog.wire.user_headers`), never copied:

* Requests with the 0.8 layout (checked against both references): Ping, GetStats,
  GetSnapshot (11), GetClusterMetadata, GetMe, GetClient, GetClients, GetUser, GetUsers,
  DeleteUser, UpdatePermissions, ChangePassword, LogoutUser, Get/Create/Delete
  PersonalAccessToken(s), PollMessages, FlushUnsavedBuffer, GetConsumerOffset, GetStream,
  GetStreams, DeleteStream, PurgeStream, GetTopic, GetTopics, DeleteTopic, PurgeTopic,
  Create/DeletePartitions, DeleteSegments, Get/Create/Delete/Join/LeaveConsumerGroup and
  GetConsumerGroups. :func:`decode_request09` yields the 0.8 classes for them.
* Reply records with the 0.8 layout: ``ConsumerGroupInfo``/``ConsumerGroupDetails``,
  ``ClientInfo``/``ClientDetails``, ``ConsumerOffsetInfo``, ``PersonalAccessTokenInfo``,
  ``RawPersonalAccessToken``, ``ClusterMetadata``, ``Stats``, ``PartitionInfo`` and the poll
  head ``PollHeader`` (section 2.11 against 0.8 section 2.8). Use their ``encode()``.
  Caveat: the 0.8 ``ClusterNode.decode`` refuses node status 5 (unknown), which 0.9 adds.

What differs, and is here: the options block (2.8) and the topic option catalog, the bodies
that end in an options block (CreateStream, UpdateStream, CreateTopic, UpdateTopic,
CreateUser, UpdateUser), the consumer-offset writes (an ``ack`` byte), SyncConsumerGroup,
DescribeOptions, the SendMessages metadata (4.3), and the replies that gained option blocks
or lost the replication factor (StreamResponse, TopicHeader, UserResponse), plus the new
SyncConsumerGroup, SendMessages and DescribeOptions replies.

Decisions where the reference is silent (see also docs/v09-notes.md):

* Every undecodable body is 3 InvalidCommand (section 6: "undecodable body"), including an
  empty Name or a numeric identifier whose length is not 4, which the 0.8 reader reports
  as 4; trailing bytes after a fixed layout are 3 as well. Option errors keep their own
  codes: 4041 unknown key, 4042 bad value, 4043 block too large.
* Options block structure: a key that is not kind 2, a key or value outside 1..=255 bytes
  (4.4), a value kind 0, a key that is not UTF-8, a duplicate key, or truncation -> 3. A
  fixed-size kind (4.4 table) whose value has another length -> 4042.
* The echoed ``options`` block of a TopicHeader holds the keys the client sent, re-encoded
  in their typed kinds (so ``"7 days"`` comes back as Uint64 604800000000); the derived block
  holds every other catalog key with the server default. Together they cover the catalog.
* UpdateTopic rejects the create-only keys of 2.8 with 4041; it accepts the durability keys
  (the wheel may send them on update; whether a change is allowed is the server's call).
* ``messages_required_to_save`` etc. get the ranges of 2.8; ``max_topic_size`` below
  ``segment_size`` (both sent) is 1019 (sections 2.8, 5.5).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from fractions import Fraction
from typing import Any, ClassVar, Self, cast

from tidelog.permissions import Permissions
from tidelog.wire.codes import U32_MAX, U64_MAX, CompressionAlgorithm, IggyError, Status
from tidelog.wire.primitives import (
    BytesLike,
    HeaderKind,
    Identifier,
    Reader,
    Writer,
    encode_identifier,
)
from tidelog.wire.records import (
    PartitionInfo,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    UserDetails,
    UserInfo,
)
from tidelog.wire.requests import (
    ChangePassword,
    CreateConsumerGroup,
    CreatePartitions,
    CreatePersonalAccessToken,
    CreateStream,
    CreateUser,
    DeleteConsumerGroup,
    DeleteConsumerOffset,
    DeletePartitions,
    DeletePersonalAccessToken,
    DeleteSegments,
    DeleteStream,
    DeleteTopic,
    DeleteUser,
    FlushUnsavedBuffer,
    GetClient,
    GetClients,
    GetClusterMetadata,
    GetConsumerGroup,
    GetConsumerGroups,
    GetConsumerOffset,
    GetMe,
    GetPersonalAccessTokens,
    GetSnapshot,
    GetStats,
    GetStream,
    GetStreams,
    GetTopic,
    GetTopics,
    GetUser,
    GetUsers,
    JoinConsumerGroup,
    LeaveConsumerGroup,
    LogoutUser,
    Partitioning,
    Ping,
    PollMessages,
    PurgeStream,
    PurgeTopic,
    StoreConsumerOffset,
    UpdatePermissions,
    UpdateStream,
    UpdateUser,
)
from tidelog.wire.user_headers import (
    _HEADER_FIXED_SIZES,  # the 4.4 size column; 0.9 uses the same kinds (user_headers.py keeps it private)
)
from tidelog.wire.v09.codes import CommandCode, Status09

Code = Status | Status09

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# TopicHeader (2.11) up to the name: id, created_at, partitions_count, message_expiry,
# compression_algorithm, max_topic_size, size_bytes, messages_count. No replication factor.
_TOPIC_HEADER = struct.Struct("<IQIQBQQQ")
_SYNC_HEAD = struct.Struct("<QI")  # generation, partitions_count
_CONFIRMATION = struct.Struct("<IIIQ")  # stream_id, topic_id, partition_id, base_offset
assert _TOPIC_HEADER.size + 1 == 50 and _CONFIRMATION.size == 20  # 2.11's sizes (name length byte)

EMPTY_OPTIONS = b"\x00\x00\x00\x00"
"""A response's u32-prefixed options block with no entries (StreamResponse, UserResponse)."""

# Section 1.8 / 2.8 limits of an options block.
OPTIONS_MAX_ENTRIES = 1024
OPTIONS_MAX_BYTES = 100_000
_ITEM_MAX_BYTES = 255  # a key or value: 1..=255 bytes (4.4)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


def _error(code: Code, detail: str) -> IggyError:
    # IggyError's status is annotated with the 0.8 enum but only its name and int value are
    # used; the 0.9-only codes are the disjoint Status09 (codes.py), so the cast is sound.
    return IggyError(cast(Status, code), detail)


def _malformed(detail: str) -> IggyError:
    return IggyError(Status.INVALID_COMMAND, detail)


@contextmanager
def _decoding() -> Iterator[None]:
    """One code for an undecodable 0.9 body (section 6: 3); the 0.8 Reader says 4 for an empty
    Name or a numeric identifier of another length (0.8 reference 1.4)."""
    try:
        yield
    except IggyError as exc:
        if exc.status == Status.INVALID_FORMAT:
            raise _malformed(exc.detail) from None
        raise


def _view(data: BytesLike) -> memoryview:
    view = data if isinstance(data, memoryview) else memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _end(r: Reader, what: str) -> None:
    if r.remaining:
        raise _malformed(f"{r.remaining} trailing bytes after {what}")


# ---------------------------------------------------------------------------------------------
# Options block (section 2.8, TLVs of 4.4)


@dataclass(frozen=True, slots=True)
class OptionValue:
    """One option value: its 4.4 kind (:class:`HeaderKind`; other non-zero kinds pass through
    :func:`decode_options` untouched) and the raw value bytes."""

    kind: int
    value: bytes

    @classmethod
    def string(cls, text: str) -> OptionValue:
        return cls(HeaderKind.STRING, text.encode())

    @classmethod
    def boolean(cls, flag: bool) -> OptionValue:
        return cls(HeaderKind.BOOL, b"\x01" if flag else b"\x00")

    @classmethod
    def uint32(cls, number: int) -> OptionValue:
        return cls(HeaderKind.UINT32, _U32.pack(number))

    @classmethod
    def uint64(cls, number: int) -> OptionValue:
        return cls(HeaderKind.UINT64, _U64.pack(number))

    def text(self) -> str:
        """The value of a String option; invalid UTF-8 -> 4042."""
        try:
            return self.value.decode()
        except UnicodeDecodeError:
            raise _error(Status09.INVALID_OPTION_VALUE, "option value is not UTF-8") from None


def decode_options(data: BytesLike) -> list[tuple[str, OptionValue]]:
    """A request's options block, running to the end of ``data`` (2.8), in wire order.

    The SDK sorts the keys; the order is not required here. Errors: more than 100,000 bytes
    or 1024 entries -> 4043; bad structure -> 3 (see the module docstring); a fixed-size
    value of the wrong length -> 4042. Which keys are known is the caller's business (4041).
    """
    view = _view(data)
    if view.nbytes > OPTIONS_MAX_BYTES:
        raise _error(Status09.OPTIONS_BLOCK_TOO_LARGE, f"options block of {view.nbytes} bytes")
    r = Reader(view)
    out: list[tuple[str, OptionValue]] = []
    seen: set[str] = set()
    with _decoding():
        while r.remaining:
            if len(out) == OPTIONS_MAX_ENTRIES:
                raise _error(Status09.OPTIONS_BLOCK_TOO_LARGE, f"more than {OPTIONS_MAX_ENTRIES} options")
            key_kind = r.u8()
            key_raw = r.bytes32()
            if key_kind != HeaderKind.STRING:
                raise _malformed(f"option key of kind {key_kind}")
            if not 1 <= len(key_raw) <= _ITEM_MAX_BYTES:
                raise _malformed(f"option key of {len(key_raw)} bytes")
            try:
                key = str(key_raw, "utf-8")
            except UnicodeDecodeError:
                raise _malformed("option key is not UTF-8") from None
            if key in seen:
                raise _malformed(f"duplicate option key {key!r}")
            seen.add(key)
            value_kind = r.u8()
            value_raw = r.bytes32()
            if value_kind == 0 or not 1 <= len(value_raw) <= _ITEM_MAX_BYTES:
                raise _malformed(f"option {key!r}: value of kind {value_kind}, {len(value_raw)} bytes")
            size = _HEADER_FIXED_SIZES.get(value_kind)
            if size is not None and size != len(value_raw):
                raise _error(
                    Status09.INVALID_OPTION_VALUE,
                    f"option {key!r}: kind {value_kind} takes {size} bytes, got {len(value_raw)}",
                )
            out.append((key, OptionValue(value_kind, bytes(value_raw))))
    return out


OptionEntries = Mapping[str, OptionValue] | Iterable[tuple[str, OptionValue]]


def encode_options(entries: OptionEntries) -> bytes:
    """The request form: TLV pairs sorted by key (as the SDK writes them), no length prefix.

    Client-side misuse (a duplicate or empty key, an item over 255 bytes, a block over the
    2.8 limits) raises ``ValueError``.
    """
    items = list(entries.items()) if isinstance(entries, Mapping) else list(entries)
    # str order is code point order, which is the order of the UTF-8 bytes the SDK sorts.
    items.sort(key=lambda kv: kv[0])
    if len(items) > OPTIONS_MAX_ENTRIES:
        raise ValueError(f"{len(items)} options, at most {OPTIONS_MAX_ENTRIES}")
    out = bytearray()
    previous: str | None = None
    for key, value in items:
        if key == previous:
            raise ValueError(f"duplicate option key {key!r}")
        previous = key
        raw = key.encode()
        if not 1 <= len(raw) <= _ITEM_MAX_BYTES or not 1 <= len(value.value) <= _ITEM_MAX_BYTES:
            raise ValueError(f"option {key!r}: key and value must be 1..255 bytes")
        if not 1 <= value.kind <= 0xFF:
            raise ValueError(f"option {key!r}: kind {value.kind}")
        out.append(HeaderKind.STRING)
        out += _U32.pack(len(raw))
        out += raw
        out.append(value.kind)
        out += _U32.pack(len(value.value))
        out += value.value
    if len(out) > OPTIONS_MAX_BYTES:
        raise ValueError(f"options block of {len(out)} bytes, at most {OPTIONS_MAX_BYTES}")
    return bytes(out)


def prefix_options_block(block: BytesLike) -> bytes:
    """The response form of an already encoded block: u32 byte length, then the block."""
    return _U32.pack(len(block)) + bytes(block)


def encode_options_prefixed(entries: OptionEntries) -> bytes:
    """The response form (StreamResponse, TopicHeader, UserResponse): u32 length + block."""
    return prefix_options_block(encode_options(entries))


def read_options_prefixed(reader: Reader) -> bytes:
    """Client side: the raw block of a response's u32-prefixed options (not validated; pass
    it to :func:`decode_options` to read the entries)."""
    return bytes(reader.bytes32())


def check_no_options(data: BytesLike) -> None:
    """Streams and users have no option keys (2.8): a well-formed block with any entry ->
    4041, as the real server answers; a malformed one gets the errors of
    :func:`decode_options`."""
    if len(data) == 0:
        return
    entries = decode_options(data)
    if entries:
        raise _error(Status09.UNSUPPORTED_OPTION_KEY, f"no options here, got {entries[0][0]!r}")


class OptionScope(IntEnum):
    """DescribeOptions scope (2.9)."""

    TOPIC = 1
    STREAM = 2
    USER = 3


# ---------------------------------------------------------------------------------------------
# Topic options (section 2.8): String values parsed like config values
#
# Accepted text forms (anything else -> 4042):
#   sizes:      a plain integer (bytes) or a number (decimals allowed, the result must be whole
#               bytes) with one of B, KB, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB
#               (powers of 1024), optionally separated by spaces: "1 GiB", "64MiB", "1.5 KiB".
#   durations:  a plain integer (microseconds, the unit of the typed value) or one or more
#               "<integer><unit>" terms, summed: "7 days", "1h 30m", "500ms". Units (case-
#               sensitive, as humantime's): us/µs/usec, ms/msec, s/sec/secs/second(s),
#               m/min/mins/minute(s), h/hr/hrs/hour(s), d/day(s), w/week(s).
#   expiry:     also "unlimited", "none", "never", "never_expire" (u64::MAX) and "default",
#               "server_default" (0), as IggyExpiry (2.10).
#   max size:   also "unlimited", "none" (u64::MAX) and "default", "server_default" (0).
#   booleans:   "true" / "false" (any case); integers: a plain decimal integer.
#   compression "none" / "gzip", durability "replicated" / "persisted" (any case).

_PLAIN_INT = re.compile(r"[0-9]+")
_SIZE_TEXT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")
_DURATION_TERM = re.compile(r"([0-9]+)\s*([a-zµ]+)\s*")
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_SECOND_US = 1_000_000
_DURATION_UNITS_US: dict[str, int] = {
    **dict.fromkeys(("us", "µs", "usec", "usecs"), 1),
    **dict.fromkeys(("ms", "msec", "msecs"), 1000),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), _SECOND_US),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60 * _SECOND_US),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600 * _SECOND_US),
    **dict.fromkeys(("d", "day", "days"), 86_400 * _SECOND_US),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86_400 * _SECOND_US),
}
_EXPIRY_WORDS = {
    **dict.fromkeys(("unlimited", "none", "never", "never_expire"), U64_MAX),
    **dict.fromkeys(("default", "server_default"), 0),
}
_MAX_SIZE_WORDS = {
    **dict.fromkeys(("unlimited", "none"), U64_MAX),
    **dict.fromkeys(("default", "server_default"), 0),
}


def _bad_value(key: str, detail: str) -> IggyError:
    return _error(Status09.INVALID_OPTION_VALUE, f"option {key!r}: {detail}")


def _u64(key: str, number: int) -> int:
    if number > U64_MAX:
        raise _bad_value(key, f"{number} is over u64")
    return number


def parse_size_bytes(text: str, key: str = "size") -> int:
    """A humanised byte size (see the accepted forms above) -> bytes; else 4042."""
    m = _SIZE_TEXT.fullmatch(text.strip())
    unit = _SIZE_UNITS.get(m.group(2)) if m else None
    if m is None or unit is None:
        raise _bad_value(key, f"{text!r} is not a size")
    value = Fraction(m.group(1)) * unit
    if value.denominator != 1:
        raise _bad_value(key, f"{text!r} is not a whole number of bytes")
    return _u64(key, int(value))


def parse_duration_us(text: str, key: str = "duration") -> int:
    """A humanised duration (see the accepted forms above) -> microseconds; else 4042."""
    s = text.strip()
    if _PLAIN_INT.fullmatch(s):
        return _u64(key, int(s))
    total, pos = 0, 0
    while pos < len(s) or pos == 0:
        m = _DURATION_TERM.match(s, pos)
        unit = _DURATION_UNITS_US.get(m.group(2)) if m else None
        if m is None or unit is None:
            raise _bad_value(key, f"{text!r} is not a duration")
        total += int(m.group(1)) * unit
        pos = m.end()
    return _u64(key, total)


def _text_expiry(key: str, text: str) -> int:
    word = _EXPIRY_WORDS.get(text.strip())
    return word if word is not None else parse_duration_us(text, key)


def _text_max_size(key: str, text: str) -> int:
    word = _MAX_SIZE_WORDS.get(text.strip())
    return word if word is not None else parse_size_bytes(text, key)


def _text_size(key: str, text: str) -> int:
    return parse_size_bytes(text, key)


def _text_int(key: str, text: str) -> int:
    s = text.strip()
    if not _PLAIN_INT.fullmatch(s):
        raise _bad_value(key, f"{text!r} is not an integer")
    return int(s)


def _text_bool(key: str, text: str) -> bool:
    s = text.strip().lower()
    if s not in ("true", "false"):
        raise _bad_value(key, f"{text!r} is not true/false")
    return s == "true"


_COMPRESSION_NAMES = {CompressionAlgorithm.NONE: "none", CompressionAlgorithm.GZIP: "gzip"}
_COMPRESSION_BY_NAME = {name: int(alg) for alg, name in _COMPRESSION_NAMES.items()}


def _text_compression(key: str, text: str) -> int:
    alg = _COMPRESSION_BY_NAME.get(text.strip().lower())
    if alg is None:
        raise _bad_value(key, f"{text!r} is not none/gzip")
    return alg


class Durability(StrEnum):
    """The two values of the wheel's ``durability`` / ``consumer_offset_durability`` keys."""

    REPLICATED = "replicated"
    PERSISTED = "persisted"


_DURABILITIES = frozenset(str(d) for d in Durability)


def _text_durability(key: str, text: str) -> Durability:
    s = text.strip().lower()
    if s not in _DURABILITIES:
        raise _bad_value(key, f"{text!r} is not replicated/persisted")
    return Durability(s)


def _check_segment_size(key: str, value: Any) -> None:
    if not (MIB <= value <= GIB and value % 512 == 0):
        raise _bad_value(key, f"{value} is not a 512-byte multiple in 1 MiB..=1 GiB")


def _check_messages_required(key: str, value: Any) -> None:
    if not 1 <= value <= 16 * MIB:
        raise _bad_value(key, f"{value} is not in 1..=16 Mi")


def _check_save_size(key: str, value: Any) -> None:
    if value > GIB:
        raise _bad_value(key, f"{value} is over 1 GiB")


def _check_u32_value(key: str, value: Any) -> None:
    if value > U32_MAX:
        raise _bad_value(key, f"{value} is over u32")


@dataclass(frozen=True, slots=True)
class _TopicKey:
    """One row of the 2.8 catalog: its typed kind, the text parser, the range check."""

    key: str
    kind: HeaderKind
    from_text: Callable[[str, str], Any]
    check: Callable[[str, Any], None] | None
    create_only: bool
    description: str


_TOPIC_CATALOG: tuple[_TopicKey, ...] = (
    _TopicKey(
        "compression_algorithm", HeaderKind.STRING, _text_compression, None, False,
        "Compression of message payloads: none or gzip.",
    ),
    _TopicKey(
        "message_expiry", HeaderKind.UINT64, _text_expiry, None, False,
        "Message expiry in microseconds; 0 = server default, u64::MAX = never.",
    ),
    _TopicKey(
        "max_topic_size", HeaderKind.UINT64, _text_max_size, None, False,
        "Maximum topic size in bytes; 0 = server default, u64::MAX = unlimited.",
    ),
    _TopicKey(
        "segment_size", HeaderKind.UINT64, _text_size, _check_segment_size, True,
        "Segment size in bytes: a multiple of 512 in 1 MiB..=1 GiB.",
    ),
    _TopicKey(
        "enforce_fsync", HeaderKind.BOOL, _text_bool, None, True,
        "Fsync every write before acknowledging it.",
    ),
    _TopicKey(
        "messages_required_to_save", HeaderKind.UINT32, _text_int, _check_messages_required, True,
        "Buffered messages that trigger a flush: 1..=16 Mi.",
    ),
    _TopicKey(
        "size_of_messages_required_to_save", HeaderKind.UINT64, _text_size, _check_save_size, True,
        "Buffered bytes that trigger a flush: at most 1 GiB.",
    ),
    _TopicKey(
        "preallocate_segments", HeaderKind.BOOL, _text_bool, None, True,
        "Preallocate segment files at their full size.",
    ),
    _TopicKey(
        "durability", HeaderKind.STRING, _text_durability, None, False,
        "When a send is acknowledged: replicated or persisted.",
    ),
    _TopicKey(
        "consumer_offset_durability", HeaderKind.STRING, _text_durability, None, False,
        "When a consumer offset write is acknowledged: replicated or persisted.",
    ),
)  # fmt: skip
_TOPIC_KEYS: dict[str, _TopicKey] = {spec.key: spec for spec in _TOPIC_CATALOG}

TOPIC_OPTION_KEYS: tuple[str, ...] = tuple(spec.key for spec in _TOPIC_CATALOG)
UPDATABLE_TOPIC_KEYS: frozenset[str] = frozenset(
    {"compression_algorithm", "message_expiry", "max_topic_size"}
)
CREATE_ONLY_TOPIC_KEYS: frozenset[str] = frozenset(spec.key for spec in _TOPIC_CATALOG if spec.create_only)


def _typed_value(spec: _TopicKey, value: OptionValue) -> Any:
    """The Python value of one topic option: its typed kind (2.8 table) or a String."""
    if value.kind == HeaderKind.STRING:
        result = spec.from_text(spec.key, value.text())
    elif value.kind != spec.kind:
        raise _bad_value(spec.key, f"kind {value.kind}, expected {int(spec.kind)} or 2 (String)")
    elif spec.kind == HeaderKind.BOOL:
        result = value.value[0] != 0
    else:  # UINT32 / UINT64: decode_options has checked the length
        result = int.from_bytes(value.value, "little")
    if spec.kind == HeaderKind.UINT32:
        _check_u32_value(spec.key, result)
    if spec.check is not None:
        spec.check(spec.key, result)
    return result


def _canonical(spec: _TopicKey, value: Any) -> OptionValue:
    """The typed encoding of one topic option, as the SDK sends it (3.5)."""
    if spec.key == "compression_algorithm":
        return OptionValue.string(_COMPRESSION_NAMES[CompressionAlgorithm(value)])
    if spec.kind == HeaderKind.STRING:
        return OptionValue.string(value)
    if spec.kind == HeaderKind.BOOL:
        return OptionValue.boolean(bool(value))
    if spec.kind == HeaderKind.UINT32:
        return OptionValue.uint32(value)
    return OptionValue.uint64(value)


def check_topic_size(max_topic_size: int, segment_size: int) -> None:
    """2.8 / 5.5: a concrete cap below the segment size -> 1019 InvalidTopicSize. 0 (server
    default) and u64::MAX (unlimited) always pass; call it with resolved values."""
    if max_topic_size not in (0, U64_MAX) and max_topic_size < segment_size:
        raise IggyError(
            Status.INVALID_TOPIC_SIZE, f"max_topic_size {max_topic_size} < segment_size {segment_size}"
        )


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """Concrete values of every catalog key: the server defaults (2.8 "Default" column and
    section 7), or a topic's resolved settings."""

    compression_algorithm: int = CompressionAlgorithm.NONE
    message_expiry: int = U64_MAX
    max_topic_size: int = U64_MAX
    segment_size: int = GIB
    enforce_fsync: bool = False
    messages_required_to_save: int = 1024
    size_of_messages_required_to_save: int = MIB
    preallocate_segments: bool = False
    durability: str = Durability.REPLICATED
    consumer_offset_durability: str = Durability.REPLICATED


DEFAULT_TOPIC_SETTINGS = TopicSettings()


@dataclass(frozen=True, slots=True)
class TopicOptions:
    """The topic options a client sent (None = key absent), validated against 2.8."""

    compression_algorithm: int | None = None
    """1 none, 2 gzip (CompressionAlgorithm)."""
    message_expiry: int | None = None
    """IggyExpiry (2.10): µs; 0 = server default, u64::MAX = never."""
    max_topic_size: int | None = None
    """MaxTopicSize (2.10): bytes; 0 = server default, u64::MAX = unlimited."""
    segment_size: int | None = None
    enforce_fsync: bool | None = None
    messages_required_to_save: int | None = None
    size_of_messages_required_to_save: int | None = None
    preallocate_segments: bool | None = None
    durability: str | None = None
    """"replicated" or "persisted" (:class:`Durability`)."""
    consumer_offset_durability: str | None = None

    def items(self) -> list[tuple[str, Any]]:
        """The keys present, in catalog order, with their values."""
        out: list[tuple[str, Any]] = []
        for key in TOPIC_OPTION_KEYS:
            value = getattr(self, key)
            if value is not None:
                out.append((key, value))
        return out

    @property
    def explicit(self) -> bytes:
        """The options block of the keys present, typed (2.8 kinds) and sorted: what a client
        sends and what a TopicHeader echoes in ``options``."""
        return encode_options([(key, _canonical(_TOPIC_KEYS[key], value)) for key, value in self.items()])

    def resolve(self, defaults: TopicSettings = DEFAULT_TOPIC_SETTINGS) -> TopicSettings:
        """Concrete settings: absent keys, and 0 ("server default", 2.10) for expiry and max
        size, take ``defaults``."""
        values = {key: value for key, value in self.items() if value != 0 or key not in _ZERO_IS_DEFAULT}
        return TopicSettings(**{**_settings_dict(defaults), **values})


_ZERO_IS_DEFAULT = frozenset({"message_expiry", "max_topic_size"})


def _settings_dict(settings: TopicSettings) -> dict[str, Any]:
    return {key: getattr(settings, key) for key in TOPIC_OPTION_KEYS}


def parse_topic_options(data: BytesLike, *, update: bool = False) -> TopicOptions:
    """The options block of CreateTopic (``update=False``) or UpdateTopic (``update=True``).

    Unknown key, or a create-only key on update -> 4041; bad kind, text or range -> 4042;
    max_topic_size below segment_size (both sent) -> 1019; block errors as
    :func:`decode_options`. Text forms accepted for String values: see the table above.
    """
    values: dict[str, Any] = {}
    for key, value in decode_options(data):
        spec = _TOPIC_KEYS.get(key)
        if spec is None:
            raise _error(Status09.UNSUPPORTED_OPTION_KEY, f"unknown topic option {key!r}")
        if update and spec.create_only:
            raise _error(Status09.UNSUPPORTED_OPTION_KEY, f"topic option {key!r} is create-only")
        values[key] = _typed_value(spec, value)
    options = TopicOptions(**values)
    if options.max_topic_size is not None and options.segment_size is not None:
        check_topic_size(options.max_topic_size, options.segment_size)
    return options


def derived_topic_options(
    options: TopicOptions, defaults: TopicSettings = DEFAULT_TOPIC_SETTINGS, **overrides: Any
) -> bytes:
    """The TopicHeader ``derived_options`` block (2.11): every catalog key the client did not
    send, typed, with the server default from ``defaults``; keyword arguments override single
    defaults (``segment_size=config_value``; an unknown name is a ``TypeError``). With
    :attr:`TopicOptions.explicit` it covers the whole catalog, so a client can read every
    setting of a topic."""
    if overrides:
        defaults = replace(defaults, **overrides)
    return encode_options(
        [
            (spec.key, _canonical(spec, getattr(defaults, spec.key)))
            for spec in _TOPIC_CATALOG
            if getattr(options, spec.key) is None
        ]
    )


# ---------------------------------------------------------------------------------------------
# DescribeOptions (code 13; 2.11 OptionDescriptor)


@dataclass(frozen=True, slots=True)
class OptionDescriptor:
    key: str
    kind: int
    default: bytes
    """The default value in ``kind``'s encoding."""
    description: str

    def encode(self) -> bytes:
        w = Writer()
        w.name(self.key)
        w.u8(self.kind)
        w.bytes32(self.default)
        w.str32(self.description)
        return w.getvalue()

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        key = reader.name()
        kind = reader.u8()
        default = bytes(reader.bytes32())
        return cls(key, kind, default, reader.str32())


def topic_option_descriptors(defaults: TopicSettings = DEFAULT_TOPIC_SETTINGS) -> list[OptionDescriptor]:
    """The topic catalog (2.8, all ten keys incl. the wheel's durability keys), in catalog
    order, with ``defaults`` as the default values."""
    out: list[OptionDescriptor] = []
    for spec in _TOPIC_CATALOG:
        value = _canonical(spec, getattr(defaults, spec.key))
        out.append(OptionDescriptor(spec.key, int(spec.kind), value.value, spec.description))
    return out


def encode_describe_options(scope: int, defaults: TopicSettings = DEFAULT_TOPIC_SETTINGS) -> bytes:
    """DescribeOptions reply payload: ``count u32`` + descriptors. Stream and user scopes have
    no keys (``00000000``); another scope -> 3 (3.3)."""
    if scope == OptionScope.TOPIC:
        descriptors = topic_option_descriptors(defaults)
        return _U32.pack(len(descriptors)) + b"".join(d.encode() for d in descriptors)
    if scope in (OptionScope.STREAM, OptionScope.USER):
        return _U32.pack(0)
    raise _malformed(f"DescribeOptions scope {scope}")


def decode_describe_options(payload: BytesLike) -> list[OptionDescriptor]:
    """Client side of :func:`encode_describe_options`; malformed -> 3."""
    r = Reader(payload)
    with _decoding():
        out = [OptionDescriptor.decode(r) for _ in range(r.u32())]
    _end(r, "DescribeOptions reply")
    return out


# ---------------------------------------------------------------------------------------------
# 0.9 requests (section 3)


class AckLevel(IntEnum):
    """Consumer-offset writes (2.6); the SDK always sends QUORUM."""

    NO_ACK = 0
    QUORUM = 1


_ACK_LEVELS = frozenset(int(a) for a in AckLevel)


def _ack(value: int) -> int:
    if value not in _ACK_LEVELS:
        raise _malformed(f"ack level {value}")
    return value


def _split_08(cls08: type[Any], body: BytesLike) -> tuple[Any, memoryview]:
    """Decode the 0.8-layout prefix of a 0.9 body with the 0.8 class and return what follows.

    The 0.8 decoders do not report how much they read; their encoders write exactly as many
    bytes as a decode consumes (flags re-encode as 0/1, names and identifiers keep their
    bytes), so the length of the re-encoding is the prefix length.
    """
    view = _view(body)
    with _decoding():
        obj = cls08.decode(view)
    return obj, view[len(obj.encode()) :]


@dataclass(frozen=True, slots=True)
class CreateStream09(CreateStream):
    """``name Name`` + options block (must be empty, 3.5). A :class:`CreateStream`: the 0.8
    handler serves it."""

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        base, rest = _split_08(CreateStream, body)
        check_no_options(rest)
        return cls(base.name)


@dataclass(frozen=True, slots=True)
class UpdateStream09(UpdateStream):
    """``stream Identifier, name Name`` + options block (must be empty, 3.5)."""

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        base, rest = _split_08(UpdateStream, body)
        check_no_options(rest)
        return cls(base.stream_id, base.name)


@dataclass(frozen=True, slots=True)
class CreateUser09(CreateUser):
    """3.4: the 0.8 CreateUser layout + an options block (must be empty)."""

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        base, rest = _split_08(CreateUser, body)
        check_no_options(rest)
        return cls(base.username, base.password, base.status, base.permissions)


@dataclass(frozen=True, slots=True)
class UpdateUser09(UpdateUser):
    """3.4: the 0.8 UpdateUser layout + an options block (must be empty)."""

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        base, rest = _split_08(UpdateUser, body)
        check_no_options(rest)
        return cls(base.user_id, base.username, base.status)


@dataclass(frozen=True, slots=True)
class StoreConsumerOffset09(StoreConsumerOffset):
    """3.7: the 0.8 StoreConsumerOffset layout + ``ack u8`` (2.6)."""

    ack: int = AckLevel.QUORUM

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        base, rest = _split_08(StoreConsumerOffset, body)
        if len(rest) != 1:
            raise _malformed(f"StoreConsumerOffset: {len(rest)} bytes after the offset, expected ack u8")
        return cls(
            base.consumer, base.stream_id, base.topic_id, base.partition_id, base.offset, _ack(rest[0])
        )

    def encode(self) -> bytes:
        return StoreConsumerOffset.encode(self) + bytes((self.ack,))


@dataclass(frozen=True, slots=True)
class DeleteConsumerOffset09(DeleteConsumerOffset):
    """3.7: the 0.8 DeleteConsumerOffset layout + ``ack u8`` (2.6)."""

    ack: int = AckLevel.QUORUM

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        base, rest = _split_08(DeleteConsumerOffset, body)
        if len(rest) != 1:
            raise _malformed(f"DeleteConsumerOffset: {len(rest)} bytes after the partition, expected ack u8")
        return cls(base.consumer, base.stream_id, base.topic_id, base.partition_id, _ack(rest[0]))

    def encode(self) -> bytes:
        return DeleteConsumerOffset.encode(self) + bytes((self.ack,))


@dataclass(frozen=True, slots=True)
class CreateTopic09:
    """3.5: ``stream Identifier, partitions_count u32, name Name`` + topic options block.

    ``partitions_count`` is not range-checked here (0..=1000 else 2015 is the server's)."""

    CODE: ClassVar[CommandCode] = CommandCode.CREATE_TOPIC
    stream_id: Identifier
    partitions_count: int
    name: str
    options: TopicOptions = field(default_factory=TopicOptions)

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        r = Reader(body)
        with _decoding():
            stream_id = r.identifier()
            partitions_count = r.u32()
            name = r.name()
        return cls(stream_id, partitions_count, name, parse_topic_options(r.view[r.pos :]))

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.stream_id)
        w.u32(self.partitions_count)
        w.name(self.name)
        w.bytes_(self.options.explicit)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class UpdateTopic09:
    """3.5: ``stream Identifier, topic Identifier, name Name`` + options block; absent keys
    are left unchanged, create-only keys are refused (4041)."""

    CODE: ClassVar[CommandCode] = CommandCode.UPDATE_TOPIC
    stream_id: Identifier
    topic_id: Identifier
    name: str
    options: TopicOptions = field(default_factory=TopicOptions)

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        r = Reader(body)
        with _decoding():
            stream_id = r.identifier()
            topic_id = r.identifier()
            name = r.name()
        return cls(stream_id, topic_id, name, parse_topic_options(r.view[r.pos :], update=True))

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.stream_id)
        w.identifier(self.topic_id)
        w.name(self.name)
        w.bytes_(self.options.explicit)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class SyncConsumerGroup:
    """606 (3.8): ``stream, topic, group`` Identifiers."""

    CODE: ClassVar[CommandCode] = CommandCode.SYNC_CONSUMER_GROUP
    stream_id: Identifier
    topic_id: Identifier
    group_id: Identifier

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        r = Reader(body)
        with _decoding():
            out = cls(r.identifier(), r.identifier(), r.identifier())
        _end(r, "SyncConsumerGroup")
        return out

    def encode(self) -> bytes:
        return (
            encode_identifier(self.stream_id)
            + encode_identifier(self.topic_id)
            + encode_identifier(self.group_id)
        )


@dataclass(frozen=True, slots=True)
class DescribeOptions:
    """13 (3.3): ``scope u8``, 1..=3 (:class:`OptionScope`) else 3."""

    CODE: ClassVar[CommandCode] = CommandCode.DESCRIBE_OPTIONS
    scope: int

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        r = Reader(body)
        scope = r.u8()
        _end(r, "DescribeOptions")
        if scope not in _SCOPES:
            raise _malformed(f"DescribeOptions scope {scope}")
        return cls(scope)

    def encode(self) -> bytes:
        return bytes((self.scope,))


_SCOPES = frozenset(int(s) for s in OptionScope)


@dataclass(frozen=True, slots=True)
class SendMessages09Header:
    """The metadata of a SendMessages body (4.3); the batch is ``body[batch_offset:]``, to be
    checked by :func:`tidelog.wire.v09.batch.parse_batch` with ``messages_count``.

    Errors (all 3, as 4.3 says): ``metadata_length`` past the body, an undecodable field, or
    metadata fields that do not fill ``metadata_length`` exactly.
    """

    CODE: ClassVar[CommandCode] = CommandCode.SEND_MESSAGES
    stream_id: Identifier
    topic_id: Identifier
    partitioning: Partitioning
    messages_count: int
    batch_offset: int

    @classmethod
    def decode(cls, body: BytesLike) -> Self:
        view = _view(body)
        metadata_length = Reader(view).u32()
        end = 4 + metadata_length
        if end > view.nbytes:
            raise _malformed(f"metadata_length {metadata_length} runs past the {view.nbytes}-byte body")
        r = Reader(view, 4, end)
        with _decoding():
            stream_id = r.identifier()
            topic_id = r.identifier()
            partitioning = Partitioning.decode(r)
            messages_count = r.u32()
        if r.remaining:
            raise _malformed(
                f"metadata_length {metadata_length}, fields take {metadata_length - r.remaining}"
            )
        return cls(stream_id, topic_id, partitioning, messages_count, end)


_BATCH_MESSAGE_COUNT = struct.Struct("<I")
_BATCH_MESSAGE_COUNT_AT = 48  # 4.1
_BATCH_HEADER_SIZE = 256


def encode_send_messages09(
    stream_id: Identifier, topic_id: Identifier, partitioning: Partitioning, batch: BytesLike
) -> bytes:
    """A SendMessages body (4.3) around an already built batch (e.g. from
    :func:`tidelog.wire.v09.batch.build_batch`); ``messages_count`` is the batch's."""
    if len(batch) < _BATCH_HEADER_SIZE:
        raise ValueError(f"a batch is at least {_BATCH_HEADER_SIZE} bytes, got {len(batch)}")
    (count,) = _BATCH_MESSAGE_COUNT.unpack_from(batch, _BATCH_MESSAGE_COUNT_AT)
    metadata = encode_identifier(stream_id) + encode_identifier(topic_id) + partitioning.encode()
    return _U32.pack(len(metadata) + 4) + metadata + _U32.pack(count) + bytes(batch)


# ---------------------------------------------------------------------------------------------
# Request table (section 3.1)

# Code -> request class: the 0.8 class where the layout is identical, else the 0.9 one.
# Login (40/45, frames.decode_login), SendMessages (101, SendMessages09Header + parse_batch)
# and the legacy logins (38/44, eviction 15) are not in it.
REQUEST_TYPES_09: dict[CommandCode, type[Any]] = {
    CommandCode.PING: Ping,
    CommandCode.GET_STATS: GetStats,
    CommandCode.GET_SNAPSHOT_FILE: GetSnapshot,
    CommandCode.GET_CLUSTER_METADATA: GetClusterMetadata,
    CommandCode.DESCRIBE_OPTIONS: DescribeOptions,
    CommandCode.GET_ME: GetMe,
    CommandCode.GET_CLIENT: GetClient,
    CommandCode.GET_CLIENTS: GetClients,
    CommandCode.GET_USER: GetUser,
    CommandCode.GET_USERS: GetUsers,
    CommandCode.CREATE_USER: CreateUser09,
    CommandCode.DELETE_USER: DeleteUser,
    CommandCode.UPDATE_USER: UpdateUser09,
    CommandCode.UPDATE_PERMISSIONS: UpdatePermissions,
    CommandCode.CHANGE_PASSWORD: ChangePassword,
    CommandCode.LOGOUT_USER: LogoutUser,
    CommandCode.GET_PERSONAL_ACCESS_TOKENS: GetPersonalAccessTokens,
    CommandCode.CREATE_PERSONAL_ACCESS_TOKEN: CreatePersonalAccessToken,
    CommandCode.DELETE_PERSONAL_ACCESS_TOKEN: DeletePersonalAccessToken,
    CommandCode.POLL_MESSAGES: PollMessages,
    CommandCode.FLUSH_UNSAVED_BUFFER: FlushUnsavedBuffer,
    CommandCode.GET_CONSUMER_OFFSET: GetConsumerOffset,
    CommandCode.STORE_CONSUMER_OFFSET: StoreConsumerOffset09,
    CommandCode.DELETE_CONSUMER_OFFSET: DeleteConsumerOffset09,
    CommandCode.GET_STREAM: GetStream,
    CommandCode.GET_STREAMS: GetStreams,
    CommandCode.CREATE_STREAM: CreateStream09,
    CommandCode.DELETE_STREAM: DeleteStream,
    CommandCode.UPDATE_STREAM: UpdateStream09,
    CommandCode.PURGE_STREAM: PurgeStream,
    CommandCode.GET_TOPIC: GetTopic,
    CommandCode.GET_TOPICS: GetTopics,
    CommandCode.CREATE_TOPIC: CreateTopic09,
    CommandCode.DELETE_TOPIC: DeleteTopic,
    CommandCode.UPDATE_TOPIC: UpdateTopic09,
    CommandCode.PURGE_TOPIC: PurgeTopic,
    CommandCode.CREATE_PARTITIONS: CreatePartitions,
    CommandCode.DELETE_PARTITIONS: DeletePartitions,
    CommandCode.DELETE_SEGMENTS: DeleteSegments,
    CommandCode.GET_CONSUMER_GROUP: GetConsumerGroup,
    CommandCode.GET_CONSUMER_GROUPS: GetConsumerGroups,
    CommandCode.CREATE_CONSUMER_GROUP: CreateConsumerGroup,
    CommandCode.DELETE_CONSUMER_GROUP: DeleteConsumerGroup,
    CommandCode.JOIN_CONSUMER_GROUP: JoinConsumerGroup,
    CommandCode.LEAVE_CONSUMER_GROUP: LeaveConsumerGroup,
    CommandCode.SYNC_CONSUMER_GROUP: SyncConsumerGroup,
}
_NOT_IN_TABLE = frozenset(
    {
        CommandCode.LOGIN_USER,
        CommandCode.LOGIN_WITH_PERSONAL_ACCESS_TOKEN,
        CommandCode.LOGIN_REGISTER,
        CommandCode.LOGIN_REGISTER_WITH_PAT,
        CommandCode.SEND_MESSAGES,
    }
)
assert set(REQUEST_TYPES_09) == set(CommandCode) - _NOT_IN_TABLE
# 0.8 classes ignore trailing bytes; 0.9 classes (defined here) check the whole body.
_FROM_08 = frozenset(cls for cls in REQUEST_TYPES_09.values() if cls.__module__ != __name__)
_DECODERS: dict[int, tuple[type[Any], bool]] = {
    int(code): (cls, cls in _FROM_08) for code, cls in REQUEST_TYPES_09.items()
}


def decode_request09(code: int, body: BytesLike) -> object:
    """Decode the body of request ``code`` (the classic code: from header bytes 196..200 for
    NonReplicated, else implied by the operation, see ``codes.CODE_FOR_OPERATION``).

    Raises only :class:`IggyError`: unknown code or a code not decoded here -> 3, and the
    errors of the class's ``decode`` (trailing bytes -> 3).
    """
    entry = _DECODERS.get(code)
    if entry is None:
        raise _malformed(f"no 0.9 request body decoder for code {code}")
    cls, from_08 = entry
    view = _view(body)
    if not from_08:
        return cls.decode(view)
    try:  # not _decoding(): a context manager costs about a microsecond on every poll
        request = cls.decode(view)
    except IggyError as exc:
        if exc.status == Status.INVALID_FORMAT:
            raise _malformed(exc.detail) from None
        raise
    extra = view.nbytes - len(request.encode())
    if extra:
        raise _malformed(f"{extra} trailing bytes after {cls.__name__}")
    return request


# ---------------------------------------------------------------------------------------------
# Reply payloads (section 2.11). Encoders for the server, decoders for the client; the
# decoders raise IggyError(3) on a malformed payload, as the SDK fails with InvalidCommand.


@dataclass(frozen=True, slots=True)
class Stream09:
    """StreamResponse: the 0.8 Stream record + a u32-prefixed options block (raw bytes)."""

    info: StreamInfo
    options: bytes = b""

    def encode(self) -> bytes:
        return self.info.encode() + prefix_options_block(self.options)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        info = StreamInfo.decode(reader)
        return cls(info, read_options_prefixed(reader))


@dataclass(frozen=True, slots=True)
class TopicHeader09:
    """TopicHeader: the 0.8 Topic fields without replication_factor (decoded as 0), then the
    explicit and the derived options blocks (raw, unprefixed)."""

    topic: TopicInfo
    options: bytes = b""
    derived: bytes = b""

    def encode(self) -> bytes:
        return encode_topic_header09(self.topic, self.options, self.derived)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        topic_id, created_at, partitions, expiry, compression, max_size, size, messages = reader.unpack(
            _TOPIC_HEADER
        )
        name = reader.name()
        options = read_options_prefixed(reader)
        derived = read_options_prefixed(reader)
        info = TopicInfo(
            topic_id, created_at, partitions, expiry, compression, max_size, 0, size, messages, name
        )
        return cls(info, options, derived)


@dataclass(frozen=True, slots=True)
class StreamDetails09:
    """GetStream reply: StreamResponse + ``topics_count`` TopicHeaders."""

    stream: Stream09
    topics: list[TopicHeader09] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TopicDetails09:
    """GetTopic / CreateTopic reply: TopicHeader + ``partitions_count`` PartitionResponses."""

    header: TopicHeader09
    partitions: list[PartitionInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class User09:
    """UserResponse: the 0.8 User record + a u32-prefixed options block (raw bytes)."""

    info: UserInfo
    options: bytes = b""

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        info = UserInfo.decode(reader)
        return cls(info, read_options_prefixed(reader))


@dataclass(frozen=True, slots=True)
class UserDetails09:
    user: User09
    permissions: Permissions | None = None


@dataclass(frozen=True, slots=True)
class SyncGroup09:
    """SyncConsumerGroupResponse: the group generation and the caller's partitions."""

    generation: int
    partition_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SendConfirmation09:
    stream_id: int
    topic_id: int
    partition_id: int
    base_offset: int


def _decode_exact(payload: BytesLike, what: str, read: Callable[[Reader], Any]) -> Any:
    r = Reader(payload)
    with _decoding():
        out = read(r)
    _end(r, what)
    return out


def _decode_all(payload: BytesLike, read: Callable[[Reader], Any]) -> list[Any]:
    r = Reader(payload)
    out: list[Any] = []
    with _decoding():
        while r.remaining:
            out.append(read(r))
    return out


# --- streams


def encode_stream09(info: StreamInfo) -> bytes:
    """StreamResponse (CreateStream reply, GetStreams entries): options are always empty,
    streams having no option keys (2.8)."""
    return info.encode() + EMPTY_OPTIONS


def decode_stream09(payload: BytesLike) -> Stream09:
    """A CreateStream reply payload (exactly one StreamResponse)."""
    out: Stream09 = _decode_exact(payload, "StreamResponse", Stream09.decode)
    return out


def encode_streams09(infos: Sequence[StreamInfo]) -> bytes:
    """GetStreams reply: StreamResponses back to back, no count (empty = none)."""
    return b"".join(encode_stream09(info) for info in infos)


def decode_streams09(payload: BytesLike) -> list[Stream09]:
    return _decode_all(payload, Stream09.decode)


TopicOptionBlocks = Callable[[TopicInfo], tuple[bytes, bytes]] | Sequence[tuple[bytes, bytes]]
"""Per-topic (options, derived) blocks: a function of the topic, or one pair per topic."""


def encode_stream_details09(details: StreamDetails, topic_options: TopicOptionBlocks = ()) -> bytes:
    """GetStream reply: StreamResponse + one TopicHeader per topic. ``topic_options`` gives
    each topic's (options, derived) blocks; an empty sequence means no blocks at all."""
    topics = details.topics
    assert details.stream.topics_count == len(topics), "topics_count must match the topics"
    if callable(topic_options):
        blocks = [topic_options(topic) for topic in topics]
    elif len(topic_options) == 0:
        blocks = [(b"", b"")] * len(topics)
    else:
        blocks = list(topic_options)
        assert len(blocks) == len(topics), "one (options, derived) pair per topic"
    return encode_stream09(details.stream) + b"".join(
        encode_topic_header09(topic, options, derived)
        for topic, (options, derived) in zip(topics, blocks, strict=True)
    )


def decode_stream_details09(payload: BytesLike) -> StreamDetails09:
    def read(r: Reader) -> StreamDetails09:
        stream = Stream09.decode(r)
        return StreamDetails09(stream, [TopicHeader09.decode(r) for _ in range(stream.info.topics_count)])

    out: StreamDetails09 = _decode_exact(payload, "StreamDetails", read)
    return out


# --- topics


def encode_topic_header09(info: TopicInfo, options: BytesLike = b"", derived: BytesLike = b"") -> bytes:
    """TopicHeader (2.11). ``options``/``derived`` are unprefixed blocks (e.g.
    ``TopicOptions.explicit`` and :func:`derived_topic_options`); ``info.replication_factor``
    is not sent (0.9 has none)."""
    w = Writer()
    w.pack(
        _TOPIC_HEADER,
        info.id,
        info.created_at_us,
        info.partitions_count,
        info.message_expiry,
        info.compression_algorithm,
        info.max_topic_size,
        info.size_bytes,
        info.messages_count,
    )
    w.name(info.name)
    w.bytes32(options)
    w.bytes32(derived)
    return w.getvalue()


def encode_topic_details09(
    details: TopicDetails, options: BytesLike = b"", derived: BytesLike = b""
) -> bytes:
    """GetTopic / CreateTopic reply: TopicHeader + the 40-byte PartitionResponses (0.8's)."""
    assert details.topic.partitions_count == len(details.partitions), "partitions_count must match"
    return encode_topic_header09(details.topic, options, derived) + b"".join(
        p.encode() for p in details.partitions
    )


def decode_topic_details09(payload: BytesLike) -> TopicDetails09:
    def read(r: Reader) -> TopicDetails09:
        header = TopicHeader09.decode(r)
        return TopicDetails09(header, [PartitionInfo.decode(r) for _ in range(header.topic.partitions_count)])

    out: TopicDetails09 = _decode_exact(payload, "TopicDetails", read)
    return out


def encode_topics09(topics: Sequence[tuple[TopicInfo, BytesLike, BytesLike]]) -> bytes:
    """GetTopics reply (3.1): ``count u32`` + TopicHeaders, each ``(info, options, derived)``."""
    return _U32.pack(len(topics)) + b"".join(encode_topic_header09(*t) for t in topics)


def decode_topics09(payload: BytesLike) -> list[TopicHeader09]:
    def read(r: Reader) -> list[TopicHeader09]:
        return [TopicHeader09.decode(r) for _ in range(r.u32())]

    out: list[TopicHeader09] = _decode_exact(payload, "GetTopics reply", read)
    return out


# --- users


def encode_user09(info: UserInfo) -> bytes:
    """UserResponse (GetUsers entries): options are always empty (users have no keys)."""
    return info.encode() + EMPTY_OPTIONS


def encode_users09(infos: Sequence[UserInfo]) -> bytes:
    """GetUsers reply: UserResponses back to back, no count."""
    return b"".join(encode_user09(info) for info in infos)


def decode_users09(payload: BytesLike) -> list[User09]:
    return _decode_all(payload, User09.decode)


def encode_user_details09(details: UserDetails) -> bytes:
    """UserDetailsResponse (GetUser, CreateUser): UserResponse then the 0.8 permissions part
    (``00000000`` or ``01`` + len + block)."""
    user = details.user.encode()
    return user + EMPTY_OPTIONS + details.encode()[len(user) :]


def decode_user_details09(payload: BytesLike) -> UserDetails09:
    def read(r: Reader) -> UserDetails09:
        user = User09.decode(r)
        if r.u8() == 1:
            return UserDetails09(user, r.sized_permissions())
        r.skip(3)  # "no permissions" is four bytes: the flag and three more (2.11)
        return UserDetails09(user, None)

    out: UserDetails09 = _decode_exact(payload, "UserDetails", read)
    return out


# --- consumer groups, messages


def encode_sync_group09(generation: int, partition_ids: Sequence[int]) -> bytes:
    """SyncConsumerGroupResponse; a caller that is not a member gets an empty body instead."""
    n = len(partition_ids)
    return _SYNC_HEAD.pack(generation, n) + struct.pack(f"<{n}I", *partition_ids)


def decode_sync_group09(payload: BytesLike) -> SyncGroup09 | None:
    """None for the empty body (not a member, 5.4)."""
    if len(payload) == 0:
        return None

    def read(r: Reader) -> SyncGroup09:
        generation, n = r.unpack(_SYNC_HEAD)
        if n * 4 > r.remaining:
            raise _malformed(f"{n} partitions in {r.remaining} bytes")
        return SyncGroup09(generation, tuple(r.unpack(struct.Struct(f"<{n}I"))))

    out: SyncGroup09 = _decode_exact(payload, "SyncConsumerGroup reply", read)
    return out


def encode_send_confirmation09(stream_id: int, topic_id: int, partition_id: int, base_offset: int) -> bytes:
    """SendMessagesResponse (raw body of op 160) with one confirmation, as the real server."""
    return _U32.pack(1) + _CONFIRMATION.pack(stream_id, topic_id, partition_id, base_offset)


def decode_send_confirmations09(payload: BytesLike) -> list[SendConfirmation09]:
    """As the SDK: an empty body or count 0 is "no offsets reported"; trailing bytes -> 3."""
    if len(payload) == 0:
        return []

    def read(r: Reader) -> list[SendConfirmation09]:
        count = r.u32()
        if count * _CONFIRMATION.size > r.remaining:
            raise _malformed(f"{count} confirmations in {r.remaining} bytes")
        return [SendConfirmation09(*r.unpack(_CONFIRMATION)) for _ in range(count)]

    out: list[SendConfirmation09] = _decode_exact(payload, "SendMessages reply", read)
    return out
