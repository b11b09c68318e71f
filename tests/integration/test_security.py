"""Secrets stay secret: who may take a snapshot and what it may contain (issue 6, defect 1), and
personal access token expiry that cannot break token listing (defect 12). Live servers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from tests.conftest import ServerProcess
from tests.wireclient import WireClient
from tidelog.auth import MAX_PAT_EXPIRY_AT_US, hash_token
from tidelog.config import load_config
from tidelog.metadata import CreatePersonalAccessToken as CreatePatOp
from tidelog.permissions import GlobalPermissions, Permissions
from tidelog.server.shard import Shard
from tidelog.wire import requests as c
from tidelog.wire.codes import U64_MAX, Status
from tidelog.wire.primitives import SnapshotCompression, SnapshotType
from tidelog.wire.records import PersonalAccessTokenInfo, RawPersonalAccessToken, decode_list, decode_record

ROOT_NAME = "chief"
# Distinctive, so that finding it anywhere in a snapshot cannot be a coincidence.
ROOT_SECRET = "Zq7-root-secret-4f1c9e"
OPS_SECRET = "ops-secret-77aa31"
NOBODY_SECRET = "nobody-secret-19bd02"
ROOT_ENV = {"IGGY_ROOT_USERNAME": ROOT_NAME, "IGGY_ROOT_PASSWORD": ROOT_SECRET}
ALL_TYPES = (SnapshotType.ALL,)
HOUR_US = 3600 * 1_000_000


def snapshot_request(compression: int = SnapshotCompression.STORED) -> c.GetSnapshot:
    return c.GetSnapshot(compression, ALL_TYPES)


def create_pat(client: WireClient, name: str, expiry: int) -> str:
    reply = client.call(c.CreatePersonalAccessToken(name, expiry))
    return decode_record(RawPersonalAccessToken, reply).token


def list_pats(client: WireClient) -> list[PersonalAccessTokenInfo]:
    return decode_list(PersonalAccessTokenInfo, client.call(c.GetPersonalAccessTokens()))


# ---- defect 1: snapshots ----------------------------------------------------------------------------


def test_get_snapshot_given_user_without_permissions_when_requested_should_answer_41(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data", env=ROOT_ENV).start()
    with WireClient(srv.address) as root:
        root.login(ROOT_NAME, ROOT_SECRET)
        root.call(c.CreateUser("nobody", NOBODY_SECRET, 1, None))
    with WireClient(srv.address) as nobody:
        nobody.login("nobody", NOBODY_SECRET)
        status, payload = nobody.request(c.GetSnapshot.CODE, snapshot_request().encode())
        assert status == Status.UNAUTHORIZED
        assert payload == b""
        nobody.ping()  # refused, not disconnected
    assert srv.stop() == 0


def test_get_snapshot_given_servers_read_user_when_requested_should_contain_no_secret(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data", env=ROOT_ENV).start()
    ops_perms = Permissions(GlobalPermissions(read_servers=True))
    with WireClient(srv.address) as root:
        root.login(ROOT_NAME, ROOT_SECRET)
        root.call(c.CreateUser("ops", OPS_SECRET, 1, ops_perms))
        root.call(c.CreateUser("nobody", NOBODY_SECRET, 1, None))
        root_token = create_pat(root, "root-token", 0)
    with WireClient(srv.address) as ops:
        ops.login("ops", OPS_SECRET)
        ops_token = create_pat(ops, "ops-token", HOUR_US)
        for compression in (SnapshotCompression.STORED, SnapshotCompression.DEFLATED):
            archive = ops.call(snapshot_request(compression))
            with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                names = zf.namelist()
                assert "server_config.txt" in names and "filesystem_overview.txt" in names
                members = {name: zf.read(name) for name in names}
            secrets = [ROOT_SECRET, OPS_SECRET, NOBODY_SECRET, root_token, ops_token, "$argon2"]
            for name, data in members.items():
                for secret in secrets:
                    assert secret.encode() not in data, f"{name} contains {secret!r}"
            config_text = members["server_config.txt"].decode()
            # The config is there, deliberately rendered, with the secret shown as withheld.
            assert f'username = "{ROOT_NAME}"' in config_text
            assert 'password = "<redacted>"' in config_text
            assert "[tcp]" in config_text and "max_send_payload_bytes" in config_text
    assert srv.stop() == 0


# ---- defect 12: personal access token expiry --------------------------------------------------------


def test_create_pat_given_expiry_past_the_representable_range_when_created_should_answer_56(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data").start()
    with WireClient(srv.address) as client:
        client.login()
        for expiry in (U64_MAX - 1, 1 << 63, MAX_PAT_EXPIRY_AT_US):
            status, _ = client.request(
                c.CreatePersonalAccessToken.CODE, c.CreatePersonalAccessToken("huge", expiry).encode()
            )
            assert status == Status.INVALID_PERSONAL_ACCESS_TOKEN_EXPIRY, expiry
        # Nothing was stored, listing works, and ordinary expiries still do.
        assert list_pats(client) == []
        create_pat(client, "hour", HOUR_US)
        create_pat(client, "never", U64_MAX)
        create_pat(client, "default", 0)
        listed = {t.name: t.expiry_at_us for t in list_pats(client)}
        assert listed["never"] == 0 and listed["default"] == 0
        assert 0 < listed["hour"] <= MAX_PAT_EXPIRY_AT_US
    srv.stop()
    again = server_factory(tmp_path / "data").start()
    with WireClient(again.address) as client:
        client.login()
        assert sorted(t.name for t in list_pats(client)) == ["default", "hour", "never"]
    assert again.stop() == 0


def _store_pat_offline(data_dir: Path, name: str, token: str, expiry_at_us: int) -> None:
    """Writes a token the way an older server did, straight into the metadata log."""
    shard = Shard(load_config(environ={}, overrides={"data_dir": str(data_dir)}))
    shard.open()
    try:
        op = CreatePatOp(user_id=0, name=name, token_hash=hash_token(token), expiry_at_us=expiry_at_us)
        shard.apply(op)
    finally:
        shard.close()


def test_get_pats_given_stored_expiry_beyond_u64_when_listed_should_list_it_as_never_across_restarts(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    data = tmp_path / "data"
    first = server_factory(data).start()  # creates the root user
    assert first.stop() == 0
    overflowed = "A" * 67 + "="  # what an older server stored for expiry 2^64 - 2: now + 2^64 - 2
    _store_pat_offline(data, "overflowed", overflowed, (1 << 64) + 1_700_000_000_000_000)
    _store_pat_offline(data, "near-max", "B" * 67 + "=", U64_MAX - 1)
    for _ in range(2):  # and again after a restart
        srv = server_factory(data).start()
        with WireClient(srv.address) as client:
            client.login()
            listed = {t.name: t.expiry_at_us for t in list_pats(client)}
            assert listed == {"overflowed": 0, "near-max": U64_MAX - 1}
            client.call(c.GetMe())
        with WireClient(srv.address) as by_token:
            # Never expires, as the server has always treated it.
            by_token.call(c.LoginWithPersonalAccessToken(overflowed))
        assert "Traceback" not in srv.output, srv.output
        assert srv.stop() == 0


def test_get_pats_given_huge_expiry_refused_when_listed_should_answer_ok(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    """The exact reproduction of the issue: after a refused huge expiry, listing answers 0."""
    srv = server_factory(tmp_path / "data").start()
    with WireClient(srv.address) as client:
        client.login()
        huge = c.CreatePersonalAccessToken("huge", (1 << 64) - 2)
        assert client.request(huge.CODE, huge.encode())[0] == Status.INVALID_PERSONAL_ACCESS_TOKEN_EXPIRY
        assert client.request(c.GetPersonalAccessTokens.CODE, b"") == (Status.OK, b"")
    assert srv.stop() == 0
