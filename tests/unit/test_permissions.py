"""The who-may-call-what rules of protocol section 4.8, flag by flag and scope by scope."""

from __future__ import annotations

from dataclasses import fields

import pytest

from tidelog import permissions as p
from tidelog.permissions import (
    GlobalPermissions,
    Permissions,
    StreamPermissions,
    TopicPermissions,
)

S, T, OTHER = 3, 7, 9  # stream, topic, and an unrelated id for both

GLOBAL_FLAGS = [f.name for f in fields(GlobalPermissions)]
STREAM_FLAGS = [f.name for f in fields(StreamPermissions) if f.name != "topics"]
TOPIC_FLAGS = [f.name for f in fields(TopicPermissions)]


def with_global(flag: str) -> Permissions:
    return Permissions(GlobalPermissions(**{flag: True}))


def with_stream(flag: str, stream_id: int = S) -> Permissions:
    return Permissions(streams={stream_id: StreamPermissions(**{flag: True})})


def with_topic(flag: str, stream_id: int = S, topic_id: int = T) -> Permissions:
    topic = TopicPermissions(**{flag: True})
    return Permissions(streams={stream_id: StreamPermissions(topics={topic_id: topic})})


# For each rule, the flags (by scope) that grant it, straight from the table in section 4.8.
RULES = {
    "servers_read": ({"manage_servers", "read_servers"}, set(), set()),
    "users_read": ({"manage_users", "read_users"}, set(), set()),
    "users_manage": ({"manage_users"}, set(), set()),
    "streams_read": ({"manage_streams", "read_streams"}, set(), set()),
    "streams_manage": ({"manage_streams"}, set(), set()),
    "stream_read": ({"manage_streams", "read_streams"}, {"manage_stream", "read_stream"}, set()),
    "stream_manage": ({"manage_streams"}, {"manage_stream"}, set()),
    "topics_read": (
        {"read_streams", "manage_streams", "manage_topics", "read_topics"},
        {"manage_stream", "read_stream", "manage_topics", "read_topics"},
        set(),
    ),
    "topic_read": (
        {"read_streams", "manage_streams", "manage_topics", "read_topics"},
        {"manage_stream", "read_stream", "manage_topics", "read_topics"},
        {"manage_topic", "read_topic"},
    ),
    "topic_create": ({"manage_streams", "manage_topics"}, {"manage_stream", "manage_topics"}, set()),
    "topic_manage": (
        {"manage_streams", "manage_topics"},
        {"manage_stream", "manage_topics"},
        {"manage_topic"},
    ),
    "poll": (
        {"poll_messages", "read_topics", "manage_topics", "read_streams", "manage_streams"},
        {"poll_messages", "manage_stream", "read_stream", "manage_topics", "read_topics"},
        {"manage_topic", "read_topic", "poll_messages"},
    ),
    "send": (
        {"send_messages", "manage_streams", "manage_topics"},
        {"send_messages", "manage_stream", "manage_topics"},
        {"manage_topic", "send_messages"},
    ),
}


def ask(rule: str, perms: Permissions | None, stream_id: int = S, topic_id: int = T) -> bool:
    fn = getattr(p, rule)
    arity = fn.__code__.co_argcount
    args: tuple[object, ...] = (perms, stream_id, topic_id)[:arity]
    return bool(fn(*args))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_permissions_given_each_single_flag_when_asked_should_grant_exactly_the_table(rule: str) -> None:
    global_ok, stream_ok, topic_ok = RULES[rule]
    for flag in GLOBAL_FLAGS:
        assert ask(rule, with_global(flag)) == (flag in global_ok), ("global", flag)
    for flag in STREAM_FLAGS:
        assert ask(rule, with_stream(flag)) == (flag in stream_ok), ("stream", flag)
    for flag in TOPIC_FLAGS:
        assert ask(rule, with_topic(flag)) == (flag in topic_ok), ("topic", flag)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_permissions_given_grant_on_another_stream_or_topic_when_asked_should_deny(rule: str) -> None:
    _, stream_ok, topic_ok = RULES[rule]
    for flag in stream_ok:
        assert not ask(rule, with_stream(flag, stream_id=OTHER))
    for flag in topic_ok:
        assert not ask(rule, with_topic(flag, topic_id=OTHER))
        assert not ask(rule, with_topic(flag, stream_id=OTHER))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_permissions_given_no_or_root_permissions_when_asked_should_deny_or_allow(rule: str) -> None:
    assert not ask(rule, None)
    assert not ask(rule, p.NO_PERMISSIONS)
    assert ask(rule, p.ROOT_PERMISSIONS)
