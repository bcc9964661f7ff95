"""MQTT wire format: exact byte vectors, validation errors, hypothesis round trips."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.mqtt.codec import PROTOCOL_NAMES, Decoder, encode
from kpc_trio.mqtt.errors import LocalProtocolError, PacketTooLargeError, ProtocolError
from kpc_trio.mqtt.packets import (
    SUBACK_FAILURE,
    ConnAck,
    ConnAckCode,
    Connect,
    Disconnect,
    Packet,
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

MAX = 1_048_576


def decode_all(data: bytes, max_packet_size: int = MAX) -> list[Packet]:
    decoder = Decoder(max_packet_size)
    decoder.feed(data)
    packets = []
    while (packet := decoder.next_packet()) is not None:
        packets.append(packet)
    assert decoder.buffered == 0, "a whole stream must leave nothing behind"
    return packets


def decode_error(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_all(data)
    return info.value


# ---- strategies (also used by test_mqtt_fuzz) --------------------------------------------------

# Control characters (category Cc, U+0000 included) are refused by the decoder.
mqtt_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
topic_filters = mqtt_text.filter(bool)  # a zero-length filter closes the connection
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.sampled_from(QoS)


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    level = draw(st.sampled_from(sorted(PROTOCOL_NAMES)))
    username = draw(st.none() | mqtt_text)
    # MQTT 3.1.1 forbids a password without a user name; 3.1 does not.
    password_allowed = username is not None or level == 3
    password = draw(st.none() | st.binary(max_size=8)) if password_allowed else None
    wills = st.builds(Will, mqtt_text, st.binary(max_size=8), qos_levels, st.booleans())
    will = draw(st.none() | wills)
    return Connect(
        protocol_name=PROTOCOL_NAMES[level],
        protocol_level=level,
        client_id=draw(mqtt_text),
        clean_session=draw(st.booleans()),
        keepalive=draw(st.integers(0, 0xFFFF)),
        username=username,
        password=password,
        will=will,
    )


@st.composite
def publishes(
    draw: st.DrawFn,
    ids: st.SearchStrategy[int] = packet_ids,
    topics: st.SearchStrategy[str] = mqtt_text,
) -> Publish:
    qos = draw(qos_levels)
    return Publish(
        topic=draw(topics),
        payload=draw(st.binary(max_size=300)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(ids) if qos else None,
    )


connacks = st.sampled_from(ConnAckCode).flatmap(
    lambda code: st.builds(ConnAck, st.just(code), st.booleans() if code == 0 else st.just(False))
)


def mqtt_packets(ids: st.SearchStrategy[int] = packet_ids) -> st.SearchStrategy[Packet]:
    """Any valid packet of the 14 types; a narrow `ids` makes packet id reuse likely."""
    return st.one_of(
        connects(),
        connacks,
        publishes(ids),
        st.builds(PubAck, ids),
        st.builds(PubRec, ids),
        st.builds(PubRel, ids),
        st.builds(PubComp, ids),
        st.builds(
            Subscribe,
            ids,
            st.lists(st.tuples(topic_filters, qos_levels), min_size=1, max_size=4).map(tuple),
        ),
        st.builds(
            SubAck,
            ids,
            st.lists(st.sampled_from((0, 1, 2, SUBACK_FAILURE)), min_size=1, max_size=4).map(tuple),
        ),
        st.builds(Unsubscribe, ids, st.lists(topic_filters, min_size=1, max_size=4).map(tuple)),
        st.builds(UnsubAck, ids),
        st.just(PingReq()),
        st.just(PingResp()),
        st.just(Disconnect()),
    )


packets = mqtt_packets()


# ---- round trips --------------------------------------------------------------------------------

@given(st.lists(packets, min_size=1, max_size=8), st.lists(st.integers(0, 5000), max_size=10))
def test_round_trip_at_arbitrary_split_points(sent: list[Packet], cuts: list[int]) -> None:
    stream = b"".join(encode(packet) for packet in sent)
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    decoder = Decoder(MAX)
    received = []
    for start, end in zip(points, points[1:], strict=False):
        decoder.feed(stream[start:end])
        while (packet := decoder.next_packet()) is not None:
            received.append(packet)
    assert received == sent
    assert decoder.buffered == 0


@given(packets)
def test_byte_by_byte_yields_nothing_until_the_last_byte(packet: Packet) -> None:
    data = encode(packet)
    decoder = Decoder(MAX)
    for byte in data[:-1]:
        decoder.feed(bytes((byte,)))
        assert decoder.next_packet() is None
    decoder.feed(data[-1:])
    assert decoder.next_packet() == packet
    assert decoder.next_packet() is None


def test_large_stream_in_chunks_is_compacted() -> None:
    packet = Publish("t/x", b"p" * 1000, QoS.AT_LEAST_ONCE, packet_id=1)
    data = encode(packet) * 500
    decoder = Decoder(MAX)
    count = 0
    for offset in range(0, len(data), 7000):
        decoder.feed(data[offset:offset + 7000])
        while decoder.next_packet() is not None:
            count += 1
        assert decoder.buffered < len(encode(packet))
        # Consumed bytes are dropped from the front: memory stays bounded on a long stream.
        assert len(decoder._buffer) < 2 * 65536 + 7000
    assert count == 500



def test_a_read_decoded_whole_is_not_kept() -> None:
    # An idle connection's decoder must not hold its last read until the next one.
    decoder = Decoder(MAX)
    decoder.feed(encode(Publish("t/x", b"p" * 8000)) * 2)
    assert decoder.next_packet() is not None
    assert decoder.next_packet() is not None
    assert decoder.next_packet() is None
    assert sys.getsizeof(decoder._buffer) < 100
    decoder.feed(encode(Publish("t/y", b"q")))  # and it decodes on as before
    assert decoder.next_packet() == Publish("t/y", b"q")

# ---- exact wire vectors -------------------------------------------------------------------------

# Captured from paho-mqtt 2.x (MQTTv311): client id "dev-1", user "user"/"secret", keepalive 60,
# will "kp1/app/will" = b"bye" at QoS 1, clean session.
PAHO_311_CONNECT = bytes.fromhex(
    "103200044d51545404ce003c00056465762d31000c6b70312f6170702f77696c6c0003627965"
    "0004757365720006736563726574"
)
# paho-mqtt MQTTv31, client id "dev-31", keepalive 60, clean session.
PAHO_31_CONNECT = bytes.fromhex("101400064d51497364700302003c00066465762d3331")
# paho: publish("kp1/app/dcx/tok/json", b'{"a":1}', qos=1) then
# subscribe([("kp1/app/dcx/tok/json/#", 1), ("a/+", 0)]).
PAHO_PUBLISH_SUBSCRIBE = bytes.fromhex(
    "321f00146b70312f6170702f6463782f746f6b2f6a736f6e00017b2261223a317d"
    "8221000200166b70312f6170702f6463782f746f6b2f6a736f6e2f23010003612f2b00"
)


def test_paho_311_connect() -> None:
    assert decode_all(PAHO_311_CONNECT) == [
        Connect(
            protocol_name="MQTT",
            protocol_level=4,
            client_id="dev-1",
            clean_session=True,
            keepalive=60,
            username="user",
            password=b"secret",
            will=Will("kp1/app/will", b"bye", QoS.AT_LEAST_ONCE, retain=False),
        )
    ]
    assert encode(decode_all(PAHO_311_CONNECT)[0]) == PAHO_311_CONNECT


def test_paho_31_connect() -> None:
    assert decode_all(PAHO_31_CONNECT) == [Connect("MQIsdp", 3, "dev-31", True, 60)]


def test_paho_publish_and_subscribe() -> None:
    assert decode_all(PAHO_PUBLISH_SUBSCRIBE) == [
        Publish("kp1/app/dcx/tok/json", b'{"a":1}', QoS.AT_LEAST_ONCE, packet_id=1),
        Subscribe(2, (("kp1/app/dcx/tok/json/#", QoS.AT_LEAST_ONCE), ("a/+", QoS.AT_MOST_ONCE))),
    ]


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (ConnAck(ConnAckCode.ACCEPTED), "20 02 00 00"),
        (ConnAck(ConnAckCode.ACCEPTED, session_present=True), "20 02 01 00"),
        (ConnAck(ConnAckCode.NOT_AUTHORIZED), "20 02 00 05"),
        (PubAck(1), "40 02 00 01"),
        (PubRec(0x1234), "50 02 12 34"),
        (PubRel(7), "62 02 00 07"),
        (PubComp(65535), "70 02 ff ff"),
        (SubAck(2, (1, 0, SUBACK_FAILURE)), "90 05 00 02 01 00 80"),
        (UnsubAck(3), "b0 02 00 03"),
        (PingReq(), "c0 00"),
        (PingResp(), "d0 00"),
        (Disconnect(), "e0 00"),
        (Publish("a/b", b"hi"), "30 07 00 03 61 2f 62 68 69"),
        (
            Publish("a", b"", QoS.EXACTLY_ONCE, retain=True, dup=True, packet_id=10),
            "3d 05 00 01 61 00 0a",
        ),
        (Unsubscribe(4, ("a/#",)), "a2 07 00 04 00 03 61 2f 23"),
    ],
)
def test_exact_wire_bytes(packet: Packet, wire: str) -> None:
    assert encode(packet) == bytes.fromhex(wire)
    assert decode_all(bytes.fromhex(wire)) == [packet]


@pytest.mark.parametrize(
    ("body_size", "header"),
    [
        (127, "7f"),
        (128, "80 01"),
        (16_383, "ff 7f"),
        (16_384, "80 80 01"),
        (2_097_151, "ff ff 7f"),
        (2_097_152, "80 80 80 01"),
    ],
)
def test_remaining_length_encoding(body_size: int, header: str) -> None:
    packet = Publish("t", b"x" * (body_size - 3))  # 2-byte length + 1-byte topic
    data = encode(packet)
    assert data.startswith(b"\x30" + bytes.fromhex(header))
    assert len(data) == 1 + len(bytes.fromhex(header)) + body_size
    assert decode_all(data, max_packet_size=body_size) == [packet]


# ---- decoding errors ----------------------------------------------------------------------------

def _connect_bytes(flags: int, payload: bytes, name: bytes = b"MQTT", level: int = 4) -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes((level, flags)) + b"\x00\x3c" + payload
    return bytes((0x10, len(body))) + body


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("00 00", "reserved"),
        ("f0 00", "reserved"),
        ("36 03 00 01 61", "QoS 3"),
        ("38 03 00 01 61", "DUP"),
        ("80 06 00 01 00 01 61 00", "flags"),  # SUBSCRIBE must carry 0b0010
        ("a0 05 00 01 00 01 61", "flags"),  # UNSUBSCRIBE too
        ("60 02 00 01", "flags"),  # PUBREL too
        ("42 02 00 01", "flags"),  # PUBACK must carry 0
        ("c1 00", "flags"),
        ("30 ff ff ff ff 01", "longer than 4 bytes"),
        ("40 03 00 01 00", "2 bytes"),
        ("40 01 00", "2 bytes"),
        ("40 02 00 00", "packet id 0"),
        ("b0 02 00 00", "packet id 0"),
        ("32 05 00 01 61 00 00", "packet id 0"),
        ("82 06 00 00 00 01 61 00", "packet id 0"),
        ("30 00", "truncated"),
        ("30 02 00 05", "truncated"),
        ("32 03 00 01 61", "truncated"),
        ("30 03 00 01 ff", "UTF-8"),
        ("30 04 00 02 c0 80", "UTF-8"),  # overlong NUL
        ("30 05 00 03 ed a0 80", "UTF-8"),  # encoded surrogate U+D800
        ("30 03 00 01 00", "U+0000"),
        ("82 06 00 01 00 01 00 00", "U+0000"),
        ("82 02 00 01", "no topic filter"),
        ("a2 02 00 01", "no topic filter"),
        ("82 06 00 01 00 01 61 03", "QoS"),
        ("82 06 00 01 00 01 61 04", "QoS"),  # reserved upper bits
        ("82 05 00 01 00 02 61", "truncated"),
        ("c0 01 00", "no body"),
        ("e0 01 00", "no body"),
        ("20 02 02 00", "reserved"),
        ("20 02 00 06", "not defined"),
        ("20 02 01 05", "session present"),
        ("20 03 00 00 00", "trailing"),
        ("90 02 00 01", "no return code"),
        ("90 03 00 01 03", "undefined"),
    ],
)
def test_decoding_errors(wire: str, reason: str) -> None:
    assert reason in decode_error(bytes.fromhex(wire)).reason


@pytest.mark.parametrize(
    ("flags", "payload", "reason"),
    [
        (0x03, b"\x00\x01a", "reserved flag"),
        (0x0A, b"\x00\x01a", "without the will flag"),  # will QoS 1, no will flag
        (0x22, b"\x00\x01a", "without the will flag"),  # will retain, no will flag
        (0x1E, b"\x00\x01a\x00\x01t\x00\x00", "will QoS is 3"),
        (0x42, b"\x00\x01a\x00\x01p", "password without a username"),
        (0x02, b"\x00\x01a\x00", "trailing"),
        (0x82, b"\x00\x01a", "truncated"),  # user name flag without user name
        (0x02, b"\x00\x02\xff\xfe", "UTF-8"),
    ],
)
def test_connect_errors(flags: int, payload: bytes, reason: str) -> None:
    error = decode_error(_connect_bytes(flags, payload))
    assert reason in error.reason
    assert error.connack is None


def test_mqtt_31_allows_a_password_without_a_username() -> None:
    [connect] = decode_all(_connect_bytes(0x42, b"\x00\x01a\x00\x01p", name=b"MQIsdp", level=3))
    assert isinstance(connect, Connect)
    assert (connect.username, connect.password) == (None, b"p")


@pytest.mark.parametrize(
    ("name", "level"), [(b"MQTT", 5), (b"MQTT", 3), (b"MQIsdp", 4), (b"MQTT", 0)]
)
def test_unsupported_protocol_asks_for_connack_1(name: bytes, level: int) -> None:
    # The body after the level may follow another layout (MQTT 5 properties): never parsed.
    error = decode_error(_connect_bytes(0x02, b"\x05\x11\x00\x00\x00\x0a", name=name, level=level))
    assert error.connack is ConnAckCode.UNACCEPTABLE_PROTOCOL_VERSION
    assert "unsupported protocol" in error.reason


@pytest.mark.parametrize("name", [b"HTTP", b"MQT", b"", b"MQTU", b"mqtt", b"MQTTT", b"MQIsdq"])
def test_a_wrong_protocol_name_closes_without_connack(name: bytes) -> None:
    # [MQTT-3.1.2-1]: not MQTT, so no MQTT answer (a CONNACK) either.
    error = decode_error(_connect_bytes(0x02, b"\x00\x01a", name=name, level=4))
    assert error.connack is None
    assert "neither 'MQTT' nor 'MQIsdp'" in error.reason


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [
        (b"a\x00b", "U+0000"),
        (b"\xed\xa0\x80", "not well-formed UTF-8"),  # the surrogate U+D800
        (b"\xed\xbf\xbf", "not well-formed UTF-8"),  # the surrogate U+DFFF
        (b"\xc0\x80", "not well-formed UTF-8"),  # overlong U+0000
        (b"a\x01", "U+0001"),
        (b"\x1f", "U+001F"),
        (b"a\x7f", "U+007F"),
        (b"\xc2\x80", "U+0080"),
        (b"\xc2\x9f", "U+009F"),
    ],
)
@pytest.mark.parametrize("field", ["client id", "will topic", "user name", "topic", "filter"])
def test_forbidden_characters_in_any_string_close(encoded: bytes, reason: str, field: str) -> None:
    string = len(encoded).to_bytes(2, "big") + encoded
    data = {
        "client id": _connect_bytes(0x02, string),
        "will topic": _connect_bytes(0x06, b"\x00\x01a" + string + b"\x00\x00"),
        "user name": _connect_bytes(0x82, b"\x00\x01a" + string),
        "topic": bytes((0x30, len(string))) + string,
        "filter": bytes((0x82, len(string) + 3)) + b"\x00\x01" + string + b"\x00",
    }[field]
    assert reason in decode_error(data).reason


def test_unicode_beyond_the_controls_is_accepted_and_kept() -> None:
    # U+00A0 follows the C1 block; U+FEFF is kept, never stripped [MQTT-1.5.3-3].
    client_id = "\u00a0\ufeffé\U0001f600"
    encoded = client_id.encode()
    [connect] = decode_all(_connect_bytes(0x02, len(encoded).to_bytes(2, "big") + encoded))
    assert isinstance(connect, Connect)
    assert connect.client_id == client_id


@pytest.mark.parametrize("packet", [b"\x82\x05\x00\x01\x00\x00\x00", b"\xa2\x04\x00\x01\x00\x00"])
def test_a_zero_length_topic_filter_closes(packet: bytes) -> None:
    assert "zero-length topic filter" in decode_error(packet).reason


def test_a_subscribe_over_the_filter_bound_is_refused_at_the_first_filter_too_many() -> None:
    # 20,000 filters, the last one malformed: only the first three are decoded.
    body = b"\x00\x01" + b"\x00\x01a\x00" * 19_999 + b"\x00\x05ab"
    length = len(body)  # 100,004: three length bytes
    data = b"\x82" + bytes((length & 0x7F | 0x80, length >> 7 & 0x7F | 0x80, length >> 14)) + body
    decoder = Decoder(MAX, max_topic_filters=2)
    decoder.feed(data)
    with pytest.raises(ProtocolError, match="more than 2 topic filters"):
        decoder.next_packet()
    decoder = Decoder(MAX, max_topic_filters=3)
    decoder.feed(b"\x82\x0e\x00\x01" + b"\x00\x01a\x00" * 3)
    assert isinstance(decoder.next_packet(), Subscribe)


def test_bad_first_byte_is_reported_before_the_length() -> None:
    decoder = Decoder(MAX)
    decoder.feed(b"\xf0")
    with pytest.raises(ProtocolError, match="reserved"):
        decoder.next_packet()


def test_too_large_is_raised_from_the_header_alone() -> None:
    decoder = Decoder(max_packet_size=1000)
    decoder.feed(b"\x30\xe9\x07")  # remaining length 1001, no body sent
    with pytest.raises(PacketTooLargeError, match="1001"):
        decoder.next_packet()


def test_too_large_single_byte_length() -> None:
    decoder = Decoder(max_packet_size=10)
    decoder.feed(b"\x30\x0b")
    with pytest.raises(PacketTooLargeError):
        decoder.next_packet()


def test_max_packet_size_is_inclusive() -> None:
    packet = Publish("t", b"x" * 997)  # body of exactly 1000 bytes
    assert decode_all(encode(packet), max_packet_size=1000) == [packet]


def test_incomplete_length_waits_for_more_bytes() -> None:
    decoder = Decoder(MAX)
    decoder.feed(b"\x30\x80")
    assert decoder.next_packet() is None
    decoder.feed(b"\x01" + b"\x00\x01t" + b"x" * 125)
    assert decoder.next_packet() == Publish("t", b"x" * 125)


# ---- encoding errors ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "packet",
    [
        Publish("t", b"", QoS.AT_LEAST_ONCE),  # QoS 1 needs a packet id
        Publish("t", b"", packet_id=3),  # QoS 0 has none
        Publish("t" * 65536, b""),
        Publish("\ud800", b""),
        PubAck(65536),
        Connect("MQTT", 4, "c", True, keepalive=70000),
    ],
)
def test_unrepresentable_packets_are_local_errors(packet: Packet) -> None:
    with pytest.raises(LocalProtocolError):
        encode(packet)


def test_encode_rejects_non_packets() -> None:
    with pytest.raises(LocalProtocolError, match="not an MQTT packet"):
        encode("PUBLISH")  # type: ignore[arg-type]


def test_a_repeated_topic_is_decoded_again_when_its_bytes_differ() -> None:
    # The decoder reuses the last topic's text for the same bytes: same-length neighbours,
    # a longer topic, an empty one and a forbidden one must each still be decoded on their own.
    topics = ["kp1/a/dcx/t1/json", "kp1/a/dcx/t1/json", "kp1/a/dcx/t2/json", "kp1/a/dcx/t1/json",
              "", "", "kp1/a/dcx/t1/json/1", "é" * 8, "é" * 8, "e" * 16]
    sent = [Publish(topic, b"p", QoS.AT_LEAST_ONCE, packet_id=n + 1)
            for n, topic in enumerate(topics)]
    assert decode_all(b"".join(map(encode, sent))) == sent
    good = encode(Publish("kp1/a", b"p"))
    same_length_bad = bytes.fromhex("30 07 00 05 6b 70 31 00 61")  # "kp1\0a"
    assert "U+0000" in decode_error(good + good + same_length_bad).reason


@given(st.lists(st.tuples(st.sampled_from(["a/b", "a/c", "b/b", "a/bb", "", "ü/b"]),
                          st.sampled_from(list(QoS))), min_size=1, max_size=12))
def test_publishes_with_repeating_topics_round_trip(sent: list[tuple[str, QoS]]) -> None:
    packets = [Publish(topic, b"x", qos, packet_id=None if qos is QoS.AT_MOST_ONCE else 7)
               for topic, qos in sent]
    assert decode_all(b"".join(map(encode, packets))) == packets
