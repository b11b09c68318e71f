"""The Iggy 0.9 generation (``shared/protocol/iggy-0.9-vsr.md``) over the same shard.

A connection whose first bytes are a 256-byte VSR request header is answered here. This
layer owns what only 0.9 has: the Register handshake and its session number, the session
rules, result sections and the replay of duplicate metadata requests, the 0.9 body layouts,
and the 0.9 batch format. Everything else (permissions, metadata changes, partitions,
offsets, groups) is the 0.8 dispatcher's, called with the same typed requests, so both
generations read and change one store. Messages are stored in 0.8's format: a 0.9 batch is
validated whole and converted once on send, and polled messages are converted back into 0.9
records (``wire/v09/batch.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tidelog import auth
from tidelog import metadata as md
from tidelog.server.connection import OK_EMPTY, Close, Connection, Evicted, Failed, Ok, RequestKey, Result
from tidelog.server.dispatch import METADATA_COMMANDS, Dispatcher, _after
from tidelog.server.shard import Session
from tidelog.storage.integrity import StoreFormat
from tidelog.storage.io import join_pieces
from tidelog.storage.segment import Piece
from tidelog.wire import batch as wbatch
from tidelog.wire import requests as c
from tidelog.wire.codes import MAX_CONTROL_PAYLOAD_BYTES, U32_MAX, IggyError, Status
from tidelog.wire.primitives import ConsumerKind, identifier_from_user
from tidelog.wire.v09 import bodies as b
from tidelog.wire.v09 import frames as f
from tidelog.wire.v09.batch import BatchError, parse_batch, v08_to_v09
from tidelog.wire.v09.codes import (
    OPERATION_FOR_CODE,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_MIN,
    CommandCode,
    EvictionReason,
    Operation,
    ReplyFraming,
    protocol_version_accepted,
    reply_framing,
)
from tidelog.wire.v09.header import RequestHeader

log = logging.getLogger(__name__)

SERVER_VERSION_09 = "0.9.0"
SERVER_SEMVER_09 = 9000
# The partition id of an empty poll that tells a group member its assignment is stale.
STALE_ASSIGNMENT_PARTITION_ID = U32_MAX

_CODE_FOR_OPERATION: dict[Operation, CommandCode] = {op: code for code, op in OPERATION_FOR_CODE.items()}
# Reads whose 0.9 reply is byte for byte the 0.8 one: the 0.8 handler answers them as is.
_SHARED_READS: frozenset[CommandCode] = frozenset(
    {
        CommandCode.PING,
        CommandCode.GET_SNAPSHOT_FILE,
        CommandCode.GET_CLUSTER_METADATA,
        CommandCode.GET_ME,
        CommandCode.GET_CLIENT,
        CommandCode.GET_CLIENTS,
        CommandCode.GET_PERSONAL_ACCESS_TOKENS,
        CommandCode.FLUSH_UNSAVED_BUFFER,
        CommandCode.GET_CONSUMER_OFFSET,
        CommandCode.GET_CONSUMER_GROUP,
        CommandCode.GET_CONSUMER_GROUPS,
    }
)
# Metadata and partition operations whose reply layout 0.9 shares with 0.8; the 0.9 request
# classes of those whose bodies differ subclass the 0.8 ones, so the 0.8 handler takes them.
_SHARED_CHANGES: frozenset[CommandCode] = frozenset(
    {
        CommandCode.UPDATE_STREAM,
        CommandCode.UPDATE_USER,
        CommandCode.STORE_CONSUMER_OFFSET,
        CommandCode.DELETE_CONSUMER_OFFSET,
        CommandCode.DELETE_STREAM,
        CommandCode.PURGE_STREAM,
        CommandCode.DELETE_TOPIC,
        CommandCode.PURGE_TOPIC,
        CommandCode.CREATE_PARTITIONS,
        CommandCode.DELETE_PARTITIONS,
        CommandCode.DELETE_SEGMENTS,
        CommandCode.CREATE_CONSUMER_GROUP,
        CommandCode.DELETE_CONSUMER_GROUP,
        CommandCode.DELETE_USER,
        CommandCode.CHANGE_PASSWORD,
        CommandCode.UPDATE_PERMISSIONS,
        CommandCode.CREATE_PERSONAL_ACCESS_TOKEN,
        CommandCode.DELETE_PERSONAL_ACCESS_TOKEN,
        CommandCode.JOIN_CONSUMER_GROUP,
        CommandCode.LEAVE_CONSUMER_GROUP,
    }
)
# Unknown stream, topic or partition on the partition path: 0.9 answers ResourceNotFound
# (section 4.3).
_NOT_FOUND_ON_PARTITION_PATH = frozenset(
    {Status.STREAM_ID_NOT_FOUND, Status.TOPIC_ID_NOT_FOUND, Status.PARTITION_NOT_FOUND}
)

Payload = bytes | bytearray | memoryview


def _reply(body: list[Payload] | None = None, status: int = 0) -> Result:
    """A reply body (or an error status); the connection builds the header from the request."""
    if status:
        return Failed(status)
    return Ok(body) if body else OK_EMPTY


def _refusal(violation: f.ProtocolViolation) -> Result:
    """The documented answer to a request the session rules refuse (section 1.7)."""
    if violation.action is f.Action.STATUS and violation.status is not None:
        return Failed(violation.status)
    if violation.action is f.Action.EVICT and violation.eviction is not None:
        return Evicted(violation.eviction)
    return Close()


class Dispatcher09:
    """Implements connection.Handler for the 0.9 generation."""

    def __init__(self, base: Dispatcher) -> None:
        self.base = base
        self.shard = base.shard
        self.md = base.md
        # Session numbers: non-zero and rising for the server's lifetime (section 1.7).
        self._sessions = itertools.count(1)
        self.reads: dict[CommandCode, Callable[[Session, Any], Any]] = {
            CommandCode.GET_STATS: self.get_stats,
            CommandCode.DESCRIBE_OPTIONS: self.describe_options,
            CommandCode.GET_USER: self.get_user,
            CommandCode.GET_USERS: self.get_users,
            CommandCode.GET_STREAM: self.get_stream,
            CommandCode.GET_STREAMS: self.get_streams,
            CommandCode.GET_TOPIC: self.get_topic,
            CommandCode.GET_TOPICS: self.get_topics,
            CommandCode.SYNC_CONSUMER_GROUP: self.sync_consumer_group,
        }
        self.changes: dict[CommandCode, Callable[[Session, Any], Any]] = {
            CommandCode.CREATE_STREAM: self.create_stream,
            CommandCode.CREATE_TOPIC: self.create_topic,
            CommandCode.UPDATE_TOPIC: self.update_topic,
            CommandCode.CREATE_USER: self.create_user,
        }
        served = set(self.reads) | set(self.changes) | _SHARED_READS | _SHARED_CHANGES
        own = {CommandCode.POLL_MESSAGES, CommandCode.SEND_MESSAGES, CommandCode.LOGOUT_USER}
        login = {
            CommandCode.LOGIN_REGISTER,
            CommandCode.LOGIN_REGISTER_WITH_PAT,
            CommandCode.LOGIN_USER,
            CommandCode.LOGIN_WITH_PERSONAL_ACCESS_TOKEN,
        }
        assert served | own | login == set(CommandCode), set(CommandCode) - served - own - login

    # ---- connection.Handler ------------------------------------------------------------
    def payload_limit(self, conn: Connection, key: RequestKey) -> int:
        assert isinstance(key, RequestHeader)
        session = conn.session
        if isinstance(session, Session) and session.user_id is None:
            return self.base.unauthenticated_limit_bytes
        if key.operation == Operation.SEND_MESSAGES:
            return self.base.send_limit_bytes
        return MAX_CONTROL_PAYLOAD_BYTES

    def authenticated(self, conn: Connection) -> bool:
        return self.base.authenticated(conn)

    def connection_made(self, conn: Connection) -> None:
        self.base.connection_made(conn)

    def connection_lost(self, conn: Connection) -> None:
        self.base.connection_lost(conn)

    def handle(
        self, conn: Connection, key: RequestKey, payload: memoryview, owned: bool
    ) -> Result | Awaitable[Result]:
        header = key
        assert isinstance(header, RequestHeader)
        session = conn.session
        assert isinstance(session, Session)
        if self.shard.stopping:
            return Failed(Status.DISCONNECTED, close=True)
        if not session.proxy and session.client_id not in self.shard.sessions:
            return Evicted(EvictionReason.STALE_CLIENT, close=True)
        if self.base.heartbeat_enabled:
            session.last_heartbeat_us = self.shard.clock_us()
        event = f.RequestReceived(header, Operation(header.operation), payload)
        # The connection's framing machine has checked the body (f.check_body) already.
        violation = f.check_session(event, session.vsr_session)
        if violation is not None:
            log.info(
                "0.9 request from %s refused: %s (%s)",
                session.address,
                violation.kind.value,
                violation.detail,
            )
            return _refusal(violation)
        op = event.operation
        if op == Operation.REGISTER:
            return self.register(session, header, payload)
        if op == Operation.LOGOUT:
            self.logout(session)
            return OK_EMPTY
        if op == Operation.NON_REPLICATED:
            return self.non_replicated(session, header, payload)
        if op == Operation.SEND_MESSAGES:
            return self.send_messages(session, header, payload, owned)
        return self.replicated(session, header, op, payload)

    # ---- sessions ----------------------------------------------------------------------
    def register(
        self, session: Session, header: RequestHeader, body: memoryview
    ) -> Result | Awaitable[Result]:
        if session.vsr_login_reply is not None:
            # Register on a bound connection replays the same reply (section 1.7).
            return Ok([session.vsr_login_reply])
        login = f.decode_login(body)
        if isinstance(login, f.MalformedLogin):
            log.info("0.9 login from %s malformed: %s", session.address, login.reason)
            return Evicted(EvictionReason.MALFORMED_LOGIN)
        if not protocol_version_accepted(login.version.protocol_version):
            return Evicted(
                EvictionReason.INCOMPATIBLE_PROTOCOL,
                server_protocol_version=PROTOCOL_VERSION,
                server_protocol_version_min=PROTOCOL_VERSION_MIN,
            )
        return self._login(session, header, login)

    async def _login(self, session: Session, header: RequestHeader, login: f.LoginRequest) -> Result:
        user: md.UserMeta | None = None
        reason = EvictionReason.INVALID_CREDENTIALS
        if login.password is not None:
            user = await self._password_user(login.password)
        if user is None and login.token is not None:
            found = self.md.pat_by_hash(auth.hash_token(login.token.token))
            if found is not None and not found[1].expired(self.shard.clock_us()):
                user = found[0]
            elif login.password is None:
                reason = EvictionReason.INVALID_TOKEN
        if user is None:
            return Evicted(reason)
        if user.status != 1:
            return Evicted(EvictionReason.USER_INACTIVE)
        session.user_id = user.id
        session.vsr_session = next(self._sessions)
        session.vsr_login_reply = f.encode_login_reply(
            f.LoginReply(user_id=user.id, session=session.vsr_session, server_version=SERVER_VERSION_09)
        )
        return Ok([session.vsr_login_reply])

    async def _password_user(self, login: f.PasswordLogin) -> md.UserMeta | None:
        try:
            auth.validate_username(login.username)
            auth.validate_password(login.password)
        except IggyError:
            return None
        user = self.md.user(identifier_from_user(login.username))
        if user is None:
            return None
        ok = await asyncio.to_thread(auth.verify_password, user.password_hash, login.password)
        return user if ok else None

    def logout(self, session: Session) -> None:
        session.user_id = None
        session.vsr_session = None
        session.vsr_login_reply = None
        session.vsr_last_reply = None

    # ---- requests ----------------------------------------------------------------------
    def non_replicated(
        self, session: Session, header: RequestHeader, body: memoryview
    ) -> Result | Awaitable[Result]:
        code = header.command_code
        if code not in CommandCode._value2member_map_:
            raise IggyError(Status.INVALID_COMMAND, f"unknown command {code}")
        command = CommandCode(code)
        if command == CommandCode.POLL_MESSAGES:
            return self.poll_messages(session, header, c.PollMessages.decode(body))
        request = b.decode_request09(command, body)
        if command in _SHARED_READS:
            result = self.base.handlers[int(command)](session, request)
        elif command in self.reads:
            result = self.reads[command](session, request)
        else:
            # A replicated command sent as NonReplicated is not one the SDK sends: refuse it.
            raise IggyError(Status.INVALID_COMMAND, f"command {code} is not a read")
        return self._raw(result)

    def _raw(self, result: Any) -> Result | Awaitable[Result]:
        if isinstance(result, Awaitable):
            return self._raw_later(result)
        return _reply([result] if result else None)

    async def _raw_later(self, pending: Awaitable[Payload | None]) -> Result:
        result = await pending
        return _reply([result] if result else None)

    def replicated(
        self, session: Session, header: RequestHeader, op: Operation, body: memoryview
    ) -> Result | Awaitable[Result]:
        last = session.vsr_last_reply
        if last is not None and last[:2] == (header.client, header.request):
            # A retry of the request just answered: the same answer, nothing applied twice.
            return _reply([last[3]] if last[3] else None, status=last[2])
        command = _CODE_FOR_OPERATION[op]
        if int(command) in METADATA_COMMANDS and self.shard.metadata_read_only is not None:
            return self._answer(session, header, None, IggyError(Status.METADATA_READ_ONLY))
        try:
            request = b.decode_request09(command, body)
            if command in self.changes:
                result = self.changes[command](session, request)
            else:
                result = self.base.handlers[int(command)](session, request)
        except IggyError as exc:
            return self._answer(session, header, None, exc)
        if isinstance(result, Awaitable):
            return self._answer_later(session, header, result)
        return self._answer(session, header, result, None)

    async def _answer_later(self, session: Session, header: RequestHeader, pending: Awaitable[Any]) -> Result:
        try:
            result = await pending
        except IggyError as exc:
            return self._answer(session, header, None, exc)
        return self._answer(session, header, result, None)

    def _answer(
        self, session: Session, header: RequestHeader, result: Payload | None, error: IggyError | None
    ) -> Result:
        """A replicated operation's reply: a result section where the operation has one
        (section 1.5), remembered for a duplicate of the same request."""
        op = Operation(header.operation)
        status = 0
        if reply_framing(op) is ReplyFraming.RESULT_SECTION:
            body = f.encode_result_rejection(error.status) if error else f.encode_result_ok(result or b"")
        elif error is not None:
            status, body = error.status, b""
        else:
            body = bytes(result or b"")
        if error is not None and error.status not in (Status.METADATA_READ_ONLY,):
            log.debug("0.9 %s from %s: %s", op.name, session.address, error)
        session.vsr_last_reply = (header.client, header.request, status, body)
        return _reply([body] if body else None, status=status)

    # ---- system and reads --------------------------------------------------------------
    def get_stats(self, session: Session, req: c.GetStats) -> bytes:
        self.base.get_stats(session, req)  # the permission check
        stats = dataclasses.replace(
            self.base.stats(), iggy_server_version=SERVER_VERSION_09, iggy_server_semver=SERVER_SEMVER_09
        )
        return stats.encode()

    def describe_options(self, session: Session, req: b.DescribeOptions) -> bytes:
        return b.encode_describe_options(req.scope)

    def get_user(self, session: Session, req: c.GetUser) -> bytes | None:
        user = self.base.find_user(session, req.user_id)
        return None if user is None else b.encode_user_details09(self.base.user_details(user))

    def get_users(self, session: Session, req: c.GetUsers) -> bytes:
        return b"".join(b.encode_user09(u) for u in self.base.list_users(session))

    def get_stream(self, session: Session, req: c.GetStream) -> bytes | None:
        stream = self.base.find_stream(session, req.stream_id)
        if stream is None:
            return None
        topics = [self._topic_header(t) for _, t in sorted(stream.topics.items())]
        return b.encode_stream09(self.base.stream_info(stream)) + b"".join(topics)

    def get_streams(self, session: Session, req: c.GetStreams) -> bytes:
        return b"".join(b.encode_stream09(self.base.stream_info(s)) for s in self.base.list_streams(session))

    def get_topic(self, session: Session, req: c.GetTopic) -> bytes | None:
        topic = self.base.find_topic(session, req.stream_id, req.topic_id)
        return None if topic is None else self._topic_details(topic)

    def get_topics(self, session: Session, req: c.GetTopics) -> bytes:
        topics = self.base.list_topics(session, req.stream_id)
        # A missing stream lists no topics (section 5.7), with the count prefix.
        items = topics or []
        return len(items).to_bytes(4, "little") + b"".join(self._topic_header(t) for t in items)

    def _topic_header(self, topic: md.TopicMeta) -> bytes:
        explicit = bytes.fromhex(topic.options_hex)
        return b.encode_topic_header09(self.base.topic_info(topic), explicit, self._derived(topic))

    def _derived(self, topic: md.TopicMeta) -> bytes:
        config = self.shard.config
        return b.derived_topic_options(
            b.parse_topic_options(bytes.fromhex(topic.options_hex)),
            segment_size=config.system.segment_size_bytes,
            messages_required_to_save=config.durability.flush_messages,
            size_of_messages_required_to_save=config.durability.flush_bytes,
            durability=b.Durability.REPLICATED,
        )

    def _topic_details(self, topic: md.TopicMeta) -> bytes:
        details = self.base.topic_details(topic)
        return self._topic_header(topic) + b"".join(p.encode() for p in details.partitions)

    def sync_consumer_group(self, session: Session, req: b.SyncConsumerGroup) -> bytes | None:
        topic = self.base.find_topic(session, req.stream_id, req.topic_id)
        group = None if topic is None else self.md.group(topic, req.group_id)
        member = None if group is None else self.md.member_of(group, session.client_id)
        if group is None or member is None:
            return None  # not a member: the SDK reports 5006 on its poll (section 5.4)
        return b.encode_sync_group09(group.generation, list(member.partitions))

    # ---- changes -----------------------------------------------------------------------
    def create_stream(self, session: Session, req: b.CreateStream09) -> bytes:
        return b.encode_stream09(self.base.stream_info(self.base.new_stream(session, req.name)))

    def create_topic(self, session: Session, req: b.CreateTopic09) -> bytes:
        options = req.options

        def make(stream_id: int) -> md.CreateTopic:
            return md.CreateTopic(
                stream_id=stream_id,
                name=req.name,
                partitions_count=req.partitions_count,
                compression_algorithm=options.compression_algorithm or 1,
                message_expiry=options.message_expiry or 0,
                max_topic_size=options.max_topic_size or 0,
                replication_factor=0,
                created_at_us=self.shard.clock_us(),
                options_hex=options.explicit.hex(),
                # enforce_fsync (the 0.8-era key) asks what `persisted` does.
                durability=b.Durability.PERSISTED if options.enforce_fsync else (options.durability or ""),
                consumer_offset_durability=options.consumer_offset_durability or "",
                segment_size_bytes=options.segment_size or 0,
                flush_messages=options.messages_required_to_save or 0,
                flush_bytes=options.size_of_messages_required_to_save or 0,
            )

        return self._topic_details(self.base.new_topic(session, req.stream_id, make))

    def update_topic(self, session: Session, req: b.UpdateTopic09) -> None:
        topic = self.base.topic(req.stream_id, req.topic_id)
        options = req.options
        # Absent keys are left as they are (section 3.5).
        update = c.UpdateTopic(
            stream_id=req.stream_id,
            topic_id=req.topic_id,
            compression_algorithm=options.compression_algorithm or topic.compression_algorithm,
            message_expiry=topic.message_expiry if options.message_expiry is None else options.message_expiry,
            max_topic_size=topic.max_topic_size if options.max_topic_size is None else options.max_topic_size,
            replication_factor=topic.replication_factor,
            name=req.name,
        )
        self.base.update_topic(session, update)

    async def create_user(self, session: Session, req: b.CreateUser09) -> bytes:
        request = c.CreateUser(
            username=req.username, password=req.password, status=req.status, permissions=req.permissions
        )
        user = await self.base.new_user(session, request)
        return b.encode_user_details09(self.base.user_details(user))

    # ---- messages ----------------------------------------------------------------------
    def send_messages(
        self, session: Session, header: RequestHeader, body: memoryview, owned: bool
    ) -> Result | Awaitable[Result]:
        meta = b.SendMessages09Header.decode(body)
        batch_bytes = body[meta.batch_offset :]
        if not owned:
            # The partition keeps the record's buffer (stored as it came, once stamped); a view
            # of the connection's reusable read buffer would be overwritten by the next request.
            batch_bytes = memoryview(bytearray(batch_bytes))
        try:
            batch = parse_batch(batch_bytes, meta.messages_count)
        except BatchError as exc:
            raise IggyError(exc.status, exc.detail) from exc
        try:
            appended = self.base.append(session, meta.stream_id, meta.topic_id, meta.partitioning, batch)
        except IggyError as exc:
            if exc.status in _NOT_FOUND_ON_PARTITION_PATH:
                raise IggyError(Status.RESOURCE_NOT_FOUND, str(exc)) from exc
            raise
        stream_id, topic_id, pid = appended.key
        confirmation = b.encode_send_confirmation09(stream_id, topic_id, pid, appended.base_offset)
        if appended.durable is not None:
            return self._after_write(header, appended.durable, confirmation)
        return Ok([confirmation])

    async def _after_write(
        self, header: RequestHeader, written: concurrent.futures.Future[None], confirmation: bytes
    ) -> Result:
        try:
            await asyncio.wrap_future(written)
        except OSError as exc:
            raise IggyError(Status.CANNOT_SAVE_MESSAGES, f"write failed: {exc}") from exc
        return Ok([confirmation])

    def poll_messages(
        self, session: Session, header: RequestHeader, req: c.PollMessages
    ) -> Result | Awaitable[Result]:
        if req.consumer.kind == ConsumerKind.CONSUMER_GROUP and req.partition_id is None:
            # Group members poll explicit partitions from their synced assignment (5.4).
            raise IggyError(Status.INVALID_IDENTIFIER, "a consumer-group poll names its partition")
        polled = self.base.poll(
            session, req, file_ranges=True, stale_partition_id=STALE_ASSIGNMENT_PARTITION_ID
        )
        head = polled.header.encode()
        if not polled.header.messages_count:
            reply = Ok([head])
        elif polled.store_format is StoreFormat.RECORDS:
            # Stored as served: file ranges go out with sendfile, memory as views.
            reply = Ok([head, *polled.chunks])
        else:
            reply = Ok([head, self._records(polled.chunks, polled.header.partition_id)])
        return reply if polled.saved is None else _after(polled.saved, reply)

    @staticmethod
    def _records(chunks: list[Piece], partition_id: int) -> bytes | bytearray:
        """Stored 0.8 messages as 0.9 records: one per run of messages sharing a broker
        timestamp, i.e. one per batch as it was sent."""
        stored = join_pieces(chunks)
        ends, valid = wbatch.scan_messages(stored, verify_checksums=False)
        assert valid == len(stored), "a poll returns whole stored messages"
        return v08_to_v09(stored, ends, partition_id)
