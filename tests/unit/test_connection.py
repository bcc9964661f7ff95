"""The server connection state machine, one protocol rule per test (client bytes from `encode`)."""

from __future__ import annotations

import pytest

from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.connection import (
    ConnectionState,
    ConnectReceived,
    DisconnectReceived,
    ServerConnection,
    Subscribed,
    Unsubscribed,
)
from kpc_trio.mqtt.errors import (
    InvalidTopicError,
    LocalProtocolError,
    PacketTooLargeError,
    ProtocolError,
)
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
)

CONNECT = Connect("MQTT", 4, "dev-1", clean_session=True, keepalive=60)


def wire(*packets: Packet) -> bytes:
    return b"".join(encode(packet) for packet in packets)


def sent(conn: ServerConnection) -> list[Packet]:
    """Decode everything the server queued (it must always be well-formed MQTT)."""
    decoder = Decoder(max_packet_size=1 << 28)
    decoder.feed(conn.data_to_send())
    packets = []
    while (packet := decoder.next_packet()) is not None:
        packets.append(packet)
    assert decoder.buffered == 0
    return packets


def connected(**kwargs: object) -> ServerConnection:
    conn = ServerConnection(**kwargs)  # type: ignore[arg-type]
    assert conn.receive_data(encode(CONNECT)) == [ConnectReceived(CONNECT)]
    conn.accept_connect()
    assert conn.data_to_send() == bytes.fromhex("20 02 00 00")
    return conn


# ---- CONNECT ------------------------------------------------------------------------------------

def test_connect_then_accept() -> None:
    conn = ServerConnection()
    assert conn.state is ConnectionState.AWAIT_CONNECT
    assert conn.receive_data(encode(CONNECT)) == [ConnectReceived(CONNECT)]
    assert conn.state is ConnectionState.CONNECTING
    assert (conn.client_id, conn.keepalive) == ("dev-1", 60)
    assert conn.pending_output == 0
    conn.accept_connect()
    assert conn.state is ConnectionState.CONNECTED
    assert conn.pending_output == 4
    assert conn.data_to_send() == bytes.fromhex("20 02 00 00")
    assert conn.data_to_send() == b""


def test_connect_split_across_reads() -> None:
    conn = ServerConnection()
    data = encode(CONNECT)
    assert conn.receive_data(data[:5]) == []
    assert conn.receive_data(data[5:]) == [ConnectReceived(CONNECT)]


@pytest.mark.parametrize("code", [code for code in ConnAckCode if code is not ConnAckCode.ACCEPTED])
def test_refuse_connect(code: ConnAckCode) -> None:
    conn = ServerConnection()
    conn.receive_data(encode(CONNECT) + encode(Publish("a", b"held")))
    conn.refuse_connect(code)
    assert conn.state is ConnectionState.CLOSED
    assert sent(conn) == [ConnAck(code)]
    assert conn.receive_data(b"") == []
    assert conn.receive_data(encode(PingReq())) == []
    assert conn.data_to_send() == b""


def test_refuse_with_accepted_is_a_local_error() -> None:
    conn = ServerConnection()
    conn.receive_data(encode(CONNECT))
    with pytest.raises(LocalProtocolError):
        conn.refuse_connect(ConnAckCode.ACCEPTED)


def test_accept_twice_is_a_local_error() -> None:
    conn = connected()
    with pytest.raises(LocalProtocolError, match="CONNECTED"):
        conn.accept_connect()


@pytest.mark.parametrize(
    "first", [PingReq(), Publish("a", b"x"), Subscribe(1, (("a", QoS.AT_MOST_ONCE),))]
)
def test_first_packet_must_be_connect(first: Packet) -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError, match="first packet must be CONNECT") as info:
        conn.receive_data(encode(first))
    assert info.value.connack is None
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(("name", "level"), [("MQTT", 5), ("MQTT", 3), ("MQIsdp", 4), ("MQTT", 2)])
def test_unsupported_protocol_gets_connack_1(name: str, level: int) -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(Connect(name, level, "c", True, 60)))
    assert info.value.connack is ConnAckCode.UNACCEPTABLE_PROTOCOL_VERSION
    assert conn.state is ConnectionState.CLOSED
    assert sent(conn) == [ConnAck(ConnAckCode.UNACCEPTABLE_PROTOCOL_VERSION)]


def test_mqtt_31_is_accepted() -> None:
    connect = Connect("MQIsdp", 3, "old", True, 30)
    conn = ServerConnection()
    assert conn.receive_data(encode(connect)) == [ConnectReceived(connect)]


def test_empty_client_id_without_clean_session_is_rejected() -> None:
    conn = ServerConnection()
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(Connect("MQTT", 4, "", clean_session=False, keepalive=60)))
    assert info.value.connack is ConnAckCode.IDENTIFIER_REJECTED
    assert sent(conn) == [ConnAck(ConnAckCode.IDENTIFIER_REJECTED)]
    assert conn.state is ConnectionState.CLOSED


def test_empty_client_id_with_clean_session_is_assigned() -> None:
    conn = ServerConnection(assign_client_id=lambda: "assigned-7")
    connect = Connect("MQTT", 4, "", clean_session=True, keepalive=60)
    assert conn.receive_data(encode(connect)) == [ConnectReceived(connect)]
    assert conn.client_id == "assigned-7"


@pytest.mark.parametrize(
    ("connect", "limit"),
    [
        (Connect("MQIsdp", 3, "", clean_session=True, keepalive=0), 256),  # 3.1: 1-23 characters
        (Connect("MQIsdp", 3, "x" * 24, clean_session=True, keepalive=0), 256),
        (Connect("MQTT", 4, "x" * 257, clean_session=True, keepalive=0), 256),
        (Connect("MQTT", 4, "é" * 5, clean_session=True, keepalive=0), 9),  # 10 UTF-8 bytes
    ],
)
def test_client_ids_out_of_bounds_get_connack_2(connect: Connect, limit: int) -> None:
    conn = ServerConnection(max_client_id_length=limit)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(connect))
    assert info.value.connack is ConnAckCode.IDENTIFIER_REJECTED
    assert sent(conn) == [ConnAck(ConnAckCode.IDENTIFIER_REJECTED)]


@pytest.mark.parametrize(
    "connect",
    [
        Connect("MQIsdp", 3, "x", clean_session=True, keepalive=0),
        Connect("MQIsdp", 3, "x" * 23, clean_session=True, keepalive=0),
        Connect("MQTT", 4, "x" * 256, clean_session=True, keepalive=0),
        Connect("MQTT", 4, "é" * 128, clean_session=True, keepalive=0),  # 256 UTF-8 bytes
    ],
)
def test_client_ids_within_bounds_are_accepted(connect: Connect) -> None:
    assert ServerConnection().receive_data(encode(connect)) == [ConnectReceived(connect)]


def test_default_assigned_client_ids_are_unique() -> None:
    ids = set()
    for _ in range(2):
        conn = ServerConnection()
        conn.receive_data(encode(Connect("MQTT", 4, "", clean_session=True, keepalive=0)))
        ids.add(conn.client_id)
    assert len(ids) == 2 and all(ids)


def test_bytes_after_connect_are_held_until_accepted() -> None:
    conn = ServerConnection()
    pipelined = wire(CONNECT, Publish("a/b", b"1", QoS.AT_LEAST_ONCE, packet_id=1), PingReq())
    assert conn.receive_data(pipelined) == [ConnectReceived(CONNECT)]
    # Still deciding: more bytes are held too.
    assert conn.receive_data(encode(Publish("a/b", b"2"))) == []
    assert conn.data_to_send() == b""
    conn.accept_connect()
    assert conn.receive_data(b"") == [
        Publish("a/b", b"1", QoS.AT_LEAST_ONCE, packet_id=1),
        Publish("a/b", b"2"),
    ]
    assert sent(conn) == [ConnAck(ConnAckCode.ACCEPTED), PingResp()]


def test_second_connect_is_a_protocol_error() -> None:
    conn = connected()
    with pytest.raises(ProtocolError, match="second CONNECT") as info:
        conn.receive_data(encode(CONNECT))
    assert info.value.connack is None
    assert conn.state is ConnectionState.CLOSED


def test_second_connect_with_bad_level_gets_no_connack() -> None:
    conn = connected()
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(Connect("MQTT", 5, "c", True, 60)))
    assert info.value.connack is None
    assert conn.data_to_send() == b""


# ---- inbound PUBLISH ---------------------------------------------------------------------------

def test_qos0_publish() -> None:
    conn = connected()
    events = conn.receive_data(encode(Publish("kp1/a/b", b"x", retain=True)))
    assert events == [Publish("kp1/a/b", b"x", retain=True)]
    assert conn.inflight_in == 0
    assert conn.data_to_send() == b""


def test_qos1_puback_only_after_acknowledge() -> None:
    conn = connected()
    events = conn.receive_data(encode(Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=1)))
    assert events == [Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=1)]
    assert conn.inflight_in == 1
    assert conn.data_to_send() == b""
    conn.acknowledge(1)
    assert conn.data_to_send() == bytes.fromhex("40 02 00 01")
    assert conn.inflight_in == 0


def test_qos1_retransmission_while_pending_emits_no_event() -> None:
    conn = connected()
    publish = Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=5)
    assert len(conn.receive_data(encode(publish))) == 1
    dup = Publish("t", b"x", QoS.AT_LEAST_ONCE, dup=True, packet_id=5)
    assert conn.receive_data(encode(dup)) == []
    conn.acknowledge(5)
    assert sent(conn) == [PubAck(5)]
    # Once acknowledged the id is free: the same id is a new message.
    assert len(conn.receive_data(encode(publish))) == 1


def test_qos2_flow() -> None:
    conn = connected()
    publish = Publish("t", b"x", QoS.EXACTLY_ONCE, packet_id=7)
    assert conn.receive_data(encode(publish)) == [
        Publish("t", b"x", QoS.EXACTLY_ONCE, packet_id=7)
    ]
    # Retransmitted before the app acknowledged: no event, nothing sent.
    assert conn.receive_data(encode(publish)) == []
    assert conn.data_to_send() == b""
    conn.acknowledge(7)
    assert conn.data_to_send() == bytes.fromhex("50 02 00 07")
    assert conn.inflight_in == 0
    # Retransmitted while awaiting PUBREL: PUBREC again, still no event.
    assert conn.receive_data(encode(publish)) == []
    assert sent(conn) == [PubRec(7)]
    assert conn.receive_data(encode(PubRel(7))) == []
    assert conn.data_to_send() == bytes.fromhex("70 02 00 07")
    # The flow is over: the id may carry a new message.
    assert len(conn.receive_data(encode(publish))) == 1


def test_pubrel_for_unknown_id_closes_a_clean_session() -> None:
    conn = connected()
    with pytest.raises(ProtocolError, match="no QoS 2 flow"):
        conn.receive_data(encode(PubRel(99)))
    assert conn.state is ConnectionState.CLOSED


def test_pubrel_for_unknown_id_gets_pubcomp_when_the_client_resumes_a_session() -> None:
    # CleanSession 0: the client re-sends the PUBRELs of its last connection [MQTT-4.4.0-1].
    conn = ServerConnection()
    conn.receive_data(encode(Connect("MQTT", 4, "dev-1", clean_session=False, keepalive=60)))
    conn.accept_connect()
    conn.data_to_send()
    assert conn.receive_data(encode(PubRel(99))) == []
    assert sent(conn) == [PubComp(99)]


@pytest.mark.parametrize("packet", [PubRec(1), PubComp(1)])
def test_pubrec_and_pubcomp_close_the_server_never_sends_qos_2(packet: Packet) -> None:
    conn = connected()
    with pytest.raises(ProtocolError, match="never sends QoS 2"):
        conn.receive_data(encode(packet))


def test_qos2_messages_awaiting_pubrel_are_bounded_by_max_inflight() -> None:
    conn = connected(max_inflight=2)
    for packet_id in (1, 2):
        publish = Publish("t", b"x", QoS.EXACTLY_ONCE, packet_id=packet_id)
        assert conn.receive_data(encode(publish)) == [publish]
        conn.acknowledge(packet_id)
    # A retransmission of a flow under way is no new flow; QoS 1 is not bounded here.
    conn.receive_data(wire(Publish("t", b"x", QoS.EXACTLY_ONCE, dup=True, packet_id=2),
                           Publish("t", b"y", QoS.AT_LEAST_ONCE, packet_id=9)))
    assert sent(conn) == [PubRec(1), PubRec(2), PubRec(2)]
    conn.receive_data(encode(PubRel(1)))
    assert sent(conn) == [PubComp(1)]
    [event] = conn.receive_data(encode(Publish("t", b"z", QoS.EXACTLY_ONCE, packet_id=3)))
    with pytest.raises(ProtocolError, match="beyond 2 QoS 2 messages"):
        conn.receive_data(encode(Publish("t", b"w", QoS.EXACTLY_ONCE, packet_id=4)))


def test_pubrel_before_pubrec_is_a_protocol_error() -> None:
    conn = connected()
    conn.receive_data(encode(Publish("t", b"x", QoS.EXACTLY_ONCE, packet_id=3)))
    with pytest.raises(ProtocolError, match="before the server sent PUBREC"):
        conn.receive_data(encode(PubRel(3)))


@pytest.mark.parametrize(
    ("first_qos", "then_qos", "acknowledge_first"),
    [
        (QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE, False),
        (QoS.EXACTLY_ONCE, QoS.AT_LEAST_ONCE, False),
        (QoS.EXACTLY_ONCE, QoS.AT_LEAST_ONCE, True),
    ],
)
def test_packet_id_reused_at_another_qos_mid_flow(
    first_qos: QoS, then_qos: QoS, acknowledge_first: bool
) -> None:
    conn = connected()
    conn.receive_data(encode(Publish("t", b"x", first_qos, packet_id=4)))
    if acknowledge_first:
        conn.acknowledge(4)
    with pytest.raises(ProtocolError, match="reused"):
        conn.receive_data(encode(Publish("t", b"x", then_qos, packet_id=4)))


def test_acknowledge_unknown_id_is_a_local_error() -> None:
    conn = connected()
    with pytest.raises(LocalProtocolError, match="42"):
        conn.acknowledge(42)


@pytest.mark.parametrize("topic", ["a/+", "#", ""])
def test_publish_to_invalid_topic_is_a_protocol_error(topic: str) -> None:
    conn = connected()
    with pytest.raises(InvalidTopicError):
        conn.receive_data(encode(Publish(topic, b"x")))
    assert conn.state is ConnectionState.CLOSED


@pytest.mark.parametrize("topic", ["a/+", "#", ""])
def test_an_invalid_topic_after_a_repeated_valid_one_is_still_refused(topic: str) -> None:
    conn = connected()
    assert len(conn.receive_data(wire(Publish("a/b", b"x"), Publish("a/b", b"y")))) == 2
    with pytest.raises(InvalidTopicError):
        conn.receive_data(wire(Publish("a/b", b"z"), Publish(topic, b"x")))
    assert conn.state is ConnectionState.CLOSED


def test_packet_too_large_closes() -> None:
    conn = connected(max_packet_size=100)
    with pytest.raises(PacketTooLargeError):
        conn.receive_data(encode(Publish("t", b"x" * 200))[:4])
    assert conn.state is ConnectionState.CLOSED


def test_several_packets_in_one_read() -> None:
    conn = connected()
    events = conn.receive_data(
        wire(*(Publish("t", bytes((i,)), QoS.AT_LEAST_ONCE, packet_id=i + 1) for i in range(3)))
    )
    assert events == [
        Publish("t", bytes((i,)), QoS.AT_LEAST_ONCE, packet_id=i + 1) for i in range(3)
    ]
    assert conn.inflight_in == 3


def test_messages_before_a_violation_in_the_same_read_are_discarded() -> None:
    conn = connected()
    with pytest.raises(ProtocolError):
        conn.receive_data(encode(Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=1)) + b"\x00\x00")
    assert conn.inflight_in == 0  # no event was delivered, so nothing awaits acknowledgement
    assert conn.data_to_send() == b""


# ---- other client packets ------------------------------------------------------------------------

def test_pingreq_gets_pingresp() -> None:
    conn = connected()
    assert conn.receive_data(encode(PingReq())) == []
    assert conn.data_to_send() == bytes.fromhex("d0 00")


def test_subscribe_grants_at_most_qos_1_and_refuses_invalid_filters() -> None:
    conn = connected()
    subscribe = Subscribe(
        9,
        (
            ("kp1/app/dcx/tok/json/#", QoS.EXACTLY_ONCE),
            ("a/#/b", QoS.AT_LEAST_ONCE),
            ("a/+", QoS.AT_MOST_ONCE),
        ),
    )
    assert conn.receive_data(encode(subscribe)) == [
        Subscribed((("kp1/app/dcx/tok/json/#", QoS.AT_LEAST_ONCE), ("a/+", QoS.AT_MOST_ONCE)))
    ]
    assert sent(conn) == [SubAck(9, (1, SUBACK_FAILURE, 0))]
    assert conn.subscription_qos("kp1/app/dcx/tok/json/status") is QoS.AT_LEAST_ONCE
    assert conn.subscription_qos("a/x") is QoS.AT_MOST_ONCE
    assert conn.subscription_qos("a/#/b") is None
    assert conn.subscription_qos("other") is None


def test_subscription_qos_is_the_highest_match() -> None:
    conn = connected()
    conn.receive_data(encode(Subscribe(1, (("a/#", QoS.AT_MOST_ONCE), ("a/+", QoS.AT_LEAST_ONCE)))))
    assert conn.subscription_qos("a/b") is QoS.AT_LEAST_ONCE
    assert conn.subscription_qos("a/b/c") is QoS.AT_MOST_ONCE


def test_subscriptions_beyond_the_bound_get_suback_failure() -> None:
    conn = connected(max_subscriptions=2)
    conn.receive_data(encode(Subscribe(1, (("a", QoS.AT_MOST_ONCE), ("b/#", QoS.AT_MOST_ONCE)))))
    # Replacing a filter held is no new subscription; a third one is refused, not the connection.
    events = conn.receive_data(encode(Subscribe(2, (("c", QoS.AT_MOST_ONCE),
                                                    ("b/#", QoS.AT_LEAST_ONCE)))))
    assert events == [Subscribed((("b/#", QoS.AT_LEAST_ONCE),))]
    assert sent(conn) == [SubAck(1, (0, 0)), SubAck(2, (SUBACK_FAILURE, 1))]
    assert conn.subscription_qos("c") is None
    conn.receive_data(encode(Unsubscribe(3, ("a",))))
    conn.receive_data(encode(Subscribe(4, (("c", QoS.AT_MOST_ONCE),))))
    assert sent(conn) == [UnsubAck(3), SubAck(4, (0,))]
    with pytest.raises(ProtocolError, match="more than 2 topic filters"):
        conn.receive_data(encode(Subscribe(5, (("x", 0), ("y", 0), ("z", 0)))))


def test_subscriptions_beyond_max_packet_size_bytes_get_suback_failure() -> None:
    conn = connected(max_packet_size=64)
    conn.receive_data(encode(Subscribe(1, (("a" * 40, QoS.AT_MOST_ONCE),))))
    conn.receive_data(encode(Subscribe(2, (("b" * 25, QoS.AT_MOST_ONCE),  # 65 bytes in all
                                            ("c" * 24, QoS.AT_MOST_ONCE)))))
    assert sent(conn) == [SubAck(1, (0,)), SubAck(2, (SUBACK_FAILURE, 0))]
    conn.receive_data(encode(Unsubscribe(3, ("a" * 40,))))
    conn.receive_data(encode(Subscribe(4, (("b" * 25, QoS.AT_MOST_ONCE),))))
    assert sent(conn) == [UnsubAck(3), SubAck(4, (0,))]


def test_unsubscribe() -> None:
    conn = connected()
    conn.receive_data(encode(Subscribe(1, (("a/+", QoS.AT_LEAST_ONCE),))))
    conn.data_to_send()
    events = conn.receive_data(encode(Unsubscribe(2, ("a/+", "never/subscribed"))))
    assert events == [Unsubscribed(("a/+", "never/subscribed"))]
    assert conn.data_to_send() == bytes.fromhex("b0 02 00 02")
    assert conn.subscription_qos("a/b") is None


def test_disconnect_closes_and_ignores_the_rest() -> None:
    conn = connected()
    events = conn.receive_data(wire(Disconnect(), PingReq(), Publish("t", b"late")))
    assert events == [DisconnectReceived()]
    assert conn.state is ConnectionState.CLOSED
    assert conn.receive_data(encode(PingReq())) == []
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "packet", [ConnAck(ConnAckCode.ACCEPTED), SubAck(1, (0,)), UnsubAck(1), PingResp()]
)
def test_server_to_client_packets_are_protocol_errors(packet: Packet) -> None:
    conn = connected()
    with pytest.raises(ProtocolError, match="server-to-client"):
        conn.receive_data(encode(packet))
    assert conn.state is ConnectionState.CLOSED


def test_after_a_protocol_error_nothing_more_is_processed() -> None:
    conn = connected()
    with pytest.raises(ProtocolError):
        conn.receive_data(b"\x00\x00")
    assert conn.receive_data(encode(PingReq())) == []
    assert conn.data_to_send() == b""


# ---- outbound PUBLISH ---------------------------------------------------------------------------

def test_publish_qos0() -> None:
    conn = connected()
    assert conn.publish("kp1/a/status", b"ok", QoS.AT_MOST_ONCE) is None
    assert sent(conn) == [Publish("kp1/a/status", b"ok")]
    assert conn.inflight_out == 0


def test_publish_qos2_is_capped_at_qos1() -> None:
    conn = connected()
    assert conn.publish("t", b"x", QoS.EXACTLY_ONCE) == 1
    assert sent(conn) == [Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=1)]
    assert conn.inflight_out == 1


def test_puback_clears_inflight_and_unknown_ids_close() -> None:
    conn = connected()
    first = conn.publish("t", b"x", QoS.AT_LEAST_ONCE)
    second = conn.publish("t", b"y", QoS.AT_LEAST_ONCE)
    assert (first, second) == (1, 2)
    assert conn.receive_data(wire(PubAck(1))) == []
    assert conn.inflight_out == 1
    assert conn.receive_data(wire(PubAck(2))) == []
    assert conn.inflight_out == 0
    with pytest.raises(ProtocolError, match="not waiting for"):
        conn.receive_data(wire(PubAck(2)))  # a second PUBACK for the same message


def test_packet_ids_wrap_and_skip_ids_in_flight() -> None:
    conn = connected()
    ids = [conn.publish("t", b"", QoS.AT_LEAST_ONCE) for _ in range(0xFFFF)]
    assert ids == list(range(1, 0x10000))
    with pytest.raises(LocalProtocolError, match="in flight"):
        conn.publish("t", b"", QoS.AT_LEAST_ONCE)
    conn.receive_data(wire(PubAck(1), PubAck(3)))
    assert conn.publish("t", b"", QoS.AT_LEAST_ONCE) == 1
    assert conn.publish("t", b"", QoS.AT_LEAST_ONCE) == 3


def test_publish_needs_connected_state_and_a_valid_topic() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError, match="AWAIT_CONNECT"):
        conn.publish("t", b"", QoS.AT_MOST_ONCE)
    conn = connected()
    with pytest.raises(LocalProtocolError, match="wildcard"):
        conn.publish("t/#", b"", QoS.AT_MOST_ONCE)


def test_close_by_the_application() -> None:
    conn = connected()
    conn.receive_data(encode(Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=1)))
    conn.publish("t", b"queued", QoS.AT_MOST_ONCE)
    conn.close()
    assert conn.state is ConnectionState.CLOSED
    conn.acknowledge(1)  # a relay finishing late is not an error, but nothing more is sent
    assert conn.inflight_in == 0
    assert sent(conn) == [Publish("t", b"queued")]
    assert conn.receive_data(encode(PingReq())) == []
    assert conn.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        conn.publish("t", b"", QoS.AT_MOST_ONCE)
