"""Command codes, status codes and per-command limits of the Iggy 0.8 classic protocol.

The numbers are the wire contract (``shared/protocol/iggy-0.8-tcp.md`` sections 3 and 5):
never renumber them.
"""

from __future__ import annotations

from enum import IntEnum


class Command(IntEnum):
    PING = 1
    GET_STATS = 10
    GET_SNAPSHOT = 11
    GET_CLUSTER_METADATA = 12
    GET_ME = 20
    GET_CLIENT = 21
    GET_CLIENTS = 22
    GET_USER = 31
    GET_USERS = 32
    CREATE_USER = 33
    DELETE_USER = 34
    UPDATE_USER = 35
    UPDATE_PERMISSIONS = 36
    CHANGE_PASSWORD = 37
    LOGIN_USER = 38
    LOGOUT_USER = 39
    GET_PERSONAL_ACCESS_TOKENS = 41
    CREATE_PERSONAL_ACCESS_TOKEN = 42
    DELETE_PERSONAL_ACCESS_TOKEN = 43
    LOGIN_WITH_PERSONAL_ACCESS_TOKEN = 44
    POLL_MESSAGES = 100
    SEND_MESSAGES = 101
    FLUSH_UNSAVED_BUFFER = 102
    GET_CONSUMER_OFFSET = 120
    STORE_CONSUMER_OFFSET = 121
    DELETE_CONSUMER_OFFSET = 122
    GET_STREAM = 200
    GET_STREAMS = 201
    CREATE_STREAM = 202
    DELETE_STREAM = 203
    UPDATE_STREAM = 204
    PURGE_STREAM = 205
    GET_TOPIC = 300
    GET_TOPICS = 301
    CREATE_TOPIC = 302
    DELETE_TOPIC = 303
    UPDATE_TOPIC = 304
    PURGE_TOPIC = 305
    CREATE_PARTITIONS = 402
    DELETE_PARTITIONS = 403
    DELETE_SEGMENTS = 503
    GET_CONSUMER_GROUP = 600
    GET_CONSUMER_GROUPS = 601
    CREATE_CONSUMER_GROUP = 602
    DELETE_CONSUMER_GROUP = 603
    JOIN_CONSUMER_GROUP = 604
    LEAVE_CONSUMER_GROUP = 605


KNOWN_COMMANDS: frozenset[int] = frozenset(int(c) for c in Command)

# Commands a connection may send before it has logged in (section 1.5).
UNAUTHENTICATED_COMMANDS: frozenset[int] = frozenset(
    {Command.PING, Command.LOGIN_USER, Command.LOGIN_WITH_PERSONAL_ACCESS_TOKEN}
)


class Status(IntEnum):
    OK = 0
    ERROR = 1
    INVALID_CONFIGURATION = 2
    INVALID_COMMAND = 3
    INVALID_FORMAT = 4
    FEATURE_UNAVAILABLE = 5
    INVALID_IDENTIFIER = 6
    DISCONNECTED = 8
    RESOURCE_NOT_FOUND = 20
    STALE_CLIENT = 30
    UNAUTHENTICATED = 40
    UNAUTHORIZED = 41
    INVALID_CREDENTIALS = 42
    INVALID_USERNAME = 43
    INVALID_PASSWORD = 44
    INVALID_USER_STATUS = 45
    USER_ALREADY_EXISTS = 46
    USER_INACTIVE = 47
    CANNOT_DELETE_USER = 48
    CANNOT_CHANGE_PERMISSIONS = 49
    INVALID_PERSONAL_ACCESS_TOKEN_NAME = 50
    PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS = 51
    PERSONAL_ACCESS_TOKENS_LIMIT_REACHED = 52
    INVALID_PERSONAL_ACCESS_TOKEN = 53
    PERSONAL_ACCESS_TOKEN_EXPIRED = 54
    USERS_LIMIT_REACHED = 55
    INVALID_PERSONAL_ACCESS_TOKEN_EXPIRY = 56  # the 0.9 reference's code; 0.8 has none
    INVALID_SIZE_BYTES = 80
    INVALID_UTF8 = 81
    INVALID_NUMBER_ENCODING = 82
    CLIENT_NOT_FOUND = 100
    INVALID_CLIENT_ID = 101
    STREAM_ID_NOT_FOUND = 1009
    STREAM_NAME_NOT_FOUND = 1010
    STREAM_NAME_ALREADY_EXISTS = 1012
    INVALID_STREAM_NAME = 1013
    INVALID_STREAM_ID = 1014
    INVALID_TOPIC_SIZE = 1019
    TOPIC_ID_NOT_FOUND = 2010
    TOPIC_NAME_NOT_FOUND = 2011
    TOPIC_NAME_ALREADY_EXISTS = 2013
    INVALID_TOPIC_NAME = 2014
    TOO_MANY_PARTITIONS = 2015
    INVALID_TOPIC_ID = 2016
    INVALID_REPLICATION_FACTOR = 2018
    INVALID_PARTITIONS_COUNT = 2019
    PARTITION_NOT_FOUND = 3007
    NO_PARTITIONS = 3008
    CONSUMER_OFFSET_NOT_FOUND = 3021
    NOT_RESOLVED_CONSUMER = 3022
    SEGMENT_NOT_FOUND = 4000
    CANNOT_SAVE_MESSAGES = 4006  # a write or sync failed; also while the partition recovers
    INVALID_MESSAGES_COUNT = 4009
    TOO_BIG_USER_HEADERS = 4017
    TOO_BIG_MESSAGE_PAYLOAD = 4022
    INVALID_MESSAGE_PAYLOAD_LENGTH = 4025
    INVALID_MESSAGE_CHECKSUM = 4027
    NON_ZERO_OFFSET = 4031
    NON_ZERO_TIMESTAMP = 4032
    MISSING_INDEX = 4033
    INVALID_INDEXES_BYTE_SIZE = 4034
    INVALID_INDEXES_COUNT = 4035
    INVALID_MESSAGES_SIZE = 4036
    TOO_SMALL_MESSAGE = 4037
    INVALID_OFFSET = 4100
    INVALID_RESERVED_FIELD = 4101
    CONSUMER_GROUP_ID_NOT_FOUND = 5000
    INVALID_CONSUMER_GROUP_ID = 5002
    CONSUMER_GROUP_NAME_NOT_FOUND = 5003
    CONSUMER_GROUP_NAME_ALREADY_EXISTS = 5004
    INVALID_CONSUMER_GROUP_NAME = 5005
    CONSUMER_GROUP_MEMBER_NOT_FOUND = 5006
    METADATA_READ_ONLY = 9101  # tidelog's own: metadata changes refused after a metadata-log write failure
    CANNOT_SAVE_CONSUMER_OFFSET = 9102  # tidelog's own: a consumer-offset write or sync failed
    CANNOT_READ_INDEX_POSITION = 10011


class UserStatus(IntEnum):
    ACTIVE = 1
    INACTIVE = 2


class CompressionAlgorithm(IntEnum):
    NONE = 1
    GZIP = 2


class IggyError(Exception):
    """An error that travels to the client as a status code (the text stays on the server).

    Raised by the codec, metadata and storage layers alike; the network shell turns it
    into an error frame and keeps the connection.
    """

    # Either generation's code enum: 0.9 adds codes 0.8 does not have (wire/v09/codes.py).
    def __init__(self, status: IntEnum, detail: str = "") -> None:
        super().__init__(f"{status.name} ({int(status)}){': ' + detail if detail else ''}")
        self.status = status
        self.detail = detail


# Request frame limits (section 1.2): every payload but SendMessages is capped at 10 MiB.
FRAME_HEADER_SIZE = 8
MAX_CONTROL_PAYLOAD_BYTES = 10 * 1024 * 1024

# Message limits (section 4.1).
MESSAGE_HEADER_SIZE = 64
INDEX_ENTRY_SIZE = 16
MAX_PAYLOAD_BYTES = 64_000_000
MAX_USER_HEADERS_BYTES = 100_000
POLL_REPLY_HEADER_SIZE = 16

# Entity limits (sections 3.3, 3.4, 3.6, 4.6).
MAX_PARTITIONS_PER_REQUEST = 1000
USERNAME_LEN_MIN, USERNAME_LEN_MAX = 3, 50
PASSWORD_LEN_MIN, PASSWORD_LEN_MAX = 3, 100
PAT_NAME_LEN_MIN, PAT_NAME_LEN_MAX = 3, 30
MAX_TOKENS_PER_USER = 100

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
NO_USER_ID = U32_MAX  # Client record: not logged in

assert FRAME_HEADER_SIZE == 8 and MESSAGE_HEADER_SIZE == 64 and INDEX_ENTRY_SIZE == 16
