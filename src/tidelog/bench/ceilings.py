"""Hardware ceilings measured in the same run as a benchmark, so its figures can be read as ratios.

- Loopback TCP: a sender process writes the volume to a receiver on 127.0.0.1 in 256 KiB
  ``sendall`` calls; the receiver ``recv_into`` one buffer. This is the most a client/server
  pair on this machine can move, before any protocol work.
- Disk: sequential 256 KiB writes of the volume to a temp file in ``directory`` (which should
  be on the server's data disk), three ways: buffered ``write`` + ``fdatasync`` after each,
  ``O_DIRECT`` from an ``mmap``-allocated (page-aligned) buffer, and ``O_DIRECT | O_DSYNC``
  (each write durable when it returns: the ceiling of fsync-before-ack). A filesystem that
  refuses ``O_DIRECT`` (tmpfs, some overlays) gives a skipped entry with the reason.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WRITE_BYTES = 256 * 1024
_PAGE_BYTES = mmap.PAGESIZE
assert WRITE_BYTES % _PAGE_BYTES == 0
_ACCEPT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Ceiling:
    name: str
    bytes_moved: int = 0
    seconds: float = 0.0
    p50_write_us: float = 0.0
    p99_write_us: float = 0.0
    skipped: str = ""
    """Why it could not be measured (empty when it was)."""

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_moved / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["megabytes_per_second"] = self.megabytes_per_second
        return out


def _round_up_writes(volume_bytes: int) -> int:
    return max(1, -(-volume_bytes // WRITE_BYTES))


def _percentile_us(samples_ns: list[int], fraction: float) -> float:
    if not samples_ns:
        return 0.0
    ordered = sorted(samples_ns)
    index = min(len(ordered) - 1, int(fraction * len(ordered)))
    return ordered[index] / 1000


def _send_loopback(port: int, writes: int) -> None:
    buf = os.urandom(WRITE_BYTES)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(writes):
            sock.sendall(buf)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # wait for the receiver to close: it has everything


def measure_loopback(volume_bytes: int) -> Ceiling:
    """Loopback TCP throughput moving ``volume_bytes`` (rounded up to whole 256 KiB writes)."""
    writes = _round_up_writes(volume_bytes)
    total = writes * WRITE_BYTES
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(_ACCEPT_TIMEOUT_S)
        port = listener.getsockname()[1]
        sender = mp.get_context("fork").Process(target=_send_loopback, args=(port, writes), daemon=True)
        sender.start()
        try:
            conn, _ = listener.accept()
            with conn:
                buf = bytearray(WRITE_BYTES)
                view = memoryview(buf)
                received = 0
                begin = time.perf_counter_ns()
                while received < total:
                    n = conn.recv_into(view)
                    if n == 0:
                        break
                    received += n
                elapsed_ns = time.perf_counter_ns() - begin
        finally:
            sender.join(_ACCEPT_TIMEOUT_S)
            if sender.is_alive():
                sender.kill()
    assert received == total, f"loopback receiver got {received} of {total} bytes"
    return Ceiling("loopback_tcp", total, elapsed_ns / 1e9)


def _aligned_buffer() -> mmap.mmap:
    buf = mmap.mmap(-1, WRITE_BYTES)
    buf.write(os.urandom(WRITE_BYTES))
    return buf


def _timed_writes(fd: int, data: Any, writes: int, sync_each: bool) -> tuple[float, list[int]]:
    samples: list[int] = []
    begin = time.perf_counter_ns()
    for _ in range(writes):
        t = time.perf_counter_ns()
        written = os.write(fd, data)
        assert written == WRITE_BYTES, f"short write: {written}"
        if sync_each:
            os.fdatasync(fd)
        samples.append(time.perf_counter_ns() - t)
    return (time.perf_counter_ns() - begin) / 1e9, samples


def measure_disk_buffered(directory: Path, volume_bytes: int) -> Ceiling:
    """Buffered sequential 256 KiB writes, each followed by ``fdatasync``."""
    writes = _round_up_writes(volume_bytes)
    fd, path = tempfile.mkstemp(prefix="tidelog-ceiling-", dir=directory)
    try:
        seconds, samples = _timed_writes(fd, os.urandom(WRITE_BYTES), writes, sync_each=True)
    finally:
        os.close(fd)
        os.unlink(path)
    return Ceiling(
        "disk_buffered_fdatasync",
        writes * WRITE_BYTES,
        seconds,
        _percentile_us(samples, 0.50),
        _percentile_us(samples, 0.99),
    )


def measure_disk_direct(directory: Path, volume_bytes: int, dsync: bool = False) -> Ceiling:
    """``O_DIRECT`` (optionally ``| O_DSYNC``) sequential 256 KiB writes from an aligned buffer."""
    name = "disk_o_direct_dsync" if dsync else "disk_o_direct"
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return Ceiling(name, skipped="O_DIRECT is not available on this platform")
    writes = _round_up_writes(volume_bytes)
    fd_tmp, path = tempfile.mkstemp(prefix="tidelog-ceiling-", dir=directory)
    os.close(fd_tmp)
    try:
        flags = os.O_WRONLY | os.O_TRUNC | flag | (os.O_DSYNC if dsync else 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            return Ceiling(name, skipped=f"open with O_DIRECT refused: {exc.strerror}")
        buf = _aligned_buffer()
        try:
            try:
                seconds, samples = _timed_writes(fd, buf, writes, sync_each=False)
            except OSError as exc:
                return Ceiling(name, skipped=f"O_DIRECT write refused: {exc.strerror}")
        finally:
            os.close(fd)
            buf.close()
    finally:
        os.unlink(path)
    return Ceiling(
        name, writes * WRITE_BYTES, seconds, _percentile_us(samples, 0.50), _percentile_us(samples, 0.99)
    )


def measure_ceilings(directory: Path | None, volume_bytes: int) -> list[Ceiling]:
    """All four ceilings, loopback first; ``directory`` None = the system temp dir."""
    assert volume_bytes > 0
    where = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    return [
        measure_loopback(volume_bytes),
        measure_disk_buffered(where, volume_bytes),
        measure_disk_direct(where, volume_bytes),
        measure_disk_direct(where, volume_bytes, dsync=True),
    ]
