"""Shard 0's crash-safe metadata store: an append-only op log plus a snapshot.

Files in the directory:

* ``metadata.snapshot``: one record holding ``Metadata.to_snapshot()`` (with its revision).
  Replaced atomically by `MetaLog.compact` (temp file, fsync, rename, fsync of the directory).
* ``metadata.log``: one record per applied op, ``{"rev": revision after the op, "op": ...}``,
  each fsynced before `apply` changes memory and returns: metadata changes are rare and
  losing an acknowledged create is not acceptable.
* ``metadata.log.<offset>.torn``: bytes cut from a torn tail on open, kept for inspection
  (the log is the truth; never drop bytes silently).

Record: ``[length u32 LE][xxh3_64 u64 LE][JSON, UTF-8]``. The checksum covers the length
bytes and the JSON, so a damaged length field is caught too. (The format is unchanged since
the first version: the torn/damaged distinction below needs no extra fields.)

Why every record carries its revision: compaction writes the snapshot first and empties the
log second. A crash between the two leaves a log whose records the snapshot already holds;
on open they are recognised by revision (``rev <= snapshot revision``) and skipped, and any gap
in the revisions is reported as corruption instead of being replayed over.

Log before apply (`MetaLog.apply`): the op is validated without changing anything
(`Metadata.prepare`), written and fdatasynced, and only then applied. When the write or the
sync fails, memory is untouched, the partial record is truncated away, and the log refuses
every later change (`MetaLogBroken`): after a failed fsync the kernel may have dropped the
dirty pages, so retrying on the same file could acknowledge data that is not on disk. The
server answers such refusals with METADATA_READ_ONLY until it is restarted.

Open-time damage rules. A record that fails its checks is one of two things:

* a **torn tail**, an append that a crash interrupted, which was never acknowledged: cut and
  kept aside. Only bytes that an incomplete final append can leave count as torn: all zeros
  (the file grew but the data never landed), fewer bytes than a header, or a header with a
  plausible length whose declared end lies past the last non-zero byte (past EOF, or a
  zero-filled end) and whose bytes begin the way every log record begins;
* **damage to a complete record**, which must have been written in full and was most likely
  acknowledged: the open fails with `MetaLogCorruption` naming the file, the offset and what
  to do, and nothing is cut. That covers a complete record whose checksum fails, an impossible
  length, bytes that no append writes, a damaged length field (found by re-checking the
  checksum against the lengths the record could really have: its JSON ends in ``}``), and any
  bad record with a valid record after it (replaying past a hole would build a state that
  never existed).

What stays indistinguishable: damage that also zeroes the record's last bytes, or several
damaged bytes at once in the length and the body, can look like a torn append; such a record
is cut and kept aside, never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import xxhash

from tidelog.metadata import Entity, Metadata, MetadataDefaults, Op, op_from_json, op_to_json
from tidelog.wire.codes import IggyError

log = logging.getLogger(__name__)

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
# Every record's JSON is an object, so it ends with this byte; a damaged length field is
# found by trying the lengths that end on it.
_RECORD_LAST_BYTE = ord("}")
# Bound on the lengths tried for a damaged length field (a tail holds one record or less).
_MAX_LENGTH_CANDIDATES = 4096

assert HEADER_SIZE == 12


class MetaLogCorruption(Exception):
    """The metadata files are damaged in a way that must not be repaired automatically."""


class MetaLogBroken(Exception):
    """A metadata write failed: the log refuses every later change until a restart.

    Memory still matches what the log holds (the op that failed was not applied), so reads
    stay correct; only changes are refused.
    """


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


def _true_length(data: bytes, pos: int) -> int | None:
    """The length of a complete record at `pos` whose length field alone is damaged, or None.

    The checksum covers the length, so a candidate length that makes it match is the record's
    real length (a false match is a 2^-64 event).
    """
    checksum = _HEADER.unpack_from(data, pos)[1]
    body = pos + HEADER_SIZE
    limit = min(len(data), body + MAX_RECORD_BYTES)
    tried = 0
    end = data.find(_RECORD_LAST_BYTE, body, limit)
    while end != -1 and tried < _MAX_LENGTH_CANDIDATES:
        length = end + 1 - body
        if xxhash.xxh3_64_intdigest(_LENGTH.pack(length) + data[body : end + 1]) == checksum:
            return length
        tried += 1
        end = data.find(_RECORD_LAST_BYTE, end + 1, limit)
    return None


def _tail_damage(data: bytes, pos: int) -> str | None:
    """Why the bytes from `pos` to the end cannot be an interrupted final append; None if they can."""
    content_end = len(data[pos:].rstrip(b"\x00")) + pos  # the end of the non-zero bytes
    if content_end == pos:
        return None  # all zeros: the file grew, the data never landed
    if len(data) - pos < HEADER_SIZE:
        return None  # a header cut short
    length = _LENGTH.unpack_from(data, pos)[0]
    true_length = _true_length(data, pos)
    if true_length is not None:
        return (
            f"its length field says {length} but the record is complete with {true_length} bytes "
            f"and a matching checksum: the length field is damaged"
        )
    if not 0 < length <= MAX_RECORD_BYTES:
        return f"its length field says {length}, which no record has"
    declared_end = pos + HEADER_SIZE + length
    if content_end >= declared_end:
        return (
            f"it is complete ({length} bytes, all present) but its checksum does not match: "
            f"its bytes are damaged"
        )
    present = data[pos + HEADER_SIZE : content_end]
    n = min(len(present), len(_RECORD_PREFIX))
    if present[:n] != _RECORD_PREFIX[:n]:
        return "its bytes do not begin like any metadata record"
    return None


def _damaged_message(name: str, pos: int, what: str) -> str:
    return (
        f"{name}: the metadata record at byte {pos} is damaged: {what}. This is not a torn "
        f"write (an interrupted append, cut automatically): the record was written in full and "
        f"was most likely acknowledged, so it is not dropped. The server will not start. "
        f"Restore the metadata directory from a backup; or, to give up this record and every "
        f"record after it, copy {name} aside and truncate it to {pos} bytes "
        f"(truncate -s {pos} {name})."
    )


def scan_records(data: bytes, name: str = "log") -> tuple[list[tuple[int, bytes]], int]:
    """Split `data` into (offset, payload) records; returns them and the end of valid data.

    The end is below ``len(data)`` only for a torn tail (see the module docstring). Raises
    `MetaLogCorruption` when a damaged record has a valid record after it, or when the
    damaged last record is complete rather than torn.
    """
    records: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        payload = _record_at(data, pos)
        if payload is not None:
            records.append((pos, payload))
            pos += HEADER_SIZE + len(payload)
            continue
        # Damage at `pos`: corruption in the middle when a valid record follows it.
        probe = data.find(_RECORD_PREFIX, pos + 1)
        while probe != -1:
            if probe - HEADER_SIZE > pos and _record_at(data, probe - HEADER_SIZE) is not None:
                raise MetaLogCorruption(
                    _damaged_message(
                        name,
                        pos,
                        f"there is a valid record at byte {probe - HEADER_SIZE} after it; "
                        f"refusing to replay past a hole",
                    )
                )
            probe = data.find(_RECORD_PREFIX, probe + 1)
        damage = _tail_damage(data, pos)
        if damage is not None:
            raise MetaLogCorruption(_damaged_message(name, pos, damage))
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


def _write_file(path: Path, data: bytes) -> None:
    """Create or replace `path` with `data`, fsynced (not yet renamed anywhere)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_durably(path: Path, data: bytes) -> None:
    """Write `path` so that after a crash it holds either the old content or `data`."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        _write_file(tmp, data)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
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

    `apply(op)` is the only way to change the Metadata this log was opened with: it validates,
    logs durably, and then applies (log before apply). If the write fails, nothing changed in
    memory and every later `apply` raises `MetaLogBroken` (the metadata is read-only).
    """

    def __init__(
        self, directory: Path, metadata: Metadata, fd: int, size: int, compact_every_records: int
    ) -> None:
        self.directory = directory
        self.log_path = directory / LOG_NAME
        self.snapshot_path = directory / SNAPSHOT_NAME
        self.compact_every_records = compact_every_records
        self._metadata = metadata
        self._fd: int | None = fd
        self._size = size  # bytes of acknowledged records in the log file
        self._revision = metadata.revision
        self._records_since_compaction = 0
        self._broken: str | None = None  # why the log refuses changes
        # Set by `open` when it cut a torn tail: where the cut bytes were kept, and how many.
        self.torn_aside: Path | None = None
        self.torn_bytes = 0

    # ---- open ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        defaults: MetadataDefaults,
        *,
        compact_every_records: int = DEFAULT_COMPACT_EVERY_RECORDS,
    ) -> tuple[MetaLog, Metadata]:
        """Load the snapshot, replay the log after it, cut a torn tail; return log and state.

        Raises `MetaLogCorruption` (and changes no file) when a complete record is damaged.
        """
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

        aside: Path | None = None
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
        metalog = cls(directory, metadata, fd, end, compact_every_records)
        metalog.torn_aside, metalog.torn_bytes = aside, len(data) - end
        return metalog, metadata

    # ---- writing -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def records_since_compaction(self) -> int:
        return self._records_since_compaction

    @property
    def broken(self) -> str | None:
        """Why the log refuses changes (a write failed), or None while it accepts them."""
        return self._broken

    def apply(self, op: Op) -> Entity | None:
        """Validate `op`, log it durably, then apply it; returns what `Metadata.apply` returns.

        Raises `IggyError` for an op that does not apply, and `MetaLogBroken` when this or an
        earlier write failed; in both cases the state is unchanged.
        """
        self._check_writable()
        change = self._metadata.prepare(op)  # IggyError here: nothing changed anywhere
        self._append(op)
        result = change()
        assert self._metadata.revision == self._revision
        if self._records_since_compaction >= self.compact_every_records:
            self._compact_after_apply()
        return result

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise MetaLogBroken(f"metadata is read-only: {self._broken}")
        if self._fd is None:
            raise MetaLogBroken("metadata log is closed")

    def _append(self, op: Op) -> None:
        assert self._fd is not None
        rev = self._revision + 1
        assert self._metadata.revision == self._revision, "the log and the state disagree"
        payload = json.dumps({"rev": rev, "op": op_to_json(op)}, separators=(",", ":")).encode()
        assert payload.startswith(_RECORD_PREFIX) and payload[-1] == _RECORD_LAST_BYTE
        record = encode_record(payload)
        try:
            _write_all(self._fd, record)
            os.fdatasync(self._fd)
        except OSError as e:
            reason = f"writing {self.log_path} failed: {e}"
            self._broken = reason + self._roll_back()
            raise MetaLogBroken(f"metadata is read-only from now on: {self._broken}") from e
        self._size += len(record)
        self._revision = rev
        self._records_since_compaction += 1

    def _roll_back(self) -> str:
        """Remove the refused record's bytes, so that a restart shows only what was acknowledged."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as e:
            return (
                f"; removing the refused record also failed ({e}): a restart may replay it, "
                f"or cut it as a torn tail"
            )
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            return f"; the refused record was removed, but not synced ({e}): a power loss may bring it back"
        return ""

    def _compact_after_apply(self) -> None:
        # The op is durable and applied whatever happens here: a failed compaction only
        # postpones the next one, unless it left the log unusable (then `compact` marks it).
        try:
            self.compact(self._metadata)
        except OSError as e:
            self._records_since_compaction = 0  # try again after another full round
            log.error(
                "metadata compaction failed (%s); %s",
                e,
                f"metadata is read-only until a restart: {self._broken}"
                if self._broken
                else "the log keeps every record and compaction will be retried",
            )

    def compact(self, metadata: Metadata) -> None:
        """Write a snapshot of `metadata` and start a fresh, empty log.

        Raises OSError on failure. Until the new empty log has replaced the old one, a failure
        leaves the old snapshot and log in place and the log still usable; after that, a failure
        breaks the log (read-only), as the file it appends to may no longer be the one on disk.
        """
        self._check_writable()
        assert metadata is self._metadata and metadata.revision == self._revision, (
            "snapshot must match the logged revision"
        )
        snapshot = json.dumps(metadata.to_snapshot(), separators=(",", ":")).encode()
        # A failure here leaves the old snapshot (or, once renamed, the new one, whose revision
        # covers every record of the old log, which is then skipped on open): still consistent.
        _write_file_durably(self.snapshot_path, encode_record(snapshot))
        tmp = self.log_path.with_name(self.log_path.name + TMP_SUFFIX)
        try:
            _write_file(tmp, b"")
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.log_path)  # atomic: on failure the old log is still in place
        try:
            _fsync_dir(self.directory)
            new_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            self._broken = f"compaction replaced {self.log_path} but could not make it durable: {e}"
            raise
        assert self._fd is not None
        os.close(self._fd)
        self._fd = new_fd
        self._size = 0
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
        raise MetaLogCorruption(
            f"{path}: damaged metadata snapshot; the server will not start. Restore the "
            f"metadata directory from a backup."
        )
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
