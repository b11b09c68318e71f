"""Disk writes off the event loop: one thread per shard runs prepared I/O jobs in order.

The owner thread (the shard's event loop) decides everything: which bytes go to which file at
which offset, index entries, rotations. It hands the writer a job, a list of `Op`s that are
pure I/O on `File` handles, and gets a `concurrent.futures.Future` back. The writer thread
runs jobs one after another in submission order and touches nothing but the job and its
future, so storage state needs no locks: the owner learns of completions by looking at the
futures (`Partition.reap`). Storage stays free of asyncio; a server turns a future into an
awaitable with `asyncio.wrap_future` and learns when to reap from `on_complete`, which the
writer calls after every job (from its thread: it must only schedule work, e.g. with
`loop.call_soon_threadsafe`).

Backpressure: the queue holds at most `max_jobs` jobs and `submit` blocks while it is full,
so a disk slower than the producers slows the producers instead of filling memory.

Failures: a job stops at its first failing op and its future carries the exception. Jobs
submitted with the same `Lane` (one per partition) after a failure are not run at all and
fail too: running them would leave a hole in the file with later data after it. Other
lanes go on. A lane stays failed: a submitter that recovers (`Partition.retry_failed`, once
none of its jobs is queued) rewrites what may be missing and continues on a new lane.

Futures handed out are already in the running state, so they cannot be cancelled: a client
that gives up waiting (a cancelled `asyncio.wrap_future`) must not stop the write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tidelog.storage.io import File, FileIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)

DEFAULT_MAX_JOBS = 16


class Op:
    """One step of a job; `run` does the I/O."""

    __slots__ = ()

    def run(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class WriteOp(Op):
    file: File
    buffers: Sequence[ReadableBuffer]
    offset: int
    nbytes: int

    def run(self) -> None:
        written = self.file.pwritev(self.buffers, self.offset)
        if written != self.nbytes:
            raise OSError(errno.EIO, f"wrote {written} of {self.nbytes} bytes at {self.offset}")


@dataclass(frozen=True, slots=True)
class SyncOp(Op):
    file: File

    def run(self) -> None:
        self.file.fdatasync()


@dataclass(frozen=True, slots=True)
class SealOp(Op):
    """The file gets no more appends (drops DirectIO padding); pair it with a SyncOp."""

    file: File

    def run(self) -> None:
        self.file.seal()


@dataclass(frozen=True, slots=True)
class SyncDirOp(Op):
    io: FileIO
    directory: Path

    def run(self) -> None:
        self.io.fsync_dir(self.directory)


def run_ops(ops: Sequence[Op]) -> None:
    for op in ops:
        op.run()


class Lane:
    """Jobs of one submitter (a partition) that must not run past a failure of an earlier one."""

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: BaseException | None = None


def running_future() -> Future[None]:
    """A future in the running state: it cannot be cancelled, only completed."""
    f: Future[None] = Future()
    f.set_running_or_notify_cancel()
    return f


def done_future() -> Future[None]:
    f = running_future()
    f.set_result(None)
    return f


@dataclass(slots=True)
class _Job:
    ops: Sequence[Op]
    lane: Lane | None
    future: Future[None]


_STOP = object()


class Writer:
    """One thread that runs I/O jobs in submission order."""

    def __init__(
        self,
        on_complete: Callable[[], None] | None = None,
        max_jobs: int = DEFAULT_MAX_JOBS,
        name: str = "tidelog-writer",
        cpus: frozenset[int] | None = None,
    ) -> None:
        assert max_jobs > 0
        self._cpus = cpus  # where the thread may run (None: wherever its creator may)
        self._on_complete = on_complete
        self._queue: queue.Queue[_Job | object] = queue.Queue(maxsize=max_jobs)
        self._gate = threading.Event()
        self._gate.set()
        self._closed = False
        self.jobs_done = 0
        # A daemon thread never keeps a process alive on its own; close() is what drains it.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, ops: Sequence[Op], lane: Lane | None = None) -> Future[None]:
        """Queue a job; block while the queue is full. The future resolves (from the writer
        thread) once every op ran, or with the first op's exception. Jobs run in the order
        they were submitted, so a job's future resolving means every earlier job is done."""
        if self._closed:
            raise RuntimeError("writer is closed")
        job = _Job(ops, lane, running_future())
        self._queue.put(job)
        return job.future

    def queued_jobs(self) -> int:
        return self._queue.qsize()

    def pause(self) -> None:
        """Hold jobs back: the writer finishes the job it is running and starts no other
        until `resume()`. For tests and simulation, to make "in flight" last. Ignored once
        closing: close() must be able to drain."""
        if not self._closed:
            self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    def close(self) -> None:
        """Run every queued job, then stop the thread. Idempotent. Call it from the thread
        that submits, after the last submit."""
        if self._closed:
            return
        self._closed = True
        self._gate.set()
        self._queue.put(_STOP)
        self._thread.join()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        if self._cpus:
            # Affinity is per thread on Linux: this one leaves the event loop's pinned CPU
            # to it (the writes then overlap the loop's work on another core).
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._cpus)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, _Job)
            self._gate.wait()
            self._run_job(item)
            self.jobs_done += 1
            if self._on_complete is not None:
                try:
                    self._on_complete()
                except Exception:
                    log.exception("writer on_complete callback failed")

    @staticmethod
    def _run_job(job: _Job) -> None:
        lane = job.lane
        if lane is not None and lane.failure is not None:
            skipped = OSError(errno.EIO, f"not written: an earlier write failed ({lane.failure})")
            skipped.__cause__ = lane.failure
            job.future.set_exception(skipped)
            return
        try:
            run_ops(job.ops)
        except BaseException as e:
            # Whatever it is, it belongs to this job: the thread must go on serving others.
            if lane is not None:
                lane.failure = e
            job.future.set_exception(e)
            return
        job.future.set_result(None)
