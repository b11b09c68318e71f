"""The pull-style core shared by both generations' frame state machines (sans-IO).

A frame is a fixed-size header, then a body whose length the header gives. The machine
says how many bytes it needs next (:attr:`PullReader.bytes_needed`) and where they may be
received (:meth:`PullReader.buffer`); the caller reads them with whatever I/O it has and
reports them (:meth:`PullReader.received`), or hands over a whole step it already holds in
its own memory (:meth:`PullReader.take`, parsed in place). After a header, the caller may
give the body its own buffer (:meth:`PullReader.use_body_buffer`: a pooled or page-aligned
buffer, or one reused for every reply) so a body is received exactly once, where it is
going to stay. :meth:`PullReader.feed` is the push-style convenience on top.

What a header means (body length, violations, events) is the subclass's: 0.8 in
:mod:`tidelog.wire.framing`, 0.9 in :mod:`tidelog.wire.v09.frames`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

E = TypeVar("E")

_HEADER, _BODY, _SKIP, _CLOSED = range(4)
# A discarded body (a dropped 0.9 request) is read through this much scratch at a time.
_SCRATCH_BYTES = 64 * 1024
_EMPTY = memoryview(b"")

Writable = bytearray | memoryview
"""Anything a body may be received into: a bytearray, or a writable view (of an mmap...)."""


class PullReader(Generic[E]):
    """Header, then body, then the next header: one peer's incoming frames.

    Steps: HEADER (``header_size`` bytes into the machine's own buffer, or taken from the
    caller's), BODY (the length the header declared), SKIP (a body to discard) and CLOSED
    (framing is lost; nothing more is read). A step of 0 bytes is never asked for: a
    header-only frame completes with its header.

    Bodies: one taken from the caller (:meth:`take`) is the caller's view as given; one
    received into a buffer given with :meth:`use_body_buffer` is a writable view of that
    buffer (the caller owns it); one received into the machine's own buffer is read-only
    and owned by the event.
    """

    __slots__ = ("_body", "_filled", "_given", "_header", "_need", "_scratch", "_step", "header_size")

    def __init__(self, header_size: int) -> None:
        assert header_size > 0
        self.header_size = header_size
        self._header = memoryview(bytearray(header_size))
        self._step = _HEADER
        self._need = header_size  # bytes of the current step
        self._filled = 0  # of the current step, reported through received()
        self._body: memoryview | None = None  # where the current body is being received
        self._given = False  # that buffer is the caller's
        self._scratch: memoryview | None = None

    # ---- what the machine asks for ---------------------------------------------------------
    @property
    def bytes_needed(self) -> int:
        """Bytes that complete the current step (the rest of a header or body); 0 once closed."""
        return self._need - self._filled

    @property
    def reading_body(self) -> bool:
        """A header was accepted and its body is being read."""
        return self._step == _BODY

    @property
    def mid_frame(self) -> bool:
        """Some of a frame has arrived and the rest has not."""
        step = self._step
        return step in (_BODY, _SKIP) or (step == _HEADER and self._filled > 0)

    @property
    def closed(self) -> bool:
        return self._step == _CLOSED

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame received so far (its header included)."""
        if self._step == _BODY:
            return self.header_size + self._filled
        return self._filled if self._step == _HEADER else 0

    def buffer(self) -> memoryview:
        """Where the next bytes may be received: exactly what is left of the current step
        (at most a scratch block while skipping; empty once closed)."""
        step = self._step
        if step == _HEADER:
            return self._header[self._filled :]
        if step == _BODY:
            body = self._body
            if body is None:
                body = self._body = memoryview(bytearray(self._need))
            return body[self._filled :]
        if step == _SKIP:
            scratch = self._scratch
            if scratch is None:
                scratch = self._scratch = memoryview(bytearray(_SCRATCH_BYTES))
            return scratch[: min(self._need - self._filled, _SCRATCH_BYTES)]
        return _EMPTY

    def use_body_buffer(self, buffer: Writable) -> None:
        """Receive the body just announced into ``buffer`` (at least as long as the body)
        instead of a buffer of the machine's own; the event's body is then a view of it."""
        assert self._step == _BODY and self._filled == 0, "only before any body byte arrived"
        view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        assert not view.readonly and len(view) >= self._need, "a writable buffer of the body's size"
        self._body = view[: self._need]
        self._given = True

    # ---- what the caller reports -----------------------------------------------------------
    def received(self, nbytes: int) -> E | None:
        """``nbytes`` were written into :meth:`buffer`; returns the event they complete."""
        filled = self._filled + nbytes
        assert nbytes >= 0 and filled <= self._need, "more bytes than the step asked for"
        if filled < self._need:
            self._filled = filled
            return None
        self._filled = 0
        step = self._step
        if step == _HEADER:
            return self._header_done(self._header)
        if step == _BODY:
            body = self._body
            assert body is not None
            return self._finish_body(body if self._given else body.toreadonly())
        if step == _SKIP:
            self._next_header()
        return None

    def take(self, data: memoryview) -> E | None:
        """The whole current step from the caller's memory (``len(data) == bytes_needed``,
        nothing of the step received yet), parsed in place: a body event holds ``data``."""
        assert self._filled == 0 and len(data) == self._need, "exactly one whole step"
        step = self._step
        if step == _HEADER:
            return self._header_done(data)
        if step == _BODY:
            return self._finish_body(data)
        if step == _SKIP:
            self._next_header()
        return None

    def feed(self, data: bytes | bytearray | memoryview) -> list[E]:
        """Push-style: consume ``data`` (any amount) and return the events it completes.

        A body lying whole in an immutable ``bytes`` object is a view of it (no copy); other
        input is copied, so a receive buffer may be reused between calls."""
        events: list[E] = []
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        zero_copy = isinstance(data, bytes)
        pos, end = 0, len(view)
        while pos < end and self._step != _CLOSED:
            need = self._need - self._filled
            step = self._step
            if self._filled == 0 and end - pos >= need and (zero_copy or step != _BODY):
                event = self.take(view[pos : pos + need])
                pos += need
            else:
                n = min(need, end - pos)
                if step != _SKIP:
                    self.buffer()[:n] = view[pos : pos + n]
                pos += n
                event = self.received(n)
            if event is not None:
                events.append(event)
        return events

    # ---- for the generation's subclass -----------------------------------------------------
    def _header_done(self, header: memoryview) -> E | None:
        """Parse a complete header; call one of the transitions below and return the event,
        if any (a header-only frame, or a violation)."""
        raise NotImplementedError

    def _body_done(self, body: memoryview) -> E:
        raise NotImplementedError

    def _expect_body(self, nbytes: int) -> None:
        """The header announced ``nbytes`` > 0 of body: read them next."""
        assert nbytes > 0
        self._step = _BODY
        self._need = nbytes
        self._body = None
        self._given = False

    def _skip_body(self, nbytes: int) -> None:
        """Discard the next ``nbytes`` (the body of a frame that is not delivered)."""
        if nbytes > 0:
            self._step = _SKIP
            self._need = nbytes
        else:
            self._next_header()

    def _close(self) -> None:
        self._step = _CLOSED
        self._need = self._filled = 0
        self._body = None

    def _next_header(self) -> None:
        self._step = _HEADER
        self._need = self.header_size
        self._body = None

    def _finish_body(self, body: memoryview) -> E:
        self._next_header()
        return self._body_done(body)
