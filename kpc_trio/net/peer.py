"""What a transport tells the connection handler about the client on the other end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from kpc_trio.net.certificate import ClientCertificate


@attrs.frozen
class Peer:
    transport: str  # "tcp" | "tls" | "websocket"
    address: str  # "host:port" ("[v6addr]:port" for IPv6)
    certificate: ClientCertificate | None = None  # set only by TLS after verification


# The one entry point every transport hands its connections to (the MQTT session). The handler
# owns the stream: it closes it before it returns, also when it refuses the connection.
ConnectionHandler = Callable[[trio.abc.Stream, Peer], Awaitable[None]]


def format_address(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
