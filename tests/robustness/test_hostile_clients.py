"""Slow and hostile clients against a live KPC: silent connections, a client that never reads, a
reconnect storm and client-id takeover races. Each test ends with nothing left behind."""

from __future__ import annotations

import pytest
import trio

from kpc_trio.mqtt.packets import (
    ConnAck,
    ConnAckCode,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    QoS,
)
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, push_data
from tests.robustness.conftest import (
    assert_nothing_left,
    eventually,
    sample,
    task_count,
)
from tests.robustness.raw_client import SERVER_DEADLINE, RawClient, connect_packet

ACCEPTED = ConnAck(ConnAckCode.ACCEPTED)
SILENT_CLIENTS = 10
STORM_CLIENTS = 2_000
STORM_CONCURRENCY = 50
TAKEOVER_ROUNDS = 5
TAKEOVER_RACERS = 25
PUSH_PAYLOAD = b"p" * 8_192
MAX_PUSHES = 2_000


@pytest.mark.parametrize("first_bytes", [b"", b"\x10\x0c\x00"],
                         ids=["silent", "partial-connect"])
async def test_clients_that_never_send_connect_are_closed(kpc, port, first_bytes):
    baseline = task_count()
    clients = [await RawClient.open(port) for _ in range(SILENT_CLIENTS)]
    received = {}

    async def wait_for_close(client: RawClient) -> None:
        await client.send(first_bytes)
        received[client] = await client.packets_until_closed()
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(wait_for_close, client)
    assert list(received.values()) == [[]] * SILENT_CLIENTS  # closed without a CONNACK
    assert sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                  reason="connect_timeout") == SILENT_CLIENTS
    await assert_nothing_left(kpc, baseline)


async def test_client_that_never_reads_is_dropped_with_a_bounded_outbox(kpc, kaa, port):
    baseline = task_count()
    endpoint = ENDPOINTS[0]
    # A tiny receive window: the kernel buffers fill fast and KPC's outbox has to take the rest.
    client = await RawClient.open(port, receive_buffer=4096)
    assert await client.handshake("never-reads") == ACCEPTED
    await client.send(Publish(f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json", b"{}",
                              QoS.AT_LEAST_ONCE, packet_id=1))
    with trio.fail_after(SERVER_DEADLINE):
        assert await client.next_packet() == PubAck(1)
    await eventually(lambda: kpc.hub.endpoint_count == 1, "endpoint bound to the client")

    def slow_consumers() -> float:
        return sample(kpc, "kpc_messages_dropped_total", reason="slow_consumer")

    pushes = 0
    # The client reads nothing from here on; KPC must give up on it instead of buffering.
    while slow_consumers() == 0 and pushes < MAX_PUSHES:
        await call(kaa.push, "cex", push_data(endpoint.endpoint_id, "/command/flood",
                                              PUSH_PAYLOAD))
        pushes += 1
    await eventually(lambda: not kpc.sessions, "the slow consumer dropped")
    assert slow_consumers() == 1
    # Later pushes find no route: they are dropped, not queued for the dead client.
    await call(kaa.push, "cex", push_data(endpoint.endpoint_id, "/command/flood", PUSH_PAYLOAD))
    await eventually(lambda: sample(kpc, "kpc_messages_dropped_total", reason="not_routed") >= 1,
                     "push after the drop counted as not routed")
    delivered = [packet for packet in await client.packets_until_closed()
                 if isinstance(packet, Publish)]
    await client.aclose()
    assert len(delivered) < pushes
    assert all(packet.payload == PUSH_PAYLOAD for packet in delivered)
    await assert_nothing_left(kpc, baseline)


async def test_reconnect_storm_leaves_nothing_behind(kpc, port):
    baseline = task_count()
    limiter = trio.CapacityLimiter(STORM_CONCURRENCY)
    outcomes: list[tuple[ConnAck | None, list]] = []

    async def connect_and_leave(n: int) -> None:
        async with limiter:
            client = await RawClient.open(port)
            try:
                connack = await client.handshake(f"storm-{n}")
                await client.send(Disconnect())
                outcomes.append((connack, await client.packets_until_closed()))
            finally:
                await client.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(STORM_CLIENTS):
            nursery.start_soon(connect_and_leave, n)
    assert outcomes == [(ACCEPTED, [])] * STORM_CLIENTS
    assert sample(kpc, "kpc_connects_total", transport="tcp") == STORM_CLIENTS
    await assert_nothing_left(kpc, baseline)


async def still_answers_ping(client: RawClient) -> bool:
    await client.send(PingReq())
    with trio.fail_after(SERVER_DEADLINE):
        while (packet := await client.next_packet()) is not None:
            if packet == PingResp():
                return True
    return False


async def validate_token_once(port: int, token: str) -> None:
    """Get `token` into KPC's token cache, so racers do not wait on the token provider."""
    client = await RawClient.open(port)
    assert await client.handshake("warm-up") == ACCEPTED
    await client.send(Publish(f"kp1/{APP_VERSION}/dcx/{token}/json", b"{}",
                              QoS.AT_LEAST_ONCE, packet_id=1))
    with trio.fail_after(SERVER_DEADLINE):
        assert await client.next_packet() == PubAck(1)
    await client.aclose()


async def test_client_id_takeover_race_leaves_exactly_one(kpc, port):
    baseline = task_count()
    endpoint = ENDPOINTS[1]
    await validate_token_once(port, endpoint.token)
    for round_number in range(TAKEOVER_ROUNDS):
        client_id = f"contended-{round_number}"
        clients = [await RawClient.open(port) for _ in range(TAKEOVER_RACERS)]

        async def race(client: RawClient, client_id: str = client_id) -> None:
            # Each racer also claims the same endpoint, so endpoint routes race too.
            await client.send(connect_packet(client_id), Publish(
                f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json", b"{}"))
            with trio.fail_after(SERVER_DEADLINE):
                packet = await client.next_packet()
            assert packet in (ACCEPTED, None)  # a racer may be taken over before its CONNACK

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(race, client)
        # Every CONNECT has been decided now; only the last claim may still be served.
        alive = [client for client in clients if await still_answers_ping(client)]
        assert len(alive) == 1
        assert kpc.hub.client_count == 1
        assert kpc.hub.endpoint_count <= 1
        for client in clients:
            await client.aclose()
        await eventually(lambda: not kpc.sessions, "the survivor's session ended")
    warm_up = 1
    assert sample(kpc, "kpc_connects_total",
                  transport="tcp") == warm_up + TAKEOVER_ROUNDS * TAKEOVER_RACERS
    await assert_nothing_left(kpc, baseline)


async def test_takeover_during_token_validation_spares_other_sessions(kpc, kaa, port):
    """The session that asked the token provider is taken over while the answer is pending;
    another session waiting for the same token must still get it."""
    baseline = task_count()
    token = ENDPOINTS[3].token
    misses = lambda: sample(kpc, "kpc_token_cache_misses_total")  # noqa: E731
    kaa.set_token_delay(1.0)  # the validation stays pending while the takeover happens
    asker, waiter, usurper = [await RawClient.open(port) for _ in range(3)]
    assert await asker.handshake("asker") == ACCEPTED
    await asker.send(Publish(f"kp1/{APP_VERSION}/dcx/{token}/json/1", b"a",
                             QoS.AT_LEAST_ONCE, packet_id=1))
    await eventually(lambda: misses() == 1, "the asker's validation started")
    assert await waiter.handshake("waiter") == ACCEPTED
    topic = f"kp1/{APP_VERSION}/dcx/{token}/json/2"
    await waiter.send(Publish(topic, b"w", QoS.AT_LEAST_ONCE, packet_id=1))
    await eventually(lambda: misses() == 2, "the waiter joined the pending validation")
    assert await usurper.handshake("asker") == ACCEPTED  # takes the asker's session down
    with trio.fail_after(SERVER_DEADLINE):
        replies = [await waiter.next_packet(), await waiter.next_packet()]
    reply = next(packet for packet in replies if isinstance(packet, Publish))
    assert reply.topic == topic + "/status", reply
    for client in (asker, waiter, usurper):
        await client.aclose()
    await assert_nothing_left(kpc, baseline)
