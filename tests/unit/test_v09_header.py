"""The sans-IO Iggy 0.9 codec (``shared/protocol/iggy-0.9-vsr.md`` sections 1.2-1.8, 3.1,
3.2, 6): header layouts and checksums, operation tables, the request decoder's violations,
the one-port generation rule, result sections and login bodies.

Section 9's byte-exact vectors live in tests/compat/test_v09_vectors.py.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_layering import FORBIDDEN, imported_modules
from tidelog.wire.codes import Status
from tidelog.wire.v09.codes import (
    CLIENT_OPERATIONS,
    EVICTION_SDK_ERROR,
    INTERNAL_OPERATIONS,
    METADATA_OPERATIONS,
    OPERATION_FOR_CODE,
    PARTITION_OPERATIONS,
    PROTOCOL_VERSION,
    CommandCode,
    EvictionReason,
    Operation,
    ReplyFraming,
    Status09,
    VsrCommand,
    operation_for_code,
    pack_protocol_version,
    protocol_version_accepted,
    reply_framing,
)
from tidelog.wire.v09.frames import (
    Action,
    ClientVersionInfo,
    EvictionReceived,
    FrameDecoder,
    Generation,
    LoginReply,
    LoginRequest,
    MalformedLogin,
    NeedMore,
    PasswordLogin,
    ProtocolViolation,
    ReplyDecoder,
    ReplyReceived,
    ReplyViolation,
    RequestReceived,
    ResultMalformed,
    ResultOk,
    ResultRejected,
    TokenLogin,
    Unrecognized,
    ViolationKind,
    check_session,
    decode_login,
    decode_login_reply,
    decode_result_section,
    detect_generation,
    encode_login_reply,
    encode_password_login,
    encode_result_ok,
    encode_result_rejection,
    encode_token_login,
)
from tidelog.wire.v09.header import (
    EVICTION_OFFSETS,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    REPLY_OFFSETS,
    REQUEST_OFFSETS,
    EvictionHeader,
    HeaderError,
    ReplyHeader,
    RequestHeader,
    body_checksum,
    eviction_for,
    reply_header_for,
    request_checksum_ok,
    request_header_for,
)

CLIENT = 0x0123456789ABCDEFFEDCBA9876543210
V09 = Path(__file__).resolve().parents[2] / "src" / "tidelog" / "wire" / "v09"
OWN_MODULES = ["__init__.py", "codes.py", "header.py", "frames.py"]

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
u128 = st.integers(0, 2**128 - 1)


def frame(
    operation: Operation = Operation.CREATE_STREAM,
    body: bytes = b"\x0btest-stream",
    *,
    session: int = 1,
    request: int = 1,
    code: int = 0,
    client: int = CLIENT,
) -> bytes:
    header = request_header_for(
        operation, body, client=client, request=request, session=session, command_code=code
    )
    return header.encode() + body


def ping(request: int = 1) -> bytes:
    return frame(Operation.NON_REPLICATED, b"", session=0, request=request, code=CommandCode.PING)


def only_violation(data: bytes) -> ProtocolViolation:
    events = FrameDecoder().feed(data)
    assert len(events) == 1
    assert isinstance(events[0], ProtocolViolation), events
    return events[0]


# --- layering ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", OWN_MODULES)
def test_v09_module_given_sans_io_rule_when_parsed_should_not_import_io_modules(name: str) -> None:
    assert not imported_modules(V09 / name) & FORBIDDEN


# --- header layout ------------------------------------------------------------------------


def test_request_header_given_distinct_fields_when_encoded_should_use_section_1_2_offsets() -> None:
    header = RequestHeader(
        size=0x1234,
        client=CLIENT,
        request_checksum=0xAB,
        timestamp=0x11,
        request=0x22,
        operation=Operation.NON_REPLICATED,
        session=0x33,
        user_id=0x44,
        command_code=CommandCode.POLL_MESSAGES,
    )
    raw = header.encode()
    assert len(raw) == HEADER_SIZE
    assert struct.unpack_from("<I", raw, 48)[0] == 0x1234
    assert raw[60] == VsrCommand.REQUEST
    assert int.from_bytes(raw[128:144], "little") == CLIENT
    assert int.from_bytes(raw[144:160], "little") == 0xAB
    assert struct.unpack_from("<QQ", raw, 160) == (0x11, 0x22)
    assert raw[176] == Operation.NON_REPLICATED
    assert struct.unpack_from("<QII", raw, 184) == (0x33, 0x44, CommandCode.POLL_MESSAGES)
    assert REQUEST_OFFSETS["command_code"] == 196


def test_reply_header_given_distinct_fields_when_encoded_should_use_section_1_3_offsets() -> None:
    raw = ReplyHeader(
        size=300, operation=Operation.CREATE_TOPIC, status=1009, client=CLIENT, request=7, request_checksum=9
    ).encode()
    assert struct.unpack_from("<I", raw, 48)[0] == 300
    assert raw[60] == VsrCommand.REPLY
    assert int.from_bytes(raw[128:144], "little") == 9
    assert int.from_bytes(raw[160:176], "little") == CLIENT
    assert struct.unpack_from("<Q", raw, 200)[0] == 7
    assert raw[208] == Operation.CREATE_TOPIC
    assert struct.unpack_from("<I", raw, 216)[0] == 1009
    assert (REPLY_OFFSETS["operation"], REPLY_OFFSETS["status"]) == (208, 216)


def test_eviction_given_incompatible_protocol_when_encoded_should_follow_section_1_6_layout() -> None:
    raw = eviction_for(
        CLIENT,
        EvictionReason.INCOMPATIBLE_PROTOCOL,
        server_protocol_version=PROTOCOL_VERSION,
        server_protocol_version_min=PROTOCOL_VERSION,
    ).encode()
    assert struct.unpack_from("<I", raw, 48)[0] == HEADER_SIZE
    assert raw[60] == VsrCommand.EVICTION
    assert raw[62:128] == bytes(66)  # reserved_frame must be 0
    assert int.from_bytes(raw[128:144], "little") == CLIENT
    assert struct.unpack_from("<II", raw, 144) == (0x2C00, 0x2C00)
    assert raw[152:255] == bytes(103)
    assert raw[255] == EvictionReason.INCOMPATIBLE_PROTOCOL
    assert EVICTION_OFFSETS["reason"] == 255
    assert EvictionHeader.decode(raw).reason == EvictionReason.INCOMPATIBLE_PROTOCOL


def test_eviction_given_client_zero_when_built_should_refuse() -> None:
    with pytest.raises(AssertionError):
        eviction_for(0, EvictionReason.NO_SESSION)


def test_eviction_given_window_with_other_reason_when_built_should_refuse() -> None:
    with pytest.raises(AssertionError):
        eviction_for(CLIENT, EvictionReason.NO_SESSION, server_protocol_version=1)


@pytest.mark.parametrize("cls", [RequestHeader, ReplyHeader, EvictionHeader])
def test_header_given_fewer_than_256_bytes_when_decoded_should_raise_header_error(
    cls: type[RequestHeader] | type[ReplyHeader] | type[EvictionHeader],
) -> None:
    with pytest.raises(HeaderError):
        cls.decode(bytes(255))


@pytest.mark.parametrize(
    "header",
    [
        RequestHeader(size=2**32),
        RequestHeader(client=2**128),
        ReplyHeader(status=-1),
        EvictionHeader(reason=256),
    ],
)
def test_header_given_field_out_of_range_when_encoded_should_raise_header_error(header: object) -> None:
    with pytest.raises(HeaderError):
        header.encode()  # type: ignore[attr-defined]


def test_header_given_reserved_of_wrong_length_when_encoded_should_raise_header_error() -> None:
    with pytest.raises(HeaderError):
        RequestHeader(reserved=b"\x00").encode()


@settings(max_examples=200)
@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_headers_given_any_256_bytes_when_decoded_and_reencoded_should_round_trip_exactly(raw: bytes) -> None:
    # Ignored and reserved fields are kept, so every kind of header round-trips any bytes.
    assert RequestHeader.decode(raw).encode() == raw
    assert ReplyHeader.decode(raw).encode() == raw
    assert EvictionHeader.decode(raw).encode() == raw


@given(
    size=u32, client=u128, checksum=u128, request=u64, operation=u8, session=u64, code=u32, ts=u64, user=u32
)
def test_request_header_given_field_values_when_encoded_and_decoded_should_round_trip(
    size: int,
    client: int,
    checksum: int,
    request: int,
    operation: int,
    session: int,
    code: int,
    ts: int,
    user: int,
) -> None:
    header = RequestHeader(
        size=size,
        client=client,
        request_checksum=checksum,
        request=request,
        operation=operation,
        session=session,
        command_code=code,
        timestamp=ts,
        user_id=user,
    )
    assert RequestHeader.decode(header.encode()) == header


@given(size=u32, operation=u8, status=u32, client=u128, request=u64, op=u64, commit=u64, context=u128)
def test_reply_header_given_field_values_when_encoded_and_decoded_should_round_trip(
    size: int, operation: int, status: int, client: int, request: int, op: int, commit: int, context: int
) -> None:
    header = ReplyHeader(
        size=size,
        operation=operation,
        status=status,
        client=client,
        request=request,
        op=op,
        commit=commit,
        context=context,
    )
    assert ReplyHeader.decode(header.encode()) == header


@given(client=u128, reason=u8, version=u32, version_min=u32)
def test_eviction_header_given_field_values_when_encoded_and_decoded_should_round_trip(
    client: int, reason: int, version: int, version_min: int
) -> None:
    header = EvictionHeader(
        client=client, reason=reason, server_protocol_version=version, server_protocol_version_min=version_min
    )
    assert EvictionHeader.decode(header.encode()) == header


# --- request_checksum ---------------------------------------------------------------------


def test_checksum_given_body_when_computed_should_be_xxh3_64_seed_0_of_the_body_only() -> None:
    import xxhash

    body = b"\x0btest-stream"
    assert body_checksum(body) == xxhash.xxh3_64_intdigest(body, seed=0) == 0xACBCDB1058537E79


@given(st.binary(min_size=1, max_size=200), st.data())
def test_checksum_given_one_flipped_body_byte_when_verified_should_fail(
    body: bytes, data: st.DataObject
) -> None:
    header = request_header_for(Operation.CREATE_STREAM, body, client=CLIENT, request=1, session=1)
    assert request_checksum_ok(header, body)
    i = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(body)
    flipped[i] ^= 1 << bit
    assert not request_checksum_ok(header, bytes(flipped))


def test_checksum_given_zero_when_verified_should_pass_whatever_the_body() -> None:
    assert request_checksum_ok(RequestHeader(request_checksum=0), b"anything")


def test_checksum_given_right_low_bytes_but_nonzero_upper_bytes_when_verified_should_fail() -> None:
    body = b"x"
    assert not request_checksum_ok(RequestHeader(request_checksum=body_checksum(body) | 1 << 64), body)


def test_decoder_given_flipped_body_byte_when_fed_should_reply_status_invalid_format() -> None:
    data = bytearray(frame())
    data[-1] ^= 0x01
    violation = only_violation(bytes(data))
    assert violation.kind is ViolationKind.BAD_REQUEST_CHECKSUM
    assert violation.action is Action.STATUS and violation.status == Status.INVALID_FORMAT
    response = violation.response()
    assert response is not None
    reply = ReplyHeader.decode(response)
    assert (reply.size, reply.status, reply.operation, reply.client, reply.request) == (
        HEADER_SIZE,
        Status.INVALID_FORMAT,
        Operation.CREATE_STREAM,
        CLIENT,
        1,
    )


@pytest.mark.parametrize("operation", sorted(CLIENT_OPERATIONS))
def test_request_builder_given_operation_when_built_should_stamp_checksum_only_where_the_sdk_does(
    operation: Operation,
) -> None:
    code = CommandCode.PING if operation is Operation.NON_REPLICATED else 0
    header = request_header_for(operation, b"body", client=CLIENT, request=1, session=1, command_code=code)
    stamped = operation not in {Operation.NON_REPLICATED, *PARTITION_OPERATIONS}
    assert (header.request_checksum != 0) is stamped


# --- reply builder --------------------------------------------------------------------------


def test_reply_builder_given_request_when_built_should_echo_section_1_3_fields() -> None:
    request = RequestHeader(
        size=300, client=CLIENT, request_checksum=5, request=9, operation=Operation.CREATE_TOPIC, timestamp=3
    )
    reply = reply_header_for(request, 40)
    assert reply.size == HEADER_SIZE + 40
    assert reply.command == VsrCommand.REPLY
    assert (reply.operation, reply.client, reply.request) == (Operation.CREATE_TOPIC, CLIENT, 9)
    assert (reply.request_checksum, reply.timestamp, reply.status) == (5, 3, 0)


def test_reply_builder_given_error_status_with_body_when_built_should_refuse() -> None:
    with pytest.raises(AssertionError):
        reply_header_for(RequestHeader(client=CLIENT), 4, status=Status.INVALID_COMMAND)


# --- codes ------------------------------------------------------------------------------------


SECTION_3_1_OPS = {
    33: 141, 34: 143, 35: 142, 36: 145, 37: 144, 39: 3, 40: 1, 42: 146, 43: 147, 45: 1,
    101: 160, 121: 161, 122: 162, 202: 128, 203: 130, 204: 129, 205: 131, 302: 132, 303: 134,
    304: 133, 305: 135, 402: 136, 403: 137, 503: 138, 602: 139, 603: 140, 604: 148, 605: 149,
}  # fmt: skip


@pytest.mark.parametrize("code", sorted(int(c) for c in CommandCode))
def test_codes_given_section_3_1_table_when_code_mapped_should_use_the_documented_operation(
    code: int,
) -> None:
    assert operation_for_code(code) == SECTION_3_1_OPS.get(code, Operation.NON_REPLICATED)


def test_codes_given_unknown_code_when_mapped_should_be_non_replicated() -> None:
    assert operation_for_code(9999) is Operation.NON_REPLICATED
    assert set(OPERATION_FOR_CODE.values()) == CLIENT_OPERATIONS - {Operation.NON_REPLICATED}


def test_codes_given_operation_classes_when_compared_should_partition_the_byte_values() -> None:
    assert len(METADATA_OPERATIONS) == 21  # 128..149 without DeleteSegments (138)
    assert Operation.DELETE_SEGMENTS not in METADATA_OPERATIONS
    assert {int(op) for op in INTERNAL_OPERATIONS} == set(range(64, 69))
    assert not INTERNAL_OPERATIONS & CLIENT_OPERATIONS
    assert Operation.RESERVED not in CLIENT_OPERATIONS


@pytest.mark.parametrize("operation", [op for op in Operation if op != Operation.RESERVED])
def test_codes_given_operation_when_reply_framing_asked_should_follow_section_1_4(
    operation: Operation,
) -> None:
    raw = {Operation.NON_REPLICATED, Operation.LOGOUT, Operation.DELETE_SEGMENTS, Operation.SEND_MESSAGES}
    expected = ReplyFraming.RAW if operation in raw else ReplyFraming.RESULT_SECTION
    assert reply_framing(operation) is expected


def test_codes_given_0_9_error_codes_when_compared_with_0_8_status_should_be_disjoint() -> None:
    assert not {int(c) for c in Status09} & {int(s) for s in Status}
    assert Status09.INCOMPATIBLE_PROTOCOL_VERSION == 14003


def test_codes_given_eviction_reason_when_sdk_error_looked_up_should_follow_section_1_6() -> None:
    assert [int(r) for r in EvictionReason] == list(range(1, 16))
    assert EVICTION_SDK_ERROR[EvictionReason.INVALID_CREDENTIALS] == 42
    assert EVICTION_SDK_ERROR[EvictionReason.MALFORMED_LOGIN] == 4
    assert EVICTION_SDK_ERROR[EvictionReason.INVALID_TOKEN] == 53


@pytest.mark.parametrize(
    ("client", "accepted"),
    [
        (pack_protocol_version(0, 11, 0), True),
        (pack_protocol_version(0, 11, 7), True),  # patch ignored
        (pack_protocol_version(0, 10, 9), False),  # below MIN
        (pack_protocol_version(0, 12, 0), False),  # newer minor than the server
        (pack_protocol_version(1, 0, 0), False),
    ],
)
def test_version_gate_given_client_version_when_checked_should_follow_section_1_7(
    client: int, accepted: bool
) -> None:
    assert protocol_version_accepted(client) is accepted


# --- FrameDecoder: violations -----------------------------------------------------------------


def with_header(**changes: Any) -> bytes:
    body = b"\x0btest-stream"
    header = RequestHeader(
        size=HEADER_SIZE + len(body), client=CLIENT, request=1, session=1, operation=Operation.CREATE_STREAM
    )
    return replace(header, **changes).encode() + body


@pytest.mark.parametrize(
    ("changes", "kind", "action"),
    [
        ({"command": VsrCommand.REPLY}, ViolationKind.NOT_A_REQUEST, Action.DROP),
        ({"client": 0}, ViolationKind.ZERO_CLIENT, Action.DROP),
        ({"operation": 0}, ViolationKind.INVALID_OPERATION, Action.DROP),
        ({"operation": Operation.TRUNCATE_PARTITION}, ViolationKind.INVALID_OPERATION, Action.DROP),
        ({"operation": 200}, ViolationKind.INVALID_OPERATION, Action.DROP),
        ({"operation": Operation.REGISTER}, ViolationKind.REGISTER_NOT_FRESH, Action.DROP),
        ({"session": 0}, ViolationKind.MISSING_SESSION, Action.EVICT),
        ({"request": 0}, ViolationKind.MISSING_REQUEST_NUMBER, Action.DROP),
    ],
)
def test_decoder_given_invalid_header_when_fed_should_yield_documented_action(
    changes: dict[str, Any], kind: ViolationKind, action: Action
) -> None:
    violation = only_violation(with_header(**changes))
    assert (violation.kind, violation.action) == (kind, action)
    assert violation.header is not None and not violation.fatal


def test_decoder_given_replicated_op_without_session_when_fed_should_evict_no_session() -> None:
    violation = only_violation(with_header(session=0))
    response = violation.response()
    assert response is not None
    eviction = EvictionHeader.decode(response)
    assert (eviction.command, eviction.reason, eviction.client) == (
        VsrCommand.EVICTION,
        EvictionReason.NO_SESSION,
        CLIENT,
    )


@pytest.mark.parametrize("code", [CommandCode.LOGIN_USER, CommandCode.LOGIN_WITH_PERSONAL_ACCESS_TOKEN])
def test_decoder_given_legacy_login_code_when_fed_should_evict_malformed_login(code: int) -> None:
    violation = only_violation(frame(Operation.NON_REPLICATED, b"\x04iggy", session=0, code=code))
    assert violation.action is Action.EVICT and violation.eviction is EvictionReason.MALFORMED_LOGIN


@pytest.mark.parametrize(
    ("size", "kind"),
    [(HEADER_SIZE - 1, ViolationKind.FRAME_TOO_SMALL), (MAX_FRAME_SIZE + 1, ViolationKind.FRAME_TOO_LARGE)],
)
def test_decoder_given_size_out_of_bounds_when_fed_should_close_and_ignore_later_bytes(
    size: int, kind: ViolationKind
) -> None:
    decoder = FrameDecoder()
    events = decoder.feed(RequestHeader(size=size, client=CLIENT, operation=Operation.LOGOUT).encode())
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert events[0].kind is kind and events[0].fatal and events[0].response() is None
    assert decoder.closed and decoder.bytes_needed == 0
    assert decoder.feed(ping()) == []


def test_decoder_given_dropped_request_when_next_frame_follows_should_stay_in_step() -> None:
    events = FrameDecoder().feed(with_header(client=0) + ping(2))
    assert [type(e) for e in events] == [ProtocolViolation, RequestReceived]
    assert isinstance(events[1], RequestReceived) and events[1].header.request == 2


def test_decoder_given_custom_limit_when_frame_exceeds_it_should_close() -> None:
    violation = FrameDecoder(max_frame_size=HEADER_SIZE + 4).feed(frame())[0]
    assert isinstance(violation, ProtocolViolation) and violation.kind is ViolationKind.FRAME_TOO_LARGE


def test_decoder_given_logout_with_session_zero_when_fed_should_pass_to_the_server() -> None:
    (event,) = FrameDecoder().feed(frame(Operation.LOGOUT, b"", session=0, request=0))
    assert isinstance(event, RequestReceived) and event.operation is Operation.LOGOUT


# --- FrameDecoder: streaming ------------------------------------------------------------------


def test_decoder_given_partial_frame_when_fed_should_report_bytes_needed_for_header_then_body() -> None:
    data = frame()
    decoder = FrameDecoder()
    assert decoder.bytes_needed == HEADER_SIZE
    assert decoder.feed(data[:100]) == []
    assert decoder.bytes_needed == HEADER_SIZE - 100
    assert decoder.feed(data[100:HEADER_SIZE]) == []
    assert decoder.bytes_needed == len(data) - HEADER_SIZE
    (event,) = decoder.feed(data[HEADER_SIZE:])
    assert isinstance(event, RequestReceived)
    assert decoder.bytes_needed == HEADER_SIZE


def test_decoder_given_reused_receive_buffer_when_fed_should_copy_bodies() -> None:
    data = frame()
    buf = bytearray(data)
    (event,) = FrameDecoder().feed(buf)
    buf[HEADER_SIZE:] = bytes(len(buf) - HEADER_SIZE)
    assert isinstance(event, RequestReceived)
    assert bytes(event.body) == data[HEADER_SIZE:] and event.body.readonly


def test_decoder_given_header_only_non_replicated_when_fed_should_expose_code() -> None:
    (event,) = FrameDecoder().feed(ping())
    assert isinstance(event, RequestReceived)
    assert event.code == CommandCode.PING and event.known_code is CommandCode.PING
    assert bytes(event.body) == b""


def test_decoder_given_unknown_non_replicated_code_when_fed_should_pass_it_through_as_int() -> None:
    (event,) = FrameDecoder().feed(frame(Operation.NON_REPLICATED, b"", code=9999))
    assert isinstance(event, RequestReceived) and event.code == 9999 and event.known_code is None


FRAMES = [ping(), frame(), frame(Operation.SEND_MESSAGES, bytes(range(200)), request=2)]


@given(st.lists(st.integers(1, 300), min_size=1, max_size=40))
def test_decoder_given_any_chunking_when_fed_should_yield_the_same_events(sizes: list[int]) -> None:
    stream = b"".join(FRAMES)
    decoder = FrameDecoder()
    events = []
    pos = 0
    for size in sizes * (len(stream) // sum(sizes) + 1):
        events += decoder.feed(stream[pos : pos + size])
        pos += size
        if pos >= len(stream):
            break
    assert [e.header.encode() + bytes(e.body) for e in events if isinstance(e, RequestReceived)] == FRAMES


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FRAMES), st.lists(st.tuples(st.integers(0, 10_000), u8), max_size=8), st.data())
def test_decoder_given_mutated_or_truncated_frame_when_fed_should_yield_events_never_raise(
    original: bytes, flips: list[tuple[int, int]], data: st.DataObject
) -> None:
    mutated = bytearray(original)
    for pos, value in flips:
        mutated[pos % len(mutated)] = value
    cut = data.draw(st.integers(0, len(mutated)))
    decoder = FrameDecoder()
    events = decoder.feed(bytes(mutated[:cut]))
    assert all(isinstance(e, RequestReceived | ProtocolViolation) for e in events)
    for event in events:
        if isinstance(event, ProtocolViolation):
            event.response()  # building the documented answer must not raise either
    assert decoder.closed or decoder.bytes_needed > 0 or events


@given(st.binary(max_size=2000))
def test_decoder_given_random_bytes_when_fed_should_never_raise(junk: bytes) -> None:
    for event in FrameDecoder().feed(junk):
        assert isinstance(event, RequestReceived | ProtocolViolation)
        if isinstance(event, ProtocolViolation):
            event.response()


# --- session rules ------------------------------------------------------------------------------


def received(data: bytes) -> RequestReceived:
    (event,) = FrameDecoder().feed(data)
    assert isinstance(event, RequestReceived)
    return event


@pytest.mark.parametrize(
    ("data", "bound", "kind"),
    [
        (ping(), None, None),
        (
            frame(Operation.NON_REPLICATED, b"", session=0, code=CommandCode.GET_STREAMS),
            None,
            ViolationKind.NOT_LOGGED_IN,
        ),
        (frame(Operation.LOGOUT, b"", session=0, request=0), None, None),
        (frame(), None, ViolationKind.NO_SESSION),
        (frame(), 1, None),
        (frame(session=2), 1, ViolationKind.SESSION_MISMATCH),
        (frame(Operation.NON_REPLICATED, b"", session=0, code=CommandCode.GET_STREAMS), 1, None),
        (frame(Operation.REGISTER, b"x", session=0, request=0), 1, None),
    ],
)
def test_session_check_given_section_1_7_row_when_checked_should_give_documented_answer(
    data: bytes, bound: int | None, kind: ViolationKind | None
) -> None:
    violation = check_session(received(data), bound)
    assert (violation.kind if violation else None) is kind


def test_session_check_given_query_before_login_when_checked_should_reply_status_40() -> None:
    event = received(frame(Operation.NON_REPLICATED, b"", session=0, code=CommandCode.GET_STREAMS))
    violation = check_session(event, None)
    assert violation is not None and violation.status == Status.UNAUTHENTICATED
    response = violation.response()
    assert response is not None and ReplyHeader.decode(response).status == 40


# --- generation detection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("04000000 01000000"), Generation.V08),  # 0.8 ping (0.8 reference 1.2)
        (struct.pack("<II", 4 + 9, 38) + b"\x04iggy\x04iggy", Generation.V08),  # 0.8 LoginUser
        (bytes.fromhex("040000"), NeedMore(5)),
        (bytes(8), NeedMore(53)),  # zero checksum: only 0.9 is possible, wait for size/command
        (ping()[:61], Generation.V09),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", Unrecognized("a TLS ClientHello on a plaintext port")),
        (b"GET / HTTP/1.1\r\n", Unrecognized("an HTTP request on the binary TCP port")),
        (struct.pack("<II", 12, 7777) + bytes(60), Generation.V08),  # 0.8 with an unknown code
    ],
)
def test_generation_given_first_bytes_when_detected_should_follow_the_one_port_rule(
    data: bytes, expected: Generation | NeedMore | Unrecognized
) -> None:
    assert detect_generation(data) == expected


def test_generation_given_v09_with_nonzero_checksum_when_detected_should_be_v09() -> None:
    # A client that fills the header checksum (the 0.11 SDK sends 0) must still be seen as 0.9.
    raw = replace(RequestHeader.decode(ping()), checksum=2**127 + 77).encode()
    assert detect_generation(raw) is Generation.V09


@pytest.mark.parametrize(
    "data",
    [
        bytes(61),  # first u32 0 and command 0
        RequestHeader(size=100, client=CLIENT).encode(),  # command 5 but size < 256
        RequestHeader(size=MAX_FRAME_SIZE + 1, client=CLIENT).encode(),
    ],
)
def test_generation_given_bytes_fitting_neither_when_detected_should_say_why(data: bytes) -> None:
    result = detect_generation(data)
    assert isinstance(result, Unrecognized) and "0.8 length 0 < 4" in result.reason


def test_generation_given_final_with_short_input_when_detected_should_decide_now() -> None:
    assert isinstance(detect_generation(b"\x01", final=True), Unrecognized)
    assert isinstance(detect_generation(bytes(20), final=True), Unrecognized)
    assert detect_generation(struct.pack("<II", 4, 7777), final=True) is Generation.V08
    assert detect_generation(struct.pack("<II", 4, 7777)) == NeedMore(53)


@given(st.binary(max_size=300), st.booleans())
def test_generation_given_any_bytes_when_detected_should_return_a_result_never_raise(
    data: bytes, final: bool
) -> None:
    result = detect_generation(data, final=final)
    assert isinstance(result, Generation | NeedMore | Unrecognized)
    if isinstance(result, NeedMore):
        assert not final and result.bytes_needed > 0


# --- result section ---------------------------------------------------------------------------


def test_result_section_given_rejection_when_encoded_should_be_12_bytes_and_decode_back() -> None:
    body = encode_result_rejection(1012)
    assert body == bytes.fromhex("01000000 00000000 f4030000")
    assert decode_result_section(body) == ResultRejected(((0, 1012),))
    section = decode_result_section(body)
    assert isinstance(section, ResultRejected) and section.code == 1012


@pytest.mark.parametrize(
    "body", [b"", b"\x00\x00", bytes.fromhex("01000000 00000000"), encode_result_rejection(3) + b"x"]
)
def test_result_section_given_malformed_body_when_decoded_should_say_malformed(body: bytes) -> None:
    assert isinstance(decode_result_section(body), ResultMalformed)


@given(st.binary(max_size=64))
def test_result_section_given_payload_when_encoded_ok_should_round_trip(payload: bytes) -> None:
    section = decode_result_section(encode_result_ok(payload))
    assert isinstance(section, ResultOk) and bytes(section.payload) == payload


@given(st.binary(max_size=64))
def test_result_section_given_any_bytes_when_decoded_should_never_raise(body: bytes) -> None:
    assert isinstance(decode_result_section(body), ResultOk | ResultRejected | ResultMalformed)


# --- login bodies ----------------------------------------------------------------------------

VERSION = ClientVersionInfo(PROTOCOL_VERSION, "rust-sdk", "0.11.0")
names = st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)


@given(names, names, st.binary(max_size=20))
def test_login_given_password_login_when_encoded_and_decoded_should_round_trip(
    username: str, password: str, context: bytes
) -> None:
    parsed = decode_login(encode_password_login(VERSION, PasswordLogin(username, password, context)))
    assert isinstance(parsed, LoginRequest)
    assert parsed.version == VERSION and parsed.password == PasswordLogin(username, password, context)


@given(names, st.binary(max_size=20))
def test_login_given_token_login_when_encoded_and_decoded_should_round_trip(
    token: str, context: bytes
) -> None:
    parsed = decode_login(encode_token_login(VERSION, TokenLogin(token, context)))
    assert isinstance(parsed, LoginRequest) and parsed.token == TokenLogin(token, context)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x2c\x00\x00",  # no sdk name
        b"\x00\x2c\x00\x00\x08rust-sdk\x06",  # sdk version runs past the end
        encode_password_login(VERSION, PasswordLogin("iggy", "iggy"))[:-1],  # context length cut
        b"\x00\x2c\x00\x00\x08rust-sdk\x060.11.0\x02\xff\xfe\x00\x00\x00\x00",  # token not UTF-8
    ],
)
def test_login_given_undecodable_body_when_decoded_should_be_malformed_login(body: bytes) -> None:
    assert isinstance(decode_login(body), MalformedLogin)


@given(st.binary(max_size=120))
def test_login_given_any_bytes_when_decoded_should_never_raise(body: bytes) -> None:
    assert isinstance(decode_login(body), LoginRequest | MalformedLogin)


def test_login_reply_given_session_zero_when_encoded_should_refuse() -> None:
    with pytest.raises(AssertionError):
        encode_login_reply(LoginReply(0, 0))


@pytest.mark.parametrize(
    "body", [b"", encode_result_ok(b"\x00" * 5), encode_login_reply(LoginReply(0, 1)) + b"x"]
)
def test_login_reply_given_empty_or_short_body_when_decoded_should_be_malformed(body: bytes) -> None:
    assert isinstance(decode_login_reply(body), ResultMalformed)


def test_login_reply_given_rejection_when_decoded_should_carry_the_code() -> None:
    assert decode_login_reply(encode_result_rejection(42)) == ResultRejected(((0, 42),))


@given(u32, st.integers(1, 2**64 - 1), u32, names)
def test_login_reply_given_generated_fields_when_encoded_and_decoded_should_round_trip(
    user_id: int, session: int, version: int, server_version: str
) -> None:
    reply = LoginReply(user_id, session, version, server_version)
    assert decode_login_reply(encode_login_reply(reply)) == reply


def test_generation_given_0_8_frame_starting_like_tls_when_detected_should_still_be_v08() -> None:
    # A 0.8 SendMessages of length 0x316 begins 16 03 00 00, the TLS record prefix.
    assert detect_generation(struct.pack("<II", 0x316, 101)) is Generation.V08


# --- ReplyDecoder (client side) ---------------------------------------------------------------


def test_reply_decoder_given_reply_then_eviction_when_fed_should_yield_both_in_order() -> None:
    request = RequestHeader.decode(frame())
    reply = reply_header_for(request, 4).encode() + encode_result_ok()
    eviction = eviction_for(CLIENT, EvictionReason.INVALID_CREDENTIALS).encode()
    decoder = ReplyDecoder()
    events = decoder.feed(reply + eviction)
    assert [type(e) for e in events] == [ReplyReceived, EvictionReceived]
    first, second = events
    assert isinstance(first, ReplyReceived) and first.operation is Operation.CREATE_STREAM
    assert bytes(first.body) == bytes(4)
    assert isinstance(second, EvictionReceived)
    assert second.reason is EvictionReason.INVALID_CREDENTIALS and second.sdk_error == 42
    assert decoder.bytes_needed == HEADER_SIZE


def test_reply_decoder_given_unknown_eviction_reason_when_fed_should_map_to_generic_error() -> None:
    (event,) = ReplyDecoder().feed(EvictionHeader(client=CLIENT, reason=99).encode())
    assert isinstance(event, EvictionReceived) and event.reason is None and event.sdk_error == Status.ERROR


@pytest.mark.parametrize(
    "data",
    [
        ReplyHeader(size=100, operation=Operation.LOGOUT).encode(),
        ReplyHeader(operation=Operation.LOGOUT, command=VsrCommand.REQUEST).encode(),
        ReplyHeader(operation=0).encode(),
        ReplyHeader(operation=99).encode(),
        EvictionHeader(client=CLIENT, size=260).encode() + bytes(4),
    ],
)
def test_reply_decoder_given_frame_the_sdk_refuses_when_fed_should_yield_violation_and_close(
    data: bytes,
) -> None:
    decoder = ReplyDecoder()
    (event,) = decoder.feed(data)
    assert isinstance(event, ReplyViolation) and decoder.closed
    assert decoder.feed(data) == [] and decoder.bytes_needed == 0


def test_reply_decoder_given_partial_body_when_fed_should_report_bytes_needed() -> None:
    data = ReplyHeader(size=HEADER_SIZE + 10, operation=Operation.NON_REPLICATED).encode() + bytes(10)
    decoder = ReplyDecoder()
    assert decoder.feed(data[: HEADER_SIZE + 3]) == []
    assert decoder.bytes_needed == 7
    (event,) = decoder.feed(data[HEADER_SIZE + 3 :])
    assert isinstance(event, ReplyReceived) and bytes(event.body) == bytes(10)


@given(st.binary(max_size=1200))
def test_reply_decoder_given_random_bytes_when_fed_should_never_raise(junk: bytes) -> None:
    events = ReplyDecoder().feed(junk)
    assert all(isinstance(e, ReplyReceived | EvictionReceived | ReplyViolation) for e in events)


def test_command_code_given_0_8_commands_when_compared_should_share_every_code_by_value() -> None:
    from tidelog.wire.codes import Command
    from tidelog.wire.v09.codes import CommandCode

    v09 = {int(c): c.name for c in CommandCode}
    # Every 0.8 code exists in 0.9; 11 is renamed GetSnapshotFile there.
    assert {int(c) for c in Command} <= set(v09)
    renamed = {c.name for c in Command if v09[int(c)] != c.name}
    assert renamed <= {"GET_SNAPSHOT"}
    assert set(v09) - {int(c) for c in Command} == {13, 40, 45, 606}
