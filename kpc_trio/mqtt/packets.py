"""MQTT 3.1/3.1.1 control packets as frozen value objects.

These classes carry decoded fields only; framing lives in `codec.py`. Field names follow the
MQTT 3.1.1 specification (OASIS, 2014), section 3.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import attrs


class PacketType(enum.IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class QoS(enum.IntEnum):
    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class ConnAckCode(enum.IntEnum):
    """CONNACK return codes, MQTT 3.1.1 section 3.2.2.3."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


#: SUBACK return code for a refused topic filter.
SUBACK_FAILURE = 0x80


@attrs.frozen
class Will:
    topic: str
    message: bytes
    qos: QoS
    retain: bool


@attrs.frozen
class Connect:
    protocol_name: str  # "MQTT" (level 4) or "MQIsdp" (level 3)
    protocol_level: int
    client_id: str
    clean_session: bool
    keepalive: int  # seconds, 0 = no keepalive
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None


@attrs.frozen
class ConnAck:
    return_code: ConnAckCode
    session_present: bool = False


class Publish(NamedTuple):
    """A named tuple, not an attrs class like the other packets: one is built per received
    message, and a frozen attrs instance costs several times more to create (the decoder builds
    it with `tuple.__new__`, having checked every field)."""

    topic: str
    payload: bytes
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # present iff qos > 0


@attrs.frozen
class PubAck:
    packet_id: int


@attrs.frozen
class PubRec:
    packet_id: int


@attrs.frozen
class PubRel:
    packet_id: int


@attrs.frozen
class PubComp:
    packet_id: int


@attrs.frozen
class Subscribe:
    packet_id: int
    subscriptions: tuple[tuple[str, QoS], ...]  # (topic filter, requested QoS)


@attrs.frozen
class SubAck:
    packet_id: int
    return_codes: tuple[int, ...]  # granted QoS 0..2 or SUBACK_FAILURE


@attrs.frozen
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]


@attrs.frozen
class UnsubAck:
    packet_id: int


@attrs.frozen
class PingReq:
    pass


@attrs.frozen
class PingResp:
    pass


@attrs.frozen
class Disconnect:
    pass


Packet = (
    Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe | SubAck
    | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect
)
