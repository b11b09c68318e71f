"""The inter-shard bus: requests and replies between shard processes, bounded end to end.

One AF_UNIX stream socket joins each pair of shards (the supervisor makes them all before it
forks). The kernel keeps each direction in order, so a shard that receives a published
metadata op and then the reply to its own request has applied the op before it relays the
reply: a client never misses its own change.

Frames (all little-endian): `[u32 length][u8 kind][u32 call][u32 method or status][body]`,
`length` counting what follows it. A REQUEST names a `BusMethod` and is answered by exactly
one REPLY with the same `call` number and a status (0: done; else a tidelog status code, the
body then being the error's detail as UTF-8).

`BusCodec` is the sans-IO part (bytes in, frames out). `BusPeer` is the asyncio shell: at
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


@dataclass(frozen=True)
class Frame:
    kind: Kind
    call: int
    code: int  # a BusMethod for a REQUEST, a status for a REPLY
    body: bytes


def encode_frame(
    kind: Kind, call: int, code: int, body: bytes | bytearray | memoryview
) -> list[bytes | memoryview]:
    """The frame as pieces to write (the body is not copied)."""
    length = HEAD_BYTES - 4 + len(body)
    if length > MAX_FRAME_BYTES:
        raise BusError(f"a bus frame of {length} bytes is over the {MAX_FRAME_BYTES} byte limit")
    return [_HEAD.pack(length, kind, call, code), memoryview(body)]


class BusCodec:
    """Frames from a byte stream, in order. Raises BusError on a frame that cannot be one
    (the peer is then broken: the shard stops)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        at = 0
        buf = self._buf
        while len(buf) - at >= HEAD_BYTES:
            length, kind, call, code = _HEAD.unpack_from(buf, at)
            if length < HEAD_BYTES - 4 or length > MAX_FRAME_BYTES or kind not in (Kind.REQUEST, Kind.REPLY):
                raise BusError(f"bus frame with length {length} and kind {kind} is malformed")
            end = at + 4 + length
            if end > len(buf):
                break
            frames.append(Frame(Kind(kind), call, code, bytes(buf[at + HEAD_BYTES : end])))
            at = end
        del buf[:at]
        return frames


Serve = Callable[[BusMethod, bytes], Awaitable[tuple[int, bytes]]]


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
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next_call = 0
        self._codec = BusCodec()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lost: str | None = None
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=self._sock)
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    async def call(self, method: BusMethod, body: bytes | bytearray | memoryview) -> tuple[int, bytes]:
        """Send a request and wait for its reply: (status, body)."""
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
            future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
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

    async def _write(self, pieces: list[bytes | memoryview]) -> None:
        writer = self._writer
        assert writer is not None
        writer.writelines(pieces)
        await writer.drain()  # the kernel's socket buffer is the bound; a slow peer makes us wait

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "closed its end"
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                for frame in self._codec.feed(data):
                    if frame.kind is Kind.REPLY:
                        future = self._pending.get(frame.call)
                        if future is not None and not future.done():
                            future.set_result((frame.code, frame.body))
                    else:
                        task = asyncio.get_running_loop().create_task(self._answer(frame))
                        self._serving.add(task)
                        task.add_done_callback(self._serving.discard)
        except (OSError, BusError) as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            reason = "closing"
            raise
        finally:
            self._lose(reason)

    async def _answer(self, frame: Frame) -> None:
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
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusError(f"shard {self.peer_id} is gone: {reason}"))
        self._on_lost(self.peer_id, reason)

    async def close(self) -> None:
        self._lost = self._lost or "closing"
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
