"""tidelog's native asyncio client for the Iggy 0.8 binary protocol.

``IggyClient`` speaks every command on one TCP connection; ``Producer`` batches sends and
``Consumer`` polls with backoff, alone or as a consumer-group member. The wire value types
(``Partitioning``, ``OutgoingMessage``, ``PolledMessage``, permissions, records) come from
the same sans-IO codec the server uses.
"""

from tidelog.client.connection import (
    DEFAULT_CONSUMER,
    ConnectionOptions,
    ConsumerId,
    IggyClient,
    IggyConnectionError,
    IggyServerError,
    IggyTimeoutError,
    PolledBatch,
    PollingStrategy,
    encode_send_frame,
    parse_connection_string,
    parse_duration_s,
    status_name,
)
from tidelog.client.consumer import Consumer
from tidelog.client.producer import Producer, ProducerClosedError
from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions, TopicPermissions
from tidelog.wire.codes import IggyError, Status
from tidelog.wire.commands import (
    CompressionAlgorithm,
    ConsumerKind,
    OutgoingMessage,
    Partitioning,
    PolledMessage,
    PollHeader,
    SnapshotCompression,
    SnapshotType,
    UserStatus,
)

__all__ = [
    "DEFAULT_CONSUMER",
    "CompressionAlgorithm",
    "ConnectionOptions",
    "Consumer",
    "ConsumerId",
    "ConsumerKind",
    "GlobalPermissions",
    "IggyClient",
    "IggyConnectionError",
    "IggyError",
    "IggyServerError",
    "IggyTimeoutError",
    "OutgoingMessage",
    "Partitioning",
    "Permissions",
    "PollHeader",
    "PolledBatch",
    "PolledMessage",
    "PollingStrategy",
    "Producer",
    "ProducerClosedError",
    "SnapshotCompression",
    "SnapshotType",
    "Status",
    "StreamPermissions",
    "TopicPermissions",
    "UserStatus",
    "encode_send_frame",
    "parse_connection_string",
    "parse_duration_s",
    "status_name",
]
