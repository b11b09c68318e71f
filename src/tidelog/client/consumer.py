"""A polling consumer over :class:`~tidelog.client.connection.IggyClient`, in the client's
protocol generation.

Two modes:

* single consumer (``consumer_id``): reads one explicit partition, or every partition of the
  topic in turn. The first poll of a partition uses the configured strategy; after that the
  consumer continues at ``last offset + 1`` itself, so any strategy reads forward.
* group member (``group="name"``): creates the group if it is missing, joins it, and polls
  without a partition: over 0.8 the server picks one of the member's partitions, over 0.9
  the client does from the assignment it syncs (``IggyClient.poll_messages``). Groups read with
  the ``next`` strategy: the server continues after the group's stored offset, so either
  ``auto_commit`` or :meth:`Consumer.store_offset` must move it.

When a whole round of polls finds nothing new the consumer sleeps, starting at
``min_backoff_ms`` and doubling up to ``poll_interval_ms``; the sleep resets as soon as
messages arrive. It never spins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from tidelog.client.connection import (
    IggyClient,
    IggyConnectionError,
    IggyServerError,
    PolledBatch,
    PollingStrategy,
)
from tidelog.wire.codes import Status
from tidelog.wire.primitives import Consumer as WireConsumer
from tidelog.wire.primitives import ConsumerKind, PollingKind, identifier_from_user
from tidelog.wire.records import PolledMessage


class Consumer:
    """Reads a topic message by message (``async for``) or batch by batch (:meth:`batches`).

    Delivered messages are views over their poll's receive buffer: copy a payload
    (``bytes(message.payload)``) to keep it beyond the next few polls cheaply.
    """

    def __init__(
        self,
        client: IggyClient,
        stream: int | str,
        topic: int | str,
        *,
        consumer_id: int | str = 0,
        group: str | None = None,
        partition_id: int | None = None,
        strategy: PollingStrategy | None = None,
        batch_length: int = 100,
        auto_commit: bool = True,
        poll_interval_ms: float = 100.0,
        min_backoff_ms: float = 1.0,
        create_group_if_missing: bool = True,
    ) -> None:
        strategy = strategy if strategy is not None else PollingStrategy.next()
        if group is not None and strategy.kind != PollingKind.NEXT:
            raise ValueError("a consumer-group member reads with the 'next' strategy")
        if batch_length < 1:
            raise ValueError("batch_length must be at least 1")
        if not 0 < min_backoff_ms <= poll_interval_ms:
            raise ValueError("need 0 < min_backoff_ms <= poll_interval_ms")
        self.client = client
        self.stream = stream
        self.topic = topic
        self.group = group
        self.partition_id = partition_id
        self.strategy = strategy
        self.batch_length = batch_length
        self.auto_commit = auto_commit
        self.poll_interval_ms = poll_interval_ms
        self.min_backoff_ms = min_backoff_ms
        self.create_group_if_missing = create_group_if_missing
        if group is not None:
            self.wire_consumer = WireConsumer(ConsumerKind.CONSUMER_GROUP, identifier_from_user(group))
        else:
            self.wire_consumer = WireConsumer(ConsumerKind.CONSUMER, identifier_from_user(consumer_id))
        self._partitions: list[int] = []
        self._turn = 0
        self._next_offsets: dict[int, int] = {}
        self._pending: deque[PolledMessage] = deque()
        self._pending_partition = 0
        self._backoff_s = min_backoff_ms / 1000.0
        self._joined = False
        self._closed = False
        self.current_partition_id: int | None = None
        """Partition of the message (or batch) delivered last."""
        self.last_offset: int | None = None
        """Offset of the message delivered last."""
        self.polls_count = 0
        self.sleeps_count = 0

    async def init(self) -> None:
        """Learn the partitions; for a group, create it if asked to and join it."""
        await self._refresh_partitions()
        if self.group is None:
            return
        if self.create_group_if_missing:
            try:
                await self.client.create_consumer_group(self.stream, self.topic, self.group)
            except IggyServerError as exc:
                if exc.code != Status.CONSUMER_GROUP_NAME_ALREADY_EXISTS:
                    raise
        await self.client.join_consumer_group(self.stream, self.topic, self.group)
        self._joined = True

    async def _refresh_partitions(self) -> None:
        details = await self.client.get_topic(self.stream, self.topic)
        if details is None:
            raise LookupError(f"topic {self.topic!r} of stream {self.stream!r} does not exist")
        self._partitions = [p.id for p in details.partitions]

    @property
    def _round_size(self) -> int:
        """Polls that must all come back empty before the consumer sleeps."""
        if self.partition_id is not None:
            return 1
        return max(1, len(self._partitions))

    async def poll(self) -> PolledBatch:
        """One poll request, no waiting: the next partition in turn (or the server's pick)."""
        if self._closed:
            raise RuntimeError("consumer is closed")
        strategy = self.strategy
        partition = self.partition_id
        if self.group is None:
            if partition is None:
                if not self._partitions:
                    await self._refresh_partitions()
                    if not self._partitions:
                        return PolledBatch(0, 0, [])
                partition = self._partitions[self._turn % len(self._partitions)]
                self._turn += 1
            resume = self._next_offsets.get(partition)
            if resume is not None:
                strategy = PollingStrategy.offset(resume)
        self.polls_count += 1
        try:
            batch = await self.client.poll_messages(
                self.stream,
                self.topic,
                partition,
                strategy,
                self.batch_length,
                self.auto_commit,
                self.wire_consumer,
            )
        except IggyServerError as exc:
            if exc.code == Status.PARTITION_NOT_FOUND and self.partition_id is None:
                # Partitions were deleted under us: rotate over the ones that are left.
                await self._refresh_partitions()
                return PolledBatch(partition or 0, 0, [])
            raise
        if batch.messages:
            last = batch.messages[-1].offset
            if self.group is None:
                self._next_offsets[batch.partition_id] = last + 1
            self.current_partition_id = batch.partition_id
        return batch

    async def _next_batch(self) -> PolledBatch | None:
        """Poll until something arrives, sleeping with backoff after each empty round."""
        empty_polls = 0
        while not self._closed:
            batch = await self.poll()
            if batch.messages:
                self._backoff_s = self.min_backoff_ms / 1000.0
                return batch
            empty_polls += 1
            if empty_polls >= self._round_size:
                empty_polls = 0
                self.sleeps_count += 1
                await asyncio.sleep(self._backoff_s)
                self._backoff_s = min(self._backoff_s * 2, self.poll_interval_ms / 1000.0)
        return None

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> PolledMessage:
        while not self._pending:
            batch = await self._next_batch()
            if batch is None:
                raise StopAsyncIteration
            self._pending.extend(batch.messages)
            self._pending_partition = batch.partition_id
        message = self._pending.popleft()
        self.current_partition_id = self._pending_partition
        self.last_offset = message.offset
        return message

    async def batches(self) -> AsyncIterator[PolledBatch]:
        """Non-empty batches until :meth:`close` (messages not yet taken by ``async for`` first)."""
        if self._pending:
            messages = list(self._pending)
            self._pending.clear()
            yield PolledBatch(self._pending_partition, 0, messages)
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            if batch.messages:
                self.last_offset = batch.messages[-1].offset
            yield batch

    async def store_offset(self, offset: int, partition_id: int | None = None) -> None:
        """Store ``offset`` as consumed on ``partition_id`` (default: the last delivered one's)."""
        partition = partition_id if partition_id is not None else self.current_partition_id
        if partition is None:
            partition = self.partition_id
        await self.client.store_consumer_offset(
            self.wire_consumer, self.stream, self.topic, partition, offset
        )

    async def commit(self) -> None:
        """Store the offset of the message delivered last (no-op before the first one)."""
        if self.last_offset is not None:
            await self.store_offset(self.last_offset)

    async def get_offset(self, partition_id: int | None = None) -> int | None:
        """The stored offset of this consumer (or group) on a partition, ``None`` if none."""
        partition = partition_id if partition_id is not None else self.current_partition_id
        info = await self.client.get_consumer_offset(self.wire_consumer, self.stream, self.topic, partition)
        return None if info is None else info.stored_offset

    async def close(self) -> None:
        """Stop iterating and leave the group."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        if self._joined:
            self._joined = False
            assert self.group is not None
            with contextlib.suppress(IggyConnectionError):
                try:
                    await self.client.leave_consumer_group(self.stream, self.topic, self.group)
                except IggyServerError as exc:
                    if exc.code != Status.CONSUMER_GROUP_MEMBER_NOT_FOUND:
                        raise

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
