"""What the model test (test_model.py) found, replayed as fixed sequences of its actions.

Each test is the shrunk failing sequence, seen from outside: devices on raw sockets, the simulated
Kaa side, the service's log and /metrics. Tests of bugs not fixed yet are strict xfails.

The two bugs of issue 12 (a cached token rejection killed the connection; endpoint-unaware replies
crossed devices, or one was lost when a device used one request id on two resource paths) were
found by the model before their fixes were merged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.robustness.kpc_model import UNAWARE_EXTENSION, SystemModel, Target
from tests.robustness.model_system import ModelSystem


@pytest.fixture
def model(model_system: ModelSystem) -> Iterator[SystemModel]:
    model = SystemModel(model_system)
    yield model
    model.teardown()


def test_a_rejected_token_used_again_is_answered_and_the_connection_stays(model):
    device = model.client_ids[0]
    rejected = Target("dcx", model.rejected_tokens[0], "json")
    model.connect(device)
    model.publish([(device, rejected, 0, 0)])
    model.settle()
    model.publish([(device, rejected, 1, 1)])  # the rejection is cached now
    model.settle()


def test_a_revoked_token_used_twice_is_answered_and_the_connection_stays(model):
    device = model.client_ids[0]
    revoked = Target("cex", model.endpoints[0].token, "json")
    model.connect(device)
    model.publish([(device, revoked, 1, None)])
    model.settle()
    model.revoke_token(0)
    model.settle()
    for request_id in (1, 2):
        model.publish([(device, revoked, 1, request_id)])
        model.settle()


def test_unaware_requests_of_two_devices_with_one_request_id_get_their_own_replies(model):
    first, second = model.client_ids[:2]
    model.connect(first)
    model.connect(second)
    model.publish([(first, Target(UNAWARE_EXTENSION, None, "time"), 0, 2),
                   (second, Target(UNAWARE_EXTENSION, None, "time"), 2, 2)])
    model.settle()


def test_unaware_requests_of_one_device_on_two_paths_with_one_request_id_both_answered(model):
    device = model.client_ids[0]
    model.connect(device)
    model.extension_answers(UNAWARE_EXTENSION, 200, delay=0.5)  # both wait for an answer
    model.publish([(device, Target(UNAWARE_EXTENSION, None, "time"), 2, 3),
                   (device, Target(UNAWARE_EXTENSION, None, "config"), 0, 3)])
    model.settle()


def test_a_reply_goes_to_the_connection_that_asked_though_its_endpoint_moved(model):
    first, second = model.client_ids[:2]
    token = model.endpoints[2].token
    model.connect(first)
    model.connect(second)
    model.publish([(first, Target("dcx", token, "json"), 1, None)])  # first holds the endpoint
    model.settle()
    model.extension_answers("dcx", 200, delay=1.0)
    model.publish([(first, Target("dcx", token, "json"), 1, 0)])
    model.wait_relayed()  # the request waits at the extension
    model.publish([(second, Target("cex", token, "json"), 1, None)])  # the endpoint moves
    model.settle()
