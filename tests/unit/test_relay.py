"""The relay's route memory: repeating topics are parsed once, request topics never stay, and
topics, tokens and the memory are bounded in bytes."""

from __future__ import annotations

import pytest

from kpc_trio.kaa import records, subjects
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


def expected_client_data(relay_message_payload: bytes, endpoint_id: str | None,
                         resource_path: str, request_id: int | None,
                         payload: bytes) -> records.ClientData:
    """The record fastavro must read back from a relayed datum (timestamp taken from it)."""
    got = records.decode(records.ClientData, relay_message_payload)
    return records.ClientData(got.correlation_id, got.timestamp, 5000, "app_v1", endpoint_id,
                              resource_path, request_id, payload)


@pytest.mark.parametrize("with_config_name", [True, False])
def test_client_data_from_a_remembered_route_matches_fastavro(with_config_name: bool) -> None:
    relay = Relay(REGISTRY, replica_id="r1", message_timeout_ms=5000,
                  with_config_name=with_config_name)
    route = relay.route(DATA_TOPIC)
    seen = set()
    # The same route again and again (its template reused), then for another endpoint.
    for endpoint_id, payload in [("ep-1", b"a"), ("ep-1", b"b" * 300), ("ep-2", b""),
                                 (None, b"c"), ("ep-1", b"d")]:
        correlation_id = relay.next_correlation_id()
        message = relay.client_data_message(route, endpoint_id, payload, correlation_id)
        record = expected_client_data(message.payload, endpoint_id, "/json", None, payload)
        assert record.correlation_id == correlation_id
        assert message.payload == records.encode_client_data(
            record, with_config_name=with_config_name)
        assert records.encode(record)[:len(message.payload)] == message.payload
        assert message.subject == subjects.client_data("dcx")
        assert message.reply == subjects.extension_data_replica("r1")
        seen.add(correlation_id)
    assert len(seen) == 5


def test_client_data_of_requests_carries_each_request_id() -> None:
    relay = Relay(REGISTRY, replica_id="r1", message_timeout_ms=5000)
    for request_id in (1, 2, 2**31 - 1):
        route = relay.route(f"{DATA_TOPIC}/{request_id}")
        message = relay.client_data_message(route, "ep-1", b"x", relay.next_correlation_id())
        assert message.payload == records.encode(
            expected_client_data(message.payload, "ep-1", "/json", request_id, b"x"))


def test_client_data_templates_share_the_route_memory_bound() -> None:
    limit = 100_000
    relay = Relay(REGISTRY, replica_id="r1", limits=TopicLimits(route_memory_bytes=limit))
    for n in range(2_000):
        route = relay.route(f"kp1/app_v1/dcx/token-{n}/" + "j" * 400)
        for endpoint in ("a", "b"):  # a new binding replaces the route's template
            message = relay.client_data_message(route, f"ep-{n}-{endpoint}", b"x", "c")
            assert records.decode(records.ClientData, message.payload).endpoint_id == \
                f"ep-{n}-{endpoint}"
            assert relay.remembered_routes_bytes <= limit


def test_a_route_whose_endpoint_changes_is_not_counted_twice() -> None:
    relay = Relay(REGISTRY, replica_id="r1")
    route = relay.route(DATA_TOPIC)
    relay.client_data_message(route, "endpoint-a", b"{}", "c1")
    remembered = relay.remembered_routes_bytes
    for n, endpoint_id in enumerate(["endpoint-b", "endpoint-a"] * 50):
        message = relay.client_data_message(route, endpoint_id, b"{}", f"c{n}")
        assert records.decode(records.ClientData, message.payload).endpoint_id == endpoint_id
        assert relay.remembered_routes_bytes == remembered
