"""storage/io.py: one contract, every backend.

Each test takes the `backend` fixture, parametrized over all `FileIO` implementations, so a
new backend (DirectIO, a simulator disk) joins by adding one line to BACKENDS.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tidelog.storage import io as io_module
from tidelog.storage.buffers import MIN_CLASS_BYTES, PAGE_BYTES, AlignedPool
from tidelog.storage.io import IOV_MAX, BufferedIO, DirectIO, DirectIOUnsupportedError, FileIO, MemIO

BACKENDS: dict[str, Callable[[], FileIO]] = {
    "buffered": BufferedIO,
    "direct": DirectIO,
    "direct-dsync": lambda: DirectIO(dsync=True),
    "mem": MemIO,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FileIO, Path]]:
    if request.param.startswith("direct") and not DirectIO.supported(tmp_path):
        pytest.skip("the test directory's filesystem refuses O_DIRECT")
    io = BACKENDS[request.param]()
    root = tmp_path / "root"
    io.makedirs(root)
    yield io, root


def test_file_given_pwritev_when_read_back_should_hold_buffers_back_to_back(
    backend: tuple[FileIO, Path],
) -> None:
    io, root = backend
    f = io.open(root / "a")
    assert f.pwritev([b"abc", bytearray(b"de"), memoryview(b"fgh")], 0) == 8
    assert f.pread(8, 0) == b"abcdefgh"
    assert f.pread(3, 2) == b"cde"
    assert f.size() == 8
    f.close()


def test_file_given_write_past_end_when_read_should_fill_the_hole_with_zeros(
    backend: tuple[FileIO, Path],
) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.pwrite(b"xy", 0)
    f.pwrite(b"z", 5)
    assert f.pread(10, 0) == b"xy\0\0\0z"
    assert f.size() == 6


def test_file_given_overwrite_when_read_should_see_new_bytes_only_there(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.pwrite(b"0123456789", 0)
    f.pwritev([b"ab", b"c"], 4)
    assert f.pread(10, 0) == b"0123abc789"


def test_file_given_read_past_end_when_read_should_return_short_or_empty(
    backend: tuple[FileIO, Path],
) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.pwrite(b"hello", 0)
    assert f.pread(100, 3) == b"lo"
    assert f.pread(10, 5) == b""
    assert f.pread(10, 50) == b""


def test_file_given_many_buffers_when_pwritev_should_write_past_iov_max(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    f = io.open(root / "a")
    parts = [bytes([i % 251]) * 3 for i in range(IOV_MAX * 2 + 5)]
    assert f.pwritev(parts, 7) == 3 * len(parts)
    assert f.pread(3 * len(parts), 7) == b"".join(parts)


def test_file_given_numpy_structured_array_when_written_should_store_its_bytes(
    backend: tuple[FileIO, Path],
) -> None:
    import numpy as np

    from tidelog.wire.batch import INDEX_DTYPE

    io, root = backend
    rows = np.zeros(2, dtype=INDEX_DTYPE)
    rows["position"] = [100, 200]
    f = io.open(root / "a")
    f.pwrite(rows.data, 0)
    assert f.pread(32, 0) == rows.tobytes()


def test_file_given_truncate_when_shrunk_or_grown_should_cut_or_zero_fill(
    backend: tuple[FileIO, Path],
) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.pwrite(b"abcdef", 0)
    f.truncate(2)
    assert f.size() == 2 and f.pread(10, 0) == b"ab"
    f.truncate(4)
    assert f.pread(10, 0) == b"ab\0\0"


def test_file_given_close_and_reopen_when_read_should_keep_data(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.pwrite(b"persist", 0)
    f.fdatasync()
    f.close()
    g = io.open(root / "a")
    assert g.pread(100, 0) == b"persist"
    assert io.read_file(root / "a") == b"persist"
    g.close()


def test_file_given_closed_handle_when_used_should_raise_os_error(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.close()
    with pytest.raises(OSError):
        f.pwrite(b"x", 0)


def test_io_given_missing_parent_when_opening_should_raise_file_not_found(
    backend: tuple[FileIO, Path],
) -> None:
    io, root = backend
    with pytest.raises(FileNotFoundError):
        io.open(root / "nope" / "a")


def test_io_given_files_and_dirs_when_listed_should_return_sorted_names(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    io.makedirs(root / "sub" / "deeper")
    io.makedirs(root / "sub")  # exists already: fine
    for name in ("b", "a", "c"):
        io.open(root / name).close()
    assert io.listdir(root) == ["a", "b", "c", "sub"]
    assert io.listdir(root / "sub") == ["deeper"]
    assert io.exists(root / "a") and io.exists(root / "sub") and not io.exists(root / "zz")


def test_io_given_rename_when_done_should_move_and_replace(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.pwrite(b"new", 0)
    f.close()
    g = io.open(root / "b")
    g.pwrite(b"old-old", 0)
    g.close()
    io.rename(root / "a", root / "b")
    assert not io.exists(root / "a")
    assert io.read_file(root / "b") == b"new"


def test_io_given_unlink_when_file_missing_should_raise(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    io.open(root / "a").close()
    io.unlink(root / "a")
    assert not io.exists(root / "a")
    with pytest.raises(FileNotFoundError):
        io.unlink(root / "a")


def test_io_given_tree_when_rmtree_should_remove_everything_under_it(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    io.makedirs(root / "t" / "x")
    io.open(root / "t" / "x" / "f").close()
    io.open(root / "t" / "g").close()
    io.open(root / "keep").close()
    io.fsync_dir(root / "t")
    io.rmtree(root / "t")
    assert not io.exists(root / "t") and not io.exists(root / "t" / "x" / "f")
    assert io.listdir(root) == ["keep"]
    io.rmtree(root / "t")  # already gone: fine


def test_mem_io_given_crash_when_reopened_should_keep_only_synced_bytes(tmp_path: Path) -> None:
    io = MemIO()
    io.makedirs(tmp_path)
    f = io.open(tmp_path / "a")
    f.pwrite(b"durable", 0)
    f.fdatasync()
    f.pwrite(b"-lost", 7)
    io.crash()
    with pytest.raises(OSError):
        f.pread(1, 0)
    assert io.read_file(tmp_path / "a") == b"durable"


def test_mem_io_given_torn_crash_when_reopened_should_keep_part_of_the_appended_bytes(tmp_path: Path) -> None:
    io = MemIO()
    io.makedirs(tmp_path)
    f = io.open(tmp_path / "a")
    f.pwrite(b"durable", 0)
    f.fdatasync()
    f.pwrite(b"-partial", 7)
    io.crash(keep_unsynced_bytes=3)
    assert io.read_file(tmp_path / "a") == b"durable-pa"


def test_mem_io_given_unsynced_overwrite_when_crashed_should_restore_synced_content(tmp_path: Path) -> None:
    io = MemIO()
    io.makedirs(tmp_path)
    f = io.open(tmp_path / "a")
    f.pwrite(b"abcdef", 0)
    f.fdatasync()
    f.pwrite(b"XY", 1)
    io.crash(keep_unsynced_bytes=10)
    assert io.read_file(tmp_path / "a") == b"abcdef"


def test_file_given_random_writes_when_read_back_should_match_a_byte_model(
    backend: tuple[FileIO, Path],
) -> None:
    # Appends, overwrites, holes and truncates at page-unaligned places, as DirectIO must
    # rewrite partial pages for all of them.
    rng = random.Random(20240611)
    io, root = backend
    f = io.open(root / "a")
    model = bytearray()
    for step in range(120):
        kind = rng.random()
        if kind < 0.1 and model:
            length = rng.randrange(0, len(model) + 5000)
            f.truncate(length)
            model = model[:length] + bytearray(max(0, length - len(model)))
            continue
        offset = len(model) if kind < 0.6 else rng.randrange(0, len(model) + 9000)
        parts = [bytes([step % 251 + 1]) * rng.randrange(0, 7000) for _ in range(rng.randrange(1, 4))]
        data = b"".join(parts)
        assert f.pwritev(parts, offset) == len(data)
        if offset > len(model):
            model += bytearray(offset - len(model))
        model[offset : offset + len(data)] = data
        assert f.size() == len(model)
    assert f.pread(len(model) + 100, 0) == bytes(model)
    for _ in range(20):
        at = rng.randrange(0, len(model))
        assert f.pread(5000, at) == bytes(model[at : at + 5000])
    f.close()
    assert io.read_file(root / "a") == bytes(model)


def test_file_given_seal_when_read_should_keep_every_byte(backend: tuple[FileIO, Path]) -> None:
    io, root = backend
    f = io.open(root / "a")
    f.pwrite(b"q" * 5000, 0)
    f.seal()
    assert f.size() == 5000 and f.pread(6000, 0) == b"q" * 5000
    f.close()
    assert io.read_file(root / "a") == b"q" * 5000


# ---- DirectIO specifics -----------------------------------------------------------------


@pytest.fixture
def direct_root(tmp_path: Path) -> Path:
    if not DirectIO.supported(tmp_path):
        pytest.skip("the test directory's filesystem refuses O_DIRECT")
    return tmp_path


def test_direct_io_given_unaligned_appends_when_open_should_pad_the_file_but_never_show_it(
    direct_root: Path,
) -> None:
    f = DirectIO().open(direct_root / "a")
    f.pwrite(b"x" * 100, 0)
    f.pwrite(b"y" * 5000, 100)
    assert os.path.getsize(direct_root / "a") == 8192  # two whole pages on disk
    assert f.size() == 5100 and f.pread(10_000, 0) == b"x" * 100 + b"y" * 5000
    f.close()
    assert os.path.getsize(direct_root / "a") == 5100  # close cuts the padding


def test_direct_io_given_seal_when_done_should_cut_padding_and_keep_reading(direct_root: Path) -> None:
    f = DirectIO().open(direct_root / "a")
    f.pwrite(b"z" * 10, 0)
    f.seal()
    assert os.path.getsize(direct_root / "a") == 10
    assert f.pread(100, 0) == b"z" * 10
    f.close()


def test_direct_io_given_fresh_handle_on_padded_file_when_sized_should_give_the_physical_bound(
    direct_root: Path,
) -> None:
    # What a crash leaves: the padding is on disk; a new handle cannot know the logical end.
    io = DirectIO()
    f = io.open(direct_root / "a")
    f.pwrite(b"m" * 700, 0)
    g = io.open(direct_root / "a")
    assert g.size() == 4096 and g.pread(4096, 0) == b"m" * 700 + bytes(4096 - 700)
    g.close()  # it wrote nothing: it must not cut the file the other handle is writing
    f.pwrite(b"n" * 10, 700)
    assert f.pread(1000, 0) == b"m" * 700 + b"n" * 10
    f.close()
    assert io.read_file(direct_root / "a") == b"m" * 700 + b"n" * 10


def test_direct_io_given_write_larger_than_staging_when_read_should_be_whole(
    direct_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_module, "DIRECT_STAGING_MAX_BYTES", 1 << 16)
    f = DirectIO().open(direct_root / "a")
    data = random.Random(3).randbytes(300_000)
    f.pwrite(b"h" * 33, 0)
    f.pwritev([data[:100_000], data[100_000:]], 33)
    assert f.pread(400_000, 0) == b"h" * 33 + data
    f.close()


def test_direct_io_given_suffixes_when_opening_should_make_only_those_files_direct(direct_root: Path) -> None:
    io = DirectIO(direct_suffixes=(".log",))
    d = io.open(direct_root / "a.log")
    b = io.open(direct_root / "a.offsets")
    d.pwrite(b"1", 0)
    b.pwrite(b"1", 0)
    assert os.path.getsize(direct_root / "a.log") == 4096
    assert os.path.getsize(direct_root / "a.offsets") == 1
    d.close()
    b.close()


def test_direct_io_given_filesystem_refusing_o_direct_when_opening_should_raise_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(DirectIOUnsupportedError, match="O_DIRECT"):
        DirectIO().open(tmp_path / "a")
    assert not DirectIO.supported(tmp_path)
    assert isinstance(DirectIO(direct_suffixes=(".log",)).open(tmp_path / "b"), io_module.File)


def test_aligned_pool_given_leases_when_released_should_reuse_page_aligned_buffers_by_size_class() -> None:
    pool = AlignedPool(keep_per_class=1)
    a = pool.lease(5000)
    assert a.capacity == MIN_CLASS_BYTES and a.address % PAGE_BYTES == 0
    b = pool.lease(MIN_CLASS_BYTES + 1)
    assert b.capacity == 2 * MIN_CLASS_BYTES
    a.copy_in(10, b"abc")
    a.zero(11, 12)
    assert bytes(a.view[10:13]) == b"a\0c"
    other = pool.lease(100)
    pool.release(a)
    pool.release(other)  # one per class is kept; this one is unmapped
    assert pool.cached_bytes() == MIN_CLASS_BYTES
    assert pool.lease(MIN_CLASS_BYTES) is a
    pool.release(b)
    pool.clear()
    assert pool.cached_bytes() == 0


def test_buffered_given_writeback_bytes_when_appending_should_hand_ranges_to_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((offset, nbytes, flags))
        return 0

    monkeypatch.setattr(io_module, "_SYNC_FILE_RANGE", record)
    f = BufferedIO(writeback_bytes=1000).open(tmp_path / "a")
    offset = 0
    for size in (400, 400, 400, 1500, 10):
        f.pwritev([b"x" * size], offset)
        offset += size
    # Handed over once 1000 bytes had accumulated, then for the 1500-byte write; the last 10
    # bytes wait for more.
    assert calls == [(0, 1200, 2), (1200, 1500, 2)]
    assert f.pread(offset, 0) == b"x" * offset
    f.close()


def test_buffered_given_writeback_when_real_syscall_should_keep_data_intact(tmp_path: Path) -> None:
    f = BufferedIO(writeback_bytes=4096).open(tmp_path / "a")
    data = os.urandom(1 << 20)
    for i in range(0, len(data), 65536):
        f.pwritev([data[i : i + 65536]], i)
    f.fdatasync()
    assert f.pread(len(data), 0) == data
    f.close()
