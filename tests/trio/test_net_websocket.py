"""WebSocket transport: the byte-stream adapter and the listener's upgrade policy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket,
    wrap_client_stream,
    wrap_server_stream,
)

from kpc_trio.net import Peer, WebSocketStream, serve_websocket
from kpc_trio.net.websocket import select_subprotocol
from tests.clients.websocket_frames import (
    BINARY_FIRST_1,
    BINARY_FIRST_60,
    CLOSE_1000,
    LAST_10,
    ONE_BYTE_CONTINUATION,
    PING,
    TEXT_FRAME,
    close_code,
    hang_up,
    raw_upgrade,
)
from tests.integration.waiting import eventually, logged, within

HOST = "127.0.0.1"


async def _connected_pair(nursery: trio.Nursery) -> tuple[WebSocketStream, WebSocketStream]:
    """Client and server `WebSocketStream`s over an in-memory transport."""
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client: list[WebSocketConnection] = []

    async def connect_client() -> None:
        client.append(await wrap_client_stream(nursery, client_transport, HOST, "/ws"))

    async with trio.open_nursery() as handshake:
        handshake.start_soon(connect_client)
        request = await wrap_server_stream(nursery, server_transport)
        server = await request.accept()
    return WebSocketStream(client[0]), WebSocketStream(server)


async def test_websocket_stream_is_a_well_behaved_trio_stream() -> None:
    async with trio.open_nursery() as nursery:

        async def stream_maker() -> tuple[WebSocketStream, WebSocketStream]:
            return await _connected_pair(nursery)

        await trio.testing.check_two_way_stream(stream_maker, None)
        nursery.cancel_scope.cancel()


def test_subprotocol_selection_follows_client_preference() -> None:
    assert select_subprotocol(["mqttv3.1", "mqtt"]) == "mqttv3.1"
    assert select_subprotocol(["chat", "mqtt"]) == "mqtt"
    assert select_subprotocol(["chat"]) is None
    assert select_subprotocol([]) is None


# ---- through the listener -------------------------------------------------------------------


class RecordingHandler:
    """Reads what the client sends until it closes; remembers peers and received bytes."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.subprotocols: list[str | None] = []
        self.received = bytearray()
        self.errors: list[BaseException] = []
        self.finished = trio.Event()

    async def __call__(self, stream: trio.abc.Stream, peer: Peer) -> None:
        assert isinstance(stream, WebSocketStream)
        self.peers.append(peer)
        self.subprotocols.append(stream.subprotocol)
        try:
            while chunk := await stream.receive_some():
                self.received += chunk
                await stream.send_all(chunk)  # echo, so the client knows it was read
        except trio.BrokenResourceError as exc:
            self.errors.append(exc)
        finally:
            self.finished.set()


@pytest.fixture
async def websocket_server(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[int, RecordingHandler]]:
    handler = RecordingHandler()
    _, port = await nursery.start(
        lambda task_status: serve_websocket(
            handler,
            host=HOST,
            port=0,
            max_packet_size=64,
            handler_nursery=nursery,
            task_status=task_status,
        )
    )
    yield port, handler


async def _receive_exactly(connection: WebSocketConnection, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        with within(10, f"{size} bytes of messages from the server"):
            data += await connection.get_message()
    return bytes(data)


async def test_other_path_is_refused_with_404(
    websocket_server: tuple[int, RecordingHandler],
) -> None:
    port, handler = websocket_server
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket(HOST, port, "/mqtt", use_ssl=False):
            pass
    assert rejected.value.status_code == 404
    assert handler.peers == []


async def test_path_with_query_string_is_accepted(
    websocket_server: tuple[int, RecordingHandler],
) -> None:
    port, handler = websocket_server
    async with open_websocket(HOST, port, "/ws?client=1", use_ssl=False) as ws:
        await ws.send_message(b"\xc0\x00")
        assert await _receive_exactly(ws, 2) == b"\xc0\x00"
    assert handler.peers[0].transport == "websocket"
    assert handler.peers[0].address.startswith(f"{HOST}:")


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["mqtt"], "mqtt"),
        (["mqttv3.1", "mqtt"], "mqttv3.1"),
        (["chat", "mqtt"], "mqtt"),
        ([], None),
        (["chat"], None),
    ],
)
async def test_subprotocol_negotiation(
    websocket_server: tuple[int, RecordingHandler], offered: list[str], selected: str | None
) -> None:
    port, handler = websocket_server
    async with open_websocket(HOST, port, "/ws", use_ssl=False, subprotocols=offered) as ws:
        assert ws.subprotocol == selected
        await ws.send_message(b"\xc0\x00")
        await _receive_exactly(ws, 2)
    assert handler.subprotocols == [selected]


async def test_text_frame_closes_with_1003(
    websocket_server: tuple[int, RecordingHandler],
) -> None:
    port, handler = websocket_server
    async with open_websocket(HOST, port, "/ws", use_ssl=False, subprotocols=["mqtt"]) as ws:
        await ws.send_message("\xc0\x00")
        with pytest.raises(ConnectionClosed) as closed, \
                within(10, "the server's close frame"):
            await ws.get_message()
    assert closed.value.reason.code == 1003
    await handler.finished.wait()
    assert handler.received == b""
    assert len(handler.errors) == 1


async def test_packet_spanning_frames_arrives_whole(
    websocket_server: tuple[int, RecordingHandler],
) -> None:
    port, handler = websocket_server
    publish = b"\x30\x0a\x00\x03a/bhello"  # PUBLISH QoS 0, topic "a/b", payload "hello"
    async with open_websocket(HOST, port, "/ws", use_ssl=False, subprotocols=["mqtt"]) as ws:
        for piece in (publish[:1], publish[1:4], publish[4:]):
            await ws.send_message(piece)
        assert await _receive_exactly(ws, len(publish)) == publish
    await handler.finished.wait()
    assert handler.received == publish


async def test_several_packets_in_one_frame_arrive_in_order(
    websocket_server: tuple[int, RecordingHandler],
) -> None:
    port, handler = websocket_server
    packets = b"\xc0\x00" + b"\x30\x05\x00\x01tab" + b"\xe0\x00"  # PINGREQ, PUBLISH, DISCONNECT
    async with open_websocket(HOST, port, "/ws", use_ssl=False, subprotocols=["mqtt"]) as ws:
        await ws.send_message(packets)
        assert await _receive_exactly(ws, len(packets)) == packets
    await handler.finished.wait()
    assert handler.received == packets


async def test_message_above_max_packet_size_closes_with_1009(
    websocket_server: tuple[int, RecordingHandler],
) -> None:
    port, handler = websocket_server
    async with open_websocket(HOST, port, "/ws", use_ssl=False, subprotocols=["mqtt"]) as ws:
        await ws.send_message(b"\x30" + b"\x00" * (64 + 5))
        with pytest.raises(ConnectionClosed) as closed, \
                within(10, "the server's close frame"):
            await ws.get_message()
    assert closed.value.reason.code == 1009
    await handler.finished.wait()
    assert handler.received == b""


async def test_client_that_never_upgrades_is_dropped_at_the_deadline(
    nursery: trio.Nursery,
) -> None:
    handler = RecordingHandler()
    _, port = await nursery.start(
        lambda task_status: serve_websocket(
            handler,
            host=HOST,
            port=0,
            handshake_timeout=0.2,
            handler_nursery=nursery,
            task_status=task_status,
        )
    )
    async with await trio.open_tcp_stream(HOST, port) as silent:
        with within(10, "the server hanging up on a client that never upgrades"):
            assert await silent.receive_some() == b""  # the server hung up on us
    assert handler.peers == []


# ---- hostile frame sequences, written by hand on a raw socket ---------------------------------


class PassiveHandler:
    """Reads nothing until released, like a session busy elsewhere: trio-websocket's reader then
    handles the whole TCP segment on its own."""

    def __init__(self) -> None:
        self.release = trio.Event()

    async def __call__(self, stream: trio.abc.Stream, peer: Peer) -> None:
        await self.release.wait()


@pytest.mark.parametrize(("first", "code", "after_close", "handler_reads"), [
    # Text frame -> Close 1003 -> the client pings instead of closing (trio-websocket#184).
    (TEXT_FRAME, 1003, PING + CLOSE_1000, True),
    # The size limit is crossed in the last fragment, a ping in the same TCP segment.
    (BINARY_FIRST_60 + LAST_10 + PING, 1009, b"", False),
    # Fragments beyond the limit, a ping in the same segment.
    (BINARY_FIRST_1 + ONE_BYTE_CONTINUATION * 40 + PING, 1009, b"", False),
], ids=["ping-after-1003", "ping-after-1009", "ping-after-too-many-fragments"])
async def test_ping_after_our_close_ends_only_that_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, first: bytes, code: int,
    after_close: bytes, handler_reads: bool,
) -> None:
    reading, passive = RecordingHandler(), PassiveHandler()
    _, port = await nursery.start(
        lambda task_status: serve_websocket(
            reading if handler_reads else passive, host=HOST, port=0, max_packet_size=64,
            max_message_fragments=16, handler_nursery=nursery, task_status=task_status,
        )
    )
    hostile = await raw_upgrade(port)
    await hostile.send_all(first)
    assert await close_code(hostile) == code
    if after_close:
        await hostile.send_all(after_close)
    # The reader has handled the whole segment (the Ping included) before the handler returns
    # and cancels it: a cancellation would hide the reader's error.
    await trio.testing.wait_all_tasks_blocked()
    passive.release.set()
    await hang_up(hostile)
    await hostile.aclose()
    assert logged(caplog, "connection_failed") == []  # the guard held, not the last resort
    # The listener (and this test's nursery) survived: a well-behaved client is served.
    async with open_websocket(HOST, port, "/ws", use_ssl=False, subprotocols=["mqtt"]) as ws:
        assert ws.subprotocol == "mqtt"


async def test_an_error_inside_one_connection_ends_that_connection_only(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[str] = []

    async def failing(stream: trio.abc.Stream, peer: Peer) -> None:
        raise RuntimeError("a transport library's bug")

    _, port = await nursery.start(
        lambda task_status: serve_websocket(
            failing, host=HOST, port=0, on_failure=failures.append, handler_nursery=nursery,
            task_status=task_status,
        )
    )
    for _ in range(2):  # the listener is still there for the second client
        hostile = await raw_upgrade(port)
        await hang_up(hostile)
        await hostile.aclose()
    await eventually(lambda: len(failures) == 2)  # the hang-up may come before the count
    assert failures == ["websocket", "websocket"]
    reasons = [fields["reason"] for fields in logged(caplog, "connection_failed")]
    assert reasons == ["RuntimeError: a transport library's bug"] * 2
