"""9/ELCE connectivity events end to end: paho gateways -> KPC -> real nats-server, the events read
off NATS by an independent subscriber and decoded with fastavro from the RFC's schema files.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import attrs
import fastavro
import pytest
import trio

from kpc_trio.kaa import subjects
from kpc_trio.nats.gateway import InboundMessage, open_nats_gateway
from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.clients.paho_device import PahoDevice
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, make_config, open_device

KPC_INSTANCE = "kpc"  # the default service.instance.name
EVENT_TIMEOUT = 10


def rfc_schema(file_name: str) -> Any:
    """A 9/ELCE schema as shipped with the package (copied verbatim from the Kaa RFCs)."""
    text = files("kpc_trio.kaa").joinpath("schemas", file_name).read_text(encoding="utf-8")
    return fastavro.parse_schema(json.loads(text))


CONNECTED_SCHEMA = rfc_schema("0009-ep-connected.avsc")
DISCONNECTED_SCHEMA = rfc_schema("0009-ep-disconnected.avsc")


@attrs.define
class EventReader:
    """Connectivity events of one KPC instance, decoded from the wire bytes."""

    connected: trio.MemoryReceiveChannel[InboundMessage]
    disconnected: trio.MemoryReceiveChannel[InboundMessage]

    async def next_connected(self) -> dict[str, Any]:
        return await self._next(self.connected, CONNECTED_SCHEMA)

    async def next_disconnected(self) -> dict[str, Any]:
        return await self._next(self.disconnected, DISCONNECTED_SCHEMA)

    @staticmethod
    async def _next(channel: trio.MemoryReceiveChannel[InboundMessage], schema: Any
                    ) -> dict[str, Any]:
        with trio.fail_after(EVENT_TIMEOUT):
            message = await channel.receive()
        buffer = io.BytesIO(message.payload)
        event: dict[str, Any] = fastavro.schemaless_reader(buffer, schema, None)
        assert buffer.read() == b"", "bytes left over after the record: not this schema"
        return event


@pytest.fixture
async def events(nats_server) -> AsyncIterator[EventReader]:
    async with open_nats_gateway([nats_server.url], name="events-test") as gateway:
        reader = EventReader(
            await gateway.subscribe(subjects.connected_event(KPC_INSTANCE)),
            await gateway.subscribe(subjects.disconnected_event(KPC_INSTANCE)))
        await gateway.sync()  # subscribed before KPC can publish anything
        yield reader


@pytest.fixture
async def kpc(nats_server, tmp_path, events) -> AsyncIterator[KpcService]:
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS, echo_extensions=("dcx",)):
        async with open_kpc(make_config(tmp_path, nats_server.url)) as service:
            yield service


async def identify(device: PahoDevice, endpoint_index: int, request_id: int) -> None:
    """A request with the endpoint's token; answered, so KPC has identified the endpoint."""
    topic = f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[endpoint_index].token}/json/{request_id}"
    await call(device.publish, topic, b"{}", qos=1)
    assert (await call(device.expect)).topic == topic + "/status"


def ids(*endpoint_indexes: int) -> dict[str, str]:
    """The `endpoints` map an event carries for these test endpoints."""
    return {ENDPOINTS[n].endpoint_id: APP_VERSION for n in endpoint_indexes}


def assert_from(event: dict[str, Any], kpc: KpcService) -> None:
    assert event["originatorReplicaId"] == kpc.replica_id
    assert event["timestamp"] > 0 and event["timeout"] == 0


async def test_one_connected_event_per_new_endpoint_and_one_disconnected_event_per_gateway(
        kpc, events):
    port = kpc.ports["mqtt_tcp"]
    async with open_device(port) as gateway:
        for request_id, endpoint in enumerate((0, 1, 2, 0), 1):  # endpoint 0 twice
            await identify(gateway, endpoint, request_id)
    # A later connection marks the end: anything else from the first one would come before it.
    async with open_device(port) as other:
        await identify(other, 3, 1)

    connected = [await events.next_connected() for _ in range(4)]
    assert [event["endpoints"] for event in connected] == [ids(0), ids(1), ids(2), ids(3)]
    disconnected = [await events.next_disconnected() for _ in range(2)]
    assert [event["endpoints"] for event in disconnected] == [ids(0, 1, 2), ids(3)]
    for event in connected + disconnected:
        assert_from(event, kpc)
    correlation_ids = [event["correlationId"] for event in connected + disconnected]
    assert len(set(correlation_ids)) == len(correlation_ids)


async def test_takeover_reports_the_old_connections_endpoints_in_one_event(kpc, events):
    port = kpc.ports["mqtt_tcp"]
    async with contextlib.AsyncExitStack() as stack:
        old = await stack.enter_async_context(open_device(port, client_id="gateway-7"))
        await identify(old, 0, 1)
        await identify(old, 1, 2)
        new = await stack.enter_async_context(open_device(port, client_id="gateway-7"))
        assert await call(old.wait_disconnected)
        await call(old.close)  # before paho's reconnect (1 s later) could take the id back
        await identify(new, 2, 3)
        assert (await events.next_disconnected())["endpoints"] == ids(0, 1)
    assert [(await events.next_connected())["endpoints"] for _ in range(3)] == [
        ids(0), ids(1), ids(2)]
    assert (await events.next_disconnected())["endpoints"] == ids(2)
