"""MQTT 3.1/3.1.1 wire format: `encode(packet)` and an incremental, validating `Decoder`.

The decoder is on the hot path: it keeps one growing `bytearray` and an offset into it (no copy
per packet), decodes PUBLISH and the 2-byte acknowledgements inline with slicing, and only uses
the field-by-field `_BodyReader` for the rarer packet types.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kpc_trio.mqtt.errors import LocalProtocolError, PacketTooLargeError, ProtocolError
from kpc_trio.mqtt.packets import (
    SUBACK_FAILURE,
    ConnAck,
    ConnAckCode,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    QoS,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)

#: The largest remaining length four length bytes can express (MQTT 3.1.1 section 2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

#: Protocol name per supported protocol level: 3 is MQTT 3.1, 4 is MQTT 3.1.1.
PROTOCOL_NAMES = {3: "MQIsdp", 4: "MQTT"}
_KNOWN_PROTOCOL_NAMES = frozenset(PROTOCOL_NAMES.values())

_QOS_BY_VALUE = (QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE)
_SUBACK_CODES = frozenset((0, 1, 2, SUBACK_FAILURE))
# Fixed-header flags every packet type but PUBLISH must carry (MQTT 3.1.1 section 2.2.2).
_REQUIRED_FLAGS: dict[int, int] = {
    packet_type: 0b0010
    if packet_type in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE)
    else 0
    for packet_type in PacketType
    if packet_type is not PacketType.PUBLISH
}
# Don't let consumed bytes pile up at the front of the buffer beyond this.
_COMPACT_THRESHOLD = 1 << 16

# CONNECT flag bits (MQTT 3.1.1 section 3.1.2.3).
_USERNAME_FLAG = 0x80
_PASSWORD_FLAG = 0x40
_WILL_RETAIN_FLAG = 0x20
_WILL_QOS_SHIFT = 3
_WILL_FLAG = 0x04
_CLEAN_SESSION_FLAG = 0x02
_CONNECT_RESERVED_FLAG = 0x01


# ---- encoding -----------------------------------------------------------------------------------

def encode(packet: Packet) -> bytes:
    """Serialize any of the 14 MQTT packets.

    The encoder writes what it is given (tests and the fuzzer send deliberately odd packets) and
    raises `LocalProtocolError` only for what the wire cannot represent.
    """
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise LocalProtocolError(f"cannot encode {packet!r}: not an MQTT packet") from None
    return encoder(packet)


def _remaining_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length > MAX_REMAINING_LENGTH:
        raise LocalProtocolError(
            f"packet body of {length} bytes exceeds the MQTT maximum of {MAX_REMAINING_LENGTH}"
        )
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 0x80)
        if length:
            encoded.append(digit | 0x80)
        else:
            encoded.append(digit)
            return bytes(encoded)


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _remaining_length(len(body)) + body


def _packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 <= packet_id <= 0xFFFF:
        raise LocalProtocolError(f"packet id {packet_id!r} is not a 16-bit integer")
    return packet_id.to_bytes(2, "big")


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise LocalProtocolError(f"field of {len(data)} bytes exceeds the 65535-byte MQTT limit")
    return len(data).to_bytes(2, "big") + data


def _string(text: str) -> bytes:
    try:
        return _binary(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"string {text!r} is not encodable as UTF-8: {exc}") from None


def _encode_connect(packet: Connect) -> bytes:
    flags = _CLEAN_SESSION_FLAG if packet.clean_session else 0
    payload = [_string(packet.client_id)]
    if packet.will is not None:
        flags |= _WILL_FLAG | (packet.will.qos << _WILL_QOS_SHIFT)
        if packet.will.retain:
            flags |= _WILL_RETAIN_FLAG
        payload += (_string(packet.will.topic), _binary(packet.will.message))
    if packet.username is not None:
        flags |= _USERNAME_FLAG
        payload.append(_string(packet.username))
    if packet.password is not None:
        flags |= _PASSWORD_FLAG
        payload.append(_binary(packet.password))
    if not 0 <= packet.keepalive <= 0xFFFF or not 0 <= packet.protocol_level <= 0xFF:
        raise LocalProtocolError(
            f"keepalive {packet.keepalive} or protocol level {packet.protocol_level} out of range"
        )
    header = (
        _string(packet.protocol_name)
        + bytes((packet.protocol_level, flags))
        + packet.keepalive.to_bytes(2, "big")
    )
    return _frame(0x10, header + b"".join(payload))


def _encode_connack(packet: ConnAck) -> bytes:
    return bytes((0x20, 2, 1 if packet.session_present else 0, packet.return_code))


def _encode_publish(packet: Publish) -> bytes:
    first_byte = 0x30 | packet.qos << 1
    if packet.dup:
        first_byte |= 0x08
    if packet.retain:
        first_byte |= 0x01
    if packet.qos:
        packet_id = _packet_id(packet.packet_id)
    elif packet.packet_id is None:
        packet_id = b""
    else:
        raise LocalProtocolError(f"a QoS 0 PUBLISH has no packet id, got {packet.packet_id}")
    return _frame(first_byte, _string(packet.topic) + packet_id + packet.payload)


def _acknowledgement_encoder(first_byte: int) -> Callable[[Any], bytes]:
    def encode_acknowledgement(packet: PubAck | PubRec | PubRel | PubComp | UnsubAck) -> bytes:
        return bytes((first_byte, 2)) + _packet_id(packet.packet_id)

    return encode_acknowledgement


def _encode_subscribe(packet: Subscribe) -> bytes:
    body = b"".join(
        _string(topic_filter) + bytes((qos,)) for topic_filter, qos in packet.subscriptions
    )
    return _frame(0x82, _packet_id(packet.packet_id) + body)


def _encode_suback(packet: SubAck) -> bytes:
    return _frame(0x90, _packet_id(packet.packet_id) + bytes(packet.return_codes))


def _encode_unsubscribe(packet: Unsubscribe) -> bytes:
    body = b"".join(_string(topic_filter) for topic_filter in packet.topic_filters)
    return _frame(0xA2, _packet_id(packet.packet_id) + body)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: _acknowledgement_encoder(0x40),
    PubRec: _acknowledgement_encoder(0x50),
    PubRel: _acknowledgement_encoder(0x62),
    PubComp: _acknowledgement_encoder(0x70),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _acknowledgement_encoder(0xB0),
    PingReq: lambda _: b"\xc0\x00",
    PingResp: lambda _: b"\xd0\x00",
    Disconnect: lambda _: b"\xe0\x00",
}


# ---- decoding -----------------------------------------------------------------------------------

# U+0000 is forbidden by MQTT [MQTT-1.5.3-2]; the other C0 and C1 control characters are allowed
# by the spec but only broken or hostile devices send them (in client ids, user names, topics and
# filters, the only strings MQTT 3.1.1 has), and they would end up in logs: refused too.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


def _decode_utf8(raw: bytes | bytearray | memoryview, what: str) -> str:
    try:
        # Python's strict codec refuses encoded surrogates and overlong forms [MQTT-1.5.3-1] and
        # keeps a U+FEFF where it is [MQTT-1.5.3-3].
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not well-formed UTF-8: {exc.reason}") from None
    if not text.isprintable():  # a fast scan first: most strings have no control character
        control = _CONTROL_CHARACTER.search(text)
        if control is not None:
            raise ProtocolError(
                f"{what} contains the control character U+{ord(control.group()):04X}, "
                "which KPC refuses"
            )
    return text


class _BodyReader:
    """Reads the fields of one packet body and reports truncation as a `ProtocolError`."""

    __slots__ = ("_body", "_position", "packet")

    def __init__(self, body: bytes, packet: str) -> None:
        self._body = body
        self._position = 0
        self.packet = packet

    def _take(self, count: int, what: str) -> bytes:
        end = self._position + count
        if end > len(self._body):
            raise ProtocolError(f"{self.packet} is truncated: {what} runs past the packet end")
        chunk = self._body[self._position:end]
        self._position = end
        return chunk

    def at_end(self) -> bool:
        return self._position == len(self._body)

    def expect_end(self) -> None:
        if not self.at_end():
            extra = len(self._body) - self._position
            raise ProtocolError(f"{self.packet} has {extra} unexpected trailing bytes")

    def byte(self, what: str) -> int:
        return self._take(1, what)[0]

    def uint16(self, what: str) -> int:
        return int.from_bytes(self._take(2, what), "big")

    def packet_id(self) -> int:
        packet_id = self.uint16("packet id")
        if packet_id == 0:
            raise ProtocolError(f"{self.packet} has packet id 0, which MQTT forbids")
        return packet_id

    def binary(self, what: str) -> bytes:
        return self._take(self.uint16(f"length of {what}"), what)

    def string(self, what: str) -> str:
        return _decode_utf8(self.binary(what), f"{self.packet} {what}")

    def rest(self) -> bytes:
        chunk = self._body[self._position:]
        self._position = len(self._body)
        return chunk


def _decode_connect(body: bytes) -> Connect:
    reader = _BodyReader(body, "CONNECT")
    protocol_name = reader.string("protocol name")
    if protocol_name not in _KNOWN_PROTOCOL_NAMES:
        # Not MQTT at all: close without a CONNACK [MQTT-3.1.2-1].
        raise ProtocolError(
            f"protocol name {protocol_name!r} is neither 'MQTT' nor 'MQIsdp'"
        )
    protocol_level = reader.byte("protocol level")
    if PROTOCOL_NAMES.get(protocol_level) != protocol_name:
        # The reply is CONNACK 1 (MQTT 3.1.1 section 3.1.2.2); the rest may be MQTT 5 layout.
        raise ProtocolError(
            f"unsupported protocol {protocol_name!r} level {protocol_level}; "
            "supported: 'MQIsdp' level 3 (MQTT 3.1), 'MQTT' level 4 (MQTT 3.1.1)",
            connack=ConnAckCode.UNACCEPTABLE_PROTOCOL_VERSION,
        )
    flags = reader.byte("connect flags")
    if flags & _CONNECT_RESERVED_FLAG:
        raise ProtocolError("CONNECT reserved flag bit 0 is set")
    will_qos = (flags >> _WILL_QOS_SHIFT) & 0b11
    has_will = bool(flags & _WILL_FLAG)
    if has_will and will_qos == 3:
        raise ProtocolError("CONNECT will QoS is 3, which does not exist")
    if not has_will and (will_qos or flags & _WILL_RETAIN_FLAG):
        raise ProtocolError("CONNECT sets will QoS or will retain without the will flag")
    if protocol_level == 4 and flags & _PASSWORD_FLAG and not flags & _USERNAME_FLAG:
        raise ProtocolError("CONNECT has a password without a username (MQTT 3.1.1 3.1.2-22)")
    keepalive = reader.uint16("keepalive")
    client_id = reader.string("client identifier")
    will = None
    if has_will:
        will_topic = reader.string("will topic")
        will_message = reader.binary("will message")
        will_retain = bool(flags & _WILL_RETAIN_FLAG)
        will = Will(will_topic, will_message, _QOS_BY_VALUE[will_qos], will_retain)
    username = reader.string("user name") if flags & _USERNAME_FLAG else None
    password = reader.binary("password") if flags & _PASSWORD_FLAG else None
    reader.expect_end()
    return Connect(
        protocol_name=protocol_name,
        protocol_level=protocol_level,
        client_id=client_id,
        clean_session=bool(flags & _CLEAN_SESSION_FLAG),
        keepalive=keepalive,
        username=username,
        password=password,
        will=will,
    )


def _decode_connack(body: bytes) -> ConnAck:
    reader = _BodyReader(body, "CONNACK")
    acknowledge_flags = reader.byte("acknowledge flags")
    return_code = reader.byte("return code")
    reader.expect_end()
    if acknowledge_flags & 0xFE:
        raise ProtocolError(f"CONNACK reserved acknowledge flag bits set: {acknowledge_flags:#04x}")
    if return_code > max(ConnAckCode):
        raise ProtocolError(f"CONNACK return code {return_code} is not defined")
    if acknowledge_flags and return_code:
        raise ProtocolError("CONNACK sets session present on a refusal")
    return ConnAck(ConnAckCode(return_code), session_present=bool(acknowledge_flags))


def _decode_subscribe(body: bytes, max_topic_filters: int | None) -> Subscribe:
    reader = _BodyReader(body, "SUBSCRIBE")
    packet_id = reader.packet_id()
    subscriptions: list[tuple[str, QoS]] = []
    while not reader.at_end():
        # Counted before decoding: a packet full of filters is refused at the first one too many.
        if max_topic_filters is not None and len(subscriptions) == max_topic_filters:
            raise ProtocolError(
                f"SUBSCRIBE carries more than {max_topic_filters} topic filters, the most a "
                "connection may hold"
            )
        topic_filter = _topic_filter(reader)
        requested = reader.byte("requested QoS")
        if requested > 2:
            raise ProtocolError(
                f"SUBSCRIBE requests QoS byte {requested:#04x} for {topic_filter!r}"
            )
        subscriptions.append((topic_filter, _QOS_BY_VALUE[requested]))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE carries no topic filter")
    return Subscribe(packet_id, tuple(subscriptions))


def _topic_filter(reader: _BodyReader) -> str:
    topic_filter = reader.string("topic filter")
    if not topic_filter:
        raise ProtocolError(f"{reader.packet} has a zero-length topic filter [MQTT-4.7.3-1]")
    return topic_filter


def _decode_suback(body: bytes) -> SubAck:
    reader = _BodyReader(body, "SUBACK")
    packet_id = reader.packet_id()
    return_codes = tuple(reader.rest())
    if not return_codes:
        raise ProtocolError("SUBACK carries no return code")
    if not _SUBACK_CODES.issuperset(return_codes):
        raise ProtocolError(f"SUBACK return codes {return_codes} include an undefined value")
    return SubAck(packet_id, return_codes)


def _decode_unsubscribe(body: bytes) -> Unsubscribe:
    reader = _BodyReader(body, "UNSUBSCRIBE")
    packet_id = reader.packet_id()
    topic_filters = []
    while not reader.at_end():
        topic_filters.append(_topic_filter(reader))
    if not topic_filters:
        raise ProtocolError("UNSUBSCRIBE carries no topic filter")
    return Unsubscribe(packet_id, tuple(topic_filters))


# Packets with a body decoded by a `_BodyReader`.
_BODY_DECODERS: dict[int, Callable[[bytes], Packet]] = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
}
# Packets whose whole body is a packet id.
_ACKNOWLEDGEMENTS: dict[int, type[PubAck | PubRec | PubRel | PubComp | UnsubAck]] = {
    PacketType.PUBACK: PubAck,
    PacketType.PUBREC: PubRec,
    PacketType.PUBREL: PubRel,
    PacketType.PUBCOMP: PubComp,
    PacketType.UNSUBACK: UnsubAck,
}
_EMPTY_PACKETS: dict[int, PingReq | PingResp | Disconnect] = {
    PacketType.PINGREQ: PingReq(),
    PacketType.PINGRESP: PingResp(),
    PacketType.DISCONNECT: Disconnect(),
}


def _check_first_byte(first_byte: int) -> None:
    packet_type = first_byte >> 4
    flags = first_byte & 0x0F
    if packet_type == PacketType.PUBLISH:
        qos = flags >> 1 & 0b11
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3, which does not exist")
        if qos == 0 and flags & 0x08:
            raise ProtocolError("PUBLISH with the DUP flag set at QoS 0")
        return
    required = _REQUIRED_FLAGS.get(packet_type)
    if required is None:
        raise ProtocolError(f"packet type {packet_type} is reserved")
    if flags != required:
        raise ProtocolError(
            f"{PacketType(packet_type).name} fixed-header flags are {flags:#06b}, "
            f"MQTT requires {required:#06b}"
        )


def _valid_first_bytes() -> frozenset[int]:
    valid = set()
    for first_byte in range(256):
        try:
            _check_first_byte(first_byte)
        except ProtocolError:
            continue
        valid.add(first_byte)
    return frozenset(valid)


# A set lookup per packet instead of a call; `_check_first_byte` says why a byte is refused.
_VALID_FIRST_BYTES = _valid_first_bytes()

# The decoder's `Publish` constructor: no Python-level call (the decoder checked every field).
_new_tuple = tuple.__new__

# The longest topic name a decoder keeps for reuse (one per connection, so bounded in bytes).
_REMEMBERED_TOPIC_LENGTH = 256

# The first byte of a QoS 0 PUBLISH without DUP and RETAIN: what `Decoder.take_repeats` takes.
_QOS0_PUBLISH = PacketType.PUBLISH << 4

# Small payloads (most device messages) are copied twice, through a bytearray slice: that is
# cheaper than a memoryview and its release (0.2 against 0.45 µs per 64-byte payload).
_COPY_TWICE_BELOW = 4096


class Decoder:
    """Turns a byte stream into packets, validating each one per MQTT 3.1/3.1.1.

    `feed()` bytes as they arrive (split anywhere), then call `next_packet()` until it returns
    None. Any violation raises `ProtocolError`; the decoder is then unusable (close the peer).
    A SUBSCRIBE with more than `max_topic_filters` filters is one (None: no bound).
    """

    __slots__ = ("_buffer", "_position", "_max_packet_size", "_max_topic_filters", "_last_topic",
                 "_last_topic_text")

    def __init__(self, max_packet_size: int, max_topic_filters: int | None = None) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._max_packet_size = max_packet_size
        self._max_topic_filters = max_topic_filters
        # The last PUBLISH topic name decoded (with its 2 length bytes, as on the wire), and
        # its text.
        self._last_topic = b""
        self._last_topic_text = ""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as packets."""
        return len(self._buffer) - self._position

    def feed(self, data: bytes | bytearray) -> None:
        if self._position:
            if self._position == len(self._buffer):
                self._buffer.clear()
                self._position = 0
            elif self._position > _COMPACT_THRESHOLD:
                del self._buffer[: self._position]
                self._position = 0
        self._buffer += data

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes are fed."""
        buffer = self._buffer
        start = self._position
        available = len(buffer) - start
        if available < 2:
            if available:
                _check_first_byte(buffer[start])
            elif start:
                # All decoded: an idle connection keeps no copy of its last read (up to a
                # whole receive) until its next one.
                buffer.clear()
                self._position = 0
            return None
        first_byte = buffer[start]
        length = buffer[start + 1]
        body_start = start + 2
        if length & 0x80:
            length, body_start = self._long_remaining_length(start)
            if body_start < 0:
                return None
        else:
            if first_byte not in _VALID_FIRST_BYTES:
                _check_first_byte(first_byte)
            if length > self._max_packet_size:
                raise self._too_large(length)
        body_end = body_start + length
        if body_end > len(buffer):
            return None
        self._position = body_end
        packet_type = first_byte >> 4
        if packet_type == PacketType.PUBLISH:
            return self._decode_publish(first_byte, body_start, body_end)
        acknowledgement = _ACKNOWLEDGEMENTS.get(packet_type)
        if acknowledgement is not None:
            name = acknowledgement.__name__
            if length != 2:
                raise ProtocolError(f"{name} body must be 2 bytes, got {length}")
            packet_id = buffer[body_start] << 8 | buffer[body_start + 1]
            if packet_id == 0:
                raise ProtocolError(f"{name} has packet id 0, which MQTT forbids")
            return acknowledgement(packet_id)
        empty = _EMPTY_PACKETS.get(packet_type)
        if empty is not None:
            if length:
                raise ProtocolError(f"{type(empty).__name__} must have no body, got {length} bytes")
            return empty
        body = bytes(buffer[body_start:body_end])
        if packet_type == PacketType.SUBSCRIBE:
            return _decode_subscribe(body, self._max_topic_filters)
        return _BODY_DECODERS[packet_type](body)

    def _long_remaining_length(self, start: int) -> tuple[int, int]:
        """Decode a multi-byte remaining length: (length, body start), body start -1 if incomplete.

        Raises `PacketTooLargeError` as soon as the length is known, before any body is buffered.
        """
        buffer = self._buffer
        _check_first_byte(buffer[start])
        length = 0
        for index in range(4):
            position = start + 1 + index
            if position >= len(buffer):
                return 0, -1
            digit = buffer[position]
            length |= (digit & 0x7F) << (7 * index)
            if not digit & 0x80:
                break
        else:
            raise ProtocolError("remaining length is longer than 4 bytes")
        if length > self._max_packet_size:
            raise self._too_large(length)
        return length, position + 1

    def _too_large(self, length: int) -> PacketTooLargeError:
        return PacketTooLargeError(
            f"packet body of {length} bytes exceeds the maximum packet size of "
            f"{self._max_packet_size} bytes"
        )

    def _decode_publish(self, first_byte: int, body_start: int, body_end: int) -> Publish:
        buffer = self._buffer
        topic_start = body_start + 2
        if topic_start > body_end:
            raise ProtocolError("PUBLISH is truncated: no topic name length")
        topic_length = buffer[body_start] << 8 | buffer[body_start + 1]
        topic_end = topic_start + topic_length
        qos = first_byte >> 1 & 0b11
        payload_start = topic_end + 2 if qos else topic_end
        if payload_start > body_end:
            raise ProtocolError("PUBLISH is truncated: topic name or packet id runs past its end")
        # Devices publish to the same topic over and over: the same bytes give the same string.
        last_topic = self._last_topic
        if topic_length + 2 == len(last_topic) and buffer.startswith(last_topic, body_start):
            topic = self._last_topic_text
        else:
            prefixed = bytes(buffer[body_start:topic_end])
            topic = _decode_utf8(prefixed[2:], "PUBLISH topic name")
            if topic_length <= _REMEMBERED_TOPIC_LENGTH:
                self._last_topic, self._last_topic_text = prefixed, topic
        if body_end - payload_start < _COPY_TWICE_BELOW:
            payload = bytes(buffer[payload_start:body_end])
        else:
            # A bytearray slice would copy twice; the view must be released before next feed().
            with memoryview(buffer) as view:
                payload = bytes(view[payload_start:body_end])
        packet_id = None
        if qos:
            packet_id = buffer[topic_end] << 8 | buffer[topic_end + 1]
            if packet_id == 0:
                raise ProtocolError("PUBLISH has packet id 0, which MQTT forbids")
        return _new_tuple(Publish, (topic, payload, _QOS_BY_VALUE[qos], bool(first_byte & 0x01),
                                    bool(first_byte & 0x08), packet_id))

    def take_repeats(self, topic: str, payloads: list[bytes]) -> None:
        """Append to `payloads` those of the complete QoS 0 PUBLISHes next in the buffer that
        repeat `topic`, the topic of the PUBLISH `next_packet` just returned; stop at the
        first other packet (or incomplete one).

        The run of a device flooding telemetry: for such a packet everything `next_packet`
        would check but its length is a fact of the topic, checked with the first one. A
        packet taken here has the first byte 0x30 (QoS 0, no DUP, no RETAIN) and the very
        bytes of the last topic, so it needs no UTF-8 decode, no `Publish` and no dispatch;
        and while the packets keep their length (telemetry often does), their whole header is
        the same bytes, so one comparison checks each.
        """
        if topic is not self._last_topic_text:  # not remembered (too long): no run
            return
        buffer = self._buffer
        prefix = self._last_topic
        overhead = len(prefix)  # a repeat's body is the prefixed topic, then the payload
        start = self._position
        end = len(buffer)
        append = payloads.append
        while start + 2 <= end and buffer[start] == _QOS0_PUBLISH:
            length = buffer[start + 1]
            body_start = start + 2
            if length & 0x80:
                length, body_start = self._long_remaining_length(start)
                if body_start < 0:
                    break
            elif length > self._max_packet_size:
                raise self._too_large(length)
            packet_size = body_start + length - start
            if (start + packet_size > end or length < overhead
                    or not buffer.startswith(prefix, body_start)):
                break  # incomplete, or another topic: `next_packet` decodes it
            payload_offset = body_start - start + overhead
            if length - overhead >= _COPY_TWICE_BELOW:
                with memoryview(buffer) as view:
                    append(bytes(view[start + payload_offset:start + packet_size]))
                start += packet_size
                continue
            header = bytes(buffer[start:start + payload_offset])
            while True:  # this packet and those after it with the same header
                append(bytes(buffer[start + payload_offset:start + packet_size]))
                start += packet_size
                if start + packet_size > end or not buffer.startswith(header, start):
                    break
        self._position = start
