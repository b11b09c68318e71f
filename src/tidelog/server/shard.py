"""One server process: owns the metadata, the partitions and the sessions, and runs the loop.

Today there is one shard; it is the single writer of every piece of state (no locks: every
mutation runs on its event loop). The shape follows DESIGN.md so that more shards can be
added: the shard owns partitions by (stream, topic, partition) key, metadata changes go
through `Shard.apply` (validate, log durably, then apply: `MetaLog.apply`), and the I/O shell
(connection.py) never touches state directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import xxhash

from tidelog import auth
from tidelog.config import Config, FsyncPolicy
from tidelog.metadata import (
    CreateUser,
    Metadata,
    MetadataDefaults,
    Op,
    StreamMeta,
    TopicMeta,
    op_from_json,
    op_to_json,
)
from tidelog.permissions import ROOT_PERMISSIONS
from tidelog.server import sharding
from tidelog.server.connection import Connection
from tidelog.storage.index_cache import IndexCache
from tidelog.storage.integrity import StoreFormat
from tidelog.storage.io import BufferedIO, DirectIO, FileIO
from tidelog.storage.metalog import MetaLog, MetaLogBroken, MetaLogCorruption
from tidelog.storage.partition import Partition, PartitionConfig
from tidelog.storage.segment import DIRECT_SUFFIXES
from tidelog.storage.writer import Writer
from tidelog.wire.codes import NO_USER_ID, IggyError, Status
from tidelog.wire.primitives import ConsumerKind, PartitioningKind

log = logging.getLogger(__name__)

PartitionKey = tuple[int, int, int]

# data_dir/deleted/{revision:020}/streams/...: folders of entities whose delete op is in the
# metadata log at that revision, moved here before the delete is acknowledged and removed
# after. Only these are ever removed at start-up: anything else metadata does not name is
# quarantined (ORPHANS_DIR), because metadata may have lost it.
DELETED_DIR = "deleted"
# data_dir/quarantine/orphans/{start-up time µs}/streams/...: folders metadata does not name.
QUARANTINE_DIR = "quarantine"
ORPHANS_DIR = "orphans"


@dataclass(frozen=True)
class Unpersisted:
    """Offsets [first, end) of a partition that shutdown could not get onto the disk."""

    key: PartitionKey
    first: int
    end: int
    reason: str

    def describe(self, durable_polls: bool) -> str:
        s, t, p = self.key
        # Under fsync=always nothing past the durable offset was acknowledged.
        what = "never acknowledged" if durable_polls else "acknowledged"
        return (
            f"stream {s} topic {t} partition {p}: offsets {self.first}..{self.end - 1} "
            f"({self.end - self.first} messages, {what}) were NOT persisted: {self.reason}"
        )


class StartupRefused(Exception):
    """The server must not start: what it would serve could differ from what it acknowledged."""


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Session:
    """A connected client (protocol section 1.5)."""

    client_id: int
    address: str
    conn: Connection | None
    last_heartbeat_us: int
    user_id: int | None = None
    # Per consumer group (stream, topic, group): the partition this member last polled, which
    # a group offset store without an explicit partition refers to (section 3.7).
    group_partition: dict[tuple[int, int, int], int] = field(default_factory=dict)
    # 0.9 generation (protocol 0.9 section 1.7): the session number a Register bound to this
    # connection, the reply that Register got (replayed on a repeated Register), and the last
    # metadata reply by (client id, request number), replayed to a duplicate request.
    vsr_session: int | None = None
    vsr_login_reply: bytes | None = None
    vsr_last_reply: tuple[int, int, int, bytes] | None = None  # client, request, status, body
    # Multi-shard (router.py): a client of another shard whose requests run here, and the
    # partition the client's shard chose for the request running now (balanced or keyed
    # sends, group polls), which the handlers take instead of choosing again.
    proxy: bool = False
    route_partition: int | None = None
    # Requests in a row for partitions the client names on one other shard (router.py moves
    # the connection there after a few).
    handoff_shard: int = -1
    handoff_streak: int = 0

    @property
    def wire_user_id(self) -> int:
        return NO_USER_ID if self.user_id is None else self.user_id


@dataclass(frozen=True)
class PartitionView:
    """A partition's figures as its owner shard reported them (multi-shard stats)."""

    segments_count: int = 0
    current_offset: int = 0
    size_bytes: int = 0
    messages_count: int = 0


class Change(StrEnum):
    OP = "op"  # a logged metadata op; the payload is its JSON text, as the log holds it
    JOIN = "join"  # group memberships, not logged: (stream, topic, group, client)
    LEAVE = "leave"
    LEAVE_ALL = "leave_all"  # a client went away: its id


@dataclass(frozen=True)
class Published:
    """One change shard 0 publishes to the other shards, in revision order."""

    revision: int
    kind: Change
    payload: Any


@dataclass
class StartupReport:
    streams: int = 0
    topics: int = 0
    partitions: int = 0
    messages: int = 0
    segments: int = 0
    truncated_bytes: int = 0
    rebuilt_indexes: int = 0
    quarantined: list[Path] = field(default_factory=list)  # torn or damaged bytes kept aside (files)
    problems: list[str] = field(default_factory=list)
    # Folders metadata does not name, moved (whole) under quarantine/orphans/; each also has a
    # line in `problems` saying why.
    orphans: list[Path] = field(default_factory=list)
    root_created: bool = False
    # Segments holding messages, by the format their files are in (see `upgrade_line`).
    segments_by_format: dict[StoreFormat, int] = field(default_factory=dict)
    store_format: StoreFormat = StoreFormat.RECORDS  # what new segments get

    def counts(self) -> dict[str, Any]:
        """The figures of the report (not its lists), as JSON: what a shard tells the
        supervisor, which prints one report for the whole server (`merged`)."""
        return {
            "streams": self.streams,
            "topics": self.topics,
            "partitions": self.partitions,
            "messages": self.messages,
            "segments": self.segments,
            "truncated_bytes": self.truncated_bytes,
            "rebuilt_indexes": self.rebuilt_indexes,
            "root_created": self.root_created,
            "segments_by_format": {f.value: n for f, n in self.segments_by_format.items()},
            "store_format": self.store_format.value,
        }

    @classmethod
    def merged(cls, shards: list[dict[str, Any]]) -> StartupReport:
        """One report of every shard's `counts`: each shard sees every stream and topic, and
        recovers the partitions it owns."""
        report = cls(store_format=StoreFormat(shards[0]["store_format"]))
        report.streams = max(c["streams"] for c in shards)
        report.topics = max(c["topics"] for c in shards)
        for c in shards:
            for name in ("partitions", "messages", "segments", "truncated_bytes", "rebuilt_indexes"):
                setattr(report, name, getattr(report, name) + c[name])
            report.root_created = report.root_created or c["root_created"]
            for fmt, n in c["segments_by_format"].items():
                key = StoreFormat(fmt)
                report.segments_by_format[key] = report.segments_by_format.get(key, 0) + n
        return report

    def upgrade_line(self) -> str:
        """What the start did about the store format, for the start-up report: nothing is
        ever rewritten; each segment's file name says its format, both generations read
        both, and new segments get `store_format`."""
        other = next(f for f in StoreFormat if f is not self.store_format)
        kept = self.segments_by_format.get(other, 0)
        current = self.segments_by_format.get(self.store_format, 0)
        if not kept:
            return (
                f"none needed: every segment ({current}) is in the configured store format "
                f"({_FORMAT_NAMES[self.store_format]})"
            )
        return (
            f"{kept} segments in the {other} format ({_FORMAT_NAMES[other]}) kept as they are and "
            f"read by both generations; {current} in the configured {self.store_format} format; "
            f"appends go to segments in the {self.store_format} format "
            f"({_FORMAT_NAMES[self.store_format]}); nothing was rewritten"
        )


_FORMAT_NAMES = {StoreFormat.RECORDS: "0.9 batch records", StoreFormat.V08: "0.8 messages"}


class Shard:
    def __init__(
        self,
        config: Config,
        clock_us: Callable[[], int] = wall_clock_us,
        random_bytes: Callable[[int], bytes] = os.urandom,
        shard_id: int = 0,
        shards: int = 1,
        helper_cpus: frozenset[int] | None = None,
    ) -> None:
        assert 0 <= shard_id < shards
        self.config = config
        self.shard_id = shard_id
        self.shards = shards
        # Multi-shard: what shard 0 applied and has not yet published (router.py), the other
        # shards' partition figures and clients as last gathered, and where a departing
        # client's group memberships are ended (through shard 0).
        self._outbox: list[Published] = []
        self.views: dict[PartitionKey, PartitionView] = {}
        self.remote_clients = 0
        self.leave_all_hook: Callable[[int], None] | None = None
        # The server's process: this one, or the supervisor of the shard processes.
        self.server_pid = os.getpid() if shards == 1 else os.getppid()
        self.clock_us = clock_us
        self.random_bytes = random_bytes
        self.data_dir = Path(config.data_dir)
        self.metadata: Metadata
        self.metalog: MetaLog
        self.partitions: dict[PartitionKey, Partition] = {}
        self.sessions: dict[int, Session] = {}
        self._next_client_local = 1
        # Balanced partitioning: one round-robin counter per topic, not persisted (section 4.3).
        self.balanced_counters: dict[tuple[int, int], int] = {}
        self.started_at_us = 0
        self.bound_port = 0
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty: set[PartitionKey] = set()  # written to since the last fsync
        self.partition_config = PartitionConfig(
            segment_size_bytes=config.system.segment_size_bytes,
            flush_messages=config.durability.flush_messages,
            flush_bytes=config.durability.flush_bytes,
            fsync_on_flush=False,
            # Under `always` a consumer-offset reply waits for its fdatasync, as a send does.
            offsets_fsync=config.durability.fsync is FsyncPolicy.ALWAYS,
            verify_checksums_on_open=config.system.verify_checksums_on_open,
            cache_bytes=config.system.partition_cache_bytes,
            store_format=StoreFormat(config.system.store_format),
            # interval/always: acknowledged batches stay in memory until synced, so a failed
            # write or sync can write them again (`_share_cache` sets each partition's share).
            # never: nothing is synced on a schedule, so nothing is held for it.
            max_unsynced_bytes=(
                0 if config.durability.fsync is FsyncPolicy.NEVER else config.durability.max_unsynced_bytes
            ),
            # always: an acknowledgement waits for the sync, and a poll serves only what is synced.
            durable_polls=config.durability.fsync is FsyncPolicy.ALWAYS,
        )
        # Failed partitions waiting for a retry: key -> (next attempt, monotonic s; interval s).
        self._retries: dict[PartitionKey, tuple[float, float]] = {}
        self.io: FileIO = BufferedIO(writeback_bytes=config.durability.writeback_bytes)
        # Sealed segments' index columns, shared by every partition: bounded by configuration.
        self.index_cache = IndexCache(config.system.index_cache_bytes)
        # Disk writes run on this thread so the event loop keeps serving while they happen.
        # A pinned shard's writer runs on any of `helper_cpus` (the server's), not on the
        # loop's CPU: with it there, pp with two shards on two cores lost ~12 %.
        self.writer = Writer(on_complete=self._on_write_done, cpus=helper_cpus)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reap_scheduled = False

    # ---- paths -------------------------------------------------------------------------
    def stream_dir(self, stream_id: int) -> Path:
        return self.data_dir / "streams" / str(stream_id)

    def topic_dir(self, stream_id: int, topic_id: int) -> Path:
        return self.stream_dir(stream_id) / "topics" / str(topic_id)

    def partition_dir(self, key: PartitionKey) -> Path:
        return self.topic_dir(key[0], key[1]) / "partitions" / str(key[2])

    # ---- lifecycle ---------------------------------------------------------------------
    def open(self) -> StartupReport:
        """Loads metadata, creates the root user on first start, recovers every partition."""
        assert self.shard_id == 0, "shards 1 and up take shard 0's metadata (open_replica)"
        report = StartupReport()
        self.started_at_us = self.clock_us()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._set_io()
        try:
            self.metalog, self.metadata = MetaLog.open(self.data_dir / "metadata", self._defaults())
        except MetaLogCorruption as e:
            # Nothing has been touched: no partition opened, no folder moved.
            raise StartupRefused(str(e)) from e
        if self.metalog.torn_aside is not None:
            report.quarantined.append(self.metalog.torn_aside)
            report.problems.append(
                f"metadata log: cut a torn last record ({self.metalog.torn_bytes} bytes of an "
                f"append a crash interrupted, never acknowledged); kept it in {self.metalog.torn_aside}"
            )
        if not self.metadata.users:
            root = self.config.root
            auth.validate_username(root.username)
            auth.validate_password(root.password)
            try:
                self.apply(
                    CreateUser(
                        username=root.username,
                        password_hash=auth.hash_password(root.password),
                        status=1,
                        permissions=ROOT_PERMISSIONS,
                        created_at_us=self.clock_us(),
                    )
                )
            except IggyError as e:
                raise StartupRefused(f"cannot create the root user: {e}") from e
            report.root_created = True
        # Before any partition opens (opening creates missing folders): what metadata names
        # is decided by metadata alone.
        report.store_format = self.partition_config.store_format
        self._sweep_deleted(report)
        self._quarantine_orphans(report)
        self._open_owned(report)
        return report

    def _set_io(self) -> None:
        if self.config.system.io == "direct":
            if not DirectIO.supported(self.data_dir):
                raise RuntimeError(f"system.io = 'direct' but {self.data_dir} refuses O_DIRECT")
            # Under fsync=always every acknowledgement waits for the log anyway: O_DSYNC makes
            # each write durable in one device round trip instead of write + fdatasync.
            dsync = self.config.durability.fsync is FsyncPolicy.ALWAYS
            self.io = DirectIO(direct_suffixes=DIRECT_SUFFIXES, dsync=dsync)

    def _defaults(self) -> MetadataDefaults:
        return MetadataDefaults(
            segment_size_bytes=self.config.system.segment_size_bytes,
            message_expiry=self.config.system.message_expiry_us,
            max_topic_size=self.config.system.max_topic_size_bytes,
        )

    def _open_owned(self, report: StartupReport) -> None:
        """Recovers every partition metadata names that this shard owns."""
        for stream in self.metadata.streams.values():
            report.streams += 1
            for topic in stream.topics.values():
                report.topics += 1
                for pid in topic.partitions:
                    key = (stream.id, topic.id, pid)
                    if not self.owns(key):
                        continue
                    part = self.open_partition(key)
                    rec = part.recovery
                    report.partitions += 1
                    report.messages += part.messages_count
                    report.segments += part.segments_count
                    for segment in part.segments:
                        if not segment.is_empty:
                            fmt = segment.fmt.store_format
                            report.segments_by_format[fmt] = report.segments_by_format.get(fmt, 0) + 1
                    report.truncated_bytes += rec.truncated_bytes
                    report.rebuilt_indexes += rec.rebuilt_indexes
                    report.quarantined.extend(rec.quarantined)
                    report.problems.extend(f"partition {key}: {p}" for p in rec.problems)

    # ---- folders metadata does not name ------------------------------------------------
    def _sweep_deleted(self, report: StartupReport) -> None:
        """Removes the folders of logged deletes whose removal a crash interrupted.

        A folder under deleted/{revision} got there only after its delete op was durable at
        that revision, so it is dead when the metadata holds that revision and does not name
        the entity with its folder missing. Anything else (metadata older than the delete, as
        after restoring it from a copy) is quarantined, not removed.
        """
        root = self.data_dir / DELETED_DIR
        if not root.is_dir():
            return
        for entry in sorted(root.iterdir()):
            revision = int(entry.name) if entry.name.isdigit() else None
            if revision is None or revision > self.metadata.revision:
                self._quarantine(
                    entry,
                    report,
                    f"folder of a delete at revision {entry.name}, which the metadata (revision "
                    f"{self.metadata.revision}) does not hold",
                )
                continue
            partitions = entry.glob("streams/*/topics/*/partitions/*")
            named = [path for path in partitions if self._names_missing(entry, path)]
            if named:
                self._quarantine(
                    entry,
                    report,
                    f"folder of a delete at revision {revision} holding partitions that the metadata "
                    f"names and whose own folders are missing ({', '.join(str(p) for p in named)})",
                )
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if entry.exists():
                report.problems.append(f"could not remove {entry} (a logged delete); remove it by hand")

    def _names_missing(self, deleted_root: Path, path: Path) -> bool:
        """Whether a partition folder under deleted/ is one metadata names, with no live folder."""
        parts = path.relative_to(deleted_root).parts  # streams, s, topics, t, partitions, p
        ids = [_entity_id(parts[i]) for i in (1, 3, 5)]
        if None in ids:
            return False
        s, t, p = (int(i) for i in ids if i is not None)
        stream = self.metadata.streams.get(s)
        topic = None if stream is None else stream.topics.get(t)
        return topic is not None and p in topic.partitions and not self.partition_dir((s, t, p)).exists()

    def _quarantine_orphans(self, report: StartupReport) -> None:
        """Moves every stream, topic and partition folder metadata does not name to quarantine.

        Such a folder is not proof of a finished delete (those go through deleted/): metadata
        may have lost the entity. Its data is kept, untouched, and reported.
        """
        streams_dir = self.data_dir / "streams"
        for stream_dir in _entity_dirs(streams_dir):
            stream = self.metadata.streams.get(int(stream_dir.name))
            if stream is None:
                self._quarantine(stream_dir, report, f"stream {stream_dir.name}: metadata does not name it")
                continue
            for topic_dir in _entity_dirs(stream_dir / "topics"):
                topic = stream.topics.get(int(topic_dir.name))
                if topic is None:
                    what = f"topic {topic_dir.name} of stream {stream.id}: metadata does not name it"
                    self._quarantine(topic_dir, report, what)
                    continue
                for part_dir in _entity_dirs(topic_dir / "partitions"):
                    if int(part_dir.name) not in topic.partitions:
                        what = (
                            f"partition {part_dir.name} of topic {topic.id} in stream {stream.id}: "
                            f"metadata does not name it"
                        )
                        self._quarantine(part_dir, report, what)

    def _quarantine(self, path: Path, report: StartupReport | None, what: str) -> Path:
        """Moves `path` under quarantine/orphans/, keeping its place in the tree; says so loudly.

        Raises OSError if the move fails: the caller must not go on as if the data were gone.
        """
        relative = path.relative_to(self.data_dir)  # streams/... or deleted/{revision}/streams/...
        base = self.data_dir / QUARANTINE_DIR / ORPHANS_DIR / str(self.started_at_us)
        dest = base / relative
        n = 1
        while dest.exists():
            dest = base.with_name(f"{base.name}.{n}") / relative
            n += 1
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)
        try:
            self.io.fsync_dir(path.parent)
            self.io.fsync_dir(dest.parent)
        except OSError:
            # Undone by a power cut, the move leaves the folder where it was: found again next start.
            log.exception("syncing the folders around %s failed", dest)
        message = (
            f"{what}; moved its folder {path}, untouched, to {dest}. Nothing was deleted: restore "
            f"the metadata that names it, or remove the folder once you are sure it is not needed"
        )
        log.error("QUARANTINED %s", message)
        if report is not None:
            report.orphans.append(dest)
            report.problems.append(message)
        return dest

    def topic_partition_config(self, stream_id: int, topic_id: int) -> PartitionConfig:
        """The server's partition settings with the topic's own (0.9 topic options) in place."""
        stream = self.metadata.streams.get(stream_id)
        topic = None if stream is None else stream.topics.get(topic_id)
        config = self.partition_config
        if topic is None:
            return config
        if not (topic.segment_size_bytes or topic.flush_messages or topic.flush_bytes):
            return config
        return dataclasses.replace(
            config,
            segment_size_bytes=topic.segment_size_bytes or config.segment_size_bytes,
            flush_messages=topic.flush_messages or config.flush_messages,
            flush_bytes=topic.flush_bytes or config.flush_bytes,
        )

    def open_partition(self, key: PartitionKey) -> Partition:
        part = Partition.open(
            self.partition_dir(key),
            key[2],
            self.topic_partition_config(key[0], key[1]),
            io=self.io,
            writer=self.writer,
            index_cache=self.index_cache,
        )
        self.partitions[key] = part
        self._share_cache()
        return part

    def _share_cache(self) -> None:
        """Splits the shard's tail-cache memory evenly among its partitions."""
        if not self.partitions:
            return
        share = self.config.system.cache_bytes // len(self.partitions)
        budget = min(self.config.system.partition_cache_bytes, share)
        durability = self.config.durability
        # Below flush_bytes a partition would sync on every flush; the journal may hold that
        # much per partition anyway.
        unsynced = max(durability.max_unsynced_bytes // len(self.partitions), durability.flush_bytes)
        for part in self.partitions.values():
            if part.cache_budget_bytes != budget:
                part.set_cache_budget(budget)
            if part.unsynced_budget_bytes and part.unsynced_budget_bytes != unsynced:
                part.set_unsynced_budget(unsynced)

    @property
    def metadata_read_only(self) -> str | None:
        """Why metadata changes are refused (a metadata write failed), or None. Shards 1 and
        up hold no log: shard 0 answers for them (their changes are forwarded there)."""
        return self.metalog.broken if self.shard_id == 0 else None

    def apply(self, op: Op) -> object:
        """Validates a metadata op, logs it durably, then applies it (log before apply).

        Raises IggyError, with nothing changed in memory or on disk: the op's own error, or
        METADATA_READ_ONLY when this or an earlier metadata write failed. A caller acts on
        files (partitions) only after this returned.
        """
        assert self.shard_id == 0, "only shard 0 changes metadata (router.py forwards the rest)"
        first_failure = self.metalog.broken is None
        try:
            result = self.metalog.apply(op)
            self._note(Change.OP, json.dumps(op_to_json(op), separators=(",", ":")))  # as the log holds it
            return result
        except MetaLogBroken as e:
            if first_failure and self.metalog.broken is not None:
                log.critical(
                    "METADATA IS READ-ONLY until restart: %s. %s was refused and not applied; every "
                    "later metadata change is refused with status %d (%s); reads, sends and polls go on",
                    self.metalog.broken,
                    type(op).__name__,
                    Status.METADATA_READ_ONLY,
                    Status.METADATA_READ_ONLY.name,
                )
            else:
                log.error("refused %s: metadata is read-only (%s)", type(op).__name__, self.metalog.broken)
            raise IggyError(Status.METADATA_READ_ONLY, str(e)) from e

    def close(self) -> list[Unpersisted]:
        """Flushes and syncs every partition and closes everything. A partition that cannot
        persist is retried (backoff as for the retry ticker) for at most
        `durability.shutdown_retry_ms` in all; what still is not on disk is returned (and
        logged): the caller must not report a clean shutdown then."""
        deadline_s = time.monotonic() + self.config.durability.shutdown_retry_ms / 1000
        lost: list[Unpersisted] = []
        for key, part in self.partitions.items():
            try:
                failure = self._persist(key, part, deadline_s)
            except Exception as exc:  # e.g. a damaged segment met while preparing a rewrite
                log.exception("persisting partition %s at shutdown failed", key)
                failure = OSError(errno.EIO, repr(exc))
            offsets = part.unpersisted_range()
            try:
                part.close()
            except OSError as exc:
                failure = failure or exc
            if offsets is not None and offsets[0] < offsets[1]:
                lost.append(Unpersisted(key, offsets[0], offsets[1], str(failure or part.failure)))
            elif failure is not None:
                log.error("closing partition %s failed: %s", key, failure)
        for item in lost:
            log.critical("%s", item.describe(self.partition_config.durable_polls))
        self.partitions.clear()
        self.writer.close()  # after the partitions: their closes still submit jobs
        if self.shard_id == 0:
            self.metalog.close()
        return lost

    def _persist(self, key: PartitionKey, part: Partition, deadline_s: float) -> OSError | None:
        """Flush and sync `part`, retrying a failed one until `deadline_s`; the last error."""
        interval_s = self.config.durability.retry_interval_ms / 1000
        max_interval_s = self.config.durability.retry_max_interval_ms / 1000
        while True:
            if not part.failed:
                try:
                    part.flush(fsync=True)
                    return None
                except OSError as exc:
                    if not part.failed:
                        return exc  # not a write failure a retry could cure
            part.wait_for_jobs()
            if not part.failed:
                continue
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                failure = part.failure
                return failure if isinstance(failure, OSError) else OSError(errno.EIO, str(failure))
            log.warning(
                "shutdown: partition %s cannot persist (%s); retrying %.1f s more", key, part.failure, left_s
            )
            # Blocking is fine here: the server stopped serving before closing.
            time.sleep(min(interval_s, left_s))
            interval_s = min(interval_s * 2, max_interval_s)
            part.retry_failed()
            part.wait_for_jobs()

    # ---- writer completions ------------------------------------------------------------
    def _on_write_done(self) -> None:
        """Runs on the writer thread: only schedules the reap on the loop."""
        loop = self._loop
        if loop is not None and not self._reap_scheduled:
            self._reap_scheduled = True
            loop.call_soon_threadsafe(self.reap_all)

    def reap_all(self) -> None:
        """Retires finished write jobs: frees memory past the tail cache, surfaces I/O errors."""
        self._reap_scheduled = False
        for key, part in self.partitions.items():
            if part.pending_jobs:
                try:
                    part.reap()
                except OSError as exc:
                    log.error(
                        "writing partition %s failed (%s); it refuses writes (status %d) and is retried "
                        "every %d..%d ms until a retry succeeds",
                        key,
                        exc,
                        Status.CANNOT_SAVE_MESSAGES,
                        self.config.durability.retry_interval_ms,
                        self.config.durability.retry_max_interval_ms,
                    )
        for part in self.partitions.values():
            if part.offsets.pending:
                part.offsets.reap()  # consumer-offset changes and syncs (they log their failures)

    # ---- sessions ----------------------------------------------------------------------
    def open_session(self, conn: Connection | None, address: str) -> Session:
        now = self.clock_us()
        # The top bits name this shard: ids are unique across shards without asking.
        local = self._next_client_local
        self._next_client_local = local % sharding.CLIENT_ID_LOCAL_MASK + 1
        session = Session(sharding.client_id(self.shard_id, local), address, conn, now)
        self.sessions[session.client_id] = session
        return session

    def close_session(self, session: Session) -> None:
        self.sessions.pop(session.client_id, None)
        if self.leave_all_hook is not None:
            self.leave_all_hook(session.client_id)
        else:
            self.metadata.leave_all(session.client_id)

    # ---- multi-shard: ownership, publication ---------------------------------------------
    def owns(self, key: PartitionKey) -> bool:
        return sharding.owner_of(*key, self.shards) == self.shard_id

    def partition_view(self, key: PartitionKey) -> Partition | PartitionView:
        """A partition's figures: the partition itself here, else what its owner reported."""
        part = self.partitions.get(key)
        return part if part is not None else self.views.get(key, PartitionView())

    def choose_partition(self, topic: TopicMeta, partitioning: Any) -> int:
        """The partition a send goes to: explicit (kind 2), balanced (1: a round robin per
        topic, not persisted, section 4.3) or by message key (XXH32 of the key)."""
        count = len(topic.partitions)
        kind = partitioning.kind
        if kind == PartitioningKind.PARTITION_ID:
            return int.from_bytes(partitioning.value, "little")
        if count == 0:
            raise IggyError(Status.TOPIC_ID_NOT_FOUND, "topic has no partitions")
        if kind == PartitioningKind.BALANCED:
            tkey = (topic.stream_id, topic.id)
            counter = self.balanced_counters.get(tkey, 0)
            self.balanced_counters[tkey] = counter + 1
            return counter % count
        return xxhash.xxh32_intdigest(bytes(partitioning.value)) % count

    def join_group(self, topic: TopicMeta, group_id: int, client_id: int) -> None:
        self.metadata.join_group(topic, group_id, client_id)
        self._note(Change.JOIN, (topic.stream_id, topic.id, group_id, client_id))

    def leave_group(self, topic: TopicMeta, group_id: int, client_id: int) -> None:
        self.metadata.leave_group(topic, group_id, client_id)
        self._note(Change.LEAVE, (topic.stream_id, topic.id, group_id, client_id))

    def leave_all_here(self, client_id: int) -> None:
        """Shard 0: a client's memberships end (published to the others)."""
        self.metadata.leave_all(client_id)
        self._note(Change.LEAVE_ALL, client_id)

    def _note(self, kind: Change, payload: Any) -> None:
        if self.shards > 1:
            assert self.shard_id == 0, "only shard 0 changes metadata"
            self._outbox.append(Published(self.metadata.revision, kind, payload))

    def take_outbox(self) -> list[Published]:
        items, self._outbox = self._outbox, []
        return items

    def snapshot_bytes(self) -> bytes:
        """Shard 0's metadata for a shard that starts or fell behind: the logged state and
        the group memberships, which are not logged."""
        members = [
            (s.id, t.id, g.id, m.client_id)
            for s in self.metadata.streams.values()
            for t in s.topics.values()
            for g in t.groups.values()
            for m in g.members
        ]
        return json.dumps({"metadata": self.metadata.to_snapshot(), "members": members}).encode()

    def open_replica(self, snapshot: bytes | bytearray) -> StartupReport:
        """Shard 1 and up: metadata from shard 0's snapshot, then the partitions owned here."""
        report = StartupReport()
        self.started_at_us = self.clock_us()
        self._set_io()
        self._install_snapshot(snapshot)
        report.store_format = self.partition_config.store_format
        self._open_owned(report)
        return report

    def _install_snapshot(self, snapshot: bytes | bytearray) -> None:
        state = json.loads(snapshot)
        fresh = Metadata.from_snapshot(state["metadata"], self._defaults())
        if hasattr(self, "metadata"):  # the handlers hold this object: it takes the new state
            vars(self.metadata).clear()
            vars(self.metadata).update(vars(fresh))
        else:
            self.metadata = fresh
        for stream_id, topic_id, group_id, client_id in state["members"]:
            topic = self.metadata.streams[stream_id].topics[topic_id]
            self.metadata.join_group(topic, group_id, client_id)

    def catch_up(self, snapshot: bytes | bytearray) -> None:
        """Shards 1 and up, behind shard 0's ops: its whole metadata, then the partitions
        owned here opened or closed to match it."""
        self._install_snapshot(snapshot)
        named = {
            (s.id, t.id, pid)
            for s in self.metadata.streams.values()
            for t in s.topics.values()
            for pid in t.partitions
        }
        for key in sorted(set(self.partitions) - named):
            self._close_dropped(key)
        for key in sorted(named - set(self.partitions)):
            if self.owns(key):
                self.open_partition(key)
        log.warning("shard %d caught up with shard 0 at revision %d", self.shard_id, self.metadata.revision)

    def apply_published(self, items: list[Published]) -> bool:
        """Shard 1 and up: shard 0's changes, in order, with their effects on the partitions
        owned here. False when a logged op does not follow the revision held here (the
        caller then asks for a snapshot)."""
        assert self.shard_id != 0
        for item in items:
            if item.kind is Change.OP:
                if item.revision != self.metadata.revision + 1:
                    if item.revision <= self.metadata.revision:
                        continue  # already in the snapshot this shard caught up from
                    return False
                self._apply_replicated(op_from_json(json.loads(item.payload)))
            elif item.kind is Change.LEAVE_ALL:
                self.metadata.leave_all(item.payload)
            else:
                stream_id, topic_id, group_id, client_id = item.payload
                topic = self.metadata.streams[stream_id].topics[topic_id]
                if item.kind is Change.JOIN:
                    self.metadata.join_group(topic, group_id, client_id)
                else:
                    self.metadata.leave_group(topic, group_id, client_id)
        return True

    def _apply_replicated(self, op: Op) -> None:
        before = {
            (s.id, t.id): set(t.partitions) for s in self.metadata.streams.values() for t in s.topics.values()
        }
        groups = {
            (s.id, t.id): set(t.groups) for s in self.metadata.streams.values() for t in s.topics.values()
        }
        self.metadata.apply(op)
        after = {
            (s.id, t.id): set(t.partitions) for s in self.metadata.streams.values() for t in s.topics.values()
        }
        for (stream_id, topic_id), pids in after.items():
            for pid in sorted(pids - before.get((stream_id, topic_id), set())):
                key = (stream_id, topic_id, pid)
                if self.owns(key):
                    self.open_partition(key)
        for (stream_id, topic_id), pids in before.items():
            for pid in sorted(pids - after.get((stream_id, topic_id), set())):
                key = (stream_id, topic_id, pid)
                if key in self.partitions:
                    self._close_dropped(key)  # shard 0 moves the folders
            if (stream_id, topic_id) not in after:
                self.balanced_counters.pop((stream_id, topic_id), None)
        for (stream_id, topic_id), ids in groups.items():
            topic_now = self.metadata.streams.get(stream_id)
            remaining = (
                set()
                if topic_now is None or topic_id not in topic_now.topics
                else set(topic_now.topics[topic_id].groups)
            )
            for group_id in ids - remaining:
                self._drop_group_offsets(stream_id, topic_id, group_id)

    def _drop_group_offsets(self, stream_id: int, topic_id: int, group_id: int) -> None:
        group = ConsumerKind.CONSUMER_GROUP
        for key, part in self.partitions.items():
            if key[:2] == (stream_id, topic_id) and part.get_offset(group, group_id) is not None:
                try:
                    part.delete_offset(group, group_id)
                except IggyError as exc:
                    log.error("group %d deleted, but not its stored offset: %s", group_id, exc)

    # ---- partitions --------------------------------------------------------------------
    def topic_partitions(self, topic: TopicMeta) -> list[Partition]:
        """The topic's partitions this shard owns (every one, with one shard)."""
        keys = ((topic.stream_id, topic.id, pid) for pid in sorted(topic.partitions))
        return [self.partitions[key] for key in keys if key in self.partitions]

    def topic_totals(self, topic: TopicMeta) -> tuple[int, int]:
        size = count = 0
        for pid in topic.partitions:
            part = self.partition_view((topic.stream_id, topic.id, pid))
            size += part.size_bytes
            count += part.messages_count
        return size, count

    def stream_totals(self, stream: StreamMeta) -> tuple[int, int]:
        size = count = 0
        for topic in stream.topics.values():
            s, c = self.topic_totals(topic)
            size += s
            count += c
        return size, count

    # Deletes: the caller applied the delete op just before (so `metadata.revision` is its
    # revision). The folder is first moved under deleted/{revision}, so a crash while removing
    # it leaves a folder the next start can prove dead; then it is removed.
    def drop_partition(self, key: PartitionKey) -> None:
        moved = self._move_to_deleted(self.partition_dir(key))
        self._close_dropped(key)
        self._remove_deleted(moved)

    def _close_dropped(self, key: PartitionKey) -> None:
        part = self.partitions.pop(key, None)
        self._dirty.discard(key)
        if part is not None:
            part.destroy()  # removes its folder in place if the move to deleted/ failed
            self._share_cache()
        else:
            shutil.rmtree(self.partition_dir(key), ignore_errors=True)

    def _move_to_deleted(self, path: Path) -> Path | None:
        """Moves the folder of an entity whose delete is logged under deleted/{revision}/."""
        if not path.exists():
            return None
        root = self.data_dir / DELETED_DIR / f"{self.metadata.revision:020}"
        dest = root / path.relative_to(self.data_dir)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)
        except OSError:
            # The delete is logged, so removing the folder in place is still right; only a
            # crash halfway through would leave a remainder, which the next start quarantines.
            log.exception("moving %s to %s failed; removing it in place", path, dest)
            return None
        try:
            self.io.fsync_dir(path.parent)
        except OSError:
            # Lost in a power cut, the move leaves the folder in place: quarantined, not lost.
            log.exception("syncing %s after moving %s out failed", path.parent, path.name)
        return root

    @staticmethod
    def _remove_deleted(root: Path | None) -> None:
        if root is not None:
            # What a failure leaves behind is removed by the next start (`_sweep_deleted`).
            shutil.rmtree(root, ignore_errors=True)

    def create_partition(self, key: PartitionKey) -> Partition | None:
        """A partition metadata has just created: it starts empty. Files already in its folder
        cannot belong to it (deletes move folders away first), so they belong to an entity
        metadata lost: they are quarantined, never removed. Owned by another shard: that
        shard opens it when the op reaches it (None here)."""
        if not self.owns(key):
            return None
        path = self.partition_dir(key)
        if path.is_dir() and any(path.iterdir()):
            self._quarantine(path, None, f"partition {key}: created anew, but its folder already held files")
        return self.open_partition(key)

    def drop_topic(self, stream_id: int, topic_id: int, partition_ids: list[int]) -> None:
        """Everything of a topic that metadata has just deleted: partitions, files, counters."""
        moved = self._move_to_deleted(self.topic_dir(stream_id, topic_id))
        for pid in partition_ids:
            self._close_dropped((stream_id, topic_id, pid))
        shutil.rmtree(self.topic_dir(stream_id, topic_id), ignore_errors=True)
        self._remove_deleted(moved)
        self.balanced_counters.pop((stream_id, topic_id), None)

    def drop_stream(self, stream_id: int, topics: list[tuple[int, list[int]]]) -> None:
        moved = self._move_to_deleted(self.stream_dir(stream_id))
        for topic_id, partition_ids in topics:
            self.drop_topic(stream_id, topic_id, partition_ids)
        shutil.rmtree(self.stream_dir(stream_id), ignore_errors=True)
        self._remove_deleted(moved)

    def mark_written(self, key: PartitionKey) -> None:
        self._dirty.add(key)

    def flush_all(self, fsync: bool) -> None:
        """Hands every journal to the writer; with fsync, also syncs what was written since
        the last sync. Does not wait: the writer works while the loop serves."""
        if fsync:
            dirty, self._dirty = self._dirty, set()
        failed: list[PartitionKey] = []
        for key, part in self.partitions.items():
            sync = fsync and key in dirty
            if (part.unflushed_messages or sync) and not part.failed:
                try:
                    part.flush_async(fsync=sync)
                except OSError:
                    failed.append(key)
        if failed:
            raise OSError(f"flushing partitions {failed} failed")

    def retry_failed(self, now_s: float) -> None:
        """Retries partitions whose write or sync failed, with backoff: the first retry
        `retry_interval_ms` after the failure is seen, then at doubling intervals up to
        `retry_max_interval_ms`. A retry rewrites what may not be on disk and syncs it (see
        `Partition.retry_failed`); the partition takes writes again once it succeeded."""
        durability = self.config.durability
        first_s = durability.retry_interval_ms / 1000
        for key, part in self.partitions.items():
            if not part.failed:
                if self._retries and self._retries.pop(key, None) is not None:
                    log.warning("partition %s recovered: its data is written and synced; writes resume", key)
                continue
            entry = self._retries.get(key)
            if entry is None:
                self._retries[key] = (now_s + first_s, first_s)
                continue
            due_s, interval_s = entry
            if now_s < due_s:
                continue
            try:
                started = part.retry_failed()
            except OSError as exc:  # preparing the rewrite read the files: still failing
                log.error("retrying partition %s failed at once: %s", key, exc)
                started = True
            if started:
                log.warning("partition %s: retrying its failed write (%s)", key, part.failure)
                next_s = min(interval_s * 2, durability.retry_max_interval_ms / 1000)
                self._retries[key] = (now_s + next_s, next_s)
        for key in [k for k in self._retries if k not in self.partitions]:
            del self._retries[key]

    async def _retry_ticker(self) -> None:
        interval_s = self.config.durability.retry_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.retry_failed(time.monotonic())
            except Exception:
                log.exception("retrying failed partitions failed; trying again next tick")

    # ---- background work ---------------------------------------------------------------
    async def _flush_ticker(self) -> None:
        interval_s = self.config.durability.flush_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            self._tick(self.flush_all, False)

    async def _fsync_ticker(self) -> None:
        interval_s = self.config.durability.fsync_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            self._tick(self.flush_all, True)
            self._tick(self.sync_offsets, True)

    def sync_offsets(self, _fsync: bool = True) -> None:
        """Hands every dirty consumer-offset file to the writer for an fdatasync (fsync =
        interval). Does not wait; a failed sync is logged and retried at the next one."""
        for part in self.partitions.values():
            if part.offsets.dirty:
                part.offsets.sync()

    @staticmethod
    def _tick(work: Callable[[bool], None], fsync: bool) -> None:
        # One failing pass (a partition's disk error, say) must not end the ticker: every
        # later flush and sync of every other partition depends on it.
        try:
            work(fsync)
        except Exception:
            log.exception("periodic %s failed; retrying next tick", "fsync" if fsync else "flush")

    async def _retention_ticker(self) -> None:
        interval_s = self.config.retention.cleaner_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.enforce_retention()
            except Exception:
                log.exception("retention pass failed")

    def enforce_retention(self) -> int:
        """Deletes expired sealed segments and trims topics over their max size. Returns segments removed."""
        from tidelog.wire.codes import U64_MAX

        now = self.clock_us()
        removed = 0
        for stream in self.metadata.streams.values():
            for topic in stream.topics.values():
                parts = self.topic_partitions(topic)
                if topic.message_expiry not in (0, U64_MAX):
                    for part in parts:
                        removed += part.expire(now, topic.message_expiry)
                if topic.max_topic_size not in (0, U64_MAX):
                    # Iggy starts deleting at 90 % of the limit, oldest sealed segment first.
                    threshold = topic.max_topic_size * 9 // 10
                    while sum(p.size_bytes for p in parts) >= threshold:
                        if not any(p.delete_oldest_sealed_segment() for p in parts):
                            break
                        removed += 1
        return removed

    async def _heartbeat_ticker(self) -> None:
        interval_us = self.config.heartbeat.interval_ms * 1000
        while True:
            await asyncio.sleep(self.config.heartbeat.interval_ms / 1000)
            deadline = self.clock_us() - interval_us * 12 // 10
            for session in list(self.sessions.values()):
                if session.last_heartbeat_us < deadline and session.conn is not None:
                    log.info("client %d stale, disconnecting", session.client_id)
                    session.conn.close()

    # ---- serving -----------------------------------------------------------------------
    async def start(
        self, handler_factory: Callable[[], Connection], sock: socket.socket | None = None
    ) -> None:
        """Serves connections: on the configured address, or on `sock`, a listening socket
        every shard of a multi-shard server accepts from."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if sock is not None:
            self._server = await loop.create_server(handler_factory, sock=sock)
        else:
            self._server = await loop.create_server(
                handler_factory, self.config.tcp_host, self.config.tcp_port, reuse_address=True
            )
        sock = self._server.sockets[0]
        self.bound_port = sock.getsockname()[1]
        self._tasks.append(asyncio.ensure_future(self._flush_ticker()))
        self._tasks.append(asyncio.ensure_future(self._retry_ticker()))
        if self.config.durability.fsync is FsyncPolicy.INTERVAL:
            self._tasks.append(asyncio.ensure_future(self._fsync_ticker()))
        if self.config.retention.cleaner_enabled:
            self._tasks.append(asyncio.ensure_future(self._retention_ticker()))
        if self.config.heartbeat.enabled:
            self._tasks.append(asyncio.ensure_future(self._heartbeat_ticker()))

    async def stop(self) -> list[Unpersisted]:
        """Stops accepting, closes connections, flushes and syncs everything; returns what
        could not be persisted (see `close`)."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            if session.conn is not None:
                session.conn.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        return self.close()


def _entity_id(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def _entity_dirs(parent: Path) -> list[Path]:
    """The numbered entity folders in `parent` (anything else there is not ours to judge)."""
    if not parent.is_dir():
        return []
    return sorted((p for p in parent.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
