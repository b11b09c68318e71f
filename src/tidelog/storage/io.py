"""Disk access through one small interface, so storage code can run on real files, in memory
(tests, later the simulator) or on O_DIRECT files without change.

`FileIO` is a backend: it opens `File` handles and does the few directory operations storage
needs. `File` is positional only (pwritev / pread at an explicit offset): there is no file
cursor to get wrong, and one writer per file needs no locking.

Backends:

* `BufferedIO`: page-cache I/O with `os.pwritev` and `os.fdatasync` (the default).
* `DirectIO`: O_DIRECT writes through page-aligned staging buffers (`buffers.py`), reads
  through a second, buffered descriptor. See `DirectIO` for the padding rule.
* `MemIO`: files in memory. Each file remembers what the last `fdatasync` made durable;
  `crash()` throws away everything else (optionally keeping part of the unsynced appended
  bytes, i.e. a torn write). Directory operations (create, rename, unlink) count as durable
  at once: they are rare, and recovery must cope with their leftovers anyway.

A DirectIO file is padded with zeros to a 4 KiB boundary while it is written, so callers
must never take a file's physical size as the end of its data: a freshly opened handle's
`size()` is an upper bound for recovery scans, nothing more. (Recovery finds the end from
the index and checksums, and cuts the padding a crash left behind.)

Handles may be used from two threads at once as long as only one of them writes (the
storage writer thread writes, the owner thread reads what is known to be written).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from tidelog.storage.buffers import PAGE_BYTES, AlignedBuffer, AlignedPool, align_down, align_up

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# Linux caps one vectored call at IOV_MAX buffers (1024).
IOV_MAX = 1024


class File(ABC):
    """An open file; all reads and writes name their byte offset."""

    @abstractmethod
    def pwritev(self, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        """Write all buffers back to back at `offset` (holes before it read as zeros)."""

    def pwrite(self, data: ReadableBuffer, offset: int) -> int:
        return self.pwritev([data], offset)

    @abstractmethod
    def pread(self, length: int, offset: int) -> bytes:
        """Up to `length` bytes at `offset`; shorter only at the end of the file."""

    @abstractmethod
    def fdatasync(self) -> None: ...

    @abstractmethod
    def truncate(self, length: int) -> None:
        """Set the file length (growing fills with zeros)."""

    @abstractmethod
    def size(self) -> int:
        """Physical length: an upper bound of the data, not its logical end."""

    @abstractmethod
    def close(self) -> None: ...

    def seal(self) -> None:
        """No more appends will come: give up write-side state and anything past the
        logical end that writing left (DirectIO's page padding). Reads still work."""
        return None

    def fileno(self) -> int | None:
        """An OS descriptor for `os.sendfile`, or None when the file is not an OS file."""
        return None


@dataclass(frozen=True, slots=True)
class FileRange:
    """Bytes of an OS file that the network shell may send with `os.sendfile` (page cache to
    socket, no copy through Python). Valid only until the owner's next mutation: send it in
    the same call that got it."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        return _pread_fd(self.fd, self.length, self.offset)


def join_pieces(pieces: Sequence[bytes | bytearray | memoryview | FileRange]) -> bytes | memoryview:
    """The bytes of reply pieces in order, file ranges read (one piece: no join copy)."""
    parts = [piece.read() if isinstance(piece, FileRange) else piece for piece in pieces]
    if len(parts) == 1:
        return parts[0] if isinstance(parts[0], bytes | memoryview) else memoryview(parts[0])
    return b"".join(parts)


class FileIO(ABC):
    """A storage backend: opens files and does the directory operations storage needs."""

    @abstractmethod
    def open(self, path: Path) -> File:
        """Open for reading and writing, creating an empty file if missing; the parent
        directory must exist (FileNotFoundError otherwise)."""

    @abstractmethod
    def exists(self, path: Path) -> bool: ...

    @abstractmethod
    def listdir(self, path: Path) -> list[str]:
        """Names in a directory, sorted."""

    @abstractmethod
    def makedirs(self, path: Path) -> None:
        """Create a directory and its parents; fine if it exists."""

    @abstractmethod
    def unlink(self, path: Path) -> None:
        """Remove a file (FileNotFoundError if missing)."""

    @abstractmethod
    def rename(self, src: Path, dst: Path) -> None:
        """Move a file, replacing `dst`."""

    @abstractmethod
    def rmtree(self, path: Path) -> None:
        """Remove a directory and everything under it; fine if it does not exist."""

    @abstractmethod
    def fsync_dir(self, path: Path) -> None:
        """Make created, renamed and removed names in a directory durable."""

    def read_file(self, path: Path) -> bytes:
        f = self.open(path)
        try:
            return f.pread(f.size(), 0)
        finally:
            f.close()


def _iov_chunks(buffers: Sequence[ReadableBuffer]) -> list[list[memoryview]]:
    views = [memoryview(b).cast("B") for b in buffers]
    return [views[i : i + IOV_MAX] for i in range(0, len(views), IOV_MAX)]


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), which Python's os module does not expose."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages in the range; do not wait


class _OsFile(File):
    __slots__ = ("_fd", "_writeback_bytes", "_writeback_from")

    def __init__(self, fd: int, writeback_bytes: int = 0) -> None:
        self._fd = fd
        self._writeback_bytes = writeback_bytes if _SYNC_FILE_RANGE is not None else 0
        self._writeback_from = -1  # start of the appended range not yet handed to writeback

    def pwritev(self, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        assert offset >= 0
        total = 0
        for chunk in _iov_chunks(buffers):
            want = sum(v.nbytes for v in chunk)
            done = os.pwritev(self._fd, chunk, offset + total)
            while done < want:
                # Short writes are rare on regular files (a signal, a full disk); resume.
                rest = _drop_prefix(chunk, done)
                done += os.pwritev(self._fd, rest, offset + total + done)
            total += want
        if self._writeback_bytes:
            self._start_writeback(offset, offset + total)
        return total

    def _start_writeback(self, start: int, end: int) -> None:
        """Hands every `writeback_bytes` of an append stream to the kernel's writeback as it
        is written (RocksDB's bytes_per_sync), so a later fdatasync finds little left to do
        instead of stalling on seconds of dirty pages."""
        if self._writeback_from < 0 or start < self._writeback_from:
            self._writeback_from = start
        if end - self._writeback_from >= self._writeback_bytes:
            assert _SYNC_FILE_RANGE is not None
            start = self._writeback_from
            _SYNC_FILE_RANGE(self._fd, start, end - start, _SYNC_FILE_RANGE_WRITE)
            self._writeback_from = end

    def pread(self, length: int, offset: int) -> bytes:
        assert length >= 0 and offset >= 0
        return _pread_fd(self._fd, length, offset)

    def fdatasync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, length: int) -> None:
        os.ftruncate(self._fd, length)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int | None:
        return self._fd


def _pread_fd(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _drop_prefix(views: list[memoryview], nbytes: int) -> list[memoryview]:
    rest: list[memoryview] = []
    for v in views:
        if nbytes >= v.nbytes:
            nbytes -= v.nbytes
            continue
        rest.append(v[nbytes:])
        nbytes = 0
    return rest


class BufferedIO(FileIO):
    """Real files through the page cache. With `writeback_bytes`, appended data is handed to
    the kernel's writeback in steps of that size as it is written (see `_start_writeback`)."""

    def __init__(self, writeback_bytes: int = 0) -> None:
        assert writeback_bytes >= 0
        self.writeback_bytes = writeback_bytes

    def open(self, path: Path) -> File:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return _OsFile(fd, self.writeback_bytes)

    def exists(self, path: Path) -> bool:
        return os.path.exists(path)

    def listdir(self, path: Path) -> list[str]:
        return sorted(os.listdir(path))

    def makedirs(self, path: Path) -> None:
        os.makedirs(path, exist_ok=True)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def rmtree(self, path: Path) -> None:
        if os.path.exists(path):
            shutil.rmtree(path)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# One direct write stages at most this much; longer writes go out in several aligned pieces.
DIRECT_STAGING_MAX_BYTES = 8 << 20


class DirectIOUnsupportedError(OSError):
    """The filesystem refuses O_DIRECT (e.g. tmpfs on older kernels)."""


class _DirectFile(File):
    """A file written with O_DIRECT and read through a second, buffered descriptor.

    Every write covers whole 4 KiB pages: the bytes before the write's start on its first
    page and after its end on its last page are filled with what the file holds there (zeros
    past the logical end), then the pages go out in one aligned write. The partial last page
    of the file is kept in memory (`_tail`), so an append never reads the disk: it rewrites
    that page with the old bytes in front of the new ones. (A torn rewrite cannot damage the
    old bytes: they are the same in both versions of the page.)

    `_size` is the logical length this handle knows: the physical length at open (an upper
    bound, as for any File), then moved by writes and truncates. Reads stop there, so the
    padding is never seen through a live handle; `seal()` and `close()` cut it from the file
    when this handle wrote it.

    Linux keeps the two descriptors coherent: a direct write drops the cached pages of its
    range, so the buffered descriptor reads what was written once the write returned.
    """

    __slots__ = ("_dsync", "_padded_end", "_path", "_pool", "_rfd", "_size", "_tail", "_wfd")

    def __init__(self, path: Path, wfd: int, rfd: int, pool: AlignedPool, dsync: bool = False) -> None:
        self._dsync = dsync  # opened O_DSYNC: every write is durable when it returns
        self._path = path
        self._wfd = wfd
        self._rfd = rfd
        self._pool = pool
        self._size = os.fstat(wfd).st_size
        # Bytes [align_down(_size), _size) when known; None means "read them when needed".
        self._tail: bytes | None = b"" if self._size % PAGE_BYTES == 0 else None
        self._padded_end = self._size  # physical end of what this handle wrote

    def _check_open(self) -> None:
        if self._wfd < 0:
            raise OSError(errno.EBADF, "file is closed", str(self._path))

    def pwritev(self, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        assert offset >= 0
        self._check_open()
        views = [memoryview(b).cast("B") for b in buffers]
        total = sum(v.nbytes for v in views)
        if not total:
            return 0
        end = offset + total
        file_at = align_down(offset)
        capacity = min(align_up(end) - file_at, DIRECT_STAGING_MAX_BYTES)
        buf = self._pool.lease(capacity)
        capacity = min(buf.capacity, DIRECT_STAGING_MAX_BYTES)
        try:
            pos = offset - file_at
            if pos:
                self._existing(buf, 0, file_at, offset)
            for v in views:
                i = 0
                while i < v.nbytes:
                    n = min(v.nbytes - i, capacity - pos)
                    buf.copy_in(pos, v[i : i + n])
                    pos += n
                    i += n
                    if pos == capacity:
                        self._write_pages(buf, capacity, file_at)
                        file_at += capacity
                        pos = 0
            new_size = max(self._size, end)
            tail_start = align_down(new_size)
            if pos:
                padded = align_up(pos)
                self._existing(buf, pos, end, file_at + padded)
                self._write_pages(buf, padded, file_at)
                if file_at <= tail_start < file_at + padded:
                    self._tail = bytes(buf.view[tail_start - file_at : new_size - file_at])
                self._padded_end = max(self._padded_end, file_at + padded)
            if new_size % PAGE_BYTES == 0:
                self._tail = b""
            self._size = new_size
        finally:
            self._pool.release(buf)
        return total

    def _existing(self, buf: AlignedBuffer, at: int, lo: int, hi: int) -> None:
        """Put the file's bytes [lo, hi) at `buf[at:]`: zeros past the logical end."""
        filled = 0
        have = min(hi, self._size)
        if lo < have:
            tail_start = align_down(self._size)
            if self._tail is not None and lo >= tail_start:
                src: bytes = self._tail[lo - tail_start : have - tail_start]
            else:
                src = _pread_fd(self._rfd, have - lo, lo)
            filled = buf.copy_in(at, src)
        buf.zero(at + filled, at + hi - lo)

    def _write_pages(self, buf: AlignedBuffer, nbytes: int, at: int) -> None:
        assert nbytes % PAGE_BYTES == 0 and at % PAGE_BYTES == 0
        done = 0
        while done < nbytes:
            n = os.pwrite(self._wfd, buf.view[done:nbytes], at + done)
            if n <= 0 or n % PAGE_BYTES:
                # A short direct write ends off a page boundary only on a failing device.
                detail = f"short direct write ({n} of {nbytes - done} bytes)"
                raise OSError(errno.EIO, detail, str(self._path))
            done += n

    def pread(self, length: int, offset: int) -> bytes:
        assert length >= 0 and offset >= 0
        if self._rfd < 0:
            raise OSError(errno.EBADF, "file is closed", str(self._path))
        length = min(length, self._size - offset)
        return _pread_fd(self._rfd, length, offset) if length > 0 else b""

    def fdatasync(self) -> None:
        self._check_open()
        if not self._dsync:  # with O_DSYNC the writes already waited for the device
            os.fdatasync(self._wfd)

    def truncate(self, length: int) -> None:
        assert length >= 0
        self._check_open()
        os.ftruncate(self._wfd, length)
        self._size = self._padded_end = length
        self._tail = b"" if length % PAGE_BYTES == 0 else None

    def size(self) -> int:
        self._check_open()
        return self._size

    def seal(self) -> None:
        self._check_open()
        self._trim()
        self._tail = b"" if self._size % PAGE_BYTES == 0 else None

    def _trim(self) -> None:
        # Only padding this handle wrote is cut: a handle that merely read never shortens
        # a file another handle may have grown.
        if self._padded_end > self._size and os.fstat(self._wfd).st_size > self._size:
            os.ftruncate(self._wfd, self._size)
        self._padded_end = self._size

    def close(self) -> None:
        if self._wfd < 0:
            return
        try:
            self._trim()
        finally:
            os.close(self._wfd)
            os.close(self._rfd)
            self._wfd = self._rfd = -1

    def fileno(self) -> int | None:
        return self._rfd if self._rfd >= 0 else None


class DirectIO(BufferedIO):
    """O_DIRECT files: writes skip the page cache (faster and steadier on the measured disks,
    and they leave memory to the partitions' tail caches). Directory operations are the
    buffered ones.

    `direct_suffixes` chooses which files are direct by name ending; others are opened as
    BufferedIO opens them. None (the default) makes every file direct. A server should pass
    `segment.DIRECT_SUFFIXES` (the .log only): index entries and consumer offsets are small
    writes, where a direct write's latency and page rewrite cost more than they save.

    Where the filesystem refuses O_DIRECT, `open` raises `DirectIOUnsupportedError` (an
    OSError) naming the path: a silent fallback would hide a configuration that does not do
    what it says. `DirectIO.supported(directory)` probes a directory first, so a caller that
    prefers to fall back can choose BufferedIO once, up front, and log it.
    """

    def __init__(
        self,
        direct_suffixes: Sequence[str] | None = None,
        pool: AlignedPool | None = None,
        dsync: bool = False,
    ) -> None:
        """`dsync` opens direct files O_DSYNC too: each write returns once it is on the
        device (one device round trip, where write + fdatasync takes two), and fdatasync on
        them does nothing. For fsync-before-every-acknowledgement."""
        if not hasattr(os, "O_DIRECT"):
            raise DirectIOUnsupportedError(errno.EINVAL, "O_DIRECT is not available on this platform")
        super().__init__()  # files that are not direct (indexes) are plain buffered ones
        self.direct_suffixes = None if direct_suffixes is None else tuple(direct_suffixes)
        self.pool = pool or AlignedPool()
        self.dsync = dsync

    def is_direct(self, path: Path) -> bool:
        return self.direct_suffixes is None or os.fspath(path).endswith(self.direct_suffixes)

    def open(self, path: Path) -> File:
        if not self.is_direct(path):
            return super().open(path)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            wfd = os.open(path, flags | os.O_DIRECT | (os.O_DSYNC if self.dsync else 0), 0o644)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise DirectIOUnsupportedError(
                errno.EINVAL, "the filesystem refuses O_DIRECT (use BufferedIO here)", os.fspath(path)
            ) from e
        try:
            rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(wfd)
            raise
        return _DirectFile(path, wfd, rfd, self.pool, self.dsync)

    @staticmethod
    def supported(directory: Path) -> bool:
        """Whether files in `directory` (which must exist) take aligned O_DIRECT writes."""
        if not hasattr(os, "O_DIRECT"):
            return False
        fd, name = tempfile.mkstemp(prefix=".direct-probe-", dir=directory)
        os.close(fd)
        buf = AlignedBuffer(align_up(1))
        try:
            dfd = os.open(name, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            try:
                buf.zero(0, PAGE_BYTES)
                os.pwrite(dfd, buf.view[:PAGE_BYTES], 0)
            finally:
                os.close(dfd)
        except OSError:
            return False
        finally:
            buf.close()
            os.unlink(name)
        return True


class _MemNode:
    __slots__ = ("data", "synced")

    def __init__(self) -> None:
        self.data = bytearray()
        self.synced = bytearray()


class _MemFile(File):
    __slots__ = ("_closed", "_generation", "_io", "_node")

    def __init__(self, io: MemIO, node: _MemNode) -> None:
        self._io = io
        self._node = node
        self._generation = io.generation
        self._closed = False

    def _live(self) -> _MemNode:
        # A crash invalidates every handle, as a dead process loses its descriptors.
        if self._closed or self._generation != self._io.generation:
            raise OSError(errno.EBADF, "file is closed")
        return self._node

    def pwritev(self, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        assert offset >= 0
        node = self._live()
        data = b"".join(memoryview(b).cast("B") for b in buffers)
        end = offset + len(data)
        if offset > len(node.data):
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset:end] = data
        return len(data)

    def pread(self, length: int, offset: int) -> bytes:
        assert length >= 0 and offset >= 0
        return bytes(self._live().data[offset : offset + length])

    def fdatasync(self) -> None:
        node = self._live()
        node.synced = bytearray(node.data)

    def truncate(self, length: int) -> None:
        node = self._live()
        if length <= len(node.data):
            del node.data[length:]
        else:
            node.data.extend(bytes(length - len(node.data)))

    def size(self) -> int:
        return len(self._live().data)

    def close(self) -> None:
        self._closed = True


class MemIO(FileIO):
    """Files in memory, with a crash that loses what was never fdatasync'ed."""

    def __init__(self) -> None:
        self.files: dict[str, _MemNode] = {}
        self.dirs: set[str] = {"/", "."}
        self.generation = 0

    @staticmethod
    def _key(path: Path) -> str:
        return os.path.normpath(os.fspath(path))

    def _parent_exists(self, key: str) -> bool:
        return os.path.dirname(key) in self.dirs or os.path.dirname(key) == ""

    def open(self, path: Path) -> File:
        key = self._key(path)
        if key in self.dirs:
            raise IsADirectoryError(errno.EISDIR, "is a directory", key)
        node = self.files.get(key)
        if node is None:
            if not self._parent_exists(key):
                raise FileNotFoundError(errno.ENOENT, "no such directory", key)
            node = self.files[key] = _MemNode()
        return _MemFile(self, node)

    def exists(self, path: Path) -> bool:
        key = self._key(path)
        return key in self.files or key in self.dirs

    def listdir(self, path: Path) -> list[str]:
        key = self._key(path)
        if key not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", key)
        names = {os.path.basename(k) for k in (*self.files, *self.dirs) if os.path.dirname(k) == key}
        names.discard("")
        return sorted(names)

    def makedirs(self, path: Path) -> None:
        key = self._key(path)
        if key in self.files:
            raise FileExistsError(errno.EEXIST, "a file has this name", key)
        while key not in self.dirs and key not in ("", "/"):
            self.dirs.add(key)
            key = os.path.dirname(key)

    def unlink(self, path: Path) -> None:
        key = self._key(path)
        if key not in self.files:
            raise FileNotFoundError(errno.ENOENT, "no such file", key)
        del self.files[key]

    def rename(self, src: Path, dst: Path) -> None:
        s, d = self._key(src), self._key(dst)
        if s not in self.files:
            raise FileNotFoundError(errno.ENOENT, "no such file", s)
        if not self._parent_exists(d):
            raise FileNotFoundError(errno.ENOENT, "no such directory", d)
        self.files[d] = self.files.pop(s)

    def rmtree(self, path: Path) -> None:
        key = self._key(path)
        prefix = key.rstrip("/") + "/"
        for k in [k for k in self.files if k.startswith(prefix)]:
            del self.files[k]
        self.dirs = {k for k in self.dirs if k != key and not k.startswith(prefix)}

    def fsync_dir(self, path: Path) -> None:
        if self._key(path) not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", self._key(path))

    def crash(self, keep_unsynced_bytes: int = 0) -> None:
        """Lose every byte not made durable by fdatasync, and invalidate all open handles.

        `keep_unsynced_bytes` keeps that many bytes of each file's unsynced *appended* data,
        as a torn write that reached the disk in part; other unsynced changes are lost.
        """
        assert keep_unsynced_bytes >= 0
        for node in self.files.values():
            synced = len(node.synced)
            if node.data[:synced] == node.synced:
                node.data = bytearray(node.data[: synced + keep_unsynced_bytes])
            else:
                node.data = bytearray(node.synced)
            # What survived the crash is on the disk now.
            node.synced = bytearray(node.data)
        self.generation += 1
