"""0.9 request bodies and reply payloads (src/tidelog/wire/v09/bodies.py) against
shared/protocol/iggy-0.9-vsr.md sections 2.8, 2.11, 3, 4.3 and the vectors of section 9."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions, TopicPermissions
from tidelog.wire import requests
from tidelog.wire.codes import U64_MAX, IggyError, Status
from tidelog.wire.primitives import Consumer, HeaderKind, Identifier, encode_permissions
from tidelog.wire.records import (
    PartitionInfo,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    UserDetails,
    UserInfo,
)
from tidelog.wire.requests import Partitioning
from tidelog.wire.v09.batch import parse_batch
from tidelog.wire.v09.bodies import (
    CREATE_ONLY_TOPIC_KEYS,
    EMPTY_OPTIONS,
    REQUEST_TYPES_09,
    TOPIC_OPTION_KEYS,
    AckLevel,
    CreateStream09,
    CreateTopic09,
    CreateUser09,
    DeleteConsumerOffset09,
    DescribeOptions,
    OptionDescriptor,
    OptionScope,
    OptionValue,
    SendConfirmation09,
    SendMessages09Header,
    StoreConsumerOffset09,
    SyncConsumerGroup,
    SyncGroup09,
    TopicOptions,
    TopicSettings,
    UpdateStream09,
    UpdateTopic09,
    UpdateUser09,
    check_no_options,
    decode_describe_options,
    decode_options,
    decode_request09,
    decode_send_confirmations09,
    decode_stream09,
    decode_stream_details09,
    decode_streams09,
    decode_sync_group09,
    decode_topic_details09,
    decode_topics09,
    decode_user_details09,
    decode_users09,
    derived_topic_options,
    encode_describe_options,
    encode_options,
    encode_options_prefixed,
    encode_send_confirmation09,
    encode_send_messages09,
    encode_stream09,
    encode_stream_details09,
    encode_streams09,
    encode_sync_group09,
    encode_topic_details09,
    encode_topic_header09,
    encode_topics09,
    encode_user09,
    encode_user_details09,
    encode_users09,
    parse_duration_us,
    parse_size_bytes,
    parse_topic_options,
    topic_option_descriptors,
)
from tidelog.wire.v09.codes import CommandCode, Status09
from tidelog.wire.v09.frames import encode_result_ok

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "protocol" / "iggy-0.9-vsr.md"
CREATED_US = 1_767_225_600_000_000  # section 9 "created_at in replies"
MIB, GIB = 1 << 20, 1 << 30

# Section 9 bodies, copied from the reference's dumps (checked against it below).
BODY_9_3 = bytes.fromhex("0b746573742d73747265616d")
REPLY_9_3 = bytes.fromhex(
    "0000000000000000004020464847060000000000000000000000000000000000000000000b746573742d73747265616d00000000"
)
BODY_9_4 = bytes.fromhex(
    "020b746573742d73747265616d02000000066f7264657273021a000000636f6e73756d65725f6f66667365745f6475726162"
    "696c697479020a0000007265706c696361746564020a0000006475726162696c697479020a0000007265706c696361746564"
)
BODY_9_4B = bytes.fromhex("020b746573742d73747265616d02000000066f7264657273")
BODY_9_7 = bytes.fromhex(
    "01010401000000020b746573742d73747265616d02066f72646572730100000000010000000000000001"
)
REPLY_9_5 = bytes.fromhex("01" + "00" * 23)
# Section 3.4 and 3.7, observed from the 0.9.0 wheel.
CREATE_USER_ALICE = bytes.fromhex("05616c69636509736563726574313233" + "0100")
UPDATE_USER_BOBBY = bytes.fromhex("01040100000001" + "05626f62627901" + "02")
STORE_OFFSET_G0 = bytes.fromhex("020202673002027330020274300101000000030000000000000001")


def _hexdump(after: str) -> bytes:
    """The first `0000: ..` body dump following the heading `after` in the reference."""
    if not REFERENCE.exists():
        pytest.skip("shared/protocol/iggy-0.9-vsr.md not present")
    doc = REFERENCE.read_text()
    at = doc.index(after)
    lo = doc.index("```text", at) + len("```text")
    hi = doc.index("```", lo)
    return bytes.fromhex("".join(line.split(":", 1)[1] for line in doc[lo:hi].strip().splitlines()))


def _tlv(kind: int, raw: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("<I", len(raw)) + raw


def _entry(key: str, kind: int, raw: bytes) -> bytes:
    """One option entry assembled by hand from 2.8: String key TLV, then the value TLV."""
    return _tlv(HeaderKind.STRING, key.encode()) + _tlv(kind, raw)


def _sized(raw: bytes) -> bytes:
    return struct.pack("<I", len(raw)) + raw


def _code(fn: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(IggyError) as caught:
        fn(*args, **kwargs)
    return int(caught.value.status)


# --- section 9 vectors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "body"),
    [
        ("### 9.3 CreateStream", BODY_9_3),
        ("#### Reply to 9.3", REPLY_9_3),
        ("### 9.4 CreateTopic", BODY_9_4),
        ("#### 9.4b", BODY_9_4B),
        ("### 9.7 StoreConsumerOffset", BODY_9_7),
        ("#### Reply to 9.5", REPLY_9_5),
    ],
)
def test_vectors_given_inline_copies_when_compared_with_the_reference_should_match(
    heading: str, body: bytes
) -> None:
    assert _hexdump(heading) == body


def test_create_stream_given_vector_9_3_when_decoded_should_give_the_name_and_reencode() -> None:
    request = decode_request09(CommandCode.CREATE_STREAM, BODY_9_3)
    assert request == CreateStream09("test-stream")
    assert isinstance(request, requests.CreateStream)  # a 0.8 handler serves it
    assert request.encode() == BODY_9_3


def test_stream_reply_given_vector_9_3_fields_when_encoded_should_match_byte_for_byte() -> None:
    info = StreamInfo(0, CREATED_US, 0, 0, 0, "test-stream")
    payload = encode_stream09(info)
    assert encode_result_ok(payload) == REPLY_9_3
    assert decode_stream09(payload).info == info
    assert decode_stream09(payload).options == b""
    # CreateStream replies StreamResponse + 0 TopicHeaders: the same bytes as the details form.
    assert encode_stream_details09(StreamDetails(info, [])) == payload


def test_create_topic_given_vector_9_4_when_decoded_should_carry_the_wheels_durability_options() -> None:
    request = decode_request09(CommandCode.CREATE_TOPIC, BODY_9_4)
    assert request == CreateTopic09(
        "test-stream",
        2,
        "orders",
        TopicOptions(durability="replicated", consumer_offset_durability="replicated"),
    )
    assert request.options.explicit == BODY_9_4[len(BODY_9_4B) :]
    assert request.encode() == BODY_9_4


def test_create_topic_given_vector_9_4b_without_options_when_decoded_should_have_no_keys() -> None:
    request = decode_request09(CommandCode.CREATE_TOPIC, BODY_9_4B)
    assert request == CreateTopic09("test-stream", 2, "orders", TopicOptions())
    assert request.options.explicit == b""
    assert request.encode() == BODY_9_4B


def test_store_offset_given_vector_9_7_when_decoded_should_give_consumer_partition_offset_ack() -> None:
    request = decode_request09(CommandCode.STORE_CONSUMER_OFFSET, BODY_9_7)
    assert request == StoreConsumerOffset09(Consumer(1, 1), "test-stream", "orders", 0, 1, AckLevel.QUORUM)
    assert request.encode() == BODY_9_7


def test_send_messages_given_vector_9_5_when_decoded_should_locate_a_batch_parse_batch_accepts() -> None:
    body = _hexdump("### 9.5 SendMessages")
    header = SendMessages09Header.decode(body)
    assert (header.stream_id, header.topic_id) == ("test-stream", "orders")
    assert header.partitioning == Partitioning.partition_id(0)
    assert header.messages_count == 2
    assert header.batch_offset == 4 + 31
    batch = parse_batch(body[header.batch_offset :], header.messages_count)
    assert batch.count == 2
    assert encode_send_messages09("test-stream", "orders", Partitioning.partition_id(0), body[35:]) == body


def test_send_reply_given_vector_9_5_when_encoded_should_be_one_zero_confirmation() -> None:
    assert encode_send_confirmation09(0, 0, 0, 0) == REPLY_9_5
    assert decode_send_confirmations09(REPLY_9_5) == [SendConfirmation09(0, 0, 0, 0)]


# --- observed bodies (3.4, 3.5, 3.7) ---------------------------------------------------------


def test_create_user_given_observed_alice_body_when_decoded_should_reencode_byte_for_byte() -> None:
    request = decode_request09(CommandCode.CREATE_USER, CREATE_USER_ALICE)
    assert request == CreateUser09("alice", "secret123", 1, None)
    assert request.encode() == CREATE_USER_ALICE


def test_update_user_given_observed_bobby_body_when_decoded_should_reencode_byte_for_byte() -> None:
    request = decode_request09(CommandCode.UPDATE_USER, UPDATE_USER_BOBBY)
    assert request == UpdateUser09(1, "bobby", 2)
    assert request.encode() == UPDATE_USER_BOBBY


def test_topic_options_given_observed_3_5_call_when_encoded_should_match_hand_assembled_block() -> None:
    options = TopicOptions(
        compression_algorithm=2,
        message_expiry=3_600_000_000,
        max_topic_size=10_000_000_000,
        segment_size=64 * MIB,
        messages_required_to_save=10,
        preallocate_segments=False,
        durability="replicated",
        consumer_offset_durability="replicated",
    )
    expected = (
        _entry("compression_algorithm", HeaderKind.STRING, b"gzip")
        + _entry("consumer_offset_durability", HeaderKind.STRING, b"replicated")
        + _entry("durability", HeaderKind.STRING, b"replicated")
        + _entry("max_topic_size", HeaderKind.UINT64, struct.pack("<Q", 10_000_000_000))
        + _entry("message_expiry", HeaderKind.UINT64, struct.pack("<Q", 3_600_000_000))
        + _entry("messages_required_to_save", HeaderKind.UINT32, struct.pack("<I", 10))
        + _entry("preallocate_segments", HeaderKind.BOOL, b"\x00")
        + _entry("segment_size", HeaderKind.UINT64, struct.pack("<Q", 64 * MIB))
    )
    assert options.explicit == expected
    assert parse_topic_options(expected) == options


def test_store_offset_given_observed_group_body_when_decoded_should_give_group_g0_partition_1() -> None:
    request = decode_request09(CommandCode.STORE_CONSUMER_OFFSET, STORE_OFFSET_G0)
    assert request == StoreConsumerOffset09(Consumer(2, "g0"), "s0", "t0", 1, 3, 1)
    assert request.encode() == STORE_OFFSET_G0


# --- options block (2.8) ---------------------------------------------------------------------


def test_decode_options_given_block_when_decoded_should_keep_wire_order_and_kinds() -> None:
    block = _entry("b", HeaderKind.UINT32, b"\x01\x00\x00\x00") + _entry("a", 99, b"xyz")
    assert decode_options(block) == [
        ("b", OptionValue(HeaderKind.UINT32, b"\x01\x00\x00\x00")),
        ("a", OptionValue(99, b"xyz")),
    ]
    assert encode_options(decode_options(block)) == _entry("a", 99, b"xyz") + _entry("b", 11, b"\x01\0\0\0")


def test_options_prefixed_given_entries_when_encoded_should_put_the_u32_length_first() -> None:
    block = encode_options({"k": OptionValue.string("v")})
    assert encode_options_prefixed({"k": OptionValue.string("v")}) == struct.pack("<I", len(block)) + block
    assert encode_options_prefixed({}) == EMPTY_OPTIONS


@pytest.mark.parametrize(
    ("block", "code"),
    [
        (_entry("k", 2, b"v") + _entry("k", 2, b"w"), Status.INVALID_COMMAND),  # duplicate key
        (_tlv(1, b"k") + _tlv(2, b"v"), Status.INVALID_COMMAND),  # key not String
        (_tlv(2, b"") + _tlv(2, b"v"), Status.INVALID_COMMAND),  # empty key
        (_tlv(2, b"\xff") + _tlv(2, b"v"), Status.INVALID_COMMAND),  # key not UTF-8
        (_entry("k", 0, b"v"), Status.INVALID_COMMAND),  # value kind 0
        (_entry("k", 2, b""), Status.INVALID_COMMAND),  # empty value
        (_entry("k", 2, b"v" * 256), Status.INVALID_COMMAND),  # value over 255 bytes
        (_entry("k", 2, b"v")[:-1], Status.INVALID_COMMAND),  # truncated
        (_tlv(2, b"k"), Status.INVALID_COMMAND),  # key without value
        (_entry("k", HeaderKind.UINT64, b"\0\0\0\0"), Status09.INVALID_OPTION_VALUE),  # fixed size
        (_entry("k", HeaderKind.BOOL, b"\0\0"), Status09.INVALID_OPTION_VALUE),
        (b"".join(_entry(f"k{i}", 9, b"\0") for i in range(1025)), Status09.OPTIONS_BLOCK_TOO_LARGE),
        (_entry("k", 2, b"v") + b"\0" * 100_000, Status09.OPTIONS_BLOCK_TOO_LARGE),
    ],
)
def test_decode_options_given_bad_block_when_decoded_should_fail_with_its_code(
    block: bytes, code: int
) -> None:
    assert _code(decode_options, block) == code


def test_decode_options_given_1024_entries_when_decoded_should_accept_the_limit() -> None:
    block = b"".join(_entry(f"k{i:04}", 9, b"\0") for i in range(1024))
    assert len(decode_options(block)) == 1024


def test_encode_options_given_duplicate_or_oversized_item_when_encoded_should_refuse() -> None:
    with pytest.raises(ValueError):
        encode_options([("k", OptionValue.string("a")), ("k", OptionValue.string("b"))])
    with pytest.raises(ValueError):
        encode_options({"k": OptionValue.string("v" * 256)})
    with pytest.raises(ValueError):
        encode_options({"": OptionValue.string("v")})


def test_check_no_options_given_entry_when_checked_should_fail_with_4041_and_pass_empty() -> None:
    check_no_options(b"")
    assert _code(check_no_options, _entry("k", 2, b"v")) == Status09.UNSUPPORTED_OPTION_KEY
    assert _code(check_no_options, b"\x02") == Status.INVALID_COMMAND


@pytest.mark.parametrize(
    ("code", "fixed"),
    [
        (CommandCode.CREATE_STREAM, BODY_9_3),
        (CommandCode.UPDATE_STREAM, UpdateStream09(0, "renamed").encode()),
        (CommandCode.CREATE_USER, CREATE_USER_ALICE),
        (CommandCode.UPDATE_USER, UPDATE_USER_BOBBY),
    ],
)
def test_stream_and_user_bodies_given_an_option_when_decoded_should_fail_with_4041(
    code: CommandCode, fixed: bytes
) -> None:
    assert _code(decode_request09, code, fixed + _entry("durability", 2, b"replicated")) == (
        Status09.UNSUPPORTED_OPTION_KEY
    )


# --- topic options ---------------------------------------------------------------------------


def test_parse_topic_options_given_unknown_key_when_parsed_should_fail_with_4041() -> None:
    body = BODY_9_4B + _entry("replication_factor", HeaderKind.UINT8, b"\x03")
    assert _code(decode_request09, CommandCode.CREATE_TOPIC, body) == Status09.UNSUPPORTED_OPTION_KEY


@pytest.mark.parametrize(
    ("key", "kind", "raw"),
    [
        ("compression_algorithm", HeaderKind.STRING, b"zstd"),
        ("compression_algorithm", HeaderKind.UINT8, b"\x02"),  # wrong kind
        ("segment_size", HeaderKind.UINT64, struct.pack("<Q", MIB + 1)),  # not a 512 multiple
        ("segment_size", HeaderKind.UINT64, struct.pack("<Q", MIB - 512)),  # under 1 MiB
        ("segment_size", HeaderKind.UINT64, struct.pack("<Q", GIB + 512)),  # over 1 GiB
        ("segment_size", HeaderKind.UINT32, struct.pack("<I", MIB)),  # wrong kind
        ("segment_size", HeaderKind.STRING, b"lots"),
        ("messages_required_to_save", HeaderKind.UINT32, struct.pack("<I", 0)),
        ("messages_required_to_save", HeaderKind.UINT32, struct.pack("<I", 16 * MIB + 1)),
        ("messages_required_to_save", HeaderKind.STRING, b"4294967296"),  # over u32
        ("size_of_messages_required_to_save", HeaderKind.UINT64, struct.pack("<Q", GIB + 1)),
        ("enforce_fsync", HeaderKind.STRING, b"maybe"),
        ("message_expiry", HeaderKind.STRING, b"7 fortnights"),
        ("message_expiry", HeaderKind.STRING, b"7 Days"),  # units are case-sensitive
        ("max_topic_size", HeaderKind.STRING, b"1.5 B"),  # not whole bytes
        ("max_topic_size", HeaderKind.STRING, b"99999999999 TiB"),  # over u64
        ("durability", HeaderKind.STRING, b"eventually"),
        ("durability", HeaderKind.STRING, b"\xff"),  # not UTF-8
    ],
)
def test_parse_topic_options_given_bad_value_when_parsed_should_fail_with_4042(
    key: str, kind: int, raw: bytes
) -> None:
    assert _code(parse_topic_options, _entry(key, kind, raw)) == Status09.INVALID_OPTION_VALUE


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("compression_algorithm", "GZIP", 2),
        ("message_expiry", "7 days", 7 * 86_400 * 10**6),
        ("message_expiry", "1h 30m", 5400 * 10**6),
        ("message_expiry", "500ms", 500_000),
        ("message_expiry", "1500", 1500),  # plain integer: µs, the typed unit
        ("message_expiry", "unlimited", U64_MAX),
        ("message_expiry", "server_default", 0),
        ("max_topic_size", "10 GB", 10**10),
        ("max_topic_size", "unlimited", U64_MAX),
        ("segment_size", "1 GiB", GIB),
        ("segment_size", "64MiB", 64 * MIB),
        ("segment_size", "1048576", MIB),
        ("size_of_messages_required_to_save", "1.5 KiB", 1536),
        ("messages_required_to_save", " 10 ", 10),
        ("enforce_fsync", "True", True),
        ("preallocate_segments", "false", False),
        ("durability", "persisted", "persisted"),
    ],
)
def test_parse_topic_options_given_string_value_when_parsed_should_read_it_like_config(
    key: str, text: str, expected: object
) -> None:
    options = parse_topic_options(_entry(key, HeaderKind.STRING, text.encode()))
    assert getattr(options, key) == expected
    # The echo is typed, not the text the client sent (module docstring).
    (echo,) = decode_options(options.explicit)
    assert echo[0] == key


def test_parse_topic_options_given_cap_below_segment_size_when_parsed_should_fail_with_1019() -> None:
    block = _entry("max_topic_size", 12, struct.pack("<Q", MIB)) + _entry(
        "segment_size", 12, struct.pack("<Q", 2 * MIB)
    )
    assert _code(parse_topic_options, block) == Status.INVALID_TOPIC_SIZE
    unlimited = _entry("max_topic_size", 12, struct.pack("<Q", U64_MAX)) + _entry(
        "segment_size", 12, struct.pack("<Q", 2 * MIB)
    )
    assert parse_topic_options(unlimited).max_topic_size == U64_MAX


_CREATE_ONLY_VALUES = {
    "segment_size": OptionValue.uint64(2 * MIB),
    "enforce_fsync": OptionValue.boolean(True),
    "messages_required_to_save": OptionValue.uint32(10),
    "size_of_messages_required_to_save": OptionValue.uint64(MIB),
    "preallocate_segments": OptionValue.boolean(True),
}


@pytest.mark.parametrize("key", sorted(CREATE_ONLY_TOPIC_KEYS))
def test_update_topic_given_create_only_key_when_decoded_should_fail_with_4041(key: str) -> None:
    block = encode_options({key: _CREATE_ONLY_VALUES[key]})
    assert getattr(parse_topic_options(block), key) is not None  # accepted on create
    body = UpdateTopic09(0, 0, "t").encode() + block
    assert _code(decode_request09, CommandCode.UPDATE_TOPIC, body) == Status09.UNSUPPORTED_OPTION_KEY


def test_update_topic_given_updatable_and_durability_keys_when_decoded_should_accept_them() -> None:
    options = TopicOptions(
        compression_algorithm=2, message_expiry=10**6, max_topic_size=GIB, durability="replicated"
    )
    request = UpdateTopic09("s", 3, "t2", options)
    assert decode_request09(CommandCode.UPDATE_TOPIC, request.encode()) == request


def test_topic_options_given_partial_options_when_resolved_should_fill_defaults_and_zero_means_default() -> (
    None
):
    defaults = TopicSettings(segment_size=512 * MIB, message_expiry=10**9)
    resolved = TopicOptions(segment_size=MIB, message_expiry=0, enforce_fsync=False).resolve(defaults)
    assert resolved == TopicSettings(segment_size=MIB, message_expiry=10**9, enforce_fsync=False)


def test_derived_options_given_explicit_keys_when_built_should_cover_the_rest_of_the_catalog() -> None:
    defaults = TopicSettings(segment_size=256 * MIB)
    options = TopicOptions(durability="persisted", segment_size=MIB)
    derived = dict(decode_options(derived_topic_options(options, defaults)))
    explicit = dict(decode_options(options.explicit))
    assert set(derived) | set(explicit) == set(TOPIC_OPTION_KEYS)
    assert not set(derived) & set(explicit)
    assert derived["messages_required_to_save"] == OptionValue.uint32(1024)
    assert derived["consumer_offset_durability"] == OptionValue.string("replicated")
    assert derived["compression_algorithm"] == OptionValue.string("none")
    assert explicit["segment_size"] == OptionValue.uint64(MIB)
    assert parse_topic_options(derived_topic_options(TopicOptions(), defaults)).resolve() == defaults
    overridden = dict(decode_options(derived_topic_options(TopicOptions(), segment_size=2 * MIB)))
    assert overridden["segment_size"] == OptionValue.uint64(2 * MIB)
    with pytest.raises(TypeError):
        derived_topic_options(TopicOptions(), segment_bytes=MIB)


def test_parse_helpers_given_text_when_parsed_should_convert_units() -> None:
    assert parse_duration_us("2w") == 14 * 86_400 * 10**6
    assert parse_duration_us("3 seconds 250 ms") == 3_250_000
    assert parse_size_bytes("2 kB") == 2000
    for bad in ("", "ms", "1 2", "-1s", "1e3"):
        assert _code(parse_duration_us, bad) == Status09.INVALID_OPTION_VALUE
    for bad in ("", "GiB", "1 gib", "-1", "½"):
        assert _code(parse_size_bytes, bad) == Status09.INVALID_OPTION_VALUE


# --- DescribeOptions (13) --------------------------------------------------------------------


def test_describe_options_given_topic_scope_when_encoded_should_list_the_ten_keys_with_defaults() -> None:
    payload = encode_describe_options(OptionScope.TOPIC)
    (count,) = struct.unpack_from("<I", payload)
    descriptors = decode_describe_options(payload)
    assert count == len(descriptors) == 10
    assert [d.key for d in descriptors] == list(TOPIC_OPTION_KEYS)
    by_key = {d.key: d for d in descriptors}
    assert by_key["segment_size"].kind == HeaderKind.UINT64
    assert by_key["segment_size"].default == struct.pack("<Q", GIB)
    assert by_key["message_expiry"].default == b"\xff" * 8
    assert by_key["durability"].default == b"replicated"
    assert by_key["enforce_fsync"].default == b"\x00"
    first = descriptors[0]
    key, text = first.key.encode(), first.description.encode()
    assert payload[4:].startswith(
        bytes((len(key),)) + key + bytes((first.kind,)) + _sized(first.default) + _sized(text)
    )
    assert topic_option_descriptors() == descriptors


def test_describe_options_given_stream_user_or_bad_scope_when_encoded_should_answer_per_3_3() -> None:
    assert encode_describe_options(OptionScope.STREAM) == b"\0\0\0\0"
    assert encode_describe_options(OptionScope.USER) == b"\0\0\0\0"
    assert _code(encode_describe_options, 4) == Status.INVALID_COMMAND
    assert decode_request09(CommandCode.DESCRIBE_OPTIONS, b"\x01") == DescribeOptions(1)
    assert _code(decode_request09, CommandCode.DESCRIBE_OPTIONS, b"\x00") == Status.INVALID_COMMAND
    assert _code(decode_request09, CommandCode.DESCRIBE_OPTIONS, b"\x01\x00") == Status.INVALID_COMMAND
    assert _code(decode_request09, CommandCode.DESCRIBE_OPTIONS, b"") == Status.INVALID_COMMAND


# --- every request class: round trip ---------------------------------------------------------

PERMS = Permissions(
    GlobalPermissions(manage_users=True, read_streams=True),
    {
        1: StreamPermissions(read_stream=True, topics={2: TopicPermissions(poll_messages=True)}),
        4: StreamPermissions(),
    },
)
GROUP = Consumer(2, "g0")
SAMPLES: dict[CommandCode, list[Any]] = {
    CommandCode.PING: [requests.Ping()],
    CommandCode.GET_STATS: [requests.GetStats()],
    CommandCode.GET_SNAPSHOT_FILE: [requests.GetSnapshot(4, (1, 2, 5))],
    CommandCode.GET_CLUSTER_METADATA: [requests.GetClusterMetadata()],
    CommandCode.DESCRIBE_OPTIONS: [DescribeOptions(1), DescribeOptions(3)],
    CommandCode.GET_ME: [requests.GetMe()],
    CommandCode.GET_CLIENT: [requests.GetClient(7)],
    CommandCode.GET_CLIENTS: [requests.GetClients()],
    CommandCode.GET_USER: [requests.GetUser(0), requests.GetUser("alice")],
    CommandCode.GET_USERS: [requests.GetUsers()],
    CommandCode.CREATE_USER: [CreateUser09("alice", "secret123", 2, PERMS), CreateUser09("bob", "pw0", 1)],
    CommandCode.DELETE_USER: [requests.DeleteUser("bob")],
    CommandCode.UPDATE_USER: [UpdateUser09(1), UpdateUser09("a", None, 1), UpdateUser09(2, "c", None)],
    CommandCode.UPDATE_PERMISSIONS: [requests.UpdatePermissions(1, PERMS), requests.UpdatePermissions(1)],
    CommandCode.CHANGE_PASSWORD: [requests.ChangePassword("alice", "old-pw", "new-pw")],
    CommandCode.LOGOUT_USER: [requests.LogoutUser()],
    CommandCode.GET_PERSONAL_ACCESS_TOKENS: [requests.GetPersonalAccessTokens()],
    CommandCode.CREATE_PERSONAL_ACCESS_TOKEN: [requests.CreatePersonalAccessToken("pat", U64_MAX)],
    CommandCode.DELETE_PERSONAL_ACCESS_TOKEN: [requests.DeletePersonalAccessToken("pat")],
    CommandCode.POLL_MESSAGES: [
        requests.PollMessages(Consumer(1, 1), "test-stream", "orders", 0, 5, 0, 10, True),
        requests.PollMessages(GROUP, 0, 1, None, 1, 42, 1, False),
    ],
    CommandCode.FLUSH_UNSAVED_BUFFER: [requests.FlushUnsavedBuffer(0, "t", 3, True)],
    CommandCode.GET_CONSUMER_OFFSET: [requests.GetConsumerOffset(GROUP, "s0", "t0", None)],
    CommandCode.STORE_CONSUMER_OFFSET: [StoreConsumerOffset09(GROUP, 0, 0, None, 9, AckLevel.NO_ACK)],
    CommandCode.DELETE_CONSUMER_OFFSET: [
        DeleteConsumerOffset09(Consumer(1, "c"), 0, 0, 2, AckLevel.QUORUM),
        DeleteConsumerOffset09(GROUP, "s", "t", None, AckLevel.NO_ACK),
    ],
    CommandCode.GET_STREAM: [requests.GetStream("test-stream")],
    CommandCode.GET_STREAMS: [requests.GetStreams()],
    CommandCode.CREATE_STREAM: [CreateStream09("s")],
    CommandCode.DELETE_STREAM: [requests.DeleteStream(0)],
    CommandCode.UPDATE_STREAM: [UpdateStream09("s", "s2")],
    CommandCode.PURGE_STREAM: [requests.PurgeStream(3)],
    CommandCode.GET_TOPIC: [requests.GetTopic(0, "orders")],
    CommandCode.GET_TOPICS: [requests.GetTopics(0)],
    CommandCode.CREATE_TOPIC: [
        CreateTopic09(0, 0, "t", TopicOptions()),
        CreateTopic09(
            "s",
            1000,
            "t",
            TopicOptions(
                segment_size=MIB,
                enforce_fsync=True,
                preallocate_segments=True,
                size_of_messages_required_to_save=0,
            ),
        ),
    ],
    CommandCode.DELETE_TOPIC: [requests.DeleteTopic(0, 1)],
    CommandCode.UPDATE_TOPIC: [UpdateTopic09(0, 1, "t", TopicOptions(max_topic_size=0))],
    CommandCode.PURGE_TOPIC: [requests.PurgeTopic("s", "t")],
    CommandCode.CREATE_PARTITIONS: [requests.CreatePartitions(0, 0, 3)],
    CommandCode.DELETE_PARTITIONS: [requests.DeletePartitions(0, 0, 1)],
    CommandCode.DELETE_SEGMENTS: [requests.DeleteSegments(0, 0, 2, 5)],
    CommandCode.GET_CONSUMER_GROUP: [requests.GetConsumerGroup(0, 0, "g0")],
    CommandCode.GET_CONSUMER_GROUPS: [requests.GetConsumerGroups(0, 0)],
    CommandCode.CREATE_CONSUMER_GROUP: [requests.CreateConsumerGroup(0, 0, "g0")],
    CommandCode.DELETE_CONSUMER_GROUP: [requests.DeleteConsumerGroup(0, 0, 1)],
    CommandCode.JOIN_CONSUMER_GROUP: [requests.JoinConsumerGroup("s", "t", "g")],
    CommandCode.LEAVE_CONSUMER_GROUP: [requests.LeaveConsumerGroup(0, 0, 0)],
    CommandCode.SYNC_CONSUMER_GROUP: [SyncConsumerGroup("s0", 1, "g0")],
}


def test_samples_given_request_table_when_compared_should_cover_every_code() -> None:
    assert set(SAMPLES) == set(REQUEST_TYPES_09)
    for code, samples in SAMPLES.items():
        assert all(type(s) is REQUEST_TYPES_09[code] for s in samples), code


@pytest.mark.parametrize(
    ("code", "sample"), [(code, s) for code, samples in SAMPLES.items() for s in samples], ids=str
)
def test_decode_request09_given_encoded_request_when_decoded_should_round_trip(
    code: CommandCode, sample: Any
) -> None:
    body = sample.encode()
    assert decode_request09(code, body) == sample
    assert decode_request09(code, memoryview(bytearray(body))) == sample


@pytest.mark.parametrize(
    ("code", "sample"), [(code, s) for code, samples in SAMPLES.items() for s in samples], ids=str
)
def test_decode_request09_given_a_trailing_byte_when_decoded_should_fail_with_3(
    code: CommandCode, sample: Any
) -> None:
    body = sample.encode() + b"\x00"
    if code in (
        CommandCode.CREATE_TOPIC,
        CommandCode.UPDATE_TOPIC,
        CommandCode.CREATE_STREAM,
        CommandCode.UPDATE_STREAM,
        CommandCode.CREATE_USER,
        CommandCode.UPDATE_USER,
    ):
        body = sample.encode() + b"\x02"  # an options block cut inside its first key TLV
    assert _code(decode_request09, code, body) == Status.INVALID_COMMAND


@pytest.mark.parametrize("body", [BODY_9_3, BODY_9_7, BODY_9_4B, CREATE_USER_ALICE, UPDATE_USER_BOBBY])
def test_decode_request09_given_any_truncation_of_a_fixed_body_when_decoded_should_fail_with_3(
    body: bytes,
) -> None:
    code = {
        BODY_9_3: CommandCode.CREATE_STREAM,
        BODY_9_7: CommandCode.STORE_CONSUMER_OFFSET,
        BODY_9_4B: CommandCode.CREATE_TOPIC,
        CREATE_USER_ALICE: CommandCode.CREATE_USER,
        UPDATE_USER_BOBBY: CommandCode.UPDATE_USER,
    }[body]
    for n in range(len(body)):
        assert _code(decode_request09, code, body[:n]) == Status.INVALID_COMMAND, n


def test_create_topic_given_truncated_options_when_decoded_should_fail_except_at_entry_boundaries() -> None:
    first_entry_end = len(BODY_9_4B) + 1 + 4 + len("consumer_offset_durability") + 1 + 4 + len("replicated")
    for n in range(len(BODY_9_4B) + 1, len(BODY_9_4)):
        if n == first_entry_end:
            request = CreateTopic09.decode(BODY_9_4[:n])
            assert request.options == TopicOptions(consumer_offset_durability="replicated")
        else:
            assert _code(decode_request09, CommandCode.CREATE_TOPIC, BODY_9_4[:n]) == Status.INVALID_COMMAND


def test_decode_request09_given_codes_outside_the_table_when_decoded_should_fail_with_3() -> None:
    for code in (0, 9999, CommandCode.SEND_MESSAGES, CommandCode.LOGIN_REGISTER, CommandCode.LOGIN_USER):
        assert _code(decode_request09, code, b"") == Status.INVALID_COMMAND


def test_decode_request09_given_0_8_layouts_when_decoded_should_yield_the_0_8_classes() -> None:
    assert type(decode_request09(CommandCode.GET_STREAM, b"\x01\x04\0\0\0\0")) is requests.GetStream
    assert type(decode_request09(CommandCode.GET_TOPIC, b"\x01\x04\0\0\0\0" * 2)) is requests.GetTopic
    assert isinstance(decode_request09(CommandCode.UPDATE_USER, UPDATE_USER_BOBBY), requests.UpdateUser)


def test_decode_request09_given_empty_name_or_bad_identifier_length_when_decoded_should_use_code_3() -> None:
    # The 0.8 reader answers these with 4; 0.9 has one code for undecodable bodies.
    assert _code(decode_request09, CommandCode.CREATE_STREAM, b"\x00") == Status.INVALID_COMMAND
    assert _code(decode_request09, CommandCode.GET_STREAM, b"\x01\x02\0\0") == Status.INVALID_COMMAND
    assert _code(decode_request09, CommandCode.CREATE_TOPIC, b"\x01\x04\0\0\0\0\x01\0\0\0\x00") == 3


def test_offset_writes_given_unknown_ack_level_when_decoded_should_fail_with_3() -> None:
    assert _code(decode_request09, CommandCode.STORE_CONSUMER_OFFSET, BODY_9_7[:-1] + b"\x02") == 3
    delete = DeleteConsumerOffset09(GROUP, 0, 0, None).encode()
    assert _code(decode_request09, CommandCode.DELETE_CONSUMER_OFFSET, delete[:-1] + b"\x07") == 3


def test_send_messages_header_given_bad_metadata_length_when_decoded_should_fail_with_3() -> None:
    body = encode_send_messages09(0, 0, Partitioning.balanced(), bytes(256))
    (metadata_length,) = struct.unpack_from("<I", body)
    assert SendMessages09Header.decode(body).batch_offset == 4 + metadata_length
    for wrong in (metadata_length - 1, metadata_length + 1, len(body)):
        bad = struct.pack("<I", wrong) + body[4:]
        assert _code(SendMessages09Header.decode, bad) == Status.INVALID_COMMAND, wrong
    assert _code(SendMessages09Header.decode, body[:3]) == Status.INVALID_COMMAND
    assert _code(SendMessages09Header.decode, b"\x03\0\0\0\x01\x04\0") == Status.INVALID_COMMAND


# --- replies (2.11) ----------------------------------------------------------------------------

TOPIC = TopicInfo(5, CREATED_US, 2, U64_MAX, 2, 10**9, 0, 123, 4, "orders")
PARTITIONS = [PartitionInfo(i, CREATED_US, 1, 3 * i, 100 * i, i) for i in range(2)]


def test_topic_header_given_fields_when_encoded_should_follow_2_11_without_replication_factor() -> None:
    options = TopicOptions(durability="replicated").explicit
    derived = derived_topic_options(TopicOptions(durability="replicated"))
    expected = (
        struct.pack("<IQIQBQQQ", 5, CREATED_US, 2, U64_MAX, 2, 10**9, 123, 4)
        + b"\x06orders"
        + _sized(options)
        + _sized(derived)
    )
    assert encode_topic_header09(TOPIC, options, derived) == expected
    assert len(encode_topic_header09(TOPIC)) == 50 + 6 + 8


def test_topic_details_given_partitions_when_round_tripped_should_keep_blocks_and_partitions() -> None:
    payload = encode_topic_details09(TopicDetails(TOPIC, PARTITIONS), b"o" * 3, b"d")
    details = decode_topic_details09(payload)
    assert details.header.topic == TOPIC  # replication_factor decodes as 0
    assert (details.header.options, details.header.derived) == (b"ooo", b"d")
    assert details.partitions == PARTITIONS
    assert _code(decode_topic_details09, payload + b"\0") == Status.INVALID_COMMAND
    assert _code(decode_topic_details09, payload[:-1]) == Status.INVALID_COMMAND


def test_topics_reply_given_headers_when_round_tripped_should_carry_the_count_prefix() -> None:
    other = TopicInfo(6, 1, 0, 0, 1, 0, 0, 0, 0, "t6")
    payload = encode_topics09([(TOPIC, b"", b"x"), (other, b"y", b"")])
    assert payload[:4] == struct.pack("<I", 2)
    headers = decode_topics09(payload)
    assert [(h.topic, h.options, h.derived) for h in headers] == [(TOPIC, b"", b"x"), (other, b"y", b"")]
    assert encode_topics09([]) == b"\0\0\0\0"


def test_stream_details_given_topic_blocks_when_round_tripped_should_keep_each_topics_blocks() -> None:
    other = TopicInfo(6, 1, 0, 0, 1, 0, 0, 0, 0, "t6")
    stream = StreamInfo(1, CREATED_US, 2, 10, 2, "s")
    details = StreamDetails(stream, [TOPIC, other])
    by_list = encode_stream_details09(details, [(b"a", b"b"), (b"", b"c")])
    by_fn = encode_stream_details09(details, lambda t: (b"a", b"b") if t.id == 5 else (b"", b"c"))
    assert by_list == by_fn
    decoded = decode_stream_details09(by_list)
    assert decoded.stream.info == stream
    assert [(h.topic.name, h.options, h.derived) for h in decoded.topics] == [
        ("orders", b"a", b"b"),
        ("t6", b"", b"c"),
    ]
    assert _code(decode_stream_details09, by_list[:-1]) == Status.INVALID_COMMAND


def test_streams_reply_given_infos_when_round_tripped_should_concatenate_without_count() -> None:
    infos = [StreamInfo(i, CREATED_US, 0, 0, 0, f"s{i}") for i in range(3)]
    payload = encode_streams09(infos)
    assert payload == b"".join(encode_stream09(i) for i in infos)
    assert [s.info for s in decode_streams09(payload)] == infos
    assert decode_streams09(b"") == []


def test_user_replies_given_users_when_encoded_should_put_empty_options_before_permissions() -> None:
    user = UserInfo(1, CREATED_US, 1, "alice")
    assert encode_user09(user) == user.encode() + b"\0\0\0\0"
    assert [u.info for u in decode_users09(encode_users09([user, user]))] == [user, user]
    without = encode_user_details09(UserDetails(user, None))
    assert without == user.encode() + b"\0\0\0\0" + b"\0\0\0\0"
    with_perms = encode_user_details09(UserDetails(user, PERMS))
    block = encode_permissions(PERMS)
    assert with_perms == user.encode() + b"\0\0\0\0" + b"\x01" + struct.pack("<I", len(block)) + block
    assert decode_user_details09(without).permissions is None
    decoded = decode_user_details09(with_perms)
    assert (decoded.user.info, decoded.user.options, decoded.permissions) == (user, b"", PERMS)


def test_sync_group_reply_given_partitions_when_round_tripped_should_match_2_11() -> None:
    payload = encode_sync_group09(7, [0, 2])
    assert payload == struct.pack("<QIII", 7, 2, 0, 2)
    assert decode_sync_group09(payload) == SyncGroup09(7, (0, 2))
    assert decode_sync_group09(encode_sync_group09(1, [])) == SyncGroup09(1, ())
    assert decode_sync_group09(b"") is None
    assert _code(decode_sync_group09, payload[:-1]) == Status.INVALID_COMMAND


def test_send_confirmation_given_values_when_round_tripped_should_be_count_and_20_byte_entry() -> None:
    payload = encode_send_confirmation09(1, 2, 3, 2**40)
    assert payload == struct.pack("<IIIIQ", 1, 1, 2, 3, 2**40)
    assert decode_send_confirmations09(payload) == [SendConfirmation09(1, 2, 3, 2**40)]
    assert decode_send_confirmations09(b"") == []
    assert decode_send_confirmations09(b"\0\0\0\0") == []
    assert _code(decode_send_confirmations09, payload + b"\0") == Status.INVALID_COMMAND
    assert _code(decode_send_confirmations09, struct.pack("<I", 10**6)) == Status.INVALID_COMMAND


def test_option_descriptor_given_descriptor_when_round_tripped_should_be_equal() -> None:
    d = OptionDescriptor("k", HeaderKind.UINT32, b"\1\0\0\0", "desc")
    payload = struct.pack("<I", 1) + d.encode()
    assert decode_describe_options(payload) == [d]
    assert _code(decode_describe_options, payload + b"\0") == Status.INVALID_COMMAND


# --- properties ----------------------------------------------------------------------------------

_u64 = st.integers(0, U64_MAX)
_topic_options = st.builds(
    TopicOptions,
    compression_algorithm=st.none() | st.sampled_from([1, 2]),
    message_expiry=st.none() | _u64,
    max_topic_size=st.none() | st.just(0) | st.just(U64_MAX),
    segment_size=st.none() | st.integers(2048, 2 * 1024 * 1024).map(lambda n: n * 512),
    enforce_fsync=st.none() | st.booleans(),
    messages_required_to_save=st.none() | st.integers(1, 16 * MIB),
    size_of_messages_required_to_save=st.none() | st.integers(0, GIB),
    preallocate_segments=st.none() | st.booleans(),
    durability=st.none() | st.sampled_from(["replicated", "persisted"]),
    consumer_offset_durability=st.none() | st.sampled_from(["replicated", "persisted"]),
)


@given(_topic_options)
def test_topic_options_given_any_valid_options_when_round_tripped_should_be_equal(
    options: TopicOptions,
) -> None:
    assert parse_topic_options(options.explicit) == options
    request = CreateTopic09("s", 1, "t", options)
    assert decode_request09(CommandCode.CREATE_TOPIC, request.encode()) == request


_VALID_BODIES = [(code, s.encode()) for code, samples in SAMPLES.items() for s in samples] + [
    (CommandCode.CREATE_TOPIC, BODY_9_4),
    (CommandCode.STORE_CONSUMER_OFFSET, STORE_OFFSET_G0),
]


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    code, body = draw(st.sampled_from(_VALID_BODIES))
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return code, bytes(data)


def _decodes_or_iggy_error(code: int, body: bytes) -> None:
    with contextlib.suppress(IggyError):
        decode_request09(code, body)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_decode_request09_given_mutated_bodies_when_decoded_should_raise_only_iggy_error(
    case: tuple[int, bytes],
) -> None:
    _decodes_or_iggy_error(*case)


@settings(max_examples=500)
@given(st.sampled_from(sorted(REQUEST_TYPES_09)) | st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_decode_request09_given_random_bodies_when_decoded_should_raise_only_iggy_error(
    code: int, body: bytes
) -> None:
    _decodes_or_iggy_error(code, body)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_send_messages_header_given_random_bytes_when_decoded_should_raise_only_iggy_error(
    body: bytes,
) -> None:
    try:
        header = SendMessages09Header.decode(body)
    except IggyError:
        return
    assert header.batch_offset <= len(body)


# --- encode/decode identity over generated values (the tables above use fixed samples) ------------

_u32 = st.integers(0, 2**32 - 1)
_name = st.text(min_size=1, max_size=80).filter(lambda s: len(s.encode()) <= 255)
_identifier = _u32 | _name
_consumer = st.builds(Consumer, st.sampled_from([1, 2]), _identifier)
_partition = st.none() | _u32
_ack = st.sampled_from(list(AckLevel))
_permissions = st.sampled_from([None, PERMS, Permissions(GlobalPermissions())])
_partitioning = st.one_of(
    st.just(Partitioning.balanced()),
    _u32.map(Partitioning.partition_id),
    st.binary(min_size=1, max_size=255).map(Partitioning.messages_key),
)
_REQUESTS_09: dict[CommandCode, st.SearchStrategy[Any]] = {
    CommandCode.POLL_MESSAGES: st.builds(
        requests.PollMessages,
        _consumer,
        _identifier,
        _identifier,
        _partition,
        st.integers(1, 5),
        _u64,
        _u32,
        st.booleans(),
    ),
    CommandCode.GET_CONSUMER_OFFSET: st.builds(
        requests.GetConsumerOffset, _consumer, _identifier, _identifier, _partition
    ),
    CommandCode.STORE_CONSUMER_OFFSET: st.builds(
        StoreConsumerOffset09, _consumer, _identifier, _identifier, _partition, _u64, _ack
    ),
    CommandCode.DELETE_CONSUMER_OFFSET: st.builds(
        DeleteConsumerOffset09, _consumer, _identifier, _identifier, _partition, _ack
    ),
    CommandCode.CREATE_STREAM: st.builds(CreateStream09, _name),
    CommandCode.UPDATE_STREAM: st.builds(UpdateStream09, _identifier, _name),
    CommandCode.CREATE_USER: st.builds(CreateUser09, _name, _name, st.sampled_from([1, 2]), _permissions),
    CommandCode.UPDATE_USER: st.builds(
        UpdateUser09, _identifier, st.none() | _name, st.none() | st.sampled_from([1, 2])
    ),
    CommandCode.SYNC_CONSUMER_GROUP: st.builds(SyncConsumerGroup, _identifier, _identifier, _identifier),
    CommandCode.DESCRIBE_OPTIONS: st.builds(DescribeOptions, st.sampled_from(list(OptionScope))),
    CommandCode.CREATE_PARTITIONS: st.builds(requests.CreatePartitions, _identifier, _identifier, _u32),
    CommandCode.GET_TOPIC: st.builds(requests.GetTopic, _identifier, _identifier),
}


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(_REQUESTS_09)).flatmap(lambda code: st.tuples(st.just(code), _REQUESTS_09[code]))
)
def test_decode_request09_given_generated_request_when_round_tripped_should_be_identical(
    case: tuple[CommandCode, Any],
) -> None:
    code, request = case
    body = request.encode()
    assert decode_request09(code, body) == request
    assert decode_request09(code, body).encode() == body


@given(_identifier, _identifier, _partitioning, st.integers(1, 20))
def test_send_messages_header_given_generated_metadata_when_round_tripped_should_locate_the_batch(
    stream: Identifier, topic: Identifier, partitioning: Partitioning, count: int
) -> None:
    batch = bytearray(256)
    struct.pack_into("<I", batch, 48, count)
    body = encode_send_messages09(stream, topic, partitioning, batch)
    header = SendMessages09Header.decode(body)
    assert (header.stream_id, header.topic_id, header.partitioning) == (stream, topic, partitioning)
    assert header.messages_count == count and body[header.batch_offset :] == batch


_stream_info = st.builds(StreamInfo, _u32, _u64, _u32, _u64, _u64, _name)
# replication_factor is not on the 0.9 wire (2.11): it decodes as 0.
_topic_info = st.builds(
    TopicInfo, _u32, _u64, _u32, _u64, st.integers(0, 255), _u64, st.just(0), _u64, _u64, _name
)
_user_info = st.builds(UserInfo, _u32, _u64, st.integers(0, 255), _name)


@given(
    st.lists(_stream_info, max_size=4),
    st.lists(st.tuples(_topic_info, st.binary(max_size=20), st.binary(max_size=20)), max_size=4),
    st.lists(_user_info, max_size=4),
)
def test_reply_lists_given_generated_records_when_round_tripped_should_be_identical(
    streams: list[StreamInfo],
    topics: list[tuple[TopicInfo, bytes, bytes]],
    users: list[UserInfo],
) -> None:
    assert [s.info for s in decode_streams09(encode_streams09(streams))] == streams
    assert [(h.topic, h.options, h.derived) for h in decode_topics09(encode_topics09(topics))] == topics
    assert [u.info for u in decode_users09(encode_users09(users))] == users


@given(_u32, _u32, _u32, _u64, _u64, st.lists(_u32, max_size=10))
def test_small_replies_given_generated_values_when_round_tripped_should_be_identical(
    stream: int, topic: int, partition: int, offset: int, generation: int, partitions: list[int]
) -> None:
    confirmation = encode_send_confirmation09(stream, topic, partition, offset)
    assert decode_send_confirmations09(confirmation) == [SendConfirmation09(stream, topic, partition, offset)]
    assert decode_sync_group09(encode_sync_group09(generation, partitions)) == SyncGroup09(
        generation, tuple(partitions)
    )
