"""A batching producer over :class:`~tidelog.client.connection.IggyClient`, in the client's
protocol generation (a 0.9 batch carries the checksums the client computes).

Messages are buffered per partitioning and sent as one SendMessages batch when a buffer holds
``batch_length`` messages or when ``linger_ms`` has passed since its first message. The buffer
is bounded: a ``send`` that finds ``max_buffered`` messages waiting flushes (and so waits)
before it returns, which is how backpressure reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable

from tidelog.client.connection import IggyClient, IggyServerError
from tidelog.wire.codes import Status
from tidelog.wire.requests import OutgoingMessage, Partitioning


class ProducerClosedError(RuntimeError):
    pass


class Producer:
    """Buffers messages and sends them in batches.

    ``partitioning`` is the default for :meth:`send`; a call may pass another one (for
    instance ``Partitioning.messages_key(b"user-7")``), and each partitioning gets its own
    batch. A background flush that fails keeps its error and raises it from the next
    ``send``, ``flush`` or ``close``; the messages of that batch are not sent again.
    """

    def __init__(
        self,
        client: IggyClient,
        stream: int | str,
        topic: int | str,
        *,
        partitioning: Partitioning | None = None,
        batch_length: int = 1000,
        linger_ms: float = 5.0,
        max_buffered: int | None = None,
        create_stream_and_topic_if_missing: bool = False,
        topic_partitions_count: int = 1,
    ) -> None:
        if batch_length < 1:
            raise ValueError("batch_length must be at least 1")
        if linger_ms < 0:
            raise ValueError("linger_ms must not be negative")
        self.client = client
        self.stream = stream
        self.topic = topic
        self.partitioning = partitioning if partitioning is not None else Partitioning.balanced()
        self.batch_length = batch_length
        self.linger_ms = linger_ms
        self.max_buffered = max_buffered if max_buffered is not None else 4 * batch_length
        if self.max_buffered < batch_length:
            raise ValueError("max_buffered must be at least batch_length")
        self._create_if_missing = create_stream_and_topic_if_missing
        self._topic_partitions_count = topic_partitions_count
        self._buffers: dict[Partitioning, list[OutgoingMessage]] = {}
        self._buffered = 0
        self._send_lock = asyncio.Lock()
        self._linger_handle: asyncio.TimerHandle | None = None
        self._linger_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.batches_sent = 0
        self.messages_sent = 0

    async def init(self) -> None:
        """Create the stream and topic when asked to and they are missing."""
        if not self._create_if_missing:
            return
        if await self.client.get_stream(self.stream) is None:
            if not isinstance(self.stream, str):
                raise ValueError("a missing stream can only be created from a name")
            await _ignore_exists(self.client.create_stream(self.stream))
        if await self.client.get_topic(self.stream, self.topic) is None:
            if not isinstance(self.topic, str):
                raise ValueError("a missing topic can only be created from a name")
            await _ignore_exists(
                self.client.create_topic(self.stream, self.topic, self._topic_partitions_count)
            )

    @property
    def buffered(self) -> int:
        """Messages waiting to be sent."""
        return self._buffered

    def _raise_pending(self) -> None:
        if self._closed:
            raise ProducerClosedError("producer is closed")
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def send(
        self, message: bytes | OutgoingMessage, *, partitioning: Partitioning | None = None
    ) -> None:
        """Buffer one message; sends a batch when it is full (and waits when the buffer is)."""
        self._raise_pending()
        key = partitioning if partitioning is not None else self.partitioning
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = []
        buffer.append(message if isinstance(message, OutgoingMessage) else OutgoingMessage(bytes(message)))
        self._buffered += 1
        if len(buffer) >= self.batch_length:
            await self._send_batch(key)
        elif self._buffered >= self.max_buffered:
            await self._send_batch(max(self._buffers, key=lambda k: len(self._buffers[k])))
        else:
            self._arm_linger()

    async def send_many(
        self, messages: Iterable[bytes | OutgoingMessage], *, partitioning: Partitioning | None = None
    ) -> None:
        for message in messages:
            await self.send(message, partitioning=partitioning)

    async def flush(self) -> None:
        """Send everything buffered now."""
        self._disarm_linger()
        while self._buffers:
            await self._send_batch(next(iter(self._buffers)))
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def close(self) -> None:
        """Flush, then refuse further sends."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            self._disarm_linger()
            task = self._linger_task
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------------

    async def _send_batch(self, key: Partitioning) -> None:
        """Send up to ``batch_length`` messages of one buffer; one batch in flight at a time."""
        async with self._send_lock:
            buffer = self._buffers.get(key)
            if not buffer:
                return
            batch = buffer[: self.batch_length]
            del buffer[: self.batch_length]
            if not buffer:
                del self._buffers[key]
            self._buffered -= len(batch)
            if not self._buffers:
                self._disarm_linger()
            await self.client.send_messages(self.stream, self.topic, key, batch)
            self.batches_sent += 1
            self.messages_sent += len(batch)

    def _arm_linger(self) -> None:
        if self._linger_handle is None and (self._linger_task is None or self._linger_task.done()):
            loop = asyncio.get_running_loop()
            self._linger_handle = loop.call_later(self.linger_ms / 1000.0, self._on_linger)

    def _disarm_linger(self) -> None:
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None

    def _on_linger(self) -> None:
        self._linger_handle = None
        self._linger_task = asyncio.get_running_loop().create_task(self._linger_flush())

    async def _linger_flush(self) -> None:
        try:
            while self._buffers:
                await self._send_batch(next(iter(self._buffers)))
        except Exception as exc:
            self._error = exc


async def _ignore_exists(call: Awaitable[object]) -> None:
    try:
        await call
    except IggyServerError as exc:
        if exc.code not in (Status.STREAM_NAME_ALREADY_EXISTS, Status.TOPIC_NAME_ALREADY_EXISTS):
            raise
