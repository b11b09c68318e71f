"""The 256-byte VSR headers of Iggy 0.9: request, reply and eviction (sections 1.2, 1.3, 1.6
of ``shared/protocol/iggy-0.9-vsr.md``).

Each header is a frozen dataclass that decodes any 256 bytes and re-encodes them byte for
byte: fields the server ignores (checksums, cluster, view, reserved areas) are kept, not
zeroed, so a decode/encode round trip is exact. Decoding is purely structural; whether a
request header is acceptable is decided by :mod:`tidelog.wire.v09.frames`.

u128 fields are Python ints, read little-endian like every other integer (section 1.1).
As in TigerBeetle, sizes and field offsets are asserted at import time against the tables
of the reference, so a layout slip fails loudly before any byte is sent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import xxhash

from tidelog.wire.v09.codes import (
    CHECKSUMMED_OPERATIONS,
    STATUS_OK,
    EvictionReason,
    Operation,
    VsrCommand,
)

HEADER_SIZE = 256
# Section 1.8: the real server closes the connection on a frame above 64 MiB.
MAX_FRAME_SIZE = 64 * 1024 * 1024
U128_MAX = (1 << 128) - 1
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
U8_MAX = 0xFF

# Offsets shared by all three headers; frames.py and detect_generation read just these.
SIZE_OFFSET = 48
COMMAND_OFFSET = 60

_U128 = "16s"  # struct has no u128: packed as 16 raw bytes, converted little-endian


def _layout(fields: tuple[tuple[str, str], ...]) -> tuple[struct.Struct, dict[str, int]]:
    """A little-endian, unpadded struct for ``fields`` plus each field's byte offset."""
    offsets: dict[str, int] = {}
    fmt = "<"
    for name, code in fields:
        offsets[name] = struct.calcsize(fmt)
        fmt += code
    layout = struct.Struct(fmt)
    assert layout.size == HEADER_SIZE, (fmt, layout.size)
    return layout, offsets


# The first 128 bytes ("frame" part) are common to every header kind.
_FRAME_FIELDS: tuple[tuple[str, str], ...] = (
    ("checksum", _U128),
    ("checksum_body", _U128),
    ("cluster", _U128),
    ("size", "I"),
    ("view", "I"),
    ("release", "I"),
    ("command", "B"),
    ("replica", "B"),
    ("reserved_frame", "66s"),
)

_REQUEST_FIELDS: tuple[tuple[str, str], ...] = (
    *_FRAME_FIELDS,
    ("client", _U128),
    ("request_checksum", _U128),
    ("timestamp", "Q"),
    ("request", "Q"),
    ("operation", "B"),
    ("padding", "7s"),
    ("session", "Q"),
    ("user_id", "I"),
    ("command_code", "I"),  # reserved[0..4]: the classic code for NonReplicated
    ("reserved", "56s"),
)
_REQUEST, REQUEST_OFFSETS = _layout(_REQUEST_FIELDS)
_REPLY_FIELDS: tuple[tuple[str, str], ...] = (
    *_FRAME_FIELDS,
    ("request_checksum", _U128),
    ("context", _U128),
    ("client", _U128),
    ("op", "Q"),
    ("commit", "Q"),
    ("timestamp", "Q"),
    ("request", "Q"),
    ("operation", "B"),
    ("padding", "7s"),
    ("status", "I"),
    ("reserved", "36s"),
)
_REPLY, REPLY_OFFSETS = _layout(_REPLY_FIELDS)
_EVICTION_FIELDS: tuple[tuple[str, str], ...] = (
    *_FRAME_FIELDS,
    ("client", _U128),
    ("server_protocol_version", "I"),
    ("server_protocol_version_min", "I"),
    ("reserved", "103s"),
    ("reason", "B"),
)
_EVICTION, EVICTION_OFFSETS = _layout(_EVICTION_FIELDS)

# The offset columns of the reference tables, verbatim.
_FRAME_EXPECTED = {"checksum": 0, "checksum_body": 16, "cluster": 32, "size": 48, "view": 52}
_FRAME_EXPECTED |= {"release": 56, "command": 60, "replica": 61, "reserved_frame": 62}
assert {k: REQUEST_OFFSETS[k] for k in _FRAME_EXPECTED} == _FRAME_EXPECTED
assert {k: REPLY_OFFSETS[k] for k in _FRAME_EXPECTED} == _FRAME_EXPECTED
assert {k: EVICTION_OFFSETS[k] for k in _FRAME_EXPECTED} == _FRAME_EXPECTED
assert _FRAME_EXPECTED["size"] == SIZE_OFFSET and _FRAME_EXPECTED["command"] == COMMAND_OFFSET
assert REQUEST_OFFSETS == _FRAME_EXPECTED | {  # section 1.2
    "client": 128,
    "request_checksum": 144,
    "timestamp": 160,
    "request": 168,
    "operation": 176,
    "padding": 177,
    "session": 184,
    "user_id": 192,
    "command_code": 196,
    "reserved": 200,
}
assert REPLY_OFFSETS == _FRAME_EXPECTED | {  # section 1.3
    "request_checksum": 128,
    "context": 144,
    "client": 160,
    "op": 176,
    "commit": 184,
    "timestamp": 192,
    "request": 200,
    "operation": 208,
    "padding": 209,
    "status": 216,
    "reserved": 220,
}
assert EVICTION_OFFSETS == _FRAME_EXPECTED | {  # section 1.6
    "client": 128,
    "server_protocol_version": 144,
    "server_protocol_version_min": 148,
    "reserved": 152,
    "reason": 255,
}

_Z66, _Z7, _Z56, _Z36, _Z103 = (bytes(n) for n in (66, 7, 56, 36, 103))


def _u128(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _b128(value: int) -> bytes:
    return value.to_bytes(16, "little")


class HeaderError(ValueError):
    """Not a 256-byte buffer, or a field value that does not fit its width (encode)."""


def _need_header(data: bytes | bytearray | memoryview) -> None:
    if len(data) < HEADER_SIZE:
        raise HeaderError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")


_INT_MAX = {"B": U8_MAX, "I": U32_MAX, "Q": U64_MAX, _U128: U128_MAX}


def _pack(obj: object, layout: struct.Struct, fields: tuple[tuple[str, str], ...]) -> bytes:
    """Encode `obj`'s fields in layout order, refusing a value that does not fit its width."""
    values: list[object] = []
    for name, code in fields:
        value = getattr(obj, name)
        limit = _INT_MAX.get(code)
        if limit is None:  # "Ns": raw bytes of exactly N
            if len(value) != int(code[:-1]):
                raise HeaderError(f"{type(obj).__name__}.{name} must be {code[:-1]} bytes")
            values.append(value)
            continue
        if not 0 <= value <= limit:
            raise HeaderError(f"{type(obj).__name__}.{name} = {value} out of range 0..{limit}")
        values.append(_b128(value) if code == _U128 else value)
    return layout.pack(*values)


def _unpack(
    data: bytes | bytearray | memoryview, layout: struct.Struct, fields: tuple[tuple[str, str], ...]
) -> dict[str, Any]:
    """Field name -> value of the first 256 bytes of `data` (u128 fields as ints)."""
    _need_header(data)
    raw = layout.unpack_from(data)
    return {name: _u128(v) if code == _U128 else v for (name, code), v in zip(fields, raw, strict=True)}


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """Client -> server header (section 1.2).

    ``command_code`` is reserved[0..4], the classic command code a NonReplicated (op 2)
    request carries; for other operations the SDK leaves it zero.
    """

    size: int = HEADER_SIZE
    client: int = 0
    request_checksum: int = 0
    request: int = 0
    operation: int = Operation.RESERVED
    session: int = 0
    command_code: int = 0
    command: int = VsrCommand.REQUEST
    timestamp: int = 0
    user_id: int = 0  # informational only: never trusted (section 1.2)
    checksum: int = 0
    checksum_body: int = 0
    cluster: int = 0
    view: int = 0
    release: int = 0
    replica: int = 0
    reserved_frame: bytes = _Z66
    padding: bytes = _Z7
    reserved: bytes = _Z56

    @property
    def body_size(self) -> int:
        """Bytes of body that follow the header (``size`` - 256); negative if ``size`` is bad."""
        return self.size - HEADER_SIZE

    def encode(self) -> bytes:
        return _pack(self, _REQUEST, _REQUEST_FIELDS)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> RequestHeader:
        """Decode the first 256 bytes of ``data``; no field is validated (see frames.py)."""
        return cls(**_unpack(data, _REQUEST, _REQUEST_FIELDS))


@dataclass(frozen=True, slots=True)
class ReplyHeader:
    """Server -> client header (section 1.3). The SDK reads only ``size``, ``command``,
    ``operation`` and ``status``; the rest are echoes or informational."""

    size: int = HEADER_SIZE
    operation: int = Operation.RESERVED
    status: int = STATUS_OK
    client: int = 0
    request: int = 0
    request_checksum: int = 0
    op: int = 0  # informational (real server: commit position)
    commit: int = 0  # informational
    timestamp: int = 0
    context: int = 0
    command: int = VsrCommand.REPLY
    checksum: int = 0
    checksum_body: int = 0
    cluster: int = 0
    view: int = 0
    release: int = 0
    replica: int = 0
    reserved_frame: bytes = _Z66
    padding: bytes = _Z7
    reserved: bytes = _Z36

    @property
    def body_size(self) -> int:
        return self.size - HEADER_SIZE

    def encode(self) -> bytes:
        return _pack(self, _REPLY, _REPLY_FIELDS)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> ReplyHeader:
        """Decode the first 256 bytes of ``data``; no field is validated (see frames.py)."""
        return cls(**_unpack(data, _REPLY, _REPLY_FIELDS))


@dataclass(frozen=True, slots=True)
class EvictionHeader:
    """Header-only eviction frame (section 1.6): ``size`` 256, ``command`` 13, ``reason`` at 255.

    The protocol window at 144/148 is meaningful only for INCOMPATIBLE_PROTOCOL; the SDK
    formats its error message from it.
    """

    client: int = 0
    reason: int = EvictionReason.SESSION_ERROR
    server_protocol_version: int = 0
    server_protocol_version_min: int = 0
    size: int = HEADER_SIZE
    command: int = VsrCommand.EVICTION
    checksum: int = 0
    checksum_body: int = 0
    cluster: int = 0
    view: int = 0
    release: int = 0
    replica: int = 0
    reserved_frame: bytes = _Z66  # the reference says "must be 0"; decode keeps what it got
    reserved: bytes = _Z103

    def encode(self) -> bytes:
        return _pack(self, _EVICTION, _EVICTION_FIELDS)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> EvictionHeader:
        """Decode the first 256 bytes of ``data``; no field is validated (see frames.py)."""
        return cls(**_unpack(data, _EVICTION, _EVICTION_FIELDS))


# --- request_checksum (section 1.2) -------------------------------------------------------


def body_checksum(body: bytes | bytearray | memoryview) -> int:
    """The ``request_checksum`` value for ``body``: XXH3-64 with seed 0 in the low 8 bytes
    of the u128, upper 8 bytes zero (section 1.2, surprise 5). Only the body is hashed,
    never the header."""
    return xxhash.xxh3_64_intdigest(body, seed=0)


def request_checksum_ok(header: RequestHeader, body: bytes | bytearray | memoryview) -> bool:
    """The real server's optional check (section 1.2): zero means "not stamped" and always
    passes; any other value must equal XXH3-64(body) exactly, so non-zero upper bytes fail."""
    return header.request_checksum == 0 or header.request_checksum == body_checksum(body)


# --- builders ------------------------------------------------------------------------------


def request_header_for(
    operation: Operation,
    body: bytes | bytearray | memoryview,
    *,
    client: int,
    request: int = 0,
    session: int = 0,
    command_code: int = 0,
) -> RequestHeader:
    """A request header as the 0.11 SDK writes it (section 1.2), for tests and clients.

    The checksum is stamped only for the operations the SDK stamps (CHECKSUMMED_OPERATIONS).
    """
    assert operation == Operation.NON_REPLICATED or command_code == 0, "code only on op 2"
    checksum = body_checksum(body) if operation in CHECKSUMMED_OPERATIONS else 0
    return RequestHeader(
        size=HEADER_SIZE + len(body),
        client=client,
        request_checksum=checksum,
        request=request,
        operation=operation,
        session=session,
        command_code=command_code,
    )


def reply_header_for(
    request: RequestHeader,
    body_length: int = 0,
    *,
    status: int = STATUS_OK,
    op: int = 0,
    commit: int = 0,
) -> ReplyHeader:
    """The reply to ``request`` (sections 1.3, 1.10): echoes ``operation``, ``client``,
    ``request``, ``request_checksum`` and ``timestamp``; sets ``size`` and ``command`` 8.

    An error status must travel with an empty body (section 1.3), so that is asserted.
    """
    assert status == STATUS_OK or body_length == 0, "an error reply carries no body"
    assert 0 <= body_length <= U32_MAX - HEADER_SIZE
    return ReplyHeader(
        size=HEADER_SIZE + body_length,
        operation=request.operation,
        status=status,
        client=request.client,
        request=request.request,
        request_checksum=request.request_checksum,
        op=op,
        commit=commit,
        timestamp=request.timestamp,
    )


_Z16 = bytes(16)


def encode_reply_for(request: RequestHeader, body_length: int = 0, status: int = STATUS_OK) -> bytes:
    """``reply_header_for(request, body_length, status=status).encode()``, packed directly
    (no dataclass, no per-field checks): what a server writes for every reply."""
    assert status == STATUS_OK or body_length == 0, "an error reply carries no body"
    assert 0 <= body_length <= U32_MAX - HEADER_SIZE
    return _REPLY.pack(
        _Z16, _Z16, _Z16, HEADER_SIZE + body_length, 0, 0, VsrCommand.REPLY, 0, _Z66,  # frame
        _b128(request.request_checksum), _Z16, _b128(request.client), 0, 0,
        request.timestamp, request.request, request.operation, _Z7, status, _Z36,
    )  # fmt: skip


def eviction_for(
    client: int,
    reason: EvictionReason,
    *,
    server_protocol_version: int = 0,
    server_protocol_version_min: int = 0,
) -> EvictionHeader:
    """An eviction frame for ``client`` (section 1.6). The client id must be non-zero (an
    invalid header with client 0 is dropped, never evicted), and the protocol window is
    sent only with INCOMPATIBLE_PROTOCOL."""
    assert client != 0, "an eviction names a non-zero client"
    if reason != EvictionReason.INCOMPATIBLE_PROTOCOL:
        assert server_protocol_version == 0 and server_protocol_version_min == 0
    return EvictionHeader(
        client=client,
        reason=reason,
        server_protocol_version=server_protocol_version,
        server_protocol_version_min=server_protocol_version_min,
    )
