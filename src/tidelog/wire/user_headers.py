"""User headers of the Iggy 0.8 classic protocol (reference section 4.2), sans-IO: the TLV
items of a message's header map, which 0.9 shares kind for kind."""

from __future__ import annotations

from collections.abc import Mapping

from tidelog.wire.codes import IggyError, Status
from tidelog.wire.primitives import _NAME_MAX_BYTES, _U32, BytesLike, HeaderKind, Reader, _utf8

HeaderKey = str | bytes

_HEADER_FIXED_SIZES: dict[int, int] = {
    HeaderKind.BOOL: 1,
    HeaderKind.INT8: 1,
    HeaderKind.UINT8: 1,
    HeaderKind.INT16: 2,
    HeaderKind.UINT16: 2,
    HeaderKind.INT32: 4,
    HeaderKind.UINT32: 4,
    HeaderKind.FLOAT32: 4,
    HeaderKind.INT64: 8,
    HeaderKind.UINT64: 8,
    HeaderKind.FLOAT64: 8,
    HeaderKind.INT128: 16,
    HeaderKind.UINT128: 16,
}
_HEADER_KINDS = frozenset(int(k) for k in HeaderKind)


def _header_item_ok(kind: int, length: int) -> bool:
    if kind not in _HEADER_KINDS or not 1 <= length <= _NAME_MAX_BYTES:
        return False
    expected = _HEADER_FIXED_SIZES.get(kind)
    return expected is None or expected == length


def _key_item(key: HeaderKey) -> tuple[int, bytes]:
    if isinstance(key, str):
        return HeaderKind.STRING, key.encode()
    return HeaderKind.RAW, bytes(key)


def encode_user_headers(headers: Mapping[HeaderKey, tuple[int, bytes]]) -> bytes:
    """TLV items, key then value, sorted by key as the SDK writes them.

    A ``str`` key is written as a string item, a ``bytes`` key as a raw item.
    """
    items = sorted(
        ((_key_item(key), value) for key, value in headers.items()), key=lambda kv: (kv[0][1], kv[0][0])
    )
    out = bytearray()
    for (key_kind, key_raw), (value_kind, value_raw) in items:
        for kind, raw in ((key_kind, key_raw), (value_kind, value_raw)):
            if not _header_item_ok(kind, len(raw)):
                raise ValueError(f"user header item of kind {kind} and {len(raw)} bytes")
            out.append(kind)
            out += _U32.pack(len(raw))
            out += raw
    return bytes(out)


def decode_user_headers(data: BytesLike) -> dict[HeaderKey, tuple[int, bytes]]:
    """Inverse of :func:`encode_user_headers`; malformed items -> INVALID_FORMAT.

    String keys come back as ``str``; keys of any other kind come back as their raw bytes.
    """
    r = Reader(data)
    out: dict[HeaderKey, tuple[int, bytes]] = {}
    while r.remaining:
        items: list[tuple[int, bytes]] = []
        for _ in range(2):
            if r.remaining == 0:
                raise IggyError(Status.INVALID_FORMAT, "user header key without a value")
            kind = r.u8()
            raw = r.bytes32()
            if not _header_item_ok(kind, len(raw)):
                raise IggyError(Status.INVALID_FORMAT, f"user header item of kind {kind}, {len(raw)} bytes")
            items.append((kind, bytes(raw)))
        (key_kind, key_raw), value = items
        key: HeaderKey = _utf8(memoryview(key_raw)) if key_kind == HeaderKind.STRING else key_raw
        out[key] = value
    return out
