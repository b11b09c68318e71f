"""storage/writer.py: one thread running prepared I/O jobs in order."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from tidelog.storage.io import MemIO
from tidelog.storage.writer import Lane, Op, SyncOp, WriteOp, Writer, done_future, running_future


class Record(Op):
    """Appends its tag to a shared list when run; fails instead when given an error."""

    __slots__ = ("error", "log", "tag")

    def __init__(self, log: list[int], tag: int, error: BaseException | None = None) -> None:
        self.log = log
        self.tag = tag
        self.error = error

    def run(self) -> None:
        if self.error is not None:
            raise self.error
        self.log.append(self.tag)


@pytest.fixture
def make_writer() -> Iterator[Callable[..., Writer]]:
    made: list[Writer] = []

    def make(**kwargs: Any) -> Writer:
        w = Writer(**kwargs)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_writer_given_jobs_when_run_should_complete_them_in_submission_order(
    make_writer: Callable[..., Writer],
) -> None:
    w = make_writer()
    log: list[int] = []
    futures = [w.submit([Record(log, i), Record(log, i + 1000)]) for i in range(50)]
    futures[-1].result(timeout=5)
    assert all(f.done() and f.exception() is None for f in futures)
    assert log == [t for i in range(50) for t in (i, i + 1000)]


def test_writer_given_write_and_sync_ops_when_run_should_reach_the_file(
    make_writer: Callable[..., Writer], tmp_path: Path
) -> None:
    io = MemIO()
    io.makedirs(tmp_path)
    f = io.open(tmp_path / "a")
    w = make_writer()
    w.submit([WriteOp(f, [b"abc", b"de"], 0, 5), WriteOp(f, [b"!"], 5, 1), SyncOp(f)]).result(timeout=5)
    io.crash()  # only what was synced survives
    assert io.read_file(tmp_path / "a") == b"abcde!"


def test_writer_given_paused_when_jobs_submitted_should_hold_them_until_resumed(
    make_writer: Callable[..., Writer],
) -> None:
    w = make_writer()
    log: list[int] = []
    w.pause()
    futures = [w.submit([Record(log, i)]) for i in range(3)]
    time.sleep(0.02)
    assert log == [] and not any(f.done() for f in futures)
    w.resume()
    futures[-1].result(timeout=5)
    assert log == [0, 1, 2]


def test_writer_given_full_queue_when_submitting_should_block_until_a_job_is_taken(
    make_writer: Callable[..., Writer],
) -> None:
    w = make_writer(max_jobs=1)
    log: list[int] = []
    w.pause()
    w.submit([Record(log, 0)])
    wait_until(lambda: w.queued_jobs() == 0)  # taken by the thread, held at the gate
    w.submit([Record(log, 1)])  # fills the queue
    third_submitted = threading.Event()

    def submit_third() -> None:
        w.submit([Record(log, 2)]).result(timeout=5)
        third_submitted.set()

    t = threading.Thread(target=submit_third)
    t.start()
    t.join(0.05)
    assert t.is_alive() and not third_submitted.is_set() and log == []
    w.resume()
    t.join(5)
    assert third_submitted.is_set() and log == [0, 1, 2]


def test_writer_given_failing_op_when_run_should_fail_its_future_and_later_jobs_of_its_lane_only(
    make_writer: Callable[..., Writer],
) -> None:
    w = make_writer()
    log: list[int] = []
    lane, other = Lane(), Lane()
    w.pause()
    first = w.submit([Record(log, 0, OSError(errno.ENOSPC, "disk full")), Record(log, 1)], lane)
    later = w.submit([Record(log, 2)], lane)
    elsewhere = w.submit([Record(log, 3)], other)
    unlaned = w.submit([Record(log, 4)])
    w.resume()
    unlaned.result(timeout=5)
    e = first.exception()
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
    skipped = later.exception()
    assert isinstance(skipped, OSError) and skipped.__cause__ is e
    assert elsewhere.exception() is None
    assert log == [3, 4]  # nothing after the failing op, nothing of the failed lane


def test_writer_given_non_os_error_when_raised_should_keep_the_thread_serving(
    make_writer: Callable[..., Writer],
) -> None:
    w = make_writer()
    log: list[int] = []
    bad = w.submit([Record(log, 0, ValueError("bug"))])
    good = w.submit([Record(log, 1)])
    good.result(timeout=5)
    assert isinstance(bad.exception(), ValueError) and log == [1]


def test_writer_given_queued_jobs_when_closed_should_drain_them_first(
    make_writer: Callable[..., Writer],
) -> None:
    w = make_writer()
    log: list[int] = []
    w.pause()
    futures = [w.submit([Record(log, i)]) for i in range(5)]
    w.close()  # also lets a paused writer go
    assert log == [0, 1, 2, 3, 4] and all(f.done() for f in futures)
    with pytest.raises(RuntimeError):
        w.submit([Record(log, 9)])
    w.close()  # idempotent


def test_writer_given_on_complete_when_jobs_finish_should_call_it_after_each_one(
    make_writer: Callable[..., Writer],
) -> None:
    seen: list[bool] = []
    futures: list[Future[None]] = []

    def on_complete() -> None:
        # Called after the job's future is resolved, from the writer thread.
        seen.append(futures[len(seen)].done() and threading.current_thread().name == "tidelog-writer")

    w = make_writer(on_complete=on_complete)
    w.pause()
    futures.extend(w.submit([]) for _ in range(4))
    w.resume()
    w.close()
    assert seen == [True] * 4 and w.jobs_done == 4


def test_writer_given_on_complete_raising_when_jobs_finish_should_keep_running(
    make_writer: Callable[..., Writer],
) -> None:
    def on_complete() -> None:
        raise RuntimeError("callback bug")

    w = make_writer(on_complete=on_complete)
    log: list[int] = []
    for i in range(3):
        w.submit([Record(log, i)])
    w.close()
    assert log == [0, 1, 2]


def test_writer_given_future_when_cancelled_should_refuse_and_still_run_the_job(
    make_writer: Callable[..., Writer],
) -> None:
    w = make_writer()
    log: list[int] = []
    w.pause()
    f = w.submit([Record(log, 7)])
    assert not f.cancel()
    w.resume()
    f.result(timeout=5)
    assert log == [7] and not f.cancelled()


def test_futures_given_helpers_when_made_should_be_uncancellable() -> None:
    pending = running_future()
    assert not pending.cancel() and not pending.done()
    finished = done_future()
    assert finished.done() and finished.result() is None


class Where(Op):
    """Records the CPUs the thread running it may use."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def run(self) -> None:
        self.seen = os.sched_getaffinity(0)


def test_writer_given_cpus_when_running_should_use_them_while_its_creator_keeps_its_own(
    make_writer: Callable[..., Writer],
) -> None:
    """A pinned shard's writer leaves the loop's CPU: affinity is per thread."""
    mine = os.sched_getaffinity(0)
    one = frozenset({min(mine)})
    where = Where()
    make_writer(cpus=one).submit([where]).result(timeout=5)
    assert where.seen == one and os.sched_getaffinity(0) == mine
    inherited = Where()
    make_writer().submit([inherited]).result(timeout=5)
    assert inherited.seen == mine
