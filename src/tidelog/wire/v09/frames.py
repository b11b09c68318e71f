"""Sans-IO framing of Iggy 0.9 requests (``shared/protocol/iggy-0.9-vsr.md`` sections 1.2,
1.5-1.8, 3.2), the one-port generation rule, result sections and the login bodies.

Like h11 or aioquic, nothing here does I/O. :class:`ServerFraming` is the server side's
pull-style state machine (:mod:`tidelog.wire.pull`): it says how many bytes come next and
where they may be received, and turns them into typed events, a complete
:class:`RequestReceived` or a :class:`ProtocolViolation` that says what the reference
documents as the answer (close, drop, a status reply or an eviction); it also builds the
reply headers. Malformed input never raises. :class:`ClientFraming` is the client-side twin
(numbers requests as the SDK, reads replies and evictions, checked as the SDK checks them).
:class:`FrameDecoder` and :class:`ReplyDecoder` are their push-style names (``feed``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

from tidelog.wire.codes import KNOWN_COMMANDS as KNOWN_COMMANDS_08
from tidelog.wire.codes import Status
from tidelog.wire.pull import PullReader
from tidelog.wire.v09.codes import (
    CLIENT_OPERATIONS,
    EVICTION_SDK_ERROR,
    LEGACY_LOGIN_CODES,
    PROTOCOL_VERSION,
    REPLICATED_OPERATIONS,
    STATUS_OK,
    CommandCode,
    EvictionReason,
    Operation,
    VsrCommand,
)
from tidelog.wire.v09.header import (
    COMMAND_OFFSET,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    REQUEST_OFFSETS,
    SIZE_OFFSET,
    U32_MAX,
    EvictionHeader,
    ReplyHeader,
    RequestHeader,
    encode_reply_for,
    eviction_for,
    reply_header_for,
    request_checksum_ok,
    request_header_for,
)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PAIR = struct.Struct("<II")
_EMPTY = memoryview(b"")

# --- one-port generation detection ------------------------------------------------------


class Generation(StrEnum):
    """Which framing a connection speaks (its value is how users name it: "0.9", "0.8")."""

    V08 = "0.8"  # classic [length u32][code u32][payload] (0.8 reference 1.2, appendix A)
    V09 = "0.9"  # 256-byte VSR header + body (section 1.2)


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Not decidable yet: wait for at least ``bytes_needed`` more bytes."""

    bytes_needed: int


@dataclass(frozen=True, slots=True)
class Unrecognized:
    """The first bytes fit neither generation; ``reason`` is for the log."""

    reason: str


_CLASSIC_HEADER = 8  # a 0.8 request header; also the shortest frame either client sends
_V09_PROBE = COMMAND_OFFSET + 1  # bytes needed to see size (48..52) and command (60)
# What a connection reads before its generation is known: enough for either rule, and no
# more than a 0.9 header, so a first 0.9 frame's body still gets its own buffer.
GENERATION_PROBE_BYTES = _V09_PROBE
_HTTP_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"CONN", b"PRI ")


def detect_generation(
    first_bytes: bytes | bytearray | memoryview,
    *,
    final: bool = False,
    max_frame_size: int = MAX_FRAME_SIZE,
) -> Generation | NeedMore | Unrecognized:
    """Tell a 0.8 from a 0.9 client by the first bytes it sends (the client speaks first,
    section 1.1).

    Neither reference defines a one-port rule, so this one is tidelog's and is built so
    that no legitimate client can stall it:

    1. A 0.8 request header is 8 bytes and a 0.8 ping is *only* 8 bytes, after which the
       client waits; so 0.8 must be decidable from 8 bytes: ``length`` >= 4 (0.8 reference
       1.2) and ``code`` a known 0.8 command.
    2. Otherwise 0.9 needs 61 bytes: ``command`` at 60 = 5 (Request) and ``size`` at 48 in
       256..max_frame_size. Every 0.9 request is at least 256 bytes, so waiting is safe.
       The 0.11 SDK sends ``checksum`` = 0, so its first u32 is 0 which is never a valid
       0.8 length; a client that fills ``checksum`` still matches rule 2 (rule 1 would need
       its low 8 checksum bytes to look like a known 0.8 header, about 1 in 90 million).
    3. If that fails, a first u32 >= 4 is still taken as 0.8 with an unknown code, which the
       0.8 path answers with InvalidCommand (0.8 reference 1.4). Anything else is
       :class:`Unrecognized`.

    ``final=True`` (the caller's first-bytes timeout expired or the peer half-closed)
    decides with what is there instead of asking for more.
    """
    data = bytes(first_bytes[:_V09_PROBE])
    n = len(data)
    if n < _CLASSIC_HEADER:
        if final:
            return Unrecognized(f"only {n} bytes before the peer stopped sending; a request is >= 8")
        return NeedMore(_CLASSIC_HEADER - n)
    length, code = _PAIR.unpack_from(data)
    if length >= 4 and code in KNOWN_COMMANDS_08:
        return Generation.V08
    if n >= _V09_PROBE:
        (size,) = _U32.unpack_from(data, SIZE_OFFSET)
        if data[COMMAND_OFFSET] == VsrCommand.REQUEST and HEADER_SIZE <= size <= max_frame_size:
            return Generation.V09
    # Checked only after rules 1 and 2 (a 0.8 SendMessages of 790 bytes starts 16 03 too),
    # and before waiting: a TLS or HTTP client may send less than 61 bytes and then wait.
    if data[0] == 0x16 and data[1] == 0x03:
        return Unrecognized("a TLS ClientHello on a plaintext port")
    if data[:4] in _HTTP_METHODS:
        return Unrecognized("an HTTP request on the binary TCP port")
    if n < _V09_PROBE and not final:
        return NeedMore(_V09_PROBE - n)
    if length >= 4:
        return Generation.V08
    v09 = (
        "too short for a 0.9 header"
        if n < _V09_PROBE
        else f"0.9 size {_U32.unpack_from(data, SIZE_OFFSET)[0]}, command {data[COMMAND_OFFSET]}"
        f" (need size {HEADER_SIZE}..{max_frame_size}, command {int(VsrCommand.REQUEST)})"
    )
    return Unrecognized(f"0.8 length {length} < 4 and {v09}")


# --- events ---------------------------------------------------------------------------------


class Action(Enum):
    """What the reference documents as the answer to a violation (sections 1.2, 1.7)."""

    CLOSE = "close"  # framing is lost: close the connection, send nothing
    # Discard the request, send nothing: the real server's behaviour for invalid headers.
    # The client then waits 30 s for a reply (section 1.1).
    DROP = "drop"
    STATUS = "status"  # send a reply header with ``status``, empty body
    EVICT = "evict"  # send an eviction frame with ``eviction``


class ViolationKind(Enum):
    FRAME_TOO_SMALL = "size < 256"
    FRAME_TOO_LARGE = "size over the frame limit"
    NOT_A_REQUEST = "command is not Request (5)"
    ZERO_CLIENT = "client id 0"
    INVALID_OPERATION = "operation 0, internal or unknown"
    REGISTER_NOT_FRESH = "Register with a session or request number"
    MISSING_SESSION = "replicated operation without a session"
    MISSING_REQUEST_NUMBER = "request number 0 outside Register/NonReplicated"
    BAD_REQUEST_CHECKSUM = "request_checksum does not match the body"
    LEGACY_LOGIN = "legacy login code 38/44"
    NOT_LOGGED_IN = "non-ping NonReplicated request before login"
    NO_SESSION = "replicated request before login"
    SESSION_MISMATCH = "session is not the connection's"
    BODY_TOO_LARGE = "body over the server's limit for the request"


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A complete, structurally valid request (section 1.2).

    ``body`` is a read-only view the event owns; keep the event or copy the bytes.
    """

    header: RequestHeader
    operation: Operation
    body: memoryview

    @property
    def code(self) -> int | None:
        """The classic code at bytes 196..200 for NonReplicated, else None (the operation
        implies it, Register excepted). Unknown codes stay ints: the server answers them
        with status InvalidCommand (section 3.1)."""
        if self.operation == Operation.NON_REPLICATED:
            return self.header.command_code
        return None

    @property
    def known_code(self) -> CommandCode | None:
        code = self.code
        return CommandCode(code) if code is not None and code in _KNOWN_CODES else None


_KNOWN_CODES = frozenset(int(c) for c in CommandCode)


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A request the server must not dispatch, with the documented answer.

    ``header`` is present whenever the 256 header bytes were read; ``fatal`` means the
    decoder has closed and will yield nothing more.
    """

    kind: ViolationKind
    action: Action
    detail: str
    header: RequestHeader | None = None
    status: int | None = None
    eviction: EvictionReason | None = None

    @property
    def fatal(self) -> bool:
        return self.action is Action.CLOSE or self.kind is ViolationKind.BODY_TOO_LARGE

    def response(self) -> bytes | None:
        """The bytes to send back, or None for CLOSE and DROP."""
        if self.action is Action.STATUS:
            assert self.header is not None and self.status is not None
            return reply_header_for(self.header, status=self.status).encode()
        if self.action is Action.EVICT:
            assert self.header is not None and self.eviction is not None
            return eviction_for(self.header.client, self.eviction).encode()
        return None


Event = RequestReceived | ProtocolViolation


def check_header(header: RequestHeader, *, max_frame_size: int = MAX_FRAME_SIZE) -> ProtocolViolation | None:
    """Header-only rules of sections 1.2, 1.7 and 1.8, in the order the real server applies
    them; checks needing the body (checksum, legacy login) or session state are elsewhere."""

    def bad(
        kind: ViolationKind, action: Action, detail: str, eviction: EvictionReason | None = None
    ) -> ProtocolViolation:
        return ProtocolViolation(kind, action, detail, header, eviction=eviction)

    if header.size < HEADER_SIZE:
        return bad(ViolationKind.FRAME_TOO_SMALL, Action.CLOSE, f"size {header.size} < {HEADER_SIZE}")
    if header.size > max_frame_size:
        return bad(ViolationKind.FRAME_TOO_LARGE, Action.CLOSE, f"size {header.size} > {max_frame_size}")
    if header.command != VsrCommand.REQUEST:
        return bad(ViolationKind.NOT_A_REQUEST, Action.DROP, f"command {header.command}")
    if header.client == 0:
        return bad(ViolationKind.ZERO_CLIENT, Action.DROP, "client id 0")
    if header.operation not in _CLIENT_OPERATION_VALUES:
        return bad(ViolationKind.INVALID_OPERATION, Action.DROP, f"operation {header.operation}")
    op = Operation(header.operation)
    if op == Operation.REGISTER:
        if header.session != 0 or header.request != 0:
            detail = f"session {header.session}, request {header.request}"
            return bad(ViolationKind.REGISTER_NOT_FRESH, Action.DROP, detail)
    elif op in REPLICATED_OPERATIONS:
        if header.session == 0:
            # The rules table (1.7) lists both "session 0 -> dropped" and "replicated op
            # before login -> eviction NoSession"; the SDK sends session 0 exactly before
            # login, so the eviction wins: it fails fast instead of a 30 s timeout.
            return bad(
                ViolationKind.MISSING_SESSION, Action.EVICT, "session 0", eviction=EvictionReason.NO_SESSION
            )
        if header.request == 0:
            return bad(ViolationKind.MISSING_REQUEST_NUMBER, Action.DROP, "request 0")
    # Logout (op 3) is exempt from the session/request rule: "Logout before login -> empty
    # OK reply" (1.7) needs a Logout with session 0 to get through.
    return None


_CLIENT_OPERATION_VALUES = frozenset(int(op) for op in CLIENT_OPERATIONS)


def check_body(header: RequestHeader, body: memoryview) -> ProtocolViolation | None:
    """Rules that need the body: the request checksum (status InvalidFormat), then legacy
    login codes on NonReplicated (eviction MalformedLogin), section 1.7."""
    if not request_checksum_ok(header, body):
        return ProtocolViolation(
            ViolationKind.BAD_REQUEST_CHECKSUM,
            Action.STATUS,
            f"request_checksum {header.request_checksum:#x}",
            header,
            status=Status.INVALID_FORMAT,
        )
    if header.operation == Operation.NON_REPLICATED and header.command_code in LEGACY_LOGIN_CODES:
        return ProtocolViolation(
            ViolationKind.LEGACY_LOGIN,
            Action.EVICT,
            f"code {header.command_code}",
            header,
            eviction=EvictionReason.MALFORMED_LOGIN,
        )
    return None


def check_session(event: RequestReceived, bound_session: int | None) -> ProtocolViolation | None:
    """Session rules of section 1.7 for a connection whose bound session is
    ``bound_session`` (None before a successful Register).

    Register always passes (on a bound connection the server replays the same reply), and
    so does Logout before login (the server sends an empty OK). NonReplicated requests
    are not matched against the session: the reference exempts them. A replicated request
    or Logout naming another session is evicted with SessionError; the reference does not
    say what the real server does there, and that reason maps to Unauthenticated.
    """
    header = event.header
    op = event.operation
    if op == Operation.REGISTER:
        return None
    if bound_session is None:
        if op == Operation.NON_REPLICATED:
            if header.command_code == CommandCode.PING:
                return None
            return ProtocolViolation(
                ViolationKind.NOT_LOGGED_IN,
                Action.STATUS,
                f"code {header.command_code} before login",
                header,
                status=Status.UNAUTHENTICATED,
            )
        if op == Operation.LOGOUT:
            return None
        return ProtocolViolation(
            ViolationKind.NO_SESSION,
            Action.EVICT,
            f"{op.name} before login",
            header,
            eviction=EvictionReason.NO_SESSION,
        )
    if op != Operation.NON_REPLICATED and header.session != bound_session:
        return ProtocolViolation(
            ViolationKind.SESSION_MISMATCH,
            Action.EVICT,
            f"session {header.session}, bound {bound_session}",
            header,
            eviction=EvictionReason.SESSION_ERROR,
        )
    return None


# --- server side: the request state machine ---------------------------------------------


class ServerFraming(PullReader[Event]):
    """The server side of a 0.9 connection (sections 1.2, 1.3, 1.7, 1.8): reads requests
    into events, builds reply headers and evictions.

    Pull-style (:mod:`tidelog.wire.pull`): ``bytes_needed`` / ``buffer()`` / ``received()``
    or ``take()``, and ``use_body_buffer()`` for a body that should land in the caller's
    buffer; ``feed(data)`` is the push-style shortcut.

    A header is checked (:func:`check_header`), then its body against
    ``payload_limit(header)`` when one is given (over it: BODY_TOO_LARGE, status
    InvalidSizeBytes; the body is not read, so the machine closes), then the body
    (:func:`check_body`). After a CLOSE violation the stream cannot be resynchronised and
    the machine is closed; every other header violation skips the declared body, so reading
    continues in step with the next frame. Session rules need connection state and are the
    caller's (:func:`check_session`).
    """

    __slots__ = ("_max_frame_size", "_payload_limit", "_request")

    def __init__(
        self,
        *,
        max_frame_size: int = MAX_FRAME_SIZE,
        payload_limit: Callable[[RequestHeader], int] | None = None,
    ) -> None:
        assert HEADER_SIZE <= max_frame_size <= U32_MAX
        super().__init__(HEADER_SIZE)
        self._max_frame_size = max_frame_size
        self._payload_limit = payload_limit
        self._request: RequestHeader | None = None  # whose body is being read

    def _header_done(self, raw: memoryview) -> Event | None:
        header = RequestHeader.decode(raw)
        violation = check_header(header, max_frame_size=self._max_frame_size)
        if violation is not None:
            if violation.fatal:
                self._close()
            else:
                self._skip_body(header.body_size)
            return violation
        n = header.body_size
        if n == 0:
            return _complete(header, _EMPTY)
        if self._payload_limit is not None:
            limit = self._payload_limit(header)
            if n > limit:
                self._close()
                kind, detail = ViolationKind.BODY_TOO_LARGE, f"body {n} bytes > {limit}"
                status = Status.INVALID_SIZE_BYTES
                return ProtocolViolation(kind, Action.STATUS, detail, header, status=status)
        self._request = header
        self._expect_body(n)
        return None

    def _body_done(self, body: memoryview) -> Event:
        header = self._request
        assert header is not None
        self._request = None
        return _complete(header, body)

    @staticmethod
    def reply_header(request: RequestHeader, body_length: int, status: int = STATUS_OK) -> bytes:
        """The reply header answering ``request`` with ``body_length`` bytes (section 1.3);
        an error status travels with an empty body."""
        return encode_reply_for(request, body_length, status)

    @staticmethod
    def eviction(
        request: RequestHeader,
        reason: EvictionReason,
        *,
        server_protocol_version: int = 0,
        server_protocol_version_min: int = 0,
    ) -> bytes:
        """An eviction frame for the client of ``request`` (section 1.6)."""
        return eviction_for(
            request.client,
            reason,
            server_protocol_version=server_protocol_version,
            server_protocol_version_min=server_protocol_version_min,
        ).encode()


def _complete(header: RequestHeader, body: memoryview) -> Event:
    violation = check_body(header, body)
    if violation is not None:
        return violation
    return RequestReceived(header, Operation(header.operation), body)


class FrameDecoder(ServerFraming):
    """:class:`ServerFraming` without a payload limit, under the name tests and tools use
    for its push-style ``feed(data) -> events``."""

    __slots__ = ()

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size=max_frame_size)


# --- client side: replies and evictions (sections 1.3, 1.6) --------------------------------


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A reply frame as the SDK reads it: ``status`` first, then the body (section 1.3)."""

    header: ReplyHeader
    operation: Operation
    body: memoryview


@dataclass(frozen=True, slots=True)
class EvictionReceived:
    """A header-only eviction (section 1.6); ``sdk_error`` is the error the SDK raises
    (unknown reasons fall back to the generic Error, 1)."""

    header: EvictionHeader

    @property
    def reason(self) -> EvictionReason | None:
        value = self.header.reason
        return EvictionReason(value) if value in _EVICTION_REASONS else None

    @property
    def sdk_error(self) -> int:
        reason = self.reason
        return EVICTION_SDK_ERROR[reason] if reason is not None else Status.ERROR


_EVICTION_REASONS = frozenset(int(r) for r in EvictionReason)
_OPERATION_VALUES = frozenset(int(op) for op in Operation)


@dataclass(frozen=True, slots=True)
class ReplyViolation:
    """A server frame the SDK refuses ("Invalid command", section 1.3); always fatal."""

    reason: str


ReplyEvent = ReplyReceived | EvictionReceived | ReplyViolation


class ClientFraming(PullReader[ReplyEvent]):
    """The client side of a 0.9 connection: builds and numbers requests as the 0.11 SDK
    does, reads replies and evictions with the SDK's checks (``size`` 256..max_frame_size,
    ``command`` 8 or 13, a valid ``operation``; section 1.3). Any violation closes it.

    Numbering (section 1.2): Register carries request 0 and no session, NonReplicated reuses
    the current request number, every other operation takes the next. ``client`` is the
    non-zero u128 the client chose; ``session`` is set by the caller after a login reply.
    """

    __slots__ = ("_max_frame_size", "_reply", "client", "request_number", "session")

    def __init__(self, *, client: int = 0, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        assert HEADER_SIZE <= max_frame_size <= U32_MAX
        super().__init__(HEADER_SIZE)
        self._max_frame_size = max_frame_size
        self._reply: ReplyHeader | None = None  # whose body is being read
        self.client = client
        self.session = 0
        self.request_number = 0

    # ---- requests --------------------------------------------------------------------------
    def header(
        self, operation: Operation, body: bytes | bytearray | memoryview, code: int = 0
    ) -> RequestHeader:
        """The header of the next request (``code``: the classic code of a NonReplicated)."""
        assert self.client != 0, "a request names a non-zero client"
        if operation not in _UNNUMBERED:
            self.request_number += 1
        register = operation == Operation.REGISTER
        return request_header_for(
            operation,
            body,
            client=self.client,
            request=0 if register else self.request_number,
            session=0 if register else self.session,
            command_code=code,
        )

    def frame(self, operation: Operation, body: bytes = b"", code: int = 0) -> bytes:
        """A whole request frame: the next header and ``body``."""
        return self.header(operation, body, code).encode() + body

    def template(self, operation: Operation, body: bytes = b"", code: int = 0) -> bytearray:
        """A frame to send many times, each time after :meth:`renumber` (no number is taken
        here, so numbers stay gap-free whatever is sent in between)."""
        frame = bytearray(self.frame(operation, body, code))
        if operation not in _UNNUMBERED:
            self.request_number -= 1
            _U64.pack_into(frame, _REQUEST_AT, 0)
        return frame

    def renumber(self, frame: bytearray) -> None:
        """Stamp the next request number into a :meth:`template` frame. Only ``request``
        changes: ``request_checksum`` covers the body alone (section 1.2)."""
        assert frame[_OPERATION_AT] not in _UNNUMBERED, "Register and NonReplicated are not numbered"
        self.request_number += 1
        _U64.pack_into(frame, _REQUEST_AT, self.request_number)

    # ---- replies ---------------------------------------------------------------------------
    def _header_done(self, raw: memoryview) -> ReplyEvent | None:
        (size,) = _U32.unpack_from(raw, SIZE_OFFSET)
        command = raw[COMMAND_OFFSET]
        if size < HEADER_SIZE or size > self._max_frame_size:
            return self._violation(f"frame size {size} outside {HEADER_SIZE}..{self._max_frame_size}")
        if command == VsrCommand.EVICTION:
            if size != HEADER_SIZE:
                return self._violation(f"eviction with size {size}: it is header-only")
            return EvictionReceived(EvictionHeader.decode(raw))
        if command != VsrCommand.REPLY:
            return self._violation(f"command {command} is neither Reply (8) nor Eviction (13)")
        header = ReplyHeader.decode(raw)
        if header.operation not in _OPERATION_VALUES or header.operation == Operation.RESERVED:
            return self._violation(f"operation {header.operation} is not a valid discriminant")
        n = size - HEADER_SIZE
        if n == 0:
            return ReplyReceived(header, Operation(header.operation), _EMPTY)
        self._reply = header
        self._expect_body(n)
        return None

    def _body_done(self, body: memoryview) -> ReplyEvent:
        header = self._reply
        assert header is not None
        self._reply = None
        return ReplyReceived(header, Operation(header.operation), body)

    def _violation(self, reason: str) -> ReplyViolation:
        self._close()
        return ReplyViolation(reason)


_UNNUMBERED = frozenset({Operation.REGISTER, Operation.NON_REPLICATED})
_REQUEST_AT = REQUEST_OFFSETS["request"]
_OPERATION_AT = REQUEST_OFFSETS["operation"]


class ReplyDecoder(ClientFraming):
    """The reply-reading half of :class:`ClientFraming`, under the name tests use for its
    push-style ``feed(data) -> events``."""

    __slots__ = ()

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size=max_frame_size)


# --- result section (section 1.5) -----------------------------------------------------------

RESULT_OK = _U32.pack(0)  # success with an empty payload: exactly 00 00 00 00


def encode_result_ok(payload: bytes | bytearray | memoryview = b"") -> bytes:
    """A success body for a result-framed operation: count 0, then the payload."""
    return RESULT_OK + bytes(payload)


def encode_result_rejection(code: int) -> bytes:
    """A rejection body: count 1, entry ``{index 0, result code}``, 12 bytes, no payload."""
    assert code != STATUS_OK and 0 < code <= U32_MAX
    return _U32.pack(1) + _PAIR.pack(0, code)


@dataclass(frozen=True, slots=True)
class ResultOk:
    payload: memoryview


@dataclass(frozen=True, slots=True)
class ResultRejected:
    entries: tuple[tuple[int, int], ...]  # (index, error code)

    @property
    def code(self) -> int:
        """The error the SDK raises: the first entry's (section 1.5)."""
        return self.entries[0][1]


@dataclass(frozen=True, slots=True)
class ResultMalformed:
    """What the SDK rejects as InvalidCommand: an empty or truncated section."""

    reason: str


def decode_result_section(
    body: bytes | bytearray | memoryview,
) -> ResultOk | ResultRejected | ResultMalformed:
    """Read a result-framed reply body (section 1.5) as the SDK does; never raises."""
    view = memoryview(body).cast("B") if not isinstance(body, memoryview) else body
    if len(view) < 4:
        return ResultMalformed(f"result section needs 4 bytes, got {len(view)}")
    (count,) = _U32.unpack_from(view)
    if count == 0:
        return ResultOk(view[4:])
    need = 4 + 8 * count
    if len(view) < need:
        return ResultMalformed(f"{count} rejection entries need {need} bytes, got {len(view)}")
    entries = tuple(_PAIR.unpack_from(view, 4 + 8 * i) for i in range(count))
    if len(view) != need:
        # Payload only follows a success (1.5); bytes after the entries are malformed.
        return ResultMalformed(f"{len(view) - need} bytes after {count} rejection entries")
    return ResultRejected(entries)


# --- login bodies (section 3.2, operation 1) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientVersionInfo:
    protocol_version: int
    sdk_name: str
    sdk_version: str


@dataclass(frozen=True, slots=True)
class PasswordLogin:
    username: str
    password: str
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class TokenLogin:
    token: str
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """A Register body parsed both ways (section 1.7 "Login details"): the code (40 or 45)
    is not on the wire, so the server tries ``password`` first, then ``token``. At least
    one of the two is present."""

    version: ClientVersionInfo
    password: PasswordLogin | None
    token: TokenLogin | None


@dataclass(frozen=True, slots=True)
class MalformedLogin:
    """Neither shape parses, or no version prefix: eviction MalformedLogin (1.6)."""

    reason: str


class _Truncated(Exception):
    pass


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: memoryview, pos: int = 0) -> None:
        self._data = data
        self._pos = pos

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise _Truncated(f"{n} bytes at {self._pos} run past {len(self._data)}")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def name(self) -> str:
        """A WireName: u8 length 1..=255 + UTF-8 (section 1.1)."""
        n = self.take(1)[0]
        if n == 0:
            raise _Truncated(f"empty name at {self._pos - 1}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Truncated(f"name at {self._pos - n} is not UTF-8") from exc

    def context(self) -> bytes:
        return self.take(self.u32())


def _encode_name(text: str) -> bytes:
    raw = text.encode("utf-8")
    assert 1 <= len(raw) <= 255, "a wire name is 1..255 bytes"
    return bytes([len(raw)]) + raw


def decode_login(body: bytes | bytearray | memoryview) -> LoginRequest | MalformedLogin:
    """Parse a Register body (section 3.2); never raises.

    Both shapes must consume the body exactly: that is what makes a PAT body fail the
    password shape (its ``context_len`` would run past the end) rather than match it
    with leftovers.
    """
    view = memoryview(bytes(body))
    reader = _Reader(view)
    try:
        version = ClientVersionInfo(reader.u32(), reader.name(), reader.name())
    except _Truncated as exc:
        return MalformedLogin(f"no version prefix: {exc}")
    start = reader.pos
    reasons: list[str] = []
    password: PasswordLogin | None = None
    token: TokenLogin | None = None
    try:
        r = _Reader(view, start)
        password = PasswordLogin(r.name(), r.name(), r.context())
        if not r.at_end:
            raise _Truncated(f"{len(view) - r.pos} trailing bytes")
    except _Truncated as exc:
        password = None
        reasons.append(f"password shape: {exc}")
    try:
        r = _Reader(view, start)
        token = TokenLogin(r.name(), r.context())
        if not r.at_end:
            raise _Truncated(f"{len(view) - r.pos} trailing bytes")
    except _Truncated as exc:
        token = None
        reasons.append(f"token shape: {exc}")
    if password is None and token is None:
        return MalformedLogin("; ".join(reasons))
    return LoginRequest(version, password, token)


def _encode_version(version: ClientVersionInfo) -> bytes:
    return (
        _U32.pack(version.protocol_version)
        + _encode_name(version.sdk_name)
        + _encode_name(version.sdk_version)
    )


def encode_password_login(version: ClientVersionInfo, login: PasswordLogin) -> bytes:
    """LoginRegister (code 40) body, as the SDK writes it (section 3.2)."""
    return (
        _encode_version(version)
        + _encode_name(login.username)
        + _encode_name(login.password)
        + _U32.pack(len(login.context))
        + login.context
    )


def encode_token_login(version: ClientVersionInfo, login: TokenLogin) -> bytes:
    """LoginRegisterWithPat (code 45) body (section 3.2)."""
    return (
        _encode_version(version) + _encode_name(login.token) + _U32.pack(len(login.context)) + login.context
    )


@dataclass(frozen=True, slots=True)
class LoginReply:
    """``LoginRegisterResponse`` (section 1.7): the session must be non-zero (the SDK
    refuses 0)."""

    user_id: int
    session: int
    server_protocol_version: int = PROTOCOL_VERSION
    server_version: str = "0.9.0"


def encode_login_reply(reply: LoginReply) -> bytes:
    """The success body of a Register reply: result section count 0, then the response."""
    assert reply.session != 0, "session 0 is invalid for the SDK"
    return (
        RESULT_OK
        + _U32.pack(reply.user_id)
        + _U64.pack(reply.session)
        + _U32.pack(reply.server_protocol_version)
        + _encode_name(reply.server_version)
    )


def decode_login_reply(body: bytes | bytearray | memoryview) -> LoginReply | ResultRejected | ResultMalformed:
    """Client side of :func:`encode_login_reply`; an empty body is the "terminal failure"
    of section 1.5 and comes back as :class:`ResultMalformed`."""
    section = decode_result_section(body)
    if not isinstance(section, ResultOk):
        return section
    r = _Reader(section.payload)
    try:
        user_id = r.u32()
        (session,) = _U64.unpack(r.take(8))
        reply = LoginReply(user_id, session, r.u32(), r.name())
    except _Truncated as exc:
        return ResultMalformed(f"login reply: {exc}")
    if not r.at_end:
        return ResultMalformed(f"login reply: {len(section.payload) - r.pos} trailing bytes")
    return reply
