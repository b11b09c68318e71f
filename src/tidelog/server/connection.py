"""One client connection: turns socket bytes into (code, payload) requests and writes replies.

The read side is an ``asyncio.BufferedProtocol`` so the kernel copies straight into buffers we
own: small frames are parsed in place from a reusable buffer, and a frame larger than that
gets a buffer of exactly its size, which a SendMessages handler may keep (the batch then
reaches the storage journal without another copy). Requests are handled strictly one at a
time, in order; a handler may return an awaitable (e.g. a reply that waits for fsync), and
reading pauses until it resolves, so a pipelining client cannot queue unbounded work.

What one client can hold is bounded (see ``limits``): connections past ``max_connections`` are
closed on arrival; a large frame's buffer is reserved in a shard-wide budget before it exists
(reading pauses while it waits); a frame whose bytes stop coming for ``request_timeout_ms``, and
a connection not logged in within ``unauthenticated_idle_timeout_ms``, are closed. The read
buffer is anonymous memory committed page by page, so an idle connection costs a page or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import socket
import struct
from collections.abc import Awaitable, Sequence
from typing import Protocol, cast

from tidelog.server.limits import ConnectionGate
from tidelog.storage.io import FileRange
from tidelog.wire import framing
from tidelog.wire.codes import FRAME_HEADER_SIZE, IggyError, Status
from tidelog.wire.v09 import frames as frames09
from tidelog.wire.v09.codes import EvictionReason
from tidelog.wire.v09.frames import Generation, NeedMore, Unrecognized
from tidelog.wire.v09.header import HEADER_SIZE as V09_HEADER_SIZE
from tidelog.wire.v09.header import MAX_FRAME_SIZE as V09_MAX_FRAME_SIZE
from tidelog.wire.v09.header import RequestHeader, eviction_for

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
# A reply is a gather write; FileRange pieces are sent from the page cache with os.sendfile.
Reply = Sequence[Buffer | FileRange]

# Frames up to this size are parsed in place; a handler must not keep a view of such a payload.
SMALL_BUFFER_BYTES = 256 * 1024
# Larger payloads get lazily committed anonymous memory rather than a zero-filled bytearray.
LAZY_BUFFER_BYTES = 8 * 1024 * 1024
_U32 = struct.Struct("<I")
# How long 8 first bytes that could begin either generation wait for more before they are
# taken for what they look like (a 0.8 header with an unknown code, answered as such).
DETECT_WAIT_S = 0.2


class CloseConnection(Exception):
    """Raised by a handler to send ``reply`` (if any) and then close the connection."""

    def __init__(self, reply: Reply | None = None) -> None:
        super().__init__()
        self.reply = reply


# What identifies a request to its generation's dispatcher: the 0.8 command code, or the
# whole 0.9 request header (operation, code, session and the ids a reply echoes).
RequestKey = int | RequestHeader


class _BadHeader(Exception):
    def __init__(self, violation: frames09.ProtocolViolation, header: RequestHeader) -> None:
        super().__init__(violation.detail)
        self.violation = violation
        self.header = header


class Handler(Protocol):
    """What the connection needs from one generation's dispatcher."""

    def payload_limit(self, conn: Connection, key: RequestKey) -> int: ...

    def handle(
        self, conn: Connection, key: RequestKey, payload: memoryview, owned: bool
    ) -> Reply | Awaitable[Reply]: ...

    def error_reply(self, key: RequestKey, status: int) -> Reply: ...

    def connection_made(self, conn: Connection) -> None: ...

    def connection_lost(self, conn: Connection) -> None: ...

    def authenticated(self, conn: Connection) -> bool: ...


def _hex(data: memoryview, limit: int = 32) -> str:
    return bytes(data[:limit]).hex(" ")


class Connection(asyncio.BufferedProtocol):
    def __init__(
        self,
        handler: Handler,
        write_buffer_high_bytes: int,
        nodelay: bool,
        gate: ConnectionGate,
        v09_handler: Handler | None = None,
    ) -> None:
        # The 0.8 dispatcher opens and closes the session; the first bytes decide which
        # generation's dispatcher answers requests, for the connection's lifetime.
        self._handler = handler
        self._handlers: dict[Generation, Handler] = {Generation.V08: handler}
        if v09_handler is not None:
            self._handlers[Generation.V09] = v09_handler
        self.generation: Generation | None = None
        self._header_size = 0  # of the generation's request header; 0 until it is known
        self._detect_timer: asyncio.TimerHandle | None = None
        self._high_bytes = write_buffer_high_bytes
        self._nodelay = nodelay
        self._gate = gate
        self._admitted = False  # counted in the gate's open connections
        self._loop: asyncio.AbstractEventLoop
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.session: object = None  # owned by the dispatcher
        # Anonymous memory, not a bytearray: a bytearray is zero-filled (256 KiB resident per
        # connection, idle or not); this commits only the pages that bytes were received into.
        self._small = mmap.mmap(-1, SMALL_BUFFER_BYTES)
        self._small_view = memoryview(self._small)
        self._start = 0  # first unparsed byte in _small
        self._end = 0  # end of received bytes in _small
        self._big: bytearray | mmap.mmap | None = None  # payload of one large frame being received
        self._big_filled = 0
        self._big_key: RequestKey = 0
        self._busy = False  # a handler's awaitable is pending
        self._pending: asyncio.Future[None] | None = None
        self._sock_fd = -1  # for os.sendfile
        self._reading_paused = False
        self._writing_paused = False
        self.closed = False
        # Limits: the budget this connection holds for its large frame, or waits for.
        self._reserved_bytes = 0
        self._waiting_bytes = 0  # > 0: queued in the gate, reading paused
        self._request_timeout_s = gate.limits.request_timeout_ms / 1000
        self._login_timeout_s = gate.limits.unauthenticated_idle_timeout_ms / 1000
        self._last_progress = 0.0  # loop time bytes last arrived (or the server last resumed us)
        self._request_timer: asyncio.TimerHandle | None = None
        self._login_timer: asyncio.TimerHandle | None = None
        self._login_overdue = False  # the deadline passed while a request was being answered

    # ---- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._loop = asyncio.get_running_loop()
        if not self._gate.admit():
            self.closed = True  # never seen by the handler; connection_lost has nothing to undo
            self._gate.refusals.info(
                "closing connection from %s at once: tcp.max_connections (%d) are open",
                self.peer,
                self._gate.limits.max_connections,
            )
            transport.close()
            return
        self._admitted = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._sock_fd = sock.fileno()
        if sock is not None and self._nodelay:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=self._high_bytes)
        self._handler.connection_made(self)
        self._watch_login()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._big = None
        for timer in (self._request_timer, self._login_timer, self._detect_timer):
            if timer is not None:
                timer.cancel()
        self._request_timer = self._login_timer = None
        if self._waiting_bytes:
            self._waiting_bytes = 0
            self._gate.cancel(self._budget_granted)
        self._release_budget()
        if self._admitted:
            self._gate.release_connection()
        self._handler.connection_lost(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests (bounded memory).
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        self._process()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled :]
        # Exact reads, as Iggy does: first the 8-byte header, then exactly the rest of a small
        # frame. Reading further would pull the next frame's payload into this buffer, and a
        # large payload would then have to be copied out of it into its own buffer.
        pending = self._end - self._start
        hsize = self._header_size
        # Generation unknown: enough to tell (a 0.8 ping is only 8 bytes).
        want = (hsize or frames09.GENERATION_PROBE_BYTES) - pending
        if want <= 0 and hsize:
            want = hsize + self._payload_len(self._small_view[self._start : self._start + hsize]) - pending
            if want <= 0:  # complete frames wait for a busy handler: take the next header
                want = hsize
        if want <= 0:
            want = hsize or frames09.GENERATION_PROBE_BYTES
        if self._end + want > len(self._small):
            self._compact()
        return self._small_view[self._end : min(self._end + want, len(self._small))]

    def buffer_updated(self, nbytes: int) -> None:
        self._last_progress = self._loop.time()
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                big, key = self._big, self._big_key
                self._big = None
                self._release_budget()  # the handler owns the buffer now
                if not self._dispatch(key, memoryview(big), owned=True):
                    return
        else:
            self._end += nbytes
        self._process()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # ---- frame parsing -----------------------------------------------------------------
    def _payload_len(self, header: memoryview) -> int:
        if self.generation is Generation.V09:
            return max(int.from_bytes(header[48:52], "little") - V09_HEADER_SIZE, 0)
        return max(_U32.unpack_from(header)[0] - 4, 0)

    def _detect(self, final: bool = False) -> bool:
        """Decide the connection's generation from its first bytes; False: not yet (or closed)."""
        found = frames09.detect_generation(self._small_view[self._start : self._end], final=final)
        if isinstance(found, NeedMore):
            if self._detect_timer is None and self._end - self._start >= FRAME_HEADER_SIZE:
                # A 0.8 header with an unknown code may be all the client sends before it
                # waits for the answer: decide on what came if nothing more does.
                self._detect_timer = self._loop.call_later(DETECT_WAIT_S, self._detect_final)
            return False
        if self._detect_timer is not None:
            self._detect_timer.cancel()
            self._detect_timer = None
        if isinstance(found, Unrecognized) or found not in self._handlers:
            reason = found.reason if isinstance(found, Unrecognized) else f"{found.value} is not served here"
            log.warning(
                "closing connection from %s: first bytes [%s] are neither an Iggy 0.8 frame "
                "([u32 length >= 4][u32 known code]) nor a 0.9 request header (256 bytes, size "
                "at 48, command 5 at 60): %s",
                self.peer,
                _hex(self._small_view[self._start : self._end]),
                reason,
            )
            self.close()
            return False
        self.generation = found
        self._handler = self._handlers[found]
        self._header_size = V09_HEADER_SIZE if found is Generation.V09 else FRAME_HEADER_SIZE
        return True

    def _detect_final(self) -> None:
        self._detect_timer = None
        if not self.closed and not self._header_size and self._detect(final=True):
            self._process()

    def _parse_header(self, header: memoryview) -> tuple[int, RequestKey]:
        if self.generation is Generation.V09:
            request = RequestHeader.decode(header)
            violation = frames09.check_header(request, max_frame_size=V09_MAX_FRAME_SIZE)
            if violation is not None:
                raise _BadHeader(violation, request)
            return request.size - V09_HEADER_SIZE, request
        return framing.parse_request_header(header)

    def _process(self) -> None:
        while not self._busy and not self.closed and not self._writing_paused:
            if not self._header_size and not self._detect():
                break
            hsize = self._header_size
            available = self._end - self._start
            if available < hsize:
                break
            start = self._start
            key: RequestKey = 0
            try:
                payload_len, key = self._parse_header(self._small_view[start : start + hsize])
                limit = self._handler.payload_limit(self, key)
                if payload_len > limit:
                    # Framing is lost for us (we will not buffer that much): say why, then close.
                    raise IggyError(Status.INVALID_SIZE_BYTES, f"payload {payload_len} > {limit}")
            except _BadHeader as bad:
                self._refuse_header(bad)
                return
            except IggyError as exc:
                log.info("closing connection %s: %s", self.peer, exc)
                self._write(self._handler.error_reply(key, exc.status))
                self.close()
                return
            frame_end = start + hsize + payload_len
            if frame_end <= self._end:
                self._start = frame_end
                payload = self._small_view[start + hsize : frame_end]
                if not self._dispatch(key, payload, owned=False):
                    return
                continue
            if hsize + payload_len <= len(self._small):
                if frame_end > len(self._small):
                    self._compact()
                break  # wait for the rest of a small frame
            # A large frame: give it its own exact-size buffer and receive into it directly,
            # once the shard-wide budget has room for it (else wait, reading paused).
            if self._waiting_bytes:
                break  # still queued for budget
            if not self._reserved_bytes:
                if not self._gate.reserve(payload_len, self._budget_granted):
                    self._waiting_bytes = payload_len
                    break
                self._reserved_bytes = payload_len
            have = self._end - start - hsize
            # Below LAZY_BUFFER_BYTES a bytearray (the allocator reuses these: no page faults);
            # above, anonymous memory committed page by page as bytes arrive, so a header
            # declaring a huge payload costs the server only what the client really sends.
            big: bytearray | mmap.mmap = (
                bytearray(payload_len) if payload_len <= LAZY_BUFFER_BYTES else mmap.mmap(-1, payload_len)
            )
            if have:
                big[:have] = self._small_view[start + hsize : self._end]
            self._start = self._end = 0
            self._big, self._big_filled, self._big_key = big, have, key
            break
        if self._start == self._end:
            self._start = self._end = 0
        self._update_reading()
        if self._request_timer is None and self._mid_frame() and not self.closed:
            self._request_timer = self._loop.call_later(self._request_timeout_s, self._check_request)

    def _refuse_header(self, bad: _BadHeader) -> None:
        """A 0.9 header the connection cannot continue after: log why, answer with the
        eviction the reference names where the client can be told (it then fails at once
        instead of waiting 30 s for a reply), and close."""
        violation, header = bad.violation, bad.header
        log.warning(
            "closing connection %s: bad 0.9 request header (%s: %s), first bytes [%s]",
            self.peer,
            violation.kind.value,
            violation.detail,
            _hex(self._small_view[self._start : self._start + 64]),
        )
        reply = violation.response()
        if reply is None and header.client != 0 and violation.action is frames09.Action.DROP:
            reply = eviction_for(header.client, EvictionReason.INVALID_REQUEST_OPERATION).encode()
        if reply is not None:
            self._write([reply])
        self.close()

    def _compact(self) -> None:
        remaining = self._end - self._start
        if self._start:
            self._small.move(0, self._start, remaining)  # memmove: the ranges may overlap
        self._start, self._end = 0, remaining

    # ---- limits ------------------------------------------------------------------------
    def _budget_granted(self) -> None:
        """The gate reserved our waiting frame's bytes (called from another connection's
        release, so the work is left to the loop rather than done re-entrantly)."""
        self._reserved_bytes, self._waiting_bytes = self._waiting_bytes, 0
        self._loop.call_soon(self._resume_after_grant)

    def _resume_after_grant(self) -> None:
        if self.closed:
            return
        self._process()

    def _release_budget(self) -> None:
        if self._reserved_bytes:
            reserved, self._reserved_bytes = self._reserved_bytes, 0
            self._gate.release(reserved)

    def _mid_frame(self) -> bool:
        return self._big is not None or self._end > self._start

    def _check_request(self) -> None:
        """Request timer: closes the connection when a begun frame has had no bytes for
        request_timeout_ms. Time our reading is paused (a handler busy, waiting for budget, or
        replies not yet drained, which a slow but reading client may cause) is not a stall of
        the client's and does not count. A paused connection holds no budget (a large frame's
        bytes come without replies in between), only its bounded read and write buffers."""
        self._request_timer = None
        if self.closed or not self._mid_frame():
            return
        now = self._loop.time()
        if self._reading_paused:
            self._last_progress = now
        stalled_s = now - self._last_progress
        if stalled_s >= self._request_timeout_s:
            self._gate.timeouts.info(
                "closing connection %s: request incomplete, no bytes for %d ms (tcp.request_timeout_ms)",
                self.peer,
                int(stalled_s * 1000),
            )
            self.close()
            return
        self._request_timer = self._loop.call_later(self._request_timeout_s - stalled_s, self._check_request)

    def _watch_login(self) -> None:
        """After connecting and after each request: a connection that is not logged in must
        log in within unauthenticated_idle_timeout_ms (counted from the connect or logout)."""
        if self._handler.authenticated(self):
            self._login_overdue = False
            if self._login_timer is not None:
                self._login_timer.cancel()
                self._login_timer = None
        elif self._login_overdue:
            self._close_not_logged_in()
        elif self._login_timer is None and not self.closed:
            self._login_timer = self._loop.call_later(self._login_timeout_s, self._check_login)

    def _check_login(self) -> None:
        self._login_timer = None
        if self.closed or self._handler.authenticated(self):
            return
        if self._busy:  # a login may be being checked right now: decide when it is answered
            self._login_overdue = True
            return
        self._close_not_logged_in()

    def _close_not_logged_in(self) -> None:
        self._gate.timeouts.info(
            "closing connection %s: not logged in within %d ms (tcp.unauthenticated_idle_timeout_ms)",
            self.peer,
            int(self._login_timeout_s * 1000),
        )
        self.close()

    def _dispatch(self, key: RequestKey, payload: memoryview, owned: bool) -> bool:
        """Runs one request. Returns False when the connection closed or parsing must wait."""
        handler = self._handler
        try:
            result = handler.handle(self, key, payload, owned)
        except CloseConnection as exc:
            if exc.reply:
                self._write(exc.reply)
            self.close()
            return False
        except IggyError as exc:
            self._write(handler.error_reply(key, exc.status))
            self._watch_login()
            return True
        except Exception:
            log.exception("handler failed for request %s from %s", key, self.peer)
            self._write(handler.error_reply(key, Status.ERROR))
            return True
        if isinstance(result, Awaitable):
            self._busy = True
            self._update_reading()
            # Keep a reference: the loop holds tasks only weakly.
            self._pending = asyncio.ensure_future(self._finish(key, result))
            return False
        self._write(result)
        self._watch_login()
        return True

    async def _finish(self, key: RequestKey, pending: Awaitable[Reply]) -> None:
        handler = self._handler
        try:
            reply: Reply = await pending
        except CloseConnection as exc:
            if exc.reply:
                self._write(exc.reply)
            self.close()
            return
        except IggyError as exc:
            reply = handler.error_reply(key, exc.status)
        except Exception:
            log.exception("handler failed for request %s from %s", key, self.peer)
            reply = handler.error_reply(key, Status.ERROR)
        self._write(reply)
        self._busy = False
        self._watch_login()
        self._process()

    # ---- output ------------------------------------------------------------------------
    def _write(self, reply: Reply) -> None:
        if self.closed or self.transport is None:
            return
        if not any(isinstance(piece, FileRange) for piece in reply):
            self.transport.writelines(cast(Sequence[Buffer], reply))
            return
        memory: list[Buffer] = []
        for piece in reply:
            if isinstance(piece, FileRange):
                if memory:
                    self.transport.writelines(memory)
                    memory = []
                self._send_file(piece)
            else:
                memory.append(piece)
        if memory:
            self.transport.writelines(memory)

    def _send_file(self, piece: FileRange) -> None:
        """Page cache to socket with os.sendfile while nothing is queued ahead of it (so the
        byte order on the wire holds); whatever it could not send goes through the transport."""
        assert self.transport is not None
        sent = 0
        if self._sock_fd >= 0 and self.transport.get_write_buffer_size() == 0:
            try:
                while sent < piece.length:
                    n = os.sendfile(self._sock_fd, piece.fd, piece.offset + sent, piece.length - sent)
                    if n == 0:
                        break
                    sent += n
            except (BlockingIOError, InterruptedError):
                pass  # the socket buffer is full: the transport queues the rest
            except OSError:
                log.debug("sendfile failed for %s; falling back to reads", self.peer, exc_info=True)
        if sent < piece.length:
            rest = FileRange(piece.fd, piece.offset + sent, piece.length - sent)
            self.transport.write(rest.read())

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        want_pause = self._busy or self._writing_paused or self._waiting_bytes > 0
        if want_pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False
            self._last_progress = self._loop.time()  # the client could not send while paused

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
