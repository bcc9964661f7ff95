"""Topic names and topic filters: validation, matching, and a connection's subscriptions indexed
for lookup by topic (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

from kpc_trio.mqtt.errors import InvalidTopicError
from kpc_trio.mqtt.packets import QoS

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


#: Levels of a wildcard filter indexed in the trie; deeper filters hang, whole, off the node of
#: their first levels. One node per level would let a 64 KiB filter of `+/+/...` cost 8 MB.
INDEXED_LEVELS = 8


class _Level:
    """One level of the wildcard-filter trie: the filters that end here and the deeper levels."""

    __slots__ = ("children", "qos", "multi_level_qos", "deep")

    def __init__(self) -> None:
        self.children: dict[str, _Level] = {}  # literal levels and "+"
        self.qos: QoS | None = None  # a filter ends exactly at this level
        self.multi_level_qos: QoS | None = None  # a filter ends with "#" after this level
        # Filters of more than INDEXED_LEVELS levels, on the node of their first ones.
        self.deep: dict[str, QoS] | None = None

    def is_empty(self) -> bool:
        return (not self.children and self.qos is None and self.multi_level_qos is None
                and not self.deep)

    def best(self, topic: str, levels: list[str], index: int) -> QoS | None:
        """The highest QoS of the filters below this level that match `levels[index:]`."""
        # "$SYS/x" is matched by no filter that starts with a wildcard [MQTT-4.7.2-1].
        wildcards_allowed = index or not levels[0].startswith("$")
        best = self.multi_level_qos if wildcards_allowed else None
        if self.deep:  # "a/.../h/#" matches "a/.../h" too: checked whatever is left
            for topic_filter, qos in self.deep.items():
                if topic_matches(topic_filter, topic):
                    best = _higher(best, qos)
        if index == len(levels):
            return _higher(best, self.qos)
        exact = self.children.get(levels[index])
        if exact is not None:
            best = _higher(best, exact.best(topic, levels, index + 1))
        single = self.children.get(_SINGLE_LEVEL) if wildcards_allowed else None
        if single is not None:
            best = _higher(best, single.best(topic, levels, index + 1))
        return best


def _higher(first: QoS | None, second: QoS | None) -> QoS | None:
    if first is None:
        return second
    if second is None:
        return first
    return max(first, second)


class Subscriptions:
    """One connection's subscriptions, looked up by what they match rather than by scanning them.

    Filters without wildcards sit in a dict keyed by the topic they match; wildcard filters in a
    trie of their first `INDEXED_LEVELS` levels, so finding the QoS for a topic costs a dict
    lookup plus a walk along the topic's levels, however many filters there are. `size` counts
    the UTF-8 bytes of the filters held, for the owner to bound.
    """

    __slots__ = ("_exact", "_wildcard", "_root", "size")

    def __init__(self) -> None:
        self._exact: dict[str, QoS] = {}
        self._wildcard: dict[str, QoS] = {}
        self._root = _Level()
        self.size = 0

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcard)

    def __contains__(self, topic_filter: str) -> bool:
        return topic_filter in self._exact or topic_filter in self._wildcard

    def add(self, topic_filter: str, qos: QoS) -> None:
        """Subscribe (a filter already there has its QoS replaced) [MQTT-3.8.4-3]."""
        if topic_filter not in self:
            self.size += len(topic_filter.encode())
        if _SINGLE_LEVEL not in topic_filter and _MULTI_LEVEL not in topic_filter:
            self._exact[topic_filter] = qos
            return
        self._wildcard[topic_filter] = qos
        path, last = _trie_path(topic_filter)
        level = self._root
        for name in path:
            level = level.children.setdefault(name, _Level())
        if last is None:
            if level.deep is None:
                level.deep = {}
            level.deep[topic_filter] = qos
        elif last == _MULTI_LEVEL:
            level.multi_level_qos = qos
        else:
            level.children.setdefault(last, _Level()).qos = qos

    def remove(self, topic_filter: str) -> None:
        """Unsubscribe the filter equal to `topic_filter` character by character, if any."""
        if topic_filter in self:
            self.size -= len(topic_filter.encode())
        if self._exact.pop(topic_filter, None) is not None:
            return
        if self._wildcard.pop(topic_filter, None) is None:
            return
        path, last = _trie_path(topic_filter)
        trail = [self._root]
        for name in path:
            trail.append(trail[-1].children[name])
        if last is None:
            deep = trail[-1].deep
            assert deep is not None
            del deep[topic_filter]
        elif last == _MULTI_LEVEL:
            trail[-1].multi_level_qos = None
        else:
            end = trail[-1].children[last]
            end.qos = None
            path.append(last)
            trail.append(end)
        # Prune the levels no filter needs any more, deepest first.
        for name, parent, child in zip(reversed(path), reversed(trail[:-1]), reversed(trail[1:]),
                                       strict=True):
            if not child.is_empty():
                break
            del parent.children[name]

    def max_qos(self, topic: str) -> QoS | None:
        """The highest QoS granted among the filters matching `topic`; None if none match."""
        exact = self._exact.get(topic) if self._exact else None
        if not self._wildcard:
            return exact
        return _higher(exact, self._root.best(topic, topic.split(_LEVEL_SEPARATOR), 0))


def _trie_path(topic_filter: str) -> tuple[list[str], str | None]:
    """The trie levels leading to a wildcard filter's node and its last level; last is None for
    a filter deeper than the trie, kept whole on the node of its first `INDEXED_LEVELS` levels."""
    levels = topic_filter.split(_LEVEL_SEPARATOR, INDEXED_LEVELS)
    if len(levels) > INDEXED_LEVELS:
        return levels[:INDEXED_LEVELS], None
    return levels[:-1], levels[-1]
