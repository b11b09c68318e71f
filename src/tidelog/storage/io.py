"""Disk access through one small interface, so storage code can run on real files, in memory
(tests, later the simulator) or, later, on O_DIRECT files without change.

`FileIO` is a backend: it opens `File` handles and does the few directory operations storage
needs. `File` is positional only (pwritev / pread at an explicit offset): there is no file
cursor to get wrong, and one writer per partition needs no locking.

Backends:

* `BufferedIO`: page-cache I/O with `os.pwritev` and `os.fdatasync` (the default).
* `MemIO`: files in memory. Each file remembers what the last `fdatasync` made durable;
  `crash()` throws away everything else (optionally keeping part of the unsynced appended
  bytes, i.e. a torn write). Directory operations (create, rename, unlink) count as durable
  at once: they are rare, and recovery must cope with their leftovers anyway.

A later `DirectIO` (O_DIRECT) will pad files to 4 KiB, so callers must never take a file's
physical size as the end of its data: `size()` is an upper bound for recovery scans, nothing
more.
"""

from __future__ import annotations

import errno
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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

    def fileno(self) -> int | None:
        """An OS descriptor for `os.sendfile`, or None when the file is not an OS file."""
        return None


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


class _OsFile(File):
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

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
        return total

    def pread(self, length: int, offset: int) -> bytes:
        assert length >= 0 and offset >= 0
        data = os.pread(self._fd, length, offset)
        if len(data) == length or not data:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

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
    """Real files through the page cache."""

    def open(self, path: Path) -> File:
        return _OsFile(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))

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
