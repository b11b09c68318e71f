"""Fault injection for tests: the ``faultfs`` LD_PRELOAD shim and the rules it reads.

``tests/faults/faultfs.c`` wraps fsync, fdatasync and the write family (write, pwrite,
pwritev(2), writev) and, for regular files whose path matches a rule's glob, fails the call
with an errno or delays it. A :class:`FaultPlan` owns one rules file; start a server with
``env=plan.env()`` and change the rules while it runs (the shim re-reads the file when it
changes; each rewrite is atomic: temp file + rename).

Rule lines, as the shim reads them (glob last, to the end of the line)::

    fail  <op> <ERRNO> <times> <glob>
    delay <op> <ms>    <times> <glob>

``op`` is ``"fsync"`` (fsync and fdatasync), ``"fdatasync"`` or ``"write"``; ``times`` -1 is
forever. The first active rule that matches a call decides it. A rule whose line is unchanged
keeps its remaining count when the file is rewritten; new lines start fresh.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "faults" / "faultfs.c"
FAULT_LIB = ROOT / "build" / "faultfs.so"
OPS = ("fsync", "fdatasync", "write")


def ensure_built() -> Path:
    """Compile the shim if it is missing or older than its source (the Makefile does the same;
    this covers running pytest directly). Safe when several test workers call it at once."""
    FAULT_LIB.parent.mkdir(parents=True, exist_ok=True)
    with open(FAULT_LIB.parent / ".faultfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if FAULT_LIB.exists() and FAULT_LIB.stat().st_mtime >= SOURCE.stat().st_mtime:
            return FAULT_LIB
        tmp = FAULT_LIB.with_name(f".faultfs.{os.getpid()}.so")
        cc = os.environ.get("CC", "cc")
        cmd = [cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl", "-lpthread"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building the fault shim failed: {' '.join(cmd)}\n{done.stderr}")
        tmp.replace(FAULT_LIB)
    return FAULT_LIB


class FaultPlan:
    """The rules of one test, kept in `rules_path` and rewritten atomically on each change."""

    def __init__(self, rules_path: Path) -> None:
        self.rules_path = rules_path
        self.rules: list[str] = []
        self._generation = 0
        self._write()

    def env(self) -> dict[str, str]:
        """Environment for a process the rules should apply to."""
        return {"LD_PRELOAD": str(ensure_built()), "TIDELOG_FAULTS": str(self.rules_path)}

    def fail(self, op: str, path_glob: str, errno_name: str = "EIO", times: int = -1) -> None:
        """Fail the next `times` matching `op` calls (-1: all) with `errno_name` (e.g. ENOSPC)."""
        self._check(op, path_glob)
        if not isinstance(getattr(errno, errno_name, None), int):
            raise ValueError(f"unknown errno name {errno_name!r}")
        self._add(f"fail {op} {errno_name} {times} {path_glob}")

    def delay(self, op: str, path_glob: str, ms: int, times: int = -1) -> None:
        """Sleep `ms` before each of the next `times` matching `op` calls (-1: all), then run it."""
        self._check(op, path_glob)
        if ms < 0:
            raise ValueError("a delay cannot be negative")
        self._add(f"delay {op} {ms} {times} {path_glob}")

    def clear(self) -> None:
        """Remove every rule: from now on every call passes through."""
        self.rules = []
        self._write()

    def _add(self, line: str) -> None:
        self.rules.append(line)
        self._write()

    @staticmethod
    def _check(op: str, path_glob: str) -> None:
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, not {op!r}")
        if not path_glob or "\n" in path_glob:
            raise ValueError("the path glob must be one non-empty line")

    def _write(self) -> None:
        # The shim notices a change by inode, size and mtime. mtime is coarse (a clock tick)
        # and sizes can repeat, so each generation gets a new inode that is never reused while
        # the plan lives: every generation's file is kept (they are tiny), and the rules path
        # is swapped to it atomically with a hard link + rename.
        self._generation += 1
        kept = self.rules_path.with_name(f"{self.rules_path.name}.{self._generation}")
        kept.write_text("".join(line + "\n" for line in self.rules))
        tmp = self.rules_path.with_name(self.rules_path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        os.link(kept, tmp)
        os.replace(tmp, self.rules_path)


class SmallFilesystems:
    """Mounts small real filesystems that tests can fill up: an ext4 image on a loop device
    where the machine allows it (root, loop devices), else a size-limited tmpfs. `skip_reason`
    is set when neither works; `cleanup` unmounts everything and removes the images."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounts: list[tuple[Path, str]] = []  # (mount point, "ext4" | "tmpfs")
        self._images: list[Path] = []

    def __call__(self, size_mb: int) -> Path:
        if os.geteuid() != 0:
            raise SmallFsUnavailable("mounting a small filesystem needs root")
        n = len(self.mounts) + len(self._images)
        point = self.base / f"smallfs{n}"
        point.mkdir(parents=True)
        image = self.base / f"smallfs{n}.img"
        errors = []
        with open(image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        self._images.append(image)
        # -m 0: no blocks reserved for root (the server runs as root in CI), so "full" means
        # full for everyone; lazy init off so the kernel does not write behind the test's back.
        made = _run(
            "mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)
        )
        if made is None:
            mounted = _run("mount", "-o", "loop", str(image), str(point))
            if mounted is None:
                self.mounts.append((point, "ext4"))
                return point
            errors.append(f"loop mount: {mounted}")
        else:
            errors.append(f"mkfs.ext4: {made}")
        image.unlink(missing_ok=True)
        self._images.remove(image)
        mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(point))
        if mounted is None:
            self.mounts.append((point, "tmpfs"))
            return point
        errors.append(f"tmpfs mount: {mounted}")
        raise SmallFsUnavailable("no small filesystem could be mounted: " + "; ".join(errors))

    def kind(self, point: Path) -> str:
        return dict(self.mounts)[point]

    def cleanup(self) -> None:
        for point, _ in reversed(self.mounts):
            # A process still holding files there (a server the test did not stop) makes a
            # plain umount fail: detach lazily then; the loop device frees itself when the
            # last file closes (mount -o loop sets autoclear).
            if _run("umount", str(point)) is not None:
                _run("umount", "-l", str(point))
        self.mounts.clear()
        for image in self._images:
            image.unlink(missing_ok=True)
        self._images.clear()


class SmallFsUnavailable(RuntimeError):
    """Neither a loop-mounted ext4 nor a tmpfs could be mounted here."""


def _run(*cmd: str) -> str | None:
    """Run a system tool; None on success, else what it said."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")
