"""The metadata state machine: streams, topics, partitions, consumer groups, users and tokens.

Sans-IO and deterministic (protocol sections 2.5-2.8, 3.3-3.7, 4.5, 4.6): `Metadata.apply(op)`
is the only way the logged state changes, and an op carries every timestamp, hash and value it
needs, while the ids it creates are computed from the state. Replaying the same ops on the same
start state therefore rebuilds the same state on every shard and after every restart. An op
either fails with an `IggyError` before touching anything or succeeds and bumps `revision`.
`Metadata.prepare(op)` runs the checks alone and returns the change, so the server can log an
op durably before it applies it (a failed log write then leaves memory untouched).

Message data, offsets and segments live in storage; this module holds ids, names, settings
and creation times only.

Consumer-group membership is runtime state (it belongs to connections and dies with them), so
it is not logged and not part of the snapshot; it lives here all the same so that every group
rule (membership, rebalance, partition round robin) sits in one sans-IO place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, assert_never, overload

from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions, TopicPermissions
from tidelog.wire.codes import (
    MAX_PARTITIONS_PER_REQUEST,
    MAX_TOKENS_PER_USER,
    PAT_NAME_LEN_MAX,
    PAT_NAME_LEN_MIN,
    U32_MAX,
    U64_MAX,
    USERNAME_LEN_MAX,
    USERNAME_LEN_MIN,
    CompressionAlgorithm,
    IggyError,
    Status,
    UserStatus,
)

ROOT_USER_ID = 0
NAME_LEN_MIN, NAME_LEN_MAX = 1, 255  # stream, topic and group names (the wire Name type)
SNAPSHOT_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Defaults


@dataclass(frozen=True, slots=True)
class MetadataDefaults:
    """Server configuration that CreateTopic resolves its "0 = server default" fields against."""

    segment_size_bytes: int
    message_expiry: int = U64_MAX  # u64::MAX = never expire
    max_topic_size: int = U64_MAX  # u64::MAX = unlimited

    def __post_init__(self) -> None:
        # 0 means "use the default" on the wire, so a default of 0 would be meaningless; and a
        # default size below the segment size is the very value CreateTopic rejects (1019).
        if not 0 < self.segment_size_bytes <= U64_MAX:
            raise ValueError(f"segment_size_bytes must be positive: {self.segment_size_bytes}")
        if not 0 < self.message_expiry <= U64_MAX:
            raise ValueError(f"message_expiry default must be 1..u64::MAX: {self.message_expiry}")
        if not 0 < self.max_topic_size <= U64_MAX:
            raise ValueError(f"max_topic_size default must be 1..u64::MAX: {self.max_topic_size}")
        if self.max_topic_size != U64_MAX and self.max_topic_size < self.segment_size_bytes:
            raise ValueError("max_topic_size default is below segment_size_bytes")


# --------------------------------------------------------------------------------------------
# Id allocation (section 4.6)


@dataclass(slots=True)
class SlotAllocator:
    """Ids as the reference server's slab hands them out.

    The most recently freed id is reused first (LIFO); with nothing free, the lowest id never
    used. The free list is part of the state: its order decides future ids.
    """

    next_id: int = 0
    free: list[int] = field(default_factory=list)

    def peek(self) -> int:
        return self.free[-1] if self.free else self.next_id

    def allocate(self) -> int:
        if self.free:
            return self.free.pop()
        self.next_id += 1
        return self.next_id - 1

    def release(self, id_: int) -> None:
        assert 0 <= id_ < self.next_id, (id_, self.next_id)
        assert id_ not in self.free, id_
        self.free.append(id_)

    def to_json(self) -> dict[str, Any]:
        return {"next": self.next_id, "free": list(self.free)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SlotAllocator:
        alloc = cls(int(d["next"]), [int(i) for i in d["free"]])
        assert all(0 <= i < alloc.next_id for i in alloc.free)
        assert len(set(alloc.free)) == len(alloc.free)
        return alloc


# --------------------------------------------------------------------------------------------
# Entities (plain dataclasses; the server reads them to build replies)


@dataclass(slots=True)
class PartitionMeta:
    id: int
    created_at_us: int


@dataclass(slots=True)
class MemberMeta:
    id: int
    client_id: int
    partitions: list[int] = field(default_factory=list)
    # Per-member round-robin position for polls that name no partition.
    cursor: int = field(default=0, compare=False)


@dataclass(slots=True)
class GroupMeta:
    id: int
    name: str
    partition_ids: list[int]
    members: list[MemberMeta] = field(default_factory=list)
    # Bumped on every rebalance: a 0.9 member syncs its assignment by it (0.9 section 5.4).
    generation: int = field(default=0, compare=False)


@dataclass(slots=True)
class TopicMeta:
    id: int
    stream_id: int
    name: str
    created_at_us: int
    compression_algorithm: int
    message_expiry: int
    max_topic_size: int
    replication_factor: int
    partitions: dict[int, PartitionMeta] = field(default_factory=dict)
    # Set by 0.9 clients (0.9 section 2.8), "" where a 0.8 client made the topic: the options
    # block as sent (hex, echoed in 0.9 replies) and the two durability keys.
    options_hex: str = ""
    durability: str = ""
    consumer_offset_durability: str = ""
    # 0.9 per-topic storage settings; 0 = the server's (system.segment_size_bytes,
    # durability.flush_messages, durability.flush_bytes).
    segment_size_bytes: int = 0
    flush_messages: int = 0
    flush_bytes: int = 0
    groups: dict[int, GroupMeta] = field(default_factory=dict)
    group_ids: SlotAllocator = field(default_factory=SlotAllocator)
    # Derived index (rebuilt from `groups`), hence left out of equality.
    group_ids_by_name: dict[str, int] = field(default_factory=dict, compare=False, repr=False)


@dataclass(slots=True)
class StreamMeta:
    id: int
    name: str
    created_at_us: int
    topics: dict[int, TopicMeta] = field(default_factory=dict)
    topic_ids: SlotAllocator = field(default_factory=SlotAllocator)
    topic_ids_by_name: dict[str, int] = field(default_factory=dict, compare=False, repr=False)


@dataclass(slots=True)
class PatMeta:
    name: str
    token_hash: str
    expiry_at_us: int  # absolute µs timestamp; 0 = never

    def expired(self, now_us: int) -> bool:
        return self.expiry_at_us != 0 and now_us >= self.expiry_at_us


@dataclass(slots=True)
class UserMeta:
    id: int
    username: str
    password_hash: str
    status: int
    permissions: Permissions | None
    created_at_us: int
    tokens: dict[str, PatMeta] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Ops: one frozen dataclass per logged mutation. Entities are named by resolved numeric ids.


@dataclass(frozen=True, slots=True)
class CreateStream:
    name: str
    created_at_us: int


@dataclass(frozen=True, slots=True)
class UpdateStream:
    stream_id: int
    name: str


@dataclass(frozen=True, slots=True)
class DeleteStream:
    stream_id: int


@dataclass(frozen=True, slots=True)
class CreateTopic:
    stream_id: int
    name: str
    partitions_count: int
    compression_algorithm: int
    message_expiry: int  # 0 = server default, u64::MAX = never
    max_topic_size: int  # 0 = server default, u64::MAX = unlimited
    replication_factor: int  # 0 = unset (stored as 1)
    created_at_us: int
    # 0.9 only (see TopicMeta); defaulted so that ops logged before they existed still load.
    options_hex: str = ""
    durability: str = ""
    consumer_offset_durability: str = ""
    # 0.9 per-topic storage settings; 0 = the server's (system.segment_size_bytes,
    # durability.flush_messages, durability.flush_bytes).
    segment_size_bytes: int = 0
    flush_messages: int = 0
    flush_bytes: int = 0


@dataclass(frozen=True, slots=True)
class UpdateTopic:
    stream_id: int
    topic_id: int
    compression_algorithm: int
    message_expiry: int
    max_topic_size: int
    replication_factor: int
    name: str


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    stream_id: int
    topic_id: int


@dataclass(frozen=True, slots=True)
class CreatePartitions:
    stream_id: int
    topic_id: int
    count: int
    created_at_us: int


@dataclass(frozen=True, slots=True)
class DeletePartitions:
    stream_id: int
    topic_id: int
    count: int


@dataclass(frozen=True, slots=True)
class CreateConsumerGroup:
    stream_id: int
    topic_id: int
    name: str


@dataclass(frozen=True, slots=True)
class DeleteConsumerGroup:
    stream_id: int
    topic_id: int
    group_id: int


@dataclass(frozen=True, slots=True)
class CreateUser:
    username: str
    password_hash: str
    status: int
    permissions: Permissions | None
    created_at_us: int


@dataclass(frozen=True, slots=True)
class UpdateUser:
    user_id: int
    username: str | None
    status: int | None


@dataclass(frozen=True, slots=True)
class UpdatePermissions:
    user_id: int
    permissions: Permissions | None


@dataclass(frozen=True, slots=True)
class ChangePassword:
    user_id: int
    password_hash: str


@dataclass(frozen=True, slots=True)
class DeleteUser:
    user_id: int


@dataclass(frozen=True, slots=True)
class CreatePersonalAccessToken:
    user_id: int
    name: str
    token_hash: str
    expiry_at_us: int  # absolute; 0 = never


@dataclass(frozen=True, slots=True)
class DeletePersonalAccessToken:
    user_id: int
    name: str


Op: TypeAlias = (
    CreateStream
    | UpdateStream
    | DeleteStream
    | CreateTopic
    | UpdateTopic
    | DeleteTopic
    | CreatePartitions
    | DeletePartitions
    | CreateConsumerGroup
    | DeleteConsumerGroup
    | CreateUser
    | UpdateUser
    | UpdatePermissions
    | ChangePassword
    | DeleteUser
    | CreatePersonalAccessToken
    | DeletePersonalAccessToken
)

OP_TYPES: dict[str, type[Op]] = {
    cls.__name__: cls
    for cls in (
        CreateStream,
        UpdateStream,
        DeleteStream,
        CreateTopic,
        UpdateTopic,
        DeleteTopic,
        CreatePartitions,
        DeletePartitions,
        CreateConsumerGroup,
        DeleteConsumerGroup,
        CreateUser,
        UpdateUser,
        UpdatePermissions,
        ChangePassword,
        DeleteUser,
        CreatePersonalAccessToken,
        DeletePersonalAccessToken,
    )
}

Entity: TypeAlias = StreamMeta | TopicMeta | GroupMeta | UserMeta | PatMeta | list[PartitionMeta]
GroupKey: TypeAlias = tuple[int, int, int]  # (stream_id, topic_id, group_id)
# A validated op waiting to be applied (`Metadata.prepare`): applies it, returns its entity.
Change: TypeAlias = Callable[[], Entity | None]


# --------------------------------------------------------------------------------------------
# JSON encoding of permissions and ops (shared by the snapshot, the metadata log and the bus)


def permissions_to_json(p: Permissions | None) -> dict[str, Any] | None:
    """Permissions as JSON-safe data: the int-keyed dicts become lists of entries with an id."""
    if p is None:
        return None
    streams = []
    for stream_id in sorted(p.streams):
        s = p.streams[stream_id]
        entry: dict[str, Any] = {"id": stream_id}
        entry.update({f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "topics"})
        entry["topics"] = [{"id": tid, **dataclasses.asdict(s.topics[tid])} for tid in sorted(s.topics)]
        streams.append(entry)
    return {"global": dataclasses.asdict(p.global_), "streams": streams}


def permissions_from_json(d: dict[str, Any] | None) -> Permissions | None:
    if d is None:
        return None
    streams: dict[int, StreamPermissions] = {}
    for entry in d["streams"]:
        entry = dict(entry)
        stream_id = int(entry.pop("id"))
        topics: dict[int, TopicPermissions] = {}
        for t in entry.pop("topics"):
            t = dict(t)
            topic_id = int(t.pop("id"))
            topics[topic_id] = TopicPermissions(**t)
        streams[stream_id] = StreamPermissions(**entry, topics=topics)
    return Permissions(GlobalPermissions(**d["global"]), streams)


def op_to_json(op: Op) -> dict[str, Any]:
    """A type tag plus the op's fields; JSON-safe."""
    d: dict[str, Any] = {"type": type(op).__name__}
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        d[f.name] = permissions_to_json(value) if f.name == "permissions" else value
    return d


def op_from_json(d: dict[str, Any]) -> Op:
    """Inverse of `op_to_json`; raises ValueError on an unknown type or a field mismatch."""
    cls = OP_TYPES.get(d.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown op type {d.get('type')!r}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    # Fields added later carry defaults; an op logged before them leaves them out.
    optional = {f.name for f in fields if f.default is not dataclasses.MISSING}
    if not {"type", *names} - optional <= set(d) <= {"type", *names}:
        raise ValueError(f"{cls.__name__}: fields {sorted(d)} do not match {names}")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in d:
            continue
        value = d[name]
        if name == "permissions":
            value = permissions_from_json(value)
        elif not (value is None or type(value) in (int, str)):
            raise ValueError(f"{cls.__name__}.{name}: unexpected value {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Validation helpers


def _check_name(name: str, status: Status, lo: int = NAME_LEN_MIN, hi: int = NAME_LEN_MAX) -> None:
    # Lengths are UTF-8 bytes, as on the wire.
    n = len(name.encode("utf-8"))
    if not lo <= n <= hi:
        raise IggyError(status, f"name length {n} outside {lo}..{hi}")


def _check_compression(value: int) -> None:
    # The reference answers 3 for a bad enum byte (section 2.6); the codec normally catches it.
    if value not in (CompressionAlgorithm.NONE, CompressionAlgorithm.GZIP):
        raise IggyError(Status.INVALID_COMMAND, f"compression algorithm {value}")


def _check_status(value: int) -> None:
    if value not in (UserStatus.ACTIVE, UserStatus.INACTIVE):
        raise IggyError(Status.INVALID_COMMAND, f"user status {value}")


def _rebalance(group: GroupMeta) -> None:
    """Full rebalance (section 4.5): partition i, ascending, goes to member i mod M."""
    members = group.members
    group.generation += 1
    for m in members:
        m.partitions = []
        m.cursor = 0
    if members:
        for i, partition_id in enumerate(sorted(group.partition_ids)):
            members[i % len(members)].partitions.append(partition_id)
        owned = [p for m in members for p in m.partitions]
        assert sorted(owned) == sorted(group.partition_ids), "every partition owned exactly once"


# --------------------------------------------------------------------------------------------
# The state machine


class Metadata:
    def __init__(self, defaults: MetadataDefaults) -> None:
        self.defaults = defaults
        self.revision = 0
        self.streams: dict[int, StreamMeta] = {}
        self.users: dict[int, UserMeta] = {}
        self._stream_ids = SlotAllocator()
        self._user_ids = SlotAllocator()
        self._stream_ids_by_name: dict[str, int] = {}
        self._user_ids_by_name: dict[str, int] = {}
        self._pats_by_hash: dict[str, tuple[int, str]] = {}  # token_hash -> (user_id, name)
        self._memberships: dict[int, set[GroupKey]] = {}  # client_id -> groups joined

    # ---- apply ---------------------------------------------------------------------------

    @overload
    def apply(self, op: CreateStream) -> StreamMeta: ...
    @overload
    def apply(self, op: CreateTopic) -> TopicMeta: ...
    @overload
    def apply(self, op: CreatePartitions) -> list[PartitionMeta]: ...
    @overload
    def apply(self, op: CreateConsumerGroup) -> GroupMeta: ...
    @overload
    def apply(self, op: CreateUser) -> UserMeta: ...
    @overload
    def apply(self, op: CreatePersonalAccessToken) -> PatMeta: ...
    @overload
    def apply(self, op: Op) -> Entity | None: ...

    def apply(self, op: Op) -> Entity | None:
        """Validate and apply one op; returns the created entity (None for other ops).

        Every check runs before the first change, so a failing op leaves the state untouched.
        """
        return self.prepare(op)()

    def prepare(self, op: Op) -> Change:
        """Validate `op` against the current state without changing anything; return the change.

        Raises `IggyError` when the op does not apply. The returned function applies the op
        (it cannot fail), bumps `revision` and returns what `apply` would. This is what lets
        the server log before it applies: prepare, write the op durably, then call the change;
        if the write fails the change is dropped and memory never ran ahead of the disk. The
        change must be called before the state is changed in any other way, so the ids it
        assigns are the ones a replay of the log assigns.
        """
        change: Callable[[], Entity | None]
        match op:
            case CreateStream():
                change = self._create_stream(op)
            case UpdateStream():
                change = self._update_stream(op)
            case DeleteStream():
                change = self._delete_stream(op)
            case CreateTopic():
                change = self._create_topic(op)
            case UpdateTopic():
                change = self._update_topic(op)
            case DeleteTopic():
                change = self._delete_topic(op)
            case CreatePartitions():
                change = self._create_partitions(op)
            case DeletePartitions():
                change = self._delete_partitions(op)
            case CreateConsumerGroup():
                change = self._create_group(op)
            case DeleteConsumerGroup():
                change = self._delete_group(op)
            case CreateUser():
                change = self._create_user(op)
            case UpdateUser():
                change = self._update_user(op)
            case UpdatePermissions():
                change = self._update_permissions(op)
            case ChangePassword():
                change = self._change_password(op)
            case DeleteUser():
                change = self._delete_user(op)
            case CreatePersonalAccessToken():
                change = self._create_pat(op)
            case DeletePersonalAccessToken():
                change = self._delete_pat(op)
            case _:
                assert_never(op)
        prepared_at = self.revision

        def commit() -> Entity | None:
            assert self.revision == prepared_at, "state changed between prepare and commit"
            result = change()
            self.revision += 1
            return result

        return commit

    # Each `_op` method below only validates, then returns the closure that mutates: every
    # `IggyError` is raised before the closure exists, and the closure has no failure paths.

    # ---- streams -------------------------------------------------------------------------

    def _create_stream(self, op: CreateStream) -> Callable[[], StreamMeta]:
        _check_name(op.name, Status.INVALID_STREAM_NAME)
        if op.name in self._stream_ids_by_name:
            raise IggyError(Status.STREAM_NAME_ALREADY_EXISTS, op.name)

        def change() -> StreamMeta:
            stream_id = self._stream_ids.allocate()
            assert stream_id not in self.streams and stream_id <= U32_MAX
            stream = StreamMeta(stream_id, op.name, op.created_at_us)
            self.streams[stream_id] = stream
            self._stream_ids_by_name[op.name] = stream_id
            return stream

        return change

    def _update_stream(self, op: UpdateStream) -> Callable[[], None]:
        stream = self.require_stream(op.stream_id)
        _check_name(op.name, Status.INVALID_STREAM_NAME)
        if self._stream_ids_by_name.get(op.name, stream.id) != stream.id:
            raise IggyError(Status.STREAM_NAME_ALREADY_EXISTS, op.name)

        def change() -> None:
            del self._stream_ids_by_name[stream.name]
            stream.name = op.name
            self._stream_ids_by_name[op.name] = stream.id

        return change

    def _delete_stream(self, op: DeleteStream) -> Callable[[], None]:
        stream = self.require_stream(op.stream_id)

        def change() -> None:
            for topic in stream.topics.values():
                for group in topic.groups.values():
                    self._drop_memberships(topic, group)
            del self.streams[stream.id]
            del self._stream_ids_by_name[stream.name]
            self._stream_ids.release(stream.id)

        return change

    # ---- topics and partitions -----------------------------------------------------------

    def _create_topic(self, op: CreateTopic) -> Callable[[], TopicMeta]:
        stream = self.require_stream(op.stream_id)
        assert 0 <= op.partitions_count <= U32_MAX
        if op.partitions_count > MAX_PARTITIONS_PER_REQUEST:
            raise IggyError(Status.TOO_MANY_PARTITIONS, str(op.partitions_count))
        _check_name(op.name, Status.INVALID_TOPIC_NAME)
        if op.name in stream.topic_ids_by_name:
            raise IggyError(Status.TOPIC_NAME_ALREADY_EXISTS, op.name)
        _check_compression(op.compression_algorithm)
        # Only a custom size is checked: 0 resolves to the (already checked) default.
        segment_size = op.segment_size_bytes or self.defaults.segment_size_bytes
        if op.max_topic_size not in (0, U64_MAX) and op.max_topic_size < segment_size:
            raise IggyError(Status.INVALID_TOPIC_SIZE, str(op.max_topic_size))

        def change() -> TopicMeta:
            topic_id = stream.topic_ids.allocate()
            assert topic_id not in stream.topics and topic_id <= U32_MAX
            topic = TopicMeta(
                id=topic_id,
                stream_id=stream.id,
                name=op.name,
                created_at_us=op.created_at_us,
                compression_algorithm=op.compression_algorithm,
                message_expiry=op.message_expiry or self.defaults.message_expiry,
                max_topic_size=op.max_topic_size or self.defaults.max_topic_size,
                replication_factor=op.replication_factor or 1,
                partitions={i: PartitionMeta(i, op.created_at_us) for i in range(op.partitions_count)},
                options_hex=op.options_hex,
                durability=op.durability,
                consumer_offset_durability=op.consumer_offset_durability,
                segment_size_bytes=op.segment_size_bytes,
                flush_messages=op.flush_messages,
                flush_bytes=op.flush_bytes,
            )
            stream.topics[topic_id] = topic
            stream.topic_ids_by_name[op.name] = topic_id
            return topic

        return change

    def _update_topic(self, op: UpdateTopic) -> Callable[[], None]:
        topic = self.require_topic(self.require_stream(op.stream_id), op.topic_id)
        _check_name(op.name, Status.INVALID_TOPIC_NAME)
        stream = self.streams[topic.stream_id]
        if stream.topic_ids_by_name.get(op.name, topic.id) != topic.id:
            raise IggyError(Status.TOPIC_NAME_ALREADY_EXISTS, op.name)
        _check_compression(op.compression_algorithm)

        def change() -> None:
            del stream.topic_ids_by_name[topic.name]
            topic.name = op.name
            stream.topic_ids_by_name[op.name] = topic.id
            # Stored as sent (section 2.7): no default resolution, no segment-size check.
            topic.compression_algorithm = op.compression_algorithm
            topic.message_expiry = op.message_expiry
            topic.max_topic_size = op.max_topic_size
            topic.replication_factor = op.replication_factor or 1

        return change

    def _delete_topic(self, op: DeleteTopic) -> Callable[[], None]:
        stream = self.require_stream(op.stream_id)
        topic = self.require_topic(stream, op.topic_id)

        def change() -> None:
            for group in topic.groups.values():
                self._drop_memberships(topic, group)
            del stream.topics[topic.id]
            del stream.topic_ids_by_name[topic.name]
            stream.topic_ids.release(topic.id)

        return change

    def _create_partitions(self, op: CreatePartitions) -> Callable[[], list[PartitionMeta]]:
        topic = self.require_topic(self.require_stream(op.stream_id), op.topic_id)
        if not 1 <= op.count <= MAX_PARTITIONS_PER_REQUEST:
            raise IggyError(Status.TOO_MANY_PARTITIONS, str(op.count))

        def change() -> list[PartitionMeta]:
            first = len(topic.partitions)
            created = [PartitionMeta(i, op.created_at_us) for i in range(first, first + op.count)]
            for p in created:
                assert p.id not in topic.partitions
                topic.partitions[p.id] = p
            self._reset_groups(topic)
            return created

        return change

    def _delete_partitions(self, op: DeletePartitions) -> Callable[[], None]:
        topic = self.require_topic(self.require_stream(op.stream_id), op.topic_id)
        if not 1 <= op.count <= MAX_PARTITIONS_PER_REQUEST:
            raise IggyError(Status.TOO_MANY_PARTITIONS, str(op.count))
        if op.count > len(topic.partitions):
            raise IggyError(Status.INVALID_PARTITIONS_COUNT, f"{op.count} > {len(topic.partitions)}")

        def change() -> None:
            remaining = len(topic.partitions) - op.count
            for partition_id in range(remaining, len(topic.partitions)):
                del topic.partitions[partition_id]
            self._reset_groups(topic)

        return change

    def _reset_groups(self, topic: TopicMeta) -> None:
        # Partitions are always 0..n-1 (section 4.6); groups follow the new set (section 3.6).
        assert sorted(topic.partitions) == list(range(len(topic.partitions)))
        for group in topic.groups.values():
            group.partition_ids = sorted(topic.partitions)
            _rebalance(group)

    # ---- consumer groups -----------------------------------------------------------------

    def _create_group(self, op: CreateConsumerGroup) -> Callable[[], GroupMeta]:
        topic = self.require_topic(self.require_stream(op.stream_id), op.topic_id)
        _check_name(op.name, Status.INVALID_CONSUMER_GROUP_NAME)
        if op.name in topic.group_ids_by_name:
            raise IggyError(Status.CONSUMER_GROUP_NAME_ALREADY_EXISTS, op.name)

        def change() -> GroupMeta:
            group_id = topic.group_ids.allocate()
            assert group_id not in topic.groups and group_id <= U32_MAX
            group = GroupMeta(group_id, op.name, sorted(topic.partitions))
            topic.groups[group_id] = group
            topic.group_ids_by_name[op.name] = group_id
            return group

        return change

    def _delete_group(self, op: DeleteConsumerGroup) -> Callable[[], None]:
        topic = self.require_topic(self.require_stream(op.stream_id), op.topic_id)
        group = self.require_group(topic, op.group_id)

        def change() -> None:
            self._drop_memberships(topic, group)
            del topic.groups[group.id]
            del topic.group_ids_by_name[group.name]
            topic.group_ids.release(group.id)

        return change

    def _drop_memberships(self, topic: TopicMeta, group: GroupMeta) -> None:
        key = (topic.stream_id, topic.id, group.id)
        for member in group.members:
            joined = self._memberships[member.client_id]
            joined.discard(key)
            if not joined:
                del self._memberships[member.client_id]
        group.members.clear()

    # ---- users and tokens ----------------------------------------------------------------

    def _create_user(self, op: CreateUser) -> Callable[[], UserMeta]:
        _check_name(op.username, Status.INVALID_USERNAME, USERNAME_LEN_MIN, USERNAME_LEN_MAX)
        if op.username in self._user_ids_by_name:
            raise IggyError(Status.USER_ALREADY_EXISTS, op.username)
        _check_status(op.status)
        # u32::MAX means "no user" in client records, so it can never be an id.
        if self._user_ids.peek() >= U32_MAX:
            raise IggyError(Status.USERS_LIMIT_REACHED)

        def change() -> UserMeta:
            user_id = self._user_ids.allocate()
            assert user_id not in self.users
            user = UserMeta(
                user_id, op.username, op.password_hash, op.status, op.permissions, op.created_at_us
            )
            self.users[user_id] = user
            self._user_ids_by_name[op.username] = user_id
            return user

        return change

    def _update_user(self, op: UpdateUser) -> Callable[[], None]:
        user = self.require_user(op.user_id)
        if op.username is not None:
            _check_name(op.username, Status.INVALID_USERNAME, USERNAME_LEN_MIN, USERNAME_LEN_MAX)
            if self._user_ids_by_name.get(op.username, user.id) != user.id:
                raise IggyError(Status.USER_ALREADY_EXISTS, op.username)
        if op.status is not None:
            _check_status(op.status)

        def change() -> None:
            if op.username is not None:
                del self._user_ids_by_name[user.username]
                user.username = op.username
                self._user_ids_by_name[op.username] = user.id
            if op.status is not None:
                user.status = op.status

        return change

    def _update_permissions(self, op: UpdatePermissions) -> Callable[[], None]:
        user = self.require_user(op.user_id)
        if user.id == ROOT_USER_ID:
            raise IggyError(Status.CANNOT_CHANGE_PERMISSIONS)

        def change() -> None:
            user.permissions = op.permissions

        return change

    def _change_password(self, op: ChangePassword) -> Callable[[], None]:
        user = self.require_user(op.user_id)

        def change() -> None:
            user.password_hash = op.password_hash

        return change

    def _delete_user(self, op: DeleteUser) -> Callable[[], None]:
        user = self.require_user(op.user_id)
        if user.id == ROOT_USER_ID:
            raise IggyError(Status.CANNOT_DELETE_USER)

        def change() -> None:
            for pat in user.tokens.values():
                del self._pats_by_hash[pat.token_hash]
            del self.users[user.id]
            del self._user_ids_by_name[user.username]
            self._user_ids.release(user.id)

        return change

    def _create_pat(self, op: CreatePersonalAccessToken) -> Callable[[], PatMeta]:
        _check_name(op.name, Status.INVALID_PERSONAL_ACCESS_TOKEN_NAME, PAT_NAME_LEN_MIN, PAT_NAME_LEN_MAX)
        user = self.require_user(op.user_id)
        if len(user.tokens) >= MAX_TOKENS_PER_USER:
            raise IggyError(Status.PERSONAL_ACCESS_TOKENS_LIMIT_REACHED)
        if op.name in user.tokens:
            raise IggyError(Status.PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS, op.name)
        # Tokens carry 400 random bits; a repeated hash means a caller bug, not bad luck.
        assert op.token_hash not in self._pats_by_hash, "duplicate token hash"

        def change() -> PatMeta:
            pat = PatMeta(op.name, op.token_hash, op.expiry_at_us)
            user.tokens[op.name] = pat
            self._pats_by_hash[op.token_hash] = (user.id, op.name)
            return pat

        return change

    def _delete_pat(self, op: DeletePersonalAccessToken) -> Callable[[], None]:
        user = self.require_user(op.user_id)
        pat = user.tokens.get(op.name)
        if pat is None:
            raise IggyError(Status.RESOURCE_NOT_FOUND, f"token {op.name!r}")

        def change() -> None:
            del user.tokens[op.name]
            del self._pats_by_hash[pat.token_hash]

        return change

    # ---- lookups -------------------------------------------------------------------------

    def stream(self, ident: int | str) -> StreamMeta | None:
        """By id (int) or exact, case-sensitive name (str)."""
        if isinstance(ident, str):
            stream_id = self._stream_ids_by_name.get(ident)
            return None if stream_id is None else self.streams[stream_id]
        return self.streams.get(ident)

    def topic(self, stream: StreamMeta, ident: int | str) -> TopicMeta | None:
        if isinstance(ident, str):
            topic_id = stream.topic_ids_by_name.get(ident)
            return None if topic_id is None else stream.topics[topic_id]
        return stream.topics.get(ident)

    def partition(self, topic: TopicMeta, partition_id: int) -> PartitionMeta | None:
        return topic.partitions.get(partition_id)

    def group(self, topic: TopicMeta, ident: int | str) -> GroupMeta | None:
        if isinstance(ident, str):
            group_id = topic.group_ids_by_name.get(ident)
            return None if group_id is None else topic.groups[group_id]
        return topic.groups.get(ident)

    def user(self, ident: int | str) -> UserMeta | None:
        if isinstance(ident, str):
            return self.user_by_name(ident)
        return self.users.get(ident)

    def user_by_name(self, name: str) -> UserMeta | None:
        user_id = self._user_ids_by_name.get(name)
        return None if user_id is None else self.users[user_id]

    def pat_by_hash(self, token_hash: str) -> tuple[UserMeta, PatMeta] | None:
        found = self._pats_by_hash.get(token_hash)
        if found is None:
            return None
        user = self.users[found[0]]
        return user, user.tokens[found[1]]

    def require_stream(self, ident: int | str) -> StreamMeta:
        stream = self.stream(ident)
        if stream is None:
            raise IggyError(Status.STREAM_ID_NOT_FOUND, str(ident))
        return stream

    def require_topic(self, stream: StreamMeta, ident: int | str) -> TopicMeta:
        topic = self.topic(stream, ident)
        if topic is None:
            raise IggyError(Status.TOPIC_ID_NOT_FOUND, f"{ident} in stream {stream.id}")
        return topic

    def require_partition(self, topic: TopicMeta, partition_id: int) -> PartitionMeta:
        partition = topic.partitions.get(partition_id)
        if partition is None:
            raise IggyError(Status.PARTITION_NOT_FOUND, f"{partition_id} in topic {topic.id}")
        return partition

    def require_group(self, topic: TopicMeta, ident: int | str) -> GroupMeta:
        group = self.group(topic, ident)
        if group is None:
            raise IggyError(Status.CONSUMER_GROUP_ID_NOT_FOUND, f"{ident} in topic {topic.id}")
        return group

    def require_user(self, ident: int | str) -> UserMeta:
        user = self.user(ident)
        if user is None:
            raise IggyError(Status.RESOURCE_NOT_FOUND, f"user {ident}")
        return user

    # ---- counts (stats) ------------------------------------------------------------------

    @property
    def streams_count(self) -> int:
        return len(self.streams)

    @property
    def topics_count(self) -> int:
        return sum(len(s.topics) for s in self.streams.values())

    @property
    def partitions_count(self) -> int:
        return sum(len(t.partitions) for s in self.streams.values() for t in s.topics.values())

    @property
    def groups_count(self) -> int:
        return sum(len(t.groups) for s in self.streams.values() for t in s.topics.values())

    # ---- consumer-group membership (runtime, not logged) ---------------------------------

    def join_group(self, topic: TopicMeta, group_id: int, client_id: int) -> MemberMeta:
        """Add the client to the group and fully rebalance; already a member: no change."""
        self._assert_live(topic)
        group = self.require_group(topic, group_id)
        member = self.member_of(group, client_id)
        if member is not None:
            return member
        member_id = max((m.id for m in group.members), default=-1) + 1
        member = MemberMeta(member_id, client_id)
        group.members.append(member)
        self._memberships.setdefault(client_id, set()).add((topic.stream_id, topic.id, group.id))
        # Section 4.5 allows the full rebalance on join in place of the cooperative one.
        _rebalance(group)
        return member

    def leave_group(self, topic: TopicMeta, group_id: int, client_id: int) -> None:
        self._assert_live(topic)
        group = self.require_group(topic, group_id)
        member = self.member_of(group, client_id)
        if member is None:
            raise IggyError(Status.CONSUMER_GROUP_MEMBER_NOT_FOUND, f"client {client_id}")
        self._remove_member(topic.stream_id, topic.id, group, member)

    def leave_all(self, client_id: int) -> list[GroupKey]:
        """Drop the client from every group it joined (disconnect); returns those groups."""
        keys = sorted(self._memberships.get(client_id, ()))
        for stream_id, topic_id, group_id in keys:
            group = self.streams[stream_id].topics[topic_id].groups[group_id]
            member = self.member_of(group, client_id)
            assert member is not None
            self._remove_member(stream_id, topic_id, group, member)
        assert client_id not in self._memberships
        return keys

    def _remove_member(self, stream_id: int, topic_id: int, group: GroupMeta, member: MemberMeta) -> None:
        group.members.remove(member)
        joined = self._memberships[member.client_id]
        joined.remove((stream_id, topic_id, group.id))
        if not joined:
            del self._memberships[member.client_id]
        _rebalance(group)

    def member_of(self, group: GroupMeta, client_id: int) -> MemberMeta | None:
        for member in group.members:
            if member.client_id == client_id:
                return member
        return None

    def next_partition(self, group: GroupMeta, client_id: int) -> int | None:
        """The member's next partition in its own round robin; None while it owns none."""
        member = self.member_of(group, client_id)
        if member is None:
            raise IggyError(Status.CONSUMER_GROUP_MEMBER_NOT_FOUND, f"client {client_id}")
        if not member.partitions:
            return None
        partition_id = member.partitions[member.cursor % len(member.partitions)]
        member.cursor = (member.cursor + 1) % len(member.partitions)
        return partition_id

    def client_groups(self, client_id: int) -> list[GroupKey]:
        return sorted(self._memberships.get(client_id, ()))

    def _assert_live(self, topic: TopicMeta) -> None:
        # Catches a caller holding a TopicMeta that a delete has already removed.
        stream = self.streams.get(topic.stream_id)
        assert stream is not None and stream.topics.get(topic.id) is topic, "stale TopicMeta"

    # ---- snapshot ------------------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        """The logged state as JSON-safe data (runtime memberships are left out)."""
        streams = []
        for stream in sorted(self.streams.values(), key=lambda s: s.id):
            topics = []
            for topic in sorted(stream.topics.values(), key=lambda t: t.id):
                topics.append(
                    {
                        "id": topic.id,
                        "name": topic.name,
                        "created_at_us": topic.created_at_us,
                        "compression_algorithm": topic.compression_algorithm,
                        "message_expiry": topic.message_expiry,
                        "max_topic_size": topic.max_topic_size,
                        "replication_factor": topic.replication_factor,
                        "options_hex": topic.options_hex,
                        "durability": topic.durability,
                        "consumer_offset_durability": topic.consumer_offset_durability,
                        "segment_size_bytes": topic.segment_size_bytes,
                        "flush_messages": topic.flush_messages,
                        "flush_bytes": topic.flush_bytes,
                        "partitions": [
                            [p.id, p.created_at_us] for p in sorted(topic.partitions.values(), key=_by_id)
                        ],
                        "group_ids": topic.group_ids.to_json(),
                        "groups": [
                            {"id": g.id, "name": g.name, "partition_ids": list(g.partition_ids)}
                            for g in sorted(topic.groups.values(), key=lambda g: g.id)
                        ],
                    }
                )
            streams.append(
                {
                    "id": stream.id,
                    "name": stream.name,
                    "created_at_us": stream.created_at_us,
                    "topic_ids": stream.topic_ids.to_json(),
                    "topics": topics,
                }
            )
        users = [
            {
                "id": u.id,
                "username": u.username,
                "password_hash": u.password_hash,
                "status": u.status,
                "permissions": permissions_to_json(u.permissions),
                "created_at_us": u.created_at_us,
                "tokens": [
                    {"name": p.name, "token_hash": p.token_hash, "expiry_at_us": p.expiry_at_us}
                    for p in sorted(u.tokens.values(), key=lambda p: p.name)
                ],
            }
            for u in sorted(self.users.values(), key=lambda u: u.id)
        ]
        return {
            "format": SNAPSHOT_FORMAT,
            "revision": self.revision,
            "stream_ids": self._stream_ids.to_json(),
            "user_ids": self._user_ids.to_json(),
            "streams": streams,
            "users": users,
        }

    @classmethod
    def from_snapshot(cls, d: dict[str, Any], defaults: MetadataDefaults) -> Metadata:
        if d.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported metadata snapshot format {d.get('format')!r}")
        md = cls(defaults)
        md.revision = int(d["revision"])
        md._stream_ids = SlotAllocator.from_json(d["stream_ids"])
        md._user_ids = SlotAllocator.from_json(d["user_ids"])
        for sd in d["streams"]:
            stream = StreamMeta(
                sd["id"], sd["name"], sd["created_at_us"], topic_ids=SlotAllocator.from_json(sd["topic_ids"])
            )
            for td in sd["topics"]:
                topic = TopicMeta(
                    id=td["id"],
                    stream_id=stream.id,
                    name=td["name"],
                    created_at_us=td["created_at_us"],
                    compression_algorithm=td["compression_algorithm"],
                    message_expiry=td["message_expiry"],
                    max_topic_size=td["max_topic_size"],
                    replication_factor=td["replication_factor"],
                    options_hex=td.get("options_hex", ""),
                    durability=td.get("durability", ""),
                    consumer_offset_durability=td.get("consumer_offset_durability", ""),
                    segment_size_bytes=td.get("segment_size_bytes", 0),
                    flush_messages=td.get("flush_messages", 0),
                    flush_bytes=td.get("flush_bytes", 0),
                    partitions={pid: PartitionMeta(pid, created) for pid, created in td["partitions"]},
                    group_ids=SlotAllocator.from_json(td["group_ids"]),
                )
                for gd in td["groups"]:
                    group = GroupMeta(gd["id"], gd["name"], list(gd["partition_ids"]))
                    topic.groups[group.id] = group
                    topic.group_ids_by_name[group.name] = group.id
                stream.topics[topic.id] = topic
                stream.topic_ids_by_name[topic.name] = topic.id
            md.streams[stream.id] = stream
            md._stream_ids_by_name[stream.name] = stream.id
        for ud in d["users"]:
            user = UserMeta(
                ud["id"],
                ud["username"],
                ud["password_hash"],
                ud["status"],
                permissions_from_json(ud["permissions"]),
                ud["created_at_us"],
            )
            for pd in ud["tokens"]:
                pat = PatMeta(pd["name"], pd["token_hash"], pd["expiry_at_us"])
                user.tokens[pat.name] = pat
                md._pats_by_hash[pat.token_hash] = (user.id, pat.name)
            md.users[user.id] = user
            md._user_ids_by_name[user.username] = user.id
        md.check_invariants()
        return md

    # ---- invariants ----------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Assert that derived indexes agree with the entities (called after loading, and by tests)."""
        _check_ids(self._stream_ids, self.streams)
        assert self._stream_ids_by_name == {s.name: s.id for s in self.streams.values()}
        memberships: dict[int, set[GroupKey]] = {}
        for stream in self.streams.values():
            _check_ids(stream.topic_ids, stream.topics)
            assert stream.topic_ids_by_name == {t.name: t.id for t in stream.topics.values()}
            for topic in stream.topics.values():
                assert topic.stream_id == stream.id
                assert sorted(topic.partitions) == list(range(len(topic.partitions)))
                assert all(p.id == pid for pid, p in topic.partitions.items())
                _check_ids(topic.group_ids, topic.groups)
                assert topic.group_ids_by_name == {g.name: g.id for g in topic.groups.values()}
                for group in topic.groups.values():
                    assert group.partition_ids == sorted(topic.partitions)
                    if group.members:
                        owned = sorted(p for m in group.members for p in m.partitions)
                        assert owned == group.partition_ids, "every partition owned exactly once"
                    assert len({m.id for m in group.members}) == len(group.members)
                    for member in group.members:
                        memberships.setdefault(member.client_id, set()).add((stream.id, topic.id, group.id))
        assert memberships == self._memberships
        _check_ids(self._user_ids, self.users)
        assert self._user_ids_by_name == {u.username: u.id for u in self.users.values()}
        pats = {p.token_hash: (u.id, p.name) for u in self.users.values() for p in u.tokens.values()}
        assert pats == self._pats_by_hash


def _by_id(p: PartitionMeta) -> int:
    return p.id


def _check_ids(alloc: SlotAllocator, entities: dict[int, Any]) -> None:
    assert all(getattr(e, "id", k) == k for k, e in entities.items())
    assert all(0 <= k < alloc.next_id for k in entities)
    assert not set(alloc.free) & set(entities), "a live id is on the free list"
    assert len(entities) + len(alloc.free) == alloc.next_id, "every id below next is live or free"
