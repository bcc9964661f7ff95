"""Several KPC replicas behind one NATS: pushes reach the replica holding the endpoint."""

from __future__ import annotations

import contextlib

import pytest
import trio

from kpc_trio.service import open_kpc
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.integration.kpc_harness import (
    APP_VERSION, ENDPOINTS, call, make_config, open_device, push_data,
)

EP1, EP2 = ENDPOINTS[0], ENDPOINTS[1]


@pytest.fixture
async def kaa(nats_server):
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx", "cex")) as kaa:
        yield kaa


@pytest.fixture
async def replicas(nats_server, tmp_path, kaa):
    async with contextlib.AsyncExitStack() as stack:
        services = []
        for name in ("r1", "r2"):
            folder = tmp_path / name
            folder.mkdir()
            config = make_config(folder, nats_server.url,
                                 env={"SERVICE_INSTANCE_REPLICA_ID": f"kpc-{name}"})
            services.append(await stack.enter_async_context(open_kpc(config)))
        yield services


async def identify(device, endpoint, kaa, expected_total: int) -> None:
    await call(device.publish, f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json", b"{}", qos=1)
    await kaa.await_received("dcx", expected_total)


async def test_push_reaches_only_the_replica_holding_the_endpoint(kaa, replicas):
    r1, r2 = replicas
    async with open_device(r1.ports["mqtt_tcp"]) as on_r1, \
            open_device(r2.ports["mqtt_tcp"]) as on_r2:
        await identify(on_r1, EP1, kaa, 1)
        await identify(on_r2, EP2, kaa, 2)
        await call(kaa.push, "cex", push_data(EP1.endpoint_id, "/command/a", b"for-1"))
        await call(kaa.push, "cex", push_data(EP2.endpoint_id, "/command/b", b"for-2"))
        got_1 = await call(on_r1.expect)
        got_2 = await call(on_r2.expect)
        await call(on_r1.expect_none, 0.5)
        await call(on_r2.expect_none, 0.1)
    assert got_1.payload == b"for-1" and got_2.payload == b"for-2"


async def test_replies_come_back_on_the_connection_of_the_request(kaa, replicas):
    r1, r2 = replicas
    async with open_device(r1.ports["mqtt_tcp"]) as on_r1, \
            open_device(r2.ports["mqtt_tcp"]) as on_r2:
        await call(on_r1.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/5", b"one", qos=1)
        await call(on_r2.publish, f"kp1/{APP_VERSION}/dcx/{EP2.token}/json/5", b"two", qos=1)
        reply_1 = await call(on_r1.expect)
        reply_2 = await call(on_r2.expect)
        await call(on_r1.expect_none, 0.3)
    assert (reply_1.payload, reply_2.payload) == (b"one", b"two")


async def test_roaming_endpoint_is_dropped_by_the_old_replica(kaa, replicas):
    r1, r2 = replicas
    async with open_device(r1.ports["mqtt_tcp"]) as old, \
            open_device(r2.ports["mqtt_tcp"]) as new:
        await identify(old, EP1, kaa, 1)
        connected_before = len(await kaa.await_events("connectivity.connected", 1))
        await identify(new, EP1, kaa, 2)  # the same endpoint now talks through replica 2
        await kaa.await_events("connectivity.connected", connected_before + 1)
        for _ in range(50):  # r1 learns about the roam from r2's ConnectedEvent
            if r1.hub.session_for_endpoint(EP1.endpoint_id) is None:
                break
            await trio.sleep(0.02)
        assert r1.hub.session_for_endpoint(EP1.endpoint_id) is None
        await call(kaa.push, "cex", push_data(EP1.endpoint_id, "/command/roam", b"x"))
        got = await call(new.expect)
        await call(old.expect_none, 0.5)
    assert got.topic == f"kp1/{APP_VERSION}/cex/{EP1.token}/command/roam/status"
    # Both devices are gone now: only replica 2, which held the endpoint last, reports it.
    [event] = await kaa.await_events("connectivity.disconnected", 1)
    assert event.originator_replica_id == "kpc-r2" and EP1.endpoint_id in event.endpoints
    await trio.sleep(0.3)
    disconnected = [e for e in kaa.events("connectivity.disconnected")
                    if EP1.endpoint_id in e.endpoints and e.originator_replica_id == "kpc-r1"]
    assert disconnected == []
