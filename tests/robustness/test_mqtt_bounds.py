"""Issue 18, the MQTT core's bounds against a live KPC: what a client can make a connection hold
(client id, subscriptions, QoS 2 messages never released) is bounded, the refusal is counted, and
a device beside the hostile client keeps its round trips."""

from __future__ import annotations

import logging

import pytest
import trio

from kpc_trio.mqtt.packets import (
    ConnAck,
    ConnAckCode,
    PingReq,
    PingResp,
    Publish,
    PubRec,
    QoS,
    SubAck,
    Subscribe,
)
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS
from tests.integration.waiting import eventually, logged
from tests.robustness.conftest import (
    LIMITS,
    assert_nothing_left,
    sample,
    task_count,
)
from tests.robustness.raw_client import SERVER_DEADLINE, RawClient

ACCEPTED = ConnAck(ConnAckCode.ACCEPTED)
DEFAULT_MAX_INFLIGHT = 100
DEFAULT_MAX_SUBSCRIPTIONS = 100


@pytest.fixture
def limits() -> dict[str, str]:
    # Room for a SUBSCRIBE of 20,000 filters: what stops it must be the filter count.
    return {**LIMITS, "KAA_KPC_TRANSPORTS_MQTT_MAX_PACKET_SIZE": "1048576"}


async def assert_neighbour_round_trip(port: int, request_id: int) -> None:
    """A well-behaved device beside the hostile one gets its answer."""
    neighbour = await RawClient.open(port)
    try:
        assert await neighbour.handshake(f"neighbour-{request_id}") == ACCEPTED
        topic = f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[1].token}/json/{request_id}"
        await neighbour.send(Publish(topic, b"{}"))
        with trio.fail_after(SERVER_DEADLINE):
            answer = await neighbour.next_packet()
        assert answer == Publish(f"{topic}/status", b"{}")
    finally:
        await neighbour.aclose()


async def test_a_client_id_over_the_bound_is_rejected_and_counted(kpc, port):
    baseline = task_count()
    client = await RawClient.open(port)
    assert await client.handshake("x" * 1_000) == ConnAck(ConnAckCode.IDENTIFIER_REJECTED)
    assert await client.packets_until_closed() == []
    await client.aclose()
    assert sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                  reason="identifier_rejected") == 1
    await assert_neighbour_round_trip(port, 1)
    await assert_nothing_left(kpc, baseline)


async def test_qos2_messages_never_released_are_bounded_by_max_inflight(kpc, kaa, port):
    baseline = task_count()
    client = await RawClient.open(port)
    assert await client.handshake("never-releases") == ACCEPTED
    topic = f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json"
    for packet_id in range(1, DEFAULT_MAX_INFLIGHT + 1):
        await client.send(Publish(topic, b"q2", QoS.EXACTLY_ONCE, packet_id=packet_id))
        with trio.fail_after(SERVER_DEADLINE):
            assert await client.next_packet() == PubRec(packet_id)
    # One more while all of those await their PUBREL: closed, nothing answered.
    await client.send(Publish(topic, b"q2", QoS.EXACTLY_ONCE,
                              packet_id=DEFAULT_MAX_INFLIGHT + 1))
    assert await client.packets_until_closed() == []
    await client.aclose()
    def relayed() -> int:
        return sum(data.payload == b"q2" for data in kaa.received("dcx"))

    # Every acknowledged message reached the extension, the refused one did not.
    await eventually(lambda: relayed() >= DEFAULT_MAX_INFLIGHT, "acknowledged messages relayed")
    await assert_neighbour_round_trip(port, 2)
    assert relayed() == DEFAULT_MAX_INFLIGHT
    await assert_nothing_left(kpc, baseline)


async def test_subscriptions_are_bounded_per_connection(kpc, port, caplog):
    caplog.set_level(logging.INFO)
    baseline = task_count()
    # 20,000 filters in one SUBSCRIBE: closed at the 101st without a SUBACK.
    flood = await RawClient.open(port)
    assert await flood.handshake("flood") == ACCEPTED
    await flood.send(Subscribe(1, tuple((f"f/{n}", QoS.AT_MOST_ONCE) for n in range(20_000))))
    assert await flood.packets_until_closed() == []
    await flood.aclose()
    [violation] = logged(caplog, "protocol_violation")
    assert "more than 100 topic filters" in str(violation["reason"])
    # Filter by filter: the connection stays, filters beyond the bound are refused.
    client = await RawClient.open(port)
    assert await client.handshake("collector") == ACCEPTED
    for n in range(DEFAULT_MAX_SUBSCRIPTIONS + 3):
        await client.send(Subscribe(n + 1, ((f"f/{n}", QoS.AT_LEAST_ONCE),)))
        with trio.fail_after(SERVER_DEADLINE):
            suback = await client.next_packet()
        expected = 1 if n < DEFAULT_MAX_SUBSCRIPTIONS else 0x80
        assert suback == SubAck(n + 1, (expected,)), n
    await client.send(PingReq())
    with trio.fail_after(SERVER_DEADLINE):
        assert await client.next_packet() == PingResp()
    await client.aclose()
    await assert_neighbour_round_trip(port, 3)
    await assert_nothing_left(kpc, baseline)
