"""Typed payloads of the Iggy 0.8 classic protocol (reference sections 2, 3, 4.1, 4.2), sans-IO.

Requests: one frozen dataclass per command with ``decode(payload)`` (server side) and
``encode()`` (client side, byte for byte what the SDK sends). SendMessages is only
located, never copied: :class:`SendMessagesHeader` gives the offsets of its index table
and message area inside the payload.

Replies: one frozen dataclass per record of section 2.8 with ``encode()`` (server side)
and ``decode(reader)`` (client side), plus the poll reply and user-header helpers.

Decode errors follow section 1.4: truncated payload, unknown discriminant or invalid
UTF-8 -> 3 InvalidCommand; validation failures (Name length 0, numeric identifier length
!= 4, string identifier length 0, permissions length mismatch) -> 4 InvalidFormat.
Trailing bytes after a decodable request payload are ignored, as the reference does.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Protocol, Self, TypeVar

from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions, TopicPermissions
from tidelog.wire.codes import (
    INDEX_ENTRY_SIZE,
    MESSAGE_HEADER_SIZE,
    POLL_REPLY_HEADER_SIZE,
    U32_MAX,
    U64_MAX,
    Command,
    CompressionAlgorithm,
    IggyError,
    Status,
    UserStatus,
)

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
_POLLING_KINDS = frozenset(int(k) for k in PollingKind)
_COMPRESSIONS = frozenset(int(k) for k in CompressionAlgorithm)
_USER_STATUSES = frozenset(int(k) for k in UserStatus)
_TRANSPORTS = frozenset(int(k) for k in Transport)
_NODE_ROLES = frozenset(int(k) for k in ClusterNodeRole)
_NODE_STATUSES = frozenset(int(k) for k in ClusterNodeStatus)
_SNAPSHOT_COMPRESSIONS = frozenset(int(k) for k in SnapshotCompression)
_SNAPSHOT_TYPES = frozenset(int(k) for k in SnapshotType)

# The login version the 0.8.0 Python SDK sends: its `iggy_common` crate version.
SDK_VERSION = "0.10.0"

# ---------------------------------------------------------------------------------------------
# Precompiled fixed parts

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U128 = struct.Struct("<QQ")
_F32 = struct.Struct("<f")
_ID_NUMERIC = struct.Struct("<BBI")
_OPT_PARTITION = struct.Struct("<BI")
_STREAM = struct.Struct("<IQIQQ")
_TOPIC = struct.Struct("<IQIQBQBQQ")
_PARTITION = struct.Struct("<IQIQQQ")
_GROUP = struct.Struct("<III")
_GROUP_MEMBER = struct.Struct("<II")
_CONSUMER_OFFSET = struct.Struct("<IQQ")
_USER = struct.Struct("<IQB")
_CLIENT = struct.Struct("<IIB")
_CLIENT_GROUP = struct.Struct("<III")
_NODE_PORTS = struct.Struct("<HHHHBB")
_STATS = struct.Struct("<IffQQQQQQQQIIIIQII")
_CACHE_METRIC = struct.Struct("<IIIQQf")
_STATS_TAIL = struct.Struct("<IQQ")
_POLL_HEADER = struct.Struct("<IQI")
_CREATE_TOPIC_FIXED = struct.Struct("<IBQQB")
_UPDATE_TOPIC_FIXED = struct.Struct("<BQQB")
_POLL_FIXED = struct.Struct("<BIBQIB")
_OFFSET_FIXED = struct.Struct("<BIQ")
_STREAM_PERM = struct.Struct("<I6B")
_TOPIC_PERM = struct.Struct("<I4B")
# checksum, id (lo, hi), offset, timestamp, origin_timestamp, user_headers_length,
# payload_length, reserved.
_MESSAGE_HEADER = struct.Struct("<QQQQQQIIQ")
_INDEX_ENTRY = struct.Struct("<IIQ")

assert _STREAM.size == 32 and _TOPIC.size == 50 and _PARTITION.size == 40
assert _CONSUMER_OFFSET.size == 20 and _USER.size == 13 and _CLIENT.size == 9
assert _STATS.size == 108 and _CACHE_METRIC.size == 32 and _POLL_HEADER.size == POLL_REPLY_HEADER_SIZE
assert _CREATE_TOPIC_FIXED.size == 22 and _POLL_FIXED.size == 19
assert _MESSAGE_HEADER.size == MESSAGE_HEADER_SIZE and _INDEX_ENTRY.size == INDEX_ENTRY_SIZE

_U128_MASK = (1 << 64) - 1
_NAME_MAX_BYTES = 255
_EMPTY = memoryview(b"")


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


# ---------------------------------------------------------------------------------------------
# Requests (section 3)


@dataclass(frozen=True, slots=True)
class _NoArgs:
    """Requests with an empty payload. Subclasses only add their CODE."""

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        return cls()

    def encode(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Ping(_NoArgs):
    CODE: ClassVar[Command] = Command.PING


@dataclass(frozen=True, slots=True)
class GetStats(_NoArgs):
    CODE: ClassVar[Command] = Command.GET_STATS


@dataclass(frozen=True, slots=True)
class GetSnapshot:
    CODE: ClassVar[Command] = Command.GET_SNAPSHOT
    compression: int
    snapshot_types: tuple[int, ...]

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        compression = r.u8()
        if compression not in _SNAPSHOT_COMPRESSIONS:
            raise IggyError(Status.INVALID_COMMAND, f"snapshot compression {compression}")
        types = tuple(r.bytes_(r.u8()))
        for t in types:
            if t not in _SNAPSHOT_TYPES:
                raise IggyError(Status.INVALID_COMMAND, f"snapshot type {t}")
        if SnapshotType.ALL in types and len(types) > 1:
            raise IggyError(Status.INVALID_COMMAND, "snapshot type 'all' combined with others")
        return cls(compression, types)

    def encode(self) -> bytes:
        return bytes((self.compression, len(self.snapshot_types), *self.snapshot_types))


@dataclass(frozen=True, slots=True)
class GetClusterMetadata(_NoArgs):
    CODE: ClassVar[Command] = Command.GET_CLUSTER_METADATA


@dataclass(frozen=True, slots=True)
class GetMe(_NoArgs):
    CODE: ClassVar[Command] = Command.GET_ME


@dataclass(frozen=True, slots=True)
class GetClient:
    CODE: ClassVar[Command] = Command.GET_CLIENT
    client_id: int

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        return cls(Reader(payload).u32())

    def encode(self) -> bytes:
        return _U32.pack(self.client_id)


@dataclass(frozen=True, slots=True)
class GetClients(_NoArgs):
    CODE: ClassVar[Command] = Command.GET_CLIENTS


@dataclass(frozen=True, slots=True)
class _UserRef:
    """Requests naming one user. Subclasses only add their CODE."""

    user_id: Identifier

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        return cls(Reader(payload).identifier())

    def encode(self) -> bytes:
        return encode_identifier(self.user_id)


@dataclass(frozen=True, slots=True)
class GetUser(_UserRef):
    CODE: ClassVar[Command] = Command.GET_USER


@dataclass(frozen=True, slots=True)
class GetUsers(_NoArgs):
    CODE: ClassVar[Command] = Command.GET_USERS


def _user_status(value: int) -> int:
    if value not in _USER_STATUSES:
        raise IggyError(Status.INVALID_COMMAND, f"user status {value}")
    return value


@dataclass(frozen=True, slots=True)
class CreateUser:
    CODE: ClassVar[Command] = Command.CREATE_USER
    username: str
    password: str
    status: int = UserStatus.ACTIVE
    permissions: Permissions | None = None

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        username = r.name()
        password = r.short_str()
        status = _user_status(r.u8())
        return cls(username, password, status, r.opt_permissions())

    def encode(self) -> bytes:
        w = Writer()
        w.name(self.username)
        w.short_str(self.password)
        w.u8(self.status)
        w.opt_permissions(self.permissions)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class DeleteUser(_UserRef):
    CODE: ClassVar[Command] = Command.DELETE_USER


@dataclass(frozen=True, slots=True)
class UpdateUser:
    CODE: ClassVar[Command] = Command.UPDATE_USER
    user_id: Identifier
    username: str | None = None
    status: int | None = None

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        user_id = r.identifier()
        username = r.name() if r.u8() == 1 else None
        status = _user_status(r.u8()) if r.u8() == 1 else None
        return cls(user_id, username, status)

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.user_id)
        if self.username is None:
            w.u8(0)
        else:
            w.u8(1)
            w.name(self.username)
        if self.status is None:
            w.u8(0)
        else:
            w.u8(1)
            w.u8(self.status)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class UpdatePermissions:
    CODE: ClassVar[Command] = Command.UPDATE_PERMISSIONS
    user_id: Identifier
    permissions: Permissions | None = None

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        user_id = r.identifier()
        return cls(user_id, r.opt_permissions())

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.user_id)
        w.opt_permissions(self.permissions)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class ChangePassword:
    CODE: ClassVar[Command] = Command.CHANGE_PASSWORD
    user_id: Identifier
    current_password: str
    new_password: str

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        user_id = r.identifier()
        current = r.short_str()
        return cls(user_id, current, r.short_str())

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.user_id)
        w.short_str(self.current_password)
        w.short_str(self.new_password)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class LoginUser:
    CODE: ClassVar[Command] = Command.LOGIN_USER
    username: str
    password: str
    version: str = SDK_VERSION
    context: str = ""

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        username = r.name()
        password = r.short_str()
        version = r.str32()
        return cls(username, password, version, r.str32())

    def encode(self) -> bytes:
        w = Writer()
        w.name(self.username)
        w.short_str(self.password)
        w.str32(self.version)
        w.str32(self.context)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class LogoutUser(_NoArgs):
    CODE: ClassVar[Command] = Command.LOGOUT_USER


@dataclass(frozen=True, slots=True)
class GetPersonalAccessTokens(_NoArgs):
    CODE: ClassVar[Command] = Command.GET_PERSONAL_ACCESS_TOKENS


@dataclass(frozen=True, slots=True)
class CreatePersonalAccessToken:
    CODE: ClassVar[Command] = Command.CREATE_PERSONAL_ACCESS_TOKEN
    name: str
    expiry: int = 0
    """IggyExpiry (section 2.7): 0 or u64::MAX = never, else microseconds from now."""

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        name = r.name()
        return cls(name, r.u64())

    def encode(self) -> bytes:
        w = Writer()
        w.name(self.name)
        w.u64(self.expiry)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class _NameRef:
    """Requests carrying one Name. Subclasses only add their CODE."""

    name: str

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        return cls(Reader(payload).name())

    def encode(self) -> bytes:
        w = Writer()
        w.name(self.name)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class DeletePersonalAccessToken(_NameRef):
    CODE: ClassVar[Command] = Command.DELETE_PERSONAL_ACCESS_TOKEN


@dataclass(frozen=True, slots=True)
class LoginWithPersonalAccessToken:
    CODE: ClassVar[Command] = Command.LOGIN_WITH_PERSONAL_ACCESS_TOKEN
    token: str

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        return cls(Reader(payload).name())

    def encode(self) -> bytes:
        w = Writer()
        w.name(self.token)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class PollMessages:
    CODE: ClassVar[Command] = Command.POLL_MESSAGES
    consumer: Consumer
    stream_id: Identifier
    topic_id: Identifier
    partition_id: int | None
    strategy_kind: int
    strategy_value: int
    count: int
    auto_commit: bool

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        consumer = r.consumer()
        stream_id = r.identifier()
        topic_id = r.identifier()
        flag, partition, kind, value, count, auto_commit = r.unpack(_POLL_FIXED)
        if kind not in _POLLING_KINDS:
            raise IggyError(Status.INVALID_COMMAND, f"polling kind {kind}")
        return cls(
            consumer,
            stream_id,
            topic_id,
            partition if flag == 1 else None,
            kind,
            value,
            count,
            auto_commit != 0,
        )

    def encode(self) -> bytes:
        w = Writer()
        w.consumer(self.consumer)
        w.identifier(self.stream_id)
        w.identifier(self.topic_id)
        p = self.partition_id
        w.pack(
            _POLL_FIXED,
            0 if p is None else 1,
            0 if p is None else p,
            self.strategy_kind,
            self.strategy_value,
            self.count,
            1 if self.auto_commit else 0,
        )
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class FlushUnsavedBuffer:
    CODE: ClassVar[Command] = Command.FLUSH_UNSAVED_BUFFER
    stream_id: Identifier
    topic_id: Identifier
    partition_id: int
    fsync: bool

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        topic_id = r.identifier()
        partition_id = r.u32()
        return cls(stream_id, topic_id, partition_id, r.bool_())

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.stream_id)
        w.identifier(self.topic_id)
        w.u32(self.partition_id)
        w.bool_(self.fsync)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class _OffsetRef:
    """Consumer-offset requests without an offset (get, delete). Subclasses only add their CODE."""

    consumer: Consumer
    stream_id: Identifier
    topic_id: Identifier
    partition_id: int | None

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        consumer = r.consumer()
        stream_id = r.identifier()
        topic_id = r.identifier()
        return cls(consumer, stream_id, topic_id, r.opt_partition())

    def encode(self) -> bytes:
        w = Writer()
        w.consumer(self.consumer)
        w.identifier(self.stream_id)
        w.identifier(self.topic_id)
        w.opt_partition(self.partition_id)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class GetConsumerOffset(_OffsetRef):
    CODE: ClassVar[Command] = Command.GET_CONSUMER_OFFSET


@dataclass(frozen=True, slots=True)
class StoreConsumerOffset:
    CODE: ClassVar[Command] = Command.STORE_CONSUMER_OFFSET
    consumer: Consumer
    stream_id: Identifier
    topic_id: Identifier
    partition_id: int | None
    offset: int

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        consumer = r.consumer()
        stream_id = r.identifier()
        topic_id = r.identifier()
        flag, partition, offset = r.unpack(_OFFSET_FIXED)
        return cls(consumer, stream_id, topic_id, partition if flag == 1 else None, offset)

    def encode(self) -> bytes:
        w = Writer()
        w.consumer(self.consumer)
        w.identifier(self.stream_id)
        w.identifier(self.topic_id)
        w.opt_partition(self.partition_id)
        w.u64(self.offset)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class DeleteConsumerOffset(_OffsetRef):
    CODE: ClassVar[Command] = Command.DELETE_CONSUMER_OFFSET


@dataclass(frozen=True, slots=True)
class _StreamRef:
    """Requests naming one stream. Subclasses only add their CODE."""

    stream_id: Identifier

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        return cls(Reader(payload).identifier())

    def encode(self) -> bytes:
        return encode_identifier(self.stream_id)


@dataclass(frozen=True, slots=True)
class GetStream(_StreamRef):
    CODE: ClassVar[Command] = Command.GET_STREAM


@dataclass(frozen=True, slots=True)
class GetStreams(_NoArgs):
    CODE: ClassVar[Command] = Command.GET_STREAMS


@dataclass(frozen=True, slots=True)
class CreateStream(_NameRef):
    CODE: ClassVar[Command] = Command.CREATE_STREAM


@dataclass(frozen=True, slots=True)
class DeleteStream(_StreamRef):
    CODE: ClassVar[Command] = Command.DELETE_STREAM


@dataclass(frozen=True, slots=True)
class UpdateStream:
    CODE: ClassVar[Command] = Command.UPDATE_STREAM
    stream_id: Identifier
    name: str

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        return cls(stream_id, r.name())

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.stream_id)
        w.name(self.name)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class PurgeStream(_StreamRef):
    CODE: ClassVar[Command] = Command.PURGE_STREAM


def _compression(value: int) -> int:
    if value not in _COMPRESSIONS:
        raise IggyError(Status.INVALID_COMMAND, f"compression algorithm {value}")
    return value


@dataclass(frozen=True, slots=True)
class _TopicRef:
    """Requests naming one topic. Subclasses only add their CODE."""

    stream_id: Identifier
    topic_id: Identifier

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        return cls(stream_id, r.identifier())

    def encode(self) -> bytes:
        return encode_identifier(self.stream_id) + encode_identifier(self.topic_id)


@dataclass(frozen=True, slots=True)
class GetTopic(_TopicRef):
    CODE: ClassVar[Command] = Command.GET_TOPIC


@dataclass(frozen=True, slots=True)
class GetTopics(_StreamRef):
    CODE: ClassVar[Command] = Command.GET_TOPICS


@dataclass(frozen=True, slots=True)
class CreateTopic:
    CODE: ClassVar[Command] = Command.CREATE_TOPIC
    stream_id: Identifier
    partitions_count: int
    compression_algorithm: int
    message_expiry: int
    """IggyExpiry (section 2.7): 0 = server default, u64::MAX = never, else microseconds."""
    max_topic_size: int
    """MaxTopicSize (section 2.7): 0 = server default, u64::MAX = unlimited, else bytes."""
    replication_factor: int
    name: str

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        partitions_count, compression, expiry, max_size, replication = r.unpack(_CREATE_TOPIC_FIXED)
        return cls(
            stream_id, partitions_count, _compression(compression), expiry, max_size, replication, r.name()
        )

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.stream_id)
        w.pack(
            _CREATE_TOPIC_FIXED,
            self.partitions_count,
            self.compression_algorithm,
            self.message_expiry,
            self.max_topic_size,
            self.replication_factor,
        )
        w.name(self.name)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class DeleteTopic(_TopicRef):
    CODE: ClassVar[Command] = Command.DELETE_TOPIC


@dataclass(frozen=True, slots=True)
class UpdateTopic:
    CODE: ClassVar[Command] = Command.UPDATE_TOPIC
    stream_id: Identifier
    topic_id: Identifier
    compression_algorithm: int
    message_expiry: int
    max_topic_size: int
    replication_factor: int
    name: str

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        topic_id = r.identifier()
        compression, expiry, max_size, replication = r.unpack(_UPDATE_TOPIC_FIXED)
        return cls(stream_id, topic_id, _compression(compression), expiry, max_size, replication, r.name())

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.stream_id)
        w.identifier(self.topic_id)
        w.pack(
            _UPDATE_TOPIC_FIXED,
            self.compression_algorithm,
            self.message_expiry,
            self.max_topic_size,
            self.replication_factor,
        )
        w.name(self.name)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class PurgeTopic(_TopicRef):
    CODE: ClassVar[Command] = Command.PURGE_TOPIC


@dataclass(frozen=True, slots=True)
class _PartitionsChange:
    """Create or delete partitions: a topic and a count. Subclasses only add their CODE."""

    stream_id: Identifier
    topic_id: Identifier
    partitions_count: int

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        topic_id = r.identifier()
        return cls(stream_id, topic_id, r.u32())

    def encode(self) -> bytes:
        return (
            encode_identifier(self.stream_id)
            + encode_identifier(self.topic_id)
            + _U32.pack(self.partitions_count)
        )


@dataclass(frozen=True, slots=True)
class CreatePartitions(_PartitionsChange):
    CODE: ClassVar[Command] = Command.CREATE_PARTITIONS


@dataclass(frozen=True, slots=True)
class DeletePartitions(_PartitionsChange):
    CODE: ClassVar[Command] = Command.DELETE_PARTITIONS


@dataclass(frozen=True, slots=True)
class DeleteSegments:
    CODE: ClassVar[Command] = Command.DELETE_SEGMENTS
    stream_id: Identifier
    topic_id: Identifier
    partition_id: int
    segments_count: int

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        topic_id = r.identifier()
        partition_id = r.u32()
        return cls(stream_id, topic_id, partition_id, r.u32())

    def encode(self) -> bytes:
        return (
            encode_identifier(self.stream_id)
            + encode_identifier(self.topic_id)
            + _U32.pack(self.partition_id)
            + _U32.pack(self.segments_count)
        )


@dataclass(frozen=True, slots=True)
class _GroupRef:
    """Requests naming one consumer group. Subclasses only add their CODE."""

    stream_id: Identifier
    topic_id: Identifier
    group_id: Identifier

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        topic_id = r.identifier()
        return cls(stream_id, topic_id, r.identifier())

    def encode(self) -> bytes:
        return (
            encode_identifier(self.stream_id)
            + encode_identifier(self.topic_id)
            + encode_identifier(self.group_id)
        )


@dataclass(frozen=True, slots=True)
class GetConsumerGroup(_GroupRef):
    CODE: ClassVar[Command] = Command.GET_CONSUMER_GROUP


@dataclass(frozen=True, slots=True)
class GetConsumerGroups(_TopicRef):
    CODE: ClassVar[Command] = Command.GET_CONSUMER_GROUPS


@dataclass(frozen=True, slots=True)
class CreateConsumerGroup:
    CODE: ClassVar[Command] = Command.CREATE_CONSUMER_GROUP
    stream_id: Identifier
    topic_id: Identifier
    name: str

    @classmethod
    def decode(cls, payload: BytesLike) -> Self:
        r = Reader(payload)
        stream_id = r.identifier()
        topic_id = r.identifier()
        return cls(stream_id, topic_id, r.name())

    def encode(self) -> bytes:
        w = Writer()
        w.identifier(self.stream_id)
        w.identifier(self.topic_id)
        w.name(self.name)
        return w.getvalue()


@dataclass(frozen=True, slots=True)
class DeleteConsumerGroup(_GroupRef):
    CODE: ClassVar[Command] = Command.DELETE_CONSUMER_GROUP


@dataclass(frozen=True, slots=True)
class JoinConsumerGroup(_GroupRef):
    CODE: ClassVar[Command] = Command.JOIN_CONSUMER_GROUP


@dataclass(frozen=True, slots=True)
class LeaveConsumerGroup(_GroupRef):
    CODE: ClassVar[Command] = Command.LEAVE_CONSUMER_GROUP


# ---------------------------------------------------------------------------------------------
# SendMessages (section 3.9)


@dataclass(frozen=True, slots=True)
class Partitioning:
    kind: int
    value: bytes = b""

    @classmethod
    def balanced(cls) -> Partitioning:
        return cls(PartitioningKind.BALANCED, b"")

    @classmethod
    def partition_id(cls, partition_id: int) -> Partitioning:
        return cls(PartitioningKind.PARTITION_ID, _U32.pack(_check_u32(partition_id, "partition id")))

    @classmethod
    def messages_key(cls, key: bytes) -> Partitioning:
        if len(key) > _NAME_MAX_BYTES:
            raise ValueError(f"messages key must be at most 255 bytes, got {len(key)}")
        return cls(PartitioningKind.MESSAGES_KEY, bytes(key))

    def partition(self) -> int:
        """The target partition of a PartitionId partitioning."""
        assert self.kind == PartitioningKind.PARTITION_ID and len(self.value) == 4
        value: int = _U32.unpack(self.value)[0]
        return value

    def encode(self) -> bytes:
        assert len(self.value) <= _NAME_MAX_BYTES
        return bytes((self.kind, len(self.value))) + self.value

    @classmethod
    def decode(cls, r: Reader) -> Partitioning:
        """Every failure (truncation, kind, length) is INVALID_COMMAND, as in section 2.3/3.9."""
        kind = r.u8()
        length = r.u8()
        if kind == PartitioningKind.BALANCED:
            ok = length == 0
        elif kind == PartitioningKind.PARTITION_ID:
            ok = length == 4
        elif kind == PartitioningKind.MESSAGES_KEY:
            ok = True  # the server accepts an empty key even though the SDK never sends one
        else:
            raise IggyError(Status.INVALID_COMMAND, f"partitioning kind {kind}")
        if not ok:
            raise IggyError(Status.INVALID_COMMAND, f"partitioning kind {kind} with length {length}")
        return cls(kind, bytes(r.bytes_(length)))


@dataclass(frozen=True, slots=True)
class SendMessagesHeader:
    """The metadata of a SendMessages payload and where its two tables start.

    ``payload[index_offset:messages_offset]`` is the index table (16 bytes per message);
    ``payload[messages_offset:]`` is the message area. Nothing is copied.
    """

    CODE: ClassVar[Command] = Command.SEND_MESSAGES
    stream_id: Identifier
    topic_id: Identifier
    partitioning: Partitioning
    messages_count: int
    index_offset: int
    messages_offset: int
    payload_length: int

    @property
    def messages_size_bytes(self) -> int:
        return self.payload_length - self.messages_offset

    @classmethod
    def decode(cls, payload: BytesLike, payload_length: int | None = None) -> Self:
        """Parse the metadata; ``payload_length`` lets a staged reader pass only the prefix.

        When given, ``payload`` may hold just ``4 + metadata_length`` bytes and the bounds
        checks use ``payload_length`` (the whole declared payload) instead of ``len(payload)``.
        """
        r = Reader(payload)
        total = len(r.view) if payload_length is None else payload_length
        metadata_length = r.u32()
        index_offset = 4 + metadata_length
        if index_offset > total or index_offset > len(r.view):
            raise IggyError(Status.INVALID_COMMAND, f"metadata length {metadata_length} over the payload")
        r = Reader(r.view, 4, index_offset)
        try:
            stream_id = r.identifier()
            topic_id = r.identifier()
        except IggyError as exc:
            raise IggyError(Status.INVALID_IDENTIFIER, exc.detail) from None
        partitioning = Partitioning.decode(r)
        messages_count = r.u32()
        if r.remaining != 0:
            raise IggyError(
                Status.INVALID_COMMAND, f"metadata length {metadata_length} != {r.pos - 4} parsed"
            )
        if messages_count == 0:
            raise IggyError(Status.INVALID_MESSAGES_COUNT, "no messages")
        messages_offset = index_offset + INDEX_ENTRY_SIZE * messages_count
        if messages_offset > total:
            raise IggyError(
                Status.INVALID_COMMAND, f"index table of {messages_count} entries over the payload"
            )
        return cls(stream_id, topic_id, partitioning, messages_count, index_offset, messages_offset, total)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    payload: bytes
    id: int = 0
    user_headers: bytes = b""
    origin_timestamp_us: int = 0


def encode_send_messages(
    stream_id: Identifier,
    topic_id: Identifier,
    partitioning: Partitioning,
    messages: Sequence[OutgoingMessage],
) -> bytes:
    """The whole SendMessages payload, built in one buffer, as the SDK sends it.

    Index entries carry the cumulative end position of each message; checksum, offset and
    timestamp are left 0 for the server to stamp.
    """
    metadata = encode_identifier(stream_id) + encode_identifier(topic_id) + partitioning.encode()
    metadata_length = len(metadata) + 4
    count = len(messages)
    index_offset = 4 + metadata_length
    messages_offset = index_offset + INDEX_ENTRY_SIZE * count
    area_bytes = sum(MESSAGE_HEADER_SIZE + len(m.payload) + len(m.user_headers) for m in messages)
    buf = bytearray(messages_offset + area_bytes)
    _U32.pack_into(buf, 0, metadata_length)
    buf[4 : 4 + len(metadata)] = metadata
    _U32.pack_into(buf, 4 + len(metadata), count)
    position = 0
    at = messages_offset
    for i, m in enumerate(messages):
        payload_length = len(m.payload)
        headers_length = len(m.user_headers)
        _MESSAGE_HEADER.pack_into(
            buf,
            at,
            0,
            m.id & _U128_MASK,
            m.id >> 64,
            0,
            0,
            m.origin_timestamp_us,
            headers_length,
            payload_length,
            0,
        )
        body = at + MESSAGE_HEADER_SIZE
        buf[body : body + payload_length] = m.payload
        buf[body + payload_length : body + payload_length + headers_length] = m.user_headers
        size = MESSAGE_HEADER_SIZE + payload_length + headers_length
        position += size
        at += size
        _INDEX_ENTRY.pack_into(buf, index_offset + INDEX_ENTRY_SIZE * i, 0, position, 0)
    assert at == len(buf) and position == area_bytes
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# Request table


REQUEST_TYPES: dict[int, type[Any]] = {
    int(cls.CODE): cls
    for cls in (
        Ping,
        GetStats,
        GetSnapshot,
        GetClusterMetadata,
        GetMe,
        GetClient,
        GetClients,
        GetUser,
        GetUsers,
        CreateUser,
        DeleteUser,
        UpdateUser,
        UpdatePermissions,
        ChangePassword,
        LoginUser,
        LogoutUser,
        GetPersonalAccessTokens,
        CreatePersonalAccessToken,
        DeletePersonalAccessToken,
        LoginWithPersonalAccessToken,
        PollMessages,
        SendMessagesHeader,
        FlushUnsavedBuffer,
        GetConsumerOffset,
        StoreConsumerOffset,
        DeleteConsumerOffset,
        GetStream,
        GetStreams,
        CreateStream,
        DeleteStream,
        UpdateStream,
        PurgeStream,
        GetTopic,
        GetTopics,
        CreateTopic,
        DeleteTopic,
        UpdateTopic,
        PurgeTopic,
        CreatePartitions,
        DeletePartitions,
        DeleteSegments,
        GetConsumerGroup,
        GetConsumerGroups,
        CreateConsumerGroup,
        DeleteConsumerGroup,
        JoinConsumerGroup,
        LeaveConsumerGroup,
    )
}
assert set(REQUEST_TYPES) == {int(c) for c in Command}, "every command code needs a request type"


def decode_request(code: int, payload: BytesLike) -> object:
    """Decode a request payload; SendMessages yields a :class:`SendMessagesHeader`."""
    cls = REQUEST_TYPES.get(code)
    if cls is None:
        raise IggyError(Status.INVALID_COMMAND, f"unknown command code {code}")
    return cls.decode(payload)


# ---------------------------------------------------------------------------------------------
# Response records (section 2.8)


class _Record(Protocol):
    @classmethod
    def decode(cls, reader: Reader) -> Self: ...


R = TypeVar("R", bound=_Record)


def decode_list(cls: type[R], payload: BytesLike) -> list[R]:
    """Records concatenated without a count, read until the payload ends."""
    r = Reader(payload)
    out: list[R] = []
    while r.remaining:
        out.append(cls.decode(r))
    return out


def decode_record(cls: type[R], payload: BytesLike) -> R:
    """One record filling a reply payload (trailing bytes are ignored)."""
    return cls.decode(Reader(payload))


def encode_list(records: Sequence[Any]) -> bytes:
    return b"".join(record.encode() for record in records)


def _encode_name(value: str) -> bytes:
    raw = _name_bytes(value)
    return bytes((len(raw),)) + raw


@dataclass(frozen=True, slots=True)
class StreamInfo:
    id: int
    created_at_us: int
    topics_count: int
    size_bytes: int
    messages_count: int
    name: str

    def encode(self) -> bytes:
        return _STREAM.pack(
            self.id, self.created_at_us, self.topics_count, self.size_bytes, self.messages_count
        ) + _encode_name(self.name)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        stream_id, created_at, topics_count, size, messages = reader.unpack(_STREAM)
        return cls(stream_id, created_at, topics_count, size, messages, reader.name())


@dataclass(frozen=True, slots=True)
class TopicInfo:
    id: int
    created_at_us: int
    partitions_count: int
    message_expiry: int
    compression_algorithm: int
    max_topic_size: int
    replication_factor: int
    size_bytes: int
    messages_count: int
    name: str

    def encode(self) -> bytes:
        return _TOPIC.pack(
            self.id,
            self.created_at_us,
            self.partitions_count,
            self.message_expiry,
            self.compression_algorithm,
            self.max_topic_size,
            self.replication_factor,
            self.size_bytes,
            self.messages_count,
        ) + _encode_name(self.name)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        return cls(*(*reader.unpack(_TOPIC), reader.name()))


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    id: int
    created_at_us: int
    segments_count: int
    current_offset: int
    size_bytes: int
    messages_count: int

    def encode(self) -> bytes:
        return _PARTITION.pack(
            self.id,
            self.created_at_us,
            self.segments_count,
            self.current_offset,
            self.size_bytes,
            self.messages_count,
        )

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        return cls(*reader.unpack(_PARTITION))


def _read_all(reader: Reader, decode: Callable[[Reader], R]) -> list[R]:
    out: list[R] = []
    while reader.remaining:
        out.append(decode(reader))
    return out


@dataclass(frozen=True, slots=True)
class StreamDetails:
    stream: StreamInfo
    topics: list[TopicInfo] = field(default_factory=list)

    def encode(self) -> bytes:
        assert self.stream.topics_count == len(self.topics)
        return self.stream.encode() + encode_list(self.topics)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        stream = StreamInfo.decode(reader)
        topics = _read_all(reader, TopicInfo.decode)
        if len(topics) != stream.topics_count:
            raise IggyError(Status.INVALID_COMMAND, f"{len(topics)} topics, {stream.topics_count} announced")
        return cls(stream, topics)


@dataclass(frozen=True, slots=True)
class TopicDetails:
    topic: TopicInfo
    partitions: list[PartitionInfo] = field(default_factory=list)

    def encode(self) -> bytes:
        assert self.topic.partitions_count == len(self.partitions)
        return self.topic.encode() + encode_list(self.partitions)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        topic = TopicInfo.decode(reader)
        partitions = _read_all(reader, PartitionInfo.decode)
        if len(partitions) != topic.partitions_count:
            raise IggyError(
                Status.INVALID_COMMAND, f"{len(partitions)} partitions, {topic.partitions_count} announced"
            )
        return cls(topic, partitions)


@dataclass(frozen=True, slots=True)
class ConsumerGroupInfo:
    id: int
    partitions_count: int
    members_count: int
    name: str

    def encode(self) -> bytes:
        return _GROUP.pack(self.id, self.partitions_count, self.members_count) + _encode_name(self.name)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        group_id, partitions_count, members_count = reader.unpack(_GROUP)
        return cls(group_id, partitions_count, members_count, reader.name())


@dataclass(frozen=True, slots=True)
class ConsumerGroupMember:
    id: int
    partitions: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        n = len(self.partitions)
        return _GROUP_MEMBER.pack(self.id, n) + struct.pack(f"<{n}I", *self.partitions)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        member_id, n = reader.unpack(_GROUP_MEMBER)
        return cls(member_id, list(reader.unpack(struct.Struct(f"<{n}I"))))


@dataclass(frozen=True, slots=True)
class ConsumerGroupDetails:
    group: ConsumerGroupInfo
    members: list[ConsumerGroupMember] = field(default_factory=list)

    def encode(self) -> bytes:
        assert self.group.members_count == len(self.members)
        return self.group.encode() + encode_list(self.members)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        group = ConsumerGroupInfo.decode(reader)
        return cls(group, [ConsumerGroupMember.decode(reader) for _ in range(group.members_count)])


@dataclass(frozen=True, slots=True)
class ConsumerOffsetInfo:
    partition_id: int
    current_offset: int
    stored_offset: int

    def encode(self) -> bytes:
        return _CONSUMER_OFFSET.pack(self.partition_id, self.current_offset, self.stored_offset)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        return cls(*reader.unpack(_CONSUMER_OFFSET))


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    created_at_us: int
    status: int
    username: str

    def encode(self) -> bytes:
        return _USER.pack(self.id, self.created_at_us, self.status) + _encode_name(self.username)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        user_id, created_at, status = reader.unpack(_USER)
        return cls(user_id, created_at, status, reader.name())


# UserDetails writes "no permissions" as four zero bytes: the SDK reads a flag byte and
# then skips three (section 2.8), unlike the one-byte absent flag of requests.
_USER_NO_PERMISSIONS = b"\x00\x00\x00\x00"


@dataclass(frozen=True, slots=True)
class UserDetails:
    user: UserInfo
    permissions: Permissions | None = None

    def encode(self) -> bytes:
        if self.permissions is None:
            return self.user.encode() + _USER_NO_PERMISSIONS
        block = encode_permissions(self.permissions)
        return self.user.encode() + b"\x01" + _U32.pack(len(block)) + block

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        user = UserInfo.decode(reader)
        if reader.u8() == 1:
            return cls(user, reader.sized_permissions())
        reader.skip(len(_USER_NO_PERMISSIONS) - 1)
        return cls(user, None)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client_id: int
    user_id: int
    """``NO_USER_ID`` (u32::MAX) when the connection has not logged in."""
    transport: int
    address: str
    consumer_groups_count: int

    def encode(self) -> bytes:
        w = Writer()
        w.pack(_CLIENT, self.client_id, self.user_id, self.transport)
        w.str32(self.address)
        w.u32(self.consumer_groups_count)
        return w.getvalue()

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        client_id, user_id, transport = reader.unpack(_CLIENT)
        if transport not in _TRANSPORTS:
            raise IggyError(Status.INVALID_COMMAND, f"transport {transport}")
        address = reader.str32()
        return cls(client_id, user_id, transport, address, reader.u32())


@dataclass(frozen=True, slots=True)
class ClientDetails:
    client: ClientInfo
    groups: list[tuple[int, int, int]] = field(default_factory=list)
    """Memberships as ``(stream_id, topic_id, group_id)``."""

    def encode(self) -> bytes:
        assert self.client.consumer_groups_count == len(self.groups)
        return self.client.encode() + b"".join(_CLIENT_GROUP.pack(*g) for g in self.groups)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        client = ClientInfo.decode(reader)
        groups: list[tuple[int, int, int]] = []
        for _ in range(client.consumer_groups_count):
            stream_id, topic_id, group_id = reader.unpack(_CLIENT_GROUP)
            groups.append((stream_id, topic_id, group_id))
        return cls(client, groups)


@dataclass(frozen=True, slots=True)
class PersonalAccessTokenInfo:
    name: str
    expiry_at_us: int
    """Absolute expiry time in microseconds since the epoch; 0 = never."""

    def encode(self) -> bytes:
        # Total over whatever is stored: an older server kept now + expiry unchecked, so a token
        # may hold an instant past u64. Such a token never expires (no clock reaches it), and it
        # is listed as what it is: 0, never. A negative one (only a damaged state) is long past.
        expiry_at = self.expiry_at_us
        if expiry_at > U64_MAX:
            expiry_at = 0
        elif expiry_at < 0:
            expiry_at = 1
        return _encode_name(self.name) + _U64.pack(expiry_at)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        name = reader.name()
        return cls(name, reader.u64())


@dataclass(frozen=True, slots=True)
class RawPersonalAccessToken:
    token: str

    def encode(self) -> bytes:
        return _encode_name(self.token)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        return cls(reader.name())


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int

    def encode(self) -> bytes:
        return _U32.pack(self.user_id)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        return cls(reader.u32())


@dataclass(frozen=True, slots=True)
class ClusterNode:
    name: str
    ip: str
    tcp_port: int
    quic_port: int
    http_port: int
    websocket_port: int
    role: int = ClusterNodeRole.LEADER
    status: int = ClusterNodeStatus.HEALTHY

    def encode(self) -> bytes:
        w = Writer()
        w.str32(self.name)
        w.str32(self.ip)
        w.pack(
            _NODE_PORTS,
            self.tcp_port,
            self.quic_port,
            self.http_port,
            self.websocket_port,
            self.role,
            self.status,
        )
        return w.getvalue()

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        name = reader.str32()
        ip = reader.str32()
        tcp, quic, http, websocket, role, status = reader.unpack(_NODE_PORTS)
        if role not in _NODE_ROLES or status not in _NODE_STATUSES:
            raise IggyError(Status.INVALID_COMMAND, f"cluster node role {role} / status {status}")
        return cls(name, ip, tcp, quic, http, websocket, role, status)


@dataclass(frozen=True, slots=True)
class ClusterMetadata:
    name: str
    nodes: list[ClusterNode] = field(default_factory=list)

    def encode(self) -> bytes:
        w = Writer()
        w.str32(self.name)
        w.u32(len(self.nodes))
        for node in self.nodes:
            w.bytes_(node.encode())
        return w.getvalue()

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        name = reader.str32()
        return cls(name, [ClusterNode.decode(reader) for _ in range(reader.u32())])


@dataclass(frozen=True, slots=True)
class CacheMetric:
    stream_id: int
    topic_id: int
    partition_id: int
    hits: int
    misses: int
    hit_ratio: float

    def encode(self) -> bytes:
        return _CACHE_METRIC.pack(
            self.stream_id, self.topic_id, self.partition_id, self.hits, self.misses, self.hit_ratio
        )

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        return cls(*reader.unpack(_CACHE_METRIC))


@dataclass(frozen=True, slots=True)
class Stats:
    process_id: int = 0
    cpu_usage: float = 0.0
    """Process CPU usage in percent (f32 on the wire)."""
    total_cpu_usage: float = 0.0
    memory_usage_bytes: int = 0
    total_memory_bytes: int = 0
    available_memory_bytes: int = 0
    run_time_us: int = 0
    start_time_us: int = 0
    read_bytes: int = 0
    written_bytes: int = 0
    messages_size_bytes: int = 0
    streams_count: int = 0
    topics_count: int = 0
    partitions_count: int = 0
    segments_count: int = 0
    messages_count: int = 0
    clients_count: int = 0
    consumer_groups_count: int = 0
    hostname: str = ""
    os_name: str = ""
    os_version: str = ""
    kernel_version: str = ""
    iggy_server_version: str = ""
    iggy_server_semver: int = 0
    """major * 10**6 + minor * 10**3 + patch; 0 = absent."""
    cache_metrics: list[CacheMetric] = field(default_factory=list)
    threads_count: int = 0
    free_disk_space_bytes: int = 0
    total_disk_space_bytes: int = 0

    def encode(self) -> bytes:
        w = Writer()
        w.pack(
            _STATS,
            self.process_id,
            self.cpu_usage,
            self.total_cpu_usage,
            self.memory_usage_bytes,
            self.total_memory_bytes,
            self.available_memory_bytes,
            self.run_time_us,
            self.start_time_us,
            self.read_bytes,
            self.written_bytes,
            self.messages_size_bytes,
            self.streams_count,
            self.topics_count,
            self.partitions_count,
            self.segments_count,
            self.messages_count,
            self.clients_count,
            self.consumer_groups_count,
        )
        for text in (self.hostname, self.os_name, self.os_version, self.kernel_version):
            w.str32(text)
        w.str32(self.iggy_server_version)
        w.u32(self.iggy_server_semver)
        w.u32(len(self.cache_metrics))
        for metric in self.cache_metrics:
            w.bytes_(metric.encode())
        w.pack(_STATS_TAIL, self.threads_count, self.free_disk_space_bytes, self.total_disk_space_bytes)
        return w.getvalue()

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        fixed = reader.unpack(_STATS)
        texts = [reader.str32() for _ in range(5)]
        semver = reader.u32()
        metrics = [CacheMetric.decode(reader) for _ in range(reader.u32())]
        threads, free_disk, total_disk = reader.unpack(_STATS_TAIL)
        return cls(*(*fixed, *texts, semver, metrics, threads, free_disk, total_disk))


# ---------------------------------------------------------------------------------------------
# Poll reply (section 3.8) and stored messages (section 4.1)


@dataclass(frozen=True, slots=True)
class PollHeader:
    partition_id: int
    current_offset: int
    messages_count: int

    def encode(self) -> bytes:
        return _POLL_HEADER.pack(self.partition_id, self.current_offset, self.messages_count)

    @classmethod
    def decode(cls, reader: Reader) -> Self:
        return cls(*reader.unpack(_POLL_HEADER))


@dataclass(frozen=True, slots=True)
class PolledMessage:
    checksum: int
    id: int
    offset: int
    timestamp_us: int
    origin_timestamp_us: int
    user_headers_length: int
    payload_length: int
    reserved: int
    payload: memoryview
    user_headers: memoryview


def decode_poll_reply(payload: BytesLike) -> tuple[PollHeader, list[PolledMessage]]:
    """Client side, as the SDK parses it: walk messages until the payload ends.

    The count field is not trusted; a truncated tail is dropped silently; a non-zero
    reserved field raises ``IggyError(INVALID_RESERVED_FIELD)``. Payloads and user headers
    are views into ``payload``.
    """
    r = Reader(payload)
    header = PollHeader.decode(r)
    view = r.view
    pos = r.pos
    end = len(view)
    messages: list[PolledMessage] = []
    unpack = _MESSAGE_HEADER.unpack_from
    while end - pos >= MESSAGE_HEADER_SIZE:
        checksum, id_lo, id_hi, offset, timestamp, origin, headers_length, payload_length, reserved = unpack(
            view, pos
        )
        if reserved != 0:
            raise IggyError(Status.INVALID_RESERVED_FIELD, f"message at offset {offset}")
        body = pos + MESSAGE_HEADER_SIZE
        body_end = body + payload_length + headers_length
        if body_end > end:
            break
        messages.append(
            PolledMessage(
                checksum,
                id_lo | (id_hi << 64),
                offset,
                timestamp,
                origin,
                headers_length,
                payload_length,
                reserved,
                view[body : body + payload_length],
                view[body + payload_length : body_end],
            )
        )
        pos = body_end
    return header, messages


# ---------------------------------------------------------------------------------------------
# User headers (section 4.2)

HeaderKey = str | bytes

_HEADER_FIXED_SIZES: dict[int, int] = {
    HeaderKind.BOOL: 1,
    HeaderKind.INT8: 1,
    HeaderKind.UINT8: 1,
    HeaderKind.INT16: 2,
    HeaderKind.UINT16: 2,
    HeaderKind.INT32: 4,
    HeaderKind.UINT32: 4,
    HeaderKind.FLOAT32: 4,
    HeaderKind.INT64: 8,
    HeaderKind.UINT64: 8,
    HeaderKind.FLOAT64: 8,
    HeaderKind.INT128: 16,
    HeaderKind.UINT128: 16,
}
_HEADER_KINDS = frozenset(int(k) for k in HeaderKind)


def _header_item_ok(kind: int, length: int) -> bool:
    if kind not in _HEADER_KINDS or not 1 <= length <= _NAME_MAX_BYTES:
        return False
    expected = _HEADER_FIXED_SIZES.get(kind)
    return expected is None or expected == length


def _key_item(key: HeaderKey) -> tuple[int, bytes]:
    if isinstance(key, str):
        return HeaderKind.STRING, key.encode()
    return HeaderKind.RAW, bytes(key)


def encode_user_headers(headers: Mapping[HeaderKey, tuple[int, bytes]]) -> bytes:
    """TLV items, key then value, sorted by key as the SDK writes them.

    A ``str`` key is written as a string item, a ``bytes`` key as a raw item.
    """
    items = sorted(
        ((_key_item(key), value) for key, value in headers.items()), key=lambda kv: (kv[0][1], kv[0][0])
    )
    out = bytearray()
    for (key_kind, key_raw), (value_kind, value_raw) in items:
        for kind, raw in ((key_kind, key_raw), (value_kind, value_raw)):
            if not _header_item_ok(kind, len(raw)):
                raise ValueError(f"user header item of kind {kind} and {len(raw)} bytes")
            out.append(kind)
            out += _U32.pack(len(raw))
            out += raw
    return bytes(out)


def decode_user_headers(data: BytesLike) -> dict[HeaderKey, tuple[int, bytes]]:
    """Inverse of :func:`encode_user_headers`; malformed items -> INVALID_FORMAT.

    String keys come back as ``str``; keys of any other kind come back as their raw bytes.
    """
    r = Reader(data)
    out: dict[HeaderKey, tuple[int, bytes]] = {}
    while r.remaining:
        items: list[tuple[int, bytes]] = []
        for _ in range(2):
            if r.remaining == 0:
                raise IggyError(Status.INVALID_FORMAT, "user header key without a value")
            kind = r.u8()
            raw = r.bytes32()
            if not _header_item_ok(kind, len(raw)):
                raise IggyError(Status.INVALID_FORMAT, f"user header item of kind {kind}, {len(raw)} bytes")
            items.append((kind, bytes(raw)))
        (key_kind, key_raw), value = items
        key: HeaderKey = _utf8(memoryview(key_raw)) if key_kind == HeaderKind.STRING else key_raw
        out[key] = value
    return out
