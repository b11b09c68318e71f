"""Shard 0's crash-safe metadata store: an append-only op log plus a snapshot.

Files in the directory:

* ``metadata.snapshot``: one record holding ``Metadata.to_snapshot()`` (with its revision).
  Replaced atomically by `MetaLog.compact` (temp file, fsync, rename, fsync of the directory).
* ``metadata.log``: one record per applied op, ``{"rev": revision after the op, "op": ...}``,
  each fsynced before `append` returns: metadata changes are rare and losing an acknowledged
  create is not acceptable.
* ``metadata.log.<offset>.torn``: bytes cut from a torn tail on open, kept for inspection
  (the log is the truth; never drop bytes silently).

Record: ``[length u32 LE][xxh3_64 u64 LE][JSON, UTF-8]``. The checksum covers the length
bytes and the JSON, so a damaged length field is caught too.

Why every record carries its revision: compaction writes the snapshot first and empties the
log second. A crash between the two leaves a log whose records the snapshot already holds;
on open they are recognised by revision (``rev <= snapshot revision``) and skipped, and any gap
in the revisions is reported as corruption instead of being replayed over.

Open-time damage rules: a bad record that reaches the end of the file (or is followed only by
zeros) is a torn last append: it is cut and kept aside. A bad record with a valid record after
it is corruption in the middle: the open fails with `MetaLogCorruption`, because replaying past
a hole would build a state that never existed.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import xxhash

from tidelog.metadata import Metadata, MetadataDefaults, Op, op_from_json, op_to_json
from tidelog.wire.codes import IggyError

LOG_NAME = "metadata.log"
SNAPSHOT_NAME = "metadata.snapshot"
TMP_SUFFIX = ".tmp"
TORN_SUFFIX = ".torn"

_HEADER = struct.Struct("<IQ")  # length, checksum
_LENGTH = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
# Far above any real record (a user with full permissions over many topics is a few hundred
# KiB at most); a bigger length field is garbage.
MAX_RECORD_BYTES = 64 * 1024 * 1024
DEFAULT_COMPACT_EVERY_RECORDS = 1000
# Every log record's JSON starts with this, which lets the scanner look for valid records
# beyond a damaged one without trying every byte offset.
_RECORD_PREFIX = b'{"rev":'

assert HEADER_SIZE == 12


class MetaLogCorruption(Exception):
    """The metadata files are damaged in a way that must not be repaired automatically."""


class MetaLogBroken(Exception):
    """A write failed; the log no longer matches memory and the process should stop."""


def encode_record(payload: bytes) -> bytes:
    length = len(payload)
    assert 0 < length <= MAX_RECORD_BYTES, length
    length_bytes = _LENGTH.pack(length)
    checksum = xxhash.xxh3_64_intdigest(length_bytes + payload)
    return _HEADER.pack(length, checksum) + payload


def _record_at(data: bytes | memoryview, pos: int) -> bytes | None:
    """The payload of a valid record starting at `pos`, or None."""
    if len(data) - pos < HEADER_SIZE:
        return None
    length, checksum = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if not 0 < length <= MAX_RECORD_BYTES or end > len(data):
        return None
    payload = bytes(data[pos + HEADER_SIZE : end])
    if xxhash.xxh3_64_intdigest(_LENGTH.pack(length) + payload) != checksum:
        return None
    return payload


def scan_records(data: bytes, name: str = "log") -> tuple[list[tuple[int, bytes]], int]:
    """Split `data` into (offset, payload) records; returns them and the end of valid data.

    The end is below ``len(data)`` only for a torn tail. Raises `MetaLogCorruption` when a
    damaged record has a valid record after it.
    """
    records: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        payload = _record_at(data, pos)
        if payload is not None:
            records.append((pos, payload))
            pos += HEADER_SIZE + len(payload)
            continue
        # Damage at `pos`: torn tail, unless a valid record follows it.
        probe = data.find(_RECORD_PREFIX, pos + 1)
        while probe != -1:
            if probe - HEADER_SIZE > pos and _record_at(data, probe - HEADER_SIZE) is not None:
                raise MetaLogCorruption(
                    f"{name}: damaged record at byte {pos} with a valid record at byte "
                    f"{probe - HEADER_SIZE} after it; refusing to replay past a hole "
                    f"(inspect or restore the file by hand)"
                )
            probe = data.find(_RECORD_PREFIX, probe + 1)
        return records, pos
    return records, pos


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_file_durably(path: Path, data: bytes) -> None:
    """Write `path` so that after a crash it holds either the old content or `data`."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _aside_path(log_path: Path, offset: int) -> Path:
    candidate = log_path.with_name(f"{log_path.name}.{offset}{TORN_SUFFIX}")
    n = 1
    while candidate.exists():
        candidate = log_path.with_name(f"{log_path.name}.{offset}.{n}{TORN_SUFFIX}")
        n += 1
    return candidate


class MetaLog:
    """Append-only metadata op log with snapshots; one writer (shard 0).

    Protocol for the caller: ``metadata.apply(op)`` first (it validates), then
    ``log.append(op)`` before acknowledging. If `append` raises, the in-memory state is ahead
    of the disk and the process must stop (`MetaLogBroken` on later calls enforces that).
    """

    def __init__(self, directory: Path, metadata: Metadata, fd: int, compact_every_records: int) -> None:
        self.directory = directory
        self.log_path = directory / LOG_NAME
        self.snapshot_path = directory / SNAPSHOT_NAME
        self.compact_every_records = compact_every_records
        self._metadata = metadata
        self._fd: int | None = fd
        self._revision = metadata.revision
        self._records_since_compaction = 0
        self._broken = False

    # ---- open ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        defaults: MetadataDefaults,
        *,
        compact_every_records: int = DEFAULT_COMPACT_EVERY_RECORDS,
    ) -> tuple[MetaLog, Metadata]:
        """Load the snapshot, replay the log after it, cut a torn tail; return log and state."""
        assert compact_every_records > 0
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / LOG_NAME
        snapshot_path = directory / SNAPSHOT_NAME
        for stale in (snapshot_path, log_path):
            # Leftovers of a compaction that crashed before its rename: never part of the state.
            stale.with_name(stale.name + TMP_SUFFIX).unlink(missing_ok=True)

        metadata = _load_snapshot(snapshot_path, defaults)
        data = log_path.read_bytes() if log_path.exists() else b""
        records, end = scan_records(data, str(log_path))
        _replay(metadata, records, log_path)

        if end < len(data):
            aside = _aside_path(log_path, end)
            _write_file_durably(aside, data[end:])
            with open(log_path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        created = not log_path.exists()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            _fsync_dir(directory)
        assert os.fstat(fd).st_size == end
        return cls(directory, metadata, fd, compact_every_records), metadata

    # ---- writing -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def records_since_compaction(self) -> int:
        return self._records_since_compaction

    def append(self, op: Op) -> None:
        """Durably record an op already applied to the Metadata this log was opened with."""
        if self._broken or self._fd is None:
            raise MetaLogBroken("metadata log is closed or broken by an earlier write failure")
        rev = self._revision + 1
        assert self._metadata.revision == rev, "apply the op to the metadata before appending it"
        payload = json.dumps({"rev": rev, "op": op_to_json(op)}, separators=(",", ":")).encode()
        assert payload.startswith(_RECORD_PREFIX)
        record = encode_record(payload)
        try:
            _write_all(self._fd, record)
            os.fdatasync(self._fd)
        except OSError:
            self._broken = True
            raise
        self._revision = rev
        self._records_since_compaction += 1
        if self._records_since_compaction >= self.compact_every_records:
            self.compact(self._metadata)

    def compact(self, metadata: Metadata) -> None:
        """Write a snapshot of `metadata` and start a fresh, empty log."""
        if self._broken or self._fd is None:
            raise MetaLogBroken("metadata log is closed or broken by an earlier write failure")
        assert metadata.revision == self._revision, "snapshot must match the logged revision"
        snapshot = json.dumps(metadata.to_snapshot(), separators=(",", ":")).encode()
        try:
            _write_file_durably(self.snapshot_path, encode_record(snapshot))
            # A crash here leaves the old log beside the new snapshot; its records are all
            # at or below the snapshot's revision and are skipped on open.
            _write_file_durably(self.log_path, b"")
            new_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        except OSError:
            self._broken = True
            raise
        os.close(self._fd)
        self._fd = new_fd
        self._records_since_compaction = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MetaLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_snapshot(path: Path, defaults: MetadataDefaults) -> Metadata:
    if not path.exists():
        return Metadata(defaults)
    data = path.read_bytes()
    payload = _record_at(data, 0)
    # The snapshot only ever appears by rename of a complete, fsynced file: any damage is real.
    if payload is None or HEADER_SIZE + len(payload) != len(data):
        raise MetaLogCorruption(f"{path}: damaged metadata snapshot")
    try:
        return Metadata.from_snapshot(json.loads(payload), defaults)
    except (ValueError, KeyError, TypeError) as e:
        raise MetaLogCorruption(f"{path}: unreadable metadata snapshot: {e!r}") from e


def _replay(metadata: Metadata, records: list[tuple[int, bytes]], log_path: Path) -> None:
    prev_rev: int | None = None
    for offset, payload in records:
        where = f"{log_path} record at byte {offset}"
        try:
            d: Any = json.loads(payload)
            rev = d["rev"]
            op = op_from_json(d["op"])
        except (ValueError, KeyError, TypeError) as e:
            raise MetaLogCorruption(f"{where}: undecodable op: {e!r}") from e
        if not isinstance(rev, int) or (prev_rev is not None and rev != prev_rev + 1):
            raise MetaLogCorruption(f"{where}: revision {rev!r} does not follow {prev_rev}")
        prev_rev = rev
        if rev <= metadata.revision:
            continue  # already in the snapshot (crash inside compaction)
        if rev != metadata.revision + 1:
            raise MetaLogCorruption(f"{where}: revision {rev} leaves a gap after {metadata.revision}")
        try:
            metadata.apply(op)
        except IggyError as e:
            raise MetaLogCorruption(f"{where}: logged op no longer applies: {e}") from e
        assert metadata.revision == rev
