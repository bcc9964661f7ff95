"""Blocking client byte streams for the load generator: plain TCP, TLS and MQTT over WebSocket.

The generator talks raw MQTT bytes; these classes only move them, so every transport offers the
same two calls: `send(data)` and `receive() -> bytes` (b"" at end of stream).
"""

from __future__ import annotations

import enum
import socket
import ssl
from typing import Protocol

import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
)

HOST = "127.0.0.1"
RECEIVE_SIZE = 1 << 16
WEBSOCKET_PATH = "/ws"


class Transport(enum.Enum):
    TCP = "tcp"
    TLS = "tls"
    WEBSOCKET = "ws"


class TransportError(Exception):
    """The server refused the transport handshake."""


class Stream(Protocol):
    def send(self, data: bytes) -> None: ...
    def receive(self) -> bytes: ...
    def close(self) -> None: ...


class SocketStream:
    """Plain TCP, or TLS when given an already wrapped socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def receive(self) -> bytes:
        return self._sock.recv(RECEIVE_SIZE)

    def close(self) -> None:
        self._sock.close()


class WebSocketStream:
    """MQTT over WebSocket (subprotocol `mqtt`): each `send` is one binary message."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self._sock = sock
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(self._ws.send(Request(host=f"{HOST}:{port}", target=WEBSOCKET_PATH,
                                           subprotocols=["mqtt"])))
        while True:
            self._ws.receive_data(sock.recv(RECEIVE_SIZE) or None)
            for event in self._ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    raise TransportError(f"WebSocket upgrade refused: HTTP {event.status_code}")

    def send(self, data: bytes) -> None:
        self._sock.sendall(self._ws.send(BytesMessage(data=data)))

    def receive(self) -> bytes:
        while True:
            raw = self._sock.recv(RECEIVE_SIZE)
            if not raw:
                return b""
            self._ws.receive_data(raw)
            chunks = []
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    chunks.append(bytes(event.data))
                elif isinstance(event, CloseConnection):
                    return b""
            if chunks:
                return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()


def open_stream(transport: Transport, port: int) -> Stream:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if transport is Transport.TLS:
        # Throughput, not trust, is measured: the bench's throwaway CA is not checked.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return SocketStream(context.wrap_socket(sock, server_hostname="localhost"))
    if transport is Transport.WEBSOCKET:
        return WebSocketStream(sock, port)
    return SocketStream(sock)
