"""One client connection: the I/O shell around a generation's sans-IO framing machine.

The first bytes decide the generation (``frames.detect_generation``); from then on the
connection drives that generation's ``ServerFraming`` (``wire/framing.py`` for 0.8,
``wire/v09/frames.py`` for 0.9), which says how many bytes to read next, parses headers into
request events and violations, and builds reply headers. Handlers see typed requests and
return typed results (:class:`Ok` with body pieces, :class:`Failed`, :class:`Evicted`,
:class:`Close`); the connection frames them, so no handler builds a header.

The read side is an ``asyncio.BufferedProtocol`` so the kernel copies straight into buffers we
own: small frames are parsed in place from a reusable buffer, and a body larger than that
gets a buffer of exactly its size (handed to the machine with ``use_body_buffer``), which a
SendMessages handler may keep (the batch then reaches the storage journal without another
copy). Requests are handled strictly one at a time, in order; a handler may return an
awaitable (e.g. a reply that waits for fsync), and reading pauses until it resolves, so a
pipelining client cannot queue unbounded work.

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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from tidelog.server.limits import ConnectionGate
from tidelog.storage.io import FileRange
from tidelog.wire import framing
from tidelog.wire.codes import IggyError, Status
from tidelog.wire.v09 import frames as frames09
from tidelog.wire.v09.codes import EvictionReason
from tidelog.wire.v09.frames import Action, Generation, NeedMore, Unrecognized, ViolationKind
from tidelog.wire.v09.header import MAX_FRAME_SIZE as V09_MAX_FRAME_SIZE
from tidelog.wire.v09.header import RequestHeader

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
# A reply body is a gather write; FileRange pieces are sent from the page cache with os.sendfile.
Piece = Buffer | FileRange

# Frames up to this size are parsed in place; a handler must not keep a view of such a payload.
SMALL_BUFFER_BYTES = 256 * 1024
# Larger payloads get lazily committed anonymous memory rather than a zero-filled bytearray.
LAZY_BUFFER_BYTES = 8 * 1024 * 1024
# How long 8 first bytes that could begin either generation wait for more before they are
# taken for what they look like (a 0.8 header with an unknown code, answered as such).
DETECT_WAIT_S = 0.2


# ---- what a handler returns: the connection frames it in its generation --------------------
@dataclass(frozen=True, slots=True)
class Ok:
    """Success; the reply body is ``pieces`` in order (0.8: the payload, 0.9: the body)."""

    pieces: Sequence[Piece] = ()
    close: bool = False  # close the connection once the reply is written


@dataclass(frozen=True, slots=True)
class Failed:
    """An error status with no body."""

    status: int
    close: bool = False


@dataclass(frozen=True, slots=True)
class Evicted:
    """A 0.9 eviction frame (section 1.6); the protocol window goes only with
    INCOMPATIBLE_PROTOCOL."""

    reason: EvictionReason
    close: bool = False
    server_protocol_version: int = 0
    server_protocol_version_min: int = 0


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection without a reply."""

    close: bool = True


@dataclass(frozen=True, slots=True)
class Handoff:
    """Move the connection to shard `target` with this very request, unanswered here: the
    shard owning what the client uses then reads and answers it (multi-shard servers)."""

    target: int
    close: bool = False


@dataclass(frozen=True, slots=True)
class Adopted:
    """A connection another shard handed over: its session and generation, the request that
    moved it (parsed there, answered here first) and any bytes read after it."""

    session: object
    generation: Generation
    key: RequestKey
    payload: bytes
    after: bytes


Result = Ok | Failed | Evicted | Close | Handoff
OK_EMPTY = Ok()

# What identifies a request to its generation's dispatcher: the 0.8 command code, or the
# whole 0.9 request header (operation, code, session and the ids a reply echoes).
RequestKey = int | RequestHeader
ServerFraming = framing.ServerFraming | frames09.ServerFraming
# 0.9 violations of the body that leave the connection usable: answered, then the next frame.
_BODY_VIOLATIONS = frozenset({ViolationKind.BAD_REQUEST_CHECKSUM, ViolationKind.LEGACY_LOGIN})


class Handler(Protocol):
    """What the connection needs from one generation's dispatcher. ``handle`` may raise
    IggyError (answered as :class:`Failed` with its status) and must not keep a view of a
    payload it does not own (``owned`` False)."""

    def payload_limit(self, conn: Connection, key: RequestKey) -> int: ...

    def handle(
        self, conn: Connection, key: RequestKey, payload: memoryview, owned: bool
    ) -> Result | Awaitable[Result]: ...

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
        adopted: Adopted | None = None,
        hand_off: Callable[[Connection, int, Adopted], Awaitable[bool]] | None = None,
    ) -> None:
        # The 0.8 dispatcher opens and closes the session; the first bytes decide which
        # generation's dispatcher answers requests, for the connection's lifetime.
        self._adopted = adopted
        self._hand_off_to = hand_off  # moves the socket to another shard (see Handoff)
        self.handed_off = False
        self._handler = handler
        self._handlers: dict[Generation, Handler] = {Generation.V08: handler}
        if v09_handler is not None:
            self._handlers[Generation.V09] = v09_handler
        self.generation: Generation | None = None
        self._framing: ServerFraming | None = None  # the generation's machine, once known
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
        # The body of one large frame, being received into its own buffer by the machine.
        self._big: bytearray | mmap.mmap | None = None
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
        if not self._gate.admit(transfer=self._adopted is not None):
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
        adopted = self._adopted
        if adopted is not None:
            self.session = adopted.session  # the dispatcher opened it on the other shard
            self._use_generation(adopted.generation)
            self._small[: len(adopted.after)] = adopted.after
            self._end = len(adopted.after)
            # Nothing read here is parsed before the request that moved the connection.
            self._busy = True
            self._update_reading()
            self._loop.call_soon(self._answer_adopted)
        else:
            self._handler.connection_made(self)
        self._watch_login()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        if self._mid_frame():
            # Nothing of a half-received request is applied; say so (rate-limited: a flood of
            # vanishing clients must not flood the log).
            self._gate.timeouts.info("connection %s lost in the middle of a request: dropped", self.peer)
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
        framing_ = self._framing
        if self._big is not None:
            assert framing_ is not None
            return framing_.buffer()  # the rest of the large body, in its own buffer
        # Exact reads, as Iggy does: what the machine needs next (the header, then exactly
        # the body). Reading further would pull the next frame's payload into this buffer, and
        # a large payload would then have to be copied out of it into its own buffer.
        pending = self._end - self._start
        if framing_ is None:  # generation unknown: enough to tell (a 0.8 ping is only 8 bytes)
            want = frames09.GENERATION_PROBE_BYTES - pending
            if want <= 0:
                want = frames09.GENERATION_PROBE_BYTES
        else:
            want = framing_.bytes_needed - pending
            if want <= 0:  # a complete step waits for a busy handler: take the next header
                want = framing_.header_size
        if self._end + want > len(self._small):
            self._compact()
        return self._small_view[self._end : min(self._end + want, len(self._small))]

    def buffer_updated(self, nbytes: int) -> None:
        self._last_progress = self._loop.time()
        if self._big is not None:
            assert self._framing is not None
            event = self._framing.received(nbytes)
            if event is not None:
                self._big = None
                self._release_budget()  # the handler owns the buffer now
                if not self._on_event(event, owned=True):
                    return
        else:
            self._end += nbytes
        self._process()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # ---- frame parsing -----------------------------------------------------------------
    def _detect(self, final: bool = False) -> bool:
        """Decide the connection's generation from its first bytes; False: not yet (or closed)."""
        found = frames09.detect_generation(self._small_view[self._start : self._end], final=final)
        if isinstance(found, NeedMore):
            if self._detect_timer is None and self._end - self._start >= framing.FRAME_HEADER_SIZE:
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
        self._use_generation(found)
        return True

    def _use_generation(self, found: Generation) -> None:
        self.generation = found
        handler = self._handler = self._handlers[found]

        def limit(key: RequestKey) -> int:
            return handler.payload_limit(self, key)

        if found is Generation.V09:
            self._framing = frames09.ServerFraming(max_frame_size=V09_MAX_FRAME_SIZE, payload_limit=limit)
        else:
            self._framing = framing.ServerFraming(limit)

    def _detect_final(self) -> None:
        self._detect_timer = None
        if not self.closed and self._framing is None and self._detect(final=True):
            self._process()

    def _process(self) -> None:
        while not self._busy and not self.closed and not self._writing_paused:
            framing_ = self._framing
            if framing_ is None:
                if not self._detect():
                    break
                framing_ = self._framing
                assert framing_ is not None
            if self._big is not None:
                break  # a large body is being received into its own buffer
            need = framing_.bytes_needed
            if need == 0:
                break  # the machine is closed: framing is lost, the connection is closing
            start = self._start
            if self._end - start >= need:
                self._start = start + need
                step = self._small_view[start : start + need]
                event = framing_.take(step)  # parsed in place: no copy
                if event is not None and not self._on_event(event, owned=False, raw=step):
                    return
                continue
            if not framing_.reading_body or need <= len(self._small):
                if start + need > len(self._small):
                    self._compact()
                break  # wait for the rest of a header or small body
            # A large body: give it its own exact-size buffer and receive into it directly,
            # once the shard-wide budget has room for it (else wait, reading paused).
            if self._waiting_bytes:
                break  # still queued for budget
            if not self._reserved_bytes:
                if not self._gate.reserve(need, self._budget_granted):
                    self._waiting_bytes = need
                    break
                self._reserved_bytes = need
            # Below LAZY_BUFFER_BYTES a bytearray (the allocator reuses these: no page faults);
            # above, anonymous memory committed page by page as bytes arrive, so a header
            # declaring a huge payload costs the server only what the client really sends.
            big: bytearray | mmap.mmap = bytearray(need) if need <= LAZY_BUFFER_BYTES else mmap.mmap(-1, need)
            framing_.use_body_buffer(memoryview(big))
            have = self._end - start
            if have:  # cannot complete the body: it is larger than the small buffer
                framing_.buffer()[:have] = self._small_view[start : self._end]
                framing_.received(have)
            self._start = self._end = 0
            self._big = big
            break
        if self._start == self._end:
            self._start = self._end = 0
        self._update_reading()
        if self._request_timer is None and self._mid_frame() and not self.closed:
            self._request_timer = self._loop.call_later(self._request_timeout_s, self._check_request)

    def _on_event(
        self, event: framing.ServerEvent | frames09.Event, owned: bool, raw: memoryview | None = None
    ) -> bool:
        """Acts on one event of the machine; False when the connection closed or must wait."""
        if type(event) is framing.RequestReceived:
            return self._dispatch(event.code, event.payload, owned)
        if type(event) is frames09.RequestReceived:
            return self._dispatch(event.header, event.body, owned)
        if type(event) is framing.FramingError:
            # Framing is lost for us (a bad length, or more than we will buffer): say why, close.
            log.info("closing connection %s: %s", self.peer, event.detail)
            self._write(framing.ServerFraming.reply_header(None, 0, event.status))
            self.close()
            return False
        violation = event
        assert isinstance(violation, frames09.ProtocolViolation)
        if violation.kind in _BODY_VIOLATIONS:
            kind_name, detail = violation.kind.value, violation.detail
            log.info("0.9 request from %s refused: %s (%s)", self.peer, kind_name, detail)
            answer = violation.response()
            if answer is not None:
                self._write(answer)
            self._watch_login()
            return True
        self._refuse_header(violation, raw)
        return False

    def _refuse_header(self, violation: frames09.ProtocolViolation, raw: memoryview | None) -> None:
        """A 0.9 header the connection cannot continue after: log why, answer with the
        eviction the reference names where the client can be told (it then fails at once
        instead of waiting 30 s for a reply), and close."""
        header = violation.header
        if violation.kind is ViolationKind.BODY_TOO_LARGE:
            log.info("closing connection %s: %s", self.peer, violation.detail)
        else:
            log.warning(
                "closing connection %s: bad 0.9 request header (%s: %s), first bytes [%s]",
                self.peer,
                violation.kind.value,
                violation.detail,
                _hex(raw) if raw is not None else "",
            )
        reply = violation.response()
        if reply is None and header is not None and header.client != 0 and violation.action is Action.DROP:
            reply = frames09.ServerFraming.eviction(header, EvictionReason.INVALID_REQUEST_OPERATION)
        if reply is not None:
            self._write(reply)
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
        try:
            self._process()
        except Exception:
            self._fail("resuming after its frame budget was granted")

    def _release_budget(self) -> None:
        if self._reserved_bytes:
            reserved, self._reserved_bytes = self._reserved_bytes, 0
            self._gate.release(reserved)

    def _mid_frame(self) -> bool:
        framing_ = self._framing
        return self._end > self._start or (framing_ is not None and framing_.mid_frame)

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
        try:
            result = self._handler.handle(self, key, payload, owned)
        except IggyError as exc:
            self._reply(key, Failed(exc.status))
            self._watch_login()
            return True
        except Exception:
            log.exception("handler failed for request %s from %s", key, self.peer)
            self._reply(key, Failed(Status.ERROR))
            return True
        if type(result) is Handoff:
            self._busy = True
            self._update_reading()  # nothing more is read here: the next bytes are the target's
            self._pending = asyncio.ensure_future(self._hand_off(key, payload, owned, result.target))
            return False
        if isinstance(result, Awaitable):
            self._busy = True
            self._update_reading()
            # Keep a reference: the loop holds tasks only weakly.
            self._pending = asyncio.ensure_future(self._finish(key, result))
            return False
        if not self._reply(key, result):
            return False
        self._watch_login()
        return True

    async def _finish(self, key: RequestKey, pending: Awaitable[Result]) -> None:
        try:
            result: Result = await pending
        except IggyError as exc:
            result = Failed(exc.status)
        except Exception:
            log.exception("handler failed for request %s from %s", key, self.peer)
            result = Failed(Status.ERROR)
        try:
            if not self._reply(key, result):
                return
            self._busy = False
            self._watch_login()
            self._process()
        except Exception:
            self._fail(f"answering request {key}")

    def _fail(self, doing: str) -> None:
        """An unexpected error outside a handler, in a task or callback of this connection's:
        nothing would resume it (its reading may be paused, so not even the client leaving
        would be seen), so it is logged and the connection aborted (connection_lost follows)."""
        log.exception("connection %s failed %s: closing it", self.peer, doing)
        if self.transport is not None:
            self.transport.abort()

    def _answer_adopted(self) -> None:
        adopted, self._adopted = self._adopted, None
        self._busy = False
        self._update_reading()
        if adopted is None or self.closed:
            return
        try:
            # Its own writable buffer: a send's batch is kept (and converted in place) as received.
            if self._dispatch(adopted.key, memoryview(bytearray(adopted.payload)), owned=True):
                self._process()
        except Exception:
            self._fail(f"answering the request {adopted.key} it was handed over with")

    async def _hand_off(self, key: RequestKey, payload: memoryview, owned: bool, target: int) -> None:
        """Passes the socket, the session and the unanswered request to `target`; when the
        target does not take it, the request is answered here after all."""
        assert self._hand_off_to is not None and self.generation is not None
        adopted = Adopted(
            self.session,
            self.generation,
            key,
            bytes(payload),
            bytes(self._small_view[self._start : self._end]),
        )
        taken = False
        try:
            taken = await self._hand_off_to(self, target, adopted)
        except Exception:
            log.exception("handing connection %s to shard %d failed", self.peer, target)
        if taken:
            self.handed_off = True
            if self.transport is not None:
                self.transport.abort()  # our descriptor only: the target's keeps the socket
            return
        try:
            self._busy = False
            self._update_reading()
            if self._dispatch(key, payload, owned):
                self._process()
        except Exception:
            self._fail(f"answering request {key} after a handoff it kept")

    # ---- output ------------------------------------------------------------------------
    def _reply(self, key: RequestKey, result: Result) -> bool:
        """Writes ``result`` framed as the connection's generation frames replies (the
        machine builds the header from the request); False when it closes the connection."""
        framing_ = self._framing
        assert framing_ is not None
        if type(result) is Ok:
            pieces = result.pieces
            size = 0
            files = False  # whether a piece goes with sendfile
            for piece in pieces:
                if type(piece) is memoryview:
                    size += piece.nbytes
                else:
                    size += len(piece)
                    files = files or type(piece) is FileRange
            self._write(framing_.reply_header(key, size), pieces, files)  # type: ignore[arg-type]
        elif type(result) is Failed:
            self._write(framing_.reply_header(key, 0, result.status))  # type: ignore[arg-type]
        elif type(result) is Handoff:
            raise AssertionError("a handoff is not a reply")
        elif type(result) is Evicted:
            assert isinstance(framing_, frames09.ServerFraming) and isinstance(key, RequestHeader)
            frame = framing_.eviction(
                key,
                result.reason,
                server_protocol_version=result.server_protocol_version,
                server_protocol_version_min=result.server_protocol_version_min,
            )
            self._write(frame)
        if result.close:
            self.close()
            return False
        return True

    def _write(self, header: bytes, pieces: Sequence[Piece] = (), files: bool = False) -> None:
        """Writes a reply: ``header`` then ``pieces``, of which FileRange ones (``files``)
        are sent with os.sendfile."""
        if self.closed or self.transport is None:
            return
        if not pieces:
            self.transport.write(header)
            return
        if not files:
            self.transport.writelines([header, *cast(Sequence[Buffer], pieces)])
            return
        memory: list[Buffer] = [header]
        for piece in pieces:
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
