"""Types of the optional C kernel built from native/stamp.c (see tidelog.wire.batch)."""

import numpy as np

# Any object with the buffer protocol; these are the ones tidelog passes.
_Bytes = bytes | bytearray | memoryview | np.ndarray

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
