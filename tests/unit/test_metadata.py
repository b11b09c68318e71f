"""Unit tests of the metadata state machine (protocol sections 3.3-3.7, 4.5, 4.6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tidelog.metadata import (
    OP_TYPES,
    ROOT_USER_ID,
    ChangePassword,
    CreateConsumerGroup,
    CreatePartitions,
    CreatePersonalAccessToken,
    CreateStream,
    CreateTopic,
    CreateUser,
    DeleteConsumerGroup,
    DeletePartitions,
    DeletePersonalAccessToken,
    DeleteStream,
    DeleteTopic,
    DeleteUser,
    Metadata,
    MetadataDefaults,
    Op,
    PatMeta,
    TopicMeta,
    UpdatePermissions,
    UpdateStream,
    UpdateTopic,
    UpdateUser,
    UserMeta,
    UserStatus,
    op_from_json,
    op_to_json,
)
from tidelog.permissions import (
    ROOT_PERMISSIONS,
    GlobalPermissions,
    Permissions,
    StreamPermissions,
    TopicPermissions,
)
from tidelog.wire.codes import U64_MAX, IggyError, Status

SEGMENT_BYTES = 1 << 30
DEFAULTS = MetadataDefaults(segment_size_bytes=SEGMENT_BYTES)
NOW_US = 1_700_000_000_000_000

SOME_PERMISSIONS = Permissions(
    GlobalPermissions(read_streams=True, poll_messages=True),
    {
        7: StreamPermissions(
            manage_stream=True,
            send_messages=True,
            topics={3: TopicPermissions(read_topic=True), 9: TopicPermissions(send_messages=True)},
        ),
        2: StreamPermissions(read_topics=True),
    },
)


def new_md(defaults: MetadataDefaults = DEFAULTS) -> Metadata:
    return Metadata(defaults)


def create_topic_op(
    stream_id: int = 0,
    name: str = "events",
    partitions: int = 3,
    *,
    compression: int = 1,
    expiry: int = 0,
    max_size: int = 0,
    replication: int = 0,
) -> CreateTopic:
    return CreateTopic(stream_id, name, partitions, compression, expiry, max_size, replication, NOW_US)


def with_topic(partitions: int = 3) -> tuple[Metadata, TopicMeta]:
    md = new_md()
    md.apply(CreateStream("s", NOW_US))
    topic = md.apply(create_topic_op(partitions=partitions))
    return md, topic


def create_user_op(name: str = "alice", permissions: Permissions | None = None) -> CreateUser:
    return CreateUser(name, "hash-" + name, UserStatus.ACTIVE, permissions, NOW_US)


def with_root_and_user() -> Metadata:
    md = new_md()
    md.apply(CreateUser("iggy", "root-hash", UserStatus.ACTIVE, ROOT_PERMISSIONS, NOW_US))
    md.apply(create_user_op("alice"))
    return md


def expect_error(md: Metadata, op: Op, status: Status) -> None:
    """The op fails with `status` and changes nothing, not even the revision."""
    before = md.to_snapshot()
    with pytest.raises(IggyError) as info:
        md.apply(op)
    assert info.value.status == status
    assert md.to_snapshot() == before
    md.check_invariants()


def found_pat(md: Metadata, token_hash: str) -> tuple[UserMeta, PatMeta]:
    found = md.pat_by_hash(token_hash)
    assert found is not None
    return found


def expect_raises(status: Status, fn: Callable[[], Any]) -> None:
    with pytest.raises(IggyError) as info:
        fn()
    assert info.value.status == status


# ---- streams ---------------------------------------------------------------------------------


def test_create_stream_given_empty_when_created_should_get_id_zero_and_bump_revision() -> None:
    md = new_md()
    stream = md.apply(CreateStream("orders", NOW_US))
    assert (stream.id, stream.name, stream.created_at_us) == (0, "orders", NOW_US)
    assert md.revision == 1
    assert md.apply(CreateStream("payments", NOW_US)).id == 1
    assert md.revision == 2
    assert md.streams_count == 2


def test_create_stream_given_name_taken_when_created_should_fail_1012() -> None:
    md = new_md()
    md.apply(CreateStream("orders", NOW_US))
    expect_error(md, CreateStream("orders", NOW_US), Status.STREAM_NAME_ALREADY_EXISTS)


def test_create_stream_given_bad_name_length_when_created_should_fail() -> None:
    md = new_md()
    expect_error(md, CreateStream("", NOW_US), Status.INVALID_STREAM_NAME)
    expect_error(md, CreateStream("x" * 256, NOW_US), Status.INVALID_STREAM_NAME)
    # Length counts UTF-8 bytes: 128 two-byte characters are 256 bytes.
    expect_error(md, CreateStream("é" * 128, NOW_US), Status.INVALID_STREAM_NAME)
    assert md.apply(CreateStream("x" * 255, NOW_US)).id == 0


def test_stream_lookup_given_names_when_looked_up_should_match_exactly_and_case_sensitively() -> None:
    md = new_md()
    md.apply(CreateStream("test", NOW_US))
    md.apply(CreateStream("Test", NOW_US))
    md.apply(CreateStream("123", NOW_US))
    assert md.require_stream("test").id == 0
    assert md.require_stream("Test").id == 1
    assert md.stream("TEST") is None
    assert md.stream("tes") is None
    assert md.require_stream("123").id == 2
    assert md.require_stream(1).name == "Test"
    assert md.stream(3) is None
    expect_raises(Status.STREAM_ID_NOT_FOUND, lambda: md.require_stream("nope"))
    expect_raises(Status.STREAM_ID_NOT_FOUND, lambda: md.require_stream(9))


def test_update_stream_given_stream_when_renamed_should_move_the_name() -> None:
    md = new_md()
    md.apply(CreateStream("a", NOW_US))
    md.apply(CreateStream("b", NOW_US))
    md.apply(UpdateStream(0, "c"))
    assert md.stream("a") is None
    assert md.require_stream("c").id == 0
    md.apply(UpdateStream(0, "c"))  # its own name is not "taken"
    expect_error(md, UpdateStream(0, "b"), Status.STREAM_NAME_ALREADY_EXISTS)
    expect_error(md, UpdateStream(5, "z"), Status.STREAM_ID_NOT_FOUND)
    expect_error(md, UpdateStream(0, ""), Status.INVALID_STREAM_NAME)


def test_delete_stream_given_stream_when_deleted_should_free_name_and_fail_1009_after() -> None:
    md, _ = with_topic()
    md.apply(DeleteStream(0))
    assert md.stream("s") is None and md.streams_count == 0 and md.topics_count == 0
    expect_error(md, DeleteStream(0), Status.STREAM_ID_NOT_FOUND)
    assert md.apply(CreateStream("s", NOW_US)).topics == {}


def test_stream_ids_given_freed_ids_when_created_should_reuse_most_recently_freed_first() -> None:
    md = new_md()
    for i in range(4):
        md.apply(CreateStream(f"s{i}", NOW_US))
    md.apply(DeleteStream(1))
    md.apply(DeleteStream(2))
    assert md.apply(CreateStream("x", NOW_US)).id == 2
    assert md.apply(CreateStream("y", NOW_US)).id == 1
    assert md.apply(CreateStream("z", NOW_US)).id == 4  # lowest never-used id


# ---- topics ----------------------------------------------------------------------------------


def test_create_topic_given_zero_settings_when_created_should_resolve_server_defaults() -> None:
    defaults = MetadataDefaults(segment_size_bytes=1000, message_expiry=60_000_000, max_topic_size=5000)
    md = new_md(defaults)
    md.apply(CreateStream("s", NOW_US))
    topic = md.apply(create_topic_op(partitions=2))
    assert topic.message_expiry == 60_000_000
    assert topic.max_topic_size == 5000
    assert topic.replication_factor == 1
    assert (topic.id, topic.stream_id, topic.name, topic.created_at_us) == (0, 0, "events", NOW_US)
    assert sorted(topic.partitions) == [0, 1]
    assert all(p.created_at_us == NOW_US for p in topic.partitions.values())


def test_create_topic_given_explicit_settings_when_created_should_keep_them() -> None:
    md = new_md()
    md.apply(CreateStream("s", NOW_US))
    topic = md.apply(
        create_topic_op(compression=2, expiry=U64_MAX, max_size=2 * SEGMENT_BYTES, replication=3)
    )
    assert (topic.compression_algorithm, topic.message_expiry) == (2, U64_MAX)
    assert (topic.max_topic_size, topic.replication_factor) == (2 * SEGMENT_BYTES, 3)


def test_create_topic_given_partition_counts_when_created_should_accept_0_to_1000() -> None:
    md = new_md()
    md.apply(CreateStream("s", NOW_US))
    assert md.apply(create_topic_op(name="none", partitions=0)).partitions == {}
    assert len(md.apply(create_topic_op(name="max", partitions=1000)).partitions) == 1000
    expect_error(md, create_topic_op(name="over", partitions=1001), Status.TOO_MANY_PARTITIONS)
    assert md.partitions_count == 1000


def test_create_topic_given_invalid_request_when_created_should_fail_with_reference_codes() -> None:
    md, _ = with_topic()
    expect_error(md, create_topic_op(stream_id=4, name="x"), Status.STREAM_ID_NOT_FOUND)
    expect_error(md, create_topic_op(name="events"), Status.TOPIC_NAME_ALREADY_EXISTS)
    expect_error(md, create_topic_op(name=""), Status.INVALID_TOPIC_NAME)
    expect_error(md, create_topic_op(name="x", compression=0), Status.INVALID_COMMAND)
    expect_error(md, create_topic_op(name="x", compression=3), Status.INVALID_COMMAND)
    expect_error(md, create_topic_op(name="x", max_size=SEGMENT_BYTES - 1), Status.INVALID_TOPIC_SIZE)
    assert md.apply(create_topic_op(name="x", max_size=SEGMENT_BYTES)).max_topic_size == SEGMENT_BYTES


def test_create_topic_given_same_name_in_other_stream_when_created_should_succeed() -> None:
    md, _ = with_topic()
    md.apply(CreateStream("s2", NOW_US))
    topic = md.apply(create_topic_op(stream_id=1, name="events"))
    assert (topic.stream_id, topic.id) == (1, 0)  # topic ids are per stream


def test_topic_ids_given_freed_ids_when_created_should_reuse_most_recently_freed_first() -> None:
    md, _ = with_topic()
    md.apply(create_topic_op(name="b"))
    md.apply(create_topic_op(name="c"))
    md.apply(DeleteTopic(0, 0))
    md.apply(DeleteTopic(0, 2))
    assert md.apply(create_topic_op(name="d")).id == 2
    assert md.apply(create_topic_op(name="e")).id == 0
    assert md.apply(create_topic_op(name="f")).id == 3


def test_topic_lookup_given_names_when_looked_up_should_match_exactly() -> None:
    md, topic = with_topic()
    stream = md.require_stream(0)
    assert md.topic(stream, "events") is topic
    assert md.topic(stream, "Events") is None
    assert md.topic(stream, 0) is topic
    expect_raises(Status.TOPIC_ID_NOT_FOUND, lambda: md.require_topic(stream, "Events"))
    expect_raises(Status.TOPIC_ID_NOT_FOUND, lambda: md.require_topic(stream, 1))
    assert md.require_partition(topic, 2).id == 2
    expect_raises(Status.PARTITION_NOT_FOUND, lambda: md.require_partition(topic, 3))


def test_update_topic_given_values_when_updated_should_store_them_as_sent() -> None:
    md, topic = with_topic()
    md.apply(UpdateTopic(0, 0, 2, 0, 0, 0, "renamed"))
    assert (topic.compression_algorithm, topic.message_expiry, topic.max_topic_size) == (2, 0, 0)
    assert topic.replication_factor == 1
    assert topic.name == "renamed"
    stream = md.require_stream(0)
    assert md.topic(stream, "events") is None and md.topic(stream, "renamed") is topic
    # No segment-size check on update (section 2.7).
    md.apply(UpdateTopic(0, 0, 1, 5, 10, 2, "renamed"))
    assert (topic.message_expiry, topic.max_topic_size, topic.replication_factor) == (5, 10, 2)


def test_update_topic_given_invalid_request_when_updated_should_fail_with_reference_codes() -> None:
    md, _ = with_topic()
    md.apply(create_topic_op(name="other"))
    expect_error(md, UpdateTopic(1, 0, 1, 0, 0, 0, "x"), Status.STREAM_ID_NOT_FOUND)
    expect_error(md, UpdateTopic(0, 5, 1, 0, 0, 0, "x"), Status.TOPIC_ID_NOT_FOUND)
    expect_error(md, UpdateTopic(0, 0, 1, 0, 0, 0, "other"), Status.TOPIC_NAME_ALREADY_EXISTS)
    expect_error(md, UpdateTopic(0, 0, 9, 0, 0, 0, "x"), Status.INVALID_COMMAND)


def test_delete_topic_given_topic_when_deleted_should_free_name_and_fail_after() -> None:
    md, _ = with_topic()
    expect_error(md, DeleteTopic(3, 0), Status.STREAM_ID_NOT_FOUND)
    md.apply(DeleteTopic(0, 0))
    assert md.topic(md.require_stream(0), "events") is None
    expect_error(md, DeleteTopic(0, 0), Status.TOPIC_ID_NOT_FOUND)
    assert md.apply(create_topic_op(name="events")).id == 0


# ---- partitions ------------------------------------------------------------------------------


def test_create_partitions_given_topic_when_created_should_continue_ids() -> None:
    md, topic = with_topic(partitions=2)
    created = md.apply(CreatePartitions(0, 0, 3, NOW_US + 1))
    assert [p.id for p in created] == [2, 3, 4]
    assert sorted(topic.partitions) == [0, 1, 2, 3, 4]
    assert topic.partitions[4].created_at_us == NOW_US + 1
    assert topic.partitions[0].created_at_us == NOW_US


def test_create_partitions_given_bad_count_when_created_should_fail_2015() -> None:
    md, _ = with_topic()
    expect_error(md, CreatePartitions(0, 0, 0, NOW_US), Status.TOO_MANY_PARTITIONS)
    expect_error(md, CreatePartitions(0, 0, 1001, NOW_US), Status.TOO_MANY_PARTITIONS)
    expect_error(md, CreatePartitions(0, 1, 1, NOW_US), Status.TOPIC_ID_NOT_FOUND)
    expect_error(md, CreatePartitions(1, 0, 1, NOW_US), Status.STREAM_ID_NOT_FOUND)
    assert len(md.apply(CreatePartitions(0, 0, 1000, NOW_US))) == 1000


def test_delete_partitions_given_topic_when_deleted_should_remove_highest_ids() -> None:
    md, topic = with_topic(partitions=5)
    md.apply(DeletePartitions(0, 0, 2))
    assert sorted(topic.partitions) == [0, 1, 2]
    md.apply(DeletePartitions(0, 0, 3))
    assert topic.partitions == {}
    assert md.apply(CreatePartitions(0, 0, 1, NOW_US))[0].id == 0


def test_delete_partitions_given_bad_count_when_deleted_should_fail() -> None:
    md, _ = with_topic(partitions=3)
    expect_error(md, DeletePartitions(0, 0, 0), Status.TOO_MANY_PARTITIONS)
    expect_error(md, DeletePartitions(0, 0, 4), Status.INVALID_PARTITIONS_COUNT)
    expect_error(md, DeletePartitions(0, 0, 1001), Status.TOO_MANY_PARTITIONS)
    expect_error(md, DeletePartitions(0, 7, 1), Status.TOPIC_ID_NOT_FOUND)


# ---- consumer groups -------------------------------------------------------------------------


def test_create_group_given_topic_when_created_should_cover_all_partitions() -> None:
    md, topic = with_topic(partitions=4)
    group = md.apply(CreateConsumerGroup(0, 0, "workers"))
    assert (group.id, group.name, group.partition_ids, group.members) == (0, "workers", [0, 1, 2, 3], [])
    assert md.group(topic, "workers") is group and md.group(topic, 0) is group
    assert md.group(topic, "Workers") is None
    assert md.groups_count == 1


def test_create_group_given_invalid_request_when_created_should_fail_with_reference_codes() -> None:
    md, _ = with_topic()
    md.apply(CreateConsumerGroup(0, 0, "workers"))
    expect_error(md, CreateConsumerGroup(0, 0, "workers"), Status.CONSUMER_GROUP_NAME_ALREADY_EXISTS)
    expect_error(md, CreateConsumerGroup(0, 9, "x"), Status.TOPIC_ID_NOT_FOUND)
    expect_error(md, CreateConsumerGroup(9, 0, "x"), Status.STREAM_ID_NOT_FOUND)
    expect_error(md, CreateConsumerGroup(0, 0, ""), Status.INVALID_CONSUMER_GROUP_NAME)
    md.apply(create_topic_op(name="other"))
    assert md.apply(CreateConsumerGroup(0, 1, "workers")).id == 0  # unique per topic only


def test_delete_group_given_group_when_deleted_should_free_id_and_fail_5000_after() -> None:
    md, topic = with_topic()
    md.apply(CreateConsumerGroup(0, 0, "a"))
    md.apply(CreateConsumerGroup(0, 0, "b"))
    md.apply(DeleteConsumerGroup(0, 0, 0))
    expect_error(md, DeleteConsumerGroup(0, 0, 0), Status.CONSUMER_GROUP_ID_NOT_FOUND)
    expect_raises(Status.CONSUMER_GROUP_ID_NOT_FOUND, lambda: md.require_group(topic, "a"))
    assert md.apply(CreateConsumerGroup(0, 0, "a")).id == 0
    assert md.apply(CreateConsumerGroup(0, 0, "c")).id == 2


# ---- users -----------------------------------------------------------------------------------


def test_create_user_given_empty_when_created_should_make_root_id_zero_then_slots() -> None:
    md = with_root_and_user()
    assert md.require_user(ROOT_USER_ID).username == "iggy"
    alice = md.require_user("alice")
    assert (alice.id, alice.password_hash, alice.status, alice.created_at_us) == (
        1,
        "hash-alice",
        UserStatus.ACTIVE,
        NOW_US,
    )
    assert md.user_by_name("alice") is alice and md.user(1) is alice
    assert md.user("Alice") is None and md.user(2) is None
    expect_raises(Status.RESOURCE_NOT_FOUND, lambda: md.require_user(7))


def test_create_user_given_invalid_request_when_created_should_fail_with_reference_codes() -> None:
    md = with_root_and_user()
    expect_error(md, create_user_op("alice"), Status.USER_ALREADY_EXISTS)
    expect_error(md, create_user_op("ab"), Status.INVALID_USERNAME)
    expect_error(md, create_user_op("a" * 51), Status.INVALID_USERNAME)
    expect_error(md, CreateUser("bob", "h", 3, None, NOW_US), Status.INVALID_COMMAND)
    assert md.apply(create_user_op("abc")).id == 2
    assert md.apply(create_user_op("a" * 50)).id == 3


def test_user_ids_given_deleted_users_when_created_should_reuse_most_recently_freed_first() -> None:
    md = with_root_and_user()
    md.apply(create_user_op("bob"))
    md.apply(create_user_op("carol"))
    md.apply(DeleteUser(1))
    md.apply(DeleteUser(3))
    assert md.apply(create_user_op("dave")).id == 3
    assert md.apply(create_user_op("erin")).id == 1
    assert md.apply(create_user_op("frank")).id == 4


def test_update_user_given_changes_when_updated_should_rename_and_change_status() -> None:
    md = with_root_and_user()
    md.apply(UpdateUser(1, "alicia", None))
    user = md.require_user(1)
    assert user.username == "alicia" and user.status == UserStatus.ACTIVE
    assert md.user_by_name("alice") is None
    md.apply(UpdateUser(1, None, UserStatus.INACTIVE))
    assert user.username == "alicia" and user.status == UserStatus.INACTIVE
    md.apply(UpdateUser(1, "alicia", None))  # own name is not "taken"


def test_update_user_given_invalid_request_when_updated_should_fail_with_reference_codes() -> None:
    md = with_root_and_user()
    expect_error(md, UpdateUser(1, "iggy", None), Status.USER_ALREADY_EXISTS)
    expect_error(md, UpdateUser(1, "ab", None), Status.INVALID_USERNAME)
    expect_error(md, UpdateUser(9, "zed", None), Status.RESOURCE_NOT_FOUND)
    expect_error(md, UpdateUser(1, "zed", 0), Status.INVALID_COMMAND)


def test_update_permissions_given_user_when_updated_should_replace_or_clear() -> None:
    md = with_root_and_user()
    md.apply(UpdatePermissions(1, SOME_PERMISSIONS))
    assert md.require_user(1).permissions == SOME_PERMISSIONS
    md.apply(UpdatePermissions(1, None))
    assert md.require_user(1).permissions is None
    expect_error(md, UpdatePermissions(ROOT_USER_ID, None), Status.CANNOT_CHANGE_PERMISSIONS)
    expect_error(md, UpdatePermissions(5, None), Status.RESOURCE_NOT_FOUND)


def test_change_password_given_user_when_changed_should_store_new_hash() -> None:
    md = with_root_and_user()
    md.apply(ChangePassword(1, "new-hash"))
    assert md.require_user(1).password_hash == "new-hash"
    expect_error(md, ChangePassword(5, "x"), Status.RESOURCE_NOT_FOUND)


def test_delete_user_given_root_or_missing_when_deleted_should_fail() -> None:
    md = with_root_and_user()
    expect_error(md, DeleteUser(ROOT_USER_ID), Status.CANNOT_DELETE_USER)
    expect_error(md, DeleteUser(8), Status.RESOURCE_NOT_FOUND)
    md.apply(DeleteUser(1))
    assert md.user_by_name("alice") is None and md.user(1) is None


# ---- personal access tokens ------------------------------------------------------------------


def test_create_pat_given_user_when_created_should_be_found_by_hash() -> None:
    md = with_root_and_user()
    pat = md.apply(CreatePersonalAccessToken(1, "ci-token", "h1", 0))
    assert pat == PatMeta("ci-token", "h1", 0)
    found = md.pat_by_hash("h1")
    assert found is not None and found[0].id == 1 and found[1] is pat
    assert md.pat_by_hash("h2") is None
    # The same name is fine for another user.
    md.apply(CreatePersonalAccessToken(0, "ci-token", "h2", NOW_US + 10))
    assert found_pat(md, "h2")[0].id == 0


def test_create_pat_given_invalid_request_when_created_should_fail_with_reference_codes() -> None:
    md = with_root_and_user()
    md.apply(CreatePersonalAccessToken(1, "tok", "h0", 0))
    expect_error(
        md, CreatePersonalAccessToken(1, "tok", "hx", 0), Status.PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS
    )
    expect_error(md, CreatePersonalAccessToken(1, "ab", "hx", 0), Status.INVALID_PERSONAL_ACCESS_TOKEN_NAME)
    expect_error(
        md, CreatePersonalAccessToken(1, "t" * 31, "hx", 0), Status.INVALID_PERSONAL_ACCESS_TOKEN_NAME
    )
    expect_error(md, CreatePersonalAccessToken(9, "tok2", "hx", 0), Status.RESOURCE_NOT_FOUND)
    assert md.apply(CreatePersonalAccessToken(1, "t" * 30, "h30", 0)).name == "t" * 30


def test_create_pat_given_100_tokens_when_one_more_created_should_fail_52() -> None:
    md = with_root_and_user()
    for i in range(100):
        md.apply(CreatePersonalAccessToken(1, f"token-{i}", f"h{i}", 0))
    expect_error(
        md, CreatePersonalAccessToken(1, "token-x", "hx", 0), Status.PERSONAL_ACCESS_TOKENS_LIMIT_REACHED
    )
    md.apply(DeletePersonalAccessToken(1, "token-0"))
    md.apply(CreatePersonalAccessToken(1, "token-x", "hx", 0))


def test_delete_pat_given_token_when_deleted_should_drop_hash_lookup() -> None:
    md = with_root_and_user()
    md.apply(CreatePersonalAccessToken(1, "tok", "h1", 0))
    md.apply(DeletePersonalAccessToken(1, "tok"))
    assert md.pat_by_hash("h1") is None and md.require_user(1).tokens == {}
    expect_error(md, DeletePersonalAccessToken(1, "tok"), Status.RESOURCE_NOT_FOUND)
    expect_error(md, DeletePersonalAccessToken(4, "tok"), Status.RESOURCE_NOT_FOUND)


def test_delete_user_given_tokens_when_deleted_should_drop_their_hashes() -> None:
    md = with_root_and_user()
    md.apply(CreatePersonalAccessToken(1, "tok", "h1", 0))
    md.apply(DeleteUser(1))
    assert md.pat_by_hash("h1") is None
    md.check_invariants()


def test_pat_expired_given_expiry_when_checked_should_compare_with_now() -> None:
    assert not PatMeta("t", "h", 0).expired(NOW_US)
    assert not PatMeta("t", "h", NOW_US + 1).expired(NOW_US)
    assert PatMeta("t", "h", NOW_US).expired(NOW_US)


# ---- revision and determinism ----------------------------------------------------------------


def rich_ops() -> list[Op]:
    return [
        CreateUser("iggy", "root-hash", UserStatus.ACTIVE, ROOT_PERMISSIONS, NOW_US),
        create_user_op("alice", SOME_PERMISSIONS),
        create_user_op("bob"),
        CreatePersonalAccessToken(1, "tok-a", "ha", 0),
        CreatePersonalAccessToken(1, "tok-b", "hb", NOW_US + 5),
        DeleteUser(2),
        UpdateUser(1, None, UserStatus.INACTIVE),
        ChangePassword(1, "hash2"),
        CreateStream("s0", NOW_US),
        CreateStream("s1", NOW_US + 1),
        CreateStream("s2", NOW_US + 2),
        DeleteStream(1),
        UpdateStream(2, "renamed"),
        create_topic_op(0, "t0", 3),
        create_topic_op(0, "t1", 0, expiry=77, max_size=U64_MAX, replication=2),
        create_topic_op(0, "t2", 1),
        DeleteTopic(0, 1),
        UpdateTopic(0, 2, 2, 0, 0, 0, "t2b"),
        CreatePartitions(0, 0, 2, NOW_US + 9),
        DeletePartitions(0, 0, 1),
        CreateConsumerGroup(0, 0, "g0"),
        CreateConsumerGroup(0, 0, "g1"),
        CreateConsumerGroup(0, 0, "g2"),
        DeleteConsumerGroup(0, 0, 1),
        create_topic_op(2, "t0", 2),
        UpdatePermissions(1, Permissions(GlobalPermissions(manage_users=True))),
    ]


def test_apply_given_same_ops_when_replayed_twice_should_give_equal_states() -> None:
    a, b = new_md(), new_md()
    for op in rich_ops():
        a.apply(op)
        b.apply(op)
    assert a.to_snapshot() == b.to_snapshot()
    assert a.streams == b.streams and a.users == b.users
    assert a.revision == b.revision == len(rich_ops())
    a.check_invariants()


def test_to_snapshot_given_rich_state_when_round_tripped_through_json_should_equal_state() -> None:
    md = new_md()
    for op in rich_ops():
        md.apply(op)
    restored = Metadata.from_snapshot(json.loads(json.dumps(md.to_snapshot())), DEFAULTS)
    assert restored.revision == md.revision
    assert restored.streams == md.streams
    assert restored.users == md.users
    assert restored.to_snapshot() == md.to_snapshot()
    assert found_pat(restored, "hb")[1].expiry_at_us == NOW_US + 5
    assert restored.require_stream("renamed").id == 2
    # The id allocators came along: the next creates get the same ids on both.
    for m in (md, restored):
        assert m.apply(CreateStream("new", NOW_US)).id == 1
        assert m.apply(create_topic_op(0, "new")).id == 1
        assert m.apply(CreateConsumerGroup(0, 0, "new")).id == 1
        assert m.apply(create_user_op("newuser")).id == 2


def test_to_snapshot_given_members_when_taken_should_leave_runtime_membership_out() -> None:
    md, topic = with_topic()
    md.apply(CreateConsumerGroup(0, 0, "g"))
    md.join_group(topic, 0, client_id=42)
    restored = Metadata.from_snapshot(md.to_snapshot(), DEFAULTS)
    assert restored.require_stream(0).topics[0].groups[0].members == []
    assert restored.client_groups(42) == []


def test_op_json_given_every_op_type_when_round_tripped_should_equal_the_op() -> None:
    ops = [*rich_ops(), DeletePersonalAccessToken(1, "tok-a"), UpdatePermissions(1, None)]
    assert {type(op).__name__ for op in ops} == set(OP_TYPES)
    for op in ops:
        assert op_from_json(json.loads(json.dumps(op_to_json(op)))) == op


def test_op_from_json_given_bad_record_when_decoded_should_raise_value_error() -> None:
    with pytest.raises(ValueError):
        op_from_json({"type": "Nope"})
    with pytest.raises(ValueError):
        op_from_json({"type": "DeleteStream"})
    with pytest.raises(ValueError):
        op_from_json({"type": "DeleteStream", "stream_id": 1, "extra": 2})
    with pytest.raises(ValueError):
        op_from_json({"type": "DeleteStream", "stream_id": [1]})


def test_op_from_json_given_create_topic_logged_before_09_fields_when_decoded_should_default_them() -> None:
    # A metadata log written before the 0.9 topic settings existed (the upgrade path).
    old = {
        "type": "CreateTopic",
        "stream_id": 0,
        "name": "t",
        "partitions_count": 2,
        "compression_algorithm": 1,
        "message_expiry": 0,
        "max_topic_size": 0,
        "replication_factor": 1,
        "created_at_us": NOW_US,
    }
    op = op_from_json(old)
    assert isinstance(op, CreateTopic)
    assert (op.options_hex, op.durability, op.segment_size_bytes, op.flush_messages) == ("", "", 0, 0)
    with pytest.raises(ValueError):  # a required field is still required
        op_from_json({k: v for k, v in old.items() if k != "name"})


def test_from_snapshot_given_topic_without_09_fields_when_loaded_should_default_them() -> None:
    md = Metadata(DEFAULTS)
    md.apply(CreateStream("s", NOW_US))
    md.apply(CreateTopic(0, "t", 1, 1, 0, 0, 1, NOW_US, durability="persisted", segment_size_bytes=1 << 20))
    snap = md.to_snapshot()
    assert Metadata.from_snapshot(json.loads(json.dumps(snap)), DEFAULTS).to_snapshot() == snap
    for topic in snap["streams"][0]["topics"]:
        for key in ("options_hex", "durability", "consumer_offset_durability", "segment_size_bytes"):
            del topic[key]
    loaded = Metadata.from_snapshot(snap, DEFAULTS).streams[0].topics[0]
    assert (loaded.durability, loaded.segment_size_bytes) == ("", 0)


def test_defaults_given_inconsistent_values_when_built_should_raise() -> None:
    with pytest.raises(ValueError):
        MetadataDefaults(segment_size_bytes=0)
    with pytest.raises(ValueError):
        MetadataDefaults(segment_size_bytes=100, max_topic_size=99)
    with pytest.raises(ValueError):
        MetadataDefaults(segment_size_bytes=100, message_expiry=0)


# ---- group membership and rebalance ----------------------------------------------------------


def assert_full_rebalance(md: Metadata, topic: TopicMeta, group_id: int) -> None:
    group = topic.groups[group_id]
    members = group.members
    expected: list[list[int]] = [[] for _ in members]
    for i, partition_id in enumerate(sorted(topic.partitions)):
        expected[i % len(members)].append(partition_id)
    assert [m.partitions for m in members] == expected
    owned = sorted(p for m in members for p in m.partitions)
    assert owned == sorted(topic.partitions)
    md.check_invariants()


@pytest.mark.parametrize("members", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("partitions", [0, 1, 3, 7])
def test_rebalance_given_members_when_partitions_change_should_own_each_partition_once(
    members: int, partitions: int
) -> None:
    md, topic = with_topic(partitions=partitions)
    md.apply(CreateConsumerGroup(0, 0, "g"))
    for client in range(members):
        member = md.join_group(topic, 0, client_id=100 + client)
        assert member.id == client
        assert_full_rebalance(md, topic, 0)
    md.apply(CreatePartitions(0, 0, 4, NOW_US))
    assert_full_rebalance(md, topic, 0)
    md.apply(DeletePartitions(0, 0, 2))
    assert_full_rebalance(md, topic, 0)
    md.leave_group(topic, 0, client_id=100)
    if members > 1:
        assert_full_rebalance(md, topic, 0)
    else:
        assert topic.groups[0].members == []


def test_join_group_given_member_when_joining_again_should_change_nothing() -> None:
    md, topic = with_topic(partitions=4)
    md.apply(CreateConsumerGroup(0, 0, "g"))
    first = md.join_group(topic, 0, client_id=1)
    md.join_group(topic, 0, client_id=2)
    before = [(m.id, m.client_id, list(m.partitions)) for m in topic.groups[0].members]
    assert md.join_group(topic, 0, client_id=1) is first
    assert [(m.id, m.client_id, list(m.partitions)) for m in topic.groups[0].members] == before


def test_join_group_given_left_members_when_joining_should_use_max_member_id_plus_one() -> None:
    md, topic = with_topic(partitions=4)
    md.apply(CreateConsumerGroup(0, 0, "g"))
    for client in (1, 2, 3):
        md.join_group(topic, 0, client)
    md.leave_group(topic, 0, 2)
    assert md.join_group(topic, 0, 4).id == 3
    md.leave_group(topic, 0, 4)
    assert md.join_group(topic, 0, 5).id == 3
    assert [m.client_id for m in topic.groups[0].members] == [1, 3, 5]


def test_group_membership_given_missing_group_or_non_member_when_used_should_fail() -> None:
    md, topic = with_topic()
    md.apply(CreateConsumerGroup(0, 0, "g"))
    expect_raises(Status.CONSUMER_GROUP_ID_NOT_FOUND, lambda: md.join_group(topic, 3, 1))
    expect_raises(Status.CONSUMER_GROUP_ID_NOT_FOUND, lambda: md.leave_group(topic, 3, 1))
    expect_raises(Status.CONSUMER_GROUP_MEMBER_NOT_FOUND, lambda: md.leave_group(topic, 0, 1))
    group = topic.groups[0]
    expect_raises(Status.CONSUMER_GROUP_MEMBER_NOT_FOUND, lambda: md.next_partition(group, 1))
    assert md.member_of(group, 1) is None


def test_leave_all_given_client_in_several_groups_when_disconnecting_should_leave_each() -> None:
    md, topic = with_topic(partitions=3)
    other = md.apply(create_topic_op(name="other", partitions=2))
    md.apply(CreateConsumerGroup(0, 0, "g0"))
    md.apply(CreateConsumerGroup(0, 0, "g1"))
    md.apply(CreateConsumerGroup(0, 1, "g0"))
    for group_id in (0, 1):
        md.join_group(topic, group_id, client_id=7)
        md.join_group(topic, group_id, client_id=8)
    md.join_group(other, 0, client_id=7)
    assert md.client_groups(7) == [(0, 0, 0), (0, 0, 1), (0, 1, 0)]
    assert md.leave_all(7) == [(0, 0, 0), (0, 0, 1), (0, 1, 0)]
    assert md.client_groups(7) == []
    for group_id in (0, 1):
        assert [m.client_id for m in topic.groups[group_id].members] == [8]
        assert_full_rebalance(md, topic, group_id)
    assert other.groups[0].members == []
    assert md.leave_all(7) == []
    assert md.client_groups(8) == [(0, 0, 0), (0, 0, 1)]


@pytest.mark.parametrize(
    "delete",
    [DeleteConsumerGroup(0, 0, 0), DeleteTopic(0, 0), DeleteStream(0)],
    ids=["group", "topic", "stream"],
)
def test_delete_given_joined_group_when_deleted_should_drop_memberships(delete: Op) -> None:
    md, topic = with_topic()
    md.apply(CreateConsumerGroup(0, 0, "g"))
    md.join_group(topic, 0, client_id=1)
    md.join_group(topic, 0, client_id=2)
    md.apply(delete)
    assert md.client_groups(1) == [] and md.client_groups(2) == []
    assert md.leave_all(1) == []
    md.check_invariants()


def test_next_partition_given_member_when_called_should_round_robin_its_own_partitions() -> None:
    md, topic = with_topic(partitions=5)
    md.apply(CreateConsumerGroup(0, 0, "g"))
    md.join_group(topic, 0, client_id=1)
    md.join_group(topic, 0, client_id=2)
    group = topic.groups[0]
    assert [md.next_partition(group, 1) for _ in range(5)] == [0, 2, 4, 0, 2]
    assert [md.next_partition(group, 2) for _ in range(3)] == [1, 3, 1]


def test_next_partition_given_more_members_than_partitions_should_return_none_for_idle() -> None:
    md, topic = with_topic(partitions=1)
    md.apply(CreateConsumerGroup(0, 0, "g"))
    md.join_group(topic, 0, client_id=1)
    md.join_group(topic, 0, client_id=2)
    group = topic.groups[0]
    assert md.next_partition(group, 1) == 0
    assert md.next_partition(group, 2) is None
    md.apply(CreatePartitions(0, 0, 1, NOW_US))
    assert md.next_partition(group, 2) == 1


def test_membership_given_group_when_joined_and_left_should_not_bump_revision() -> None:
    md, topic = with_topic()
    md.apply(CreateConsumerGroup(0, 0, "g"))
    revision = md.revision
    md.join_group(topic, 0, 1)
    md.leave_group(topic, 0, 1)
    assert md.revision == revision  # membership is runtime state, not a logged mutation


# ---- prepare: validate without changing anything (log before apply) ------------------------


def _every_kind_of_op() -> list[Op]:
    return [
        CreateUser("iggy", "h0", UserStatus.ACTIVE, ROOT_PERMISSIONS, NOW_US),
        CreateUser("alice", "h1", UserStatus.ACTIVE, None, NOW_US),
        UpdateUser(1, "alicia", UserStatus.INACTIVE),
        UpdatePermissions(1, SOME_PERMISSIONS),
        ChangePassword(1, "h2"),
        CreatePersonalAccessToken(1, "tok", "th", 0),
        DeletePersonalAccessToken(1, "tok"),
        CreateStream("s", NOW_US),
        UpdateStream(0, "s2"),
        create_topic_op(0, "t", 2),
        UpdateTopic(0, 0, 1, 5, U64_MAX, 1, "t2"),
        CreatePartitions(0, 0, 3, NOW_US),
        DeletePartitions(0, 0, 1),
        CreateConsumerGroup(0, 0, "g"),
        DeleteConsumerGroup(0, 0, 0),
        DeleteTopic(0, 0),
        DeleteUser(1),
        DeleteStream(0),
    ]


def test_prepare_given_each_kind_of_op_should_change_nothing_until_the_change_is_called() -> None:
    md, twin = new_md(), new_md()
    ops = _every_kind_of_op()
    assert {type(op).__name__ for op in ops} == set(OP_TYPES)
    for op in ops:
        before = md.to_snapshot()
        change = md.prepare(op)
        assert md.to_snapshot() == before, op  # validated only
        result = change()
        assert result == twin.apply(op), op  # the same ids and entities as a plain apply
        assert md.to_snapshot() == twin.to_snapshot()
        md.check_invariants()


def test_prepare_given_invalid_op_should_raise_and_change_nothing() -> None:
    md, topic = with_topic()
    before = md.to_snapshot()
    for op, status in [
        (CreateStream("s", NOW_US), Status.STREAM_NAME_ALREADY_EXISTS),
        (DeleteTopic(0, 9), Status.TOPIC_ID_NOT_FOUND),
        (DeletePartitions(0, topic.id, 9), Status.INVALID_PARTITIONS_COUNT),
    ]:
        with pytest.raises(IggyError) as info:
            md.prepare(op)
        assert info.value.status == status
    assert md.to_snapshot() == before
