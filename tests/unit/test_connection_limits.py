"""Connection-level limits with a fake transport on a real event loop: refusal past
max_connections, the budget wait and hand-over between connections, and timers that never
outlive their connection (defect 8)."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable
from typing import Any

import pytest

from tidelog.server.connection import Connection, Ok, Result
from tidelog.server.limits import ConnectionGate, ConnectionLimits
from tidelog.wire.codes import Command

U32 = struct.Struct("<I")
KIB = 1024


class FakeTransport:
    def __init__(self, protocol: Connection) -> None:
        self.protocol = protocol
        self.closing = False
        self.paused = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def writelines(self, data: list[bytes]) -> None:
        self.written.append(b"".join(bytes(d) for d in data))

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class FakeHandler:
    def __init__(self) -> None:
        self.logged_in: set[int] = set()
        self.made: list[Connection] = []
        self.lost: list[Connection] = []
        self.handled: list[tuple[int, int]] = []

    def payload_limit(self, conn: Connection, code: int) -> int:
        return 10 * 1024 * KIB if id(conn) in self.logged_in else 64 * KIB

    def handle(
        self, conn: Connection, code: int, payload: memoryview, owned: bool
    ) -> Result | Awaitable[Result]:
        self.handled.append((code, len(payload)))
        return Ok([b"ok"])

    def connection_made(self, conn: Connection) -> None:
        self.made.append(conn)

    def connection_lost(self, conn: Connection) -> None:
        self.lost.append(conn)

    def authenticated(self, conn: Connection) -> bool:
        return id(conn) in self.logged_in


def limits(**changes: int) -> ConnectionLimits:
    values = {
        "max_connections": 10,
        "max_incomplete_request_bytes": 1024 * KIB,
        "request_timeout_ms": 60_000,
        "unauthenticated_idle_timeout_ms": 60_000,
        **changes,
    }
    return ConnectionLimits(**values)


def connect(handler: FakeHandler, gate: ConnectionGate) -> tuple[Connection, FakeTransport]:
    conn = Connection(handler, 1 << 20, False, gate)
    transport = FakeTransport(conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def feed(conn: Connection, data: bytes) -> None:
    """Delivers bytes the way the loop does: into the buffers the protocol hands out."""
    view = memoryview(data)
    while view:
        buf = conn.get_buffer(len(view))
        n = min(len(buf), len(view))
        assert n > 0
        buf[:n] = view[:n]
        conn.buffer_updated(n)
        view = view[n:]


def header(payload_bytes: int, code: int = Command.SEND_MESSAGES) -> bytes:
    return U32.pack(payload_bytes + 4) + U32.pack(code)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_connection_given_max_connections_open_when_another_arrives_should_close_it_unseen() -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits(max_connections=2))
    first, _ = connect(handler, gate)
    connect(handler, gate)
    extra, extra_transport = connect(handler, gate)
    assert extra_transport.closing and extra not in handler.made
    await settle()
    assert extra not in handler.lost and gate.open_connections == 2
    first.close()
    await settle()
    assert gate.open_connections == 1 and handler.lost == [first]


async def test_connection_given_budget_full_when_big_frame_arrives_should_wait_paused_then_get_it() -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits(max_incomplete_request_bytes=1024 * KIB))
    a, a_transport = connect(handler, gate)
    b, b_transport = connect(handler, gate)
    handler.logged_in |= {id(a), id(b)}
    big = 600 * KIB
    feed(a, header(big) + bytes(100 * KIB))
    assert gate.reserved_bytes == big and not a_transport.paused
    feed(b, header(big))
    assert b_transport.paused and gate.waiting == 1  # 1200 KiB would not fit
    feed(a, bytes(big - 100 * KIB))  # a's frame completes: its budget passes to b
    assert handler.handled == [(Command.SEND_MESSAGES, big)]
    await settle()
    assert not b_transport.paused and gate.reserved_bytes == big and gate.waiting == 0
    feed(b, bytes(big))
    assert handler.handled[-1] == (Command.SEND_MESSAGES, big) and gate.reserved_bytes == 0


async def test_connection_given_waiting_or_holding_budget_when_closed_should_give_it_back() -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits(max_incomplete_request_bytes=1024 * KIB))
    holder, _ = connect(handler, gate)
    waiter, _ = connect(handler, gate)
    handler.logged_in |= {id(holder), id(waiter)}
    feed(holder, header(700 * KIB) + bytes(KIB))
    feed(waiter, header(700 * KIB))
    waiter.close()
    await settle()
    assert gate.waiting == 0 and gate.reserved_bytes == 700 * KIB
    holder.close()
    await settle()
    assert gate.reserved_bytes == 0 and gate.open_connections == 0


async def test_connection_given_stalled_partial_header_when_timeout_passes_should_close() -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits(request_timeout_ms=30))
    conn, transport = connect(handler, gate)
    handler.logged_in.add(id(conn))
    feed(conn, header(100, Command.PING)[:3])
    await asyncio.sleep(0.5)
    assert transport.closing and handler.lost == [conn]


async def test_connection_given_complete_requests_when_idle_past_timeout_should_stay_open() -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits(request_timeout_ms=30))
    conn, transport = connect(handler, gate)
    handler.logged_in.add(id(conn))
    feed(conn, header(0, Command.PING))
    await asyncio.sleep(0.2)
    assert not transport.closing and handler.handled == [(Command.PING, 0)]


async def test_connection_given_not_logged_in_when_idle_timeout_passes_should_close() -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits(unauthenticated_idle_timeout_ms=30))
    _, anonymous_transport = connect(handler, gate)
    member, member_transport = connect(handler, gate)
    handler.logged_in.add(id(member))
    feed(member, header(0, Command.LOGIN_USER))  # answered as logged in: its deadline ends
    await asyncio.sleep(0.3)
    assert anonymous_transport.closing and not member_transport.closing


async def test_connection_given_pending_timers_when_connection_lost_should_cancel_them() -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits())
    conn, _ = connect(handler, gate)
    feed(conn, header(100, Command.LOGIN_USER)[:5])
    timers = [conn._request_timer, conn._login_timer]
    assert all(t is not None for t in timers)
    conn.connection_lost(None)
    assert all(t is not None and t.cancelled() for t in timers)
    assert conn._request_timer is None and conn._login_timer is None


async def test_connection_given_half_a_request_when_client_vanishes_should_log_and_drop_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits())
    conn, _ = connect(handler, gate)
    feed(conn, header(100, Command.PING)[:5])
    with caplog.at_level(logging.INFO, logger="tidelog.server.limits"):
        conn.connection_lost(ConnectionResetError())
    assert any("lost in the middle of a request" in r.getMessage() for r in caplog.records)
    assert handler.lost == [conn] and not handler.handled


async def test_connection_given_whole_requests_when_client_leaves_should_not_log_a_partial_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler, gate = FakeHandler(), ConnectionGate(limits())
    conn, _ = connect(handler, gate)
    feed(conn, header(0, Command.PING))
    await settle()
    with caplog.at_level(logging.INFO, logger="tidelog.server.limits"):
        conn.connection_lost(None)
    assert not any("lost in the middle" in r.getMessage() for r in caplog.records)


async def test_connection_given_a_late_reply_that_cannot_be_written_should_close_not_hang(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply that fails to go out after the handler's awaitable resolved (uvloop raises on
    a transport whose handle is gone) must not leave the connection busy with its reading
    paused: nothing would then notice the client leave, and its session would stay forever."""

    class Late(FakeHandler):
        def handle(
            self, conn: Connection, code: int, payload: memoryview, owned: bool
        ) -> Result | Awaitable[Result]:
            async def later() -> Result:
                return Ok([b"late"])

            return later()

    def unwritable(data: list[bytes]) -> None:
        raise RuntimeError("unable to perform operation on a closed transport")

    handler, gate = Late(), ConnectionGate(limits())
    conn, transport = connect(handler, gate)
    transport.writelines = unwritable  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="tidelog.server.connection"):
        feed(conn, header(0, Command.PING))
        assert transport.paused  # busy with the awaitable: nothing more is read
        await settle()
    assert handler.lost == [conn] and gate.open_connections == 0
    assert any("failed answering request" in r.getMessage() for r in caplog.records)
