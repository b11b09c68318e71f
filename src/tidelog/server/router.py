"""Routing the requests of a multi-shard server to the shard that can answer them.

Each shard holds a copy of the metadata (shard 0 the only writer, see `Shard.apply`) and the
partitions `sharding.owner_of` gives it. A request is answered where its state lives:

- control-plane changes (streams, topics, partitions, users, tokens, groups and their
  members) on shard 0, which logs and applies them, then publishes them to every shard and
  waits until each applied them (and opened or closed its files) before it replies: after
  an acknowledged create-topic, a send to the topic succeeds on any shard;
- a send, a poll (start, read and auto-commit in one request), a consumer offset, a flush,
  a segment delete on the owner of the partition, which the connection's shard resolves
  (balanced and keyed sends, group members' round robin) before forwarding;
- a purge on every shard, each for the partitions it owns;
- reads of metadata and sessions where the connection is, after gathering fresh partition
  figures and clients from the other shards when the answer shows them.

A forwarded request runs through the receiving shard's own handlers, on a proxy of the
client's session, and its result comes back whole (file ranges read); the connection frames
it in the client's generation. `Router.handler(generation)` is the connection.Handler of a
multi-shard server; with one shard nothing here runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tidelog.server import sharding
from tidelog.server.bus import Body, Buffer, BusError, BusMethod, BusPeer
from tidelog.server.connection import (
    Adopted,
    Connection,
    Evicted,
    Failed,
    Handler,
    Handoff,
    Ok,
    RequestKey,
    Result,
)
from tidelog.server.dispatch import METADATA_COMMANDS
from tidelog.server.dispatch09 import _CODE_FOR_OPERATION
from tidelog.server.shard import Change, PartitionView, Published, Session, Shard
from tidelog.storage.io import FileRange
from tidelog.wire import requests as c
from tidelog.wire.codes import Command, IggyError, Status
from tidelog.wire.primitives import ConsumerKind, PartitioningKind
from tidelog.wire.v09 import bodies as b
from tidelog.wire.v09.frames import Generation
from tidelog.wire.v09.header import Operation, RequestHeader

log = logging.getLogger(__name__)

# Where each command runs (0.8 command codes; 0.9 operations map onto the same codes).
# The logged metadata changes, and group membership (not logged, but shard 0's alone).
_ON_SHARD_0: frozenset[int] = METADATA_COMMANDS | {Command.JOIN_CONSUMER_GROUP, Command.LEAVE_CONSUMER_GROUP}
_ON_OWNER: frozenset[int] = frozenset(
    {
        Command.SEND_MESSAGES,
        Command.POLL_MESSAGES,
        Command.GET_CONSUMER_OFFSET,
        Command.STORE_CONSUMER_OFFSET,
        Command.DELETE_CONSUMER_OFFSET,
        Command.FLUSH_UNSAVED_BUFFER,
        Command.DELETE_SEGMENTS,
    }
)
_ON_EVERY_SHARD: frozenset[int] = frozenset({Command.PURGE_STREAM, Command.PURGE_TOPIC})
# Answered here, with partition figures gathered from the other shards first.
_WITH_FIGURES: frozenset[int] = frozenset(
    {
        Command.GET_STATS,
        Command.GET_STREAM,
        Command.GET_STREAMS,
        Command.GET_TOPIC,
        Command.GET_TOPICS,
        Command.GET_CLIENTS,  # the other shards' clients are added to the answer
    }
)
_GATHER_FIGURES = b"figures"
# A connection moves to the shard owning what it uses after this many requests in a row for
# partitions it names there (Iggy 0.8's socket migration); the descriptor waits this long.
_HANDOFF_AFTER = 3
_ADOPT_WAIT_S = 5.0
_MOVED_SESSION_FIELDS = (
    "client_id",
    "address",
    "last_heartbeat_us",
    "user_id",
    "group_partition",
    "vsr_session",
    "vsr_login_reply",
    "vsr_last_reply",
)
_GATHER_CLIENTS = b"clients"
_STATUS_OK = 0


@dataclass(frozen=True)
class Forward:
    """A forwarded request, with what the receiving shard needs of the client's session."""

    generation: Generation
    key: RequestKey
    client_id: int
    user_id: int | None
    address: str
    vsr_session: int | None
    partition: int | None  # the partition the connection's shard chose, if it chose one


class _ProxyConnection:
    """What a forwarded request's handlers see as its connection."""

    def __init__(self, session: Session) -> None:
        self.session: object = session
        self.peer = session.address


@dataclass(frozen=True)
class _Route:
    shard: int | None  # None: here
    partition: int | None = None
    everywhere: bool = False
    figures: bool = False
    changes: bool = False  # a control-plane change: shard 0 publishes it before the reply
    pinned: bool = False  # the client named the partition: its connection may move to the owner


class Router:
    """One shard's routing: its handlers for each generation, its bus peers."""

    def __init__(self, shard: Shard, handlers: dict[Generation, Handler]) -> None:
        self.shard = shard
        self.handlers = handlers
        self.peers: dict[int, BusPeer] = {}
        self._proxies: dict[int, Session] = {}  # client id -> session of a remote client
        self._publish_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._fronts: dict[Generation, _RoutedHandler] = {}
        # Called when this shard can no longer serve correctly: the shard stops, non-zero,
        # and the supervisor stops the server.
        self.on_fatal: Callable[[str], None] = lambda reason: None
        # Connections handed between shards: a socket per peer that carries descriptors,
        # the descriptors received and not yet adopted, and what makes a Connection of one.
        self.lanes: dict[int, socket.socket] = {}
        self._fds: dict[tuple[int, int], asyncio.Future[int]] = {}
        self._next_handoff = 0
        self.adopt: Callable[[socket.socket, Adopted], None] | None = None

    def handler(self, generation: Generation) -> Handler:
        """The connection.Handler of a generation (once `handlers` holds its dispatcher)."""
        front = self._fronts.get(generation)
        if front is None:
            front = self._fronts[generation] = _RoutedHandler(self, generation, self.handlers[generation])
        return front

    # ---- deciding -------------------------------------------------------------------
    def route(self, generation: Generation, key: RequestKey, payload: memoryview, session: Session) -> _Route:
        command, body_is_09 = _command_of(generation, key)
        if command is None or session.user_id is None:
            return _Route(None)  # sessions, logins, pings: here (handlers refuse the rest)
        if command in _ON_SHARD_0:
            return _Route(0, changes=True)
        if command in _ON_EVERY_SHARD:
            return _Route(None, everywhere=True)
        if command in _WITH_FIGURES:
            return _Route(None, figures=True)
        if command == Command.GET_CLIENT:
            # Answered here, or by the shard holding the client now (it may have moved from
            # the one its id names): see `_local`.
            return _Route(None, figures=True)
        if command in _ON_OWNER:
            try:
                key3 = self._partition_of(command, payload, body_is_09, session)
            except IggyError:
                return _Route(None)  # the local handler gives the error
            if key3 is None:
                return _Route(None)
            stream_id, topic_id, partition_id, named = key3
            owner = sharding.owner_of(stream_id, topic_id, partition_id, self.shard.shards)
            return _Route(owner, partition=partition_id, pinned=named)
        return _Route(None)

    def _partition_of(
        self, command: int, payload: memoryview, body_is_09: bool, session: Session
    ) -> tuple[int, int, int, bool] | None:
        """The partition a data request addresses, chosen as its handler would choose it,
        and whether the client named it (not balanced, keyed or a group's round robin)."""
        md = self.shard.metadata
        if command == Command.SEND_MESSAGES:
            if body_is_09:
                meta09 = b.SendMessages09Header.decode(payload)
                stream, topic_ident, partitioning = meta09.stream_id, meta09.topic_id, meta09.partitioning
            else:
                meta = c.SendMessagesHeader.decode(payload)
                stream, topic_ident, partitioning = meta.stream_id, meta.topic_id, meta.partitioning
            topic = md.require_topic(md.require_stream(stream), topic_ident)
            named = partitioning.kind == PartitioningKind.PARTITION_ID
            return topic.stream_id, topic.id, self.shard.choose_partition(topic, partitioning), named
        if command == Command.POLL_MESSAGES:
            poll = c.PollMessages.decode(payload)
            topic = md.require_topic(md.require_stream(poll.stream_id), poll.topic_id)
            if poll.consumer.kind == ConsumerKind.CONSUMER:
                return topic.stream_id, topic.id, 0 if poll.partition_id is None else poll.partition_id, True
            group = md.require_group(topic, poll.consumer.id)
            if poll.partition_id is not None:
                return topic.stream_id, topic.id, poll.partition_id, False
            member = md.member_of(group, session.client_id)
            if member is None:
                return None
            chosen = md.next_partition(group, session.client_id)
            if chosen is None:
                return None
            session.group_partition[(topic.stream_id, topic.id, group.id)] = chosen
            return topic.stream_id, topic.id, chosen, False
        req: Any = b.decode_request09(command, payload) if body_is_09 else c.decode_request(command, payload)
        topic = md.require_topic(md.require_stream(req.stream_id), req.topic_id)
        pid = getattr(req, "partition_id", None)
        if pid is None and command in (
            Command.GET_CONSUMER_OFFSET,
            Command.STORE_CONSUMER_OFFSET,
            Command.DELETE_CONSUMER_OFFSET,
        ):
            consumer = req.consumer
            if consumer.kind == ConsumerKind.CONSUMER_GROUP:
                found = md.group(topic, consumer.id)
                where = None if found is None else (topic.stream_id, topic.id, found.id)
                pid = None if where is None else session.group_partition.get(where)
            else:
                pid = 0
        if pid is None:
            return None
        return topic.stream_id, topic.id, pid, False

    # ---- running --------------------------------------------------------------------
    async def run(
        self,
        generation: Generation,
        conn: Connection,
        key: RequestKey,
        payload: memoryview,
        owned: bool,
        route: _Route,
    ) -> Result:
        session = conn.session
        assert isinstance(session, Session)
        if route.everywhere:
            forward = self._forward_of(generation, key, session, None)
            replies = await self._call_all(BusMethod.FORWARD, _forward_body(forward, payload))
            for status, body in replies:
                result = _result_of(status, body)
                if not isinstance(result, Ok):
                    return result
            return await self._local(generation, conn, key, payload, owned, session, None)
        if route.figures:
            await self.gather_figures()
        if route.shard is None or route.shard == self.shard.shard_id:
            return await self._local(generation, conn, key, payload, owned, session, route.partition)
        forward = self._forward_of(generation, key, session, route.partition)
        try:
            peer = self.peers[route.shard]
            status, body = await peer.call(BusMethod.FORWARD, _forward_body(forward, payload))
        except BusError as exc:
            # The owner is gone (the supervisor is stopping the server) or stuck: the request
            # is not answered, and the client is told by the close, as by a stopping server.
            log.error("a request for shard %d was not delivered: %s", route.shard, exc)
            return Failed(Status.ERROR, close=True)
        return _result_of(status, body)

    async def _local(
        self,
        generation: Generation,
        conn: Connection | _ProxyConnection,
        key: RequestKey,
        payload: memoryview,
        owned: bool,
        session: Session,
        partition: int | None,
    ) -> Result:
        session.route_partition = partition
        try:
            answer: Result | Awaitable[Result] = self.handlers[generation].handle(conn, key, payload, owned)  # type: ignore[arg-type]
        except IggyError as exc:  # as the connection answers it
            answer = Failed(exc.status)
        finally:
            session.route_partition = None
        try:
            result = await answer if isinstance(answer, Awaitable) else answer
        except IggyError as exc:
            result = Failed(exc.status)
        if self.shard.shard_id == 0:
            await self.publish()
        command, _ = _command_of(generation, key)
        if command == Command.GET_CLIENTS and isinstance(result, Ok):
            result = Ok([*result.pieces, *await self._gather_clients()], result.close)
        elif (
            command == Command.GET_CLIENT
            and isinstance(result, Ok)
            and not result.pieces
            and not session.proxy
        ):
            forward = self._forward_of(generation, key, session, None)
            for status, body in await self._call_all(BusMethod.FORWARD, _forward_body(forward, payload)):
                found = _result_of(status, body)
                if isinstance(found, Ok) and found.pieces:
                    return found
        return result

    def _forward_of(
        self, generation: Generation, key: RequestKey, session: Session, partition: int | None
    ) -> Forward:
        return Forward(
            generation,
            key,
            session.client_id,
            session.user_id,
            session.address,
            session.vsr_session,
            partition,
        )

    # ---- serving the bus ------------------------------------------------------------
    async def serve(self, method: BusMethod, body: bytearray, peer: int = 0) -> tuple[int, bytes]:
        if method is BusMethod.ADOPT:
            return await self._serve_adopt(peer, body)
        if method is BusMethod.FORWARD:
            return await self._serve_forward(body)
        if method is BusMethod.APPLY_OPS:
            items: list[Published] = pickle.loads(body)
            try:
                if not self.shard.apply_published(items):
                    await self.catch_up()
            except Exception as exc:
                # This shard's metadata no longer follows shard 0's: it must not serve on.
                log.critical("shard %d cannot apply shard 0's changes: %r", self.shard.shard_id, exc)
                self.on_fatal(f"metadata diverged from shard 0: {exc!r}")
                raise
            for item in items:
                if item.kind is Change.LEAVE_ALL:
                    self._proxies.pop(item.payload, None)
            return _STATUS_OK, b""
        if method is BusMethod.SNAPSHOT:
            return _STATUS_OK, self.shard.snapshot_bytes()
        if method is BusMethod.LEAVE_ALL:
            self.shard.leave_all_here(int.from_bytes(body, "little"))
            await self.publish()
            return _STATUS_OK, b""
        if method is BusMethod.GATHER:
            return _STATUS_OK, await self._serve_gather(body)
        return int(Status.INVALID_COMMAND), b"unknown bus method"

    async def _serve_forward(self, body: bytearray) -> tuple[int, bytes]:
        size = int.from_bytes(body[:4], "little")
        view = memoryview(body)
        forward: Forward = pickle.loads(view[4 : 4 + size])
        payload = view[4 + size :]  # the frame's own buffer: the handler may keep it
        proxy = self._proxies.get(forward.client_id)
        if proxy is None:
            proxy = Session(forward.client_id, forward.address, None, self.shard.clock_us(), proxy=True)
            self._proxies[forward.client_id] = proxy
        proxy.user_id = forward.user_id
        proxy.vsr_session = forward.vsr_session
        result = await self._local(
            forward.generation, _ProxyConnection(proxy), forward.key, payload, True, proxy, forward.partition
        )
        return _STATUS_OK, pickle.dumps(_materialized(result))

    async def _serve_gather(self, what: bytes | bytearray) -> bytes:
        if what == _GATHER_FIGURES:
            figures = {
                key: PartitionView(p.segments_count, p.current_offset, p.size_bytes, p.messages_count)
                for key, p in self.shard.partitions.items()
            }
            return pickle.dumps((figures, len(self.shard.sessions)))
        if what == _GATHER_CLIENTS:
            base = self.handlers[Generation.V08]
            infos = [base._client_info(s).encode() for s in self.shard.sessions.values()]  # type: ignore[attr-defined]
            return b"".join(infos)
        raise IggyError(Status.INVALID_COMMAND, "unknown gather")

    # ---- moving connections ---------------------------------------------------------
    def start_lanes(self) -> None:
        loop = asyncio.get_running_loop()
        for peer, lane in self.lanes.items():
            lane.setblocking(False)
            loop.add_reader(lane.fileno(), self._lane_readable, peer, lane)

    def stop_lanes(self) -> None:
        loop = asyncio.get_running_loop()
        for lane in self.lanes.values():
            loop.remove_reader(lane.fileno())
        for future in self._fds.values():
            if future.done() and not future.cancelled():
                os.close(future.result())

    def _lane_readable(self, peer: int, lane: socket.socket) -> None:
        while True:
            try:
                message, fds, _flags, _address = socket.recv_fds(lane, 16, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("the descriptor lane from shard %d failed: %s", peer, exc)
                asyncio.get_running_loop().remove_reader(lane.fileno())
                return
            if not message:
                asyncio.get_running_loop().remove_reader(lane.fileno())
                return
            handoff = int.from_bytes(message[:4], "little")
            for fd in fds:
                future = self._fd_future(peer, handoff)
                if future.done():
                    os.close(fd)
                else:
                    future.set_result(fd)

    def _fd_future(self, peer: int, handoff: int) -> asyncio.Future[int]:
        future = self._fds.get((peer, handoff))
        if future is None:
            future = self._fds[(peer, handoff)] = asyncio.get_running_loop().create_future()
        return future

    def should_hand_off(self, conn: Connection, session: Session, route: _Route) -> bool:
        """A connection moves to the owner once it sent a few requests in a row for the
        partitions it names there, and nothing of it is queued here."""
        target = route.shard
        if target is None or target == self.shard.shard_id or not route.pinned or self.adopt is None:
            session.handoff_streak = 0
            return False
        if session.handoff_shard != target:
            session.handoff_shard, session.handoff_streak = target, 0
        session.handoff_streak += 1
        transport = conn.transport
        if session.handoff_streak < _HANDOFF_AFTER or transport is None or transport.get_write_buffer_size():
            return False
        session.handoff_streak = 0
        return True

    async def hand_off(self, conn: Connection, target: int, moving: Adopted) -> bool:
        """Passes `conn`'s socket to `target` (the descriptor over the lane, the session and
        the unanswered request over the bus); True when the target took it."""
        session = conn.session
        assert isinstance(session, Session) and conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        if sock is None or target not in self.lanes:
            return False
        self._next_handoff = (self._next_handoff + 1) & 0xFFFFFFFF
        handoff = self._next_handoff
        try:
            socket.send_fds(self.lanes[target], [handoff.to_bytes(4, "little")], [sock.fileno()])
        except OSError as exc:
            log.info("connection %s stays here: its descriptor could not be sent (%s)", conn.peer, exc)
            return False
        state = {name: getattr(session, name) for name in _MOVED_SESSION_FIELDS}
        body = pickle.dumps((handoff, state, moving.generation, moving.key, moving.payload, moving.after))
        try:
            status, reply = await self.peers[target].call(BusMethod.ADOPT, body)
        except BusError as exc:
            log.info("connection %s stays here: shard %d did not take it (%s)", conn.peer, target, exc)
            return False
        if status != _STATUS_OK:
            log.info("connection %s stays here: %s", conn.peer, reply.decode(errors="replace"))
            return False
        self.shard.sessions.pop(session.client_id, None)  # its memberships go on, over there
        log.info(
            "client %d (%s) moved to shard %d, which owns what it uses", session.client_id, conn.peer, target
        )
        return True

    async def _serve_adopt(self, peer: int, body: bytes | bytearray) -> tuple[int, bytes]:
        handoff, state, generation, key, payload, after = pickle.loads(body)
        future = self._fd_future(peer, handoff)
        try:
            fd = await asyncio.wait_for(asyncio.shield(future), _ADOPT_WAIT_S)
        except TimeoutError:
            return int(Status.ERROR), b"the descriptor did not arrive"
        finally:
            self._fds.pop((peer, handoff), None)
        if self.adopt is None or self.shard.stopping:
            os.close(fd)
            return int(Status.ERROR), b"not taking connections"
        session = Session(state["client_id"], state["address"], None, state["last_heartbeat_us"])
        for name, value in state.items():
            setattr(session, name, value)
        self._proxies.pop(session.client_id, None)
        self.shard.sessions[session.client_id] = session
        self.adopt(socket.socket(fileno=fd), Adopted(session, generation, key, payload, after))
        return _STATUS_OK, b""

    # ---- shard 0: publishing --------------------------------------------------------
    async def publish(self) -> None:
        """Sends every op applied here but not yet published to every shard, and waits until
        each applied them. A caller that finds nothing left waits for the batch in flight,
        which may hold its op."""
        async with self._publish_lock:
            items = self.shard.take_outbox()
            if not items or not self.peers:
                return
            body = pickle.dumps(items)
            results = await asyncio.gather(
                *(p.call(BusMethod.APPLY_OPS, body) for p in self.peers.values()), return_exceptions=True
            )
            for peer, outcome in zip(self.peers.values(), results, strict=True):
                if isinstance(outcome, BaseException):
                    revision = items[-1].revision
                    log.error("shard %d did not apply revision %d: %s", peer.peer_id, revision, outcome)

    # ---- gathering ------------------------------------------------------------------
    async def gather_figures(self) -> None:
        views: dict[tuple[int, int, int], PartitionView] = {}
        clients = 0
        for status, body in await self._call_all(BusMethod.GATHER, _GATHER_FIGURES):
            if status == _STATUS_OK:
                figures, sessions = pickle.loads(body)
                views.update(figures)
                clients += sessions
        self.shard.views = views
        self.shard.remote_clients = clients

    async def _gather_clients(self) -> list[bytes | bytearray]:
        replies = await self._call_all(BusMethod.GATHER, _GATHER_CLIENTS)
        return [body for status, body in replies if status == _STATUS_OK]

    async def _call_all(self, method: BusMethod, body: Body) -> list[tuple[int, bytes | bytearray]]:
        calls = (p.call(method, body) for p in self.peers.values())
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        replies: list[tuple[int, bytes | bytearray]] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                replies.append((int(Status.ERROR), str(outcome).encode()))
            else:
                replies.append(outcome)
        return replies

    def leave_all(self, client_id: int) -> None:
        """A client of this shard went away: its group memberships end, through shard 0,
        which publishes the change (every shard then forgets its proxy of the client)."""
        loop = asyncio.get_running_loop()
        if self.shard.shard_id == 0:
            self.shard.leave_all_here(client_id)
            task = loop.create_task(self.publish())
        elif 0 in self.peers:
            body = client_id.to_bytes(4, "little")
            task = loop.create_task(self._quietly(self.peers[0].call(BusMethod.LEAVE_ALL, body)))
        else:
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def catch_up(self) -> None:
        """Shards 1 and up: the whole metadata from shard 0 (at start, or after a gap in the
        published revisions)."""
        status, body = await self.peers[0].call(BusMethod.SNAPSHOT, b"")
        if status != _STATUS_OK:
            raise BusError(f"shard 0 refused a snapshot: {body.decode(errors='replace')}")
        self.shard.catch_up(body)

    @staticmethod
    async def _quietly(call: Awaitable[tuple[int, bytearray]]) -> None:
        try:
            await call
        except BusError as exc:
            log.error("a departed client's group memberships were not ended: %s", exc)


class _RoutedHandler:
    """connection.Handler of one generation on a multi-shard server."""

    def __init__(self, router: Router, generation: Generation, local: Handler) -> None:
        self.router = router
        self.generation = generation
        self.local = local

    def payload_limit(self, conn: Connection, key: RequestKey) -> int:
        return self.local.payload_limit(conn, key)

    def authenticated(self, conn: Connection) -> bool:
        return self.local.authenticated(conn)

    def connection_made(self, conn: Connection) -> None:
        self.local.connection_made(conn)

    def connection_lost(self, conn: Connection) -> None:
        if conn.handed_off:
            return  # the client lives on in another shard (hand_off took it out of the sessions)
        self.local.connection_lost(conn)

    def handle(
        self, conn: Connection, key: RequestKey, payload: memoryview, owned: bool
    ) -> Result | Awaitable[Result]:
        session = conn.session
        if not isinstance(session, Session):
            return self.local.handle(conn, key, payload, owned)
        router = self.router
        if router.shard.config.heartbeat.enabled:
            # A request forwarded elsewhere still shows this shard's client is alive.
            session.last_heartbeat_us = router.shard.clock_us()
        try:
            route = router.route(self.generation, key, payload, session)
        except IggyError:
            return self.local.handle(conn, key, payload, owned)  # it answers the error
        if router.should_hand_off(conn, session, route):
            return Handoff(route.shard)  # type: ignore[arg-type]
        here = route.shard is None or route.shard == router.shard.shard_id
        if here and not (route.everywhere or route.figures or route.changes):
            # The fast path: answered here, nothing to publish or gather.
            session.route_partition = route.partition
            try:
                return self.local.handle(conn, key, payload, owned)
            finally:
                session.route_partition = None
        return router.run(self.generation, conn, key, payload, owned, route)


def _command_of(generation: Generation, key: RequestKey) -> tuple[int | None, bool]:
    """(the command a request carries, whether its body is in the 0.9 layout); None for
    what is answered where the connection is (register, logout, ping)."""
    if generation is Generation.V08:
        assert isinstance(key, int)
        return key, False
    assert isinstance(key, RequestHeader)
    op = key.operation
    if op == Operation.SEND_MESSAGES:
        return int(Command.SEND_MESSAGES), True
    if op in (Operation.REGISTER, Operation.LOGOUT):
        return None, True
    if op == Operation.NON_REPLICATED:
        return key.command_code, True
    code = _CODE_FOR_OPERATION.get(Operation(op))
    return (None if code is None else int(code)), True


def _forward_body(forward: Forward, payload: memoryview) -> list[Buffer]:
    """The request as bus pieces: the payload is not copied (the connection waits for the
    reply, so its buffer stays as it is until the bus has written it)."""
    head = pickle.dumps(forward)
    return [len(head).to_bytes(4, "little"), head, payload]


def _materialized(result: Result) -> Result:
    """A result that can cross the bus: file ranges read."""
    if isinstance(result, Ok):
        pieces = [p.read() if isinstance(p, FileRange) else bytes(p) for p in result.pieces]
        return Ok([b"".join(pieces)] if pieces else [], result.close)
    return result


def _result_of(status: int, body: bytes | bytearray) -> Result:
    if status != _STATUS_OK:
        log.error("a forwarded request failed on the other shard: %s", body.decode(errors="replace"))
        return Failed(Status.ERROR)
    result = pickle.loads(body)
    assert isinstance(result, Ok | Failed | Evicted)
    return result
