"""Page-aligned staging buffers for O_DIRECT writes.

O_DIRECT needs the buffer address, the file offset and the length aligned to the device's
logical block size (4 KiB covers every device in use). Batch buffers come from the network
at arbitrary addresses, so a direct write first copies its bytes into one of these
buffers: an anonymous `mmap`, which the kernel always places on a page boundary.

Buffers are leased from an `AlignedPool` and given back after the write, so steady writes
reuse a few mappings instead of mapping and unmapping per write. Capacities come in
power-of-two size classes so that one buffer serves every write of about the same size.

Copies (and zeroing) hold the GIL on purpose. Releasing it, e.g. through `ctypes.memmove`,
looks kinder to the event loop but measured much worse: a thread that gives the GIL up while
another thread computes waits up to the switch interval (5 ms) to get it back, so each copy
of a flush on the writer thread could stall the writer for milliseconds (bench/
micro_storage.py, direct + writer: 0.69 GB/s durable with memmove for copies of 64 KiB and
more, 1.37 GB/s with copies under the GIL). A 1 MiB copy under the GIL costs the event loop
tens of microseconds.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

PAGE_BYTES = 4096
MIN_CLASS_BYTES = 64 << 10
_ZERO_PAGE = memoryview(bytes(PAGE_BYTES))


def align_down(n: int) -> int:
    return n - n % PAGE_BYTES


def align_up(n: int) -> int:
    return -(-n // PAGE_BYTES) * PAGE_BYTES


def size_class(nbytes: int) -> int:
    """The capacity a buffer for `nbytes` gets: a power of two, at least MIN_CLASS_BYTES."""
    assert nbytes > 0
    return max(MIN_CLASS_BYTES, 1 << (nbytes - 1).bit_length())


class AlignedBuffer:
    """`capacity` bytes at a page-aligned address."""

    __slots__ = ("_map", "address", "capacity", "view")

    def __init__(self, capacity: int) -> None:
        assert capacity > 0 and capacity % PAGE_BYTES == 0
        self._map = mmap.mmap(-1, capacity)
        self.capacity = capacity
        # mmap places anonymous mappings on page boundaries; O_DIRECT depends on it.
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        assert self.address % PAGE_BYTES == 0
        self.view = memoryview(self._map)

    def copy_in(self, at: int, src: ReadableBuffer) -> int:
        """Copy `src` to byte `at`; return its length."""
        mv = memoryview(src)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = mv.nbytes
        assert at >= 0 and at + n <= self.capacity
        self.view[at : at + n] = mv
        return n

    def zero(self, start: int, end: int) -> None:
        assert 0 <= start <= end <= self.capacity
        while start < end:
            n = min(end - start, PAGE_BYTES)
            self.view[start : start + n] = _ZERO_PAGE[:n]
            start += n

    def close(self) -> None:
        self.view.release()
        self._map.close()


class AlignedPool:
    """Leases aligned buffers by size class and keeps a few of each for reuse.

    Thread-safe: the writer thread and the owner thread may both write direct files.
    """

    def __init__(self, keep_per_class: int = 2) -> None:
        assert keep_per_class >= 0
        self._keep = keep_per_class
        self._free: dict[int, list[AlignedBuffer]] = {}
        self._lock = threading.Lock()

    def lease(self, nbytes: int) -> AlignedBuffer:
        """A buffer of at least `nbytes` (rounded up to its size class); its content is stale."""
        capacity = size_class(nbytes)
        with self._lock:
            free = self._free.get(capacity)
            if free:
                return free.pop()
        return AlignedBuffer(capacity)

    def release(self, buf: AlignedBuffer) -> None:
        with self._lock:
            free = self._free.setdefault(buf.capacity, [])
            if len(free) < self._keep:
                free.append(buf)
                return
        buf.close()

    def cached_bytes(self) -> int:
        with self._lock:
            return sum(b.capacity for free in self._free.values() for b in free)

    def clear(self) -> None:
        with self._lock:
            buffers = [b for free in self._free.values() for b in free]
            self._free.clear()
        for b in buffers:
            b.close()
