"""Topic name/filter validation and matching (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.mqtt.errors import InvalidTopicError, ProtocolError
from kpc_trio.mqtt.packets import QoS
from kpc_trio.mqtt.topics import (
    INDEXED_LEVELS,
    Subscriptions,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)


@pytest.mark.parametrize("topic", ["a", "/", "kp1/app-v1/dcx/tok/json", "a//b", "$SYS/x", " "])
def test_valid_topic_names(topic: str) -> None:
    validate_topic_name(topic)


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "+", "a#b", "a+b", "a\x00b"])
def test_invalid_topic_names(topic: str) -> None:
    with pytest.raises(InvalidTopicError):
        validate_topic_name(topic)


def test_invalid_topic_is_a_protocol_error() -> None:
    assert issubclass(InvalidTopicError, ProtocolError)


@pytest.mark.parametrize(
    "topic_filter",
    ["#", "+", "a/#", "a/+/b", "+/+", "/+", "+/", "kp1/app/dcx/tok/json/#", "$SYS/#", "a//b"],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter", ["", "a/#/b", "#/a", "a#", "a/b#", "a+", "+a/b", "a/+b", "##", "a\x00"]
)
def test_invalid_topic_filters(topic_filter: str) -> None:
    with pytest.raises(InvalidTopicError) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/+", "a/", True),  # '+' matches an empty level
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("a/#", "a", True),  # '#' includes the parent level
        ("a/#", "a/b/c", True),
        ("a/#", "b/a", False),
        ("#", "a/b", True),
        ("+/b/#", "x/b", True),
        ("+/b/#", "x/c/d", False),
        ("#", "$SYS/load", False),
        ("+/load", "$SYS/load", False),
        ("$SYS/#", "$SYS/load", True),
        ("$SYS/+", "$SYS/load", True),
        ("a/b", "a/b/", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


_levels = st.lists(st.text(alphabet="ab$", max_size=2), min_size=1, max_size=4)


@given(_levels)
def test_a_topic_matches_itself_as_filter(levels: list[str]) -> None:
    topic = "/".join(levels)
    assert topic_matches(topic, topic)


@given(_levels, st.integers(0, 3))
def test_wildcard_generalisation_matches(levels: list[str], position: int) -> None:
    """Replacing a level by '+' or the tail by '#' still matches (except on a leading $ level)."""
    topic = "/".join(levels)
    position = min(position, len(levels) - 1)
    plus = "/".join(levels[:position] + ["+"] + levels[position + 1:])
    hash_ = "/".join(levels[:position] + ["#"])
    expected = not (position == 0 and topic.startswith("$"))
    assert topic_matches(plus, topic) is expected
    assert topic_matches(hash_, topic) is expected


# ---- the subscription index ---------------------------------------------------------------------

# Up to 12 levels: deeper than the trie indexes (INDEXED_LEVELS), so both paths are taken.
_LEVELS = st.sampled_from(["a", "b", "", "$x"])
_TOPICS = st.lists(_LEVELS, min_size=1, max_size=12).map("/".join)
_FILTERS = st.builds(
    lambda levels, last: "/".join([*levels, last]),
    st.lists(_LEVELS | st.just("+"), max_size=11),
    _LEVELS | st.sampled_from(["+", "#"]),
)


@given(st.lists(st.tuples(st.booleans(), _FILTERS, st.sampled_from(QoS)), max_size=30),
       st.lists(_TOPICS, min_size=1, max_size=10))
def test_the_index_answers_as_a_scan_of_every_filter(operations, topics) -> None:  # type: ignore[no-untyped-def]
    subscriptions, model = Subscriptions(), {}
    for subscribe, topic_filter, qos in operations:
        if subscribe:
            subscriptions.add(topic_filter, qos)
            model[topic_filter] = qos
        else:
            subscriptions.remove(topic_filter)
            model.pop(topic_filter, None)
    assert len(subscriptions) == len(model)
    assert subscriptions.size == sum(len(topic_filter.encode()) for topic_filter in model)
    for topic in topics:
        expected = max((qos for f, qos in model.items() if topic_matches(f, topic)), default=None)
        assert subscriptions.max_qos(topic) == expected, topic
    for topic_filter in model:
        subscriptions.remove(topic_filter)
    assert len(subscriptions) == subscriptions.size == 0
    assert all(subscriptions.max_qos(topic) is None for topic in topics)


def test_a_deep_filter_costs_a_bounded_number_of_trie_levels() -> None:
    # 64 KiB of "+/": one trie node per level would hold megabytes for one filter.
    deep = "d/" + "+/" * 32_000 + "#"
    subscriptions = Subscriptions()
    subscriptions.add(deep, QoS.AT_LEAST_ONCE)
    depth, level = 0, subscriptions._root
    while level.children:
        [level] = level.children.values()
        depth += 1
    assert depth == INDEXED_LEVELS
    assert subscriptions.max_qos("d/" + "x/" * 32_000 + "y") is QoS.AT_LEAST_ONCE
    assert subscriptions.max_qos("d/x") is None
    subscriptions.remove(deep)
    assert not subscriptions._root.children
