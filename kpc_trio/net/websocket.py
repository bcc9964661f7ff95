"""MQTT over WebSocket: a `trio.abc.Stream` of MQTT bytes over trio-websocket binary messages.

WebSocket message boundaries mean nothing to MQTT: a packet may span several messages and one
message may carry several packets, so the adapter is a plain byte stream and the MQTT codec does
the framing, exactly as for TCP.

Sub-protocol policy: the first of the client's offered sub-protocols that we support (`mqtt`,
`mqttv3.1`) is selected. A client that offers none of them (or nothing at all, e.g. a debugging
tool) is still accepted without a sub-protocol: the bytes are MQTT either way and the MQTT codec
rejects anything else at CONNECT.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NoReturn
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from kpc_trio.logs import get_logger
from kpc_trio.net.listeners import (
    GRACEFUL_CLOSE_TIMEOUT,
    BoundAddress,
    closing_stream,
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

# RFC 6455 close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """The client's first offered sub-protocol that speaks MQTT, or None."""
    return next((name for name in offered if name in SUPPORTED_SUBPROTOCOLS), None)


def max_message_size(max_packet_size: int) -> int:
    return max_packet_size + MQTT_FIXED_HEADER_MAX_LEN


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
        connection = await _upgrade(protocol_nursery, stream, peer, settings)
        if connection is not None:
            async with closing_stream(WebSocketStream(connection)) as websocket_stream:
                await handler(websocket_stream, peer)
        # The frame reader would otherwise wait on a socket that our caller closes after us.
        protocol_nursery.cancel_scope.cancel()


async def _upgrade(
    nursery: trio.Nursery, stream: trio.abc.Stream, peer: Peer, settings: WebSocketSettings
) -> WebSocketConnection | None:
    """The open connection, or None if the upgrade was refused, abandoned or too slow."""
    with trio.move_on_after(settings.handshake_timeout):
        try:
            request = await wrap_server_stream(
                nursery, stream, max_message_size=max_message_size(settings.max_packet_size)
            )
            if urlsplit(request.path).path != settings.path:
                log.info(
                    "websocket_rejected", address=peer.address, path=request.path, status=404
                )
                await request.reject(
                    404, body=f"MQTT over WebSocket is served on {settings.path}\n".encode()
                )
                return None
            return await request.accept(
                subprotocol=select_subprotocol(request.proposed_subprotocols)
            )
        except ConnectionClosed:
            log.info("websocket_upgrade_abandoned", address=peer.address)
            return None
    log.info(
        "websocket_upgrade_timeout", address=peer.address, timeout_s=settings.handshake_timeout
    )
    return None


async def serve_websocket(
    handler: ConnectionHandler,
    *,
    host: str,
    port: int,
    path: str = "/ws",
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    handler_nursery: trio.Nursery,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """MQTT over WebSocket (plain ws://; wss is terminated at the ingress, spec 2.4).

    Messages above one MQTT packet of `max_packet_size` close the connection with 1009.
    """
    settings = WebSocketSettings(
        path=path, max_packet_size=max_packet_size, handshake_timeout=handshake_timeout
    )

    async def on_accept(tcp_stream: LeanSocketStream) -> None:
        async with closing_stream(tcp_stream):
            address = peer_address(tcp_stream)
            if address is not None:
                peer = Peer(transport="websocket", address=address)
                await run_websocket_connection(tcp_stream, handler, peer, settings)

    await serve_socket_listeners(
        on_accept,
        transport="websocket",
        host=host,
        port=port,
        handler_nursery=handler_nursery,
        reuse_port=reuse_port,
        task_status=task_status,
    )
