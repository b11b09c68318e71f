"""The small-filesystem fixture: a real, separately mounted filesystem that fills up."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults import SmallFilesystems, SmallFsUnavailable


def test_small_fs_given_a_size_when_filled_should_raise_enospc_at_about_that_size(
    small_fs: Callable[[int], Path],
) -> None:
    point = small_fs(16)
    assert os.stat(point).st_dev != os.stat(point.parent).st_dev, "not a separate filesystem"
    written = 0
    chunk = b"\0" * (1 << 20)
    with pytest.raises(OSError) as full, open(point / "fill", "wb", buffering=0) as f:
        while written < 64 << 20:
            written += f.write(chunk)
            os.fsync(f.fileno())
    assert full.value.errno == errno.ENOSPC
    assert 8 << 20 <= written <= 16 << 20


def test_small_fs_given_mounted_filesystems_when_cleaned_up_should_unmount_and_remove_them(
    tmp_path: Path,
) -> None:
    filesystems = SmallFilesystems(tmp_path / "fs")
    try:
        point = filesystems(8)
    except SmallFsUnavailable as e:
        pytest.skip(str(e))
    (point / "file").write_bytes(b"x")
    filesystems.cleanup()
    assert os.stat(point).st_dev == os.stat(point.parent).st_dev, "still mounted"
    assert not (point / "file").exists()
    assert not list((tmp_path / "fs").glob("*.img"))
    mounts = Path("/proc/self/mounts").read_text()
    assert str(point) not in mounts
