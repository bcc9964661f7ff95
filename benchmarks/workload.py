"""What the devices send: the 1/KP application, endpoints and pre-encoded MQTT packets.

Every token has the same length so every PUBLISH of a case has the same size on the wire, which
lets the peer-side counter count messages by bytes instead of decoding them.
"""

from __future__ import annotations

import attrs

from kpc_trio.mqtt.codec import encode
from kpc_trio.mqtt.packets import Connect, Publish, QoS, Subscribe
from kpc_trio.simulator.token_provider import EndpointRecord

APP = "bench_application"
APP_VERSION = "bench_application_v1"
EXTENSION = "dcx"
PAYLOAD = b"p" * 64
DEVICES = 100  # enough endpoints for every connection of every case

ENDPOINTS = tuple(
    EndpointRecord(app_name=APP, token=f"bench-token-{n:03d}",
                   endpoint_id=f"bench-endpoint-{n:03d}", token_id=f"bench-token-id-{n:03d}")
    for n in range(DEVICES)
)


def data_topic(device: int) -> str:
    return f"kp1/{APP_VERSION}/{EXTENSION}/{ENDPOINTS[device].token}/json"


def unrouted_topic(device: int) -> str:
    """Outside `kp1/#`, which the peers' counter subscribes to: for ingest-only cases."""
    return f"ingest/{ENDPOINTS[device].token}/json"


def connect_packet(client_id: str) -> bytes:
    return encode(Connect(protocol_name="MQTT", protocol_level=4, client_id=client_id,
                          clean_session=True, keepalive=0))


def subscribe_packet(topic_filter: str) -> bytes:
    return encode(Subscribe(packet_id=1, subscriptions=((topic_filter, QoS.AT_MOST_ONCE),)))


@attrs.frozen
class PublishRing:
    """Pre-encoded PUBLISH packets cycling through packet ids, so sending costs no encoding."""

    packets: tuple[bytes, ...]

    @classmethod
    def for_device(cls, device: int, qos: QoS, size: int, unrouted: bool = False) -> PublishRing:
        topic = unrouted_topic(device) if unrouted else data_topic(device)
        if qos is QoS.AT_MOST_ONCE:
            return cls((encode(Publish(topic, PAYLOAD)),) * size)
        return cls(tuple(encode(Publish(topic, PAYLOAD, qos=qos, packet_id=packet_id))
                         for packet_id in range(1, size + 1)))

    def chunk(self, start: int, count: int) -> bytes:
        """`count` packets starting at ring position `start`, as one buffer."""
        size = len(self.packets)
        return b"".join(self.packets[(start + i) % size] for i in range(count))


def wire_size_qos0(device: int) -> int:
    """Bytes of one relayed QoS 0 PUBLISH as the `kp1/#` counter receives it."""
    return len(encode(Publish(data_topic(device), PAYLOAD)))
