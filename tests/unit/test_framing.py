from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidelog.wire.codes import MAX_CONTROL_PAYLOAD_BYTES, Command, IggyError, Status
from tidelog.wire.framing import (
    ClientFraming,
    FrameDecoder,
    FramingError,
    ReplyReceived,
    RequestReceived,
    ServerFraming,
    encode_request,
    error_frame,
    ok_header,
    payload_limit,
)


def frames_as_bytes(frames: list[tuple[int, memoryview]]) -> list[tuple[int, bytes]]:
    return [(code, bytes(payload)) for code, payload in frames]


# --- headers ----------------------------------------------------------------------------------


def test_request_header_given_login_header_should_ask_for_its_24_byte_payload() -> None:
    machine = ServerFraming()
    assert machine.take(memoryview(bytes.fromhex("1c000000 26000000"))) is None
    assert machine.reading_body and machine.bytes_needed == 24
    assert machine.feed(bytes(24)) == [RequestReceived(Command.LOGIN_USER, memoryview(bytes(24)))]


def test_request_header_given_length_4_should_mean_empty_payload() -> None:
    assert ServerFraming().feed(struct.pack("<II", 4, 1)) == [RequestReceived(1, memoryview(b""))]


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_request_header_given_length_below_4_should_fail_invalid_command_and_close(length: int) -> None:
    machine = ServerFraming()
    [event] = machine.feed(struct.pack("<II", length, 1))
    assert isinstance(event, FramingError) and event.status == Status.INVALID_COMMAND
    assert machine.closed


def test_request_header_given_memoryview_should_read_it() -> None:
    frame = memoryview(bytearray(struct.pack("<II", 9, 202) + b"12345"))
    assert ServerFraming().feed(frame) == [RequestReceived(202, memoryview(b"12345"))]


def test_payload_limit_given_control_code_should_be_10_mib() -> None:
    for code in (Command.PING, Command.CREATE_STREAM, Command.POLL_MESSAGES):
        assert payload_limit(code, send_limit_bytes=123) == MAX_CONTROL_PAYLOAD_BYTES == 10 * 1024 * 1024


def test_payload_limit_given_send_messages_should_use_configured_limit() -> None:
    assert payload_limit(Command.SEND_MESSAGES, send_limit_bytes=123) == 123
    assert payload_limit(Command.SEND_MESSAGES, send_limit_bytes=1 << 31) == 1 << 31


def test_encode_request_given_payload_should_prefix_length_counting_the_code() -> None:
    frame = encode_request(Command.CREATE_STREAM, b"\x04test")
    assert frame == bytes.fromhex("09000000 ca000000 04 74657374")
    assert ServerFraming().feed(frame) == [RequestReceived(Command.CREATE_STREAM, memoryview(b"\x04test"))]


def test_ok_header_given_length_should_have_status_0() -> None:
    assert ok_header(37) == bytes.fromhex("00000000 25000000")
    assert ClientFraming().feed(ok_header(37) + bytes(37)) == [ReplyReceived(0, memoryview(bytes(37)))]


def test_ok_header_given_one_byte_payload_should_refuse_it() -> None:
    with pytest.raises(AssertionError):
        ok_header(1)


def test_error_frame_given_status_should_carry_zero_length() -> None:
    frame = error_frame(Status.STREAM_ID_NOT_FOUND)
    assert frame == struct.pack("<II", 1009, 0)
    assert ClientFraming().feed(frame) == [ReplyReceived(1009, memoryview(b""))]


# --- request decoder --------------------------------------------------------------------------

REQUESTS = [
    (Command.PING, b""),
    (Command.CREATE_STREAM, b"\x04test"),
    (Command.GET_STREAM, bytes.fromhex("02 04 74657374")),
    (Command.SEND_MESSAGES, bytes(range(200))),
    (Command.LOGOUT_USER, b""),
]
STREAM = b"".join(encode_request(code, payload) for code, payload in REQUESTS)


def test_frame_decoder_given_whole_stream_when_fed_at_once_should_return_every_frame() -> None:
    frames = FrameDecoder(is_response=False).feed(STREAM)
    assert frames_as_bytes(frames) == REQUESTS


def test_frame_decoder_given_stream_when_fed_byte_by_byte_should_return_same_frames() -> None:
    decoder = FrameDecoder(is_response=False)
    out: list[tuple[int, memoryview]] = []
    for i in range(len(STREAM)):
        out += decoder.feed(STREAM[i : i + 1])
    assert frames_as_bytes(out) == REQUESTS
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("chunk", [3, 7, 8, 9, 64])
def test_frame_decoder_given_stream_when_fed_in_chunks_should_return_same_frames(chunk: int) -> None:
    decoder = FrameDecoder(is_response=False)
    out: list[tuple[int, memoryview]] = []
    for i in range(0, len(STREAM), chunk):
        out += decoder.feed(STREAM[i : i + chunk])
    assert frames_as_bytes(out) == REQUESTS


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_frame_decoder_given_any_split_should_return_same_frames(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    decoder = FrameDecoder(is_response=False)
    out: list[tuple[int, memoryview]] = []
    for a, b in itertools.pairwise(bounds):
        out += decoder.feed(STREAM[a:b])
    assert frames_as_bytes(out) == REQUESTS


def test_frame_decoder_given_partial_frame_should_hold_it_back() -> None:
    decoder = FrameDecoder(is_response=False)
    frame = encode_request(Command.CREATE_STREAM, b"\x04test")
    assert decoder.feed(frame[:10]) == []
    assert decoder.buffered_bytes == 10
    assert frames_as_bytes(decoder.feed(frame[10:])) == [(Command.CREATE_STREAM, b"\x04test")]


def test_frame_decoder_given_bytes_input_should_return_views_without_copying() -> None:
    data = encode_request(Command.CREATE_STREAM, b"\x04test")
    [(_, payload)] = FrameDecoder(is_response=False).feed(data)
    assert payload.obj is data and payload.readonly


def test_frame_decoder_given_reused_bytearray_should_not_alias_it() -> None:
    buf = bytearray(encode_request(Command.CREATE_STREAM, b"\x04test"))
    [(_, payload)] = FrameDecoder(is_response=False).feed(buf)
    buf[:] = bytes(len(buf))
    assert bytes(payload) == b"\x04test"


def test_frame_decoder_given_unknown_code_should_still_consume_its_payload() -> None:
    data = encode_request(9999, b"abcdef") + encode_request(Command.PING, b"")
    frames = FrameDecoder(is_response=False).feed(data)
    assert frames_as_bytes(frames) == [(9999, b"abcdef"), (Command.PING, b"")]


def test_frame_decoder_given_control_payload_over_limit_should_raise_invalid_size() -> None:
    decoder = FrameDecoder(is_response=False, max_payload_bytes=16, send_limit_bytes=1000)
    with pytest.raises(IggyError) as err:
        decoder.feed(struct.pack("<II", 4 + 17, Command.CREATE_STREAM))
    assert err.value.status == Status.INVALID_SIZE_BYTES


def test_frame_decoder_given_send_messages_should_use_send_limit() -> None:
    decoder = FrameDecoder(is_response=False, max_payload_bytes=16, send_limit_bytes=100)
    frames = decoder.feed(encode_request(Command.SEND_MESSAGES, bytes(100)))
    assert len(frames) == 1 and len(frames[0][1]) == 100
    with pytest.raises(IggyError) as err:
        decoder.feed(struct.pack("<II", 4 + 101, Command.SEND_MESSAGES))
    assert err.value.status == Status.INVALID_SIZE_BYTES


def test_frame_decoder_given_length_below_4_should_raise_invalid_command() -> None:
    with pytest.raises(IggyError) as err:
        FrameDecoder(is_response=False).feed(struct.pack("<II", 3, 1))
    assert err.value.status == Status.INVALID_COMMAND


def test_frame_decoder_given_good_frame_then_bad_header_should_return_frame_then_raise() -> None:
    decoder = FrameDecoder(is_response=False)
    good = encode_request(Command.PING, b"")
    frames = decoder.feed(good + struct.pack("<II", 2, 1))
    assert frames_as_bytes(frames) == [(Command.PING, b"")]
    assert decoder.error is not None and decoder.error.status == Status.INVALID_COMMAND
    with pytest.raises(IggyError):
        decoder.feed(good)


# --- response decoder -------------------------------------------------------------------------


def test_frame_decoder_given_responses_should_return_status_and_payload() -> None:
    data = ok_header(4) + b"\x00\x00\x00\x00" + error_frame(Status.UNAUTHENTICATED) + ok_header(0)
    frames = FrameDecoder(is_response=True).feed(data)
    assert frames_as_bytes(frames) == [(0, bytes(4)), (Status.UNAUTHENTICATED, b""), (0, b"")]


def test_frame_decoder_given_response_length_1_should_not_read_that_byte() -> None:
    # Mirrors the SDK: a length <= 1 is an empty result and the byte after the header is
    # taken as the start of the next frame.
    one = struct.pack("<II", 0, 1)
    following = ok_header(4) + b"abcd"
    decoder = FrameDecoder(is_response=True)
    frames = decoder.feed(one + following)
    assert frames_as_bytes(frames) == [(0, b""), (0, b"abcd")]
    assert decoder.buffered_bytes == 0


def test_frame_decoder_given_error_status_with_length_should_not_read_payload() -> None:
    data = struct.pack("<II", Status.INVALID_COMMAND, 5) + ok_header(0)
    frames = FrameDecoder(is_response=True).feed(data)
    assert frames_as_bytes(frames) == [(Status.INVALID_COMMAND, b""), (0, b"")]


def test_frame_decoder_given_response_over_limit_should_raise_invalid_size() -> None:
    decoder = FrameDecoder(is_response=True, max_payload_bytes=8)
    assert frames_as_bytes(decoder.feed(ok_header(8) + bytes(8))) == [(0, bytes(8))]
    with pytest.raises(IggyError) as err:
        decoder.feed(ok_header(9))
    assert err.value.status == Status.INVALID_SIZE_BYTES


def test_frame_decoder_given_response_byte_by_byte_should_reassemble_payload() -> None:
    payload = bytes(range(50))
    data = ok_header(len(payload)) + payload
    decoder = FrameDecoder(is_response=True)
    out: list[tuple[int, memoryview]] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert frames_as_bytes(out) == [(0, payload)]
