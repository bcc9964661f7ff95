"""The NATS gateway against a scripted NATS server: the test plays the server line by line, to
make happen on cue what a real nats-server will not do (stay silent, close mid-batch, send
garbage, change its INFO)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import pytest
import trio
import trio.testing

from kpc_trio.nats import connection as nats_connection
from kpc_trio.nats.connection import ConnectOptions, NatsConnection
from kpc_trio.nats.gateway import (
    InboundMessage,
    NatsGateway,
    OutboundMessage,
    open_nats_gateway,
)
from tests.integration.waiting import eventually, logged

HOST = "127.0.0.1"
DEADLINE = 10  # bounds every wait: a regression fails instead of hanging
RECONNECT_WAIT = 0.05


@attrs.frozen
class ClientFrame:
    """One command from the gateway: `op` upper-case, its arguments, a PUB's payload."""

    op: str
    args: tuple[str, ...] = ()
    payload: bytes = b""


@attrs.define(eq=False)
class ScriptedConnection:
    """The server side of one gateway connection, driven by the test."""

    stream: trio.SocketStream
    _buffer: bytearray = attrs.field(factory=bytearray)
    done: trio.Event = attrs.field(factory=trio.Event)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        with trio.fail_after(DEADLINE):  # a gateway that never sends fails the test, not hangs it
            data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("the gateway closed the connection")
        self._buffer += data

    async def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    async def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            await self._fill()
        return (await self._take(end + 2))[:-2]

    async def receive(self) -> ClientFrame:
        op, _, rest = (await self._line()).decode().partition(" ")
        op = op.upper()
        if op == "CONNECT":
            return ClientFrame(op, (rest,))
        args = rest.split()
        if op == "PUB":
            payload = await self._take(int(args[-1]) + 2)
            assert payload.endswith(b"\r\n"), f"PUB payload not followed by CRLF: {payload!r}"
            return ClientFrame(op, tuple(args[:-1]), payload[:-2])
        return ClientFrame(op, tuple(args))

    async def expect(self, op: str) -> ClientFrame:
        frame = await self.receive()
        assert frame.op == op, f"expected {op}, got {frame}"
        return frame

    async def handshake(self) -> tuple[dict[str, object], list[ClientFrame]]:
        """Take CONNECT and the SUBs that come with it, answer the PING: (options, SUBs)."""
        options = json.loads((await self.expect("CONNECT")).args[0])
        subscriptions = []
        while (frame := await self.receive()).op == "SUB":
            subscriptions.append(frame)
        assert frame.op == "PING", f"expected the handshake PING, got {frame}"
        await self.send(b"PONG\r\n")
        return options, subscriptions

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)
        self.done.set()


@attrs.define(eq=False)
class ScriptedServer:
    """Accepts connections and hands each to the test, after sending `info`."""

    port: int
    _connections: trio.MemoryReceiveChannel[ScriptedConnection]

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    async def accept(self) -> ScriptedConnection:
        with trio.fail_after(DEADLINE):
            return await self._connections.receive()


INFO = b'INFO {"server_id":"scripted","max_payload":1048576,"proto":1}\r\n'


@asynccontextmanager
async def scripted_nats(info: bytes = INFO) -> AsyncIterator[ScriptedServer]:
    send, receive = trio.open_memory_channel[ScriptedConnection](10)

    async def serve(stream: trio.SocketStream) -> None:
        connection = ScriptedConnection(stream)
        try:
            await stream.send_all(info)
            await send.send(connection)
            await connection.done.wait()
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host=HOST))
        yield ScriptedServer(listeners[0].socket.getsockname()[1], receive)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def undrained_gateway(urls: list[str]) -> AsyncIterator[NatsGateway]:
    """A gateway that reconnects quickly, trying the URLs in the order given; it is cancelled,
    not drained, at the end (the scripted server would have to play the drain too)."""
    options = ConnectOptions(reconnect_wait=RECONNECT_WAIT, randomize=False)
    with trio.CancelScope() as scope:
        async with open_nats_gateway(urls, options=options) as gateway:
            yield gateway
            scope.cancel()


MESSAGE = OutboundMessage("kaa.v1.service.dcx.esp.ClientData", b"data\r\n", reply="inbox.1")
PUB = ClientFrame("PUB", (MESSAGE.subject, MESSAGE.reply), MESSAGE.payload)


async def start_confirmed_publish(nursery: trio.Nursery, gateway: NatsGateway) -> trio.Event:
    """publish_confirmed(MESSAGE) in the background; the event is set once it returned."""
    returned = trio.Event()

    async def publish() -> None:
        await gateway.publish_confirmed([MESSAGE])
        returned.set()

    nursery.start_soon(publish)
    return returned


async def test_a_batch_unconfirmed_when_the_connection_closes_is_published_again() -> None:
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway, \
            trio.open_nursery() as nursery:
        first = await server.accept()
        await first.handshake()
        returned = await start_confirmed_publish(nursery, gateway)
        with trio.fail_after(DEADLINE):
            assert await first.receive() == PUB
            await first.expect("PING")
            await first.close()  # without the PONG

            second = await server.accept()
            await second.handshake()
            assert await second.receive() == PUB
            await second.expect("PING")
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()  # the PUB went out again, but is not confirmed yet
            await second.send(b"PONG\r\n")
            await returned.wait()
        assert gateway.published_messages == 1


async def test_a_pong_that_never_comes_drops_the_connection_and_publishes_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(nats_connection, "CONFIRM_TIMEOUT", 0.2)
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway, \
            trio.open_nursery() as nursery:
        silent = await server.accept()
        await silent.handshake()
        returned = await start_confirmed_publish(nursery, gateway)
        with trio.fail_after(DEADLINE):
            assert await silent.receive() == PUB
            await silent.expect("PING")
            # This server reads on, and answers nothing.
            second = await server.accept()
            await second.handshake()
            assert await second.receive() == PUB
            await second.expect("PING")
            await second.send(b"PONG\r\n")
            await returned.wait()
            with pytest.raises(EOFError):  # the gateway gave up on the silent connection
                await silent.receive()


async def test_subscriptions_go_again_with_every_connect_and_receive_messages() -> None:
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway:
        # Before the gateway's first checkpoint: the first CONNECT carries it too.
        messages = await gateway.subscribe("kaa.v1.replica.r1.>", queue="kpc")
        first = await server.accept()
        _, subscriptions = await first.handshake()
        assert [s.args[:2] for s in subscriptions] == [("kaa.v1.replica.r1.>", "kpc")]
        await first.close()

        second = await server.accept()
        options, subscriptions = await second.handshake()
        assert options["headers"] is False
        assert [s.args[:2] for s in subscriptions] == [("kaa.v1.replica.r1.>", "kpc")]
        sid = subscriptions[0].args[2]
        await second.send(b"MSG kaa.v1.replica.r1.esp.ExtensionData %s re.1 5\r\nreply\r\n" %
                          sid.encode())
        with trio.fail_after(DEADLINE):
            got = await messages.receive()
        assert (got.subject, got.reply, got.payload) == (
            "kaa.v1.replica.r1.esp.ExtensionData", "re.1", b"reply")


async def test_the_servers_ping_is_answered_and_its_info_updates_max_payload() -> None:
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway:
        connection = await server.accept()
        await connection.handshake()
        await eventually(lambda: gateway.connected)
        assert gateway.max_payload == 1048576
        await connection.send(b'INFO {"server_id":"scripted","max_payload":4096}\r\nPING\r\n')
        with trio.fail_after(DEADLINE):
            await connection.expect("PONG")
        # The gateway reads the INFO before the PING it just answered.
        assert gateway.max_payload == 4096


@pytest.mark.expected_errors("nats_protocol_error")
async def test_a_server_sending_garbage_is_dropped_and_reconnected_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway:
        first = await server.accept()
        await first.handshake()
        await eventually(lambda: gateway.connected)
        await first.send(b"HELLO WORLD\r\n")
        second = await server.accept()
        await second.handshake()
        await eventually(lambda: gateway.connected)
        errors = logged(caplog, "nats_protocol_error")
        assert len(errors) == 1 and "HELLO" in str(errors[0]["error"])


async def test_a_message_with_a_subject_that_is_not_utf8_is_delivered_on_the_same_connection(
) -> None:
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway:
        messages = await gateway.subscribe(">")
        first = await server.accept()
        _, subscriptions = await first.handshake()
        sid = subscriptions[0].args[-1]
        frames = b"MSG \xff %(sid)s 3\r\nbad\r\nMSG ok %(sid)s 4\r\ngood\r\n"
        await first.send(frames % {b"sid": sid.encode()})
        with trio.fail_after(10):
            assert await messages.receive() == InboundMessage("\ufffd", "", b"bad")
            assert await messages.receive() == InboundMessage("ok", "", b"good")
        assert gateway.connected


async def test_the_next_url_is_tried_when_the_first_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind((HOST, 0))
        unreachable = f"{HOST}:{closed.getsockname()[1]}"
        async with scripted_nats() as server, \
                undrained_gateway([f"nats://{unreachable}", server.url]) as gateway:
            connection = await server.accept()
            await connection.handshake()
            await eventually(lambda: gateway.connected)
    assert logged(caplog, "nats_error")[0]["server"] == unreachable


async def test_a_tls_url_to_a_server_without_tls_is_refused_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with scripted_nats() as server:
        url = server.url.replace("nats://", "tls://")
        async with undrained_gateway([url]) as gateway:
            await eventually(lambda: bool(logged(caplog, "nats_error")))
            assert not gateway.connected
    assert "offers none" in str(logged(caplog, "nats_error")[0]["error"])


@pytest.mark.expected_errors("nats_handler_failed")
async def test_a_handler_subscription_is_called_in_place_and_survives_its_own_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[InboundMessage] = []

    def handler(message: InboundMessage) -> None:
        if message.payload == b"boom":
            raise RuntimeError("a bug in the handler")
        handled.append(message)

    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway:
        await gateway.subscribe_handler("kaa.replies", handler)
        connection = await server.accept()
        _, subscriptions = await connection.handshake()
        assert subscriptions[0].args[0] == "kaa.replies"
        frames = b"MSG kaa.replies %(sid)s 4\r\nboom\r\nMSG kaa.replies %(sid)s 2\r\nok\r\n"
        await connection.send(frames % {b"sid": subscriptions[0].args[-1].encode()})
        await eventually(lambda: bool(handled))
        assert handled == [InboundMessage("kaa.replies", "", b"ok")]
        await eventually(lambda: gateway.connected)
    assert "a bug in the handler" in str(logged(caplog, "nats_handler_failed")[0]["error"])
    assert not logged(caplog, "nats_reader_failed")  # the connection was kept


@pytest.mark.expected_errors("nats_connection_failed")
async def test_an_unexpected_error_in_a_connection_costs_a_reconnect_not_the_gateway(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    handshake = NatsConnection._handshake
    failures = iter([RuntimeError("a bug in the handshake")])

    async def first_handshake_fails(self: NatsConnection, connection: object) -> str | None:
        for failure in failures:
            raise failure
        return await handshake(self, connection)  # type: ignore[arg-type]

    monkeypatch.setattr(NatsConnection, "_handshake", first_handshake_fails)
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway:
        await server.accept()  # the connection the bug ends
        await (await server.accept()).handshake()
        await eventually(lambda: gateway.connected)
    assert "a bug in the handshake" in str(logged(caplog, "nats_connection_failed")[0]["error"])


def info_line(**fields: object) -> bytes:
    return b"INFO " + json.dumps({"server_id": "scripted", "proto": 1, **fields}).encode() + \
        b"\r\n"


async def test_a_server_learned_from_connect_urls_takes_over_when_the_first_goes() -> None:
    async with scripted_nats() as first_server, scripted_nats() as second_server:
        async with undrained_gateway([first_server.url]) as gateway:
            first = await first_server.accept()
            await first.handshake()
            await first.send(info_line(connect_urls=[f"{HOST}:{second_server.port}"]))
            await eventually(lambda: gateway.connected)
            await first.close()
            second = await second_server.accept()  # a URL NATS_URLS never named
            await second.handshake()
            await eventually(lambda: gateway.connected)


async def test_lame_duck_moves_after_the_new_connection_is_confirmed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    async with scripted_nats() as old_server, scripted_nats() as new_server, \
            undrained_gateway([old_server.url]) as gateway, trio.open_nursery() as nursery:
        await gateway.subscribe("kaa.replies")
        old = await old_server.accept()
        await old.handshake()
        await eventually(lambda: gateway.connected)
        await old.send(info_line(connect_urls=[f"{HOST}:{new_server.port}"], ldm=True))
        new = await new_server.accept()
        options_frame = await new.expect("CONNECT")
        assert json.loads(options_frame.args[0])["protocol"] == 1
        assert (await new.expect("SUB")).args[0] == "kaa.replies"
        await new.expect("PING")
        # Not confirmed yet: publishing still goes to the lame duck, which still answers.
        returned = await start_confirmed_publish(nursery, gateway)
        assert await old.receive() == PUB
        await old.expect("PING")
        await old.send(b"PONG\r\n")
        with trio.fail_after(DEADLINE):
            await returned.wait()
        await new.send(b"PONG\r\n")  # confirmed: the move happens
        # The lame duck is unsubscribed, answers what is left, and is closed.
        assert (await old.expect("UNSUB")).args[0] == "1"
        await old.expect("PING")
        await old.send(b"PONG\r\n")
        with pytest.raises(EOFError):
            await old.receive()
        returned = await start_confirmed_publish(nursery, gateway)
        assert await new.receive() == PUB
        await new.expect("PING")
        await new.send(b"PONG\r\n")
        with trio.fail_after(DEADLINE):
            await returned.wait()
        assert gateway.connected
    assert logged(caplog, "nats_lame_duck")[0]["server"] == f"{HOST}:{old_server.port}"


@pytest.mark.expected_errors("nats_publish_refused")
async def test_a_refused_publish_is_reported_for_its_batch_only() -> None:
    refused = OutboundMessage("kaa.v1.service.denied.esp.ClientData", b"no")
    async with scripted_nats() as server, undrained_gateway([server.url]) as gateway, \
            trio.open_nursery() as nursery:
        connection = await server.accept()
        await connection.handshake()
        await eventually(lambda: gateway.connected)
        outcome: list[object] = []

        async def publish() -> None:
            outcome.append(await gateway.publish_confirmed([MESSAGE, refused, MESSAGE]))

        nursery.start_soon(publish)
        assert [(await connection.receive()).op for _ in range(4)] == ["PUB"] * 3 + ["PING"]
        await connection.send(b"-ERR 'Permissions Violation for Publish to "
                              b"\"kaa.v1.service.denied.esp.ClientData\"'\r\nPONG\r\n")
        await eventually(lambda: bool(outcome))
        assert list(outcome[0]) == [1]  # type: ignore[call-overload]
        returned = await start_confirmed_publish(nursery, gateway)  # the next batch is clean
        assert await connection.receive() == PUB
        await connection.expect("PING")
        await connection.send(b"PONG\r\n")
        with trio.fail_after(DEADLINE):
            await returned.wait()
        assert gateway.connected  # a permissions violation does not end the connection
