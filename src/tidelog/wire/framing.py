"""Iggy 0.8 classic framing (protocol reference sections 1.2 and 1.3), sans-IO.

Request frame: ``length u32`` (= 4 + payload length) then ``code u32`` then the payload.
Response frame: ``status u32`` then ``length u32`` (payload length) then the payload.

Nothing here touches a socket. :class:`ServerFraming` (reads requests, builds reply
headers) and :class:`ClientFraming` (builds requests, reads replies) are pull-style state
machines (:mod:`tidelog.wire.pull`): they say how many bytes come next and where they may
be received, and turn them into events. The server's connection shell, the benchmark's
connection and the test clients all drive them; :class:`FrameDecoder` is the push-style
wrapper (``feed(bytes) -> frames``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.wire.codes import (
    FRAME_HEADER_SIZE,
    MAX_CONTROL_PAYLOAD_BYTES,
    U32_MAX,
    Command,
    IggyError,
    Status,
)
from tidelog.wire.pull import PullReader

_HEADER = struct.Struct("<II")
assert _HEADER.size == FRAME_HEADER_SIZE

# The request length field counts the 4-byte code as well as the payload.
_CODE_SIZE = 4
_EMPTY = memoryview(b"")
# The SDK treats a reply length <= 1 as "no payload" and does not read that byte
# (reference surprise 8), so the client decoder must do the same to stay in step.
_RESPONSE_EMPTY_MAX_LENGTH = 1


def payload_limit(code: int, send_limit_bytes: int) -> int:
    """Largest payload the server accepts for ``code``; only SendMessages has its own cap."""
    if code == Command.SEND_MESSAGES:
        return send_limit_bytes
    return MAX_CONTROL_PAYLOAD_BYTES


def request_header(code: int, payload_length: int) -> bytes:
    """The 8-byte header of a request carrying ``payload_length`` bytes (client side)."""
    assert 0 <= payload_length <= U32_MAX - _CODE_SIZE, "payload does not fit a u32 frame length"
    return _HEADER.pack(payload_length + _CODE_SIZE, code)


def encode_request(code: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A whole request frame (client side)."""
    return request_header(code, len(payload)) + payload


def ok_header(payload_length: int) -> bytes:
    """Response header of a success carrying ``payload_length`` bytes."""
    # A 1-byte payload would be dropped by the SDK and desynchronise the stream.
    assert payload_length != 1, "a 1-byte reply payload is unreadable by the SDK"
    assert 0 <= payload_length <= U32_MAX
    return _HEADER.pack(Status.OK, payload_length)


def error_frame(status: int) -> bytes:
    """A complete error reply: the status and a zero length, no payload."""
    assert status != Status.OK
    return _HEADER.pack(status, 0)


_EMPTY_OK = _HEADER.pack(Status.OK, 0)


# --- pull-style state machines (both directions) ------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A complete request (server side). ``payload`` is a view: of the caller's memory when
    it came through ``take``, of the caller's buffer after ``use_body_buffer``, else a
    read-only buffer the event owns."""

    code: int
    payload: memoryview


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A complete reply as the SDK reads it (client side): a non-zero ``status`` or a length
    <= 1 means an empty ``payload``."""

    status: int
    payload: memoryview


@dataclass(frozen=True, slots=True)
class FramingError:
    """Framing is lost: the machine is closed. A server answers :func:`error_frame` of
    ``status`` and closes (0.8 reference 1.2, 1.4); a client gives the connection up."""

    status: Status
    detail: str


ServerEvent = RequestReceived | FramingError
ClientEvent = ReplyReceived | FramingError


def _control_limit(code: int) -> int:
    return MAX_CONTROL_PAYLOAD_BYTES


class ServerFraming(PullReader[ServerEvent]):
    """The server side of a 0.8 connection: reads requests, builds reply headers.

    ``payload_limit(code)`` is the largest payload accepted for a request (a connection
    passes its dispatcher's, which depends on the session); a header declaring more, or a
    length below 4, is a :class:`FramingError` and closes the machine. Every declared
    payload is read, unknown codes included, so the stream stays in step.
    """

    __slots__ = ("_code", "_payload_limit")

    def __init__(self, payload_limit: Callable[[int], int] = _control_limit) -> None:
        super().__init__(FRAME_HEADER_SIZE)
        self._payload_limit = payload_limit
        self._code = 0

    def _header_done(self, header: memoryview) -> ServerEvent | None:
        length, code = _HEADER.unpack_from(header)
        if length < _CODE_SIZE:
            self._close()
            return FramingError(Status.INVALID_COMMAND, f"request length {length} < 4")
        n = length - _CODE_SIZE
        if n == 0:
            return RequestReceived(code, _EMPTY)
        limit = self._payload_limit(code)
        if n > limit:
            self._close()
            return FramingError(Status.INVALID_SIZE_BYTES, f"code {code}: payload {n} bytes over {limit}")
        self._code = code
        self._expect_body(n)
        return None

    def _body_done(self, body: memoryview) -> ServerEvent:
        return RequestReceived(self._code, body)

    @staticmethod
    def reply_header(request: object, body_length: int, status: int = Status.OK) -> bytes:
        """The header of the reply to ``request`` (any request: 0.8 replies echo nothing)
        carrying ``body_length`` bytes; an error status travels without a body."""
        if status != Status.OK:
            assert body_length == 0, "an error reply carries no payload"
            return error_frame(status)
        return _EMPTY_OK if body_length == 0 else ok_header(body_length)


class ClientFraming(PullReader[ClientEvent]):
    """The client side of a 0.8 connection: builds request frames, reads replies exactly as
    the SDK does (reference surprise 8: a length <= 1 is no payload and that byte is not
    consumed). A reply payload over ``max_payload_bytes`` is a :class:`FramingError`."""

    __slots__ = ("_max_payload_bytes", "_status")

    def __init__(self, max_payload_bytes: int = MAX_CONTROL_PAYLOAD_BYTES) -> None:
        super().__init__(FRAME_HEADER_SIZE)
        assert max_payload_bytes >= 0
        self._max_payload_bytes = max_payload_bytes
        self._status = 0

    @staticmethod
    def request_header(code: int, payload_length: int) -> bytes:
        return request_header(code, payload_length)

    @staticmethod
    def request(code: int, payload: bytes | bytearray | memoryview) -> bytes:
        return encode_request(code, payload)

    def _header_done(self, header: memoryview) -> ClientEvent | None:
        status, length = _HEADER.unpack_from(header)
        if status != Status.OK or length <= _RESPONSE_EMPTY_MAX_LENGTH:
            return ReplyReceived(status, _EMPTY)
        if length > self._max_payload_bytes:
            self._close()
            return FramingError(Status.INVALID_SIZE_BYTES, f"reply payload {length} bytes over the limit")
        self._status = status
        self._expect_body(length)
        return None

    def _body_done(self, body: memoryview) -> ClientEvent:
        return ReplyReceived(self._status, body)


class FrameDecoder:
    """Push-style wrapper of the machines above: turns a byte stream into complete frames
    ``(code_or_status, payload)``.

    ``is_response=False`` decodes requests (:class:`ServerFraming`; ``send_limit_bytes``
    applies to SendMessages, ``max_payload_bytes`` to the rest); ``is_response=True``
    decodes replies (:class:`ClientFraming`).

    After a framing error the decoder is broken and the caller must close the connection;
    frames completed before the bad header are still returned, and the error is raised as
    ``IggyError`` by the next ``feed`` call (also visible as :attr:`error`).

    Payloads are zero-copy views into ``data`` when ``data`` is an immutable ``bytes``
    object and the frame lies within one call; otherwise they are copied, so a caller may
    reuse a receive buffer between calls.
    """

    __slots__ = ("_error", "_machine")

    def __init__(
        self,
        *,
        is_response: bool,
        max_payload_bytes: int = MAX_CONTROL_PAYLOAD_BYTES,
        send_limit_bytes: int | None = None,
    ) -> None:
        assert max_payload_bytes >= 0
        assert send_limit_bytes is None or send_limit_bytes >= 0
        send_limit = max_payload_bytes if send_limit_bytes is None else send_limit_bytes

        def limit(code: int) -> int:
            return send_limit if code == Command.SEND_MESSAGES else max_payload_bytes

        self._machine: ServerFraming | ClientFraming = (
            ClientFraming(max_payload_bytes) if is_response else ServerFraming(limit)
        )
        self._error: IggyError | None = None

    @property
    def error(self) -> IggyError | None:
        """The error that broke the stream, if any."""
        return self._error

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame held back until more data arrives."""
        return self._machine.buffered_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, memoryview]]:
        if self._error is not None:
            raise self._error
        frames: list[tuple[int, memoryview]] = []
        for event in self._machine.feed(data):
            if isinstance(event, FramingError):
                self._error = IggyError(event.status, event.detail)
                if not frames:
                    raise self._error
                break
            if isinstance(event, RequestReceived):
                frames.append((event.code, event.payload))
            else:
                frames.append((event.status, event.payload))
        return frames
