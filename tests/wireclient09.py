"""A tiny synchronous raw-socket client for 0.9 server tests.

It drives the client-side state machine of ``tidelog.wire.v09.frames`` (``ClientFraming``):
request headers built and numbered the way the 0.11 SDK does, replies and evictions read
exactly as far as the machine asks: one blocking socket, one request in flight.
:meth:`Client09.send_raw` sends arbitrary bytes for the bad-input tests; ``client``,
``session`` and ``request`` (the last number taken) may be set to forge headers.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from typing import TypeAlias

from tidelog.wire.v09 import frames as f
from tidelog.wire.v09.codes import PROTOCOL_VERSION, CommandCode, Operation

SDK_VERSION = f.ClientVersionInfo(PROTOCOL_VERSION, "rust-sdk", "0.11.0")
Answer: TypeAlias = f.ReplyReceived | f.EvictionReceived


class Closed(ConnectionError):
    """The server closed the connection while a reply was expected."""


class Client09:
    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.client = uuid.uuid4().int or 1
        self.session = 0
        self.request = 0
        self._framing = f.ClientFraming(client=self.client)

    def _machine(self) -> f.ClientFraming:
        """The framing machine, told the ids a test may have forged in the meantime."""
        machine = self.__dict__.get("_framing")
        if machine is None:  # made with __new__ to build frames only
            machine = self._framing = f.ClientFraming()
        machine.client, machine.session, machine.request_number = self.client, self.session, self.request
        return machine

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Client09:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- raw ------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_answer(self) -> Answer:
        machine = self._framing
        while True:
            n = self.sock.recv_into(machine.buffer())
            if n == 0:
                raise Closed("server closed the connection")
            event = machine.received(n)
            if event is None:
                continue
            if isinstance(event, f.ReplyViolation):
                raise AssertionError(f"bad reply from server: {event}")
            return event

    def closed_by_server(self) -> bool:
        """True when the server closes without sending anything more."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    # ---- requests -------------------------------------------------------------------------
    def frame(self, operation: Operation, body: bytes = b"", code: int = 0) -> bytes:
        machine = self._machine()
        frame = machine.frame(operation, body, code)
        self.request = machine.request_number
        return frame

    def call(self, operation: Operation, body: bytes = b"", code: int = 0) -> Answer:
        self.send_raw(self.frame(operation, body, code))
        return self.read_answer()

    def ok(self, operation: Operation, body: bytes = b"", code: int = 0) -> bytes:
        """The reply body of a successful request (result section left in place)."""
        answer = self.call(operation, body, code)
        assert isinstance(answer, f.ReplyReceived), f"evicted: {answer}"
        assert answer.header.status == 0, f"status {answer.header.status}"
        return bytes(answer.body)

    def read(self, code: CommandCode, body: bytes = b"") -> bytes:
        return self.ok(Operation.NON_REPLICATED, body, int(code))

    def change(self, operation: Operation, body: bytes = b"") -> bytes:
        """A result-framed operation's payload; raises on a rejection."""
        result = f.decode_result_section(self.ok(operation, body))
        assert isinstance(result, f.ResultOk), f"rejected: {result}"
        return bytes(result.payload)

    def login(self, username: str = "iggy", password: str = "iggy") -> f.LoginReply:
        body = f.encode_password_login(SDK_VERSION, f.PasswordLogin(username, password))
        answer = self.call(Operation.REGISTER, body)
        assert isinstance(answer, f.ReplyReceived), f"evicted: {answer}"
        reply = f.decode_login_reply(answer.body)
        assert isinstance(reply, f.LoginReply), reply
        self.session = reply.session
        return reply
