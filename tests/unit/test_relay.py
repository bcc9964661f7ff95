"""The relay's route memory: repeating topics are parsed once, request topics never stay."""

from __future__ import annotations

from kpc_trio.kaa.kp1 import ApplicationRegistry
from kpc_trio.relay import MAX_REMEMBERED_ROUTES, Relay

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
