"""storage/io.py: one contract, every backend.

Each test takes the `backend` fixture, parametrized over all `FileIO` implementations, so a
new backend (DirectIO, a simulator disk) joins by adding one line to BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tidelog.storage.io import IOV_MAX, BufferedIO, FileIO, MemIO

BACKENDS: dict[str, Callable[[], FileIO]] = {"buffered": BufferedIO, "mem": MemIO}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FileIO, Path]]:
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
