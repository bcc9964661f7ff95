"""End to end: devices flooding QoS 0 telemetry (KPC's run path, `PublishRun`) through a real
nats-server, in hand-written bytes: every good message reaches the extension once and in order,
the bad ones mixed in are answered and counted as lone ones are, the connections stay up.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from kpc_trio.mqtt.codec import Decoder
from kpc_trio.mqtt.packets import PingResp, PubAck, Publish
from tests.integration.kpc_harness import APP, APP_VERSION, ENDPOINTS
from tests.integration.test_traffic_report import open_setup, totals

DEVICES = ENDPOINTS[:3]
#: A payload NATS (max_payload 1 MiB) cannot carry but the MQTT packet limit below lets in.
OVERSIZE = b"o" * 1_048_576
CONNECT = bytes.fromhex("100c00044d5154540402003c0000")  # MQTT 3.1.1, clean, keepalive 60
PINGREQ = b"\xc0\x00"


def remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def publish(topic: str, payload: bytes, packet_id: int | None = None) -> bytes:
    """PUBLISH written out by hand: QoS 0, or QoS 1 with `packet_id`."""
    body = len(topic).to_bytes(2, "big") + topic.encode()
    if packet_id is not None:
        body += packet_id.to_bytes(2, "big")
    first = 0x32 if packet_id is not None else 0x30
    return bytes([first]) + remaining_length(len(body) + len(payload)) + body + payload


def burst(token: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """One TCP write of runs of two topics with bad messages, a QoS 1 one and a PINGREQ in
    between; and the (resource path, payload) of the messages the extension must get."""
    json_topic = f"kp1/{APP_VERSION}/dcx/{token}/json"
    metrics_topic = f"kp1/{APP_VERSION}/dcx/{token}/metrics"
    packets: list[bytes] = []
    relayed: list[tuple[str, bytes]] = []

    def good(topic: str, path: str, payload: bytes) -> None:
        packets.append(publish(topic, payload))
        relayed.append((path, payload))

    for n in range(6):
        good(json_topic, "/json", b"j%d" % n)
    for n in range(3):
        good(metrics_topic, "/metrics", b"m%d" % n)
    for n in range(6, 9):
        good(json_topic, "/json", b"j%d" % n)
    packets.append(publish(json_topic, OVERSIZE))  # 413, counted, never relayed
    for n in range(9, 11):
        good(json_topic, "/json", b"j%d" % n)
    packets.append(publish(f"kp1/no_such_v1/dcx/{token}/json/77", b"x"))  # 404, answered
    packets += [publish(f"kp1/no_such_v1/dcx/{token}/json", b"x")] * 2  # 404, not answered
    packets += [publish(f"kp1/{APP_VERSION}/dcx/not-a-token/json", b"x")] * 2  # 401
    packets.append(publish(json_topic, b"q", packet_id=7))
    relayed.append(("/json", b"q"))
    packets.append(PINGREQ)
    for n in range(11, 16):
        good(json_topic, "/json", b"j%d" % n)
    return b"".join(packets), relayed


async def read_packets(stream: trio.SocketStream, decoder: Decoder, count: int) -> list[Any]:
    packets: list[Any] = []
    with trio.fail_after(10):
        while len(packets) < count:
            packet = decoder.next_packet()
            if packet is None:
                data = await stream.receive_some(65536)
                assert data, "KPC closed the connection"
                decoder.feed(data)
            else:
                packets.append(packet)
    return packets


async def run_device(port: int, token: str, answers: dict[str, list[Any]]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        decoder = Decoder(1 << 20)
        await stream.send_all(CONNECT)
        assert len(await read_packets(stream, decoder, 1)) == 1  # CONNACK
        data, _ = burst(token)
        await stream.send_all(data)
        got = await read_packets(stream, decoder, 3)
        await stream.send_all(PINGREQ)  # still connected
        got += await read_packets(stream, decoder, 1)
        answers[token] = got


async def test_bursts_of_qos0_publishes_relay_each_good_message_once_in_order(
        tmp_path, nats_server):
    async with open_setup(tmp_path, nats_server.url,
                          KAA_KPC_TRANSPORTS_MQTT_MAX_PACKET_SIZE="2097152") as setup:
        answers: dict[str, list[Any]] = {}
        async with trio.open_nursery() as nursery:
            for device in DEVICES:
                nursery.start_soon(run_device, setup.port, device.token, answers)
        expected = {device.endpoint_id: burst(device.token)[1] for device in DEVICES}
        total = sum(map(len, expected.values()))
        received = await setup.kaa.await_received("dcx", total, timeout=20)
        expected_traffic = {"kaa": {APP: {
            device.endpoint_id: (sum(len(p) for _, p in expected[device.endpoint_id])
                                 + len(OVERSIZE), 0, len(expected[device.endpoint_id]) + 1, 0)
            for device in DEVICES}}}
        await setup.reports.wait_until(lambda reports: totals(reports) == expected_traffic)
        metric = setup.kpc.metrics.registry.get_sample_value

        assert len(received) == total  # nothing more came
        for device in DEVICES:
            mine = [data for data in received if data.endpoint_id == device.endpoint_id]
            assert [(data.resource_path, data.payload) for data in mine] \
                == expected[device.endpoint_id]
            assert {(data.app_version_name, data.request_id) for data in mine} \
                == {(APP_VERSION, None)}
            # The PINGRESP goes out as the PINGREQ is read, the others once handled.
            *burst_answers, last = answers[device.token]
            [error] = [answer for answer in burst_answers if isinstance(answer, Publish)]
            assert error.topic == f"kp1/no_such_v1/dcx/{device.token}/json/77/error"
            assert json.loads(error.payload)["statusCode"] == 404
            assert PubAck(7) in burst_answers and PingResp() in burst_answers
            assert last == PingResp()
        assert len({data.correlation_id for data in received}) == total
        assert metric("kpc_messages_dropped_total", {"reason": "too_large_for_nats"}) == 3
        assert metric("kpc_requests_rejected_total", {"status": "413"}) == 3
        assert metric("kpc_requests_rejected_total", {"status": "404"}) == 9
        assert metric("kpc_requests_rejected_total", {"status": "401"}) == 6
        assert metric("kpc_client_data_relayed_total", {"extension": "dcx"}) == total
        assert metric("kpc_packets_received_total", {"packet_type": "PUBLISH"}) \
            == 3 * (len(expected[DEVICES[0].endpoint_id]) + 6)
