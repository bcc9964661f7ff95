"""Two KPC replicas as separate `kpc-trio run` processes on one nats-server (issue 4, item 5).

Every replica gets every `ExtensionData` on the service-wide subject and delivers only what it
holds. "Only" is checked through ordering, never by waiting for silence: a replica handles the
subject's messages in publication order, so a push wrongly delivered to a connection would show up
on it before the marker pushed after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.simulator.kaa_side import SimulatedKaa
from kpc_trio.simulator.token_provider import EndpointRecord
from tests.clients.paho_device import PahoDevice
from tests.integration.kpc_harness import (
    APP_VERSION,
    ENDPOINTS,
    call,
    make_config,
    open_device,
    push_data,
)
from tests.integration.kpc_process import KpcProcess, running_kpc
from tests.integration.waiting import eventually

EP1, EP2 = ENDPOINTS[0], ENDPOINTS[1]
REPLICA_IDS = ("kpc-p1", "kpc-p2")
ROAM_TIMEOUT = 10
PUSHES = 20


@pytest.fixture(scope="module")
def replicas(nats_server: NatsServerProcess, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[KpcProcess, KpcProcess]]:
    """Started once for the module (a process start costs about a second); the tests leave no
    connection behind, so each starts from replicas holding no endpoint."""
    with contextlib.ExitStack() as stack:
        started = []
        for replica_id in REPLICA_IDS:
            folder = tmp_path_factory.mktemp(replica_id)
            config = make_config(folder, nats_server.url, "logging: {format: json}\n")
            started.append(stack.enter_context(running_kpc(
                config.source, folder / "kpc.log",
                {"NATS_URLS": nats_server.url, "SERVICE_INSTANCE_REPLICA_ID": replica_id})))
        first, second = started
        yield first, second


@pytest.fixture
def echo_extensions() -> tuple[str, ...]:
    return ("dcx", "tsx")


def port_of(replica: KpcProcess) -> int:
    return replica.ports["mqtt_tcp"]


async def identify(device: PahoDevice, endpoint: EndpointRecord, kaa: SimulatedKaa,
                   expected_total: int) -> None:
    """Data without a request id: the endpoint is bound to this connection, nothing comes back."""
    await call(device.publish, f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json", b"{}", qos=1)
    await kaa.await_received("dcx", expected_total)


async def push(kaa: SimulatedKaa, endpoint: EndpointRecord, payload: bytes) -> None:
    await call(kaa.push, "cex", push_data(endpoint.endpoint_id, "/command/x", payload))


async def payloads(device: PahoDevice, count: int) -> list[bytes]:
    return [(await call(device.expect)).payload for _ in range(count)]


def roams_logged(replica: KpcProcess, endpoint_id: str) -> int:
    """How often the replica logged that it stopped routing the endpoint (another replica's
    ConnectedEvent for it arrived)."""
    return sum(event.get("endpoint_id") == endpoint_id
               for event in replica.named("endpoint_roamed"))


async def await_roams_logged(replica: KpcProcess, endpoint_id: str, count: int) -> None:
    await eventually(lambda: roams_logged(replica, endpoint_id) >= count,
                     f"{count} roams of {endpoint_id} logged", timeout=ROAM_TIMEOUT)


async def test_a_push_reaches_only_the_replica_holding_the_endpoint(replicas, kaa):
    r1, r2 = replicas
    async with open_device(port_of(r1)) as on_r1, open_device(port_of(r2)) as on_r2:
        await identify(on_r1, EP1, kaa, 1)
        await identify(on_r2, EP2, kaa, 2)
        connected = await kaa.await_events("connectivity.connected", 2)
        assert {(e.originator_replica_id, *e.endpoints) for e in connected} == {
            ("kpc-p1", EP1.endpoint_id), ("kpc-p2", EP2.endpoint_id)}
        for endpoint, payload in ((EP1, b"a"), (EP2, b"b"), (EP1, b"c"), (EP2, b"d")):
            await push(kaa, endpoint, payload)
        assert await payloads(on_r1, 2) == [b"a", b"c"]
        assert await payloads(on_r2, 2) == [b"b", b"d"]


async def test_a_roaming_endpoint_gets_each_push_once_on_its_new_connection(replicas, kaa):
    r1, r2 = replicas
    async with open_device(port_of(r1)) as old, open_device(port_of(r2)) as new:
        await identify(old, EP1, kaa, 1)
        await identify(old, EP2, kaa, 2)  # stays on replica 1: its pushes mark r1's progress
        roams_before = roams_logged(r1, EP1.endpoint_id)
        await identify(new, EP1, kaa, 3)  # the endpoint moves to replica 2
        await await_roams_logged(r1, EP1.endpoint_id, roams_before + 1)
        connected = await kaa.await_events("connectivity.connected", 3)
        assert [(e.originator_replica_id, e.endpoints) for e in connected
                if EP1.endpoint_id in e.endpoints] == [
            ("kpc-p1", {EP1.endpoint_id: APP_VERSION}), ("kpc-p2", {EP1.endpoint_id: APP_VERSION})]

        sent = [f"push-{n}".encode() for n in range(PUSHES)]
        for payload in sent:
            await push(kaa, EP1, payload)
        await push(kaa, EP2, b"marker-for-r1")
        await push(kaa, EP1, b"last")
        # Any copy of a push would come before the marker that followed it.
        assert await payloads(new, PUSHES + 1) == [*sent, b"last"]
        assert await payloads(old, 1) == [b"marker-for-r1"]


async def test_replies_come_back_on_the_connection_of_the_request(replicas, kaa):
    r1, r2 = replicas
    async with open_device(port_of(r1)) as on_r1, open_device(port_of(r2)) as on_r2:
        # The same endpoint-unaware request id from both replicas, and one endpoint-aware each.
        requests = {
            on_r1: [(f"kp1/{APP_VERSION}/tsx/time/5", b"time-r1"),
                    (f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/5", b"data-r1")],
            on_r2: [(f"kp1/{APP_VERSION}/tsx/time/5", b"time-r2"),
                    (f"kp1/{APP_VERSION}/dcx/{EP2.token}/json/5", b"data-r2")],
        }
        for device, sent in requests.items():
            for topic, payload in sent:
                await call(device.publish, topic, payload, qos=1)
        for device, sent in requests.items():
            replies = [await call(device.expect) for _ in sent]
            assert sorted((reply.topic, reply.payload) for reply in replies) == sorted(
                (topic + "/status", payload) for topic, payload in sent)

