"""The shard-wide connection gate: connection count and the incomplete-frame budget (defect 8)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from tidelog.config import ConfigError, TcpConfig, load_config
from tidelog.server.limits import ConnectionGate, ConnectionLimits, RateLimitedLog


def gate(max_connections: int = 3, budget: int = 100) -> ConnectionGate:
    return ConnectionGate(
        ConnectionLimits(
            max_connections=max_connections,
            max_incomplete_request_bytes=budget,
            request_timeout_ms=1000,
            unauthenticated_idle_timeout_ms=1000,
        )
    )


class Waiter:
    def __init__(self, name: str, granted: list[str]) -> None:
        self.name = name
        self.granted = granted

    def grant(self) -> None:
        self.granted.append(self.name)


def test_gate_given_max_connections_open_when_another_arrives_should_refuse_until_one_leaves() -> None:
    g = gate(max_connections=2)
    assert g.admit() and g.admit()
    assert not g.admit()
    g.release_connection()
    assert g.admit()
    assert g.open_connections == 2


def test_gate_given_budget_full_when_frames_wait_should_grant_them_in_arrival_order() -> None:
    g = gate(budget=100)
    granted: list[str] = []
    a, b, c = Waiter("a", granted), Waiter("b", granted), Waiter("c", granted)
    assert g.reserve(60, Waiter("held", granted).grant)
    assert not g.reserve(50, a.grant)
    # b would fit now (60 + 30 <= 100), but a came first: no overtaking, no starving a big frame.
    assert not g.reserve(30, b.grant)
    assert not g.reserve(30, c.grant)
    assert granted == [] and g.waiting == 3
    g.release(60)
    assert granted == ["a", "b"] and g.reserved_bytes == 80 and g.waiting == 1
    g.release(50)
    assert granted == ["a", "b", "c"] and g.reserved_bytes == 60


def test_gate_given_waiting_head_cancelled_should_admit_those_behind_it() -> None:
    g = gate(budget=100)
    granted: list[str] = []
    big, small = Waiter("big", granted), Waiter("small", granted)
    assert g.reserve(70, Waiter("held", granted).grant)
    assert not g.reserve(90, big.grant)
    assert not g.reserve(20, small.grant)
    g.cancel(big.grant)  # its connection closed while waiting
    assert granted == ["small"] and g.reserved_bytes == 90 and g.waiting == 0


def test_gate_given_nothing_reserved_when_frame_exceeds_budget_should_admit_it() -> None:
    """No frame can wait forever, whatever the configuration."""
    g = gate(budget=100)
    assert g.reserve(500, Waiter("x", []).grant)
    g.release(500)
    assert g.reserved_bytes == 0


def test_gate_release_given_more_than_reserved_should_fail_loudly() -> None:
    g = gate()
    with pytest.raises(AssertionError):
        g.release(1)


def test_rate_limited_log_given_a_burst_should_log_one_line_and_count_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limited = RateLimitedLog(interval_s=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="tidelog.server.limits"):
        for i in range(5):
            limited.info("refused %d", i)
        now[0] = 1.5
        limited.info("refused %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused 5 (and 4 more like it since the last line)",
    ]


def test_config_given_limit_env_variables_should_load_them() -> None:
    config = load_config(
        environ={
            "TIDELOG_TCP_MAX_CONNECTIONS": "7",
            "TIDELOG_TCP_MAX_UNAUTHENTICATED_PAYLOAD_BYTES": "4096",
            "TIDELOG_TCP_MAX_INCOMPLETE_REQUEST_BYTES": str(200 * 1024 * 1024),
            "TIDELOG_TCP_REQUEST_TIMEOUT_MS": "1500",
            "TIDELOG_TCP_UNAUTHENTICATED_IDLE_TIMEOUT_MS": "2500",
        }
    )
    assert ConnectionLimits.from_config(config.tcp) == ConnectionLimits(7, 200 * 1024 * 1024, 1500, 2500)
    assert config.tcp.max_unauthenticated_payload_bytes == 4096


@pytest.mark.parametrize(
    "tcp",
    [
        {"max_connections": 0},
        {"max_unauthenticated_payload_bytes": 1000},
        {"max_unauthenticated_payload_bytes": 10 * 1024 * 1024 + 1},
        # Smaller than the largest frame a client may send: that frame could wait forever.
        {"max_incomplete_request_bytes": 64 * 1024 * 1024},
        {"max_incomplete_request_bytes": 8 * 1024 * 1024, "max_send_payload_bytes": 4 * 1024 * 1024},
        {"request_timeout_ms": 0},
        {"unauthenticated_idle_timeout_ms": 0},
    ],
)
def test_config_given_bad_connection_limit_should_raise_config_error(tcp: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        load_config(environ={}, overrides={"tcp": tcp})


def test_readme_config_block_given_tcp_section_should_list_every_key_with_its_default() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("\n[tcp]\n", 1)[1].split("\n\n", 1)[0]
    documented = {}
    for line in block.splitlines():
        key, _, rest = line.partition("=")
        documented[key.strip()] = rest.split("#", 1)[0].strip()
    for f in dataclasses.fields(TcpConfig):
        default = getattr(TcpConfig(), f.name)
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert documented.get(f.name, "").strip('"') == shown, f"README [tcp] {f.name}"
