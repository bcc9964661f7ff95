"""The NATS gateway against a real nats-server, an independent nats-py client on the far side."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from itertools import count

import attrs
import pytest
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg

from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.nats.gateway import (
    InboundMessage,
    MessageRejectedError,
    NatsGateway,
    NatsUnavailableError,
    OutboundMessage,
    open_nats_gateway,
    redact_url,
)
from tests.integration.waiting import eventually, logged, within

_subject_ids = count()


@pytest.fixture
def subject() -> str:
    """A subject prefix no other test uses (the nats_server fixture is shared)."""
    return f"gwtest.{next(_subject_ids)}"


@attrs.define
class AsyncioPeer:
    """A plain nats-py client on its own asyncio loop thread: the black-box other side.
    Its methods block, so trio tests call them through trio.to_thread.run_sync."""

    url: str
    received: list[Msg] = attrs.field(factory=list)
    _client: Client = attrs.field(factory=Client)
    _loop: asyncio.AbstractEventLoop = attrs.field(factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None

    def __enter__(self) -> AsyncioPeer:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._client.connect(self.url, allow_reconnect=False))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join()
        self._loop.close()

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def subscribe(self, subject: str) -> None:
        async def record(msg: Msg) -> None:
            self.received.append(msg)

        async def subscribe_and_flush() -> None:
            await self._client.subscribe(subject, cb=record)
            await self._client.flush()

        self._call(subscribe_and_flush())

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        async def publish_and_flush() -> None:
            await self._client.publish(subject, payload, reply=reply)
            await self._client.flush()

        self._call(publish_and_flush())


@pytest.fixture
def peer(nats_server: NatsServerProcess) -> Iterator[AsyncioPeer]:
    with AsyncioPeer(nats_server.url) as client:
        yield client


async def connected(gateway: NatsGateway) -> NatsGateway:
    await eventually(lambda: gateway.connected)
    return gateway


async def test_publish_confirmed_delivers_exactly_the_messages_in_order(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    await trio.to_thread.run_sync(peer.subscribe, f"{subject}.>")
    groups = [
        [OutboundMessage(f"{subject}.a", b"1"),
         OutboundMessage(f"{subject}.b", b"2", reply="re.2")],
        [OutboundMessage(f"{subject}.a", bytes([n])) for n in range(100)],
    ]
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        for group in groups:
            await gateway.publish_confirmed(group)
        expected = [m for group in groups for m in group]
        await eventually(lambda: len(peer.received) >= len(expected))
        assert gateway.published_messages == len(expected)
        assert gateway.publish_batches >= 1
    got = [OutboundMessage(m.subject, m.data, m.reply) for m in peer.received]
    assert got == expected


async def test_concurrent_confirmed_publishers_share_batches(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    await trio.to_thread.run_sync(peer.subscribe, subject)
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(gateway.publish_confirmed,
                                   [OutboundMessage(subject, str(n).encode())])
        assert gateway.published_messages == 50
        assert gateway.publish_batches < 50
    await eventually(lambda: len(peer.received) == 50)
    assert sorted(int(m.data) for m in peer.received) == list(range(50))


async def test_publish_nowait_is_delivered(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    await trio.to_thread.run_sync(peer.subscribe, subject)
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        assert all(gateway.publish_nowait(OutboundMessage(subject, b"%d" % n)) for n in range(10))
        await eventually(lambda: len(peer.received) == 10)
        assert gateway.dropped_outbound == 0
    assert [m.data for m in peer.received] == [b"%d" % n for n in range(10)]


async def test_publish_nowait_reports_a_full_queue(
    nats_server: NatsServerProcess, subject: str
) -> None:
    async with open_nats_gateway([nats_server.url], queue_capacity=3) as gateway:
        await connected(gateway)
        # No checkpoint in between, so the publisher task cannot empty the queue meanwhile: three
        # messages fill the queue (plus one handed straight to the publisher if it was idle).
        accepted = [gateway.publish_nowait(OutboundMessage(subject, b"x")) for _ in range(6)]
        taken = accepted.count(True)
        assert taken in (3, 4)
        assert accepted == [True] * taken + [False] * (6 - taken)
        assert gateway.dropped_outbound == 6 - taken


async def test_the_outbox_bound_counts_messages_not_publish_calls(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    await trio.to_thread.run_sync(peer.subscribe, subject)
    async with open_nats_gateway([nats_server.url], queue_capacity=5) as gateway:
        await connected(gateway)
        # No checkpoint in between: the publisher cannot take anything meanwhile.
        assert await gateway.publish([OutboundMessage(subject, b"a")] * 8)  # alone: may exceed
        assert not gateway.publish_nowait(OutboundMessage(subject, b"b"))  # 8 of 5 queued
        await eventually(lambda: len(peer.received) == 8)
        assert gateway.publish_nowait(OutboundMessage(subject, b"c"))  # taken: room again
        await eventually(lambda: len(peer.received) == 9)
        assert gateway.dropped_outbound == 1
    assert [m.data for m in peer.received] == [b"a"] * 8 + [b"c"]


async def test_subscribe_delivers_subject_reply_and_payload(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        messages = await gateway.subscribe(f"{subject}.*")
        await gateway.sync()  # the server has the SUB before the peer publishes
        await trio.to_thread.run_sync(peer.publish, f"{subject}.req", b"ping", "inbox.1")
        with trio.fail_after(10):
            got = await messages.receive()
    assert got == InboundMessage(subject=f"{subject}.req", reply="inbox.1", payload=b"ping")


async def test_request_reply_between_two_gateways(
    nats_server: NatsServerProcess, subject: str
) -> None:
    async with open_nats_gateway([nats_server.url]) as server, \
            open_nats_gateway([nats_server.url]) as client:
        requests = await server.subscribe(f"{subject}.service")
        replies = await client.subscribe(f"{subject}.inbox")
        await connected(server)
        await connected(client)
        await client.publish_confirmed(
            [OutboundMessage(f"{subject}.service", b"question", reply=f"{subject}.inbox")])
        with trio.fail_after(10):
            request = await requests.receive()
            await server.publish_confirmed([OutboundMessage(request.reply, b"answer")])
            reply = await replies.receive()
    assert reply.payload == b"answer"


async def test_queue_group_delivers_each_message_to_one_member(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        members = [await gateway.subscribe(subject, queue="workers") for _ in range(2)]
        everything = await gateway.subscribe(subject)
        await gateway.sync()  # the server has the SUB before the peer publishes
        for n in range(20):
            await trio.to_thread.run_sync(peer.publish, subject, b"%d" % n)
        with within(10, "20 messages on the plain subscription"):
            all_payloads = [(await everything.receive()).payload for _ in range(20)]
        # Each subscription crosses into trio on its own: wait until the members have 20 too.
        await eventually(
            lambda: sum(c.statistics().current_buffer_used for c in members) >= 20)
        member_payloads = [m.payload for channel in members for m in _drain_ready(channel)]
    assert all_payloads == [b"%d" % n for n in range(20)]
    assert sorted(member_payloads, key=int) == all_payloads


def _drain_ready(channel: trio.MemoryReceiveChannel[InboundMessage]) -> list[InboundMessage]:
    ready = []
    while True:
        try:
            ready.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return ready


async def test_full_inbound_channel_drops_and_counts(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        messages = await gateway.subscribe(subject, capacity=2)
        await gateway.sync()  # the server has the SUB before the peer publishes
        for n in range(10):
            await trio.to_thread.run_sync(peer.publish, subject, b"%d" % n)
        await eventually(lambda: gateway.dropped_inbound == 8)
        kept = [m.payload for m in _drain_ready(messages)]
    assert kept == [b"0", b"1"]


async def test_closing_the_channel_unsubscribes(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        abandoned = await gateway.subscribe(subject)
        kept = await gateway.subscribe(subject)
        await abandoned.aclose()
        await gateway.sync()  # the server has the SUB before the peer publishes
        await trio.to_thread.run_sync(peer.publish, subject, b"1")
        with within(10, "message 1 on the kept subscription"):
            assert (await kept.receive()).payload == b"1"
        await trio.to_thread.run_sync(peer.publish, subject, b"2")
        with within(10, "message 2 on the kept subscription"):
            assert (await kept.receive()).payload == b"2"
    # Only the first message can find the abandoned channel; later ones are not even sent to us.
    assert gateway.dropped_inbound <= 1


async def test_oversized_payload_is_rejected_and_the_gateway_carries_on(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    await trio.to_thread.run_sync(peer.subscribe, subject)
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        with pytest.raises(MessageRejectedError, match="max_payload"):
            await gateway.publish_confirmed(
                [OutboundMessage(subject, b"ok"), OutboundMessage(subject, b"x" * (2 << 20))])
        await gateway.publish_confirmed([OutboundMessage(subject, b"after")])
    await eventually(lambda: len(peer.received) == 1)
    assert peer.received[0].data == b"after"  # nothing of the rejected group went out


async def test_credentials_in_url(
    nats_server_factory: Callable[..., NatsServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory(user="kpc", password="s3cret")
    assert "kpc:s3cret@" in server.url
    caplog.set_level(logging.DEBUG)
    async with open_nats_gateway([server.url]) as gateway:
        messages = await gateway.subscribe("secured")
        await connected(gateway)
        await gateway.publish_confirmed([OutboundMessage("secured", b"hi")])
        with trio.fail_after(10):
            assert (await messages.receive()).payload == b"hi"
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'kpc_fields', {})}" for r in caplog.records)
    assert "nats_connected" in logged
    assert "s3cret" not in logged


async def test_wrong_credentials_keep_the_gateway_disconnected(
    nats_server_factory: Callable[..., NatsServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory(user="kpc", password="s3cret")
    url = server.url.replace("s3cret", "wrong")

    def refusals() -> int:
        return sum("Authorization" in str(fields.get("error"))
                   for fields in logged(caplog, "nats_error"))

    async with open_nats_gateway([url], reconnect_wait=0.05) as gateway:
        await eventually(lambda: refusals() >= 2)  # refused, and refused again on retry
        assert not gateway.connected
        with pytest.raises(NatsUnavailableError):
            await gateway.publish_confirmed([OutboundMessage("x", b"")], fail_fast=True)


def test_redact_url_hides_passwords_and_tokens() -> None:
    assert redact_url("nats://user:pass@host:4222") == "nats://user:***@host:4222"
    assert redact_url("nats://tok3n@host:4222") == "nats://***@host:4222"
    assert redact_url("nats://host:4222") == "nats://host:4222"


async def test_outage_blocks_confirmed_publish_until_nats_is_back(
    nats_server_factory: Callable[..., NatsServerProcess], subject: str
) -> None:
    server = nats_server_factory()
    changes: list[bool] = []
    async with open_nats_gateway([server.url], reconnect_wait=0.05,
                                 on_connection_change=changes.append) as gateway:
        messages = await gateway.subscribe(subject)
        await connected(gateway)
        await trio.to_thread.run_sync(server.stop)
        await eventually(lambda: not gateway.connected)
        assert not gateway.publish_nowait(OutboundMessage(subject, b"lost"))

        published = trio.Event()

        async def publish() -> None:
            await gateway.publish_confirmed([OutboundMessage(subject, b"kept")])
            published.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await trio.sleep(0.3)
            assert not published.is_set()
            assert not gateway.connected
            await trio.to_thread.run_sync(server.start)
            with trio.fail_after(10):
                await published.wait()
        with trio.fail_after(10):
            got = await messages.receive()
    assert got.payload == b"kept"
    assert changes[:3] == [True, False, True]
    assert gateway.dropped_outbound == 1


async def test_cancelled_confirmed_publish_does_not_break_the_gateway(
    nats_server_factory: Callable[..., NatsServerProcess], subject: str
) -> None:
    server = nats_server_factory()
    async with open_nats_gateway([server.url], reconnect_wait=0.05) as gateway:
        messages = await gateway.subscribe(subject)
        await connected(gateway)
        await trio.to_thread.run_sync(server.stop)
        await eventually(lambda: not gateway.connected)
        with trio.move_on_after(0.2) as waiting:
            await gateway.publish_confirmed([OutboundMessage(subject, b"abandoned")])
        assert waiting.cancelled_caught
        await trio.to_thread.run_sync(server.start)
        with trio.fail_after(10):
            await gateway.publish_confirmed([OutboundMessage(subject, b"next")])
            payloads = [(await messages.receive()).payload for _ in range(2)]
    # At-least-once: the abandoned message still went out, before the next one.
    assert payloads == [b"abandoned", b"next"]


async def test_starts_without_nats_and_connects_when_it_appears(
    nats_server_factory: Callable[..., NatsServerProcess], subject: str
) -> None:
    server = nats_server_factory()
    await trio.to_thread.run_sync(server.stop)  # keeps its port: nothing listens there now
    async with open_nats_gateway([server.url], reconnect_wait=0.05) as gateway:
        messages = await gateway.subscribe(subject)  # registered once NATS is reachable
        await trio.sleep(0.2)
        assert not gateway.connected
        await trio.to_thread.run_sync(server.start)
        await connected(gateway)
        await gateway.publish_confirmed([OutboundMessage(subject, b"hello")])
        with trio.fail_after(10):
            assert (await messages.receive()).payload == b"hello"


async def test_exit_drains_queued_messages_and_closes_subscriptions(
    nats_server: NatsServerProcess, peer: AsyncioPeer, subject: str
) -> None:
    await trio.to_thread.run_sync(peer.subscribe, subject)
    async with open_nats_gateway([nats_server.url]) as gateway:
        await connected(gateway)
        messages = await gateway.subscribe(f"{subject}.in")
        for n in range(100):
            assert gateway.publish_nowait(OutboundMessage(subject, b"%d" % n))
    await eventually(lambda: len(peer.received) == 100)
    with pytest.raises(trio.EndOfChannel), within(10, "the end of the drained subscription"):
        await messages.receive()
    assert not gateway.connected
    with pytest.raises(NatsUnavailableError):
        await gateway.publish_confirmed([OutboundMessage(subject, b"late")])
    assert not gateway.publish_nowait(OutboundMessage(subject, b"late"))


async def test_body_exception_propagates_unwrapped(nats_server: NatsServerProcess) -> None:
    with pytest.raises(KeyError):
        async with open_nats_gateway([nats_server.url]):
            raise KeyError("boom")


async def test_shutdown_during_outage_fails_pending_confirmed_publishes(
    nats_server_factory: Callable[..., NatsServerProcess], subject: str
) -> None:
    server = nats_server_factory()
    errors: list[Exception] = []

    async def publish(gateway: NatsGateway) -> None:
        try:
            await gateway.publish_confirmed([OutboundMessage(subject, b"never")])
        except NatsUnavailableError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(0.5):  # the service's shutdown deadline
            async with open_nats_gateway([server.url], reconnect_wait=0.05) as gateway:
                await connected(gateway)
                await trio.to_thread.run_sync(server.stop)
                await eventually(lambda: not gateway.connected)
                nursery.start_soon(publish, gateway)
                await trio.sleep(0.1)
    assert len(errors) == 1


async def test_a_subject_that_is_not_utf8_does_not_end_the_gateway(
    nats_server: NatsServerProcess, subject: str
) -> None:
    async with open_nats_gateway([nats_server.url], reconnect_wait=0.05) as gateway:
        messages = await gateway.subscribe(f"{subject}.>")
        await connected(gateway)
        await gateway.sync()
        # nats-py only publishes str subjects: another client speaks raw NATS.
        other = await trio.open_tcp_stream("127.0.0.1", nats_server.port)
        async with other:
            await other.send_all(b'CONNECT {"verbose":false}\r\nPUB %s.\xff 3\r\nbad\r\nPING\r\n'
                                 % subject.encode())
            with trio.fail_after(10):
                while b"PONG" not in await other.receive_some(4096):
                    pass
        await gateway.publish_confirmed([OutboundMessage(f"{subject}.after", b"after")])
        with trio.fail_after(10):
            while (await messages.receive()).payload != b"after":
                pass
