"""The inter-shard bus: requests and replies between shard processes, bounded end to end.

One AF_UNIX stream socket joins each pair of shards (the supervisor makes them all before it
forks). The kernel keeps each direction in order, so a shard that receives a published
metadata op and then the reply to its own request has applied the op before it relays the
reply: a client never misses its own change.

Frames (all little-endian): `[u32 length][u8 kind][u32 call][u32 method or status][body]`,
`length` counting what follows it. A REQUEST names a `BusMethod` and is answered by exactly
one REPLY with the same `call` number and a status (0: done; else a tidelog status code, the
body then being the error's detail as UTF-8).

`BusCodec` is the sans-IO part (bytes in, frames out, each body in a buffer of its own that
the kernel fills). `BusPeer` is the asyncio shell: at
most `max_in_flight` calls wait for replies at once, and a caller beyond that waits for a
free slot, up to `call_timeout_s`, then fails: nothing queues without bound.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import cast

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<IBII")  # length, kind, call, method | status
HEAD_BYTES = _HEAD.size
MAX_FRAME_BYTES = 128 << 20  # a forwarded send or poll reply is far below this


class Kind(IntEnum):
    REQUEST = 1
    REPLY = 2


class BusMethod(IntEnum):
    FORWARD = 1  # a client request, run by the receiving shard's handlers (see router.py)
    APPLY_OPS = 2  # shard 0 publishes metadata ops; the reply says they are applied
    SNAPSHOT = 3  # a shard asks shard 0 for the whole metadata (at start, or after a gap)
    GATHER = 4  # a question every shard answers for what it holds (stats, clients)
    ADOPT = 5  # take over a client's connection (its descriptor comes over the lane)
    LEAVE_ALL = 6  # shard 0: a client (u32 id) went away; its group memberships end


class BusError(Exception):
    """The bus cannot carry a call: the peer is gone, or no slot freed up in time."""


Buffer = bytes | bytearray | memoryview
# A body to send: one buffer, or pieces written one after the other (not joined: no copy).
Body = Buffer | list[Buffer]


@dataclass(frozen=True)
class Frame:
    kind: Kind
    call: int
    code: int  # a BusMethod for a REQUEST, a status for a REPLY
    body: bytearray  # the frame's own buffer, received into directly: the receiver may keep it


def encode_frame(kind: Kind, call: int, code: int, body: Body) -> list[Buffer]:
    """The frame as pieces to write (the body is not copied)."""
    pieces = body if isinstance(body, list) else [body]
    length = HEAD_BYTES - 4 + sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in pieces)
    if length > MAX_FRAME_BYTES:
        raise BusError(f"a bus frame of {length} bytes is over the {MAX_FRAME_BYTES} byte limit")
    return [_HEAD.pack(length, kind, call, code), *pieces]


class BusCodec:
    """Frames from a byte stream, in order. The shell reads into `buffer()` (exactly what
    the frame needs next: its head, then its whole body, in a buffer of the body's size, so
    a forwarded batch is copied by the kernel alone) and reports `received(n)`. Raises
    BusError on a head that cannot be one (the peer is then broken: the shard stops)."""

    def __init__(self) -> None:
        self._head = bytearray(HEAD_BYTES)
        self._head_view = memoryview(self._head)
        self._body: bytearray | None = None  # the body being received, once the head is in
        self._kind = Kind.REQUEST
        self._call = 0
        self._code = 0
        self._have = 0  # bytes of the head, then of the body, received

    def buffer(self) -> memoryview:
        if self._body is None:
            return self._head_view[self._have :]
        return memoryview(self._body)[self._have :]

    def received(self, nbytes: int) -> Frame | None:
        self._have += nbytes
        if self._body is None:
            if self._have < HEAD_BYTES:
                return None
            length, kind, call, code = _HEAD.unpack(self._head)
            if length < HEAD_BYTES - 4 or length > MAX_FRAME_BYTES or kind not in (Kind.REQUEST, Kind.REPLY):
                raise BusError(f"bus frame with length {length} and kind {kind} is malformed")
            self._kind, self._call, self._code = Kind(kind), call, code
            self._body = bytearray(length - (HEAD_BYTES - 4))
            self._have = 0
        if self._have < len(self._body):
            return None
        frame = Frame(self._kind, self._call, self._code, self._body)
        self._body = None
        self._have = 0
        return frame

    def feed(self, data: Buffer) -> list[Frame]:
        """Push-style: every frame `data` completes (for tests and tools)."""
        frames: list[Frame] = []
        view = memoryview(data).cast("B")
        while view.nbytes:
            into = self.buffer()
            n = min(into.nbytes, view.nbytes)
            into[:n] = view[:n]
            view = view[n:]
            frame = self.received(n)
            if frame is not None:
                frames.append(frame)
        return frames


Serve = Callable[[BusMethod, bytearray], Awaitable[tuple[int, Body]]]


class _BusProtocol(asyncio.BufferedProtocol):
    """The read side: the kernel copies straight into the codec's buffers."""

    def __init__(self, peer: BusPeer) -> None:
        self._peer = peer
        self._codec = BusCodec()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._codec.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frame = self._codec.received(nbytes)
        except BusError as exc:
            self._peer._lose(str(exc))
            if self._transport is not None:
                self._transport.close()
            return
        if frame is not None:
            self._peer._frame(frame)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer._lose(str(exc) if exc is not None else "closed its end")

    def pause_writing(self) -> None:
        self._peer._pause_writing()

    def resume_writing(self) -> None:
        self._peer._resume_writing()


class BusPeer:
    """One shard's end of the socket to another shard: calls out, and serves calls in with
    `serve(method, body) -> (status, body)`. `on_lost` runs once when the peer goes away."""

    def __init__(
        self,
        peer_id: int,
        sock: socket.socket,
        serve: Serve,
        on_lost: Callable[[int, str], None],
        max_in_flight: int = 1024,
        call_timeout_s: float = 30.0,
    ) -> None:
        self.peer_id = peer_id
        self._sock = sock
        self._serve = serve
        self._on_lost = on_lost
        self._slots = asyncio.Semaphore(max_in_flight)
        self._timeout_s = call_timeout_s
        self._pending: dict[int, asyncio.Future[tuple[int, bytearray]]] = {}
        self._next_call = 0
        self._transport: asyncio.Transport | None = None
        # Set while the transport's write buffer is over its high mark: writers wait on it.
        self._drained: asyncio.Future[None] | None = None
        self._lost: str | None = None
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _BusProtocol(self), sock=self._sock)
        self._transport = cast(asyncio.Transport, transport)

    async def call(self, method: BusMethod, body: Body) -> tuple[int, bytearray]:
        """Send a request and wait for its reply: (status, body). The body's buffers must
        stay as they are until the reply comes (the transport may still hold them)."""
        if self._lost is not None:
            raise BusError(f"shard {self.peer_id} is gone: {self._lost}")
        try:
            await asyncio.wait_for(self._slots.acquire(), self._timeout_s)
        except TimeoutError:
            waiting = len(self._pending)
            raise BusError(f"shard {self.peer_id} has {waiting} calls waiting; none freed up") from None
        try:
            self._next_call = (self._next_call + 1) & 0xFFFFFFFF
            call = self._next_call
            future: asyncio.Future[tuple[int, bytearray]] = asyncio.get_running_loop().create_future()
            self._pending[call] = future
            try:
                await self._write(encode_frame(Kind.REQUEST, call, method, body))
            except OSError as exc:  # the peer died with our request half written
                self._lose(str(exc))
                raise BusError(f"shard {self.peer_id} is gone: {exc}") from exc
            return await future
        finally:
            self._pending.pop(call, None)
            self._slots.release()

    async def _write(self, pieces: list[Buffer]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._lost is not None:
            raise OSError(f"the bus to shard {self.peer_id} is closed")
        transport.writelines(pieces)
        if self._drained is not None:
            # The kernel's socket buffer and the transport's high mark are the bound: a slow
            # peer makes its callers wait.
            await asyncio.shield(self._drained)

    def _pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def _resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _frame(self, frame: Frame) -> None:
        if frame.kind is Kind.REPLY:
            future = self._pending.get(frame.call)
            if future is not None and not future.done():
                future.set_result((frame.code, frame.body))
            return
        task = asyncio.get_running_loop().create_task(self._answer(frame))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _answer(self, frame: Frame) -> None:
        body: Body
        try:
            status, body = await self._serve(BusMethod(frame.code), frame.body)
        except Exception as exc:  # a bug on this side: say so to the caller, keep serving
            log.exception("serving %s from shard %d failed", frame.code, self.peer_id)
            status, body = 1, str(exc).encode()
        if self._lost is None:
            try:
                await self._write(encode_frame(Kind.REPLY, frame.call, status, body))
            except OSError as exc:
                self._lose(str(exc))

    def _lose(self, reason: str) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        self._resume_writing()  # a writer waiting for room finds the bus closed
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusError(f"shard {self.peer_id} is gone: {reason}"))
        self._on_lost(self.peer_id, reason)

    async def close(self) -> None:
        self._lost = self._lost or "closing"
        self._resume_writing()
        if self._transport is not None:
            self._transport.close()
