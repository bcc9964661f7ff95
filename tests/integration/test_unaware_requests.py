"""Requests to an endpoint-unaware extension (no endpoint id to route the reply on).

Devices pick their request ids themselves (Kaa's tutorial clients count from 0), so several
devices use the same id at once: each must get exactly its own reply, on its own connection.
"""

from __future__ import annotations

import pytest
import trio

from kpc_trio.service import open_kpc
from kpc_trio.simulator.extension import ExtensionBehaviour
from tests.integration.kpc_harness import APP_VERSION, call, make_config, open_device
from tests.integration.waiting import eventually
from tests.robustness.conftest import sample

DEVICES = 4
ROUNDS = 3


@pytest.fixture
def echo_extensions() -> tuple[str, ...]:
    return ("tsx",)


def slow_echo(kaa, delay: float) -> None:
    kaa.set_extension_behaviour("tsx", ExtensionBehaviour(delay=delay))


@pytest.mark.parametrize("qos", [0, 1])
async def test_devices_using_the_same_request_id_each_get_their_own_reply(kaa, kpc, qos):
    # The echo waits a moment, so every device's request is pending when the replies come.
    slow_echo(kaa, 0.2)
    port = kpc.ports["mqtt_tcp"]
    replies: dict[int, list] = {}

    async def device(n: int) -> None:
        async with open_device(port) as client:
            got = replies[n] = []
            for request_id in range(ROUNDS):
                await call(client.publish, f"kp1/{APP_VERSION}/tsx/time/{request_id}",
                           f"device-{n}-{request_id}".encode(), qos)
                got.append(await call(client.expect))

    async with trio.open_nursery() as nursery:
        for n in range(DEVICES):
            nursery.start_soon(device, n)
    for n in range(DEVICES):
        assert [(m.topic, m.payload, m.qos) for m in replies[n]] == [
            (f"kp1/{APP_VERSION}/tsx/time/{request_id}/status",
             f"device-{n}-{request_id}".encode(), qos) for request_id in range(ROUNDS)]
    # Every ExtensionData reached exactly one device: each got its own, so none got another's.
    assert sample(kpc, "kpc_extension_data_delivered_total", extension="tsx") == DEVICES * ROUNDS
    # On NATS, the requests pending together were told apart by KPC's own request ids.
    nats_ids = [cd.request_id for cd in kaa.received("tsx")]
    assert len(set(nats_ids)) == len(nats_ids) == DEVICES * ROUNDS
    assert kpc.hub.pending_request_count == 0


async def test_a_reply_after_the_response_timeout_is_dropped(nats_server, tmp_path, kaa):
    config = make_config(tmp_path, nats_server.url, "kaa.kpc.esp.response-timeout: 1s\n")
    slow_echo(kaa, 1.5)
    async with open_kpc(config) as kpc, open_device(kpc.ports["mqtt_tcp"]) as client:
        await call(client.publish, f"kp1/{APP_VERSION}/tsx/time/0", b"late", 1)
        await eventually(lambda: sample(kpc, "kpc_messages_dropped_total",
                                        reason="not_routed") == 1)
        slow_echo(kaa, 0)
        # The same request id again: answered, and the late reply never arrived before it.
        await call(client.publish, f"kp1/{APP_VERSION}/tsx/time/0", b"again", 1)
        reply = await call(client.expect)
        assert kpc.hub.pending_request_count == 0
    assert (reply.topic, reply.payload) == (f"kp1/{APP_VERSION}/tsx/time/0/status", b"again")


async def test_an_unaware_request_without_request_id_gets_no_reply(kaa, kpc):
    """Fire and forget: KPC remembers nothing, and an extension's reply to it (no request id,
    no endpoint id) has no device to go to."""
    kaa.set_extension_behaviour("tsx", ExtensionBehaviour(reply_without_request_id=True))
    async with open_device(kpc.ports["mqtt_tcp"]) as client:
        await call(client.publish, f"kp1/{APP_VERSION}/tsx/time", b"forget", 1)
        await eventually(lambda: sample(kpc, "kpc_messages_dropped_total",
                                        reason="not_routed") == 1)
        await call(client.publish, f"kp1/{APP_VERSION}/tsx/time/5", b"marker", 1)
        reply = await call(client.expect)
    assert (reply.topic, reply.payload) == (f"kp1/{APP_VERSION}/tsx/time/5/status", b"marker")
    [fire_and_forget, _] = kaa.received("tsx")
    assert fire_and_forget.request_id is None
