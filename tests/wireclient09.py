"""A tiny synchronous raw-socket client for 0.9 server tests.

It builds request headers the way the 0.11 SDK does (``request_header_for``) and splits the
server's bytes with the sans-IO ``ReplyDecoder``: one blocking socket, one request in
flight. :meth:`Client09.send_raw` sends arbitrary bytes for the bad-input tests.
"""

from __future__ import annotations

import contextlib
import socket
import uuid

from tidelog.wire.v09 import frames as f
from tidelog.wire.v09.codes import PROTOCOL_VERSION, CommandCode, Operation
from tidelog.wire.v09.header import request_header_for

SDK_VERSION = f.ClientVersionInfo(PROTOCOL_VERSION, "rust-sdk", "0.11.0")
Answer = f.ReplyReceived | f.EvictionReceived


class Closed(ConnectionError):
    """The server closed the connection while a reply was expected."""


class Client09:
    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.client = uuid.uuid4().int or 1
        self.session = 0
        self.request = 0
        self._decoder = f.ReplyDecoder()
        self._answers: list[Answer] = []

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
        while not self._answers:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise Closed("server closed the connection")
            for event in self._decoder.feed(chunk):
                if isinstance(event, f.ReplyViolation):
                    raise AssertionError(f"bad reply from server: {event}")
                self._answers.append(event)
        return self._answers.pop(0)

    def closed_by_server(self) -> bool:
        """True when the server closes without sending anything more."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    # ---- requests -------------------------------------------------------------------------
    def frame(self, operation: Operation, body: bytes = b"", code: int = 0) -> bytes:
        if operation not in (Operation.REGISTER, Operation.NON_REPLICATED):
            self.request += 1
        header = request_header_for(
            operation,
            body,
            client=self.client,
            request=self.request if operation != Operation.REGISTER else 0,
            session=self.session if operation != Operation.REGISTER else 0,
            command_code=code,
        )
        return header.encode() + body

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
