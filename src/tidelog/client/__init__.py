"""tidelog's native asyncio client for both Iggy binary protocol generations.

``IggyClient`` speaks every command on one TCP connection, in 0.9 (VSR framing, the default)
or 0.8 (classic framing): ``IggyClient.connect(..., protocol="0.8")``, or ``?protocol=0.8`` in
a connection string. ``Producer`` batches sends and
``Consumer`` polls with backoff, alone or as a consumer-group member. The wire value types
(``Partitioning``, ``OutgoingMessage``, ``PolledMessage``, permissions, records) come from
the same sans-IO codec the server uses.
"""

from tidelog.client.connection import (
    DEFAULT_CONSUMER,
    DEFAULT_PROTOCOL,
    ConnectionOptions,
    ConsumerId,
    IggyClient,
    IggyConnectionError,
    IggyEvictedError,
    IggyServerError,
    IggyTimeoutError,
    PolledBatch,
    PollingStrategy,
    ProtocolGeneration,
    encode_send_frame,
    parse_connection_string,
    parse_duration_s,
    parse_protocol,
    status_name,
)
from tidelog.client.consumer import Consumer
from tidelog.client.producer import Producer, ProducerClosedError
from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions, TopicPermissions
from tidelog.wire.codes import CompressionAlgorithm, IggyError, Status, UserStatus
from tidelog.wire.primitives import ConsumerKind, SnapshotCompression, SnapshotType
from tidelog.wire.records import PolledMessage, PollHeader
from tidelog.wire.requests import OutgoingMessage, Partitioning

__all__ = [
    "DEFAULT_CONSUMER",
    "DEFAULT_PROTOCOL",
    "CompressionAlgorithm",
    "ConnectionOptions",
    "Consumer",
    "ConsumerId",
    "ConsumerKind",
    "GlobalPermissions",
    "IggyClient",
    "IggyConnectionError",
    "IggyError",
    "IggyEvictedError",
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
    "ProtocolGeneration",
    "SnapshotCompression",
    "SnapshotType",
    "Status",
    "StreamPermissions",
    "TopicPermissions",
    "UserStatus",
    "encode_send_frame",
    "parse_connection_string",
    "parse_duration_s",
    "parse_protocol",
    "status_name",
]
