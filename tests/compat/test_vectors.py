"""Golden frames of the protocol reference (sections 1.5, 3.7, 3.8, 4.2 and 9), byte for byte.

Requests: the server-side decoders yield the documented values and the client-side
encoders reproduce the captured/derived bytes. Replies: the server-side encoders produce
the documented bytes and the client-side decoders read them back.
"""

from __future__ import annotations

import struct

import pytest
import xxhash

from tidelog.permissions import ROOT_PERMISSIONS, Permissions
from tidelog.wire.codes import MESSAGE_HEADER_SIZE, U64_MAX, Command, CompressionAlgorithm, IggyError, Status
from tidelog.wire.framing import (
    FrameDecoder,
    encode_request,
    error_frame,
    ok_header,
)
from tidelog.wire.primitives import (
    Consumer,
    ConsumerKind,
    HeaderKind,
    PartitioningKind,
    PollingKind,
    decode_permissions,
    encode_permissions,
)
from tidelog.wire.records import (
    ClusterMetadata,
    ClusterNode,
    Identity,
    PartitionInfo,
    PollHeader,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    decode_poll_reply,
    decode_record,
)
from tidelog.wire.requests import (
    CreateStream,
    CreateTopic,
    GetStream,
    LoginUser,
    OutgoingMessage,
    Partitioning,
    Ping,
    PollMessages,
    SendMessagesHeader,
    StoreConsumerOffset,
    decode_request,
    encode_send_messages,
)
from tidelog.wire.user_headers import decode_user_headers, encode_user_headers

T_STREAM_US = 1700000000000000
T_TOPIC_US = 1700000000100000
ORIGIN_US = 1700000000200000
TS_US = 1700000000300000


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def split_request(frame: bytes) -> tuple[int, memoryview]:
    """Run a whole request frame through the server-side decoder."""
    frames = FrameDecoder(is_response=False).feed(frame)
    assert len(frames) == 1
    return frames[0]


def reply(payload: bytes) -> bytes:
    return ok_header(len(payload)) + payload


STREAM_TEST = StreamInfo(0, T_STREAM_US, 0, 0, 0, "test")
TOPIC_EVENTS = TopicInfo(
    id=0,
    created_at_us=T_TOPIC_US,
    partitions_count=1,
    message_expiry=U64_MAX,
    compression_algorithm=CompressionAlgorithm.NONE,
    max_topic_size=U64_MAX,
    replication_factor=1,
    size_bytes=0,
    messages_count=0,
    name="events",
)


# --- 9.1 / 9.2 --------------------------------------------------------------------------------


def test_ping_given_vector_when_encoded_and_decoded_should_match_9_1() -> None:
    request = h("04000000 01000000")
    assert encode_request(Ping.CODE, Ping().encode()) == request
    code, payload = split_request(request)
    assert code == Command.PING and decode_request(code, payload) == Ping()
    assert ok_header(0) == h("00000000 00000000")


@pytest.mark.parametrize(
    ("status", "frame"),
    [
        (Status.UNAUTHENTICATED, "28000000 00000000"),
        (Status.INVALID_CREDENTIALS, "2a000000 00000000"),
        (Status.STREAM_NAME_ALREADY_EXISTS, "f4030000 00000000"),
        (Status.INVALID_OFFSET, "04100000 00000000"),
    ],
)
def test_error_frame_given_status_when_encoded_should_match_9_2(status: Status, frame: str) -> None:
    assert error_frame(status) == h(frame)
    assert FrameDecoder(is_response=True).feed(h(frame)) == [(status, memoryview(b""))]


# --- 1.5 / 9.3 login ----------------------------------------------------------------------------

LOGIN = h("1c000000 26000000 04 69676779 04 69676779 06000000 302e31302e30 00000000")


def test_login_user_given_captured_frame_when_decoded_should_give_iggy_credentials() -> None:
    code, payload = split_request(LOGIN)
    assert (code, len(payload)) == (Command.LOGIN_USER, 24)  # length 28 - code
    assert decode_request(code, payload) == LoginUser("iggy", "iggy", "0.10.0", "")


def test_login_user_given_sdk_defaults_when_encoded_should_reproduce_captured_frame() -> None:
    assert encode_request(LoginUser.CODE, LoginUser("iggy", "iggy").encode()) == LOGIN


def test_identity_given_root_when_encoded_should_match_9_3_reply() -> None:
    frame = h("00000000 04000000 00000000")
    assert reply(Identity(0).encode()) == frame
    [(status, payload)] = FrameDecoder(is_response=True).feed(frame)
    assert status == 0 and decode_record(Identity, payload) == Identity(0)


# --- 9.4 create_stream ------------------------------------------------------------------------

CREATE_STREAM_REPLY = h(
    "00000000250000000000000000401e18240a060000000000000000000000000000000000000000000474657374"
)


def test_create_stream_given_vector_when_decoded_and_encoded_should_match_9_4() -> None:
    request = h("09000000 ca000000 04 74657374")
    code, payload = split_request(request)
    assert decode_request(code, payload) == CreateStream("test")
    assert encode_request(CreateStream.CODE, CreateStream("test").encode()) == request


def test_stream_info_given_new_stream_when_encoded_should_match_9_4_reply() -> None:
    assert len(CREATE_STREAM_REPLY) == 45
    assert reply(STREAM_TEST.encode()) == CREATE_STREAM_REPLY
    assert decode_record(StreamInfo, CREATE_STREAM_REPLY[8:]) == STREAM_TEST


# --- 9.5 create_topic -------------------------------------------------------------------------

CREATE_TOPIC = h(
    "27000000 2e010000 01 04 00000000 01000000 01 0000000000000000 0000000000000000 00 06 6576656e7473"
)
CREATE_TOPIC_REPLY = h(
    "000000006100000000000000a0c61f18240a060001000000ffffffffffffffff01ffffffffffffffff01000000000000"
    "00000000000000000000066576656e747300000000a0c61f18240a0600000000000000000000000000000000000000"
    "00000000000000000000"
)


def test_create_topic_given_vector_when_decoded_should_give_defaults() -> None:
    code, payload = split_request(CREATE_TOPIC)
    expected = CreateTopic(0, 1, CompressionAlgorithm.NONE, 0, 0, 0, "events")
    assert decode_request(code, payload) == expected
    assert encode_request(CreateTopic.CODE, expected.encode()) == CREATE_TOPIC


def test_topic_details_given_one_partition_when_encoded_should_match_9_5_reply() -> None:
    details = TopicDetails(TOPIC_EVENTS, [PartitionInfo(0, T_TOPIC_US, 0, 0, 0, 0)])
    assert len(CREATE_TOPIC_REPLY) == 105
    assert reply(details.encode()) == CREATE_TOPIC_REPLY
    assert decode_record(TopicDetails, CREATE_TOPIC_REPLY[8:]) == details


# --- 9.5a get_stream --------------------------------------------------------------------------


def test_get_stream_given_sdk_frame_when_decoded_should_give_string_identifier() -> None:
    request = h("0a000000 c8000000 02 04 74657374")
    code, payload = split_request(request)
    assert decode_request(code, payload) == GetStream("test")
    assert encode_request(GetStream.CODE, GetStream("test").encode()) == request


def test_stream_details_given_one_topic_when_encoded_should_match_9_5a_reply() -> None:
    frame = h(
        "000000005e0000000000000000401e18240a06000100000000000000000000000000000000000000047465737400000000"
        "a0c61f18240a060001000000ffffffffffffffff01ffffffffffffffff0100000000000000000000000000000000066576"
        "656e7473"
    )
    details = StreamDetails(StreamInfo(0, T_STREAM_US, 1, 0, 0, "test"), [TOPIC_EVENTS])
    assert len(frame) == 102
    assert reply(details.encode()) == frame
    assert decode_record(StreamDetails, frame[8:]) == details


def test_get_stream_reply_given_missing_stream_when_decoded_should_be_empty() -> None:
    assert FrameDecoder(is_response=True).feed(h("00000000 00000000")) == [(0, memoryview(b""))]


# --- 9.6 send_messages ------------------------------------------------------------------------

SEND = h(
    "c4000000650000001200000001040000000001040000000001000200000000000000450000000000000000000000000000"
    "008a000000000000000000000000000000000000000100000000000000000000000000000000000000000000000000000000"
    "000000404d2118240a06000000000005000000000000000000000068656c6c6f000000000000000002000000000000000000"
    "00000000000000000000000000000000000000000000404d2118240a060000000000050000000000000000000000776f726c"
    "64"
)
SEND_MESSAGES = [
    OutgoingMessage(b"hello", id=1, origin_timestamp_us=ORIGIN_US),
    OutgoingMessage(b"world", id=2, origin_timestamp_us=ORIGIN_US),
]


def test_send_messages_given_vector_when_header_decoded_should_locate_index_and_messages() -> None:
    code, payload = split_request(SEND)
    assert len(SEND) == 200 and code == Command.SEND_MESSAGES
    header = decode_request(code, payload)
    assert header == SendMessagesHeader(0, 0, Partitioning.balanced(), 2, 22, 54, 192)
    assert isinstance(header, SendMessagesHeader)
    assert header.partitioning.kind == PartitioningKind.BALANCED
    index = payload[header.index_offset : header.messages_offset]
    entries = [struct.unpack_from("<IIQ", index, 16 * i) for i in range(2)]
    assert entries == [(0, 69, 0), (0, 138, 0)]
    area = payload[header.messages_offset :]
    assert header.messages_size_bytes == len(area) == 138
    assert bytes(area[64:69]) == b"hello" and bytes(area[69 + 64 :]) == b"world"


def test_encode_send_messages_given_two_messages_when_encoded_should_reproduce_9_6() -> None:
    payload = encode_send_messages(0, 0, Partitioning.balanced(), SEND_MESSAGES)
    assert encode_request(Command.SEND_MESSAGES, payload) == SEND


def test_encode_send_messages_given_python_sdk_partitioning_should_only_change_partitioning() -> None:
    messages = [OutgoingMessage(m.payload, origin_timestamp_us=ORIGIN_US) for m in SEND_MESSAGES]
    payload = encode_send_messages(0, 0, Partitioning.partition_id(0), messages)
    assert payload[:4] == h("16000000")  # metadata grows by the 4-byte partition id
    assert payload[16:22] == h("02 04 00000000")
    header = SendMessagesHeader.decode(memoryview(payload))
    assert header.partitioning.partition() == 0
    expected_area = bytearray(SEND[8 + 54 :])
    expected_area[8:24] = bytes(16)  # ids 0, the rest as in 9.6
    expected_area[69 + 8 : 69 + 24] = bytes(16)
    assert payload[header.messages_offset :] == expected_area


# --- 9.7 poll_messages ------------------------------------------------------------------------

POLL = h(
    "2a000000 64000000 01 01 04 01000000 01 04 00000000 01 04 00000000 01 00000000 05 0000000000000000 "
    "0a000000 01"
)
POLL_REPLY = h(
    "000000009a000000000000000100000000000000020000004e9d837ce1fea827010000000000000000000000000000000000"
    "000000000000e0d32218240a0600404d2118240a06000000000005000000000000000000000068656c6c6fc6bd89fb4a2f21"
    "78020000000000000000000000000000000100000000000000e0d32218240a0600404d2118240a0600000000000500000000"
    "00000000000000776f726c64"
)


def test_poll_messages_given_vector_when_decoded_should_give_next_strategy() -> None:
    code, payload = split_request(POLL)
    expected = PollMessages(Consumer(ConsumerKind.CONSUMER, 1), 0, 0, 0, PollingKind.NEXT, 0, 10, True)
    assert decode_request(code, payload) == expected
    assert encode_request(PollMessages.CODE, expected.encode()) == POLL


def stamp_stored(send_payload: bytes, first_offset: int, timestamp_us: int) -> bytes:
    """What the server stores for a SendMessages area: offsets, timestamp, then checksum."""
    header = SendMessagesHeader.decode(memoryview(send_payload))
    area = bytearray(send_payload[header.messages_offset :])
    pos = 0
    offset = first_offset
    while pos < len(area):
        headers_length, payload_length = struct.unpack_from("<II", area, pos + 48)
        end = pos + MESSAGE_HEADER_SIZE + payload_length + headers_length
        struct.pack_into("<QQ", area, pos + 24, offset, timestamp_us)
        struct.pack_into("<Q", area, pos, xxhash.xxh3_64_intdigest(bytes(area[pos + 8 : end])))
        pos = end
        offset += 1
    return bytes(area)


def test_poll_reply_given_stored_batch_when_encoded_should_match_9_7_including_checksums() -> None:
    stored = stamp_stored(encode_send_messages(0, 0, Partitioning.balanced(), SEND_MESSAGES), 0, TS_US)
    body = PollHeader(0, 1, 2).encode() + stored
    assert len(POLL_REPLY) == 162
    assert reply(body) == POLL_REPLY


def test_decode_poll_reply_given_vector_should_expose_documented_fields() -> None:
    [(status, payload)] = FrameDecoder(is_response=True).feed(POLL_REPLY)
    header, messages = decode_poll_reply(payload)
    assert status == 0 and header == PollHeader(0, 1, 2)
    assert [m.offset for m in messages] == [0, 1]
    assert [m.id for m in messages] == [1, 2]
    assert [m.checksum for m in messages] == [0x27A8FEE17C839D4E, 0x78212F4AFB89BDC6]
    assert {m.timestamp_us for m in messages} == {TS_US}
    assert {m.origin_timestamp_us for m in messages} == {ORIGIN_US}
    assert [bytes(m.payload) for m in messages] == [b"hello", b"world"]
    assert [bytes(m.user_headers) for m in messages] == [b"", b""]
    # The documented checksums are XXH3-64 of each message after its checksum field.
    assert xxhash.xxh3_64_intdigest(bytes(payload[16 + 8 : 16 + 69])) == messages[0].checksum
    assert xxhash.xxh3_64_intdigest(bytes(payload[16 + 69 + 8 :])) == messages[1].checksum


def test_poll_reply_given_repeat_with_nothing_new_should_be_header_only() -> None:
    frame = h("00000000 10000000 00000000 0100000000000000 00000000")
    assert reply(PollHeader(0, 1, 0).encode()) == frame
    assert decode_poll_reply(frame[8:]) == (PollHeader(0, 1, 0), [])


# --- 9.8 store_consumer_offset, 3.7 and 3.8 captures -------------------------------------------


def test_store_consumer_offset_given_vector_when_decoded_should_give_offset_1() -> None:
    request = h(
        "24000000 79000000 01 01 04 01000000 01 04 00000000 01 04 00000000 01 00000000 0100000000000000"
    )
    code, payload = split_request(request)
    expected = StoreConsumerOffset(Consumer(ConsumerKind.CONSUMER, 1), 0, 0, 0, 1)
    assert decode_request(code, payload) == expected
    assert encode_request(StoreConsumerOffset.CODE, expected.encode()) == request


def test_store_consumer_offset_given_python_group_capture_should_use_names() -> None:
    request = h(
        "25000000 79000000 02 02 03 677270 02 04 74657374 02 06 6576656e7473 01 00000000 0100000000000000"
    )
    code, payload = split_request(request)
    expected = StoreConsumerOffset(Consumer(ConsumerKind.CONSUMER_GROUP, "grp"), "test", "events", 0, 1)
    assert decode_request(code, payload) == expected
    assert encode_request(StoreConsumerOffset.CODE, expected.encode()) == request


def test_poll_messages_given_rust_group_capture_should_have_no_partition() -> None:
    request = h(
        "2b000000 64000000 02 02 03 677270 02 04 74657374 02 06 6576656e7473 00 00000000 05 "
        "0000000000000000 e8030000 01"
    )
    code, payload = split_request(request)
    expected = PollMessages(
        Consumer(ConsumerKind.CONSUMER_GROUP, "grp"), "test", "events", None, PollingKind.NEXT, 0, 1000, True
    )
    assert decode_request(code, payload) == expected
    assert encode_request(PollMessages.CODE, expected.encode()) == request


# --- 9.9 cluster metadata ---------------------------------------------------------------------


def test_cluster_metadata_given_single_node_when_encoded_should_match_9_9() -> None:
    frame = h(
        "00000000 37000000 0b000000 73696e676c652d6e6f6465 01000000 09000000 696767792d6e6f6465 "
        "09000000 3132372e302e302e31 9a1f 901f b80b 9c1f 00 00"
    )
    metadata = ClusterMetadata("single-node", [ClusterNode("iggy-node", "127.0.0.1", 8090, 8080, 3000, 8092)])
    assert len(frame) == 63
    assert reply(metadata.encode()) == frame
    assert decode_record(ClusterMetadata, frame[8:]) == metadata


# --- 4.2 user headers -------------------------------------------------------------------------


def test_user_headers_given_content_type_example_should_match_4_2() -> None:
    encoded = h("02 0c000000 636f6e74656e742d74797065 02 0a000000 746578742f706c61696e")
    headers = {"content-type": (HeaderKind.STRING, b"text/plain")}
    assert encode_user_headers(headers) == encoded
    assert decode_user_headers(encoded) == headers


# --- root permissions size (2.5) --------------------------------------------------------------


def test_permissions_given_root_when_encoded_should_be_ten_ones_and_zero() -> None:
    assert encode_permissions(ROOT_PERMISSIONS) == h("01" * 10 + "00")
    assert decode_permissions(h("01" * 10 + "00")) == ROOT_PERMISSIONS
    assert encode_permissions(Permissions()) == bytes(11)


def test_send_messages_header_given_vector_with_bad_stream_kind_should_raise_invalid_identifier() -> None:
    payload = bytearray(SEND[8:])
    payload[4] = 9  # stream identifier kind
    with pytest.raises(IggyError) as err:
        SendMessagesHeader.decode(memoryview(payload))
    assert err.value.status == Status.INVALID_IDENTIFIER
