"""Sessions idle for `park_after` wait without a task (kpc_trio.parking): whatever happens to a
parked session (data, silence past the keepalive, a takeover, a shutdown, the client leaving, a
message for the client) is handled as it would be by a session with its task."""

from __future__ import annotations

import socket

import attrs
import pytest
import trio
import trio.testing

from kpc_trio.mqtt.packets import PingReq, PingResp, Publish, QoS
from kpc_trio.net import Peer
from kpc_trio.net.socket_stream import LeanSocketStream
from kpc_trio.parking import TICK, Parking
from kpc_trio.session import Delivery, Session, SessionContext
from tests.trio.test_session import Client, context  # noqa: F401 - context: a fixture

PARK_AFTER = 2.0
TEST_LIMIT = 300.0  # seconds of the tests' virtual clock


@pytest.fixture
def parked_context(context: SessionContext) -> SessionContext:  # noqa: F811
    return attrs.evolve(context, parking=Parking(),
                        limits=attrs.evolve(context.limits, park_after=PARK_AFTER))


def start_session(nursery: trio.Nursery, ctx: SessionContext) -> tuple[Session, Client]:
    """A session on one end of a socket pair, its client on the other."""
    server_end, client_end = socket.socketpair()
    session = Session(LeanSocketStream(server_end), Peer("tcp", "test:1"), ctx)
    nursery.start_soon(session.run, nursery)
    return session, Client(trio.SocketStream(trio.socket.from_stdlib_socket(client_end)))


async def serving(nursery: trio.Nursery, ctx: SessionContext) -> Parking:
    """Parking served in `nursery`, and a bound on the test (a session that is never resumed
    would leave it waiting for ever)."""

    async def watchdog() -> None:
        await trio.sleep(TEST_LIMIT)
        raise AssertionError(f"not done within {TEST_LIMIT} s")

    assert ctx.parking is not None
    await nursery.start(ctx.parking.serve, nursery)
    nursery.start_soon(watchdog)
    return ctx.parking


async def parked(nursery: trio.Nursery, ctx: SessionContext, *, keepalive: int = 0,
                 client_id: str = "dev-1") -> tuple[Session, Client]:
    """A session whose client connected and then kept quiet until the session parked."""
    assert ctx.parking is not None
    waiting = len(ctx.parking)
    session, client = start_session(nursery, ctx)
    await client.connect(client_id, keepalive=keepalive)
    await trio.sleep(PARK_AFTER + 0.1)
    assert len(ctx.parking) == waiting + 1
    return session, client


async def ended(session: Session, ctx: SessionContext) -> None:
    """Wait until `session` released everything (after its client saw the connection close)."""
    while session in ctx.live:
        await trio.sleep(0.01)


async def test_an_idle_session_parks_and_is_served_again_when_its_client_sends(
        parked_context, autojump_clock):
    async with trio.open_nursery() as nursery:
        parking = await serving(nursery, parked_context)
        session, client = await parked(nursery, parked_context, keepalive=60)
        for _ in range(3):  # parks again after each
            await client.send(PingReq())
            assert await client.next_packet() == PingResp()
            assert len(parking) == 0
            await trio.sleep(PARK_AFTER + 0.1)
            assert len(parking) == 1
        assert session in parked_context.live
        nursery.cancel_scope.cancel()


async def test_parked_sessions_woken_together_each_answer_their_own_client(
        parked_context, autojump_clock):
    devices = 5
    async with trio.open_nursery() as nursery:
        parking = await serving(nursery, parked_context)
        started = [start_session(nursery, parked_context) for _ in range(devices)]
        for n, (_, client) in enumerate(started):
            await client.connect(f"dev-{n}", keepalive=60)
        await trio.sleep(PARK_AFTER + 0.1)
        assert len(parking) == devices
        answers: dict[int, object] = {}

        async def ping(n: int, client: Client) -> None:
            await client.send(PingReq())
            answers[n] = await client.next_packet()

        for _ in range(3):  # all wake in the same tick, all park again
            answers.clear()
            async with trio.open_nursery() as pings:
                for n, (_, client) in enumerate(started):
                    pings.start_soon(ping, n, client)
            assert answers == {n: PingResp() for n in range(devices)}
            await trio.sleep(PARK_AFTER + 0.1)
            assert len(parking) == devices
        assert parked_context.live == {session for session, _ in started}
        nursery.cancel_scope.cancel()


async def test_a_parked_session_still_times_out_at_its_keepalive(parked_context,
                                                                 autojump_clock):
    async with trio.open_nursery() as nursery:
        parking = await serving(nursery, parked_context)
        session, client = start_session(nursery, parked_context)
        await client.connect("dev-1", keepalive=10)
        connected_at = trio.current_time()
        await trio.sleep(PARK_AFTER + 0.1)
        assert len(parking) == 1
        assert await client.next_packet() is None  # closed
        assert 15 <= trio.current_time() - connected_at <= 15 + TICK + 0.1
        await ended(session, parked_context)
        assert session.close_reason == "keepalive_timeout"
        assert len(parking) == 0
        nursery.cancel_scope.cancel()


async def test_a_takeover_ends_a_parked_session(parked_context, autojump_clock):
    async with trio.open_nursery() as nursery:
        await serving(nursery, parked_context)
        first, old = await parked(nursery, parked_context, keepalive=60, client_id="same-id")
        second, new = start_session(nursery, parked_context)
        taken_at = trio.current_time()
        await new.connect("same-id", keepalive=60)
        assert await old.next_packet() is None
        assert trio.current_time() - taken_at < 0.1  # at once, not at its keepalive
        await ended(first, parked_context)
        assert first.close_reason == "takeover"
        assert parked_context.live == {second}
        await new.send(PingReq())
        assert await new.next_packet() == PingResp()
        nursery.cancel_scope.cancel()


async def test_shutdown_ends_parked_sessions(parked_context, autojump_clock):
    async with trio.open_nursery() as nursery:
        await serving(nursery, parked_context)
        session, client = await parked(nursery, parked_context)
        session.stop_reading()
        await trio.sleep(1)  # it stays open for the replies still due until close()
        assert session in parked_context.live
        assert session.deliver("late/reply", b"r", QoS.AT_MOST_ONCE) is Delivery.DELIVERED
        assert await client.next_packet() == Publish("late/reply", b"r")
        session.close()
        assert await client.next_packet() is None
        await ended(session, parked_context)
        assert session.close_reason == "shutdown"
        nursery.cancel_scope.cancel()


async def test_a_client_leaving_ends_its_parked_session(parked_context, autojump_clock):
    async with trio.open_nursery() as nursery:
        parking = await serving(nursery, parked_context)
        session, client = await parked(nursery, parked_context)
        await client.stream.aclose()
        await ended(session, parked_context)
        assert session.close_reason in ("connection_closed", "connection_lost")
        assert len(parking) == 0
        assert parked_context.hub.client_count == 0
        nursery.cancel_scope.cancel()


async def test_a_parked_session_gets_its_messages(parked_context, autojump_clock):
    async with trio.open_nursery() as nursery:
        parking = await serving(nursery, parked_context)
        session, client = await parked(nursery, parked_context)
        for n in range(3):
            assert session.deliver(f"push/{n}", b"p", QoS.AT_MOST_ONCE) is Delivery.DELIVERED
            assert await client.next_packet() == Publish(f"push/{n}", b"p")
        assert len(parking) == 1  # sending needs no reading task
        nursery.cancel_scope.cancel()


async def test_stopping_the_parking_ends_the_parked_sessions(parked_context, autojump_clock):
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as sessions:
            await serving(sessions, parked_context)
            session, client = await parked(sessions, parked_context)
            sessions.cancel_scope.cancel()  # as the service at the end of its grace period
        assert await client.next_packet() is None
        assert not parked_context.live
        nursery.cancel_scope.cancel()


async def test_a_session_on_another_stream_never_parks(parked_context, autojump_clock):
    async with trio.open_nursery() as nursery:
        parking = await serving(nursery, parked_context)
        client_end, server_end = trio.testing.memory_stream_pair()  # as WebSocket: no socket
        session = Session(server_end, Peer("websocket", "test:1"), parked_context)
        nursery.start_soon(session.run, nursery)
        client = Client(client_end)
        await client.connect("dev-1", keepalive=10)
        await trio.sleep(14)
        assert len(parking) == 0
        await client.send(PingReq())
        assert await client.next_packet() == PingResp()
        assert await client.next_packet() is None  # the keepalive as before
        await ended(session, parked_context)
        assert session.close_reason == "keepalive_timeout"
        nursery.cancel_scope.cancel()
