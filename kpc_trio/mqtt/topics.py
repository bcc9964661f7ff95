"""Topic names and topic filters: validation and matching (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

from kpc_trio.mqtt.errors import InvalidTopicError

_LEVEL_SEPARATOR = "/"
_SINGLE_LEVEL = "+"
_MULTI_LEVEL = "#"


def validate_topic_name(topic: str) -> None:
    """Raise `InvalidTopicError` unless `topic` may be published to (no wildcards, not empty)."""
    if not topic:
        raise InvalidTopicError("topic name is empty")
    if _SINGLE_LEVEL in topic or _MULTI_LEVEL in topic:
        raise InvalidTopicError(f"topic name {topic!r} contains a wildcard ('+' or '#')")
    if "\x00" in topic:
        raise InvalidTopicError(f"topic name {topic!r} contains U+0000")


def validate_topic_filter(topic_filter: str) -> None:
    """Raise `InvalidTopicError` unless `topic_filter` may be subscribed to.

    `+` must fill a whole level; `#` must fill the last level.
    """
    if not topic_filter:
        raise InvalidTopicError("topic filter is empty")
    if "\x00" in topic_filter:
        raise InvalidTopicError(f"topic filter {topic_filter!r} contains U+0000")
    levels = topic_filter.split(_LEVEL_SEPARATOR)
    for index, level in enumerate(levels):
        if _MULTI_LEVEL in level and (level != _MULTI_LEVEL or index != len(levels) - 1):
            raise InvalidTopicError(
                f"topic filter {topic_filter!r}: '#' must be a whole level and the last one"
            )
        if _SINGLE_LEVEL in level and level != _SINGLE_LEVEL:
            raise InvalidTopicError(f"topic filter {topic_filter!r}: '+' must be a whole level")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a message published to `topic` matches the (valid) `topic_filter`.

    Topics starting with `$` are not matched by a filter whose first level is a wildcard.
    """
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in (_SINGLE_LEVEL, _MULTI_LEVEL):
        return False
    filter_levels = topic_filter.split(_LEVEL_SEPARATOR)
    topic_levels = topic.split(_LEVEL_SEPARATOR)
    for index, level in enumerate(filter_levels):
        if level == _MULTI_LEVEL:
            # "a/#" also matches the parent level "a".
            return True
        if index >= len(topic_levels):
            return False
        if level != _SINGLE_LEVEL and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)
