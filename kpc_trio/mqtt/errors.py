"""Errors of the MQTT core.

`ProtocolError` is the peer's fault: the connection that caused it is closed, nobody else is
affected. `LocalProtocolError` is ours: the application asked the state machine for something the
protocol does not allow (a bug, never the client's doing).
"""

from __future__ import annotations

from kpc_trio.mqtt.packets import ConnAckCode


class ProtocolError(Exception):
    """The peer broke MQTT; close its connection.

    `connack` is set when the protocol requires a CONNACK with that return code before closing
    (e.g. an unsupported protocol level); the CONNACK bytes are then already queued for sending.
    """

    def __init__(self, reason: str, connack: ConnAckCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connack = connack


class PacketTooLargeError(ProtocolError):
    """A packet announced a remaining length above the configured maximum packet size."""


class LocalProtocolError(Exception):
    """The application misused the state machine (e.g. acknowledged an unknown packet id)."""


class InvalidTopicError(ProtocolError):
    """A topic name or topic filter breaks the MQTT 3.1.1 rules (section 4.7)."""
