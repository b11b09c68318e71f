"""Iggy 0.8 classic framing (protocol reference sections 1.2 and 1.3), sans-IO.

Request frame: ``length u32`` (= 4 + payload length) then ``code u32`` then the payload.
Response frame: ``status u32`` then ``length u32`` (payload length) then the payload.

Nothing here touches a socket: bytes go in, frames come out. The server's connection
shell and the test clients drive the same :class:`FrameDecoder`.
"""

from __future__ import annotations

import struct

from tidelog.wire.codes import (
    FRAME_HEADER_SIZE,
    MAX_CONTROL_PAYLOAD_BYTES,
    U32_MAX,
    Command,
    IggyError,
    Status,
)

_HEADER = struct.Struct("<II")
assert _HEADER.size == FRAME_HEADER_SIZE

# The request length field counts the 4-byte code as well as the payload.
_CODE_SIZE = 4
_EMPTY = memoryview(b"")
# The SDK treats a reply length <= 1 as "no payload" and does not read that byte
# (reference surprise 8), so the client decoder must do the same to stay in step.
_RESPONSE_EMPTY_MAX_LENGTH = 1


def parse_request_header(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return ``(payload_length, code)`` of an 8-byte request header."""
    length, code = _HEADER.unpack_from(header)
    if length < _CODE_SIZE:
        raise IggyError(Status.INVALID_COMMAND, f"request length {length} < 4")
    return length - _CODE_SIZE, code


def payload_limit(code: int, send_limit_bytes: int) -> int:
    """Largest payload the server accepts for ``code``; only SendMessages has its own cap."""
    if code == Command.SEND_MESSAGES:
        return send_limit_bytes
    return MAX_CONTROL_PAYLOAD_BYTES


def encode_request(code: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A whole request frame (client side)."""
    n = len(payload)
    assert n + _CODE_SIZE <= U32_MAX, "payload does not fit a u32 frame length"
    return _HEADER.pack(n + _CODE_SIZE, code) + payload


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


def parse_response_header(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return ``(status, payload_length)`` of an 8-byte response header (client side)."""
    status, length = _HEADER.unpack_from(header)
    return status, length


class FrameDecoder:
    """Turns a byte stream into complete frames ``(code_or_status, payload)``.

    ``is_response=False`` decodes requests (server side): the first u32 is the length,
    the second the command code; every declared payload is read in full so the stream
    stays in step even when the command is unknown.

    ``is_response=True`` decodes replies (client side) exactly as the SDK does: a
    non-zero status ends the frame at its 8-byte header, and a length <= 1 means an
    empty payload whose byte, if any, is not consumed.

    Bounded: a declared payload above the limit raises ``IggyError(INVALID_SIZE_BYTES)``
    (for requests ``send_limit_bytes`` applies to SendMessages, ``max_payload_bytes`` to
    the rest). After any error the decoder is broken and the caller must close the
    connection; frames completed before the bad header are still returned, and the error
    is raised by the next ``feed`` call (also visible as :attr:`error`).

    Payloads are zero-copy views into ``data`` when ``data`` is an immutable ``bytes``
    object and the frame lies within one call; otherwise they are copied, so a caller may
    reuse a receive buffer between calls.
    """

    __slots__ = (
        "_code",
        "_error",
        "_filled",
        "_header",
        "_header_filled",
        "_is_response",
        "_max_payload_bytes",
        "_payload",
        "_send_limit_bytes",
    )

    def __init__(
        self,
        *,
        is_response: bool,
        max_payload_bytes: int = MAX_CONTROL_PAYLOAD_BYTES,
        send_limit_bytes: int | None = None,
    ) -> None:
        assert max_payload_bytes >= 0
        assert send_limit_bytes is None or send_limit_bytes >= 0
        self._is_response = is_response
        self._max_payload_bytes = max_payload_bytes
        self._send_limit_bytes = max_payload_bytes if send_limit_bytes is None else send_limit_bytes
        self._header = bytearray(FRAME_HEADER_SIZE)
        self._header_filled = 0
        self._payload: bytearray | None = None
        self._filled = 0
        self._code = 0
        self._error: IggyError | None = None

    @property
    def error(self) -> IggyError | None:
        """The error that broke the stream, if any."""
        return self._error

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame held back until more data arrives."""
        if self._payload is not None:
            return FRAME_HEADER_SIZE + self._filled
        return self._header_filled

    def _begin(self, a: int, b: int) -> tuple[int, int]:
        """Interpret a header; return ``(code_or_status, payload_bytes_to_read)``."""
        if self._is_response:
            status, length = a, b
            if status != Status.OK or length <= _RESPONSE_EMPTY_MAX_LENGTH:
                return status, 0
            if length > self._max_payload_bytes:
                raise IggyError(Status.INVALID_SIZE_BYTES, f"reply payload {length} bytes over the limit")
            return status, length
        length, code = a, b
        if length < _CODE_SIZE:
            raise IggyError(Status.INVALID_COMMAND, f"request length {length} < 4")
        payload_length = length - _CODE_SIZE
        limit = self._send_limit_bytes if code == Command.SEND_MESSAGES else self._max_payload_bytes
        if payload_length > limit:
            raise IggyError(
                Status.INVALID_SIZE_BYTES, f"code {code}: payload {payload_length} bytes over {limit}"
            )
        return code, payload_length

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, memoryview]]:
        if self._error is not None:
            raise self._error
        view = data if isinstance(data, memoryview) else memoryview(data)
        # Only an immutable bytes object may be referenced by the frames handed out.
        zero_copy = isinstance(data, bytes)
        frames: list[tuple[int, memoryview]] = []
        pos = 0
        end = len(view)
        try:
            while True:
                payload = self._payload
                if payload is not None:
                    take = min(len(payload) - self._filled, end - pos)
                    payload[self._filled : self._filled + take] = view[pos : pos + take]
                    self._filled += take
                    pos += take
                    if self._filled < len(payload):
                        break
                    frames.append((self._code, memoryview(payload).toreadonly()))
                    self._payload = None
                    self._filled = 0
                    continue
                if self._header_filled == 0 and end - pos >= FRAME_HEADER_SIZE:
                    a, b = _HEADER.unpack_from(view, pos)
                    pos += FRAME_HEADER_SIZE
                else:
                    take = min(FRAME_HEADER_SIZE - self._header_filled, end - pos)
                    if take == 0:
                        break
                    self._header[self._header_filled : self._header_filled + take] = view[pos : pos + take]
                    self._header_filled += take
                    pos += take
                    if self._header_filled < FRAME_HEADER_SIZE:
                        break
                    self._header_filled = 0
                    a, b = _HEADER.unpack_from(self._header)
                code, n = self._begin(a, b)
                if n == 0:
                    frames.append((code, _EMPTY))
                elif end - pos >= n:
                    chunk = view[pos : pos + n]
                    frames.append((code, chunk.toreadonly() if zero_copy else memoryview(bytes(chunk))))
                    pos += n
                else:
                    self._code = code
                    self._payload = bytearray(n)
                    self._filled = 0
        except IggyError as exc:
            self._error = exc
            if not frames:
                raise
        return frames
