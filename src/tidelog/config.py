"""Server configuration: a frozen dataclass tree read from TOML, then environment overrides.

Precedence (lowest first): built-in defaults, the TOML file (``--config``), ``TIDELOG_<SECTION>_<KEY>``
environment variables, command-line flags. Every limit carries its unit last in its name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from tidelog.wire.codes import MAX_CONTROL_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, U64_MAX

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class FsyncPolicy(StrEnum):
    ALWAYS = "always"  # flush + fdatasync before every SendMessages acknowledgement
    INTERVAL = "interval"  # fdatasync every fsync_interval_ms (and on FlushUnsavedBuffer with fsync)
    NEVER = "never"  # leave it to the kernel; only FlushUnsavedBuffer with fsync syncs


@dataclass(frozen=True)
class TcpConfig:
    address: str = "127.0.0.1:8090"
    # SendMessages is the only command whose payload may exceed 10 MiB; this caps it so one
    # client cannot make the server allocate an arbitrary buffer.
    max_send_payload_bytes: int = 128 * MIB
    # Replies queued to a slow reader past this pause reading from that client.
    write_buffer_high_bytes: int = 8 * MIB
    # One PollMessages reply carries at most this much message data (at least one message),
    # whatever count the client asks for.
    max_poll_reply_bytes: int = 32 * MIB
    nodelay: bool = True
    # Connections past this many are closed as soon as they are accepted (with a log line).
    max_connections: int = 10_000
    # Before login only Ping, LoginUser and LoginWithPersonalAccessToken are useful, and their
    # payloads are tiny: a bigger frame from a client that has not logged in gets 80 and a close.
    max_unauthenticated_payload_bytes: int = 64 * KIB
    # A frame past the 256 KiB read buffer gets its own buffer when its header arrives. This
    # many bytes of such buffers (counted at their declared size) may exist at once across all
    # connections; a frame that does not fit waits, its connection's reading paused, until
    # earlier ones complete or time out (first come, first served).
    max_incomplete_request_bytes: int = 256 * MIB
    # A frame begun but not finished whose bytes stop coming for this long closes the
    # connection (time spent paused by the server itself does not count).
    request_timeout_ms: int = 30_000
    # A connection that has not logged in this long after connecting (or after logging out)
    # is closed.
    unauthenticated_idle_timeout_ms: int = 30_000


@dataclass(frozen=True)
class ShardingConfig:
    # One shard process per allocated CPU, each pinned to it, as Iggy reads the value: "all",
    # a count ("4": the first four CPUs this process may use), a range ("4..8", end
    # excluded), "numa:auto", or "numa:nodes=0,1;cores=4;no_ht=true". The default, "all", is
    # a shard per CPU; "1" is one unpinned process, as before shards.
    cpu_allocation: str = "all"


@dataclass(frozen=True)
class SystemConfig:
    segment_size_bytes: int = 1 * GIB
    message_expiry_us: int = U64_MAX  # topic default: never expire
    max_topic_size_bytes: int = U64_MAX  # topic default: unlimited
    verify_checksums_on_open: bool = False  # the unflushed tail is always checked
    # "buffered" (page cache) or "direct" (O_DIRECT segment logs; needs a filesystem that
    # supports it, checked at start).
    io: str = "buffered"
    # The format of new segments: "0.9" (stamped 0.9 batch records, byte for byte what a 0.9
    # poll returns: the current generation's traffic costs nothing extra) or "0.8" (0.8
    # messages, for a deployment whose clients all speak 0.8). Existing segments keep their
    # format, which their file names say; both generations read both.
    store_format: str = "0.9"
    # Recently written batches kept in memory so tailing consumers never read the disk: at
    # most this much per partition, and this much in all (shared evenly among partitions).
    partition_cache_bytes: int = 32 * MIB
    cache_bytes: int = 512 * MIB
    # Index columns of sealed segments loaded for polls, kept most recently used first: at
    # most this much in all (16 bytes per message; a segment's index larger than a quarter
    # of it is read by ranges instead). The active segment of each partition keeps its own.
    index_cache_bytes: int = 64 * MIB
    sharding: ShardingConfig = field(default_factory=ShardingConfig)


@dataclass(frozen=True)
class DurabilityConfig:
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval_ms: int = 1000
    # Buffered io: start the kernel's writeback every this many bytes appended to a segment,
    # so the periodic fsync never waits on seconds of dirty pages (0 = leave it to the kernel).
    writeback_bytes: int = 4 * MIB
    # The in-memory journal is written to the segment files when any of these trips.
    flush_messages: int = 1024
    flush_bytes: int = 1 * MIB
    flush_interval_ms: int = 100
    # After a failed write or sync a partition refuses writes (4006) and is retried: first
    # after retry_interval_ms, then at doubling intervals up to retry_max_interval_ms.
    retry_interval_ms: int = 100
    retry_max_interval_ms: int = 5000
    # interval/always: acknowledged batches stay in memory until synced, so that a failed
    # write or sync can write them again; at most this much in all (shared evenly among the
    # partitions, at least flush_bytes each), past which a partition syncs early.
    max_unsynced_bytes: int = 64 * MIB
    # At shutdown, partitions that cannot persist are retried for at most this long; then the
    # server exits 1 naming the offsets that were not persisted.
    shutdown_retry_ms: int = 5000


@dataclass(frozen=True)
class RetentionConfig:
    cleaner_enabled: bool = True
    cleaner_interval_ms: int = 60_000


@dataclass(frozen=True)
class HeartbeatConfig:
    enabled: bool = False
    interval_ms: int = 5000


# dataclasses.field metadata key marking a value that must never be shown (see render_config).
SECRET = "secret"


def secret_field(default: str) -> Any:
    """A config value that is a credential: left out of repr() and redacted by render_config.

    Mark every new credential this way (TLS keys, tokens, ...): the snapshot's server_config.txt
    and any log line that prints a config then cannot leak it.
    """
    return field(default=default, repr=False, metadata={SECRET: True})


@dataclass(frozen=True)
class RootConfig:
    username: str = "iggy"
    password: str = secret_field("iggy")


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("local_data")
    tcp: TcpConfig = field(default_factory=TcpConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    durability: DurabilityConfig = field(default_factory=DurabilityConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    root: RootConfig = field(default_factory=RootConfig)

    def __post_init__(self) -> None:
        assert self.tcp.max_send_payload_bytes > 0
        if self.system.segment_size_bytes < 4 * KIB or self.system.segment_size_bytes > 4 * GIB - 1:
            raise ConfigError("system.segment_size_bytes must be between 4 KiB and 4 GiB - 1")
        if self.tcp.max_send_payload_bytes > 4 * GIB - 1:
            raise ConfigError("tcp.max_send_payload_bytes must fit a u32 frame length")
        if self.durability.flush_messages < 1 or self.durability.flush_bytes < 1:
            raise ConfigError("durability.flush_messages and flush_bytes must be positive")
        if self.durability.fsync_interval_ms < 1 or self.durability.flush_interval_ms < 1:
            raise ConfigError("durability intervals must be positive")
        if self.system.io not in ("buffered", "direct"):
            raise ConfigError(f"system.io must be 'buffered' or 'direct', got {self.system.io!r}")
        if self.system.store_format not in ("0.8", "0.9"):
            raise ConfigError(f"system.store_format must be '0.8' or '0.9', got {self.system.store_format!r}")
        if self.durability.writeback_bytes < 0:
            raise ConfigError("durability.writeback_bytes must be >= 0")
        d = self.durability
        if not 1 <= d.retry_interval_ms <= d.retry_max_interval_ms or d.shutdown_retry_ms < 0:
            raise ConfigError(
                "durability: need 1 <= retry_interval_ms <= retry_max_interval_ms and shutdown_retry_ms >= 0"
            )
        if d.max_unsynced_bytes < 1:
            raise ConfigError("durability.max_unsynced_bytes must be positive")
        if self.system.cache_bytes < 0:
            raise ConfigError("system.cache_bytes must be >= 0")
        if self.system.index_cache_bytes < 0:
            raise ConfigError("system.index_cache_bytes must be >= 0")
        if self.tcp.max_poll_reply_bytes < 1 or self.system.partition_cache_bytes < 0:
            raise ConfigError("tcp.max_poll_reply_bytes must be positive, partition_cache_bytes >= 0")
        self._check_connection_limits()
        host, _, port = self.tcp.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"tcp.address must be HOST:PORT, got {self.tcp.address!r}")

    def _check_connection_limits(self) -> None:
        tcp = self.tcp
        if tcp.max_connections < 1:
            raise ConfigError("tcp.max_connections must be positive")
        if not KIB <= tcp.max_unauthenticated_payload_bytes <= MAX_CONTROL_PAYLOAD_BYTES:
            raise ConfigError("tcp.max_unauthenticated_payload_bytes must be between 1 KiB and 10 MiB")
        # Any frame a client may send must fit the budget on its own, or it could wait forever.
        if tcp.max_incomplete_request_bytes < max(tcp.max_send_payload_bytes, MAX_CONTROL_PAYLOAD_BYTES):
            raise ConfigError(
                "tcp.max_incomplete_request_bytes must be at least tcp.max_send_payload_bytes and 10 MiB"
            )
        if tcp.request_timeout_ms < 1 or tcp.unauthenticated_idle_timeout_ms < 1:
            raise ConfigError("tcp.request_timeout_ms and unauthenticated_idle_timeout_ms must be positive")

    @property
    def tcp_host(self) -> str:
        return self.tcp.address.rpartition(":")[0].strip("[]")

    @property
    def tcp_port(self) -> int:
        return int(self.tcp.address.rpartition(":")[2])


# A single message can carry a 64 MB payload, so the send cap must leave room for one.
assert TcpConfig().max_send_payload_bytes > MAX_PAYLOAD_BYTES


class ConfigError(ValueError):
    pass


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Turns a TOML or environment value into the field's type."""
    try:
        if target is bool or target == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if target is int or target == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if target in (Path, "Path"):
            return Path(value)
        if target in (FsyncPolicy, "FsyncPolicy"):
            return FsyncPolicy(str(value).lower())
        return str(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid value {value!r}") from exc


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> Any:
    changes: dict[str, Any] = {}
    known = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}: unknown key {key!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{key} must be a table")
            changes[key] = _apply(current, value, f"{where}.{key}")
        else:
            changes[key] = _coerce(value, f.type, f"{where}.{key}")
    return replace(obj, **changes)


_DEFAULTS = Config()


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``TIDELOG_TCP_ADDRESS=...`` → ``{"tcp": {"address": ...}}``; ``TIDELOG_DATA_DIR`` → top level."""
    out: dict[str, Any] = {}
    sections = {f.name for f in fields(Config) if f.name != "data_dir"}
    for name, value in environ.items():
        if not name.startswith("TIDELOG_"):
            continue
        rest = name[len("TIDELOG_") :].lower()
        if rest == "data_dir":
            out["data_dir"] = value
            continue
        section, _, key = rest.partition("_")
        if section in sections and key:
            target = out.setdefault(section, {})
            # A table inside the section (TIDELOG_SYSTEM_SHARDING_CPU_ALLOCATION).
            for inner in fields(getattr(_DEFAULTS, section)):
                table = getattr(getattr(_DEFAULTS, section), inner.name)
                if is_dataclass(table) and key.startswith(inner.name + "_"):
                    target = target.setdefault(inner.name, {})
                    key = key[len(inner.name) + 1 :]
                    break
            target[key] = value
    # Iggy's own variables for the root user, so Iggy's docs and scripts keep working.
    user, password = environ.get("IGGY_ROOT_USERNAME"), environ.get("IGGY_ROOT_PASSWORD")
    if (user is None) != (password is None):
        raise ConfigError("set both IGGY_ROOT_USERNAME and IGGY_ROOT_PASSWORD, or neither")
    if user is not None and password is not None:
        out.setdefault("root", {}).update({"username": user, "password": password})
    return out


REDACTED = "<redacted>"


def _render_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML


def _render_table(obj: Any) -> list[str]:
    lines = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        shown = json.dumps(REDACTED) if f.metadata.get(SECRET) else _render_value(value)
        lines.append(f"{f.name} = {shown}")
    return lines


def render_config(config: Config) -> str:
    """The effective configuration as TOML, every secret field replaced by ``"<redacted>"``.

    Rendered field by field from the dataclasses rather than with repr(), so what is shown is a
    deliberate choice: a field marked with ``secret_field`` never appears, whatever its value.
    """
    lines = _render_table(config)

    def tables(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.extend(["", f"[{prefix}{f.name}]", *_render_table(value)])
                tables(value, f"{prefix}{f.name}.")

    tables(config, "")
    return "\n".join(lines) + "\n"


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                config = _apply(config, tomllib.load(f), "config")
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    config = _apply(config, env_overrides(os.environ if environ is None else environ), "env")
    if overrides:
        config = _apply(config, overrides, "flag")
    return config
