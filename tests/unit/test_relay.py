"""The relay's route memory: repeating topics are parsed once, request topics never stay, and
topics, tokens and the memory are bounded in bytes."""

from __future__ import annotations

import pytest

from kpc_trio.kaa.kp1 import ApplicationRegistry, Kp1Error
from kpc_trio.relay import MAX_REMEMBERED_ROUTES, Relay, TopicLimits

REGISTRY = ApplicationRegistry.from_mappings({"app": {"app_v1": ["dcx"]}}, {"dcx": True})
DATA_TOPIC = "kp1/app_v1/dcx/token-1/json"


def test_a_repeating_topic_is_parsed_once() -> None:
    relay = Relay(REGISTRY, replica_id="r1")
    first = relay.route(DATA_TOPIC)
    assert relay.route(DATA_TOPIC) is first
    assert (first.extension, first.token, first.request_id) == ("dcx", "token-1", None)


def test_request_topics_do_not_push_repeating_topics_out() -> None:
    relay = Relay(REGISTRY, replica_id="r1")
    remembered = relay.route(DATA_TOPIC)
    for request_id in range(MAX_REMEMBERED_ROUTES + 1):
        assert relay.route(f"{DATA_TOPIC}/{request_id}").request_id == request_id
    assert relay.route(DATA_TOPIC) is remembered


@pytest.mark.parametrize(("topic", "status", "request_id"), [
    ("kp1/app_v1/dcx/token-1/" + "j" * 1000 + "/7", 414, 7),
    ("kp1/app_v1/dcx/token-1/" + "é" * 510, 414, None),  # 1,043 bytes of UTF-8, 533 characters
    ("kp1/app_v1/dcx/" + "t" * 257 + "/json/3", 401, 3),
    ("kp1/app_v1/dcx/" + "ü" * 129 + "/json", 401, None),
], ids=["long-topic", "long-utf8-topic", "long-token", "long-utf8-token"])
def test_topics_and_tokens_beyond_their_byte_limits_are_refused(
    topic: str, status: int, request_id: int | None
) -> None:
    relay = Relay(REGISTRY, replica_id="r1",
                  limits=TopicLimits(max_topic_length=1024, max_token_length=256))
    with pytest.raises(Kp1Error) as refused:
        relay.route(topic)
    assert (refused.value.status_code, refused.value.request_id) == (status, request_id)
    assert relay.remembered_routes_bytes == 0


def test_topics_at_the_limits_are_accepted() -> None:
    relay = Relay(REGISTRY, replica_id="r1",
                  limits=TopicLimits(max_topic_length=1024, max_token_length=256))
    token = "t" * 256
    topic = f"kp1/app_v1/dcx/{token}/"
    topic += "j" * (1024 - len(topic))
    assert relay.route(topic).token == token


def test_route_memory_is_bounded_in_bytes() -> None:
    limit = 100_000
    relay = Relay(REGISTRY, replica_id="r1", limits=TopicLimits(route_memory_bytes=limit))
    for n in range(2_000):
        topic = f"kp1/app_v1/dcx/token-{n}/" + "j" * 900
        assert relay.route(topic) is relay.route(topic)  # remembered
        assert relay.remembered_routes_bytes <= limit
