"""The fault shim itself (tests/faults/faultfs.c via tests/faults.py), checked on a small probe
process before other tests trust it against the server.

The probe runs with the shim preloaded and performs one system call per line it reads from
stdin, answering ``OK <ms>`` or ``<ERRNO name> <ms>``, so a test can change the rules between
calls of one running process, as it would for a running server.
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import FAULT_LIB, FaultPlan, ensure_built

PROBE = r"""
import errno, os, socket, sys, time
socks = socket.socketpair()
read_end, write_end = os.pipe()
for line in sys.stdin:
    op, path = line.split(maxsplit=1)
    path = path.strip()
    started = time.monotonic()
    try:
        if op == "socket":
            os.write(socks[0].fileno(), b"x"); socks[1].recv(1)
        elif op == "pipe":
            os.write(write_end, b"x"); os.read(read_end, 1)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if op == "fdatasync": os.fdatasync(fd)
                elif op == "fsync": os.fsync(fd)
                elif op == "write": os.write(fd, b"abc")
                elif op == "pwrite": os.pwrite(fd, b"abc", 0)
                elif op == "pwritev": os.pwritev(fd, [b"a", b"bc"], 0)
                elif op == "writev": os.writev(fd, [b"a", b"bc"])
                else: raise SystemExit("unknown op " + op)
            finally:
                os.close(fd)
        answer = "OK"
    except OSError as e:
        answer = errno.errorcode.get(e.errno, str(e.errno))
    print(answer, round((time.monotonic() - started) * 1000), flush=True)
"""


class Probe:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.dir = tmp_path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )

    def call(self, op: str, name: str = "-") -> tuple[str, int]:
        """Perform `op` on the file `name` under the probe's directory: (result, elapsed ms)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{op} {self.dir / name}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the probe died (exit {self.proc.wait()})"
        result, ms = line.split()
        return result, int(ms)

    def result(self, op: str, name: str = "-") -> str:
        return self.call(op, name)[0]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0


@pytest.fixture
def plan(tmp_path: Path) -> FaultPlan:
    return FaultPlan(tmp_path / "rules")


@pytest.fixture
def probe(tmp_path: Path, plan: FaultPlan) -> Iterator[Probe]:
    p = Probe(tmp_path, plan.env())
    yield p
    p.close()


def test_faultfs_given_missing_library_when_ensure_built_should_compile_it() -> None:
    path = ensure_built()
    assert path == FAULT_LIB and path.is_file() and path.stat().st_size > 0


def test_faultfs_given_fdatasync_rule_when_syncing_matching_and_other_files_should_fail_only_the_match(
    plan: FaultPlan, probe: Probe
) -> None:
    plan.fail("fdatasync", "*/seg*.log", "EIO")
    assert probe.result("fdatasync", "seg1.log") == "EIO"
    assert probe.result("fdatasync", "seg1.index") == "OK"
    assert probe.result("fsync", "seg1.log") == "OK"  # "fdatasync" rules leave fsync alone
    assert probe.result("write", "seg1.log") == "OK"


def test_faultfs_given_fsync_rule_when_calling_fsync_and_fdatasync_should_fail_both(
    plan: FaultPlan, probe: Probe
) -> None:
    plan.fail("fsync", "*/metadata.log", "EIO")
    assert probe.result("fsync", "metadata.log") == "EIO"
    assert probe.result("fdatasync", "metadata.log") == "EIO"


@pytest.mark.parametrize("op", ["write", "pwrite", "pwritev", "writev"])
def test_faultfs_given_write_rule_when_writing_with_any_variant_should_fail_with_enospc(
    plan: FaultPlan, probe: Probe, tmp_path: Path, op: str
) -> None:
    plan.fail("write", "*.log", "ENOSPC")
    assert probe.result(op, "full.log") == "ENOSPC"
    assert (tmp_path / "full.log").stat().st_size == 0  # the real call never ran
    assert probe.result(op, "other.dat") == "OK"


def test_faultfs_given_a_count_when_it_runs_out_should_pass_through_and_survive_rewrites(
    plan: FaultPlan, probe: Probe
) -> None:
    plan.fail("fdatasync", "*a.log", "EDQUOT", times=2)
    assert [probe.result("fdatasync", "a.log") for _ in range(3)] == ["EDQUOT", "EDQUOT", "OK"]
    # Adding a rule rewrites the file; the exhausted rule's line is unchanged, so it stays spent.
    plan.fail("fdatasync", "*b.log", "EIO", times=1)
    assert probe.result("fdatasync", "a.log") == "OK"
    assert [probe.result("fdatasync", "b.log") for _ in range(2)] == ["EIO", "OK"]


def test_faultfs_given_delay_rule_when_syncing_should_wait_then_perform_the_call(
    plan: FaultPlan, probe: Probe
) -> None:
    plan.delay("fsync", "*slow.log", 300, times=1)
    plan.fail("fsync", "*slow.log", "EIO")  # reached only once the delay rule is spent
    result, ms = probe.call("fdatasync", "slow.log")
    assert result == "OK" and ms >= 300
    assert probe.result("fdatasync", "slow.log") == "EIO"


def test_faultfs_given_write_rule_when_writing_to_sockets_and_pipes_should_leave_them_alone(
    plan: FaultPlan, probe: Probe
) -> None:
    plan.fail("write", "*", "EIO")
    assert probe.result("socket") == "OK"
    assert probe.result("pipe") == "OK"
    assert probe.result("write", "file.log") == "EIO"


def test_faultfs_given_rules_changed_at_runtime_when_calling_again_should_follow_the_new_rules(
    plan: FaultPlan, probe: Probe
) -> None:
    assert probe.result("fdatasync", "x.log") == "OK"
    plan.fail("fdatasync", "*x.log", "EIO")
    assert probe.result("fdatasync", "x.log") == "EIO"
    plan.clear()
    assert probe.result("fdatasync", "x.log") == "OK"
    plan.fail("fdatasync", "*x.log", "ENOSPC")
    assert probe.result("fdatasync", "x.log") == "ENOSPC"
    plan.clear()
    plan.fail("fdatasync", "*x.log", "ENOSPC")  # the same text again: a fresh rule, not the old one
    plan.clear()
    assert probe.result("fdatasync", "x.log") == "OK"


def test_faultfs_given_rules_file_unset_when_calling_should_pass_everything_through(
    tmp_path: Path,
) -> None:
    p = Probe(tmp_path, {"LD_PRELOAD": str(ensure_built())})
    try:
        for op in ["fdatasync", "fsync", "write", "pwrite", "pwritev", "writev"]:
            assert p.result(op, "a.log") == "OK"
        assert p.result("socket") == "OK"
    finally:
        p.close()
    assert (tmp_path / "a.log").read_bytes().startswith(b"abc")


def test_faultfs_given_rules_file_missing_when_calling_should_pass_everything_through(
    tmp_path: Path,
) -> None:
    p = Probe(tmp_path, {"LD_PRELOAD": str(ensure_built()), "TIDELOG_FAULTS": str(tmp_path / "none")})
    try:
        assert p.result("fdatasync", "a.log") == "OK"
        assert p.result("write", "a.log") == "OK"
    finally:
        p.close()


def test_faultfs_given_many_threads_when_rules_change_under_them_should_not_crash(
    plan: FaultPlan, tmp_path: Path
) -> None:
    script = r"""
import os, sys, threading
errors = []
def work(i):
    fd = os.open(sys.argv[1] + "/t%d.log" % i, os.O_RDWR | os.O_CREAT)
    for _ in range(3000):
        try:
            os.pwrite(fd, b"x" * 64, 0); os.fdatasync(fd)
        except OSError as e:
            errors.append((i, e.errno))
    os.close(fd)
ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sorted(set(errors)))
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **plan.env()},
    )
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        plan.fail("fdatasync", "*/t1.log", "EIO", times=5)
        plan.clear()
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    # Only the file the rules name ever failed, and only with the errno they give.
    assert set(ast.literal_eval(out)) <= {(1, errno.EIO)}
