"""End to end: real paho devices -> KPC -> real nats-server -> simulated Kaa services and back."""

from __future__ import annotations

import json

import pytest
import trio

from kpc_trio.service import open_kpc
from kpc_trio.simulator.extension import ExtensionBehaviour
from tests.integration.kpc_harness import (
    APP_VERSION,
    ENDPOINTS,
    call,
    make_config,
    open_device,
    push_data,
)

EP1, EP2 = ENDPOINTS[0], ENDPOINTS[1]


@pytest.fixture
def echo_extensions() -> tuple[str, ...]:
    return ("dcx", "cex", "tsx")


@pytest.fixture
def port(kpc) -> int:
    return kpc.ports["mqtt_tcp"]


async def test_dcx_round_trip_with_request_id(kaa, port):
    topic = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/42"
    payload = b'[{"temperature":23}]'
    async with open_device(port) as device:
        await call(device.publish, topic, payload, qos=1)
        [client_data] = await kaa.await_received("dcx", 1)
        assert client_data.app_version_name == APP_VERSION
        assert client_data.endpoint_id == EP1.endpoint_id
        assert client_data.resource_path == "/json"
        assert client_data.request_id == 42
        assert client_data.payload == payload
        reply = await call(device.expect)
    assert reply.topic == topic + "/status"
    assert reply.payload == payload  # the echo extension answers with the request payload
    assert reply.qos == 1  # response QoS follows the request's


async def test_push_without_request_id_reaches_a_client_that_never_subscribed(kaa, port):
    async with open_device(port) as device:
        # Identify the endpoint on this connection (fire and forget, no request id).
        await call(device.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json", b"{}", qos=1)
        await kaa.await_received("dcx", 1)
        command = b'[{"id":1,"payload":{}}]'
        await call(kaa.push, "cex", push_data(EP1.endpoint_id, "/command/reboot", command))
        message = await call(device.expect)
    assert message.topic == f"kp1/{APP_VERSION}/cex/{EP1.token}/command/reboot/status"
    assert message.payload == command
    assert message.qos == 0


async def test_unknown_appversion_gets_a_404_error(port):
    async with open_device(port) as device:
        await call(device.publish, f"kp1/no_such_v1/dcx/{EP1.token}/json/7", b"{}", qos=1)
        message = await call(device.expect)
    assert message.topic == f"kp1/no_such_v1/dcx/{EP1.token}/json/7/error"
    body = json.loads(message.payload)
    assert body["statusCode"] == 404 and body["reasonPhrase"]


async def test_invalid_token_gets_the_providers_status(kaa, port):
    async with open_device(port) as device:
        await call(device.publish, f"kp1/{APP_VERSION}/dcx/not-a-token/json/8", b"{}", qos=1)
        message = await call(device.expect)
    assert message.topic == f"kp1/{APP_VERSION}/dcx/not-a-token/json/8/error"
    assert json.loads(message.payload)["statusCode"] == 401  # what the provider answered
    assert kaa.received("dcx") == []


async def test_no_request_id_means_no_kpc_error(kaa, port):
    marker = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/99"
    async with open_device(port) as device:
        await call(device.publish, f"kp1/no_such_v1/dcx/{EP1.token}/json", b"{}", qos=1)
        await call(device.publish, f"kp1/{APP_VERSION}/dcx/not-a-token/json", b"{}", qos=1)
        # Handled in order on one connection: an error for the two above would come first.
        await call(device.publish, marker, b"marker", qos=1)
        first = await call(device.expect)
    assert first.topic == marker + "/status"


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_each_qos_is_relayed_exactly_once(kaa, port, qos):
    payloads = [f"m{n}".encode() for n in range(5)] + [b"end"]
    async with open_device(port) as device:
        for payload in payloads:
            await call(device.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json", payload,
                       qos=qos)
        # Relayed in order: a duplicate of any message would arrive before the last one.
        received = await kaa.await_received("dcx", len(payloads))
    assert [cd.payload for cd in received] == payloads


async def test_endpoint_unaware_request_gets_its_reply(kaa, port):
    async with open_device(port) as device:
        await call(device.publish, f"kp1/{APP_VERSION}/tsx/time/3", b"", qos=1)
        [client_data] = await kaa.await_received("tsx", 1)
        reply = await call(device.expect)
    assert client_data.endpoint_id is None
    assert client_data.resource_path == "/time"
    assert reply.topic == f"kp1/{APP_VERSION}/tsx/time/3/status"


async def test_malformed_bytes_close_only_the_offender(kaa, port):
    async with open_device(port) as device:
        offender = await trio.open_tcp_stream("127.0.0.1", port)
        await offender.send_all(b"\x10\xff\xff\xff\xff\x7f garbage")
        with trio.fail_after(10):
            assert await offender.receive_some(1024) == b""  # KPC closed it
        await offender.aclose()
        await call(device.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/1", b"ok", qos=1)
        reply = await call(device.expect)
    assert reply.topic.endswith("/json/1/status")


async def test_clients_never_see_each_others_messages(kaa, port):
    async with open_device(port) as first, open_device(port) as second:
        await call(first.subscribe, "kp1/#", 1)
        await call(second.subscribe, "kp1/#", 1)
        await call(first.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/1", b"one", qos=1)
        await call(second.publish, f"kp1/{APP_VERSION}/dcx/{EP2.token}/json/2", b"two", qos=1)
        await kaa.await_received("dcx", 2)
        await call(kaa.push, "cex", push_data(EP2.endpoint_id, "/command/x", b"for-two"))
        second_got = [await call(second.expect), await call(second.expect)]
        # Anything of the second client's leaking to the first would come before this reply.
        await call(first.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/3", b"end", qos=1)
        first_got = [await call(first.expect), await call(first.expect)]
    assert [m.topic for m in first_got] == [f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/1/status",
                                            f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/3/status"]
    assert sorted(m.topic for m in second_got) == sorted([
        f"kp1/{APP_VERSION}/dcx/{EP2.token}/json/2/status",
        f"kp1/{APP_VERSION}/cex/{EP2.token}/command/x/status",
    ])


async def test_a_payload_nats_cannot_carry_is_answered_413(nats_server, tmp_path, kaa):
    config = make_config(tmp_path, nats_server.url,
                         "kaa.kpc.transports.mqtt.max-packet-size: 2097152\n")
    async with open_kpc(config) as service:
        async with open_device(service.ports["mqtt_tcp"]) as device:
            topic = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json"
            await call(device.publish, topic + "/5", b"x" * 1_048_576, qos=1)
            error = await call(device.expect)
            await call(device.publish, topic + "/6", b"small", qos=1)  # still served
            reply = await call(device.expect)
            # The refused request was never sent: no reply is waited for.
            assert service.hub.pending_request_count == 0
    assert error.topic == topic + "/5/error"
    assert json.loads(error.payload)["statusCode"] == 413
    assert reply.topic == topic + "/6/status"
    assert [cd.payload for cd in kaa.received("dcx")] == [b"small"]


async def test_an_extension_data_that_makes_an_invalid_topic_is_dropped(kaa, port):
    async with open_device(port) as device:
        await call(device.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json", b"{}", qos=1)
        await kaa.await_received("dcx", 1)
        await call(kaa.push, "cex", push_data(EP1.endpoint_id, "/command/+/bad", b"wildcard"))
        await call(kaa.push, "cex", push_data(EP1.endpoint_id, "/command/good", b"fine"))
        message = await call(device.expect)
    assert message.topic == f"kp1/{APP_VERSION}/cex/{EP1.token}/command/good/status"


async def test_a_client_that_only_subscribes_gets_the_pushes(kaa, port):
    async with open_device(port) as device:
        await call(device.subscribe, f"kp1/{APP_VERSION}/cex/{EP2.token}/command/#", 0)
        [connected] = await kaa.await_events("connectivity.connected", 1)
        await call(kaa.push, "cex", push_data(EP2.endpoint_id, "/command/ping", b"hello"))
        message = await call(device.expect)
    assert connected.endpoints == {EP2.endpoint_id: APP_VERSION}
    assert (message.topic, message.payload) == (
        f"kp1/{APP_VERSION}/cex/{EP2.token}/command/ping/status", b"hello")


def _qos1_publish(topic: str, packet_id: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH written out by hand (type 3, QoS bits 01), one-byte remaining length."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + packet_id.to_bytes(2, "big") + payload
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body


async def test_acknowledgements_keep_the_order_of_the_publishes(kaa, port):
    """Relayed messages are acknowledged once NATS confirmed them (a lone one by NATS's reading
    task, the next read waits for it), rejected ones at once: PUBACKs still go out in order."""
    relayed = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json"
    rejected = "kp1/no-such-appversion/dcx/token/json"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        # CONNECT: MQTT 3.1.1, clean session, keepalive 60, empty client id
        await stream.send_all(bytes.fromhex("100c00044d5154540402003c0000"))
        received = b""
        with trio.fail_after(10):
            while len(received) < 4:
                received += await stream.receive_some(1024)
        assert received == bytes.fromhex("20020000")
        received = b""
        with trio.fail_after(10):
            for packet_id in range(1, 41):
                topic = relayed if packet_id % 2 else rejected
                # Each relayed message with a PINGREQ: KPC answers the PINGREQ at once and
                # reads the next (rejected) message while NATS may not have confirmed it yet.
                ping = b"\xc0\x00" if packet_id % 2 else b""
                await stream.send_all(_qos1_publish(topic, packet_id, b"%d" % packet_id) + ping)
                while ping and b"\xd0\x00" not in received:
                    received += await stream.receive_some(1024)
                received = received.replace(b"\xd0\x00", b"", 1)
            expected = b"".join(bytes([0x40, 0x02, 0, packet_id]) for packet_id in range(1, 41))
            while len(received) < len(expected):
                received += await stream.receive_some(1024)
        assert received == expected
    client_data = await kaa.await_received("dcx", 20)
    assert sorted(int(data.payload) for data in client_data) == list(range(1, 41, 2))


async def test_two_connections_of_one_endpoint_each_get_the_replies_to_their_own_requests(
        kaa, port):
    """One endpoint, two connections asking at once: its endpoint moves to whichever connection
    spoke last, but each reply goes to the connection that asked."""
    kaa.set_extension_behaviour("dcx", ExtensionBehaviour(delay=0.2))  # all pending together
    rounds = 3
    replies: dict[str, list] = {}

    async def connection(client_id: str, first_request_id: int) -> None:
        async with open_device(port, client_id=client_id) as device:
            got = replies[client_id] = []
            for request_id in range(first_request_id, first_request_id + rounds):
                await call(device.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/{request_id}",
                           f"{client_id}-{request_id}".encode(), 1)
                got.append(await call(device.expect))
            await call(device.expect_none)  # nothing of the other connection's

    # Endpoint-aware requests keep the device's ids: the two connections pick distinct ones.
    firsts = {"conn-a": 0, "conn-b": 100}
    async with trio.open_nursery() as nursery:
        for client_id, first in firsts.items():
            nursery.start_soon(connection, client_id, first)
    for client_id, first in firsts.items():
        assert [(m.topic, m.payload) for m in replies[client_id]] == [
            (f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/{request_id}/status",
             f"{client_id}-{request_id}".encode())
            for request_id in range(first, first + rounds)]


async def test_each_reply_goes_out_at_its_own_requests_qos_with_requests_in_flight_together(
        kaa, port):
    """Several devices, several rounds: an endpoint-aware and an endpoint-unaware request in
    flight at once with different QoS, and a bad request between them; each reply comes back
    at the QoS of the request it answers."""
    kaa.set_extension_behaviour("dcx", ExtensionBehaviour(delay=0.05))  # both pending at once
    devices, rounds = 3, 3
    got: dict[int, dict[str, int]] = {}

    async def device(n: int) -> None:
        endpoint = ENDPOINTS[n]
        async with open_device(port) as client:
            seen = got[n] = {}
            for request_id in range(rounds):
                aware_qos = (n + request_id) % 2
                await call(client.publish, f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json/"
                           f"{request_id}", b"aware", aware_qos)
                await call(client.publish, f"kp1/{APP_VERSION}/dcx/not-a-token/json/9", b"", 1)
                await call(client.publish, f"kp1/{APP_VERSION}/tsx/time/{request_id}",
                           b"unaware", 1 - aware_qos)
                for _ in range(3):
                    reply = await call(client.expect)
                    seen[reply.topic] = reply.qos

    async with trio.open_nursery() as nursery:
        for n in range(devices):
            nursery.start_soon(device, n)
    for n in range(devices):
        token = ENDPOINTS[n].token
        expected = {f"kp1/{APP_VERSION}/dcx/not-a-token/json/9/error": 1}
        for request_id in range(rounds):
            aware_qos = (n + request_id) % 2
            expected[f"kp1/{APP_VERSION}/dcx/{token}/json/{request_id}/status"] = aware_qos
            expected[f"kp1/{APP_VERSION}/tsx/time/{request_id}/status"] = 1 - aware_qos
        assert got[n] == expected
