"""Session timing rules over in-memory streams with trio's autojump clock: connect timeout,
keepalive at 1.5x the client's value, client-id takeover. No sockets, no NATS: these rules live
in the session, and the relay through a real nats-server is tested in tests/integration."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio
import trio.testing

from kpc_trio.auth import EndpointTokenResolver
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.hub import Hub
from kpc_trio.kaa.kp1 import ApplicationRegistry
from kpc_trio.metrics import Metrics
from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.packets import ConnAck, ConnAckCode, Connect, PingReq, PingResp, Publish, QoS
from kpc_trio.net import Peer
from kpc_trio.relay import Relay
from kpc_trio.session import Delivery, Session, SessionContext, SessionLimits
from tests.fake_nats import FakeNats
from tests.integration.waiting import logged, within

CONNECT_TIMEOUT = 10.0
#: Longest wait for the session's next bytes (or its close): past every keepalive deadline these
#: tests reach (1.5 x 60 s), and virtual under the autojump clock, so a hang fails at once.
NEXT_PACKET_DEADLINE = 120.0


@pytest.fixture
def context() -> SessionContext:
    gateway = FakeNats()
    metrics = Metrics()
    return SessionContext(
        hub=Hub(),
        gateway=gateway,
        relay=Relay(ApplicationRegistry.from_mappings({}, {}), replica_id="r1"),
        resolver=EndpointTokenResolver(
            gateway, provider="cm", replica_id="r1", request_timeout=5, ttl=60,
            negative_ttl=5, max_entries=10, metrics=metrics),
        events=ConnectivityEvents(gateway, kpc_instance="kpc", replica_id="r1"),
        metrics=metrics,
        limits=SessionLimits(connect_timeout=CONNECT_TIMEOUT),
    )


@attrs.define
class Client:
    """The client end of an in-memory connection to a running Session."""

    stream: trio.abc.Stream
    decoder: Decoder = attrs.field(factory=lambda: Decoder(1 << 20))

    async def send(self, *packets: object) -> None:
        await self.stream.send_all(b"".join(encode(p) for p in packets))  # type: ignore[arg-type]

    async def connect(self, client_id: str, keepalive: int) -> None:
        """CONNECT with a clean session; the server must accept it."""
        await self.send(Connect("MQTT", 4, client_id, True, keepalive=keepalive))
        assert await self.next_packet() == ConnAck(ConnAckCode.ACCEPTED)

    async def next_packet(self) -> object | None:
        """The next packet from the server, None once the server closed the connection."""
        while (packet := self.decoder.next_packet()) is None:
            with within(NEXT_PACKET_DEADLINE, "a packet or the close from the session"):
                data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.feed(data)
        return packet


async def start_session(nursery: trio.Nursery, context: SessionContext,
                        finished: dict[Session, float]) -> tuple[Session, Client]:
    client_end, server_end = trio.testing.memory_stream_pair()
    session = Session(server_end, Peer("tcp", "test:1"), context)

    async def run() -> None:
        await session.run(nursery)
        finished[session] = trio.current_time()

    nursery.start_soon(run)
    return session, Client(client_end)


async def test_a_socket_that_never_sends_connect_is_closed(context, autojump_clock):
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        assert await client.next_packet() is None  # closed without a CONNACK
    assert session.close_reason == "connect_timeout"
    assert finished[session] == pytest.approx(CONNECT_TIMEOUT)


async def test_keepalive_is_enforced_at_one_and_a_half_times_the_clients_value(
        context, autojump_clock):
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        await client.connect("dev-1", keepalive=10)
        await trio.sleep(14)  # within 1.5 x 10 s: a PINGREQ keeps the connection
        await client.send(PingReq())
        assert await client.next_packet() == PingResp()
        pinged_at = trio.current_time()
        assert await client.next_packet() is None  # then silence: closed
    assert session.close_reason == "keepalive_timeout"
    assert finished[session] - pinged_at == pytest.approx(15)


async def test_keepalive_zero_means_no_timeout(context, autojump_clock):
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        await client.connect("dev-1", keepalive=0)
        await trio.sleep(24 * 3600)
        assert session not in finished
        await client.stream.aclose()
    assert session.close_reason in ("connection_closed", "connection_lost")


async def test_a_second_connection_with_the_same_client_id_takes_over(context, autojump_clock):
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        first, old = await start_session(nursery, context, finished)
        await old.connect("same-id", keepalive=60)
        second, new = await start_session(nursery, context, finished)
        await new.connect("same-id", keepalive=60)
        assert await old.next_packet() is None  # the old connection is closed
        assert first.close_reason == "takeover"
        assert second not in finished
        assert context.hub.client_count == 1
        await new.send(PingReq())
        assert await new.next_packet() == PingResp()  # the new one is served
        await new.stream.aclose()
    assert context.hub.client_count == 0


async def test_a_partial_connect_still_times_out(context, autojump_clock):
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        connect = encode(Connect("MQTT", 4, "dev-1", True, keepalive=0))
        await trio.sleep(1)
        await client.stream.send_all(connect[:5])  # a read that completes no packet
        assert await client.next_packet() is None
    assert session.close_reason == "connect_timeout"
    assert finished[session] == pytest.approx(CONNECT_TIMEOUT)


async def test_stop_reading_then_close_ends_an_idle_session_as_a_shutdown(context, autojump_clock):
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        await client.connect("dev-1", keepalive=0)
        await trio.sleep(5)
        session.stop_reading()
        await trio.sleep(1)  # it stays open for the replies still due until close()
        assert session not in finished
        session.close()
        assert await client.next_packet() is None
    assert session.close_reason == "shutdown"
    assert finished[session] == pytest.approx(6)


async def test_close_alone_ends_a_session_that_missed_stop_reading(context, autojump_clock):
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        await client.connect("dev-1", keepalive=0)
        await trio.sleep(2)
        session.close()
        assert await client.next_packet() is None
    assert session.close_reason == "shutdown"
    assert finished[session] == pytest.approx(2)


async def test_repeated_rejections_are_logged_once_and_all_counted(context, autojump_clock,
                                                                    caplog):
    caplog.set_level(logging.INFO)
    rejected = 3_000
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        # The longest client id accepted (a longer one gets CONNACK 2): in every log line.
        await client.connect("c" * SessionLimits().max_client_id_length, keepalive=0)
        # Unknown appversion (the registry is empty): each one answered with a 404.
        await client.send(*(Publish(f"kp1/nowhere/dcx/{n}", b"") for n in range(1, rejected + 1)))
        for n in range(1, rejected + 1):
            answer = await client.next_packet()
            assert isinstance(answer, Publish) and answer.topic == f"kp1/nowhere/dcx/{n}/error"
        await client.stream.aclose()
    assert len(logged(caplog, "request_rejected")) == 1
    assert [(fields["repeated_event"], fields["count"])
            for fields in logged(caplog, "events_repeated")] == [("request_rejected", rejected - 1)]
    assert context.metrics.requests_rejected.labels("404")._value.get() == rejected


async def test_a_qos1_subscriber_that_never_acknowledges_is_one_slow_consumer(
        context, autojump_clock):
    context = attrs.evolve(context, limits=SessionLimits(max_outbox_bytes=1 << 30))
    finished: dict[Session, float] = {}
    async with trio.open_nursery() as nursery:
        session, client = await start_session(nursery, context, finished)
        await client.connect("never-acks", keepalive=0)
        outcomes = [session.deliver("kp1/v1/cex/t/command", b"x", QoS.AT_LEAST_ONCE)
                    for _ in range(65_536)]  # one more than there are packet ids
        assert outcomes == [Delivery.DELIVERED] * 65_535 + [Delivery.DROPPED]
        while await client.next_packet() is not None:
            pass
    dropped = context.metrics.messages_dropped
    assert dropped.labels("slow_consumer")._value.get() == 1
    assert dropped.labels("invalid_topic")._value.get() == 0
    assert session.close_reason == "slow_consumer"
