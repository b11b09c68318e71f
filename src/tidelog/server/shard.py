"""One server process: owns the metadata, the partitions and the sessions, and runs the loop.

Today there is one shard; it is the single writer of every piece of state (no locks: every
mutation runs on its event loop). The shape follows DESIGN.md so that more shards can be
added: the shard owns partitions by (stream, topic, partition) key, metadata changes go
through ``metadata.apply`` plus the metadata log, and the I/O shell (connection.py) never
touches state directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tidelog import auth
from tidelog.config import Config, FsyncPolicy
from tidelog.metadata import (
    CreateUser,
    Metadata,
    MetadataDefaults,
    Op,
    StreamMeta,
    TopicMeta,
)
from tidelog.permissions import ROOT_PERMISSIONS
from tidelog.server.connection import Connection
from tidelog.storage.io import BufferedIO, DirectIO, FileIO
from tidelog.storage.metalog import MetaLog
from tidelog.storage.partition import Partition, PartitionConfig
from tidelog.storage.segment import DIRECT_SUFFIXES
from tidelog.storage.writer import Writer
from tidelog.wire.codes import NO_USER_ID

log = logging.getLogger(__name__)

PartitionKey = tuple[int, int, int]


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

    @property
    def wire_user_id(self) -> int:
        return NO_USER_ID if self.user_id is None else self.user_id


@dataclass
class StartupReport:
    streams: int = 0
    topics: int = 0
    partitions: int = 0
    messages: int = 0
    segments: int = 0
    truncated_bytes: int = 0
    rebuilt_indexes: int = 0
    quarantined: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    root_created: bool = False


class Shard:
    def __init__(
        self,
        config: Config,
        clock_us: Callable[[], int] = wall_clock_us,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.clock_us = clock_us
        self.random_bytes = random_bytes
        self.data_dir = Path(config.data_dir)
        self.metadata: Metadata
        self.metalog: MetaLog
        self.partitions: dict[PartitionKey, Partition] = {}
        self.sessions: dict[int, Session] = {}
        self._next_client_id = 1
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
            verify_checksums_on_open=config.system.verify_checksums_on_open,
            cache_bytes=config.system.partition_cache_bytes,
        )
        self.io: FileIO = BufferedIO(writeback_bytes=config.durability.writeback_bytes)
        # Disk writes run on this thread so the event loop keeps serving while they happen.
        self.writer = Writer(on_complete=self._on_write_done)
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
        report = StartupReport()
        self.started_at_us = self.clock_us()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.config.system.io == "direct":
            if not DirectIO.supported(self.data_dir):
                raise RuntimeError(f"system.io = 'direct' but {self.data_dir} refuses O_DIRECT")
            # Under fsync=always every acknowledgement waits for the log anyway: O_DSYNC makes
            # each write durable in one device round trip instead of write + fdatasync.
            dsync = self.config.durability.fsync is FsyncPolicy.ALWAYS
            self.io = DirectIO(direct_suffixes=DIRECT_SUFFIXES, dsync=dsync)
        defaults = MetadataDefaults(
            segment_size_bytes=self.config.system.segment_size_bytes,
            message_expiry=self.config.system.message_expiry_us,
            max_topic_size=self.config.system.max_topic_size_bytes,
        )
        self.metalog, self.metadata = MetaLog.open(self.data_dir / "metadata", defaults)
        if not self.metadata.users:
            root = self.config.root
            auth.validate_username(root.username)
            auth.validate_password(root.password)
            self.apply(
                CreateUser(
                    username=root.username,
                    password_hash=auth.hash_password(root.password),
                    status=1,
                    permissions=ROOT_PERMISSIONS,
                    created_at_us=self.clock_us(),
                )
            )
            report.root_created = True
        known: set[Path] = set()
        for stream in self.metadata.streams.values():
            report.streams += 1
            for topic in stream.topics.values():
                report.topics += 1
                for pid in topic.partitions:
                    key = (stream.id, topic.id, pid)
                    part = self.open_partition(key)
                    known.add(self.partition_dir(key))
                    rec = part.recovery
                    report.partitions += 1
                    report.messages += part.messages_count
                    report.segments += part.segments_count
                    report.truncated_bytes += rec.truncated_bytes
                    report.rebuilt_indexes += rec.rebuilt_indexes
                    report.quarantined.extend(rec.quarantined)
                    report.problems.extend(f"partition {key}: {p}" for p in rec.problems)
        self._remove_orphans(known)
        return report

    def _remove_orphans(self, known: set[Path]) -> None:
        """Partition folders that metadata no longer names are leftovers of an interrupted delete."""
        streams_dir = self.data_dir / "streams"
        if not streams_dir.is_dir():
            return
        for part_dir in streams_dir.glob("*/topics/*/partitions/*"):
            if part_dir.is_dir() and part_dir not in known:
                log.warning("removing orphaned partition folder %s", part_dir)
                shutil.rmtree(part_dir, ignore_errors=True)
        for topic_dir in streams_dir.glob("*/topics/*"):
            s, t = int(topic_dir.parent.parent.name), int(topic_dir.name)
            stream = self.metadata.streams.get(s)
            if stream is None or t not in stream.topics:
                shutil.rmtree(topic_dir, ignore_errors=True)
        for stream_dir in streams_dir.glob("*"):
            if stream_dir.name.isdigit() and int(stream_dir.name) not in self.metadata.streams:
                shutil.rmtree(stream_dir, ignore_errors=True)

    def open_partition(self, key: PartitionKey) -> Partition:
        part = Partition.open(
            self.partition_dir(key), key[2], self.partition_config, io=self.io, writer=self.writer
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
        for part in self.partitions.values():
            if part.cache_budget_bytes != budget:
                part.set_cache_budget(budget)

    def apply(self, op: Op) -> object:
        """Applies a metadata op and makes it durable before anyone sees the result."""
        result = self.metadata.apply(op)  # validates; raises IggyError without side effects
        self.metalog.append(op)
        return result

    def close(self) -> None:
        for part in self.partitions.values():
            try:
                part.flush(fsync=True)
                part.close()
            except OSError:
                log.exception("closing partition %d failed", part.partition_id)
        self.partitions.clear()
        self.writer.close()  # after the partitions: their closes still submit jobs
        self.metalog.close()

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
                except OSError:
                    log.exception("writing partition %s failed; it refuses writes until restart", key)

    # ---- sessions ----------------------------------------------------------------------
    def open_session(self, conn: Connection | None, address: str) -> Session:
        now = self.clock_us()
        session = Session(self._next_client_id, address, conn, now)
        self._next_client_id += 1
        self.sessions[session.client_id] = session
        return session

    def close_session(self, session: Session) -> None:
        self.sessions.pop(session.client_id, None)
        self.metadata.leave_all(session.client_id)

    # ---- partitions --------------------------------------------------------------------
    def topic_partitions(self, topic: TopicMeta) -> list[Partition]:
        return [self.partitions[(topic.stream_id, topic.id, pid)] for pid in sorted(topic.partitions)]

    def topic_totals(self, topic: TopicMeta) -> tuple[int, int]:
        size = count = 0
        for part in self.topic_partitions(topic):
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

    def drop_partition(self, key: PartitionKey) -> None:
        part = self.partitions.pop(key, None)
        self._dirty.discard(key)
        if part is not None:
            part.destroy()
            self._share_cache()
        else:
            shutil.rmtree(self.partition_dir(key), ignore_errors=True)

    def create_partition(self, key: PartitionKey) -> Partition:
        """A partition metadata has just created: it starts empty, whatever an earlier entity
        with a reused id may have left behind (a delete whose cleanup was interrupted)."""
        shutil.rmtree(self.partition_dir(key), ignore_errors=True)
        return self.open_partition(key)

    def drop_topic(self, stream_id: int, topic_id: int, partition_ids: list[int]) -> None:
        """Everything of a topic that metadata has just deleted: partitions, files, counters."""
        for pid in partition_ids:
            self.drop_partition((stream_id, topic_id, pid))
        shutil.rmtree(self.topic_dir(stream_id, topic_id), ignore_errors=True)
        self.balanced_counters.pop((stream_id, topic_id), None)

    def drop_stream(self, stream_id: int, topics: list[tuple[int, list[int]]]) -> None:
        for topic_id, partition_ids in topics:
            self.drop_topic(stream_id, topic_id, partition_ids)
        shutil.rmtree(self.stream_dir(stream_id), ignore_errors=True)

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
    async def start(self, handler_factory: Callable[[], Connection]) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._server = await loop.create_server(
            handler_factory, self.config.tcp_host, self.config.tcp_port, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.bound_port = sock.getsockname()[1]
        self._tasks.append(asyncio.ensure_future(self._flush_ticker()))
        if self.config.durability.fsync is FsyncPolicy.INTERVAL:
            self._tasks.append(asyncio.ensure_future(self._fsync_ticker()))
        if self.config.retention.cleaner_enabled:
            self._tasks.append(asyncio.ensure_future(self._retention_ticker()))
        if self.config.heartbeat.enabled:
            self._tasks.append(asyncio.ensure_future(self._heartbeat_ticker()))

    async def stop(self) -> None:
        """Stops accepting, closes connections, flushes and syncs everything."""
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
        self.close()


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
