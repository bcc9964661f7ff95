"""What a conformance vector is made of: bytes a device sends and what it must see back."""

from __future__ import annotations

import attrs

TRANSPORTS = ("tcp", "websocket")


@attrs.frozen
class Send:
    """Bytes (wire notation) from device `on`, opening its connection first if need be.

    `piece` cuts them into writes (TCP) or WebSocket messages of that many bytes; `text` sends
    them in a WebSocket text frame."""

    data: str
    on: str = "a"
    piece: int | None = None
    text: bool = False


@attrs.frozen
class Expect:
    """Exactly these bytes next, packets in this order."""

    data: str
    on: str = "a"


@attrs.frozen
class AnyOrder:
    """Exactly these packets next, in any order (an acknowledgement and a reply race)."""

    packets: tuple[str, ...]
    on: str = "a"


@attrs.frozen
class Closed:
    """The server closes the connection without sending anything more; `reason` is the close
    reason KPC logs for it (`client_disconnected reason=...`)."""

    on: str = "a"
    reason: str = "protocol_error"


@attrs.frozen
class Relayed:
    """The extension got exactly `count` messages with this payload (the simulated Kaa side)."""

    extension: str
    payload: bytes
    count: int


@attrs.frozen
class Subprotocol:
    """The WebSocket handshake selected this subprotocol."""

    name: str
    on: str = "a"


Step = Send | Expect | AnyOrder | Closed | Relayed | Subprotocol


@attrs.frozen
class Vector:
    name: str
    statements: tuple[str, ...]  # MQTT 3.1.1 ids, or "KPC" rules beyond the specification
    steps: tuple[Step, ...]
    transports: tuple[str, ...] = TRANSPORTS
    env: tuple[tuple[str, str], ...] = ()  # KPC settings for this vector only


def send(data: str, on: str = "a", *, piece: int | None = None, text: bool = False) -> Send:
    return Send(data, on, piece, text)


def expect(data: str, on: str = "a") -> Expect:
    return Expect(data, on)


def any_order(*packets: str, on: str = "a") -> AnyOrder:
    return AnyOrder(packets, on)


def closed(on: str = "a", reason: str = "protocol_error") -> Closed:
    return Closed(on, reason)


def relayed(payload: bytes, count: int, extension: str = "dcx") -> Relayed:
    return Relayed(extension, payload, count)
