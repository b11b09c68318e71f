"""Typed requests of the Iggy 0.8 classic protocol (reference section 3), sans-IO.

One frozen dataclass per command with ``decode(payload)`` (server side) and ``encode()``
(client side, byte for byte what the SDK sends); :func:`decode_request` picks the type by
command code. SendMessages is only located, never copied: :class:`SendMessagesHeader` gives
the offsets of its index table and message area inside the payload.

Decode errors follow section 1.4, as described in primitives.py. Trailing bytes after a
decodable request payload are ignored, as the reference does.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tidelog.permissions import Permissions
from tidelog.wire.batch import INDEX_ENTRY, MESSAGE_HEADER
from tidelog.wire.codes import (
    INDEX_ENTRY_SIZE,
    MESSAGE_HEADER_SIZE,
    Command,
    CompressionAlgorithm,
    IggyError,
    Status,
    UserStatus,
)
from tidelog.wire.primitives import (
    _NAME_MAX_BYTES,
    _U32,
    _U128_MASK,
    BytesLike,
    Consumer,
    Identifier,
    PartitioningKind,
    PollingKind,
    Reader,
    SnapshotCompression,
    SnapshotType,
    Writer,
    _check_u32,
    encode_identifier,
)

_POLLING_KINDS = frozenset(int(k) for k in PollingKind)
_COMPRESSIONS = frozenset(int(k) for k in CompressionAlgorithm)
_USER_STATUSES = frozenset(int(k) for k in UserStatus)
_SNAPSHOT_COMPRESSIONS = frozenset(int(k) for k in SnapshotCompression)
_SNAPSHOT_TYPES = frozenset(int(k) for k in SnapshotType)

# The login version the 0.8.0 Python SDK sends: its `iggy_common` crate version.
SDK_VERSION = "0.10.0"

_CREATE_TOPIC_FIXED = struct.Struct("<IBQQB")
_UPDATE_TOPIC_FIXED = struct.Struct("<BQQB")
_POLL_FIXED = struct.Struct("<BIBQIB")
_OFFSET_FIXED = struct.Struct("<BIQ")
assert _CREATE_TOPIC_FIXED.size == 22 and _POLL_FIXED.size == 19


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
        MESSAGE_HEADER.pack_into(
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
        INDEX_ENTRY.pack_into(buf, index_offset + INDEX_ENTRY_SIZE * i, 0, position, 0)
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
