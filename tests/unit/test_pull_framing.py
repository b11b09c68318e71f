"""The pull-style frame state machines of both generations (``wire/pull.py``,
``wire/framing.py``, ``wire/v09/frames.py``): bytes asked for one step at a time, headers
split across reads, bodies received into a caller's buffer or taken in place, violations,
and the reply headers and request numbers the machines build."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_v09_header import CLIENT
from tests.unit.test_v09_header import frame as request09
from tidelog.wire import framing as f08
from tidelog.wire.codes import Command, Status
from tidelog.wire.pull import PullReader
from tidelog.wire.v09 import frames as f09
from tidelog.wire.v09.codes import CommandCode, EvictionReason, Operation, VsrCommand
from tidelog.wire.v09.header import (
    HEADER_SIZE,
    REQUEST_OFFSETS,
    EvictionHeader,
    ReplyHeader,
    RequestHeader,
    encode_reply_for,
    eviction_for,
    reply_header_for,
)


def pull(machine: PullReader[Any], data: bytes, sizes: Iterable[int] = ()) -> list[Any]:
    """Drive ``machine`` as a socket loop would: read at most what it asks for into its
    buffer, ``sizes`` bytes per read (then whole steps)."""
    events: list[Any] = []
    chunks = iter(sizes)
    pos = 0
    while pos < len(data) and not machine.closed:
        buf = machine.buffer()
        n = min(len(buf), len(data) - pos, next(chunks, len(buf)))
        assert 0 < n <= machine.bytes_needed
        buf[:n] = data[pos : pos + n]
        pos += n
        event = machine.received(n)
        if event is not None:
            events.append(event)
    return events


def request08(code: int, payload: bytes) -> bytes:
    return f08.encode_request(code, payload)


# --- 0.8 server side ---------------------------------------------------------------------------

REQUESTS08 = [
    (Command.PING, b""),
    (Command.CREATE_STREAM, b"\x04test"),
    (Command.SEND_MESSAGES, bytes(range(200))),
]
STREAM08 = b"".join(request08(code, payload) for code, payload in REQUESTS08)


def as_requests(events: list[Any]) -> list[tuple[int, bytes]]:
    assert all(isinstance(e, f08.RequestReceived) for e in events), events
    return [(e.code, bytes(e.payload)) for e in events]


def test_server08_given_bytes_one_at_a_time_should_ask_for_each_step_and_yield_every_request() -> None:
    machine = f08.ServerFraming()
    assert machine.bytes_needed == 8 and not machine.mid_frame
    assert as_requests(pull(machine, STREAM08, [1] * len(STREAM08))) == REQUESTS08
    assert machine.bytes_needed == 8 and not machine.mid_frame


def test_server08_given_header_split_across_reads_should_ask_for_the_rest_then_the_body() -> None:
    machine = f08.ServerFraming()
    frame = request08(Command.CREATE_STREAM, b"\x04test")
    machine.buffer()[:3] = frame[:3]
    assert machine.received(3) is None and machine.bytes_needed == 5 and machine.mid_frame
    machine.buffer()[:5] = frame[3:8]
    assert machine.received(5) is None
    assert machine.reading_body and machine.bytes_needed == 5 and len(machine.buffer()) == 5
    machine.buffer()[:5] = frame[8:]
    (event,) = [machine.received(5)]
    assert as_requests([event]) == [(Command.CREATE_STREAM, b"\x04test")]


@given(st.lists(st.integers(1, 40), max_size=30))
def test_server08_given_any_read_sizes_should_yield_the_same_requests(sizes: list[int]) -> None:
    assert as_requests(pull(f08.ServerFraming(), STREAM08, sizes)) == REQUESTS08


def test_server08_given_caller_body_buffer_should_receive_the_payload_there_writable() -> None:
    machine = f08.ServerFraming()
    frame = request08(Command.SEND_MESSAGES, bytes(range(100)))
    assert machine.take(memoryview(frame[:8])) is None
    pool = bytearray(4096)  # longer than the body: only the body's length is used
    machine.use_body_buffer(pool)
    machine.buffer()[:40] = frame[8:48]
    assert machine.received(40) is None
    machine.buffer()[:] = frame[48:]
    event = machine.received(60)
    assert isinstance(event, f08.RequestReceived)
    assert (
        event.payload.obj is pool and not event.payload.readonly and bytes(event.payload) == bytes(range(100))
    )


def test_server08_given_steps_taken_in_place_should_hand_out_the_callers_view() -> None:
    machine = f08.ServerFraming()
    frame = memoryview(bytearray(request08(Command.CREATE_STREAM, b"\x04test")))
    assert machine.take(frame[:8]) is None
    event = machine.take(frame[8:])
    assert isinstance(event, f08.RequestReceived) and event.payload.obj is frame.obj


def test_server08_given_own_body_buffer_should_hand_out_a_read_only_payload() -> None:
    (event,) = pull(f08.ServerFraming(), request08(Command.CREATE_STREAM, b"\x04test"), [1] * 13)
    assert isinstance(event, f08.RequestReceived) and event.payload.readonly


def test_server08_given_length_below_4_should_report_invalid_command_and_close() -> None:
    machine = f08.ServerFraming()
    events = pull(
        machine, request08(Command.PING, b"") + struct.pack("<II", 3, 1) + request08(Command.PING, b"")
    )
    assert isinstance(events[0], f08.RequestReceived)
    assert events[1:] == [f08.FramingError(Status.INVALID_COMMAND, "request length 3 < 4")]
    assert machine.closed and machine.bytes_needed == 0 and len(machine.buffer()) == 0


def test_server08_given_payload_over_the_callers_limit_should_report_invalid_size_and_close() -> None:
    asked: list[int] = []

    def limit(code: int) -> int:
        asked.append(code)
        return 100 if code == Command.SEND_MESSAGES else 10

    machine = f08.ServerFraming(limit)
    assert len(pull(machine, request08(Command.SEND_MESSAGES, bytes(100)))) == 1
    (event,) = pull(machine, request08(Command.CREATE_STREAM, bytes(11)))
    assert isinstance(event, f08.FramingError) and event.status == Status.INVALID_SIZE_BYTES
    assert machine.closed and asked == [Command.SEND_MESSAGES, Command.CREATE_STREAM]


def test_server08_reply_header_should_be_the_ok_header_or_the_error_frame() -> None:
    assert f08.ServerFraming.reply_header(None, 0) == f08.ok_header(0)
    assert f08.ServerFraming.reply_header(Command.PING, 37) == f08.ok_header(37)
    assert f08.ServerFraming.reply_header(None, 0, Status.STALE_CLIENT) == f08.error_frame(
        Status.STALE_CLIENT
    )


# --- 0.8 client side ---------------------------------------------------------------------------


def test_client08_given_replies_one_byte_at_a_time_should_read_them_as_the_sdk() -> None:
    one = struct.pack("<II", 0, 1)  # length 1: no payload, the byte is not consumed
    error = struct.pack("<II", Status.INVALID_COMMAND, 5)  # an error ends at its header
    data = f08.ok_header(4) + b"abcd" + one + error + f08.ok_header(0)
    events = pull(f08.ClientFraming(), data, [1] * len(data))
    assert [(e.status, bytes(e.payload)) for e in events] == [
        (0, b"abcd"),
        (0, b""),
        (Status.INVALID_COMMAND, b""),
        (0, b""),
    ]


def test_client08_given_reusable_reply_buffer_should_receive_the_payload_into_it() -> None:
    machine = f08.ClientFraming()
    reply = bytearray(64)
    machine.buffer()[:] = f08.ok_header(10)
    assert machine.received(8) is None and machine.reading_body
    machine.use_body_buffer(memoryview(reply))
    machine.buffer()[:] = b"0123456789"
    event = machine.received(10)
    assert isinstance(event, f08.ReplyReceived) and event.payload.obj is reply and reply[:10] == b"0123456789"


def test_client08_given_reply_over_limit_should_report_it_and_close() -> None:
    machine = f08.ClientFraming(max_payload_bytes=8)
    (event,) = pull(machine, f08.ok_header(9))
    assert (
        isinstance(event, f08.FramingError) and event.status == Status.INVALID_SIZE_BYTES and machine.closed
    )


def test_client08_request_should_be_the_encoded_frame() -> None:
    frame = f08.ClientFraming.request(Command.CREATE_STREAM, b"\x04test")
    assert (
        frame
        == f08.encode_request(Command.CREATE_STREAM, b"\x04test")
        == bytes.fromhex("09000000ca000000") + b"\x04test"
    )
    assert f08.ClientFraming.request_header(Command.PING, 0) == struct.pack("<II", 4, Command.PING)


# --- 0.9 server side ---------------------------------------------------------------------------

FRAMES09 = [
    request09(Operation.NON_REPLICATED, b"", session=0, code=CommandCode.PING),
    request09(),
    request09(Operation.SEND_MESSAGES, bytes(range(200)), request=2),
]
STREAM09 = b"".join(FRAMES09)


def bodies(events: list[Any]) -> list[bytes]:
    assert all(isinstance(e, f09.RequestReceived) for e in events), events
    return [bytes(e.body) for e in events]


def test_server09_given_bytes_one_at_a_time_should_yield_the_same_requests_as_feed() -> None:
    machine = f09.ServerFraming()
    assert machine.bytes_needed == HEADER_SIZE
    events = pull(machine, STREAM09, [1] * len(STREAM09))
    assert bodies(events) == [frame[HEADER_SIZE:] for frame in FRAMES09]
    assert [e.header for e in events] == [e.header for e in f09.ServerFraming().feed(STREAM09)]


def test_server09_given_header_split_across_reads_should_ask_for_the_rest_then_the_body() -> None:
    machine = f09.ServerFraming()
    data = request09()
    machine.buffer()[:100] = data[:100]
    assert machine.received(100) is None and machine.bytes_needed == HEADER_SIZE - 100 and machine.mid_frame
    machine.buffer()[:] = data[100:HEADER_SIZE]
    assert machine.received(HEADER_SIZE - 100) is None
    assert machine.reading_body and machine.bytes_needed == len(data) - HEADER_SIZE
    event = machine.take(memoryview(data)[HEADER_SIZE:])
    assert isinstance(event, f09.RequestReceived) and event.operation is Operation.CREATE_STREAM


def test_server09_given_caller_body_buffer_should_receive_the_body_there() -> None:
    machine = f09.ServerFraming()
    data = request09(Operation.SEND_MESSAGES, bytes(range(200)))
    assert machine.take(memoryview(data)[:HEADER_SIZE]) is None
    pool = bytearray(200)
    machine.use_body_buffer(pool)
    event = pull(machine, data[HEADER_SIZE:], [7])[0]
    assert (
        isinstance(event, f09.RequestReceived) and event.body.obj is pool and bytes(pool) == bytes(range(200))
    )


def test_server09_given_payload_limit_when_body_exceeds_it_should_answer_invalid_size_and_close() -> None:
    asked: list[RequestHeader] = []

    def limit(header: RequestHeader) -> int:
        asked.append(header)
        return 8

    machine = f09.ServerFraming(payload_limit=limit)
    (violation,) = pull(machine, request09(body=bytes(9)) + request09())
    assert isinstance(violation, f09.ProtocolViolation) and violation.kind is f09.ViolationKind.BODY_TOO_LARGE
    assert violation.fatal and machine.closed and machine.bytes_needed == 0
    response = violation.response()
    assert response is not None and ReplyHeader.decode(response).status == Status.INVALID_SIZE_BYTES
    assert [h.body_size for h in asked] == [9]


def test_server09_given_dropped_header_should_skip_its_body_through_scratch_and_stay_in_step() -> None:
    machine = f09.ServerFraming()
    dropped = replace(RequestHeader.decode(request09(body=bytes(70_000))), client=0).encode() + bytes(70_000)
    events = pull(machine, dropped + FRAMES09[0])
    assert isinstance(events[0], f09.ProtocolViolation) and events[0].kind is f09.ViolationKind.ZERO_CLIENT
    assert isinstance(events[1], f09.RequestReceived) and len(events) == 2


def test_server09_given_size_below_256_should_close_and_read_nothing_more() -> None:
    machine = f09.ServerFraming()
    bad = RequestHeader(size=HEADER_SIZE - 1, client=CLIENT, operation=Operation.LOGOUT).encode()
    (violation,) = pull(machine, bad + FRAMES09[0])
    assert (
        isinstance(violation, f09.ProtocolViolation) and violation.kind is f09.ViolationKind.FRAME_TOO_SMALL
    )
    assert machine.closed and machine.buffer().nbytes == 0


def test_server09_given_bad_checksum_should_yield_the_status_violation_and_continue() -> None:
    data = bytearray(request09(Operation.CREATE_STREAM, b"\x0btest-stream"))
    data[-1] ^= 0xFF  # the checksum no longer matches the body
    events = pull(f09.ServerFraming(), bytes(data) + FRAMES09[0], [300, 1])
    assert isinstance(events[0], f09.ProtocolViolation) and events[0].status == Status.INVALID_FORMAT
    assert isinstance(events[1], f09.RequestReceived)


@given(
    client=st.integers(1, 2**128 - 1),
    checksum=st.integers(0, 2**64 - 1),
    request=st.integers(0, 2**64 - 1),
    timestamp=st.integers(0, 2**64 - 1),
    operation=st.sampled_from(list(Operation)),
    body_length=st.integers(0, 1 << 20),
    failed=st.booleans(),
)
def test_server09_reply_header_should_equal_reply_header_for(
    client: int,
    checksum: int,
    request: int,
    timestamp: int,
    operation: Operation,
    body_length: int,
    failed: bool,
) -> None:
    header = RequestHeader(
        client=client, request_checksum=checksum, request=request, timestamp=timestamp, operation=operation
    )
    status, length = (Status.STREAM_ID_NOT_FOUND, 0) if failed else (0, body_length)
    expected = reply_header_for(header, length, status=status).encode()
    assert (
        f09.ServerFraming.reply_header(header, length, status)
        == encode_reply_for(header, length, status)
        == expected
    )


def test_server09_eviction_should_name_the_requests_client() -> None:
    header = RequestHeader(client=CLIENT, operation=Operation.CREATE_STREAM)
    frame = f09.ServerFraming.eviction(header, EvictionReason.STALE_CLIENT)
    assert frame == eviction_for(CLIENT, EvictionReason.STALE_CLIENT).encode()
    assert EvictionHeader.decode(frame).reason == EvictionReason.STALE_CLIENT


# --- 0.9 client side ---------------------------------------------------------------------------


def test_client09_given_operations_should_number_them_as_the_sdk() -> None:
    machine = f09.ClientFraming(client=CLIENT)
    machine.session = 5
    register = machine.header(Operation.REGISTER, b"x")
    create = machine.header(Operation.CREATE_STREAM, b"\x01s")
    read = machine.header(Operation.NON_REPLICATED, b"", CommandCode.PING)
    send = machine.header(Operation.SEND_MESSAGES, b"")
    assert [(h.request, h.session) for h in (register, create, read, send)] == [
        (0, 0),
        (1, 5),
        (1, 5),
        (2, 5),
    ]
    assert read.command_code == CommandCode.PING and create.client == CLIENT


def test_client09_given_template_when_renumbered_should_change_only_the_request_number() -> None:
    machine = f09.ClientFraming(client=CLIENT)
    machine.session = 3
    frame = machine.template(Operation.SEND_MESSAGES, bytes(50))
    before = bytes(frame)
    assert RequestHeader.decode(frame).request == 0 and machine.request_number == 0
    machine.renumber(frame)
    machine.renumber(frame)
    assert RequestHeader.decode(frame).request == 2 == machine.request_number
    at = REQUEST_OFFSETS["request"]
    assert [i for i in range(len(frame)) if frame[i] != before[i]] == [at]
    with pytest.raises(AssertionError):
        machine.renumber(bytearray(machine.frame(Operation.REGISTER, b"")))


def reply09(body: bytes, status: int = 0, operation: Operation = Operation.CREATE_STREAM) -> bytes:
    header = reply_header_for(
        RequestHeader(client=CLIENT, operation=operation, request=1), len(body), status=status
    )
    return header.encode() + body


def test_client09_given_replies_one_byte_at_a_time_should_yield_replies_and_evictions() -> None:
    data = (
        reply09(b"\x00\x00\x00\x00abc")
        + eviction_for(CLIENT, EvictionReason.NO_SESSION).encode()
        + reply09(b"")
    )
    events = pull(f09.ClientFraming(), data, [1] * len(data))
    assert isinstance(events[0], f09.ReplyReceived) and bytes(events[0].body) == b"\x00\x00\x00\x00abc"
    assert isinstance(events[1], f09.EvictionReceived) and events[1].reason is EvictionReason.NO_SESSION
    assert isinstance(events[2], f09.ReplyReceived) and events[2].header.status == 0 and len(events) == 3


def test_client09_given_reusable_reply_buffer_should_receive_the_body_into_it() -> None:
    machine = f09.ClientFraming()
    data = reply09(bytes(range(90)))
    assert machine.take(memoryview(data)[:HEADER_SIZE]) is None and machine.bytes_needed == 90
    reply = bytearray(1024)
    machine.use_body_buffer(reply)
    event = pull(machine, data[HEADER_SIZE:], [50])[0]
    assert isinstance(event, f09.ReplyReceived) and event.body.obj is reply and reply[:90] == bytes(range(90))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"command": VsrCommand.REQUEST}, "neither Reply"),
        ({"size": HEADER_SIZE - 1}, "frame size"),
        ({"operation": 0}, "not a valid discriminant"),
    ],
)
def test_client09_given_frame_the_sdk_refuses_should_report_it_and_close(
    changes: dict[str, Any], reason: str
) -> None:
    machine = f09.ClientFraming()
    bad = replace(ReplyHeader(operation=Operation.CREATE_STREAM), **changes).encode()
    (event,) = pull(machine, bad + reply09(b""))
    assert isinstance(event, f09.ReplyViolation) and reason in event.reason
    assert machine.closed and machine.bytes_needed == 0
