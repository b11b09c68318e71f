"""The inter-shard bus: frames (sans-IO), and calls between two peers over a socketpair."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidelog.server.bus import BusCodec, BusError, BusMethod, BusPeer, Kind, encode_frame


@given(
    st.lists(
        st.tuples(st.sampled_from(list(Kind)), st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=8
    ),
    st.integers(1, 50),
)
def test_codec_given_frames_in_any_chunks_when_fed_should_give_them_back_in_order(
    frames: list[tuple[Kind, int, bytes]], chunk: int
) -> None:
    stream = b"".join(b"".join(bytes(p) for p in encode_frame(k, call, 7, body)) for k, call, body in frames)
    codec = BusCodec()
    got = []
    for at in range(0, len(stream), chunk):
        got += codec.feed(stream[at : at + chunk])
    assert [(f.kind, f.call, f.code, f.body) for f in got] == [(k, call, 7, body) for k, call, body in frames]


def test_codec_given_a_malformed_frame_when_fed_should_raise() -> None:
    with pytest.raises(BusError):
        BusCodec().feed(b"\x01\x00\x00\x00" + b"\x09" * 16)


async def _pair(serve_a, serve_b, max_in_flight: int = 1024, timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lost: list[tuple[int, str]] = []
    a = BusPeer(1, left, serve_a, lambda p, r: lost.append((p, r)), max_in_flight, timeout_s)
    b = BusPeer(0, right, serve_b, lambda p, r: lost.append((p, r)), max_in_flight, timeout_s)
    await a.start()
    await b.start()
    return a, b, lost


async def test_peer_given_calls_both_ways_when_served_should_answer_each_with_its_reply() -> None:
    async def echo(method: BusMethod, body: bytes) -> tuple[int, bytes]:
        await asyncio.sleep(0.001 * (body[0] % 3))  # replies out of order
        return 0, bytes([method]) + body

    a, b, _ = await _pair(echo, echo)
    replies = await asyncio.gather(*(a.call(BusMethod.FORWARD, bytes([i]) * 1000) for i in range(20)))
    assert replies == [(0, bytes([BusMethod.FORWARD]) + bytes([i]) * 1000) for i in range(20)]
    assert await b.call(BusMethod.GATHER, b"x") == (0, bytes([BusMethod.GATHER]) + b"x")
    await a.close()
    await b.close()


async def test_peer_given_more_calls_than_slots_when_the_peer_is_slow_should_wait_then_fail_none_lost() -> (
    None
):
    gate = asyncio.Event()
    started = 0

    async def slow(method: BusMethod, body: bytes) -> tuple[int, bytes]:
        nonlocal started
        started += 1
        await gate.wait()
        return 0, body

    a, b, _ = await _pair(slow, slow, max_in_flight=2, timeout_s=0.2)
    calls = [asyncio.ensure_future(a.call(BusMethod.FORWARD, b"%d" % i)) for i in range(3)]
    await asyncio.sleep(0.1)
    assert started == 2  # the third waits for a slot: nothing queues past the bound
    await asyncio.sleep(0.2)
    with pytest.raises(BusError, match="none freed up"):
        await calls[2]
    gate.set()
    assert [await c for c in calls[:2]] == [(0, b"0"), (0, b"1")]
    await a.close()
    await b.close()


async def test_peer_given_the_other_end_closes_when_calling_should_fail_pending_and_later_calls() -> None:
    never = asyncio.Event()

    async def hang(method: BusMethod, body: bytes) -> tuple[int, bytes]:
        await never.wait()
        return 0, b""

    a, b, lost = await _pair(hang, hang)
    pending = asyncio.ensure_future(a.call(BusMethod.FORWARD, b"x"))
    await asyncio.sleep(0.05)
    await b.close()
    with pytest.raises(BusError, match="gone"):
        await pending
    with pytest.raises(BusError, match="gone"):
        await a.call(BusMethod.FORWARD, b"y")
    assert lost == [(1, "closed its end")]  # a lost its peer (shard 1); b closed on purpose
    await a.close()


def test_codec_given_a_frame_when_read_should_ask_for_exactly_its_head_then_its_body() -> None:
    """The shell reads into buffer(): the head, then the whole body in one buffer of the
    body's size, which the frame then is (no copy after the kernel's)."""
    body = bytes(range(256)) * 1000
    wire = b"".join(
        bytes(p) for p in encode_frame(Kind.REQUEST, 9, BusMethod.FORWARD, [b"ab", memoryview(body)])
    )
    codec = BusCodec()
    head = codec.buffer()
    assert head.nbytes == len(wire) - 2 - len(body)
    head[:] = wire[: head.nbytes]
    assert codec.received(head.nbytes) is None
    into = codec.buffer()
    assert into.nbytes == 2 + len(body)
    into[:] = wire[head.nbytes :]
    frame = codec.received(into.nbytes)
    assert frame is not None and frame.call == 9 and frame.body == b"ab" + body
    assert into.obj is frame.body and isinstance(frame.body, bytearray)


async def test_peer_given_a_body_in_pieces_when_called_should_deliver_them_joined() -> None:
    got: list[bytes] = []

    async def serve_b(method: BusMethod, body: bytearray) -> tuple[int, bytes]:
        got.append(bytes(body))
        body[:1] = b"X"  # the receiver owns its frame's buffer
        return 0, bytes(body)

    async def serve_a(method: BusMethod, body: bytearray) -> tuple[int, bytes]:
        return 0, b""

    a, b, _ = await _pair(serve_a, serve_b)
    try:
        payload = bytearray(b"p" * 300_000)
        status, reply = await a.call(BusMethod.FORWARD, [b"head:", memoryview(payload)])
        assert status == 0 and got == [b"head:" + bytes(payload)]
        assert reply == b"Xead:" + bytes(payload) and payload == b"p" * 300_000
    finally:
        await a.close()
        await b.close()
