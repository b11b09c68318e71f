"""Request bodies and reply records where the two protocol generations differ, for
:class:`~tidelog.client.connection.IggyClient`.

The framing (8-byte or 256-byte headers, result sections, evictions) is the connection's
business; this module holds what differs above it, so each client method is written once.
:class:`Codec` speaks 0.8 and :class:`Codec09` overrides what 0.9 changed (sections 2.11,
3.4-3.7 and 4 of ``shared/protocol/iggy-0.9-vsr.md``). Both hand back the 0.8 value types
(``StreamInfo``, ``TopicDetails``, ``PolledMessage``, ...): a caller cannot tell which
generation answered, except where the wire itself differs (a message checksum covers each
generation's own frame layout; 0.9 topics have no replication factor and read it as 0).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from tidelog.wire.codes import POLL_REPLY_HEADER_SIZE, CompressionAlgorithm, IggyError, Status
from tidelog.wire.primitives import BytesLike, Consumer, Identifier
from tidelog.wire.records import (
    PolledMessage,
    PollHeader,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    UserDetails,
    UserInfo,
    decode_list,
    decode_poll_reply,
    decode_record,
)
from tidelog.wire.requests import (
    CreateTopic,
    DeleteConsumerOffset,
    OutgoingMessage,
    Partitioning,
    StoreConsumerOffset,
    UpdateTopic,
    encode_send_messages,
)
from tidelog.wire.v09.batch import FRAME_HEADER_SIZE, BatchError, build_batch, parse_records
from tidelog.wire.v09.bodies import (
    CreateTopic09,
    DeleteConsumerOffset09,
    StoreConsumerOffset09,
    TopicOptions,
    UpdateTopic09,
    decode_stream09,
    decode_stream_details09,
    decode_streams09,
    decode_topic_details09,
    decode_topics09,
    decode_user_details09,
    decode_users09,
    encode_send_messages09,
)
from tidelog.wire.v09.frames import Generation


class Codec:
    """The 0.8 bodies (0.8 reference sections 2 and 3): the records are decoded as they are."""

    generation = Generation.V08

    # -- replies -------------------------------------------------------------------------

    def user_details(self, body: BytesLike) -> UserDetails:
        return decode_record(UserDetails, body)

    def users(self, body: BytesLike) -> list[UserInfo]:
        return decode_list(UserInfo, body)

    def stream(self, body: BytesLike) -> StreamInfo:
        return decode_record(StreamInfo, body)

    def streams(self, body: BytesLike) -> list[StreamInfo]:
        return decode_list(StreamInfo, body)

    def stream_details(self, body: BytesLike) -> StreamDetails:
        return decode_record(StreamDetails, body)

    def topic_details(self, body: BytesLike) -> TopicDetails:
        return decode_record(TopicDetails, body)

    def topics(self, body: BytesLike) -> list[TopicInfo]:
        return decode_list(TopicInfo, body)

    def poll_reply(self, body: BytesLike) -> tuple[PollHeader, list[PolledMessage]]:
        """A poll reply of at least the 16-byte head; the messages view ``body``."""
        return decode_poll_reply(body)

    # -- requests ------------------------------------------------------------------------

    def create_topic(
        self,
        stream: Identifier,
        name: str,
        partitions_count: int,
        compression_algorithm: int,
        message_expiry_us: int,
        max_topic_size_bytes: int,
        replication_factor: int,
    ) -> bytes:
        return CreateTopic(
            stream,
            partitions_count,
            compression_algorithm,
            message_expiry_us,
            max_topic_size_bytes,
            replication_factor,
            name,
        ).encode()

    def update_topic(
        self,
        stream: Identifier,
        topic: Identifier,
        name: str,
        compression_algorithm: int,
        message_expiry_us: int,
        max_topic_size_bytes: int,
        replication_factor: int,
    ) -> bytes:
        return UpdateTopic(
            stream,
            topic,
            compression_algorithm,
            message_expiry_us,
            max_topic_size_bytes,
            replication_factor,
            name,
        ).encode()

    def store_offset(
        self, consumer: Consumer, stream: Identifier, topic: Identifier, partition_id: int | None, offset: int
    ) -> bytes:
        return StoreConsumerOffset(consumer, stream, topic, partition_id, offset).encode()

    def delete_offset(
        self, consumer: Consumer, stream: Identifier, topic: Identifier, partition_id: int | None
    ) -> bytes:
        return DeleteConsumerOffset(consumer, stream, topic, partition_id).encode()

    def send_messages(
        self,
        stream: Identifier,
        topic: Identifier,
        partitioning: Partitioning,
        messages: Sequence[OutgoingMessage],
    ) -> bytes:
        """The SendMessages body; checksums, offsets, timestamps and ids of 0 are the server's."""
        return encode_send_messages(stream, topic, partitioning, messages)


class Codec09(Codec):
    """The 0.9 bodies: option blocks on streams, topics and users (2.8, 2.11), an ack byte on
    offset writes (2.6), batch records for messages (4.1-4.5)."""

    generation = Generation.V09

    def user_details(self, body: BytesLike) -> UserDetails:
        details = decode_user_details09(body)
        return UserDetails(details.user.info, details.permissions)

    def users(self, body: BytesLike) -> list[UserInfo]:
        return [user.info for user in decode_users09(body)]

    def stream(self, body: BytesLike) -> StreamInfo:
        return decode_stream09(body).info

    def streams(self, body: BytesLike) -> list[StreamInfo]:
        return [stream.info for stream in decode_streams09(body)]

    def stream_details(self, body: BytesLike) -> StreamDetails:
        details = decode_stream_details09(body)
        return StreamDetails(details.stream.info, [header.topic for header in details.topics])

    def topic_details(self, body: BytesLike) -> TopicDetails:
        details = decode_topic_details09(body)
        return TopicDetails(details.header.topic, details.partitions)

    def topics(self, body: BytesLike) -> list[TopicInfo]:
        return [header.topic for header in decode_topics09(body)]

    def poll_reply(self, body: BytesLike) -> tuple[PollHeader, list[PolledMessage]]:
        """The 16-byte head (0.8's), then batch records (4.5) read as the SDK reads them:
        offset = base_offset + offset_delta, timestamp = base_timestamp, origin timestamp =
        origin_timestamp + timestamp_delta. The messages view ``body`` when it is writable
        (the client's receive buffer), else one copy of it (the batch parser wants to own
        its buffer); checksums are not verified, as by the SDK."""
        view = memoryview(body)
        header = decode_record(PollHeader, view)
        return header, polled_messages09(view[POLL_REPLY_HEADER_SIZE:])

    def create_topic(
        self,
        stream: Identifier,
        name: str,
        partitions_count: int,
        compression_algorithm: int,
        message_expiry_us: int,
        max_topic_size_bytes: int,
        replication_factor: int,
    ) -> bytes:
        # Only the keys that differ from the server default are sent (0 means "server
        # default" for expiry and size, 2.10); 0.9 has no replication factor (surprise 15).
        options = TopicOptions(
            compression_algorithm=(
                None if compression_algorithm == CompressionAlgorithm.NONE else compression_algorithm
            ),
            message_expiry=message_expiry_us or None,
            max_topic_size=max_topic_size_bytes or None,
        )
        return CreateTopic09(stream, partitions_count, name, options).encode()

    def update_topic(
        self,
        stream: Identifier,
        topic: Identifier,
        name: str,
        compression_algorithm: int,
        message_expiry_us: int,
        max_topic_size_bytes: int,
        replication_factor: int,
    ) -> bytes:
        # 0.9 leaves absent keys unchanged (3.5); 0.8's UpdateTopic sets all of them, so all
        # three are sent to mean the same.
        options = TopicOptions(
            compression_algorithm=compression_algorithm,
            message_expiry=message_expiry_us,
            max_topic_size=max_topic_size_bytes,
        )
        return UpdateTopic09(stream, topic, name, options).encode()

    def store_offset(
        self, consumer: Consumer, stream: Identifier, topic: Identifier, partition_id: int | None, offset: int
    ) -> bytes:
        return StoreConsumerOffset09(consumer, stream, topic, partition_id, offset).encode()

    def delete_offset(
        self, consumer: Consumer, stream: Identifier, topic: Identifier, partition_id: int | None
    ) -> bytes:
        return DeleteConsumerOffset09(consumer, stream, topic, partition_id).encode()

    def send_messages(
        self,
        stream: Identifier,
        topic: Identifier,
        partitioning: Partitioning,
        messages: Sequence[OutgoingMessage],
    ) -> bytes:
        """One batch (4.1-4.3) with every checksum computed, as the producer must (4.7); an
        id of 0 becomes a random UUIDv4 first, as the SDK does (surprise 12)."""
        try:
            batch = build_batch(
                [m.id or uuid.uuid4().int for m in messages],
                [bytes(m.payload) for m in messages],
                [bytes(m.user_headers) for m in messages],
                [m.origin_timestamp_us for m in messages],
            )
        except BatchError as exc:
            raise ValueError(
                "the origin timestamps of one batch spread over more than u32::MAX µs (section 1.8)"
            ) from exc
        return encode_send_messages09(stream, topic, partitioning, batch)


def polled_messages09(records: memoryview) -> list[PolledMessage]:
    """Batch records (a poll reply after its head, 4.5) as 0.8's ``PolledMessage`` objects."""
    if not records:
        return []
    try:
        batches = parse_records(records, verify_checksums=False)
    except BatchError as exc:
        status = exc.status if isinstance(exc.status, Status) else Status.INVALID_COMMAND
        raise IggyError(status, f"poll reply records: {exc}") from exc
    out: list[PolledMessage] = []
    for batch in batches:
        frames = batch.frames()
        view = batch.buf.toreadonly()
        base_offset, timestamp, origin = batch.base_offset, batch.base_timestamp, batch.origin_timestamp
        # One tolist() per column instead of a numpy scalar per field and message.
        rows = zip(
            batch.starts.tolist(),
            batch.ends.tolist(),
            frames["checksum"].tolist(),
            frames["id_lo"].tolist(),
            frames["id_hi"].tolist(),
            frames["offset_delta"].tolist(),
            frames["timestamp_delta"].tolist(),
            frames["user_headers_length"].tolist(),
            frames["payload_length"].tolist(),
            strict=True,
        )
        for start, end, checksum, id_lo, id_hi, offset_delta, delta_us, headers_length, length in rows:
            body = start + FRAME_HEADER_SIZE
            split = body + length
            out.append(
                PolledMessage(
                    checksum,
                    id_lo | (id_hi << 64),
                    base_offset + offset_delta,
                    timestamp,
                    origin + delta_us,
                    headers_length,
                    length,
                    0,  # parse_batch refuses frames whose reserved field is not zero
                    view[body:split],
                    view[split:end],
                )
            )
    return out


CODECS: dict[Generation, Codec] = {Generation.V08: Codec(), Generation.V09: Codec09()}
