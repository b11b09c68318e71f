"""Section 9 test vectors of ``shared/protocol/iggy-0.9-vsr.md``, byte for byte, through the
sans-IO 0.9 codec: headers (9.1-9.7 requests and replies), the request_checksum of every
stamped request, the Register bodies (9.2 and the PAT body of 3.2) and the result-framed
reply bodies (9.2, 9.3, 9.7). Batch bodies (9.5, 9.6) are only carried here: decoding them
is tidelog.wire.v09.batch's business.

The frames are copied verbatim from the reference's "Complete frame" blocks.
"""

from __future__ import annotations

import pytest

from tidelog.wire.v09.codes import (
    PROTOCOL_VERSION,
    CommandCode,
    Operation,
    ReplyFraming,
    VsrCommand,
    reply_framing,
)
from tidelog.wire.v09.frames import (
    ClientVersionInfo,
    FrameDecoder,
    Generation,
    LoginReply,
    LoginRequest,
    PasswordLogin,
    ReplyDecoder,
    ReplyReceived,
    RequestReceived,
    ResultOk,
    TokenLogin,
    decode_login,
    decode_login_reply,
    decode_result_section,
    detect_generation,
    encode_login_reply,
    encode_password_login,
    encode_result_ok,
    encode_token_login,
)
from tidelog.wire.v09.header import (
    HEADER_SIZE,
    ReplyHeader,
    RequestHeader,
    body_checksum,
    reply_header_for,
    request_header_for,
)

CLIENT = 0x0123456789ABCDEFFEDCBA9876543210
SESSION = 1
SDK_VERSION = ClientVersionInfo(PROTOCOL_VERSION, "rust-sdk", "0.11.0")

# 9.1 Ping (before login)
PING = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000010000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "0000000000000000010000000000000002000000000000000000000000000000"
    "0000000001000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
# 9.2 LoginRegister — `login_user("iggy", "iggy")`
LOGIN = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000022010000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230195803f2a3c20de8f0000000000000000"
    "0000000000000000000000000000000001000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "002c000008727573742d73646b06302e31312e30046967677904696767790000"
    "0000"
)
# Reply to 9.2 (success, session 1)
LOGIN_REPLY = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000001a010000000000000000000008000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "95803f2a3c20de8f000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230101000000000000000100000000000000"
    "0000000000000000000000000000000001000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000100000000000000002c000005302e392e30"
)
# 9.3 CreateStream — `create_stream("test-stream")`
CREATE_STREAM = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000c010000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab8967452301797e535810dbbcac0000000000000000"
    "0000000000000000010000000000000080000000000000000100000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0b746573742d73747265616d"
)
# Reply to 9.3 (stream id 0)
CREATE_STREAM_REPLY = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000034010000000000000000000008000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "797e535810dbbcac000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "0000000000000000010000000000000080000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000004020464847060000000000000000000000000000000000"
    "000000000b746573742d73747265616d00000000"
)
# 9.4 CreateTopic — `create_topic("test-stream", "orders", 2)` as the 0.9.0 wheel sends it
CREATE_TOPIC = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000064010000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab8967452301827617933291f3400000000000000000"
    "0000000000000000020000000000000084000000000000000100000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "020b746573742d73747265616d02000000066f7264657273021a000000636f6e"
    "73756d65725f6f66667365745f6475726162696c697479020a0000007265706c"
    "696361746564020a0000006475726162696c697479020a0000007265706c6963"
    "61746564"
)
# 9.4b The same CreateTopic without options (as the snapshot SDK sends it)
CREATE_TOPIC_NO_OPTIONS = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000018010000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab8967452301fc5f6319c52b9a150000000000000000"
    "0000000000000000020000000000000084000000000000000100000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "020b746573742d73747265616d02000000066f7264657273"
)
# 9.5 SendMessages — two messages to partition 0
SEND_MESSAGES = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000008d020000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "00000000000000000300000000000000a0000000000000000100000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1f000000020b746573742d73747265616d02066f726465727302040000000002"
    "0000000000000000000000000000000000000000000000000000000040204648"
    "4706006a01000000000000c668988ea7b9c76502000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000008e5ca59edbbdbfb9010000000000000000000000000000000000000000"
    "0000000000000005000000000000000000000068656c6c6f847715e80fc31d7e"
    "0200000000000000000000000000000001000000030000000000000005000000"
    "0000000000000000776f726c64"
)
# Reply to 9.5
SEND_MESSAGES_REPLY = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000018010000000000000000000008000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "00000000000000000300000000000000a0000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "010000000000000000000000000000000000000000000000"
)
# 9.6 PollMessages — Next, auto-commit, consumer 1, partition 0, count 10
POLL_MESSAGES = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000002f010000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "0000000000000000040000000000000002000000000000000100000000000000"
    "0000000064000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "01010401000000020b746573742d73747265616d02066f726465727301000000"
    "000500000000000000000a00000001"
)
# Reply to 9.6 (the two messages of 9.5, as stored)
POLL_MESSAGES_REPLY = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000007a020000000000000000000008000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "0000000000000000040000000000000002000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000001000000000000000200000000000000000000000000000000000000"
    "d24420464847060000402046484706006a010000000000004a0f5d43a05654d5"
    "0200000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000008e5ca59edbbdbfb90100000000000000"
    "0000000000000000000000000000000000000000050000000000000000000000"
    "68656c6c6f847715e80fc31d7e02000000000000000000000000000000010000"
    "000300000000000000050000000000000000000000776f726c64"
)
# 9.7 StoreConsumerOffset — consumer 1, partition 0, offset 1
STORE_CONSUMER_OFFSET = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000002a010000000000000000000005000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "00000000000000000400000000000000a1000000000000000100000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "01010401000000020b746573742d73747265616d02066f726465727301000000"
    "00010000000000000001"
)
# Reply to 9.7
STORE_CONSUMER_OFFSET_REPLY = bytes.fromhex(
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000004010000000000000000000008000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "1032547698badcfeefcdab896745230100000000000000000000000000000000"
    "00000000000000000400000000000000a1000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "00000000"
)

# name -> (frame, operation, request number, session, NonReplicated code, request_checksum)
REQUESTS: dict[str, tuple[bytes, Operation, int, int, int, int]] = {
    "9.1 ping": (PING, Operation.NON_REPLICATED, 1, 0, CommandCode.PING, 0),
    "9.2 login": (LOGIN, Operation.REGISTER, 0, 0, 0, 0x8FDE203C2A3F8095),
    "9.3 create_stream": (CREATE_STREAM, Operation.CREATE_STREAM, 1, SESSION, 0, 0xACBCDB1058537E79),
    "9.4 create_topic": (CREATE_TOPIC, Operation.CREATE_TOPIC, 2, SESSION, 0, 0x40F3913293177682),
    "9.4b create_topic": (CREATE_TOPIC_NO_OPTIONS, Operation.CREATE_TOPIC, 2, SESSION, 0, 0x159A2BC519635FFC),
    "9.5 send_messages": (SEND_MESSAGES, Operation.SEND_MESSAGES, 3, SESSION, 0, 0),
    "9.6 poll_messages": (POLL_MESSAGES, Operation.NON_REPLICATED, 4, SESSION, CommandCode.POLL_MESSAGES, 0),
    "9.7 store_offset": (STORE_CONSUMER_OFFSET, Operation.STORE_CONSUMER_OFFSET, 4, SESSION, 0, 0),
}

# name -> (reply frame, the request it answers, op, commit)
REPLIES: dict[str, tuple[bytes, bytes, int, int]] = {
    "9.2 login": (LOGIN_REPLY, LOGIN, 1, 1),
    "9.3 create_stream": (CREATE_STREAM_REPLY, CREATE_STREAM, 0, 0),
    "9.5 send_messages": (SEND_MESSAGES_REPLY, SEND_MESSAGES, 0, 0),
    "9.6 poll_messages": (POLL_MESSAGES_REPLY, POLL_MESSAGES, 0, 0),
    "9.7 store_offset": (STORE_CONSUMER_OFFSET_REPLY, STORE_CONSUMER_OFFSET, 0, 0),
}


def decode_one(frame: bytes) -> RequestReceived:
    events = FrameDecoder().feed(frame)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, RequestReceived), event
    return event


@pytest.mark.parametrize("name", REQUESTS)
def test_request_vector_given_section_9_frame_when_decoded_should_yield_documented_fields(name: str) -> None:
    frame, operation, request, session, code, checksum = REQUESTS[name]
    event = decode_one(frame)
    header = event.header
    assert event.operation is operation
    assert header.size == len(frame)
    assert header.command == VsrCommand.REQUEST
    assert header.client == CLIENT
    assert header.request == request
    assert header.session == session
    assert header.command_code == code
    assert event.code == (code if operation is Operation.NON_REPLICATED else None)
    assert header.request_checksum == checksum
    assert bytes(event.body) == frame[HEADER_SIZE:]


@pytest.mark.parametrize("name", REQUESTS)
def test_request_vector_given_decoded_header_when_reencoded_should_match_byte_for_byte(name: str) -> None:
    frame = REQUESTS[name][0]
    header = RequestHeader.decode(frame)
    assert header.encode() == frame[:HEADER_SIZE]
    assert header.encode() + frame[HEADER_SIZE:] == frame


@pytest.mark.parametrize("name", REQUESTS)
def test_request_vector_given_body_when_built_like_the_sdk_should_reproduce_the_frame(name: str) -> None:
    frame, operation, request, session, code, checksum = REQUESTS[name]
    body = frame[HEADER_SIZE:]
    built = request_header_for(
        operation, body, client=CLIENT, request=request, session=session, command_code=code
    )
    # The builder stamps XXH3-64 only where the SDK does (section 1.2), so the checksum
    # column of every vector (zero for 2 and 160-162) comes out unchanged.
    assert built.request_checksum == checksum
    assert built.encode() + body == frame


@pytest.mark.parametrize("name", [n for n, v in REQUESTS.items() if v[5] != 0])
def test_request_checksum_given_stamped_vector_when_hashed_should_equal_xxh3_of_body(name: str) -> None:
    frame, *_, checksum = REQUESTS[name]
    assert body_checksum(frame[HEADER_SIZE:]) == checksum
    # Stored little-endian in the low 8 bytes of the u128 at offset 144, upper 8 bytes zero.
    assert frame[144:160] == checksum.to_bytes(8, "little") + bytes(8)


@pytest.mark.parametrize("name", REPLIES)
def test_reply_vector_given_decoded_header_when_reencoded_should_match_byte_for_byte(name: str) -> None:
    reply = REPLIES[name][0]
    header = ReplyHeader.decode(reply)
    assert header.encode() == reply[:HEADER_SIZE]
    assert header.size == len(reply)
    assert header.command == VsrCommand.REPLY
    assert header.status == 0
    assert header.client == CLIENT


@pytest.mark.parametrize("name", REPLIES)
def test_reply_vector_given_its_request_when_reply_header_built_should_match_byte_for_byte(name: str) -> None:
    reply, request_frame, op, commit = REPLIES[name]
    request = RequestHeader.decode(request_frame)
    built = reply_header_for(request, len(reply) - HEADER_SIZE, op=op, commit=commit)
    assert built.encode() == reply[:HEADER_SIZE]


def test_login_vector_given_register_body_when_decoded_should_read_password_shape() -> None:
    parsed = decode_login(LOGIN[HEADER_SIZE:])
    assert isinstance(parsed, LoginRequest)
    assert parsed.version == SDK_VERSION
    assert parsed.password == PasswordLogin("iggy", "iggy")
    assert parsed.token is None  # the token shape leaves "iggy" + context bytes over


def test_login_vector_given_credentials_when_encoded_should_match_section_9_2_body() -> None:
    assert encode_password_login(SDK_VERSION, PasswordLogin("iggy", "iggy")) == LOGIN[HEADER_SIZE:]


# Section 3.2, observed body for token ``iggypat-0123456789``.
PAT_LOGIN_BODY = bytes.fromhex("002c000008") + b"rust-sdk" + b"\x06" + b"0.11.0"
PAT_LOGIN_BODY += b"\x12" + b"iggypat-0123456789" + bytes(4)


def test_login_vector_given_section_3_2_pat_body_when_decoded_should_read_token_shape_only() -> None:
    parsed = decode_login(PAT_LOGIN_BODY)
    assert isinstance(parsed, LoginRequest)
    assert parsed.version == SDK_VERSION
    assert parsed.token == TokenLogin("iggypat-0123456789")
    assert parsed.password is None
    assert encode_token_login(SDK_VERSION, TokenLogin("iggypat-0123456789")) == PAT_LOGIN_BODY


def test_login_reply_vector_given_session_1_when_encoded_should_match_section_9_2_reply_body() -> None:
    body = LOGIN_REPLY[HEADER_SIZE:]
    assert encode_login_reply(LoginReply(user_id=0, session=1)) == body
    assert decode_login_reply(body) == LoginReply(0, 1, 0x2C00, "0.9.0")


def test_result_vector_given_create_stream_reply_when_decoded_should_be_ok_with_stream_payload() -> None:
    body = CREATE_STREAM_REPLY[HEADER_SIZE:]
    assert reply_framing(Operation.CREATE_STREAM) is ReplyFraming.RESULT_SECTION
    section = decode_result_section(body)
    assert isinstance(section, ResultOk)
    assert bytes(section.payload) == body[4:]
    assert encode_result_ok(section.payload) == body
    # StreamResponse: id u32, created_at u64, topics_count u32, size u64, messages u64, name.
    assert bytes(section.payload[32:44]) == b"\x0btest-stream"


def test_result_vector_given_store_offset_reply_when_encoded_should_be_exactly_four_zero_bytes() -> None:
    assert reply_framing(Operation.STORE_CONSUMER_OFFSET) is ReplyFraming.RESULT_SECTION
    assert encode_result_ok() == STORE_CONSUMER_OFFSET_REPLY[HEADER_SIZE:] == bytes(4)


@pytest.mark.parametrize("operation", [Operation.SEND_MESSAGES, Operation.NON_REPLICATED])
def test_result_vector_given_raw_reply_operation_when_framing_asked_should_be_raw(
    operation: Operation,
) -> None:
    # 9.5 and 9.6 bodies start 01 00 00 00 / 00 00 00 00: read as a result section they
    # would be a rejection / success and be misread, so they must stay raw (section 1.5).
    assert reply_framing(operation) is ReplyFraming.RAW


def test_decoder_given_all_request_vectors_as_one_stream_when_fed_byte_by_byte_should_yield_each() -> None:
    stream = b"".join(v[0] for v in REQUESTS.values())
    decoder = FrameDecoder()
    events = []
    for i in range(len(stream)):
        events += decoder.feed(stream[i : i + 1])
    assert [type(e) for e in events] == [RequestReceived] * len(REQUESTS)
    for event, (frame, operation, *_rest) in zip(events, REQUESTS.values(), strict=True):
        assert isinstance(event, RequestReceived)
        assert event.operation is operation
        assert event.header.encode() + bytes(event.body) == frame
    assert decoder.bytes_needed == HEADER_SIZE


@pytest.mark.parametrize("name", REQUESTS)
def test_generation_given_section_9_request_when_detected_should_be_v09(name: str) -> None:
    assert detect_generation(REQUESTS[name][0]) is Generation.V09


def test_reply_decoder_given_all_reply_vectors_as_one_stream_when_fed_byte_by_byte_should_yield_each() -> (
    None
):
    stream = b"".join(v[0] for v in REPLIES.values())
    decoder = ReplyDecoder()
    events = []
    for i in range(len(stream)):
        events += decoder.feed(stream[i : i + 1])
    assert len(events) == len(REPLIES)
    for event, (reply, request, *_rest) in zip(events, REPLIES.values(), strict=True):
        assert isinstance(event, ReplyReceived)
        assert event.operation == RequestHeader.decode(request).operation
        assert event.header.status == 0
        assert event.header.encode() + bytes(event.body) == reply
