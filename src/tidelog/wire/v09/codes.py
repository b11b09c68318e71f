"""Numbers of the Iggy 0.9 (SDK 0.11 crates) VSR framing: header commands, operations,
classic command codes, eviction reasons and the error codes 0.9 adds to 0.8.

Reference: ``shared/protocol/iggy-0.9-vsr.md`` sections 1.2-1.6, 3.1 and 6. The numbers are
the wire contract: never renumber them.
"""

from __future__ import annotations

from enum import Enum, IntEnum

from tidelog.wire.codes import Status


class VsrCommand(IntEnum):
    """The ``command`` byte at header offset 60 (sections 1.2, 1.3, 1.6).

    Only the three values a client/server pair exchanges are listed; the SDK treats any
    other reply command as "Invalid command".
    """

    REQUEST = 5
    REPLY = 8
    EVICTION = 13


class Operation(IntEnum):
    """The ``operation`` byte: request offset 176, echoed at reply offset 208 (section 1.4)."""

    RESERVED = 0
    REGISTER = 1
    NON_REPLICATED = 2
    LOGOUT = 3
    # Internal operations (64-68): produced by the real server's state machine, never
    # sent by clients. Listed because the real server echoes 68 for DeleteSegments.
    CREATE_TOPIC_WITH_ASSIGNMENTS = 64
    CREATE_PARTITIONS_WITH_ASSIGNMENTS = 65
    REMOVE_CONSUMER_GROUP_MEMBER = 66
    COMPLETE_CONSUMER_GROUP_REVOCATION = 67
    TRUNCATE_PARTITION = 68
    CREATE_STREAM = 128
    UPDATE_STREAM = 129
    DELETE_STREAM = 130
    PURGE_STREAM = 131
    CREATE_TOPIC = 132
    UPDATE_TOPIC = 133
    DELETE_TOPIC = 134
    PURGE_TOPIC = 135
    CREATE_PARTITIONS = 136
    DELETE_PARTITIONS = 137
    DELETE_SEGMENTS = 138
    CREATE_CONSUMER_GROUP = 139
    DELETE_CONSUMER_GROUP = 140
    CREATE_USER = 141
    UPDATE_USER = 142
    DELETE_USER = 143
    CHANGE_PASSWORD = 144
    UPDATE_PERMISSIONS = 145
    CREATE_PERSONAL_ACCESS_TOKEN = 146
    DELETE_PERSONAL_ACCESS_TOKEN = 147
    JOIN_CONSUMER_GROUP = 148
    LEAVE_CONSUMER_GROUP = 149
    SEND_MESSAGES = 160
    STORE_CONSUMER_OFFSET = 161
    DELETE_CONSUMER_OFFSET = 162


INTERNAL_OPERATIONS: frozenset[Operation] = frozenset(
    op for op in Operation if Operation.CREATE_TOPIC_WITH_ASSIGNMENTS <= op <= Operation.TRUNCATE_PARTITION
)
# Section 1.4 class "metadata": 128-149 except DeleteSegments (138), which is "special".
METADATA_OPERATIONS: frozenset[Operation] = frozenset(
    op
    for op in Operation
    if Operation.CREATE_STREAM <= op <= Operation.LEAVE_CONSUMER_GROUP and op != Operation.DELETE_SEGMENTS
)
PARTITION_OPERATIONS: frozenset[Operation] = frozenset(
    {Operation.SEND_MESSAGES, Operation.STORE_CONSUMER_OFFSET, Operation.DELETE_CONSUMER_OFFSET}
)
# "Replicated" in the sense of section 1.7: everything 128-162 (needs a bound session).
REPLICATED_OPERATIONS: frozenset[Operation] = frozenset(
    METADATA_OPERATIONS | PARTITION_OPERATIONS | {Operation.DELETE_SEGMENTS}
)
# What a client may put in a request; 0 and the internal ops are invalid headers (1.7).
CLIENT_OPERATIONS: frozenset[Operation] = frozenset(
    REPLICATED_OPERATIONS | {Operation.REGISTER, Operation.NON_REPLICATED, Operation.LOGOUT}
)
# Section 1.2: the SDK stamps request_checksum only for these; the server checks any
# non-zero value whatever the operation.
CHECKSUMMED_OPERATIONS: frozenset[Operation] = frozenset(
    METADATA_OPERATIONS | {Operation.DELETE_SEGMENTS, Operation.REGISTER, Operation.LOGOUT}
)


class ReplyFraming(Enum):
    """How a reply body is framed for an echoed operation (sections 1.4, 1.5)."""

    RAW = "raw"
    RESULT_SECTION = "result section"


# Raw-framed operations (section 1.5 last bullet); DeleteSegments only when echoed as 138.
_RAW_OPERATIONS: frozenset[Operation] = frozenset(
    {Operation.NON_REPLICATED, Operation.LOGOUT, Operation.DELETE_SEGMENTS, Operation.SEND_MESSAGES}
)


def reply_framing(operation: Operation) -> ReplyFraming:
    """The body framing the SDK applies to a reply echoing ``operation`` (section 1.4).

    Operation 0 has no framing (the SDK fails the decode), so asking for it is a bug.
    """
    assert operation != Operation.RESERVED, "operation 0 is never echoed"
    return ReplyFraming.RAW if operation in _RAW_OPERATIONS else ReplyFraming.RESULT_SECTION


class CommandCode(IntEnum):
    """Classic command codes of the 0.9 generation (section 3.1).

    Only NonReplicated requests carry one on the wire (header bytes 196..200); for the
    other operations the code is implied by the operation (see :data:`OPERATION_FOR_CODE`).

    Its own enum rather than `tidelog.wire.codes.Command`: 0.9 adds 13, 40, 45 and 606, and the
    0.8 dispatcher asserts that `Command` is exactly what it serves. Codes both generations
    have keep the same name and value (a unit test holds them together).
    """

    PING = 1
    GET_STATS = 10
    GET_SNAPSHOT_FILE = 11
    GET_CLUSTER_METADATA = 12
    DESCRIBE_OPTIONS = 13
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
    LOGIN_USER = 38  # legacy: rejected with eviction MALFORMED_LOGIN
    LOGOUT_USER = 39
    LOGIN_REGISTER = 40
    GET_PERSONAL_ACCESS_TOKENS = 41
    CREATE_PERSONAL_ACCESS_TOKEN = 42
    DELETE_PERSONAL_ACCESS_TOKEN = 43
    LOGIN_WITH_PERSONAL_ACCESS_TOKEN = 44  # legacy: rejected with eviction MALFORMED_LOGIN
    LOGIN_REGISTER_WITH_PAT = 45
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
    SYNC_CONSUMER_GROUP = 606


# Section 3.1 "Op" column for every code not sent as NonReplicated.
OPERATION_FOR_CODE: dict[CommandCode, Operation] = {
    CommandCode.CREATE_USER: Operation.CREATE_USER,
    CommandCode.DELETE_USER: Operation.DELETE_USER,
    CommandCode.UPDATE_USER: Operation.UPDATE_USER,
    CommandCode.UPDATE_PERMISSIONS: Operation.UPDATE_PERMISSIONS,
    CommandCode.CHANGE_PASSWORD: Operation.CHANGE_PASSWORD,
    CommandCode.LOGOUT_USER: Operation.LOGOUT,
    CommandCode.LOGIN_REGISTER: Operation.REGISTER,
    CommandCode.CREATE_PERSONAL_ACCESS_TOKEN: Operation.CREATE_PERSONAL_ACCESS_TOKEN,
    CommandCode.DELETE_PERSONAL_ACCESS_TOKEN: Operation.DELETE_PERSONAL_ACCESS_TOKEN,
    CommandCode.LOGIN_REGISTER_WITH_PAT: Operation.REGISTER,
    CommandCode.SEND_MESSAGES: Operation.SEND_MESSAGES,
    CommandCode.STORE_CONSUMER_OFFSET: Operation.STORE_CONSUMER_OFFSET,
    CommandCode.DELETE_CONSUMER_OFFSET: Operation.DELETE_CONSUMER_OFFSET,
    CommandCode.CREATE_STREAM: Operation.CREATE_STREAM,
    CommandCode.DELETE_STREAM: Operation.DELETE_STREAM,
    CommandCode.UPDATE_STREAM: Operation.UPDATE_STREAM,
    CommandCode.PURGE_STREAM: Operation.PURGE_STREAM,
    CommandCode.CREATE_TOPIC: Operation.CREATE_TOPIC,
    CommandCode.DELETE_TOPIC: Operation.DELETE_TOPIC,
    CommandCode.UPDATE_TOPIC: Operation.UPDATE_TOPIC,
    CommandCode.PURGE_TOPIC: Operation.PURGE_TOPIC,
    CommandCode.CREATE_PARTITIONS: Operation.CREATE_PARTITIONS,
    CommandCode.DELETE_PARTITIONS: Operation.DELETE_PARTITIONS,
    CommandCode.DELETE_SEGMENTS: Operation.DELETE_SEGMENTS,
    CommandCode.CREATE_CONSUMER_GROUP: Operation.CREATE_CONSUMER_GROUP,
    CommandCode.DELETE_CONSUMER_GROUP: Operation.DELETE_CONSUMER_GROUP,
    CommandCode.JOIN_CONSUMER_GROUP: Operation.JOIN_CONSUMER_GROUP,
    CommandCode.LEAVE_CONSUMER_GROUP: Operation.LEAVE_CONSUMER_GROUP,
}

# The reverse map where it is unique; Register carries 40 or 45 and the code is not on
# the wire (section 1.4), so the server tells them apart by body shape (section 1.7).
CODE_FOR_OPERATION: dict[Operation, CommandCode] = {
    op: code for code, op in OPERATION_FOR_CODE.items() if op != Operation.REGISTER
}

LEGACY_LOGIN_CODES: frozenset[int] = frozenset(
    {CommandCode.LOGIN_USER, CommandCode.LOGIN_WITH_PERSONAL_ACCESS_TOKEN}
)


def operation_for_code(code: int) -> Operation:
    """The operation the SDK uses to send ``code`` (section 1.4: anything else is NonReplicated)."""
    try:
        return OPERATION_FOR_CODE[CommandCode(code)]
    except (ValueError, KeyError):
        return Operation.NON_REPLICATED


class EvictionReason(IntEnum):
    """The ``reason`` byte at offset 255 of an eviction frame (section 1.6)."""

    NO_SESSION = 1
    CLIENT_RELEASE_TOO_LOW = 2
    CLIENT_RELEASE_TOO_HIGH = 3
    INVALID_REQUEST_OPERATION = 4
    INVALID_REQUEST_BODY = 5
    INVALID_REQUEST_BODY_SIZE = 6
    SESSION_TOO_LOW = 7
    SESSION_RELEASE_MISMATCH = 8
    INVALID_CREDENTIALS = 9
    INVALID_TOKEN = 10
    USER_INACTIVE = 11
    SESSION_ERROR = 12
    STALE_CLIENT = 13
    INCOMPATIBLE_PROTOCOL = 14
    MALFORMED_LOGIN = 15


class Status09(IntEnum):
    """Error codes of section 6 that :class:`tidelog.wire.codes.Status` (0.8) lacks.

    Every other 0.9 code has the same number and meaning as in 0.8, so the two enums
    together cover section 6; a unit test keeps them disjoint.
    """

    TRANSIENT_NOT_COMMITTED = 57  # the SDK replays for up to 30 s: never send (1.6)
    TRANSIENT_NOT_ACCEPTED = 58  # likewise
    TOO_MANY_STREAMS = 1020
    TOO_MANY_TOPICS = 2021
    PARTITION_ID_SPACE_EXHAUSTED = 3013
    EMPTY_MESSAGE_PAYLOAD = 4024
    INVALID_MESSAGE_TIMESTAMP_DELTA = 4038
    INVALID_BATCH_CHECKSUM = 4039
    INVALID_HEADER_KIND = 4040
    UNSUPPORTED_OPTION_KEY = 4041
    INVALID_OPTION_VALUE = 4042
    OPTIONS_BLOCK_TOO_LARGE = 4043
    CONSUMER_GROUP_PARTITION_NOT_OWNED = 5009
    SNAPSHOT_FILE_COMPLETION_FAILED = 9000
    ALREADY_AUTHENTICATED = 14000  # SDK-side only
    INVALID_SESSION = 14001  # SDK-side only
    INCOMPATIBLE_PROTOCOL_VERSION = 14003  # SDK-side, from eviction 14


# Section 1.6 "SDK effect": the error the SDK raises for each eviction reason.
EVICTION_SDK_ERROR: dict[EvictionReason, int] = {
    EvictionReason.NO_SESSION: Status.UNAUTHENTICATED,
    EvictionReason.CLIENT_RELEASE_TOO_LOW: Status.INVALID_COMMAND,
    EvictionReason.CLIENT_RELEASE_TOO_HIGH: Status.INVALID_COMMAND,
    EvictionReason.INVALID_REQUEST_OPERATION: Status.INVALID_COMMAND,
    EvictionReason.INVALID_REQUEST_BODY: Status.INVALID_COMMAND,
    EvictionReason.INVALID_REQUEST_BODY_SIZE: Status.INVALID_COMMAND,
    EvictionReason.SESSION_TOO_LOW: Status.UNAUTHENTICATED,
    EvictionReason.SESSION_RELEASE_MISMATCH: Status.UNAUTHENTICATED,
    EvictionReason.INVALID_CREDENTIALS: Status.INVALID_CREDENTIALS,
    EvictionReason.INVALID_TOKEN: Status.INVALID_PERSONAL_ACCESS_TOKEN,
    EvictionReason.USER_INACTIVE: Status.UNAUTHENTICATED,
    EvictionReason.SESSION_ERROR: Status.UNAUTHENTICATED,
    EvictionReason.STALE_CLIENT: Status.STALE_CLIENT,
    EvictionReason.INCOMPATIBLE_PROTOCOL: Status09.INCOMPATIBLE_PROTOCOL_VERSION,
    EvictionReason.MALFORMED_LOGIN: Status.INVALID_FORMAT,
}
assert set(EVICTION_SDK_ERROR) == set(EvictionReason)

# Reply ``status`` (offset 216): 0 is success, anything else is an error code and the
# body must then be empty (section 1.3).
STATUS_OK = 0


def pack_protocol_version(major: int, minor: int, patch: int) -> int:
    """``major<<20 | minor<<10 | patch`` (section 1.7, version.rs)."""
    assert 0 <= minor < 1 << 10 and 0 <= patch < 1 << 10 and 0 <= major < 1 << 12
    return major << 20 | minor << 10 | patch


# Section "Source and versions": IGGY_PROTOCOL_VERSION = packed 0.11.0; MIN for a 0.11.0
# server is the same value (section 1.7).
PROTOCOL_VERSION = pack_protocol_version(0, 11, 0)
PROTOCOL_VERSION_MIN = PROTOCOL_VERSION
assert PROTOCOL_VERSION == 0x2C00


def protocol_version_accepted(
    client: int, *, server: int = PROTOCOL_VERSION, minimum: int = PROTOCOL_VERSION_MIN
) -> bool:
    """The login version gate of section 1.7: at least ``minimum``, and a major.minor not
    newer than the server's (the patch, the low 10 bits, is ignored)."""
    return client >= minimum and client >> 10 <= server >> 10
