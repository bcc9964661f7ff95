"""Session affinity towards extensions (RFC 3/4): an extension that answers with its replica
subject as replyTo gets that endpoint's next ClientData there, until the TTL; over MQTT (paho)
and HTTP, through a real nats-server."""

from __future__ import annotations

import trio

from kpc_trio.kaa import subjects
from kpc_trio.service import open_kpc
from kpc_trio.simulator import ExtensionBehaviour, SimulatedKaa
from tests.clients.http_client import post
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, make_config, open_device

TTL = 1.0
CONFIG = f"""
kaa.kpc.esp.affinity-ttl: {TTL}s
kaa.kpc.transports.http: {{enabled: true, host: 127.0.0.1, port: 0}}
"""
EP1, EP2 = ENDPOINTS[0], ENDPOINTS[1]
SERVICE_SUBJECT = subjects.client_data("dcx")


def last_subject(kaa: SimulatedKaa, count: int) -> str:
    data = kaa.received("dcx")
    assert len(data) == count
    return kaa.arrival_subject("dcx", data[-1].correlation_id)


async def test_next_client_data_goes_to_the_replica_that_answered_until_the_ttl(
        kaa, nats_server, tmp_path):
    replica = kaa.replica_subject("dcx")
    topic = f"kp1/{APP_VERSION}/dcx/{{}}/json/{{}}"
    async with open_kpc(make_config(tmp_path, nats_server.url, CONFIG)) as kpc, \
            open_device(kpc.ports["mqtt_tcp"]) as device:

        async def request(endpoint, request_id: int, count: int) -> str:
            await call(device.publish, topic.format(endpoint.token, request_id), b"{}", qos=1)
            reply = await call(device.expect)
            assert reply.topic.endswith(f"/{request_id}/status")
            await kaa.await_received("dcx", count)
            return last_subject(kaa, count)

        kaa.set_extension_behaviour("dcx", ExtensionBehaviour(name_replica=True))
        assert await request(EP1, 1, 1) == SERVICE_SUBJECT  # nothing known yet
        kaa.set_extension_behaviour("dcx", ExtensionBehaviour())  # no renewal from now on
        assert await request(EP1, 2, 2) == replica
        assert await request(EP2, 3, 3) == SERVICE_SUBJECT  # per endpoint
        # HTTP requests for the same endpoint go the same way
        reply = await post(kpc.ports["http"], f"/kp1/{APP_VERSION}/dcx/{EP1.token}/json", b"{}")
        assert reply.status == 200
        await kaa.await_received("dcx", 4)
        assert last_subject(kaa, 4) == replica
        await trio.sleep(TTL)  # the affinity is time-bound: let the TTL pass
        assert await request(EP1, 4, 5) == SERVICE_SUBJECT


async def test_a_replica_that_stops_answering_is_left_for_the_service_subject(
        kaa, nats_server, tmp_path):
    response_timeout = 1.0
    config = make_config(tmp_path, nats_server.url, "kaa.kpc.esp: {affinity-ttl: 60s, "
                         f"response-timeout: {response_timeout}s}}\n")
    topic = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/{{}}"
    async with open_kpc(config) as kpc, open_device(kpc.ports["mqtt_tcp"]) as device:
        kaa.set_extension_behaviour("dcx", ExtensionBehaviour(name_replica=True))
        await call(device.publish, topic.format(1), b"{}", qos=1)
        assert (await call(device.expect)).topic.endswith("/1/status")
        kaa.set_extension_behaviour("dcx", ExtensionBehaviour(silent=True))  # the replica died
        await call(device.publish, topic.format(2), b"{}", qos=1)
        await kaa.await_received("dcx", 2)
        assert last_subject(kaa, 2) == kaa.replica_subject("dcx")
        await trio.sleep(response_timeout)  # unanswered for the ESP response timeout
        kaa.set_extension_behaviour("dcx", ExtensionBehaviour())
        await call(device.publish, topic.format(3), b"{}", qos=1)
        assert (await call(device.expect)).topic.endswith("/3/status")
        assert last_subject(kaa, 3) == SERVICE_SUBJECT
