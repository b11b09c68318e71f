"""Shared fixtures: a real ``tidelog serve`` in a subprocess on a free loopback port."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults import FaultPlan, SmallFilesystems, SmallFsUnavailable

LISTEN_RE = re.compile(r"listening on ([\d.]+):(\d+)")

# A server started by a test (or by a command a test runs) is one shard, whatever the machine's
# CPU count, unless the run asks for more: `make test` runs the server suites again with two.
os.environ.setdefault("TIDELOG_SYSTEM_SHARDING_CPU_ALLOCATION", "1")


def _sdk_major_minor() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("apache-iggy").split(".")[:2]
    except importlib.metadata.PackageNotFoundError:
        return None
    return int(major), int(minor)


# tests/sdk09 drives the apache-iggy 0.9 SDK, which lives in its own venv (.venv-sdk09; `make test`
# runs it there): under this venv's 0.8 SDK its imports would fail, so it is not collected here.
collect_ignore = [] if _sdk_major_minor() == (0, 9) else ["sdk09"]


class ServerProcess:
    """Runs ``python -m tidelog serve`` bound to 127.0.0.1:0 and learns the port it got."""

    def __init__(self, data_dir: Path, *extra_args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [
            sys.executable,
            "-m",
            "tidelog",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--tcp-address",
            "127.0.0.1:0",
            *self.extra_args,
        ]
        self.lines = []
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                m = LISTEN_RE.search(line)
                if m:
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("server did not start:\n" + self.output)
        if not self.port:
            raise RuntimeError("server exited before listening:\n" + self.output)
        return self

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait: the server flushes and exits 0."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.proc = None


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Factory(ServerProcess):
        def start(self, timeout_s: float = 30.0) -> ServerProcess:
            started.append(self)
            return super().start(timeout_s)

    yield Factory
    for srv in started:
        srv.kill()


@pytest.fixture
def server(tmp_path: Path, server_factory: type[ServerProcess]) -> Iterator[ServerProcess]:
    srv = server_factory(tmp_path / "data").start()
    yield srv
    srv.stop()


# ---- fault harness (tests/faults.py): the LD_PRELOAD shim's rules and small filesystems ----------


@pytest.fixture
def faults(tmp_path: Path) -> FaultPlan:
    """Rules for the fault shim; start a server with ``env=faults.env()``."""
    return FaultPlan(tmp_path / "faults.rules")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A factory: ``small_fs(size_mb)`` mounts a small ext4 (loop) or tmpfs and returns it;
    everything is unmounted at teardown. Skips the test where neither can be mounted."""
    filesystems = SmallFilesystems(tmp_path / "smallfs")

    def make(size_mb: int) -> Path:
        try:
            return filesystems(size_mb)
        except SmallFsUnavailable as e:
            pytest.skip(str(e))

    try:
        yield make
    finally:
        filesystems.cleanup()
