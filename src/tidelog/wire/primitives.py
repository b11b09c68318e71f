"""Shared pieces of the Iggy 0.8 classic protocol bodies (reference sections 2.1-2.6), sans-IO.

The enumerations, identifiers and consumers, bounded name fields and the permissions block,
plus the :class:`Reader` and :class:`Writer` that the request (requests.py), reply record
(records.py) and user-header (user_headers.py) codecs, and the 0.9 bodies, are written with.
The underscore helpers are shared by those sibling modules only.

Decode errors follow section 1.4: truncated payload, unknown discriminant or invalid
UTF-8 -> 3 InvalidCommand; validation failures (Name length 0, numeric identifier length
!= 4, string identifier length 0, permissions length mismatch) -> 4 InvalidFormat.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions, TopicPermissions
from tidelog.wire.codes import U32_MAX, IggyError, Status

BytesLike = bytes | bytearray | memoryview
Identifier = int | str
"""A stream/topic/group/user identifier: ``int`` = numeric (kind 1), ``str`` = name (kind 2)."""

# ---------------------------------------------------------------------------------------------
# Enumerations (section 2.6)


class ConsumerKind(IntEnum):
    CONSUMER = 1
    CONSUMER_GROUP = 2


class PollingKind(IntEnum):
    OFFSET = 1
    TIMESTAMP = 2
    FIRST = 3
    LAST = 4
    NEXT = 5


class PartitioningKind(IntEnum):
    BALANCED = 1
    PARTITION_ID = 2
    MESSAGES_KEY = 3


class Transport(IntEnum):
    TCP = 1
    QUIC = 2
    HTTP = 3
    WEBSOCKET = 4


class ClusterNodeRole(IntEnum):
    LEADER = 0
    FOLLOWER = 1


class ClusterNodeStatus(IntEnum):
    HEALTHY = 0
    STARTING = 1
    STOPPING = 2
    UNREACHABLE = 3
    MAINTENANCE = 4


class SnapshotCompression(IntEnum):
    STORED = 1
    DEFLATED = 2
    BZIP2 = 3
    ZSTD = 4
    LZMA = 5
    XZ = 6


class SnapshotType(IntEnum):
    FILESYSTEM_OVERVIEW = 1
    PROCESS_LIST = 2
    RESOURCE_USAGE = 3
    TEST = 4
    SERVER_LOGS = 5
    SERVER_CONFIG = 6
    ALL = 100


class HeaderKind(IntEnum):
    RAW = 1
    STRING = 2
    BOOL = 3
    INT8 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    INT128 = 8
    UINT8 = 9
    UINT16 = 10
    UINT32 = 11
    UINT64 = 12
    UINT128 = 13
    FLOAT32 = 14
    FLOAT64 = 15


_CONSUMER_KINDS = frozenset(int(k) for k in ConsumerKind)

# ---------------------------------------------------------------------------------------------
# Precompiled fixed parts

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U128 = struct.Struct("<QQ")
_F32 = struct.Struct("<f")
_ID_NUMERIC = struct.Struct("<BBI")
_OPT_PARTITION = struct.Struct("<BI")
_STREAM_PERM = struct.Struct("<I6B")
_TOPIC_PERM = struct.Struct("<I4B")

_U128_MASK = (1 << 64) - 1
_NAME_MAX_BYTES = 255


def _truncated() -> IggyError:
    return IggyError(Status.INVALID_COMMAND, "truncated payload")


def _check_u32(value: int, what: str) -> int:
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"{what} {value} is not a u32")
    return value


def _name_bytes(value: str, what: str = "name") -> bytes:
    raw = value.encode()
    if not 1 <= len(raw) <= _NAME_MAX_BYTES:
        raise ValueError(f"{what} must be 1..255 UTF-8 bytes, got {len(raw)}")
    return raw


def _short_bytes(value: str, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > _NAME_MAX_BYTES:
        raise ValueError(f"{what} must be at most 255 UTF-8 bytes, got {len(raw)}")
    return raw


def _utf8(raw: memoryview) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError:
        raise IggyError(Status.INVALID_COMMAND, "invalid UTF-8") from None


# ---------------------------------------------------------------------------------------------
# Identifiers and consumers (sections 2.1, 2.2)

_U32_TEXT = re.compile(r"\+?[0-9]+")


def identifier_from_user(value: int | str) -> Identifier:
    """The SDK's conversion: a ``str`` that parses as a u32 becomes a numeric identifier."""
    if isinstance(value, int):
        return _check_u32(value, "numeric identifier")
    # Mirrors Rust `str::parse::<u32>`: ASCII digits with an optional '+', nothing else.
    if _U32_TEXT.fullmatch(value) is not None:
        number = int(value)
        if number <= U32_MAX:
            return number
    _name_bytes(value, "string identifier")
    return value


def encode_identifier(value: Identifier) -> bytes:
    if isinstance(value, int):
        return _ID_NUMERIC.pack(1, 4, _check_u32(value, "numeric identifier"))
    raw = _name_bytes(value, "string identifier")
    return bytes((2, len(raw))) + raw


@dataclass(frozen=True, slots=True)
class Consumer:
    kind: int
    id: Identifier

    def encode(self) -> bytes:
        return bytes((self.kind,)) + encode_identifier(self.id)


# ---------------------------------------------------------------------------------------------
# Reader / Writer


class Reader:
    """Sequential little-endian reads over a memoryview; never copies the message bytes.

    Every read past the end raises ``IggyError(INVALID_COMMAND)``.
    """

    __slots__ = ("_end", "_pos", "_view")

    def __init__(self, data: BytesLike, start: int = 0, end: int | None = None) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._view = view
        self._end = len(view) if end is None else end
        assert 0 <= start <= self._end <= len(view)
        self._pos = start

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    @property
    def view(self) -> memoryview:
        return self._view

    def _take(self, n: int) -> int:
        p = self._pos
        q = p + n
        if q > self._end:
            raise _truncated()
        self._pos = q
        return p

    def skip(self, n: int) -> None:
        self._take(n)

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        return st.unpack_from(self._view, self._take(st.size))

    def u8(self) -> int:
        return self._view[self._take(1)]

    def u16(self) -> int:
        value: int = _U16.unpack_from(self._view, self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack_from(self._view, self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack_from(self._view, self._take(8))[0]
        return value

    def u128(self) -> int:
        lo, hi = _U128.unpack_from(self._view, self._take(16))
        return int(lo | (hi << 64))

    def f32(self) -> float:
        value: float = _F32.unpack_from(self._view, self._take(4))[0]
        return value

    def bool_(self) -> bool:
        return self._view[self._take(1)] != 0

    def bytes_(self, n: int) -> memoryview:
        p = self._take(n)
        return self._view[p : p + n]

    def bytes32(self) -> memoryview:
        """u32 length + raw bytes."""
        return self.bytes_(self.u32())

    def name(self) -> str:
        """u8 length (1..255) + UTF-8; length 0 -> INVALID_FORMAT."""
        n = self.u8()
        if n == 0:
            raise IggyError(Status.INVALID_FORMAT, "empty name")
        return _utf8(self.bytes_(n))

    def short_str(self) -> str:
        """u8 length + UTF-8 with length 0 allowed (passwords: the server checks 3..100)."""
        return _utf8(self.bytes_(self.u8()))

    def str32(self) -> str:
        return _utf8(self.bytes32())

    def identifier(self) -> Identifier:
        kind = self.u8()
        length = self.u8()
        if kind == 1:
            if length != 4:
                raise IggyError(Status.INVALID_FORMAT, f"numeric identifier length {length}")
            return self.u32()
        if kind == 2:
            if length == 0:
                raise IggyError(Status.INVALID_FORMAT, "empty string identifier")
            return _utf8(self.bytes_(length))
        raise IggyError(Status.INVALID_COMMAND, f"identifier kind {kind}")

    def consumer(self) -> Consumer:
        kind = self.u8()
        if kind not in _CONSUMER_KINDS:
            raise IggyError(Status.INVALID_COMMAND, f"consumer kind {kind}")
        return Consumer(kind, self.identifier())

    def opt_partition(self) -> int | None:
        flag, value = self.unpack(_OPT_PARTITION)
        return int(value) if flag == 1 else None

    def permissions(self) -> Permissions:
        """The bare permissions block of section 2.5."""
        g = GlobalPermissions(*map(bool, self.bytes_(10)))
        streams: dict[int, StreamPermissions] = {}
        if self.u8() != 0:
            while True:
                stream_id, ms, rs, mt, rt, pm, sm = self.unpack(_STREAM_PERM)
                topics: dict[int, TopicPermissions] = {}
                if self.u8() != 0:
                    while True:
                        topic_id, m, r, p, s = self.unpack(_TOPIC_PERM)
                        topics[topic_id] = TopicPermissions(m != 0, r != 0, p != 0, s != 0)
                        if self.u8() == 0:
                            break
                streams[stream_id] = StreamPermissions(
                    ms != 0, rs != 0, mt != 0, rt != 0, pm != 0, sm != 0, topics
                )
                if self.u8() == 0:
                    break
        return Permissions(g, streams)

    def sized_permissions(self) -> Permissions:
        perm_len = self.u32()
        start = self._pos
        p = self.permissions()
        if self._pos - start != perm_len:
            raise IggyError(
                Status.INVALID_FORMAT, f"permissions length {perm_len} != {self._pos - start} decoded"
            )
        return p

    def opt_permissions(self) -> Permissions | None:
        """Request wrapper: ``has u8`` (1 = present), then ``perm_len u32`` + block."""
        if self.u8() != 1:
            return None
        return self.sized_permissions()


class Writer:
    """Little-endian appends to one bytearray."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def pack(self, st: struct.Struct, *values: Any) -> None:
        self._buf += st.pack(*values)

    def u8(self, value: int) -> None:
        self._buf.append(value)

    def u16(self, value: int) -> None:
        self._buf += _U16.pack(value)

    def u32(self, value: int) -> None:
        self._buf += _U32.pack(value)

    def u64(self, value: int) -> None:
        self._buf += _U64.pack(value)

    def u128(self, value: int) -> None:
        self._buf += _U128.pack(value & _U128_MASK, value >> 64)

    def f32(self, value: float) -> None:
        self._buf += _F32.pack(value)

    def bool_(self, value: bool) -> None:
        self._buf.append(1 if value else 0)

    def bytes_(self, data: BytesLike) -> None:
        self._buf += data

    def bytes32(self, data: BytesLike) -> None:
        self._buf += _U32.pack(len(data))
        self._buf += data

    def name(self, value: str) -> None:
        raw = _name_bytes(value)
        self._buf.append(len(raw))
        self._buf += raw

    def short_str(self, value: str) -> None:
        raw = _short_bytes(value, "string")
        self._buf.append(len(raw))
        self._buf += raw

    def str32(self, value: str) -> None:
        self.bytes32(value.encode())

    def identifier(self, value: Identifier) -> None:
        self._buf += encode_identifier(value)

    def consumer(self, value: Consumer) -> None:
        self._buf.append(value.kind)
        self._buf += encode_identifier(value.id)

    def opt_partition(self, partition_id: int | None) -> None:
        if partition_id is None:
            self._buf += _OPT_PARTITION.pack(0, 0)
        else:
            self._buf += _OPT_PARTITION.pack(1, partition_id)

    def permissions(self, p: Permissions) -> None:
        self._buf += encode_permissions(p)

    def opt_permissions(self, p: Permissions | None) -> None:
        if p is None:
            self._buf.append(0)
            return
        block = encode_permissions(p)
        self._buf.append(1)
        self._buf += _U32.pack(len(block))
        self._buf += block


# ---------------------------------------------------------------------------------------------
# Permissions (section 2.5)


def encode_permissions(p: Permissions) -> bytes:
    """The permissions block; entries sorted by id so equal values encode equally."""
    g = p.global_
    out = bytearray(
        (
            g.manage_servers,
            g.read_servers,
            g.manage_users,
            g.read_users,
            g.manage_streams,
            g.read_streams,
            g.manage_topics,
            g.read_topics,
            g.poll_messages,
            g.send_messages,
        )
    )
    stream_ids = sorted(p.streams)
    out.append(1 if stream_ids else 0)
    topics_total = 0
    for i, stream_id in enumerate(stream_ids):
        s = p.streams[stream_id]
        out += _STREAM_PERM.pack(
            stream_id,
            s.manage_stream,
            s.read_stream,
            s.manage_topics,
            s.read_topics,
            s.poll_messages,
            s.send_messages,
        )
        topic_ids = sorted(s.topics)
        out.append(1 if topic_ids else 0)
        for j, topic_id in enumerate(topic_ids):
            t = s.topics[topic_id]
            out += _TOPIC_PERM.pack(topic_id, t.manage_topic, t.read_topic, t.poll_messages, t.send_messages)
            out.append(1 if j + 1 < len(topic_ids) else 0)
        topics_total += len(topic_ids)
        out.append(1 if i + 1 < len(stream_ids) else 0)
    assert len(out) == 11 + 12 * len(stream_ids) + 9 * topics_total
    return bytes(out)


def decode_permissions(data: BytesLike) -> Permissions:
    return Reader(data).permissions()


def encode_optional_permissions(p: Permissions | None) -> bytes:
    """The request wrapper ``has u8 [perm_len u32, block]``."""
    w = Writer()
    w.opt_permissions(p)
    return w.getvalue()


def decode_optional_permissions(data: BytesLike) -> Permissions | None:
    return Reader(data).opt_permissions()
