"""User permissions (protocol section 2.5) and who may call what (section 4.8).

One value type shared by the codec (which decodes and encodes it), the metadata (which
stores it per user) and the dispatcher (which asks the rule functions below). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class GlobalPermissions:
    manage_servers: bool = False
    read_servers: bool = False
    manage_users: bool = False
    read_users: bool = False
    manage_streams: bool = False
    read_streams: bool = False
    manage_topics: bool = False
    read_topics: bool = False
    poll_messages: bool = False
    send_messages: bool = False


@dataclass(frozen=True, slots=True)
class TopicPermissions:
    manage_topic: bool = False
    read_topic: bool = False
    poll_messages: bool = False
    send_messages: bool = False


@dataclass(frozen=True, slots=True)
class StreamPermissions:
    manage_stream: bool = False
    read_stream: bool = False
    manage_topics: bool = False
    read_topics: bool = False
    poll_messages: bool = False
    send_messages: bool = False
    topics: dict[int, TopicPermissions] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Permissions:
    global_: GlobalPermissions = field(default_factory=GlobalPermissions)
    streams: dict[int, StreamPermissions] = field(default_factory=dict)


ROOT_PERMISSIONS = Permissions(GlobalPermissions(*([True] * 10)))
NO_PERMISSIONS = Permissions()

_NO_STREAM = StreamPermissions()
_NO_TOPIC = TopicPermissions()


def _scope(
    p: Permissions | None, stream_id: int | None, topic_id: int | None
) -> tuple[GlobalPermissions, StreamPermissions, TopicPermissions]:
    if p is None:
        return GlobalPermissions(), _NO_STREAM, _NO_TOPIC
    s = p.streams.get(stream_id, _NO_STREAM) if stream_id is not None else _NO_STREAM
    t = s.topics.get(topic_id, _NO_TOPIC) if topic_id is not None else _NO_TOPIC
    return p.global_, s, t


def servers_read(p: Permissions | None) -> bool:
    g, _, _ = _scope(p, None, None)
    return g.manage_servers or g.read_servers


def users_read(p: Permissions | None) -> bool:
    g, _, _ = _scope(p, None, None)
    return g.manage_users or g.read_users


def users_manage(p: Permissions | None) -> bool:
    g, _, _ = _scope(p, None, None)
    return g.manage_users


def streams_read(p: Permissions | None) -> bool:
    g, _, _ = _scope(p, None, None)
    return g.manage_streams or g.read_streams


def streams_manage(p: Permissions | None) -> bool:
    g, _, _ = _scope(p, None, None)
    return g.manage_streams


def stream_read(p: Permissions | None, stream_id: int) -> bool:
    g, s, _ = _scope(p, stream_id, None)
    return g.manage_streams or g.read_streams or s.manage_stream or s.read_stream


def stream_manage(p: Permissions | None, stream_id: int) -> bool:
    g, s, _ = _scope(p, stream_id, None)
    return g.manage_streams or s.manage_stream


def topics_read(p: Permissions | None, stream_id: int) -> bool:
    g, s, _ = _scope(p, stream_id, None)
    return (
        g.read_streams
        or g.manage_streams
        or g.manage_topics
        or g.read_topics
        or s.manage_stream
        or s.read_stream
        or s.manage_topics
        or s.read_topics
    )


def topic_read(p: Permissions | None, stream_id: int, topic_id: int) -> bool:
    _, _, t = _scope(p, stream_id, topic_id)
    return topics_read(p, stream_id) or t.manage_topic or t.read_topic


def topic_create(p: Permissions | None, stream_id: int) -> bool:
    g, s, _ = _scope(p, stream_id, None)
    return g.manage_streams or g.manage_topics or s.manage_stream or s.manage_topics


def topic_manage(p: Permissions | None, stream_id: int, topic_id: int) -> bool:
    _, _, t = _scope(p, stream_id, topic_id)
    return topic_create(p, stream_id) or t.manage_topic


def poll(p: Permissions | None, stream_id: int, topic_id: int) -> bool:
    g, s, t = _scope(p, stream_id, topic_id)
    return (
        g.poll_messages
        or g.read_topics
        or g.manage_topics
        or g.read_streams
        or g.manage_streams
        or s.poll_messages
        or s.manage_stream
        or s.read_stream
        or s.manage_topics
        or s.read_topics
        or t.manage_topic
        or t.read_topic
        or t.poll_messages
    )


def send(p: Permissions | None, stream_id: int, topic_id: int) -> bool:
    g, s, t = _scope(p, stream_id, topic_id)
    return (
        g.send_messages
        or g.manage_streams
        or g.manage_topics
        or s.send_messages
        or s.manage_stream
        or s.manage_topics
        or t.manage_topic
        or t.send_messages
    )
