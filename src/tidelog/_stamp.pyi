"""Types of the optional C kernel built from native/stamp.c (see tidelog.wire.batch)."""

import numpy as np

# Any object with the buffer protocol; these are the ones tidelog passes.
_Bytes = bytes | bytearray | memoryview | np.ndarray

def validate(
    index: _Bytes,
    messages: _Bytes,
    count: int,
    max_payload: int,
    max_user_headers: int,
    /,
) -> tuple[int, bytearray | None]: ...  # (0, native int64 ends) or (status, None)
def zero_ids(buf: _Bytes, ends: np.ndarray | memoryview, /) -> int: ...
def stamp(
    buf: _Bytes,  # must be writable: checked at run time (ValueError)
    ends: np.ndarray | memoryview,
    base_offset: int,
    timestamp_us: int,
    random16: _Bytes | None,
    /,
) -> None: ...
def checksums_verify(buf: _Bytes, ends: np.ndarray | memoryview, /) -> int: ...
def records_v08(buf: _Bytes, /) -> tuple[bytearray, bytes]: ...  # (0.8 messages, int64 ends)
def file_records_v08(
    fd: int, offset: int, length: int, count: int, /
) -> tuple[bytearray, bytes, int]: ...  # (buffer, int64 ends, size of the 0.8 messages)
def set_avx2(enabled: bool, /) -> bool: ...
def send_v09(
    room: _Bytes, messages_at: int, ends: np.ndarray, partition_id: int, random16: _Bytes | None, /
) -> int: ...  # 0, or 4038 (nothing changed)
