"""A blocking MQTT 3.1.1 device for the model test, with its own hand-written encoder and decoder
(nothing from kpc_trio's codec, so the model sees the wire as an independent client does).

The device never runs a thread: `pump()` reads what has arrived, answers the server's QoS 1/2
PUBLISH and PUBREL packets as a client must, and records everything. The model calls `pump` while
it waits for what it expects, so every wait wakes up on the data itself.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections.abc import Iterable

import attrs

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
RECEIVE_SIZE = 65536


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _packet(first_byte: int, body: bytes) -> bytes:
    """Fixed header (type and flags, variable-length remaining length) and body."""
    length, encoded = len(body), bytearray()
    while True:
        digit, length = length % 128, length // 128
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first_byte]) + bytes(encoded) + body


def connect_bytes(client_id: str, username: str | None = None,
                  password: str | None = None) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _string(username.encode())
    if password is not None:
        flags |= 0x40
        payload += _string(password.encode())
    # Protocol name "MQTT", level 4, flags, keepalive 0 (the model never idles out).
    return _packet(CONNECT << 4, _string(b"MQTT") + bytes([4, flags]) + b"\x00\x00" + payload)


def publish_bytes(topic: str, payload: bytes, qos: int, packet_id: int | None) -> bytes:
    body = _string(topic.encode())
    if qos:
        assert packet_id is not None
        body += struct.pack("!H", packet_id)
    return _packet(PUBLISH << 4 | qos << 1, body + payload)


def subscribe_bytes(packet_id: int, topic_filter: str, qos: int) -> bytes:
    body = struct.pack("!H", packet_id) + _string(topic_filter.encode()) + bytes([qos])
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def ack_bytes(packet_type: int, packet_id: int) -> bytes:
    flags = 0x02 if packet_type == PUBREL else 0
    return _packet(packet_type << 4 | flags, struct.pack("!H", packet_id))


DISCONNECT_BYTES = b"\xe0\x00"
PINGREQ_BYTES = b"\xc0\x00"


@attrs.frozen
class Message:
    """A PUBLISH the server sent to the device."""

    topic: str
    payload: bytes
    qos: int


class DeviceProtocolError(AssertionError):
    """The server sent something a client cannot accept (a model failure, not a test bug)."""


@attrs.define(eq=False)
class ModelDevice:
    """One MQTT connection; all fields are what the device saw."""

    name: str
    sock: socket.socket
    connack: int | None = None
    messages: list[Message] = attrs.field(factory=list)
    acknowledged: set[int] = attrs.field(factory=set)  # our QoS 1/2 ids fully acknowledged
    subacks: dict[int, bytes] = attrs.field(factory=dict)
    pings_answered: int = 0
    closed_by_server: bool = False
    closed_by_us: bool = False
    _buffer: bytearray = attrs.field(factory=bytearray)
    _inbound_qos2: set[int] = attrs.field(factory=set)  # PUBREC sent, PUBREL awaited
    _next_id: int = 0

    @classmethod
    def open(cls, name: str, port: int) -> ModelDevice:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setblocking(False)
        return cls(name, sock)

    @property
    def live(self) -> bool:
        return not (self.closed_by_server or self.closed_by_us)

    def next_packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def send(self, data: bytes) -> None:
        """Send all of `data` (small packets: the socket buffer takes them); a connection the
        server closed shows up as closed on the next pump."""
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed_by_server = True
        finally:
            self.sock.setblocking(False)

    def pump(self) -> None:
        """Read and handle whatever has arrived, without waiting."""
        while self.live:
            try:
                data = self.sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                return
            except OSError:  # reset by the server
                data = b""
            if not data:
                self.closed_by_server = True
                return
            self._buffer += data
            while (packet := self._next_packet()) is not None:
                self._handle(*packet)

    def _next_packet(self) -> tuple[int, int, bytes] | None:
        buffer, multiplier, length, index = self._buffer, 1, 0, 1
        while True:
            if index >= len(buffer):
                return None
            digit = buffer[index]
            length += (digit & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not digit & 0x80:
                break
        if len(buffer) < index + length:
            return None
        first, body = buffer[0], bytes(buffer[index:index + length])
        del buffer[:index + length]
        return first >> 4, first & 0x0F, body

    def _handle(self, packet_type: int, flags: int, body: bytes) -> None:
        if packet_type == CONNACK:
            self.connack = body[1]
        elif packet_type == PUBLISH:
            qos = (flags >> 1) & 0x03
            (topic_length,) = struct.unpack_from("!H", body)
            topic = body[2:2 + topic_length].decode()
            rest = body[2 + topic_length:]
            if qos:
                (packet_id,) = struct.unpack_from("!H", rest)
                rest = rest[2:]
                if qos == 1:
                    self.send(ack_bytes(PUBACK, packet_id))
                else:
                    self.send(ack_bytes(PUBREC, packet_id))
                    if packet_id in self._inbound_qos2:
                        return  # a resend of a message we already have
                    self._inbound_qos2.add(packet_id)
            self.messages.append(Message(topic, rest, qos))
        elif packet_type in (PUBACK, PUBCOMP):
            self.acknowledged.add(struct.unpack("!H", body)[0])
        elif packet_type == PUBREC:
            self.send(ack_bytes(PUBREL, struct.unpack("!H", body)[0]))
        elif packet_type == PUBREL:
            packet_id = struct.unpack("!H", body)[0]
            self._inbound_qos2.discard(packet_id)
            self.send(ack_bytes(PUBCOMP, packet_id))
        elif packet_type == SUBACK:
            self.subacks[struct.unpack_from("!H", body)[0]] = body[2:]
        elif packet_type == PINGRESP:
            self.pings_answered += 1
        else:
            raise DeviceProtocolError(f"{self.name}: unexpected packet type {packet_type}")

    def close(self, *, disconnect: bool, reset: bool = False) -> None:
        """End the connection: with DISCONNECT, with a plain close, or with a TCP reset."""
        if disconnect:
            self.send(DISCONNECT_BYTES)
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed_by_us = True
        with contextlib.suppress(OSError):
            self.sock.close()


def wait_readable(devices: Iterable[ModelDevice], timeout: float) -> None:
    """Block until one of the devices has data (or `timeout`): the wake-up of every wait."""
    socks = [device.sock for device in devices if device.live]
    if socks:
        select.select(socks, [], [], timeout)
