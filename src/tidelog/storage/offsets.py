"""Stored consumer offsets of one partition: one small file per consumer, two checksummed slots.

Layout. Kind 1 = consumer, 2 = consumer group; id u32. Each stored offset has a 64-byte file
`offsets/consumers/{id}` or `offsets/groups/{id}` holding two 32-byte slots:
`magic "TLCO", u32 0, sequence u64, offset u64, checksum u64` (XXH3-64 of the first 24 bytes).
Reading takes the valid slot with the higher sequence. (An 8-byte file, the reference
server's u64 format, is also read; it is rewritten in the slot format on open.)

Ping-pong. The store with sequence n writes slot n % 2 only; the other slot holds sequence
n - 1, the value the previous store left, and is never touched by store n. A torn or failed
write can therefore damage only the slot being written, and the value before it survives
in the other one. The first store of a key writes both slots (sequences 0 and 1, same
value) into `{id}.tmp` and renames it into place, so a file under its final name always has
two valid slots: one damaged slot always has a valid sibling. (Under `sync_each_change` the
tmp file is synced before the rename; otherwise a power loss before the next `sync()` may
leave the new name with no data, which open reports as a lost offset: within the policy's
loss window.) After a failed store the next one reuses its sequence (so its slot), leaving
the last good value alone.

Open (`load`). Both slots valid: the newer one wins. One valid: its value is used, the
damaged slot is rewritten from it (so the next store again has a fallback) and the fallback
is reported in `RecoveryReport.problems`. None valid: the file is moved aside to
`quarantine/offsets-{consumers|groups}-{id}.damaged-{n}` (listed in `quarantined`), the loss
is reported, and that consumer has no stored offset. A leftover `{id}.tmp` is a first store
that never completed and is removed. Offsets above the partition's current offset are
clamped down to it; when the partition never held a message they are removed instead,
because a stored 0 would make Next skip the first message to come.

Durability. `sync_each_change` (the server sets it for `fsync = always`): a store or delete
completes only after the file (and, for a created or removed name, its folder) is
fdatasynced; with a `Writer` that work runs on the writer thread and `store`/`delete`
return a future the owner thread resolves in `reap()`, so the event loop keeps serving. A
key has at most one change in flight; later ones for the same key wait for it (in order),
since each must know which slot holds the last good value. Otherwise a store is one small
pwrite on the calling thread (the page cache), the file is marked dirty, and `sync()`
(the fsync ticker, FlushUnsavedBuffer with fsync, `close()`) fdatasyncs the dirty files on
the writer thread. A failed write or sync of a change leaves the in-memory value as it was
and the change fails with `CANNOT_SAVE_CONSUMER_OFFSET`; a failed background sync leaves
the files dirty and the next `sync()` rewrites their newest slot and syncs again (after an
fdatasync error the kernel may have dropped the dirty page). After a failed change the file
may still hold the attempted value (the write landed, the sync did not): a restart then
shows either the previous value or the attempted one, never a damaged one. `close()` syncs
dirty files under every policy (shutdown); what it could not sync is logged and listed in
`unsaved`.

Single owner, as the partition: only the owner thread calls in. Files of other keys that an
in-flight job still uses are closed by a writer job queued after it.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from tidelog.storage.io import File, FileIO
from tidelog.storage.recovery import RecoveryReport
from tidelog.storage.writer import (
    Op,
    SyncDirOp,
    SyncOp,
    WriteOp,
    Writer,
    done_future,
    run_ops,
    running_future,
)
from tidelog.wire.codes import U32_MAX, U64_MAX, IggyError, Status
from tidelog.wire.primitives import ConsumerKind

log = logging.getLogger(__name__)

# The wire's consumer kinds (one definition): the offset file layout keys on them.
CONSUMER_KIND = ConsumerKind.CONSUMER
GROUP_KIND = ConsumerKind.CONSUMER_GROUP
OFFSET_DIRS: dict[int, str] = {CONSUMER_KIND: "consumers", GROUP_KIND: "groups"}
SLOT = struct.Struct("<4sIQQQ")
SLOT_MAGIC = b"TLCO"
FILE_BYTES = 2 * SLOT.size
LEGACY_FILE_BYTES = 8  # the reference server's format: one u64
TMP_SUFFIX = ".tmp"
OPEN_FILES_MAX = 16  # open offset files per partition; the least recently used are closed

assert SLOT.size == 32

Key = tuple[int, int]  # (kind, consumer id)
# What a change that completed on the calling thread returns: one shared done future, since a
# Future costs a lock to make and auto-commit makes one per poll. Callbacks added to a done
# future run at once and are not kept.
_DONE = done_future()


def encode_slot(sequence: int, offset: int) -> bytes:
    head = SLOT.pack(SLOT_MAGIC, 0, sequence, offset, 0)[:24]
    return head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")


def decode_slot(data: bytes, at: int) -> tuple[int, int] | None:
    """(offset, sequence) of the slot at byte `at`, or None when it is missing or damaged."""
    if len(data) < at + SLOT.size:
        return None
    magic, _, sequence, offset, checksum = SLOT.unpack_from(data, at)
    if magic != SLOT_MAGIC or xxhash.xxh3_64_intdigest(data[at : at + 24]) != checksum:
        return None
    return offset, sequence


@dataclass(frozen=True, slots=True)
class SlotFile:
    """What one offset file says."""

    value: tuple[int, int] | None  # (offset, sequence) of the newest valid slot
    damaged: tuple[int, ...]  # indexes of slots that fail their checks
    legacy: bool = False  # the reference server's 8-byte u64


def read_slot_file(data: bytes) -> SlotFile:
    if len(data) == LEGACY_FILE_BYTES:
        return SlotFile((int.from_bytes(data, "little"), 0), (), legacy=True)
    slots = [decode_slot(data, 0), decode_slot(data, SLOT.size)]
    valid = [s for s in slots if s is not None]
    best = max(valid, key=lambda s: s[1]) if valid else None
    return SlotFile(best, tuple(i for i, s in enumerate(slots) if s is None))


@dataclass(frozen=True, slots=True)
class RenameOp(Op):
    io: FileIO
    src: Path
    dst: Path

    def run(self) -> None:
        self.io.rename(self.src, self.dst)


@dataclass(frozen=True, slots=True)
class UnlinkOp(Op):
    io: FileIO
    path: Path

    def run(self) -> None:
        self.io.unlink(self.path)


@dataclass(frozen=True, slots=True)
class CloseOp(Op):
    file: File

    def run(self) -> None:
        self.file.close()


def cannot_save(what: str, exc: BaseException | None = None) -> IggyError:
    detail = f"{what}: {exc}" if exc is not None else what
    return IggyError(Status.CANNOT_SAVE_CONSUMER_OFFSET, detail)


@dataclass(slots=True)
class _Prepared:
    """A change ready to run: its I/O, then what it does to memory on success or failure."""

    ops: list[Op]
    apply: Callable[[], None]
    undo: Callable[[], None] = lambda: None


@dataclass(slots=True)
class _Request:
    """A change waiting for (or running as) a writer job, under `sync_each_change`."""

    key: Key
    offset: int | None  # None: delete
    done: Future[None] = field(default_factory=running_future)
    job: Future[None] | None = None
    prepared: _Prepared | None = None


@dataclass(slots=True)
class _Background:
    """A writer job nobody answers to: a sync of dirty files, or closes."""

    job: Future[None]
    keys: list[Key]
    folders: list[str]
    done: Future[None]


class OffsetStore:
    def __init__(
        self,
        io: FileIO,
        directory: Path,
        quarantine_dir: Path,
        writer: Writer | None = None,
        sync_each_change: bool = False,
    ) -> None:
        """`directory` is the partition's `offsets` folder; damaged files go to `quarantine_dir`."""
        self.io = io
        self.directory = directory
        self.quarantine_dir = quarantine_dir
        self.sync_each_change = sync_each_change
        self._writer = writer
        self._values: dict[Key, tuple[int, int]] = {}  # (offset, sequence) of the last good change
        self._files: OrderedDict[Key, File] = OrderedDict()
        self._closing: list[File] = []  # evicted; closed once no queued job can still use them
        self._dirty: set[Key] = set()  # written since their last sync (not under sync_each_change)
        self._dirty_folders: set[str] = set()  # names created or removed since the last sync
        self._rewrite: set[Key] = set()  # a sync failed: write the newest slot again first
        self._requests: dict[Key, deque[_Request]] = {}
        self._background: deque[_Background] = deque()
        self._closed = False
        self.unsaved: list[str] = []  # what close() could not make durable

    # ---- reading -------------------------------------------------------------------------
    def get(self, kind: int, consumer_id: int) -> int | None:
        self._check_key(kind, consumer_id)
        found = self._values.get((kind, consumer_id))
        return None if found is None else found[0]

    def min_offset(self) -> int | None:
        return min((o for o, _ in self._values.values()), default=None)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def pending(self) -> bool:
        """Writer jobs not settled yet: the owner must call `reap()` when jobs complete."""
        return bool(self._requests or self._background)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty or self._dirty_folders or self._rewrite)

    # ---- changes -------------------------------------------------------------------------
    def store(self, kind: int, consumer_id: int, offset: int) -> Future[None]:
        """Store `offset` for the consumer. Raises IggyError(CANNOT_SAVE_CONSUMER_OFFSET) when
        the change failed at once; the future (already done unless a writer job runs it)
        fails with it when the writer's job does. The value changes only on success."""
        assert not self._closed
        self._check_key(kind, consumer_id)
        assert 0 <= offset <= U64_MAX
        return self._change((kind, consumer_id), offset)

    def delete(self, kind: int, consumer_id: int) -> Future[None]:
        """Remove the consumer's offset and its file; failures as for `store`. The caller
        checks that one exists."""
        assert not self._closed
        self._check_key(kind, consumer_id)
        return self._change((kind, consumer_id), None)

    def delete_all(self) -> None:
        """Every stored offset goes (a purge); waits for changes in flight first."""
        assert not self._closed
        self.drain()
        for key in sorted(self._values):
            self._inline(key, None)
        self._flush_closing()

    def sync(self) -> Future[None]:
        """fdatasync every file written since its last sync, and the folders whose names
        changed, on the writer thread when there is one. The future fails with
        IggyError(CANNOT_SAVE_CONSUMER_OFFSET); the files then stay dirty for the next sync."""
        assert not self._closed
        if not self.dirty:
            return _DONE
        keys = sorted(k for k in self._dirty | self._rewrite if k in self._values)
        folders = sorted(self._dirty_folders)
        self._dirty, self._dirty_folders = set(), set()
        done = running_future()
        try:
            for key in sorted(self._rewrite):
                offset, sequence = self._values[key]
                self._file(key).pwrite(encode_slot(sequence, offset), (sequence % 2) * SLOT.size)
                self._rewrite.discard(key)
            ops: list[Op] = [SyncOp(self._file(key)) for key in keys]
        except OSError as exc:
            self._sync_failed(keys, folders, exc, done)
            self._flush_closing()
            return done
        ops += [SyncDirOp(self.io, self.directory / name) for name in folders]
        item = _Background(self._submit(ops), keys, folders, done)
        if item.job.done():
            self._finish_background(item)
        else:
            self._background.append(item)
        self._flush_closing()  # after the sync job: it uses files evicted while building it
        return done

    def reap(self) -> None:
        """Owner thread: settle completed writer jobs in order (memory changes on success
        only) and start the next waiting change of each key."""
        for key in list(self._requests):
            queue = self._requests[key]
            while queue and queue[0].job is not None and queue[0].job.done():
                self._settle(queue.popleft())
                self._start_head(key)
                queue = self._requests.get(key, deque())
        while self._background and self._background[0].job.done():
            self._finish_background(self._background.popleft())
        self._flush_closing()

    def drain(self) -> None:
        """Wait for every change and sync in flight and settle them (blocks)."""
        while self.pending:
            jobs = [r.job for q in self._requests.values() for r in q if r.job is not None]
            wait(jobs + [b.job for b in self._background])
            self.reap()

    # ---- open and close ------------------------------------------------------------------
    def load(self, next_offset: int, report: RecoveryReport) -> None:
        """Read every offset file (see the module docstring for what a damaged one does)."""
        for kind, name in OFFSET_DIRS.items():
            folder = self.directory / name
            self.io.makedirs(folder)
            for entry in self.io.listdir(folder):
                if entry.endswith(TMP_SUFFIX):
                    self.io.unlink(folder / entry)
                    report.problems.append(f"offsets/{name}/{entry}: a first store never completed, removed")
                    continue
                if not entry.isdigit() or int(entry) > U32_MAX:
                    continue
                key = (kind, int(entry))
                data = self.io.read_file(folder / entry)
                found = read_slot_file(data)
                if found.value is None:
                    self._quarantine(key, data, report)
                    continue
                if found.legacy:
                    try:  # into the two-slot format, atomically (tmp + rename)
                        self._inline(key, found.value[0], replace=True)
                    except IggyError as exc:
                        self._values[key] = found.value  # the next store fills slot 1
                        report.problems.append(f"offsets/{name}/{entry}: rewriting the u64 file: {exc}")
                    continue
                self._values[key] = found.value
                if found.damaged:
                    offset, sequence = found.value
                    slot = found.damaged[0]
                    # All zeros: most likely a file of an older tidelog, whose first store
                    # wrote one slot only; said apart, but reported all the same.
                    what = "empty" if not any(data[slot * SLOT.size : (slot + 1) * SLOT.size]) else "damaged"
                    report.problems.append(
                        f"offsets/{name}/{entry}: slot {slot} {what}; using the other slot "
                        f"(offset {offset}, sequence {sequence}) and rewriting slot {slot}"
                    )
                    try:  # the next sequence goes to the damaged slot: fill it with the value
                        self._inline(key, offset)
                    except IggyError as exc:
                        report.problems.append(f"offsets/{name}/{entry}: rewriting the slot: {exc}")
        for key, (offset, _) in sorted(self._values.items()):
            if next_offset == 0:
                self._inline(key, None)
            elif offset > next_offset - 1:
                self._inline(key, next_offset - 1)
        self._flush_closing()

    def close(self, sync: bool = True) -> None:
        """Settle changes in flight, fdatasync dirty files (unless `sync` is False: the
        partition is being destroyed), close every file. Failures are logged and listed in
        `unsaved`, not raised: closing goes on."""
        if self._closed:
            return
        self.drain()
        if sync and self.dirty:
            done = self.sync()
            self.drain()
            exc = done.exception()
            if exc is not None:
                self.unsaved.append(f"consumer offsets in {self.directory}: {exc}")
        for f in self._files.values():
            f.close()
        self._files.clear()
        for f in self._closing:
            f.close()
        self._closing.clear()
        self._closed = True

    # ---- internals -----------------------------------------------------------------------
    @staticmethod
    def _check_key(kind: int, consumer_id: int) -> None:
        if kind not in OFFSET_DIRS:
            raise ValueError(f"consumer kind {kind}")
        if not 0 <= consumer_id <= U32_MAX:
            raise ValueError(f"consumer id {consumer_id}")

    def _path(self, key: Key) -> Path:
        return self.directory / OFFSET_DIRS[key[0]] / str(key[1])

    def _file(self, key: Key) -> File:
        f = self._files.get(key)
        if f is not None:
            self._files.move_to_end(key)
            return f
        f = self.io.open(self._path(key))
        self._adopt(key, f)
        return f

    def _adopt(self, key: Key, f: File) -> None:
        self._files[key] = f
        self._files.move_to_end(key)
        while len(self._files) > OPEN_FILES_MAX:
            _, oldest = self._files.popitem(last=False)
            self._closing.append(oldest)

    def _uses_writer(self) -> bool:
        return self._writer is not None and not self._writer.closed

    def _submit(self, ops: list[Op]) -> Future[None]:
        """Run `ops` on the writer thread, or here (the future is then done)."""
        if self._writer is not None and not self._writer.closed:
            return self._writer.submit(ops)
        done = running_future()
        try:
            run_ops(ops)
        except OSError as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def _flush_closing(self) -> None:
        """Close evicted files: with a writer, by a job queued behind every job that may
        still use them (closing under a running fdatasync would sync nothing, or a reused
        descriptor)."""
        if not self._closing:
            return
        closing, self._closing = self._closing, []
        if not self._uses_writer() or not self._jobs_running():
            for f in closing:
                f.close()
            return
        item = _Background(self._submit([CloseOp(f) for f in closing]), [], [], running_future())
        self._background.append(item)

    def _jobs_running(self) -> bool:
        if any(not b.job.done() for b in self._background):
            return True
        return any(r.job is not None and not r.job.done() for q in self._requests.values() for r in q)

    def _finish_background(self, item: _Background) -> None:
        exc = item.job.exception()
        if exc is None:
            item.done.set_result(None)
        elif item.keys or item.folders:
            self._sync_failed(item.keys, item.folders, exc, item.done)
        else:
            log.warning("closing consumer offset files in %s: %s", self.directory, exc)
            item.done.set_result(None)

    def _change(self, key: Key, offset: int | None) -> Future[None]:
        if not (self.sync_each_change and self._uses_writer()):
            self._inline(key, offset)
            self._flush_closing()
            return _DONE
        request = _Request(key, offset)
        queue = self._requests.setdefault(key, deque())
        queue.append(request)
        if len(queue) == 1:
            self._start_head(key)
        self._flush_closing()
        if request.done.done():
            request.done.result()  # failed before any job ran: raise at once
        return request.done

    def _inline(self, key: Key, offset: int | None, replace: bool = False) -> None:
        """Prepare and run a change on this thread; IggyError(CANNOT_SAVE_...) on failure."""
        try:
            prepared = self._prepare(key, offset, self.sync_each_change, replace)
        except OSError as exc:
            raise cannot_save(f"opening {self._path(key)}", exc) from exc
        try:
            run_ops(prepared.ops)
        except OSError as exc:
            prepared.undo()
            log.error("saving consumer offset %s failed: %s", self._path(key), exc)
            raise cannot_save(f"saving {self._path(key)}", exc) from exc
        prepared.apply()

    def _start_head(self, key: Key) -> None:
        """Submit the first waiting change of `key`, prepared now: it must see what the
        change before it did. One that cannot be prepared fails at once."""
        queue = self._requests.get(key)
        while queue:
            request = queue[0]
            try:
                request.prepared = self._prepare(key, request.offset, True)
            except OSError as exc:
                request.done.set_exception(cannot_save(f"opening {self._path(key)}", exc))
                queue.popleft()
                continue
            request.job = self._submit(request.prepared.ops)
            return
        self._requests.pop(key, None)

    def _settle(self, request: _Request) -> None:
        assert request.prepared is not None and request.job is not None
        exc = request.job.exception()
        if exc is None:
            request.prepared.apply()
            request.done.set_result(None)
            return
        request.prepared.undo()
        log.error("saving consumer offset %s failed: %s", self._path(request.key), exc)
        request.done.set_exception(cannot_save(f"saving {self._path(request.key)}", exc))

    def _prepare(self, key: Key, offset: int | None, sync: bool, replace: bool = False) -> _Prepared:
        """The I/O of one change and what it does to memory. Raises OSError (opening)."""
        if offset is None:
            return self._prepare_delete(key, sync)
        previous = self._values.get(key)
        if previous is None or replace:
            return self._prepare_create(key, offset, sync, replace)
        sequence = previous[1] + 1
        f = self._file(key)
        ops: list[Op] = [WriteOp(f, [encode_slot(sequence, offset)], (sequence % 2) * SLOT.size, SLOT.size)]
        if sync:
            ops.append(SyncOp(f))

        def apply() -> None:
            self._values[key] = (offset, sequence)
            self._rewrite.discard(key)
            if not sync:
                self._dirty.add(key)

        return _Prepared(ops, apply)

    def _prepare_create(self, key: Key, offset: int, sync: bool, replace: bool) -> _Prepared:
        """Both slots into a new file renamed into place: the final name never holds a
        file with fewer than two valid slots. `replace`: a file is there (a u64 one)."""
        path = self._path(key)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        f = self.io.open(tmp)
        data = encode_slot(0, offset) + encode_slot(1, offset)
        ops: list[Op] = [WriteOp(f, [data], 0, len(data))]
        if sync:
            ops.append(SyncOp(f))
        ops.append(RenameOp(self.io, tmp, path))
        if sync:
            ops.append(SyncDirOp(self.io, path.parent))

        def apply() -> None:
            self._values[key] = (offset, 1)
            old = self._files.pop(key, None)
            if old is not None:
                self._closing.append(old)
            self._adopt(key, f)
            if not sync:
                self._dirty.add(key)
                self._dirty_folders.add(path.parent.name)

        def undo() -> None:
            f.close()
            self._unlink_quietly(tmp)
            if not replace:
                # Memory says "no value"; so must the folder, as far as it can (the rename
                # may have happened before the folder's sync failed).
                self._unlink_quietly(path)

        return _Prepared(ops, apply, undo)

    def _prepare_delete(self, key: Key, sync: bool) -> _Prepared:
        path = self._path(key)
        f = self._files.pop(key, None)
        if f is not None:
            self._closing.append(f)  # a queued job may still use it
        ops: list[Op] = [UnlinkOp(self.io, path)]
        if sync:
            ops.append(SyncDirOp(self.io, path.parent))

        def apply() -> None:
            self._values.pop(key, None)
            self._dirty.discard(key)
            self._rewrite.discard(key)
            if not sync:
                self._dirty_folders.add(path.parent.name)

        return _Prepared(ops, apply)

    def _unlink_quietly(self, path: Path) -> None:
        with contextlib.suppress(OSError):  # cleanup after a failure reported already
            self.io.unlink(path)

    def _sync_failed(
        self, keys: list[Key], folders: list[str], exc: BaseException, done: Future[None]
    ) -> None:
        # After a failed fdatasync the kernel may have dropped the dirty pages: write the
        # newest slot again before the next sync.
        live = [k for k in keys if k in self._values]
        self._dirty.update(live)
        self._rewrite.update(live)
        self._dirty_folders.update(folders)
        log.error("syncing consumer offsets in %s failed (retried at the next sync): %s", self.directory, exc)
        done.set_exception(cannot_save(f"syncing consumer offsets in {self.directory}", exc))

    def _quarantine(self, key: Key, data: bytes, report: RecoveryReport) -> None:
        name = OFFSET_DIRS[key[0]]
        self.io.makedirs(self.quarantine_dir)
        n = 0
        while self.io.exists(self.quarantine_dir / f"offsets-{name}-{key[1]}.damaged-{n}"):
            n += 1
        target = self.quarantine_dir / f"offsets-{name}-{key[1]}.damaged-{n}"
        self.io.rename(self._path(key), target)
        if self.sync_each_change:
            self.io.fsync_dir(self._path(key).parent)
            self.io.fsync_dir(self.quarantine_dir)
        why = (
            "holds no data (its first store was not synced yet when the machine stopped?)"
            if not any(data)
            else "both slots damaged"
        )
        report.quarantined.append(target)
        report.problems.append(
            f"offsets/{name}/{key[1]}: {why}; STORED OFFSET LOST: this consumer starts as if it "
            f"never stored one; the file is kept in {target}"
        )


__all__ = [
    "CONSUMER_KIND",
    "GROUP_KIND",
    "OFFSET_DIRS",
    "OffsetStore",
    "SlotFile",
    "cannot_save",
    "decode_slot",
    "encode_slot",
    "read_slot_file",
]
