"""kill -9 loops under each fsync policy: a few cycles on one data directory, each restart
checked against the README's promise for the policy (see tests/harness/kill9_loop.py).
bench/soak_kill9.py runs the same loop for thousands of cycles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.harness.kill9_loop import LOSS_WINDOW_SLACK_MS, Kill9Loop
from tidelog.config import DurabilityConfig

CYCLES = 3
MAX_LOSS_WINDOW_MS = DurabilityConfig().flush_interval_ms + LOSS_WINDOW_SLACK_MS


def test_kill9_loop_given_fsync_always_when_killed_repeatedly_should_keep_every_acknowledged_message(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    loop = Kill9Loop(server_factory, tmp_path / "data", "always", seed=11)
    results = list(loop.run(CYCLES))
    assert len(results) == CYCLES
    assert all(r.lost == 0 for r in results)
    assert sum(r.acknowledged for r in results) > 0


@pytest.mark.parametrize("policy", ["interval", "never"])
def test_kill9_loop_given_lazy_fsync_when_killed_repeatedly_should_keep_a_valid_prefix_within_the_window(
    tmp_path: Path, server_factory: type[ServerProcess], policy: str
) -> None:
    loop = Kill9Loop(
        server_factory,
        tmp_path / "data",
        policy,
        seed=12,
        max_loss_window_ms=MAX_LOSS_WINDOW_MS,
    )
    results = list(loop.run(CYCLES))
    assert len(results) == CYCLES
    assert sum(r.acknowledged for r in results) > 0
    assert sum(r.stored for r in results) > 0  # the loop checked real recovered data
