"""What connections may hold, across all of them: how many may be open, and how many bytes of
incomplete large frames may be buffered at once.

One ``ConnectionGate`` is shared by every connection of a listening server (one event loop, so
no locks). It knows nothing of sessions or the shard: the connection asks it for room and tells
it when room is free again.

The byte budget is a reservation at the frame's declared size, taken when its header arrives and
before any buffer exists, and given back when the frame is complete (the handler owns the buffer
from then on) or the connection closes. That makes it deadlock-free:

* A connection holds at most one reservation, and what it needs to finish is only its own
  client's bytes, never more budget; a holder that stops sending is closed by the request
  timeout, which returns its reservation.
* A frame that does not fit waits in a first-come-first-served queue with its reading paused
  (its bytes wait in the kernel's socket buffer, not in ours). A frame is always admitted when
  nothing is reserved, and the config requires the budget to hold the largest frame allowed,
  so the head of the queue is admitted once earlier holders finish or time out.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tidelog.config import TcpConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_incomplete_request_bytes: int
    request_timeout_ms: int
    unauthenticated_idle_timeout_ms: int

    @classmethod
    def from_config(cls, tcp: TcpConfig) -> ConnectionLimits:
        return cls(
            max_connections=tcp.max_connections,
            max_incomplete_request_bytes=tcp.max_incomplete_request_bytes,
            request_timeout_ms=tcp.request_timeout_ms,
            unauthenticated_idle_timeout_ms=tcp.unauthenticated_idle_timeout_ms,
        )


class RateLimitedLog:
    """One log line per ``interval_s`` at most, with a count of those held back: a flood of
    refused or timed-out connections must not become a flood of log lines."""

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last = -interval_s
        self._suppressed = 0

    def info(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (and %d more like it since the last line)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        log.info(message, *args)


Grant = Callable[[], None]


class SharedCount:
    """A count every shard process of a server sees: shared memory and a lock, both made
    before the shards are forked (the connections of the whole server, for
    `max_connections`)."""

    def __init__(self) -> None:
        self._value = multiprocessing.RawValue("q", 0)
        self._lock = multiprocessing.Lock()

    def take(self, limit: int) -> bool:
        with self._lock:
            if self._value.value >= limit:
                return False
            self._value.value += 1
            return True

    def give(self) -> None:
        with self._lock:
            assert self._value.value > 0
            self._value.value -= 1


class ConnectionGate:
    def __init__(self, limits: ConnectionLimits, server_connections: SharedCount | None = None) -> None:
        self.limits = limits
        self._server_connections = server_connections  # several shards: their sum is capped
        self.open_connections = 0
        self.reserved_bytes = 0
        self._waiting: deque[tuple[int, Grant]] = deque()
        self.refusals = RateLimitedLog()
        self.timeouts = RateLimitedLog()

    # ---- connections ---------------------------------------------------------------------
    def admit(self, transfer: bool = False) -> bool:
        """Counts a new connection in; False when it must be closed at once. A `transfer`
        (a connection another shard handed over, already counted there) always fits."""
        if not transfer and self.open_connections >= self.limits.max_connections:
            return False
        if self._server_connections is not None and not self._server_connections.take(
            self.limits.max_connections if not transfer else 1 << 62
        ):
            return False
        self.open_connections += 1
        return True

    def release_connection(self) -> None:
        assert self.open_connections > 0
        self.open_connections -= 1
        if self._server_connections is not None:
            self._server_connections.give()

    # ---- incomplete-frame budget -----------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def reserve(self, nbytes: int, grant: Grant) -> bool:
        """True when ``nbytes`` are reserved now. Otherwise the request queues and ``grant`` is
        called (synchronously, from a later ``release``) once the bytes are reserved for it."""
        if not self._waiting and self._fits(nbytes):
            self.reserved_bytes += nbytes
            return True
        self._waiting.append((nbytes, grant))
        return False

    def cancel(self, grant: Grant) -> None:
        """Withdraws a queued request (its connection closed while waiting)."""
        for i, (_, queued) in enumerate(self._waiting):
            if queued == grant:
                del self._waiting[i]
                break
        self._admit_waiting()  # a big head leaving may let smaller ones behind it in

    def release(self, nbytes: int) -> None:
        assert 0 <= nbytes <= self.reserved_bytes, (nbytes, self.reserved_bytes)
        self.reserved_bytes -= nbytes
        self._admit_waiting()

    def _fits(self, nbytes: int) -> bool:
        # Admitted when it fits, and always when nothing is reserved: no frame waits forever.
        budget = self.limits.max_incomplete_request_bytes
        return self.reserved_bytes == 0 or self.reserved_bytes + nbytes <= budget

    def _admit_waiting(self) -> None:
        # Strictly in arrival order, so a big frame is not starved by a stream of small ones.
        while self._waiting and self._fits(self._waiting[0][0]):
            nbytes, grant = self._waiting.popleft()
            self.reserved_bytes += nbytes
            grant()
