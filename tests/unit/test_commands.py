from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidelog.permissions import (
    ROOT_PERMISSIONS,
    GlobalPermissions,
    Permissions,
    StreamPermissions,
    TopicPermissions,
)
from tidelog.wire.codes import (
    NO_USER_ID,
    U32_MAX,
    U64_MAX,
    Command,
    CompressionAlgorithm,
    IggyError,
    Status,
    UserStatus,
)
from tidelog.wire.primitives import (
    ClusterNodeStatus,
    Consumer,
    ConsumerKind,
    HeaderKind,
    PartitioningKind,
    PollingKind,
    Reader,
    SnapshotCompression,
    SnapshotType,
    Transport,
    Writer,
    decode_optional_permissions,
    decode_permissions,
    encode_identifier,
    encode_optional_permissions,
    encode_permissions,
    identifier_from_user,
)
from tidelog.wire.records import (
    CacheMetric,
    ClientDetails,
    ClientInfo,
    ClusterMetadata,
    ClusterNode,
    ConsumerGroupDetails,
    ConsumerGroupInfo,
    ConsumerGroupMember,
    ConsumerOffsetInfo,
    Identity,
    PartitionInfo,
    PersonalAccessTokenInfo,
    PollHeader,
    RawPersonalAccessToken,
    Stats,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    UserDetails,
    UserInfo,
    decode_list,
    decode_poll_reply,
    decode_record,
    encode_list,
)
from tidelog.wire.requests import (
    REQUEST_TYPES,
    ChangePassword,
    CreateConsumerGroup,
    CreatePartitions,
    CreatePersonalAccessToken,
    CreateStream,
    CreateTopic,
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
    LoginUser,
    LoginWithPersonalAccessToken,
    LogoutUser,
    OutgoingMessage,
    Partitioning,
    Ping,
    PollMessages,
    PurgeStream,
    PurgeTopic,
    SendMessagesHeader,
    StoreConsumerOffset,
    UpdatePermissions,
    UpdateStream,
    UpdateTopic,
    UpdateUser,
    decode_request,
    encode_send_messages,
)
from tidelog.wire.user_headers import decode_user_headers, encode_user_headers

SOME_PERMISSIONS = Permissions(
    GlobalPermissions(read_streams=True, poll_messages=True),
    {
        3: StreamPermissions(manage_stream=True, topics={1: TopicPermissions(send_messages=True)}),
        7: StreamPermissions(
            read_topics=True,
            topics={0: TopicPermissions(read_topic=True), 5: TopicPermissions(manage_topic=True)},
        ),
    },
)
CONSUMER = Consumer(ConsumerKind.CONSUMER, 1)
GROUP = Consumer(ConsumerKind.CONSUMER_GROUP, "grp")

ALL_REQUESTS: list[Any] = [
    Ping(),
    GetStats(),
    GetSnapshot(SnapshotCompression.DEFLATED, (SnapshotType.PROCESS_LIST, SnapshotType.SERVER_LOGS)),
    GetClusterMetadata(),
    GetMe(),
    GetClient(42),
    GetClients(),
    GetUser("alice"),
    GetUsers(),
    CreateUser("alice", "secret", UserStatus.INACTIVE, SOME_PERMISSIONS),
    DeleteUser(5),
    UpdateUser(5, "bob", UserStatus.ACTIVE),
    UpdatePermissions("alice", ROOT_PERMISSIONS),
    ChangePassword(0, "old-pw", "new-pw"),
    LoginUser("iggy", "iggy", "0.10.0", "ctx"),
    LogoutUser(),
    GetPersonalAccessTokens(),
    CreatePersonalAccessToken("token-1", 3_600_000_000),
    DeletePersonalAccessToken("token-1"),
    LoginWithPersonalAccessToken("A" * 68),
    PollMessages(GROUP, "test", 2, 7, PollingKind.TIMESTAMP, 1_700_000_000_000_000, 100, False),
    FlushUnsavedBuffer(0, "events", 3, True),
    GetConsumerOffset(CONSUMER, 0, 0, None),
    StoreConsumerOffset(GROUP, "s", "t", 9, U64_MAX),
    DeleteConsumerOffset(CONSUMER, 1, 2, 3),
    GetStream(0),
    GetStreams(),
    CreateStream("ströme"),
    DeleteStream("test"),
    UpdateStream(1, "renamed"),
    PurgeStream(U32_MAX),
    GetTopic(0, "events"),
    GetTopics("test"),
    CreateTopic("test", 1000, CompressionAlgorithm.GZIP, U64_MAX, 2 << 30, 3, "events"),
    DeleteTopic(0, 1),
    UpdateTopic(0, "events", CompressionAlgorithm.NONE, 0, U64_MAX, 0, "events-2"),
    PurgeTopic("a", "b"),
    CreatePartitions(0, 0, 10),
    DeletePartitions(0, 0, 2),
    DeleteSegments(0, 0, 1, 4),
    GetConsumerGroup(0, 0, "grp"),
    GetConsumerGroups(0, 0),
    CreateConsumerGroup(0, 0, "grp"),
    DeleteConsumerGroup(0, 0, 1),
    JoinConsumerGroup("s", "t", "grp"),
    LeaveConsumerGroup("s", "t", 0),
]


def status_of(fn: Any, *args: Any) -> Status:
    with pytest.raises(IggyError) as err:
        fn(*args)
    return err.value.status


# --- request round trips ----------------------------------------------------------------------


def test_request_types_given_table_should_cover_every_command_once() -> None:
    assert set(REQUEST_TYPES) == {int(c) for c in Command}
    assert {type(r) for r in ALL_REQUESTS} == set(REQUEST_TYPES.values()) - {SendMessagesHeader}


@pytest.mark.parametrize("request_", ALL_REQUESTS, ids=lambda r: type(r).__name__)
def test_request_given_value_when_encoded_and_decoded_should_round_trip(request_: Any) -> None:
    payload = request_.encode()
    assert decode_request(request_.CODE, memoryview(payload)) == request_
    assert type(request_).decode(payload) == request_


@pytest.mark.parametrize("request_", [r for r in ALL_REQUESTS if r.encode()], ids=lambda r: type(r).__name__)
def test_request_given_truncated_payload_should_raise_invalid_command(request_: Any) -> None:
    payload = request_.encode()
    for cut in range(len(payload)):
        assert status_of(decode_request, request_.CODE, payload[:cut]) == Status.INVALID_COMMAND


def test_request_given_trailing_bytes_should_ignore_them() -> None:
    assert CreateStream.decode(CreateStream("x").encode() + b"junk") == CreateStream("x")
    assert Ping.decode(b"whatever") == Ping()


def test_decode_request_given_unknown_code_should_raise_invalid_command() -> None:
    assert status_of(decode_request, 13, b"") == Status.INVALID_COMMAND
    assert status_of(decode_request, 606, b"") == Status.INVALID_COMMAND


def test_login_user_given_defaults_should_send_sdk_version_and_no_context() -> None:
    assert LoginUser("iggy", "iggy").encode().endswith(b"\x06\x00\x00\x000.10.0\x00\x00\x00\x00")


def test_update_user_given_nothing_to_change_should_encode_two_absent_flags() -> None:
    assert UpdateUser(1).encode() == encode_identifier(1) + b"\x00\x00"
    assert UpdateUser.decode(UpdateUser(1).encode()) == UpdateUser(1, None, None)


def test_poll_messages_given_absent_partition_should_send_flag_0_value_0() -> None:
    payload = PollMessages(CONSUMER, 0, 0, None, PollingKind.FIRST, 0, 1, False).encode()
    assert payload[19:24] == b"\x00\x00\x00\x00\x00"


def test_opt_partition_given_flag_other_than_1_should_mean_absent() -> None:
    payload = bytearray(GetConsumerOffset(CONSUMER, 0, 0, 5).encode())
    payload[-5] = 2
    assert GetConsumerOffset.decode(payload).partition_id is None


# --- request validation errors ----------------------------------------------------------------


def test_identifier_given_unknown_kind_should_raise_invalid_command() -> None:
    assert status_of(GetStream.decode, bytes.fromhex("03 04 00000000")) == Status.INVALID_COMMAND


def test_identifier_given_numeric_length_5_should_raise_invalid_format() -> None:
    assert status_of(GetStream.decode, bytes.fromhex("01 05 0000000000")) == Status.INVALID_FORMAT


def test_identifier_given_empty_string_should_raise_invalid_format() -> None:
    assert status_of(GetStream.decode, bytes.fromhex("02 00")) == Status.INVALID_FORMAT


def test_identifier_given_invalid_utf8_should_raise_invalid_command() -> None:
    assert status_of(GetStream.decode, bytes.fromhex("02 02 c328")) == Status.INVALID_COMMAND


def test_name_given_length_0_should_raise_invalid_format() -> None:
    assert status_of(CreateStream.decode, b"\x00") == Status.INVALID_FORMAT


def test_name_given_invalid_utf8_should_raise_invalid_command() -> None:
    assert status_of(CreateStream.decode, b"\x02\xff\xfe") == Status.INVALID_COMMAND


def test_consumer_given_kind_3_should_raise_invalid_command() -> None:
    payload = bytearray(GetConsumerOffset(CONSUMER, 0, 0, None).encode())
    payload[0] = 3
    assert status_of(GetConsumerOffset.decode, payload) == Status.INVALID_COMMAND


@pytest.mark.parametrize("kind", [0, 6, 255])
def test_poll_messages_given_bad_polling_kind_should_raise_invalid_command(kind: int) -> None:
    payload = bytearray(PollMessages(CONSUMER, 0, 0, 0, PollingKind.NEXT, 0, 10, True).encode())
    payload[24] = kind
    assert status_of(PollMessages.decode, payload) == Status.INVALID_COMMAND


@pytest.mark.parametrize("compression", [0, 3])
def test_create_topic_given_bad_compression_should_raise_invalid_command(compression: int) -> None:
    bad = CreateTopic(0, 1, compression, 0, 0, 0, "t")
    assert status_of(CreateTopic.decode, bad.encode()) == Status.INVALID_COMMAND
    bad_update = UpdateTopic(0, 0, compression, 0, 0, 0, "t")
    assert status_of(UpdateTopic.decode, bad_update.encode()) == Status.INVALID_COMMAND


def test_create_user_given_bad_status_should_raise_invalid_command() -> None:
    assert status_of(CreateUser.decode, CreateUser("abc", "pwd", 3).encode()) == Status.INVALID_COMMAND
    assert status_of(UpdateUser.decode, UpdateUser(1, None, 0).encode()) == Status.INVALID_COMMAND


def test_create_user_given_permission_length_mismatch_should_raise_invalid_format() -> None:
    payload = bytearray(CreateUser("abc", "pwd", UserStatus.ACTIVE, SOME_PERMISSIONS).encode())
    at = 1 + 3 + 1 + 3 + 1 + 1  # username, password, status, has_permissions
    (perm_len,) = struct.unpack_from("<I", payload, at)
    for wrong in (perm_len - 1, perm_len + 1):
        struct.pack_into("<I", payload, at, wrong)
        assert status_of(CreateUser.decode, payload) == Status.INVALID_FORMAT


def test_create_user_given_empty_password_should_decode_for_the_server_to_reject() -> None:
    # The codec only frames the password; the 3..100 rule (-> 44) belongs to the server.
    assert CreateUser.decode(CreateUser("abc", "").encode()).password == ""


def test_get_snapshot_given_all_combined_with_others_should_raise_invalid_command() -> None:
    combined = GetSnapshot(SnapshotCompression.STORED, (SnapshotType.ALL, SnapshotType.TEST))
    assert status_of(GetSnapshot.decode, combined.encode()) == Status.INVALID_COMMAND
    assert status_of(GetSnapshot.decode, GetSnapshot(7, ()).encode()) == Status.INVALID_COMMAND
    assert status_of(GetSnapshot.decode, GetSnapshot(1, (7,)).encode()) == Status.INVALID_COMMAND


# --- identifiers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7),
        ("+7", 7),
        ("007", 7),
        ("4294967295", U32_MAX),
        ("4294967296", "4294967296"),
        ("-1", "-1"),
        (" 7", " 7"),
        ("7 ", "7 "),
        ("1_000", "1_000"),
        ("\u0663", "\u0663"),  # a non-ASCII digit: Rust's u32 parser refuses it
        ("test", "test"),
        (0, 0),
        (U32_MAX, U32_MAX),
    ],
)
def test_identifier_from_user_given_value_should_follow_sdk_rule(
    value: int | str, expected: int | str
) -> None:
    assert identifier_from_user(value) == expected


@pytest.mark.parametrize("value", ["", "x" * 256, -1, U32_MAX + 1])
def test_identifier_from_user_given_unencodable_value_should_raise_value_error(value: int | str) -> None:
    with pytest.raises(ValueError):
        identifier_from_user(value)


def test_encode_identifier_given_examples_should_match_section_2_1() -> None:
    assert encode_identifier(0) == bytes.fromhex("01 04 00000000")
    assert encode_identifier("test") == bytes.fromhex("02 04 74657374")


identifiers = st.one_of(
    st.integers(min_value=0, max_value=U32_MAX),
    st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255),
)
names = st.text(min_size=1, max_size=80).filter(lambda s: len(s.encode()) <= 255)


@given(identifiers)
def test_identifier_given_any_value_when_round_tripped_should_be_equal(value: int | str) -> None:
    assert Reader(encode_identifier(value)).identifier() == value


@given(names)
def test_name_given_any_text_when_round_tripped_should_be_equal(name: str) -> None:
    w = Writer()
    w.name(name)
    r = Reader(w.getvalue())
    assert r.name() == name and r.remaining == 0


# --- permissions ------------------------------------------------------------------------------

flags = st.booleans()
topic_perms = st.builds(TopicPermissions, flags, flags, flags, flags)
stream_perms = st.builds(
    StreamPermissions,
    flags,
    flags,
    flags,
    flags,
    flags,
    flags,
    st.dictionaries(st.integers(0, U32_MAX), topic_perms, max_size=4),
)
permissions = st.builds(
    Permissions,
    st.builds(GlobalPermissions, *([flags] * 10)),
    st.dictionaries(st.integers(0, U32_MAX), stream_perms, max_size=4),
)


@given(permissions)
def test_permissions_given_any_value_when_round_tripped_should_be_equal(p: Permissions) -> None:
    block = encode_permissions(p)
    topics = sum(len(s.topics) for s in p.streams.values())
    assert len(block) == 11 + sum(4 + 6 + 1 + 1 for _ in p.streams) + 9 * topics
    assert decode_permissions(block) == p
    assert decode_optional_permissions(encode_optional_permissions(p)) == p


def test_optional_permissions_given_none_should_be_one_zero_byte() -> None:
    assert encode_optional_permissions(None) == b"\x00"
    assert decode_optional_permissions(b"\x00") is None


def test_permissions_given_nested_entries_should_use_has_next_flags() -> None:
    p = Permissions(
        GlobalPermissions(),
        {1: StreamPermissions(topics={2: TopicPermissions(poll_messages=True)}), 4: StreamPermissions()},
    )
    expected = (
        bytes(10)
        + b"\x01"
        + struct.pack("<I", 1)
        + bytes(6)
        + b"\x01"
        + struct.pack("<I", 2)
        + b"\x00\x00\x01\x00"
        + b"\x00"  # last topic
        + b"\x01"  # another stream follows
        + struct.pack("<I", 4)
        + bytes(6)
        + b"\x00"  # no topics
        + b"\x00"  # last stream
    )
    assert encode_permissions(p) == expected


@given(
    names.filter(lambda s: len(s.encode()) <= 50),
    st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255),
    st.sampled_from(list(UserStatus)),
    st.one_of(st.none(), permissions),
)
def test_create_user_given_any_fields_when_round_tripped_should_be_equal(
    username: str, password: str, status: UserStatus, p: Permissions | None
) -> None:
    request = CreateUser(username, password, status, p)
    assert CreateUser.decode(request.encode()) == request


@given(
    identifiers,
    st.integers(0, U32_MAX),
    st.sampled_from(list(CompressionAlgorithm)),
    st.integers(0, U64_MAX),
    st.integers(0, U64_MAX),
    st.integers(0, 255),
    names,
)
def test_create_topic_given_any_fields_when_round_tripped_should_be_equal(
    stream_id: int | str,
    partitions: int,
    compression: CompressionAlgorithm,
    expiry: int,
    size: int,
    replication: int,
    name: str,
) -> None:
    request = CreateTopic(stream_id, partitions, compression, expiry, size, replication, name)
    assert CreateTopic.decode(request.encode()) == request


@given(
    st.builds(Consumer, st.sampled_from(list(ConsumerKind)), identifiers),
    identifiers,
    identifiers,
    st.one_of(st.none(), st.integers(0, U32_MAX)),
    st.sampled_from(list(PollingKind)),
    st.integers(0, U64_MAX),
    st.integers(0, U32_MAX),
    st.booleans(),
)
def test_poll_messages_given_any_fields_when_round_tripped_should_be_equal(
    consumer: Consumer,
    stream_id: int | str,
    topic_id: int | str,
    partition_id: int | None,
    kind: PollingKind,
    value: int,
    count: int,
    auto_commit: bool,
) -> None:
    request = PollMessages(consumer, stream_id, topic_id, partition_id, kind, value, count, auto_commit)
    assert PollMessages.decode(request.encode()) == request


# --- response records -------------------------------------------------------------------------

TOPIC = TopicInfo(1, 10, 2, U64_MAX, CompressionAlgorithm.NONE, U64_MAX, 1, 500, 7, "events")
PARTITIONS = [PartitionInfo(0, 10, 1, 3, 300, 4), PartitionInfo(1, 11, 1, 2, 200, 3)]
STREAM = StreamInfo(0, 5, 1, 500, 7, "test")
GROUP_INFO = ConsumerGroupInfo(0, 2, 2, "grp")
USER = UserInfo(1, 99, UserStatus.ACTIVE, "alice")
CLIENT = ClientInfo(123456, NO_USER_ID, Transport.TCP, "127.0.0.1:54321", 1)
STATS = Stats(
    process_id=4242,
    cpu_usage=12.5,
    total_cpu_usage=50.25,
    memory_usage_bytes=1 << 30,
    total_memory_bytes=16 << 30,
    available_memory_bytes=8 << 30,
    run_time_us=10_000_000,
    start_time_us=1_700_000_000_000_000,
    read_bytes=1,
    written_bytes=2,
    messages_size_bytes=3,
    streams_count=4,
    topics_count=5,
    partitions_count=6,
    segments_count=7,
    messages_count=8,
    clients_count=9,
    consumer_groups_count=10,
    hostname="host",
    os_name="Linux",
    os_version="6.1",
    kernel_version="6.1.0",
    iggy_server_version="0.8.0",
    iggy_server_semver=8000,
    cache_metrics=[CacheMetric(0, 0, 0, 10, 2, 0.75)],
    threads_count=16,
    free_disk_space_bytes=100 << 30,
    total_disk_space_bytes=500 << 30,
)

ALL_RECORDS: list[Any] = [
    STREAM,
    StreamDetails(STREAM, [TOPIC]),
    StreamDetails(StreamInfo(1, 5, 0, 0, 0, "empty"), []),
    TOPIC,
    TopicDetails(TOPIC, PARTITIONS),
    PARTITIONS[0],
    GROUP_INFO,
    ConsumerGroupDetails(GROUP_INFO, [ConsumerGroupMember(0, [0]), ConsumerGroupMember(1, [1, 2])]),
    ConsumerOffsetInfo(0, 10, 7),
    USER,
    UserDetails(USER, SOME_PERMISSIONS),
    UserDetails(USER, None),
    CLIENT,
    ClientDetails(CLIENT, [(0, 1, 2)]),
    PersonalAccessTokenInfo("token-1", 0),
    RawPersonalAccessToken("A" * 68),
    Identity(3),
    ClusterMetadata(
        "single-node",
        [ClusterNode("iggy-node", "127.0.0.1", 8090, 8080, 3000, 8092, 1, ClusterNodeStatus.MAINTENANCE)],
    ),
    STATS,
    Stats(),
    PollHeader(0, 1, 2),
]


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: type(r).__name__)
def test_record_given_value_when_encoded_and_decoded_should_round_trip(record: Any) -> None:
    encoded = record.encode()
    r = Reader(encoded)
    assert type(record).decode(r) == record
    assert r.remaining == 0


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: type(r).__name__)
def test_record_given_truncated_bytes_should_raise_invalid_command(record: Any) -> None:
    encoded = record.encode()
    # Cuts at a record boundary inside a Details list are caught by the announced counts.
    for cut in range(len(encoded)):
        with pytest.raises(IggyError) as err:
            decode_record(type(record), encoded[:cut])
        assert err.value.status == Status.INVALID_COMMAND


def test_decode_list_given_concatenated_records_should_read_until_end() -> None:
    streams = [STREAM, StreamInfo(1, 6, 0, 0, 0, "other")]
    assert decode_list(StreamInfo, encode_list(streams)) == streams
    assert decode_list(UserInfo, b"") == []
    clients = [CLIENT, ClientInfo(1, 0, Transport.QUIC, "[::1]:1", 0)]
    assert decode_list(ClientInfo, encode_list(clients)) == clients


def test_user_details_given_no_permissions_should_end_with_four_zero_bytes() -> None:
    assert UserDetails(USER, None).encode() == USER.encode() + bytes(4)
    block = encode_permissions(SOME_PERMISSIONS)
    assert UserDetails(USER, SOME_PERMISSIONS).encode() == (
        USER.encode() + b"\x01" + struct.pack("<I", len(block)) + block
    )


def test_stream_details_given_topic_count_mismatch_should_raise_invalid_command() -> None:
    encoded = StreamInfo(0, 5, 2, 0, 0, "test").encode() + TOPIC.encode()
    assert status_of(decode_record, StreamDetails, encoded) == Status.INVALID_COMMAND


def test_topic_details_given_partition_count_mismatch_should_raise_invalid_command() -> None:
    encoded = TOPIC.encode() + PARTITIONS[0].encode()
    assert status_of(decode_record, TopicDetails, encoded) == Status.INVALID_COMMAND


def test_stats_given_fixed_part_should_be_108_bytes_before_hostname() -> None:
    encoded = Stats(hostname="h").encode()
    assert struct.unpack_from("<I", encoded, 108)[0] == 1 and encoded[112:113] == b"h"
    assert len(Stats().encode()) == 108 + 5 * 4 + 4 + 4 + 4 + 8 + 8


def test_cluster_node_given_unknown_status_should_raise_invalid_command() -> None:
    encoded = bytearray(ClusterNode("n", "ip", 1, 2, 3, 4).encode())
    encoded[-1] = 5
    assert status_of(ClusterNode.decode, Reader(encoded)) == Status.INVALID_COMMAND


# --- SendMessages -----------------------------------------------------------------------------

MESSAGES = [
    OutgoingMessage(b"first", id=(1 << 127) + 5, user_headers=b"\x02\x01\x00\x00\x00k\x02\x01\x00\x00\x00v"),
    OutgoingMessage(b"", id=0, origin_timestamp_us=17),
    OutgoingMessage(b"x" * 300, id=9),
]


def test_send_messages_header_given_encoded_batch_should_locate_index_and_messages() -> None:
    payload = encode_send_messages("test", 3, Partitioning.messages_key(b"key"), MESSAGES)
    header = SendMessagesHeader.decode(memoryview(payload))
    assert (header.stream_id, header.topic_id) == ("test", 3)
    assert header.partitioning == Partitioning(PartitioningKind.MESSAGES_KEY, b"key")
    assert header.messages_count == 3
    sizes = [64 + len(m.payload) + len(m.user_headers) for m in MESSAGES]
    index = [
        struct.unpack_from("<IIQ", payload, header.index_offset + 16 * i)
        for i in range(header.messages_count)
    ]
    assert index == [(0, sum(sizes[: i + 1]), 0) for i in range(3)]
    assert header.messages_offset == header.index_offset + 48
    assert header.messages_size_bytes == sum(sizes) == len(payload) - header.messages_offset


def test_send_messages_given_area_as_poll_reply_should_give_back_messages() -> None:
    payload = encode_send_messages(0, 0, Partitioning.partition_id(2), MESSAGES)
    header = SendMessagesHeader.decode(payload)
    reply = PollHeader(2, 2, 3).encode() + payload[header.messages_offset :]
    poll_header, polled = decode_poll_reply(reply)
    assert poll_header == PollHeader(2, 2, 3)
    assert [(m.id, bytes(m.payload), bytes(m.user_headers)) for m in polled] == [
        (m.id, m.payload, m.user_headers) for m in MESSAGES
    ]
    assert [m.origin_timestamp_us for m in polled] == [0, 17, 0]
    assert {(m.checksum, m.offset, m.timestamp_us, m.reserved) for m in polled} == {(0, 0, 0, 0)}


def test_send_messages_header_given_staged_prefix_should_use_declared_length() -> None:
    payload = encode_send_messages(0, 0, Partitioning.balanced(), MESSAGES)
    full = SendMessagesHeader.decode(payload)
    prefix = payload[: full.index_offset]
    assert SendMessagesHeader.decode(prefix, payload_length=len(payload)) == full
    short = len(prefix) + 16 * 3 - 1
    assert status_of(SendMessagesHeader.decode, prefix, short) == Status.INVALID_COMMAND


def send_payload(metadata: bytes, count: int = 1, extra: bytes = b"") -> bytes:
    return struct.pack("<I", len(metadata) + 4) + metadata + struct.pack("<I", count) + extra


IDS = encode_identifier(0) + encode_identifier(0)
ONE_INDEX = bytes(16)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (struct.pack("<I", 500) + IDS, Status.INVALID_COMMAND),  # metadata over the payload
        (b"\x01\x00", Status.INVALID_COMMAND),  # truncated metadata_length
        (send_payload(bytes.fromhex("03 04 00000000") + encode_identifier(0) + b"\x01\x00"), 6),
        (send_payload(bytes.fromhex("01 05 00000000") + encode_identifier(0) + b"\x01\x00"), 6),
        (send_payload(encode_identifier(0) + bytes.fromhex("02 00") + b"\x01\x00"), 6),
        (send_payload(IDS + b"\x04\x00", extra=ONE_INDEX), Status.INVALID_COMMAND),  # kind 4
        (send_payload(IDS + b"\x01\x01\x00", extra=ONE_INDEX), Status.INVALID_COMMAND),  # balanced len 1
        (send_payload(IDS + b"\x02\x03\x00\x00\x00", extra=ONE_INDEX), Status.INVALID_COMMAND),
        (send_payload(IDS + b"\x01\x00", count=0), Status.INVALID_MESSAGES_COUNT),
        (send_payload(IDS + b"\x01\x00", count=2, extra=ONE_INDEX), Status.INVALID_COMMAND),  # index
        # metadata_length says one byte more than the fields it holds
        (struct.pack("<I", len(IDS) + 2 + 5) + IDS + b"\x01\x00" + bytes(5) + ONE_INDEX, 3),
    ],
    ids=[
        "metadata-too-long",
        "truncated-length",
        "stream-kind",
        "stream-numeric-length",
        "topic-empty-name",
        "partitioning-kind",
        "balanced-length",
        "partition-id-length",
        "count-zero",
        "index-table-too-short",
        "metadata-length-mismatch",
    ],
)
def test_send_messages_header_given_bad_metadata_should_raise_documented_status(
    payload: bytes, status: int
) -> None:
    assert status_of(SendMessagesHeader.decode, payload) == status


def test_send_messages_header_given_empty_messages_key_should_accept_it() -> None:
    payload = send_payload(IDS + b"\x03\x00", extra=ONE_INDEX)
    assert SendMessagesHeader.decode(payload).partitioning == Partitioning(PartitioningKind.MESSAGES_KEY)


def test_decode_request_given_send_messages_should_return_header() -> None:
    payload = encode_send_messages(0, 0, Partitioning.balanced(), MESSAGES[:1])
    assert isinstance(decode_request(Command.SEND_MESSAGES, payload), SendMessagesHeader)


# --- poll reply -------------------------------------------------------------------------------

STORED = encode_send_messages(0, 0, Partitioning.balanced(), MESSAGES)[4 + 18 + 48 :]


def test_decode_poll_reply_given_truncated_tail_should_stop_silently() -> None:
    reply = PollHeader(0, 2, 3).encode() + STORED
    for cut in (1, 10, 64, 64 + 300):
        _, polled = decode_poll_reply(reply[:-cut])
        assert [m.id for m in polled] == [m.id for m in MESSAGES[:2]]


def test_decode_poll_reply_given_nonzero_reserved_should_raise_invalid_reserved_field() -> None:
    reply = bytearray(PollHeader(0, 2, 3).encode() + STORED)
    first_size = 64 + len(MESSAGES[0].payload) + len(MESSAGES[0].user_headers)
    reply[16 + first_size + 56] = 1  # reserved of the second message
    assert status_of(decode_poll_reply, reply) == Status.INVALID_RESERVED_FIELD


def test_decode_poll_reply_given_short_header_should_raise_invalid_command() -> None:
    assert status_of(decode_poll_reply, bytes(15)) == Status.INVALID_COMMAND


def test_decode_poll_reply_given_bytes_should_return_views_into_them() -> None:
    reply = PollHeader(0, 2, 3).encode() + STORED
    _, polled = decode_poll_reply(reply)
    assert all(m.payload.obj is reply and m.user_headers.obj is reply for m in polled)


# --- user headers -----------------------------------------------------------------------------


def test_user_headers_given_mixed_kinds_should_round_trip_sorted_by_key() -> None:
    headers: dict[str | bytes, tuple[int, bytes]] = {
        "b-int": (HeaderKind.UINT64, struct.pack("<Q", 7)),
        "a-flag": (HeaderKind.BOOL, b"\x01"),
        b"\x00raw": (HeaderKind.RAW, b"\xff\xfe"),
    }
    encoded = encode_user_headers(headers)
    assert decode_user_headers(encoded) == headers
    assert encoded.index(b"\x00raw") < encoded.index(b"a-flag") < encoded.index(b"b-int")


def test_user_headers_given_wrong_fixed_size_should_refuse() -> None:
    with pytest.raises(ValueError):
        encode_user_headers({"n": (HeaderKind.UINT32, b"\x01\x02")})
    bad = b"\x02\x01\x00\x00\x00n" + b"\x0b\x02\x00\x00\x00\x01\x02"
    assert status_of(decode_user_headers, bad) == Status.INVALID_FORMAT


def test_user_headers_given_key_without_value_should_raise_invalid_format() -> None:
    assert status_of(decode_user_headers, b"\x02\x01\x00\x00\x00k") == Status.INVALID_FORMAT
