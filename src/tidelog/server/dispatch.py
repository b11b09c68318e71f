"""Command code → handler: authentication, permissions, and the glue between codec and state.

Each handler gets a decoded request and the caller's session, checks who may do it
(``permissions``), changes state through the shard (metadata ops are logged before they are
visible; data goes to the partition that owns it), and returns the reply payload, which
``handle`` returns as a typed result (``connection.Ok``: the connection adds the 0.8 header).
Errors are ``IggyError`` and become an error reply; the connection stays usable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import platform
import resource
import shutil
import socket
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from tidelog import auth
from tidelog import metadata as md
from tidelog import permissions as perm
from tidelog.config import FsyncPolicy, render_config
from tidelog.server.connection import OK_EMPTY, Connection, Failed, Ok, RequestKey, Result
from tidelog.server.shard import PartitionKey, Session, Shard
from tidelog.storage.integrity import StoreFormat
from tidelog.storage.io import FileRange, join_pieces
from tidelog.storage.partition import Partition, PollResult
from tidelog.storage.segment import Piece
from tidelog.wire import batch as wbatch
from tidelog.wire import framing
from tidelog.wire import requests as c
from tidelog.wire.codes import (
    MAX_TOKENS_PER_USER,
    PAT_NAME_LEN_MAX,
    PAT_NAME_LEN_MIN,
    UNAUTHENTICATED_COMMANDS,
    Command,
    IggyError,
    Status,
)
from tidelog.wire.primitives import Consumer, ConsumerKind, PollingKind, identifier_from_user
from tidelog.wire.records import (
    ClientDetails,
    ClientInfo,
    ClusterMetadata,
    ClusterNode,
    ConsumerGroupDetails,
    ConsumerGroupInfo,
    ConsumerGroupMember,
    ConsumerOffsetInfo,
    Identity,
    PartitionInfo,
    PersonalAccessTokenInfo,
    PollHeader,
    RawPersonalAccessToken,
    Stats,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    UserDetails,
    UserInfo,
)
from tidelog.wire.v09.batch import (
    BATCH_HEADER_SIZE,
    Batch09,
    BatchError,
    file_records_to_v08,
    record_from_v08,
    record_in_place,
    records_to_v08,
    v09_to_v08,
)

log = logging.getLogger(__name__)

# A 0.9 topic option value (0.9 reference 2.8): acknowledged once on disk.
PERSISTED = "persisted"
SERVER_VERSION = "0.8.0"
SERVER_SEMVER = 8000  # major * 10^6 + minor * 10^3 + patch, as the Stats record wants

# Commands that change logged metadata: refused with METADATA_READ_ONLY, before any other
# check, once a metadata write has failed (Shard.apply refuses them too).
METADATA_COMMANDS: frozenset[int] = frozenset(
    {
        Command.CREATE_USER,
        Command.DELETE_USER,
        Command.UPDATE_USER,
        Command.UPDATE_PERMISSIONS,
        Command.CHANGE_PASSWORD,
        Command.CREATE_PERSONAL_ACCESS_TOKEN,
        Command.DELETE_PERSONAL_ACCESS_TOKEN,
        Command.CREATE_STREAM,
        Command.DELETE_STREAM,
        Command.UPDATE_STREAM,
        Command.CREATE_TOPIC,
        Command.DELETE_TOPIC,
        Command.UPDATE_TOPIC,
        Command.CREATE_PARTITIONS,
        Command.DELETE_PARTITIONS,
        Command.CREATE_CONSUMER_GROUP,
        Command.DELETE_CONSUMER_GROUP,
    }
)

Handler = Callable[[Session, Any], "bytes | Awaitable[bytes | None] | None"]


def _reply(payload: bytes | None) -> Ok:
    return Ok((payload,)) if payload else OK_EMPTY


def _deny() -> IggyError:
    return IggyError(Status.UNAUTHORIZED)


def records_as_v08(result: PollResult, max_bytes: int) -> PollResult:
    """Polled 0.9 records as 0.8 messages (whole-buffer conversions, C kernel), within
    `max_bytes`: a 0.8 message is 16 bytes longer than its frame, so the last few messages
    the stored bytes fitted may not fit converted (at least one stays). Whole records in a
    file are read straight into their reply buffer and converted there; pieces in memory
    (the tail, cut records) are converted into a new one."""
    parts: list[tuple[bytearray, np.ndarray, int]] = []
    in_memory: list[Piece] = []
    for piece in result.chunks:
        if isinstance(piece, FileRange):
            if in_memory:
                parts.append(_converted(in_memory))
                in_memory = []
            parts.append(file_records_to_v08(piece.fd, piece.offset, piece.length, result.count))
        else:
            in_memory.append(piece)
    if in_memory:
        parts.append(_converted(in_memory))
    assert sum(len(ends) for _, ends, _ in parts) == result.count
    chunks: list[Piece] = []
    kept = room = 0
    for data, ends, size in parts:
        if room + size > max_bytes:
            fit = max(int(ends.searchsorted(max_bytes - room, side="right")), 0 if kept else 1)
            if fit:
                chunks.append(memoryview(data)[: int(ends[fit - 1])])
            kept += fit
            break
        chunks.append(memoryview(data)[:size])
        kept += len(ends)
        room += size
    return PollResult(result.first_offset, kept, chunks, StoreFormat.V08)


def _converted(pieces: list[Piece]) -> tuple[bytearray, np.ndarray, int]:
    """Records in memory (whole, or a cut record's rewritten header and its frames) as 0.8
    messages: (buffer, ends, size)."""
    data, ends = records_to_v08(join_pieces(pieces))
    return data, ends, len(data)


def _when_saved(done: concurrent.futures.Future[None]) -> Awaitable[None] | None:
    """None when a consumer-offset change is complete (it raised at once if it failed); else
    what the reply waits on: its fdatasync on the writer thread (fsync = always). A failure
    there is IggyError CANNOT_SAVE_CONSUMER_OFFSET, and the stored value did not change."""
    if done.done():
        done.result()
        return None
    return asyncio.wrap_future(done)


async def _after(saved: Awaitable[None], reply: Result) -> Result:
    await saved
    return reply


@dataclass(frozen=True, slots=True)
class Appended:
    key: PartitionKey
    base_offset: int
    durable: concurrent.futures.Future[None] | None  # under fsync=always: the sync to await


@dataclass(frozen=True, slots=True)
class Polled:
    header: PollHeader
    chunks: list[Piece]  # stored units of `store_format`, in offset order
    saved: Awaitable[None] | None  # the auto-commit's sync, when the reply must wait for it
    store_format: StoreFormat = StoreFormat.V08


def consumer_key(consumer: Consumer) -> int:
    """Offsets of individual consumers are keyed by u32: numeric ids as is, names by XXH32."""
    if isinstance(consumer.id, int):
        return consumer.id
    return xxhash.xxh32_intdigest(consumer.id.encode())


class Dispatcher:
    """Implements connection.Handler for the Iggy 0.8 classic protocol."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.md = shard.metadata
        self.send_limit_bytes = shard.config.tcp.max_send_payload_bytes
        self.unauthenticated_limit_bytes = shard.config.tcp.max_unauthenticated_payload_bytes
        self.fsync_always = shard.config.durability.fsync is FsyncPolicy.ALWAYS
        self.max_poll_bytes = shard.config.tcp.max_poll_reply_bytes
        self.heartbeat_enabled = shard.config.heartbeat.enabled
        self.handlers: dict[int, Handler] = {
            Command.PING: self.ping,
            Command.GET_STATS: self.get_stats,
            Command.GET_SNAPSHOT: self.get_snapshot,
            Command.GET_CLUSTER_METADATA: self.get_cluster_metadata,
            Command.GET_ME: self.get_me,
            Command.GET_CLIENT: self.get_client,
            Command.GET_CLIENTS: self.get_clients,
            Command.GET_USER: self.get_user,
            Command.GET_USERS: self.get_users,
            Command.CREATE_USER: self.create_user,
            Command.DELETE_USER: self.delete_user,
            Command.UPDATE_USER: self.update_user,
            Command.UPDATE_PERMISSIONS: self.update_permissions,
            Command.CHANGE_PASSWORD: self.change_password,
            Command.LOGIN_USER: self.login_user,
            Command.LOGOUT_USER: self.logout_user,
            Command.GET_PERSONAL_ACCESS_TOKENS: self.get_pats,
            Command.CREATE_PERSONAL_ACCESS_TOKEN: self.create_pat,
            Command.DELETE_PERSONAL_ACCESS_TOKEN: self.delete_pat,
            Command.LOGIN_WITH_PERSONAL_ACCESS_TOKEN: self.login_with_pat,
            Command.FLUSH_UNSAVED_BUFFER: self.flush_unsaved_buffer,
            Command.GET_CONSUMER_OFFSET: self.get_consumer_offset,
            Command.STORE_CONSUMER_OFFSET: self.store_consumer_offset,
            Command.DELETE_CONSUMER_OFFSET: self.delete_consumer_offset,
            Command.GET_STREAM: self.get_stream,
            Command.GET_STREAMS: self.get_streams,
            Command.CREATE_STREAM: self.create_stream,
            Command.DELETE_STREAM: self.delete_stream,
            Command.UPDATE_STREAM: self.update_stream,
            Command.PURGE_STREAM: self.purge_stream,
            Command.GET_TOPIC: self.get_topic,
            Command.GET_TOPICS: self.get_topics,
            Command.CREATE_TOPIC: self.create_topic,
            Command.DELETE_TOPIC: self.delete_topic,
            Command.UPDATE_TOPIC: self.update_topic,
            Command.PURGE_TOPIC: self.purge_topic,
            Command.CREATE_PARTITIONS: self.create_partitions,
            Command.DELETE_PARTITIONS: self.delete_partitions,
            Command.DELETE_SEGMENTS: self.delete_segments,
            Command.GET_CONSUMER_GROUP: self.get_consumer_group,
            Command.GET_CONSUMER_GROUPS: self.get_consumer_groups,
            Command.CREATE_CONSUMER_GROUP: self.create_consumer_group,
            Command.DELETE_CONSUMER_GROUP: self.delete_consumer_group,
            Command.JOIN_CONSUMER_GROUP: self.join_consumer_group,
            Command.LEAVE_CONSUMER_GROUP: self.leave_consumer_group,
        }
        data_plane = {Command.SEND_MESSAGES, Command.POLL_MESSAGES}  # decoded by their own paths
        assert set(self.handlers) | data_plane == {int(x) for x in Command}

    # ---- connection.Handler ------------------------------------------------------------
    def payload_limit(self, conn: Connection, code: RequestKey) -> int:
        assert isinstance(code, int)
        session = conn.session
        if isinstance(session, Session) and session.user_id is None:
            # Until it logs in, a client may only ping and log in, whose payloads are tiny: a
            # small cap on every command, so it cannot make the server take in megabytes only
            # to be told 40 (or hold them by stalling mid-frame).
            return self.unauthenticated_limit_bytes  # at most the control cap (config checks)
        return framing.payload_limit(code, self.send_limit_bytes)

    def authenticated(self, conn: Connection) -> bool:
        session = conn.session
        return isinstance(session, Session) and session.user_id is not None

    def connection_made(self, conn: Connection) -> None:
        conn.session = self.shard.open_session(conn, conn.peer)

    def connection_lost(self, conn: Connection) -> None:
        session = conn.session
        if isinstance(session, Session):
            self.shard.close_session(session)

    def handle(
        self, conn: Connection, code: RequestKey, payload: memoryview, owned: bool
    ) -> Result | Awaitable[Result]:
        assert isinstance(code, int)
        session = conn.session
        if not isinstance(session, Session):
            session = self.shard.open_session(conn, conn.peer)
            conn.session = session
        if self.shard.stopping:
            return Failed(Status.DISCONNECTED, close=True)
        if not session.proxy and session.client_id not in self.shard.sessions:
            # Evicted (heartbeat): the reference server answers StaleClient and closes.
            return Failed(Status.STALE_CLIENT, close=True)
        if self.heartbeat_enabled:
            # Any request shows the client is alive, not only Ping: a busy producer that never
            # pings must not be evicted.
            session.last_heartbeat_us = self.shard.clock_us()
        if code not in UNAUTHENTICATED_COMMANDS and session.user_id is None:
            if code in self.handlers or code in (Command.SEND_MESSAGES, Command.POLL_MESSAGES):
                raise IggyError(Status.UNAUTHENTICATED)
            raise IggyError(Status.INVALID_COMMAND, f"unknown command {code}")
        if code in METADATA_COMMANDS and self.shard.metadata_read_only is not None:
            raise IggyError(Status.METADATA_READ_ONLY, self.shard.metadata_read_only)
        if code == Command.SEND_MESSAGES:
            durable = self.send_messages(session, payload, owned)
            if durable is not None:
                return self._await_write(durable)
            return OK_EMPTY
        if code == Command.POLL_MESSAGES:
            return self.poll_messages(session, c.PollMessages.decode(payload))
        handler = self.handlers.get(code)
        if handler is None:
            raise IggyError(Status.INVALID_COMMAND, f"unknown command {code}")
        request = c.decode_request(code, payload)
        result = handler(session, request)
        if isinstance(result, Awaitable):
            return self._await_reply(result)
        return _reply(result)

    async def _await_reply(self, pending: Awaitable[bytes | None]) -> Result:
        return _reply(await pending)

    async def _await_write(self, written: concurrent.futures.Future[None]) -> Result:
        try:
            await asyncio.wrap_future(written)
        except OSError as exc:
            # Not acknowledged. The shard retries the partition's writes (README, Durability).
            raise IggyError(Status.CANNOT_SAVE_MESSAGES, f"write failed: {exc}") from exc
        return OK_EMPTY

    # ---- helpers -----------------------------------------------------------------------
    def _perms(self, session: Session) -> perm.Permissions | None:
        assert session.user_id is not None
        user = self.md.user(session.user_id)
        return None if user is None else user.permissions

    def _require(self, allowed: bool) -> None:
        if not allowed:
            raise _deny()

    def _stream(self, ident: int | str) -> md.StreamMeta:
        return self.md.require_stream(ident)

    def topic(self, stream_ident: int | str, topic_ident: int | str) -> md.TopicMeta:
        return self.md.require_topic(self.md.require_stream(stream_ident), topic_ident)

    def partition(self, topic: md.TopicMeta, partition_id: int) -> tuple[PartitionKey, Partition]:
        self.md.require_partition(topic, partition_id)
        key = (topic.stream_id, topic.id, partition_id)
        part = self.shard.partitions.get(key)
        if part is None:  # another shard's: the router sends requests to owners
            raise IggyError(Status.PARTITION_NOT_FOUND, f"partition {partition_id} is not on this shard")
        return key, part

    def stream_info(self, stream: md.StreamMeta) -> StreamInfo:
        size, count = self.shard.stream_totals(stream)
        return StreamInfo(
            id=stream.id,
            created_at_us=stream.created_at_us,
            topics_count=len(stream.topics),
            size_bytes=size,
            messages_count=count,
            name=stream.name,
        )

    def topic_info(self, topic: md.TopicMeta) -> TopicInfo:
        size, count = self.shard.topic_totals(topic)
        return TopicInfo(
            id=topic.id,
            created_at_us=topic.created_at_us,
            partitions_count=len(topic.partitions),
            message_expiry=topic.message_expiry,
            compression_algorithm=topic.compression_algorithm,
            max_topic_size=topic.max_topic_size,
            replication_factor=topic.replication_factor,
            size_bytes=size,
            messages_count=count,
            name=topic.name,
        )

    def topic_details(self, topic: md.TopicMeta) -> TopicDetails:
        parts = []
        for pid in sorted(topic.partitions):
            part = self.shard.partition_view((topic.stream_id, topic.id, pid))
            parts.append(
                PartitionInfo(
                    id=pid,
                    created_at_us=topic.partitions[pid].created_at_us,
                    segments_count=part.segments_count,
                    current_offset=part.current_offset,
                    size_bytes=part.size_bytes,
                    messages_count=part.messages_count,
                )
            )
        return TopicDetails(topic=self.topic_info(topic), partitions=parts)

    def user_details(self, user: md.UserMeta) -> UserDetails:
        return UserDetails(
            user=UserInfo(
                id=user.id, created_at_us=user.created_at_us, status=user.status, username=user.username
            ),
            permissions=user.permissions,
        )

    def _group_info(self, group: md.GroupMeta) -> ConsumerGroupInfo:
        return ConsumerGroupInfo(
            id=group.id,
            partitions_count=len(group.partition_ids),
            members_count=len(group.members),
            name=group.name,
        )

    def _client_details(self, session: Session) -> ClientDetails:
        groups = self.md.client_groups(session.client_id)
        return ClientDetails(
            client=self._client_info(session, len(groups)),
            groups=list(groups),
        )

    def _client_info(self, session: Session, groups_count: int | None = None) -> ClientInfo:
        if groups_count is None:
            groups_count = len(self.md.client_groups(session.client_id))
        return ClientInfo(
            client_id=session.client_id,
            user_id=session.wire_user_id,
            transport=1,
            address=session.address,
            consumer_groups_count=groups_count,
        )

    # ---- system ------------------------------------------------------------------------
    def ping(self, session: Session, req: c.Ping) -> None:
        session.last_heartbeat_us = self.shard.clock_us()

    def get_stats(self, session: Session, req: c.GetStats) -> bytes:
        self._require(perm.servers_read(self._perms(session)))
        return self.stats().encode()

    def stats(self) -> Stats:
        shard = self.shard
        streams = topics = partitions = segments = groups = 0
        messages = size = 0
        for stream in self.md.streams.values():
            streams += 1
            for topic in stream.topics.values():
                topics += 1
                groups += len(topic.groups)
                for pid in topic.partitions:
                    part = shard.partition_view((topic.stream_id, topic.id, pid))
                    partitions += 1
                    segments += part.segments_count
                    messages += part.messages_count
                    size += part.size_bytes
        usage = resource.getrusage(resource.RUSAGE_SELF)
        page = os.sysconf("SC_PAGE_SIZE")
        total_mem = os.sysconf("SC_PHYS_PAGES") * page
        avail_mem = os.sysconf("SC_AVPHYS_PAGES") * page
        disk = shutil.disk_usage(shard.data_dir)
        now = shard.clock_us()
        run_time_us = max(0, now - shard.started_at_us)
        cpu_s = usage.ru_utime + usage.ru_stime
        cpu_pct = 100.0 * cpu_s / max(run_time_us / 1e6, 1e-6)
        uname = platform.uname()
        return Stats(
            process_id=shard.server_pid,
            cpu_usage=float(cpu_pct),
            total_cpu_usage=float(os.getloadavg()[0] * 100 / (os.cpu_count() or 1)),
            memory_usage_bytes=usage.ru_maxrss * 1024,
            total_memory_bytes=total_mem,
            available_memory_bytes=avail_mem,
            run_time_us=run_time_us,
            start_time_us=shard.started_at_us,
            read_bytes=usage.ru_inblock * 512,
            written_bytes=usage.ru_oublock * 512,
            messages_size_bytes=size,
            streams_count=streams,
            topics_count=topics,
            partitions_count=partitions,
            segments_count=segments,
            messages_count=messages,
            clients_count=len(shard.sessions) + shard.remote_clients,
            consumer_groups_count=groups,
            hostname=socket.gethostname(),
            os_name=uname.system,
            os_version=uname.version,
            kernel_version=uname.release,
            iggy_server_version=SERVER_VERSION,
            iggy_server_semver=SERVER_SEMVER,
            cache_metrics=[],
            threads_count=1,
            free_disk_space_bytes=disk.free,
            total_disk_space_bytes=disk.total,
        )

    def get_snapshot(self, session: Session, req: c.GetSnapshot) -> bytes:
        """A troubleshooting ZIP (not a data backup), as Iggy's snapshot command returns.

        It needs the servers-read rule (the reference's read/manage_servers) and holds no
        secret: file names and sizes (no contents), the process, resource usage, and the config
        rendered with its secret fields redacted. No part reads metadata (users, hashes, tokens).
        """
        self._require(perm.servers_read(self._perms(session)))
        methods = {1: zipfile.ZIP_STORED, 2: zipfile.ZIP_DEFLATED, 3: zipfile.ZIP_BZIP2}
        method = methods.get(req.compression, zipfile.ZIP_LZMA)
        types = set(req.snapshot_types)
        if 100 in types and len(types) > 1:
            raise IggyError(Status.INVALID_COMMAND, "snapshot type 'all' cannot be combined")
        if 100 in types:
            types = {1, 2, 3, 4, 5, 6}
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=method) as zf:
            if 1 in types:
                listing = "\n".join(
                    f"{p.stat().st_size:>14} {p.relative_to(self.shard.data_dir)}"
                    for p in sorted(self.shard.data_dir.rglob("*"))
                    if p.is_file()
                )
                zf.writestr("filesystem_overview.txt", listing)
            if 2 in types:
                zf.writestr("process_list.txt", f"{self.shard.server_pid} tidelog\n")
            if 3 in types:
                zf.writestr("resource_usage.txt", repr(resource.getrusage(resource.RUSAGE_SELF)))
            if 4 in types:
                zf.writestr("test.txt", "test")
            if 5 in types:
                zf.writestr("server_logs.txt", "logs go to standard error\n")
            if 6 in types:
                zf.writestr("server_config.txt", render_config(self.shard.config))
        return out.getvalue()

    def get_cluster_metadata(self, session: Session, req: c.GetClusterMetadata) -> bytes:
        node = ClusterNode(
            name="tidelog-node",
            ip=self.shard.config.tcp_host,
            tcp_port=self.shard.bound_port,
            quic_port=0,
            http_port=0,
            websocket_port=0,
            role=0,
            status=0,
        )
        return ClusterMetadata(name="single-node", nodes=[node]).encode()

    def get_me(self, session: Session, req: c.GetMe) -> bytes:
        return self._client_details(session).encode()

    def get_client(self, session: Session, req: c.GetClient) -> bytes | None:
        self._require(perm.servers_read(self._perms(session)))
        if req.client_id == 0:
            raise IggyError(Status.INVALID_CLIENT_ID)
        other = self.shard.sessions.get(req.client_id)
        return None if other is None else self._client_details(other).encode()

    def get_clients(self, session: Session, req: c.GetClients) -> bytes:
        self._require(perm.servers_read(self._perms(session)))
        return b"".join(self._client_info(s).encode() for s in self.shard.sessions.values())

    # ---- users -------------------------------------------------------------------------
    # The get_*/find_*/new_* methods return metadata, checked against the caller's rights;
    # each generation's handler encodes it in its own layout.
    def find_user(self, session: Session, ident: int | str) -> md.UserMeta | None:
        user = self.md.user(ident)
        if user is None or user.id != session.user_id:
            self._require(perm.users_read(self._perms(session)))
        return user

    def list_users(self, session: Session) -> list[UserInfo]:
        self._require(perm.users_read(self._perms(session)))
        users = sorted(self.md.users.values(), key=lambda u: u.id)
        return [
            UserInfo(id=u.id, created_at_us=u.created_at_us, status=u.status, username=u.username)
            for u in users
        ]

    def get_user(self, session: Session, req: c.GetUser) -> bytes | None:
        user = self.find_user(session, req.user_id)
        return None if user is None else self.user_details(user).encode()

    def get_users(self, session: Session, req: c.GetUsers) -> bytes:
        return b"".join(u.encode() for u in self.list_users(session))

    async def create_user(self, session: Session, req: c.CreateUser) -> bytes:
        return self.user_details(await self.new_user(session, req)).encode()

    async def new_user(self, session: Session, req: c.CreateUser) -> md.UserMeta:
        self._require(perm.users_manage(self._perms(session)))
        auth.validate_username(req.username)
        auth.validate_password(req.password)
        if self.md.user_by_name(req.username) is not None:
            raise IggyError(Status.USER_ALREADY_EXISTS)
        password_hash = await asyncio.to_thread(auth.hash_password, req.password)
        op = md.CreateUser(
            username=req.username,
            password_hash=password_hash,
            status=req.status,
            permissions=req.permissions,
            created_at_us=self.shard.clock_us(),
        )
        user = self.shard.apply(op)
        assert isinstance(user, md.UserMeta)
        return user

    def delete_user(self, session: Session, req: c.DeleteUser) -> None:
        self._require(perm.users_manage(self._perms(session)))
        user = self.md.require_user(req.user_id)
        self.shard.apply(md.DeleteUser(user_id=user.id))
        for other in self.shard.sessions.values():
            if other.user_id == user.id:
                other.user_id = None

    def update_user(self, session: Session, req: c.UpdateUser) -> None:
        self._require(perm.users_manage(self._perms(session)))
        user = self.md.require_user(req.user_id)
        if req.username is not None:
            auth.validate_username(req.username)
        self.shard.apply(md.UpdateUser(user_id=user.id, username=req.username, status=req.status))

    def update_permissions(self, session: Session, req: c.UpdatePermissions) -> None:
        self._require(perm.users_manage(self._perms(session)))
        user = self.md.require_user(req.user_id)
        self.shard.apply(md.UpdatePermissions(user_id=user.id, permissions=req.permissions))

    async def change_password(self, session: Session, req: c.ChangePassword) -> None:
        user = self.md.require_user(req.user_id)
        if user.id != session.user_id:
            self._require(perm.users_manage(self._perms(session)))
        auth.validate_password(req.current_password)
        auth.validate_password(req.new_password)
        ok = await asyncio.to_thread(auth.verify_password, user.password_hash, req.current_password)
        if not ok:
            raise IggyError(Status.INVALID_CREDENTIALS)
        new_hash = await asyncio.to_thread(auth.hash_password, req.new_password)
        self.shard.apply(md.ChangePassword(user_id=user.id, password_hash=new_hash))

    async def login_user(self, session: Session, req: c.LoginUser) -> bytes:
        auth.validate_username(req.username)
        auth.validate_password(req.password)
        # A name made only of digits is a user id, as the SDK's Identifier rule makes it.
        ident: int | str = identifier_from_user(req.username)
        user = self.md.user(ident)
        if user is None:
            raise IggyError(Status.INVALID_CREDENTIALS)
        ok = await asyncio.to_thread(auth.verify_password, user.password_hash, req.password)
        if not ok:
            raise IggyError(Status.INVALID_CREDENTIALS)
        if user.status != 1:
            raise IggyError(Status.USER_INACTIVE)
        session.user_id = user.id
        return Identity(user_id=user.id).encode()

    def logout_user(self, session: Session, req: c.LogoutUser) -> None:
        session.user_id = None

    # ---- personal access tokens --------------------------------------------------------
    def get_pats(self, session: Session, req: c.GetPersonalAccessTokens) -> bytes:
        user = self.md.require_user(session.wire_user_id)
        return b"".join(
            PersonalAccessTokenInfo(name=t.name, expiry_at_us=t.expiry_at_us).encode()
            for t in sorted(user.tokens.values(), key=lambda t: t.name)
        )

    def create_pat(self, session: Session, req: c.CreatePersonalAccessToken) -> bytes:
        user = self.md.require_user(session.wire_user_id)
        if not PAT_NAME_LEN_MIN <= len(req.name.encode()) <= PAT_NAME_LEN_MAX:
            raise IggyError(Status.INVALID_PERSONAL_ACCESS_TOKEN_NAME)
        if req.name in user.tokens:
            raise IggyError(Status.PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS)
        if len(user.tokens) >= MAX_TOKENS_PER_USER:
            raise IggyError(Status.PERSONAL_ACCESS_TOKENS_LIMIT_REACHED)
        expiry_at = auth.pat_expiry_at_us(self.shard.clock_us(), req.expiry)  # or 56
        token = auth.generate_token(self.shard.random_bytes)
        self.shard.apply(
            md.CreatePersonalAccessToken(
                user_id=user.id, name=req.name, token_hash=auth.hash_token(token), expiry_at_us=expiry_at
            )
        )
        return RawPersonalAccessToken(token=token).encode()

    def delete_pat(self, session: Session, req: c.DeletePersonalAccessToken) -> None:
        user = self.md.require_user(session.wire_user_id)
        if req.name not in user.tokens:
            raise IggyError(Status.RESOURCE_NOT_FOUND)
        self.shard.apply(md.DeletePersonalAccessToken(user_id=user.id, name=req.name))

    def login_with_pat(self, session: Session, req: c.LoginWithPersonalAccessToken) -> bytes:
        found = self.md.pat_by_hash(auth.hash_token(req.token))
        if found is None:
            raise IggyError(Status.RESOURCE_NOT_FOUND)
        user, pat = found
        if pat.expired(self.shard.clock_us()):
            raise IggyError(Status.PERSONAL_ACCESS_TOKEN_EXPIRED)
        if user.status != 1:
            raise IggyError(Status.USER_INACTIVE)
        session.user_id = user.id
        return Identity(user_id=user.id).encode()

    # ---- streams -----------------------------------------------------------------------
    def find_stream(self, session: Session, ident: int | str) -> md.StreamMeta | None:
        stream = self.md.stream(ident)
        if stream is not None:
            self._require(perm.stream_read(self._perms(session), stream.id))
        return stream

    def list_streams(self, session: Session) -> list[md.StreamMeta]:
        self._require(perm.streams_read(self._perms(session)))
        return [s for _, s in sorted(self.md.streams.items())]

    def new_stream(self, session: Session, name: str) -> md.StreamMeta:
        self._require(perm.streams_manage(self._perms(session)))
        stream = self.shard.apply(md.CreateStream(name=name, created_at_us=self.shard.clock_us()))
        assert isinstance(stream, md.StreamMeta)
        return stream

    def get_stream(self, session: Session, req: c.GetStream) -> bytes | None:
        stream = self.find_stream(session, req.stream_id)
        if stream is None:
            return None
        topics = [self.topic_info(t) for _, t in sorted(stream.topics.items())]
        return StreamDetails(stream=self.stream_info(stream), topics=topics).encode()

    def get_streams(self, session: Session, req: c.GetStreams) -> bytes:
        return b"".join(self.stream_info(s).encode() for s in self.list_streams(session))

    def create_stream(self, session: Session, req: c.CreateStream) -> bytes:
        return self.stream_info(self.new_stream(session, req.name)).encode()

    def delete_stream(self, session: Session, req: c.DeleteStream) -> None:
        stream = self._stream(req.stream_id)
        self._require(perm.stream_manage(self._perms(session), stream.id))
        doomed = [(t.id, sorted(t.partitions)) for t in stream.topics.values()]
        self.shard.apply(md.DeleteStream(stream_id=stream.id))
        self.shard.drop_stream(stream.id, doomed)

    def update_stream(self, session: Session, req: c.UpdateStream) -> None:
        stream = self._stream(req.stream_id)
        self._require(perm.stream_manage(self._perms(session), stream.id))
        self.shard.apply(md.UpdateStream(stream_id=stream.id, name=req.name))

    def purge_stream(self, session: Session, req: c.PurgeStream) -> None:
        stream = self._stream(req.stream_id)
        self._require(perm.stream_manage(self._perms(session), stream.id))
        for topic in stream.topics.values():
            for part in self.shard.topic_partitions(topic):
                part.purge()

    # ---- topics ------------------------------------------------------------------------
    def find_topic(
        self, session: Session, stream_ident: int | str, topic_ident: int | str
    ) -> md.TopicMeta | None:
        stream = self.md.stream(stream_ident)
        topic = None if stream is None else self.md.topic(stream, topic_ident)
        if topic is not None:
            self._require(perm.topic_read(self._perms(session), topic.stream_id, topic.id))
        return topic

    def list_topics(self, session: Session, stream_ident: int | str) -> list[md.TopicMeta] | None:
        stream = self.md.stream(stream_ident)
        if stream is None:
            return None
        self._require(perm.topics_read(self._perms(session), stream.id))
        return [t for _, t in sorted(stream.topics.items())]

    def new_topic(
        self, session: Session, stream_ident: int | str, make: Callable[[int], md.CreateTopic]
    ) -> md.TopicMeta:
        """Create the topic `make(stream_id)` describes, and its partitions' files."""
        stream = self._stream(stream_ident)
        self._require(perm.topic_create(self._perms(session), stream.id))
        topic = self.shard.apply(make(stream.id))
        assert isinstance(topic, md.TopicMeta)
        for pid in sorted(topic.partitions):
            self.shard.create_partition((stream.id, topic.id, pid))
        return topic

    def get_topic(self, session: Session, req: c.GetTopic) -> bytes | None:
        topic = self.find_topic(session, req.stream_id, req.topic_id)
        return None if topic is None else self.topic_details(topic).encode()

    def get_topics(self, session: Session, req: c.GetTopics) -> bytes | None:
        topics = self.list_topics(session, req.stream_id)
        return None if topics is None else b"".join(self.topic_info(t).encode() for t in topics)

    def create_topic(self, session: Session, req: c.CreateTopic) -> bytes:
        def make(stream_id: int) -> md.CreateTopic:
            return md.CreateTopic(
                stream_id=stream_id,
                name=req.name,
                partitions_count=req.partitions_count,
                compression_algorithm=req.compression_algorithm,
                message_expiry=req.message_expiry,
                max_topic_size=req.max_topic_size,
                replication_factor=req.replication_factor,
                created_at_us=self.shard.clock_us(),
            )

        return self.topic_details(self.new_topic(session, req.stream_id, make)).encode()

    def delete_topic(self, session: Session, req: c.DeleteTopic) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_manage(self._perms(session), topic.stream_id, topic.id))
        pids = sorted(topic.partitions)
        self.shard.apply(md.DeleteTopic(stream_id=topic.stream_id, topic_id=topic.id))
        self.shard.drop_topic(topic.stream_id, topic.id, pids)

    def update_topic(self, session: Session, req: c.UpdateTopic) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_manage(self._perms(session), topic.stream_id, topic.id))
        self.shard.apply(
            md.UpdateTopic(
                stream_id=topic.stream_id,
                topic_id=topic.id,
                compression_algorithm=req.compression_algorithm,
                message_expiry=req.message_expiry,
                max_topic_size=req.max_topic_size,
                replication_factor=req.replication_factor,
                name=req.name,
            )
        )

    def purge_topic(self, session: Session, req: c.PurgeTopic) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_manage(self._perms(session), topic.stream_id, topic.id))
        for part in self.shard.topic_partitions(topic):
            part.purge()

    # ---- partitions and segments -------------------------------------------------------
    def create_partitions(self, session: Session, req: c.CreatePartitions) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_manage(self._perms(session), topic.stream_id, topic.id))
        before = set(topic.partitions)
        self.shard.apply(
            md.CreatePartitions(
                stream_id=topic.stream_id,
                topic_id=topic.id,
                count=req.partitions_count,
                created_at_us=self.shard.clock_us(),
            )
        )
        for pid in sorted(set(topic.partitions) - before):
            self.shard.create_partition((topic.stream_id, topic.id, pid))

    def delete_partitions(self, session: Session, req: c.DeletePartitions) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_manage(self._perms(session), topic.stream_id, topic.id))
        before = set(topic.partitions)
        self.shard.apply(
            md.DeletePartitions(stream_id=topic.stream_id, topic_id=topic.id, count=req.partitions_count)
        )
        for pid in sorted(before - set(topic.partitions)):
            self.shard.drop_partition((topic.stream_id, topic.id, pid))

    def delete_segments(self, session: Session, req: c.DeleteSegments) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_manage(self._perms(session), topic.stream_id, topic.id))
        _, part = self.partition(topic, req.partition_id)
        part.delete_segments(req.segments_count)

    # ---- consumer groups ---------------------------------------------------------------
    def get_consumer_group(self, session: Session, req: c.GetConsumerGroup) -> bytes | None:
        stream = self.md.stream(req.stream_id)
        topic = None if stream is None else self.md.topic(stream, req.topic_id)
        group = None if topic is None else self.md.group(topic, req.group_id)
        if topic is None or group is None:
            return None
        self._require(perm.topic_read(self._perms(session), topic.stream_id, topic.id))
        members = [ConsumerGroupMember(id=m.id, partitions=list(m.partitions)) for m in group.members]
        return ConsumerGroupDetails(group=self._group_info(group), members=members).encode()

    def get_consumer_groups(self, session: Session, req: c.GetConsumerGroups) -> bytes | None:
        stream = self.md.stream(req.stream_id)
        topic = None if stream is None else self.md.topic(stream, req.topic_id)
        if topic is None:
            return None
        self._require(perm.topic_read(self._perms(session), topic.stream_id, topic.id))
        return b"".join(self._group_info(g).encode() for _, g in sorted(topic.groups.items()))

    def create_consumer_group(self, session: Session, req: c.CreateConsumerGroup) -> bytes:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_read(self._perms(session), topic.stream_id, topic.id))
        group = self.shard.apply(
            md.CreateConsumerGroup(stream_id=topic.stream_id, topic_id=topic.id, name=req.name)
        )
        assert isinstance(group, md.GroupMeta)
        return self._group_info(group).encode()

    def delete_consumer_group(self, session: Session, req: c.DeleteConsumerGroup) -> Awaitable[None] | None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_read(self._perms(session), topic.stream_id, topic.id))
        group = self.md.require_group(topic, req.group_id)
        self.shard.apply(
            md.DeleteConsumerGroup(stream_id=topic.stream_id, topic_id=topic.id, group_id=group.id)
        )
        removals = []
        for part in self.shard.topic_partitions(topic):
            if part.get_offset(ConsumerKind.CONSUMER_GROUP, group.id) is not None:
                try:
                    removals.append(part.delete_offset(ConsumerKind.CONSUMER_GROUP, group.id))
                except IggyError as exc:
                    log.error("group %d deleted, but not its stored offset: %s", group.id, exc)
        if any(not r.done() for r in removals):
            return self._group_offsets_removed(group.id, removals)
        return None

    @staticmethod
    async def _group_offsets_removed(group_id: int, removals: list[concurrent.futures.Future[None]]) -> None:
        # The group is gone either way (metadata is logged); a stored offset left behind is
        # logged, not answered: the client could not retry a delete of a group that is gone.
        for removal in removals:
            try:
                await asyncio.wrap_future(removal)
            except IggyError as exc:
                log.error("group %d deleted, but not its stored offset: %s", group_id, exc)

    def join_consumer_group(self, session: Session, req: c.JoinConsumerGroup) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_read(self._perms(session), topic.stream_id, topic.id))
        group = self.md.require_group(topic, req.group_id)
        self.shard.join_group(topic, group.id, session.client_id)

    def leave_consumer_group(self, session: Session, req: c.LeaveConsumerGroup) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.topic_read(self._perms(session), topic.stream_id, topic.id))
        group = self.md.require_group(topic, req.group_id)
        self.shard.leave_group(topic, group.id, session.client_id)
        session.group_partition.pop((topic.stream_id, topic.id, group.id), None)

    # ---- consumer offsets --------------------------------------------------------------
    def _offset_target(
        self, session: Session, consumer: Consumer, topic: md.TopicMeta, partition_id: int | None
    ) -> tuple[Partition, int, int]:
        """Resolves (partition, kind, consumer key) for store/delete (section 3.7)."""
        if consumer.kind == ConsumerKind.CONSUMER:
            _, part = self.partition(topic, 0 if partition_id is None else partition_id)
            return part, 1, consumer_key(consumer)
        group = self.md.require_group(topic, consumer.id)
        member = self.md.member_of(group, session.client_id)
        if member is None:
            raise IggyError(Status.CONSUMER_GROUP_MEMBER_NOT_FOUND)
        if partition_id is None:
            current = session.group_partition.get((topic.stream_id, topic.id, group.id))
            if current is None or current not in member.partitions:
                if not member.partitions:
                    raise IggyError(Status.NOT_RESOLVED_CONSUMER)
                current = member.partitions[0]
            partition_id = current
        elif partition_id not in member.partitions:
            raise IggyError(Status.NOT_RESOLVED_CONSUMER)
        _, part = self.partition(topic, partition_id)
        return part, ConsumerKind.CONSUMER_GROUP, group.id

    def get_consumer_offset(self, session: Session, req: c.GetConsumerOffset) -> bytes | None:
        stream = self.md.stream(req.stream_id)
        topic = None if stream is None else self.md.topic(stream, req.topic_id)
        if topic is None:
            return None
        self._require(perm.poll(self._perms(session), topic.stream_id, topic.id))
        pid = 0 if req.partition_id is None else req.partition_id
        key = (topic.stream_id, topic.id, pid)
        part = self.shard.partitions.get(key)
        if part is None:
            return None
        if req.consumer.kind == ConsumerKind.CONSUMER:
            stored = part.get_offset(ConsumerKind.CONSUMER, consumer_key(req.consumer))
        else:
            group = self.md.group(topic, req.consumer.id)
            stored = None if group is None else part.get_offset(ConsumerKind.CONSUMER_GROUP, group.id)
        if stored is None:
            return None
        return ConsumerOffsetInfo(
            partition_id=pid, current_offset=part.current_offset, stored_offset=stored
        ).encode()

    def store_consumer_offset(self, session: Session, req: c.StoreConsumerOffset) -> Awaitable[None] | None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.poll(self._perms(session), topic.stream_id, topic.id))
        part, kind, key = self._offset_target(session, req.consumer, topic, req.partition_id)
        return self._offset_saved(topic, part, part.store_offset(kind, key, req.offset))

    def delete_consumer_offset(self, session: Session, req: c.DeleteConsumerOffset) -> Awaitable[None] | None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.poll(self._perms(session), topic.stream_id, topic.id))
        part, kind, key = self._offset_target(session, req.consumer, topic, req.partition_id)
        return self._offset_saved(topic, part, part.delete_offset(kind, key))

    def _offset_saved(
        self, topic: md.TopicMeta, part: Partition, done: concurrent.futures.Future[None]
    ) -> Awaitable[None] | None:
        saved = _when_saved(done)
        if saved is None and topic.consumer_offset_durability == PERSISTED and not self.fsync_always:
            # consumer_offset_durability=persisted: the change is synced before the reply.
            return asyncio.wrap_future(part.offsets.sync())
        return saved

    # ---- messages ----------------------------------------------------------------------
    def send_messages(
        self, session: Session, payload: memoryview, owned: bool
    ) -> concurrent.futures.Future[None] | None:
        """Appends the batch; returns a future to await before acknowledging under fsync=always."""
        header = c.SendMessagesHeader.decode(payload)
        index = payload[header.index_offset : header.messages_offset]
        at = header.messages_offset
        if not owned:
            # The journal keeps the batch buffer; a view of the connection's reusable read
            # buffer would be overwritten by the next request. The copy keeps room before the
            # messages for a record header (see `append`).
            start = max(at - BATCH_HEADER_SIZE, 0)
            payload, at = memoryview(bytearray(payload[start:])), at - start
        batch = wbatch.parse_send_batch(index, payload[at:], header.messages_count)
        room = (payload, at)  # the index table before the messages is free once parsed
        appended = self.append(session, header.stream_id, header.topic_id, header.partitioning, batch, room)
        return appended.durable

    def append(
        self,
        session: Session,
        stream_ident: int | str,
        topic_ident: int | str,
        partitioning: c.Partitioning,
        batch: wbatch.Batch | Batch09,
        room: tuple[memoryview, int] | None = None,
    ) -> Appended:
        """Append a validated batch (a parsed 0.8 one, or a 0.9 record) to the partition
        `partitioning` picks, converted whole to the partition's store format if need be.
        `room` is (buffer, position) of a 0.8 batch's messages in a writable buffer whose
        bytes before them may be overwritten: then the record is built in place there."""
        topic = self.topic(stream_ident, topic_ident)
        self._require(perm.send(self._perms(session), topic.stream_id, topic.id))
        pid = session.route_partition
        if pid is None:
            pid = self.shard.choose_partition(topic, partitioning)
        key, part = self.partition(topic, pid)
        durable = None
        batches: Sequence[wbatch.Batch | Batch09] = [batch]
        try:
            if part.store_format is StoreFormat.RECORDS and isinstance(batch, wbatch.Batch):
                record = None
                if room is not None:
                    record = record_in_place(*room, batch.ends, self.shard.random_bytes, pid)
                # Else a new buffer: one record, or several when origins spread over u32 µs.
                batches = (
                    [record]
                    if record is not None
                    else record_from_v08(batch.buf, batch.ends, self.shard.random_bytes, pid)
                )
            elif part.store_format is StoreFormat.V08 and isinstance(batch, Batch09):
                # Checksums 0: the partition stamps offsets, timestamp and checksums.
                buf, ends = v09_to_v08([batch], checksums=False)
                batches = [wbatch.Batch(count=batch.count, buf=memoryview(buf), ends=ends)]
        except BatchError as exc:
            raise IggyError(exc.status, exc.detail) from exc
        try:
            now_us = self.shard.clock_us()
            for each in batches:
                last = part.append(each, now_us, self.shard.random_bytes)
            # A 0.9 topic created with durability=persisted syncs every send, whatever the
            # server's policy (docs/v09-notes.md, "Topic durability").
            if self.fsync_always or topic.durability == PERSISTED:
                durable = part.flush_async(fsync=True)
        except OSError as exc:  # a write failed: the partition refuses more until a retry succeeds
            raise IggyError(Status.CANNOT_SAVE_MESSAGES, str(exc)) from exc
        if durable is None:
            self.shard.mark_written(key)
        return Appended(key, last - batch.count + 1, durable)

    async def flush_unsaved_buffer(self, session: Session, req: c.FlushUnsavedBuffer) -> None:
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.send(self._perms(session), topic.stream_id, topic.id))
        key, part = self.partition(topic, req.partition_id)
        if not req.fsync:
            self.shard.mark_written(key)
        try:
            await asyncio.wrap_future(part.flush_async(fsync=bool(req.fsync)))
        except OSError as exc:
            raise IggyError(Status.CANNOT_SAVE_MESSAGES, f"write failed: {exc}") from exc
        if req.fsync:  # the partition's consumer offsets too (CANNOT_SAVE_CONSUMER_OFFSET)
            await asyncio.wrap_future(part.offsets.sync())

    def poll_messages(self, session: Session, req: c.PollMessages) -> Result | Awaitable[Result]:
        polled = self.poll(session, req, file_ranges=True, as_v08=True)
        reply = self._poll_reply(polled.header, polled.chunks)
        return reply if polled.saved is None else _after(polled.saved, reply)

    def poll(
        self,
        session: Session,
        req: c.PollMessages,
        file_ranges: bool,
        stale_partition_id: int = 0,
        as_v08: bool = False,
    ) -> Polled:
        """The messages a poll answers with, as stored (or, with `as_v08`, as 0.8 messages
        whatever the store's format), and the auto-commit to wait for before replying. A
        group member asking for a partition it does not own gets an empty answer naming
        `stale_partition_id`."""
        topic = self.topic(req.stream_id, req.topic_id)
        self._require(perm.poll(self._perms(session), topic.stream_id, topic.id))
        consumer = req.consumer
        if consumer.kind == ConsumerKind.CONSUMER:
            kind, ckey = ConsumerKind.CONSUMER, consumer_key(consumer)
            pid = 0 if req.partition_id is None else req.partition_id
        else:
            group = self.md.require_group(topic, consumer.id)
            member = self.md.member_of(group, session.client_id)
            if member is None:
                raise IggyError(Status.CONSUMER_GROUP_MEMBER_NOT_FOUND)
            kind, ckey = ConsumerKind.CONSUMER_GROUP, group.id
            if req.partition_id is None:
                chosen = session.route_partition
                if chosen is None:
                    chosen = self.md.next_partition(group, session.client_id)
            else:
                chosen = req.partition_id if req.partition_id in member.partitions else None
            if chosen is None:
                return Polled(PollHeader(stale_partition_id, 0, 0), [], None)
            pid = chosen
            session.group_partition[(topic.stream_id, topic.id, group.id)] = pid
        _, part = self.partition(topic, pid)
        start = self._poll_start(part, req, kind, ckey)
        if start is None or req.count == 0 or part.is_empty or start > part.current_offset:
            return Polled(PollHeader(pid, part.current_offset, 0), [], None)
        # Under `always` an auto-commit is synced before the reply, so the reply may wait: file
        # ranges are valid only until the next mutation, so it then carries bytes.
        deferred = req.auto_commit and self.fsync_always
        result = part.poll(start, req.count, self.max_poll_bytes, file_ranges=file_ranges and not deferred)
        if as_v08 and result.store_format is StoreFormat.RECORDS and result.count:
            result = records_as_v08(result, self.max_poll_bytes)
        saved = None
        if req.auto_commit and result.count:
            saved = _when_saved(part.store_offset(kind, ckey, result.first_offset + result.count - 1))
        header = PollHeader(pid, part.current_offset, result.count)
        return Polled(header, result.chunks, saved, result.store_format)

    def _poll_start(self, part: Partition, req: c.PollMessages, kind: int, ckey: int) -> int | None:
        strategy = req.strategy_kind
        if strategy == PollingKind.OFFSET:
            return req.strategy_value
        if strategy == PollingKind.TIMESTAMP:
            return part.offset_for_timestamp(req.strategy_value)
        if strategy == PollingKind.FIRST:
            return part.first_offset
        if strategy == PollingKind.LAST:
            n = min(req.count, part.current_offset + 1)
            return max(part.first_offset, part.current_offset + 1 - n)
        stored = part.get_offset(kind, ckey)  # PollingKind.NEXT
        return part.first_offset if stored is None else stored + 1

    def _poll_reply(self, header: PollHeader, chunks: list[Piece]) -> Result:
        return Ok([header.encode(), *chunks])
