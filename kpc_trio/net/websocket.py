"""MQTT over WebSocket: a `trio.abc.Stream` of MQTT bytes over trio-websocket binary messages.

WebSocket message boundaries mean nothing to MQTT: a packet may span several messages and one
message may carry several packets, so the adapter is a plain byte stream and the MQTT codec does
the framing, exactly as for TCP.

Sub-protocol policy: the first of the client's offered sub-protocols that we support (`mqtt`,
`mqttv3.1`) is selected. A client that offers none of them (or nothing at all, e.g. a debugging
tool) is still accepted without a sub-protocol: the bytes are MQTT either way and the MQTT codec
rejects anything else at CONNECT.

trio-websocket's frame reader runs in a task of its own, and whatever it raises would leave the
connection's nursery and, from there, the sessions nursery: one client could stop the service.
`_GuardedConnection` closes the hole a client can open at will (python-trio/trio-websocket#184:
a Ping received after our Close frame is answered, wsproto refuses to send the Pong in state
LOCAL_CLOSING and raises `LocalProtocolError` in the reader) and bounds a message in fragments as
well as bytes; `_run_frame_reader` ends the one connection on anything else the reader raises.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NoReturn
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from kpc_trio.logs import get_logger
from kpc_trio.net.edge import NO_POLICY, Edge, EdgeSettings
from kpc_trio.net.forwarded import NO_PROXIES, TrustedProxies, forwarded_client
from kpc_trio.net.listeners import (
    GRACEFUL_CLOSE_TIMEOUT,
    BoundAddress,
    ConnectionFailureHook,
    closing_stream,
    contain_failures,
    ignore_connection_failure,
    peer_address,
    serve_socket_listeners,
)
from kpc_trio.net.peer import ConnectionHandler, Peer
from kpc_trio.net.socket_stream import LeanSocketStream

log = get_logger(__name__)

SUPPORTED_SUBPROTOCOLS = ("mqtt", "mqttv3.1")
# A WebSocket message may hold one whole MQTT packet: remaining length plus the fixed header
# (1 type byte + up to 4 length bytes).
MQTT_FIXED_HEADER_MAX_LEN = 5
DEFAULT_MAX_PACKET_SIZE = 1_048_576  # kaa.kpc.transports.mqtt.max-packet-size
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: kaa.kpc.transports.mqtt.websocket.max-message-fragments: one MQTT packet needs one frame;
#: each frame costs a parse and a list entry, so a million 1-byte frames must not be one message.
DEFAULT_MAX_MESSAGE_FRAGMENTS = 1024

# RFC 6455 close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_MESSAGE_TOO_BIG = 1009


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """The client's first offered sub-protocol that speaks MQTT, or None."""
    return next((name for name in offered if name in SUPPORTED_SUBPROTOCOLS), None)


def max_message_size(max_packet_size: int) -> int:
    return max_packet_size + MQTT_FIXED_HEADER_MAX_LEN


class _GuardedConnection(WebSocketConnection):
    """trio-websocket's server connection with the guards a hostile client needs.

    Overrides two of its (private) event handlers, so trio-websocket is pinned in pyproject.toml;
    the tests in tests/trio/test_net_websocket.py write the offending frames by hand.
    """

    def __init__(self, stream: trio.abc.Stream, *, max_message_size: int,
                 max_message_fragments: int) -> None:
        super().__init__(stream, WSConnection(ConnectionType.SERVER),
                         max_message_size=max_message_size)
        self._max_fragments = max_message_fragments
        self._fragments = 0  # frames of the message being received

    async def _handle_ping_event(self, event: Ping) -> None:
        # trio-websocket#184: once our Close frame is out, wsproto raises on a Pong, and the
        # reader task would take the exception (and the service) with it. RFC 6455 5.5.1 lets
        # us ignore everything but the Close after sending ours.
        if self._wsproto.state is ConnectionState.OPEN:
            await super()._handle_ping_event(event)

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        if self._wsproto.state is not ConnectionState.OPEN:
            return  # after our Close (1003, 1009): answering would raise, as for the Ping above
        if event.frame_finished:
            self._fragments += 1
        if self._fragments > self._max_fragments:
            reason = f"Exceeded maximum message fragments: {self._max_fragments}"
            self._message_size, self._message_parts = 0, []
            self._close_reason = CloseReason(CLOSE_MESSAGE_TOO_BIG, reason)
            await self._send(CloseConnection(code=CLOSE_MESSAGE_TOO_BIG, reason=reason))
            await self._recv_channel.aclose()
            self._reader_running = False
            return
        if event.message_finished:
            self._fragments = 0
        await super()._handle_message_event(event)


async def _run_frame_reader(connection: _GuardedConnection, stream: trio.abc.Stream, peer: Peer,
                            on_failure: ConnectionFailureHook) -> None:
    """trio-websocket's reader task; whatever it still raises ends this connection only (the
    handler then reads a broken stream)."""
    async with contain_failures(peer, on_failure):
        try:
            await connection._reader_task()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise


class WebSocketStream(trio.abc.Stream):
    """Byte stream over the binary messages of an open `WebSocketConnection`.

    A text message is a protocol violation: the connection is closed with 1003 and
    `receive_some` raises `trio.BrokenResourceError`. A close by the peer with 1000/1001 reads
    as end of stream (b""), any other close code as `trio.BrokenResourceError`.
    """

    def __init__(
        self, connection: WebSocketConnection, *, close_timeout: float = GRACEFUL_CLOSE_TIMEOUT
    ) -> None:
        self._connection = connection
        self._close_timeout = close_timeout
        self._pending = memoryview(b"")
        self._closed = False
        self._sending = False
        self._receiving = False

    @property
    def subprotocol(self) -> str | None:
        return self._connection.subprotocol

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this WebSocket")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("this WebSocket stream was closed")
            if not data:  # an empty message would read as end of stream on the other side
                await trio.lowlevel.checkpoint()
                return
            try:
                await self._connection.send_message(bytes(data))
            except ConnectionClosed as exc:
                if self._closed:
                    raise trio.ClosedResourceError("this WebSocket stream was closed") from exc
                raise trio.BrokenResourceError(f"WebSocket closed: {exc.reason}") from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this WebSocket stream was closed")
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this WebSocket")
        self._receiving = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("this WebSocket stream was closed")
            if self._pending:
                await trio.lowlevel.checkpoint()
            else:
                self._pending = memoryview(await self._next_binary_message())
            end = len(self._pending) if max_bytes is None else max_bytes
            chunk, self._pending = self._pending[:end], self._pending[end:]
            return bytes(chunk)
        finally:
            self._receiving = False

    async def _next_binary_message(self) -> bytes:
        while True:
            try:
                message = await self._connection.get_message()
            except ConnectionClosed as exc:
                if self._closed:
                    raise trio.ClosedResourceError("this WebSocket stream was closed") from exc
                if exc.reason is not None and exc.reason.code in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
                    # trio-websocket reports an already-closed channel without yielding.
                    await trio.lowlevel.checkpoint()
                    return b""
                raise trio.BrokenResourceError(f"WebSocket closed: {exc.reason}") from exc
            if isinstance(message, str):
                with trio.move_on_after(self._close_timeout):
                    await self._connection.aclose(
                        CLOSE_UNSUPPORTED_DATA, "MQTT over WebSocket uses binary frames"
                    )
                raise trio.BrokenResourceError(
                    "peer sent a text frame; MQTT over WebSocket uses binary frames only"
                )
            if message:  # an empty binary message carries nothing; b"" would mean EOF here
                return message

    async def aclose(self) -> None:
        self._closed = True
        # Waits for the peer's close frame; the timeout (or a cancellation) closes the socket.
        with trio.move_on_after(self._close_timeout):
            await self._connection.aclose()
        await trio.lowlevel.checkpoint()


@attrs.frozen
class WebSocketSettings:
    path: str = "/ws"
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: Whose X-Forwarded-For / Forwarded header names the client (an ingress in front).
    trusted_proxies: TrustedProxies = NO_PROXIES
    max_message_fragments: int = DEFAULT_MAX_MESSAGE_FRAGMENTS
    on_failure: ConnectionFailureHook = ignore_connection_failure


async def run_websocket_connection(
    stream: trio.abc.Stream,
    handler: ConnectionHandler,
    peer: Peer,
    settings: WebSocketSettings,
) -> None:
    """Serve one client: HTTP upgrade on `settings.path` (other paths get 404), then `handler`.

    The caller owns `stream` and closes it afterwards.
    """
    # Hosts trio-websocket's frame reader for this one connection.
    async with trio.open_nursery() as protocol_nursery:
        upgraded = await _upgrade(protocol_nursery, stream, peer, settings)
        if upgraded is not None:
            connection, peer = upgraded
            async with closing_stream(WebSocketStream(connection)) as websocket_stream:
                await handler(websocket_stream, peer)
        # The frame reader would otherwise wait on a socket that our caller closes after us.
        protocol_nursery.cancel_scope.cancel()


async def _upgrade(
    nursery: trio.Nursery, stream: trio.abc.Stream, peer: Peer, settings: WebSocketSettings
) -> tuple[WebSocketConnection, Peer] | None:
    """The open connection and the client (named by a trusted proxy's forwarding headers, if
    any), or None if the upgrade was refused, abandoned or too slow."""
    with trio.move_on_after(settings.handshake_timeout):
        try:
            request = await _open_request(nursery, stream, peer, settings)
            if urlsplit(request.path).path != settings.path:
                log.info(
                    "websocket_rejected", address=peer.address, path=request.path, status=404
                )
                await request.reject(
                    404, body=f"MQTT over WebSocket is served on {settings.path}\n".encode()
                )
                return None
            connection = await request.accept(
                subprotocol=select_subprotocol(request.proposed_subprotocols)
            )
            headers = [(name.decode("latin-1"), value.decode("latin-1"))
                       for name, value in request.headers]
            client = forwarded_client(headers, peer.address, settings.trusted_proxies)
            return connection, peer if client is None else attrs.evolve(peer, address=client)
        except ConnectionClosed:
            log.info("websocket_upgrade_abandoned", address=peer.address)
            return None
    log.info(
        "websocket_upgrade_timeout", address=peer.address, timeout_s=settings.handshake_timeout
    )
    return None


async def _open_request(nursery: trio.Nursery, stream: trio.abc.Stream, peer: Peer,
                        settings: WebSocketSettings) -> WebSocketRequest:
    """trio-websocket's `wrap_server_stream`, with our connection class and reader guard."""
    connection = _GuardedConnection(
        stream, max_message_size=max_message_size(settings.max_packet_size),
        max_message_fragments=settings.max_message_fragments)
    nursery.start_soon(_run_frame_reader, connection, stream, peer, settings.on_failure)
    return await connection._get_request()


async def serve_websocket(
    handler: ConnectionHandler,
    *,
    host: str,
    port: int,
    path: str = "/ws",
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_message_fragments: int = DEFAULT_MAX_MESSAGE_FRAGMENTS,
    on_failure: ConnectionFailureHook = ignore_connection_failure,
    edge: EdgeSettings = NO_POLICY,
    handler_nursery: trio.Nursery,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """MQTT over WebSocket (plain ws://; wss is terminated at the ingress, spec 2.4).

    Messages above one MQTT packet of `max_packet_size`, or of more than
    `max_message_fragments` frames, close the connection with 1009. `on_failure` counts the
    connections ended by an unexpected error (logged once each). `edge` limits the connection
    rate and names the proxies whose X-Forwarded-For / Forwarded headers are believed.
    """
    policy = Edge(edge, "websocket")
    settings = WebSocketSettings(
        path=path, max_packet_size=max_packet_size, handshake_timeout=handshake_timeout,
        trusted_proxies=edge.trusted_proxies,
        max_message_fragments=max_message_fragments, on_failure=on_failure,
    )

    async def on_accept(tcp_stream: LeanSocketStream) -> None:
        address = peer_address(tcp_stream)
        if address is None:
            await trio.aclose_forcefully(tcp_stream)
            return
        peer = Peer(transport="websocket", address=address)
        async with contain_failures(peer, on_failure), closing_stream(tcp_stream):
            await run_websocket_connection(tcp_stream, handler, peer, settings)

    await serve_socket_listeners(
        on_accept,
        transport="websocket",
        host=host,
        port=port,
        handler_nursery=handler_nursery,
        reuse_port=reuse_port,
        task_status=task_status,
        admit=policy.admit_nowait if edge.max_connection_rate else None,
    )
