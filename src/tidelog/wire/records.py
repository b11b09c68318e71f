"""Reply records of the Iggy 0.8 classic protocol (reference section 2.8) and the poll reply
(section 3.8), sans-IO.

One frozen dataclass per record with ``encode()`` (server side) and ``decode(reader)``
(client side); :func:`decode_list` and :func:`decode_record` read whole reply payloads.
Stored messages (section 4.1) come back from :func:`decode_poll_reply` as views.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, TypeVar

from tidelog.permissions import Permissions
from tidelog.wire.batch import MESSAGE_HEADER
from tidelog.wire.codes import MESSAGE_HEADER_SIZE, POLL_REPLY_HEADER_SIZE, U64_MAX, IggyError, Status
from tidelog.wire.primitives import (
    _U32,
    _U64,
    BytesLike,
    ClusterNodeRole,
    ClusterNodeStatus,
    Reader,
    Transport,
    Writer,
    _name_bytes,
    encode_permissions,
)

_TRANSPORTS = frozenset(int(k) for k in Transport)
_NODE_ROLES = frozenset(int(k) for k in ClusterNodeRole)
_NODE_STATUSES = frozenset(int(k) for k in ClusterNodeStatus)

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

assert _STREAM.size == 32 and _TOPIC.size == 50 and _PARTITION.size == 40
assert _CONSUMER_OFFSET.size == 20 and _USER.size == 13 and _CLIENT.size == 9
assert _STATS.size == 108 and _CACHE_METRIC.size == 32 and _POLL_HEADER.size == POLL_REPLY_HEADER_SIZE


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
    unpack = MESSAGE_HEADER.unpack_from
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
