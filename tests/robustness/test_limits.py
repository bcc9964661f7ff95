"""Issue 6 item 4: the connection limit and the per-connection in-flight limit.

Expected behaviour:
- `max-connections`: a connection beyond the limit gets CONNACK 3 (server unavailable) to its
  CONNECT, then is closed (one that sends no CONNECT is closed after the connect timeout),
  counted in `kpc_connect_refusals_total{reason="max_connections"}`; the connections already
  open are untouched, and a freed slot can be taken again.
- `max-inflight`: backpressure, not a disconnect: KPC holds at most that many unacknowledged
  QoS 1/2 PUBLISHes of one connection, so no NATS hand-over carries more of them; the client's
  further PUBLISHes wait in the socket and are all relayed and acknowledged in the end.
- Issue 18: a topic or endpoint token over its byte limit (`kaa.kpc.limits`) is answered with a
  1/KP error and costs no NATS request.
"""

from __future__ import annotations

import json

import pytest
import trio

from kpc_trio.mqtt.packets import ConnAck, ConnAckCode, PubAck, Publish, QoS
from tests.integration.kpc_harness import APP_VERSION
from tests.integration.waiting import eventually
from tests.robustness.conftest import (
    LIMITS,
    assert_nothing_left,
    sample,
    task_count,
)
from tests.robustness.raw_client import SERVER_DEADLINE, RawClient

MAX_CONNECTIONS = 3
MAX_INFLIGHT = 5  # a bucket bound of kpc_nats_publish_batch_size
BURST = 40
ACCEPTED = ConnAck(ConnAckCode.ACCEPTED)


# Written by hand: CONNECT "MQTT" level 4, clean session, keepalive 0, client id "extra"...
CONNECT_311 = bytes.fromhex("1011" "00044d515454" "04" "02" "0000" "0005" "6578747261")
# ... and "MQIsdp" level 3, client id "extra".
CONNECT_31 = bytes.fromhex("1013" "00064d5149736470" "03" "02" "0000" "0005" "6578747261")
CONNACK_SERVER_UNAVAILABLE = bytes.fromhex("20020003")


async def bytes_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes; fails if it never does."""
    received = b""
    with trio.fail_after(SERVER_DEADLINE):
        while data := await stream.receive_some(1024):
            received += data
    return received


@pytest.fixture
def limits() -> dict[str, str]:
    return {
        **LIMITS,
        "KAA_KPC_TRANSPORTS_MQTT_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "KAA_KPC_TRANSPORTS_MQTT_MAX_INFLIGHT": str(MAX_INFLIGHT),
    }


async def test_connection_beyond_max_connections_is_refused_and_counted(kpc, port):
    baseline = task_count()
    admitted = [await RawClient.open(port) for _ in range(MAX_CONNECTIONS)]
    for n, client in enumerate(admitted):
        assert await client.handshake(f"admitted-{n}") == ACCEPTED
    # Over the limit, MQTT 3.1.1 and 3.1 alike: CONNACK 3 (server unavailable), then the close.
    for connect in (CONNECT_311, CONNECT_31):
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        async with extra:
            await extra.send_all(connect)
            assert await bytes_until_closed(extra) == CONNACK_SERVER_UNAVAILABLE
    # One that never sends CONNECT is closed after the connect timeout, with nothing to read.
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    async with silent:
        assert await bytes_until_closed(silent) == b""
    assert sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                  reason="max_connections") == 3
    assert sample(kpc, "kpc_connections_open", transport="tcp") == MAX_CONNECTIONS
    # A freed slot is available again.
    await admitted.pop().aclose()
    await eventually(lambda: len(kpc.sessions) == MAX_CONNECTIONS - 1, "a slot freed")
    late = await RawClient.open(port)
    assert await late.handshake("late") == ACCEPTED
    for client in [*admitted, late]:
        await client.aclose()
    await assert_nothing_left(kpc, baseline)


async def test_max_inflight_bounds_the_unacknowledged_messages_of_a_connection(kpc, kaa, port):
    baseline = task_count()
    client = await RawClient.open(port)
    assert await client.handshake("bursty") == ACCEPTED
    # Endpoint-unaware topic: no token validation or connectivity event shares the batches.
    topic = f"kp1/{APP_VERSION}/tsx/burst"
    await client.send(*(Publish(topic, b"%d" % n, QoS.AT_LEAST_ONCE, packet_id=n)
                        for n in range(1, BURST + 1)))  # one write, far over the limit
    with trio.fail_after(SERVER_DEADLINE):
        acknowledged = {(await client.next_packet()) for _ in range(BURST)}
    assert acknowledged == {PubAck(n) for n in range(1, BURST + 1)}
    assert len(await kaa.await_received("tsx", BURST)) == BURST
    batches = sample(kpc, "kpc_nats_publish_batch_size_count")
    small_batches = sample(kpc, "kpc_nats_publish_batch_size_bucket", le=f"{MAX_INFLIGHT:.1f}")
    assert batches >= BURST // MAX_INFLIGHT
    assert small_batches == batches  # no hand-over carried more than max-inflight messages
    await client.aclose()
    await assert_nothing_left(kpc, baseline)


async def test_topics_and_tokens_over_their_byte_limits_are_answered_without_nats(kpc, kaa,
                                                                                port):
    """kaa.kpc.limits: a 1/KP error on `/error`, no token validation and no ClientData."""
    baseline = task_count()
    client = await RawClient.open(port)
    assert await client.handshake("long-names") == ACCEPTED
    long_topic = f"kp1/{APP_VERSION}/dcx/token-1/" + "j" * 1_000 + "/1"
    long_token = f"kp1/{APP_VERSION}/dcx/" + "t" * 257 + "/json/2"
    await client.send(Publish(long_topic, b"{}", QoS.AT_LEAST_ONCE, packet_id=1),
                      Publish(long_token, b"{}", QoS.AT_LEAST_ONCE, packet_id=2))
    with trio.fail_after(SERVER_DEADLINE):
        received = [await client.next_packet() for _ in range(4)]
    answers = {packet.topic: json.loads(packet.payload)
               for packet in received if isinstance(packet, Publish)}
    assert answers == {
        long_topic + "/error": {"statusCode": 414, "reasonPhrase": "Topic too long"},
        long_token + "/error": {"statusCode": 401, "reasonPhrase": "Endpoint token too long"},
    }
    assert {PubAck(1), PubAck(2)} <= set(received)
    assert sample(kpc, "kpc_token_cache_misses_total") == 0
    assert sample(kpc, "kpc_client_data_relayed_total", extension="dcx") == 0
    assert sample(kpc, "kpc_requests_rejected_total", status="414") == 1
    await client.aclose()
    await assert_nothing_left(kpc, baseline)
