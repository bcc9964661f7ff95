"""MQTT 3.1.1 conformance vectors: hand-written bytes a device sends and the bytes KPC must answer.

Every packet below was written by hand from the specification (OASIS MQTT 3.1.1, 2014), never by
kpc_trio's encoder; `'text'` stands for its UTF-8 bytes, `(...)*n` for n copies. Lengths are
hexadecimal and counted by hand: the remaining length of a CONNECT is 10 (variable header)
plus its payload, of a PUBLISH 2 + topic (+ 2 for a packet id) + payload.

The Kaa side is the simulated echo extension `dcx` (endpoint-aware, token `token-1`): a request
to `kp1/demo_application_v1/dcx/token-1/json/<request id>` is answered on `.../status` with the
request's payload, at the request's QoS (at most 1) raised to the highest matching subscription.
"""

from __future__ import annotations

from tests.conformance.steps import (
    Step,
    Subprotocol,
    Vector,
    any_order,
    closed,
    expect,
    relayed,
    send,
)

# CONNECT, MQTT 3.1.1, clean session, no keepalive, client id "dev1": 10 + 6 = 0x10.
CONNECT = "10 10 00 04 'MQTT' 04 02 00 00 00 04 'dev1'"
CONNACK = "20 02 00 00"
PINGREQ, PINGRESP = "c0 00", "d0 00"

# A request (42 bytes, request id 1) and the topic of its answer (49 bytes).
REQUEST = "'kp1/demo_application_v1/dcx/token-1/json/1'"
STATUS = "'kp1/demo_application_v1/dcx/token-1/json/1/status'"
# QoS 0 request "p1" (2 + 42 + 2 = 0x2e) and its QoS 0 answer (2 + 49 + 2 = 0x35).
REQUEST_QOS0 = f"30 2e 00 2a {REQUEST} 'p1'"
ANSWER_QOS0 = f"30 35 00 31 {STATUS} 'p1'"
# The answer at QoS 1, server packet id 1 (2 + 49 + 2 + 2 = 0x37).
ANSWER_QOS1 = f"32 37 00 31 {STATUS} 00 01 'p1'"
# A message without request id (40 bytes): relayed, never answered.
MESSAGE = "'kp1/demo_application_v1/dcx/token-1/json'"
# Filters: the answer topic exactly (49), all of this resource path (42), any request id (49).
ALL_JSON = "'kp1/demo_application_v1/dcx/token-1/json/#'"
ANY_STATUS = "'kp1/demo_application_v1/dcx/token-1/json/+/status'"


def connected(*steps: Step, on: str = "a") -> tuple[Step, ...]:
    """Device `on` connects as "dev1" and is accepted, then `steps` (which name their device)."""
    return (send(CONNECT, on), expect(CONNACK, on), *steps)


def connect_closes(name: str, statements: tuple[str, ...], connect: str) -> Vector:
    """A CONNECT that must close the connection without any CONNACK."""
    return Vector(name, statements, (send(connect), closed()))


def packet_closes(name: str, statements: tuple[str, ...], packet: str) -> Vector:
    """A packet after an accepted CONNECT that must close the connection, answering nothing."""
    return Vector(name, statements, connected(send(packet), closed()))


DATA_REPRESENTATION = [
    connect_closes("client-id-surrogate", ("MQTT-1.5.3-1", "MQTT-3.1.3-4"),
                   "10 0f 00 04 'MQTT' 04 02 00 00 00 03 ed a0 80"),
    connect_closes("client-id-overlong-nul", ("MQTT-1.5.3-1",),
                   "10 0e 00 04 'MQTT' 04 02 00 00 00 02 c0 80"),
    packet_closes("topic-invalid-utf8", ("MQTT-1.5.3-1", "MQTT-3.3.2-1"), "30 04 00 02 'a' ff"),
    packet_closes("subscribe-filter-surrogate", ("MQTT-1.5.3-1", "MQTT-3.8.3-1"),
                  "82 08 00 01 00 03 ed bf bf 00"),
    packet_closes("unsubscribe-filter-invalid-utf8", ("MQTT-1.5.3-1", "MQTT-3.10.3-1"),
                  "a2 05 00 01 00 01 ff"),
    connect_closes("client-id-nul", ("MQTT-1.5.3-2",),
                   "10 0f 00 04 'MQTT' 04 02 00 00 00 03 'a' 00 'b'"),
    packet_closes("topic-nul", ("MQTT-1.5.3-2", "MQTT-4.7.3-2"), "30 05 00 03 'a' 00 'b'"),
    packet_closes("subscribe-filter-nul", ("MQTT-1.5.3-2", "MQTT-4.7.3-2"),
                  "82 08 00 01 00 03 'a' 00 'b' 00"),
    packet_closes("unsubscribe-filter-nul", ("MQTT-1.5.3-2", "MQTT-4.7.3-2"),
                  "a2 07 00 01 00 03 'a' 00 'b'"),
    # U+FEFF inside the resource path comes back unchanged in the answer's topic.
    Vector("bom-kept", ("MQTT-1.5.3-3", "MQTT-4.7.3-4"), connected(
        send("30 31 00 2d 'kp1/demo_application_v1/dcx/token-1/' ef bb bf 'json/1' 'p1'"),
        expect("30 38 00 34 'kp1/demo_application_v1/dcx/token-1/' ef bb bf 'json/1/status' 'p1'"),
    )),
]

# Control characters U+0001-U+001F and U+007F-U+009F: allowed by MQTT 3.1.1, refused by KPC.
CONTROL_CHARACTERS = [
    connect_closes("client-id-control-u0001", ("KPC-control-characters",),
                   "10 0e 00 04 'MQTT' 04 02 00 00 00 02 'a' 01"),
    connect_closes("user-name-control-u007f", ("KPC-control-characters",),
                   "10 11 00 04 'MQTT' 04 82 00 00 00 01 'a' 00 02 'u' 7f"),
    connect_closes("will-topic-control-u0080", ("KPC-control-characters",),
                   "10 13 00 04 'MQTT' 04 06 00 00 00 01 'a' 00 02 c2 80 00 00"),
    packet_closes("topic-control-u001f", ("KPC-control-characters",), "30 05 00 03 'a' 1f 'b'"),
    packet_closes("filter-control-u009f", ("KPC-control-characters",),
                  "82 08 00 01 00 03 'a' c2 9f 00"),
]

FIXED_HEADER = [
    packet_closes("pubrel-flags-0000", ("MQTT-2.2.2-1", "MQTT-2.2.2-2", "MQTT-3.6.1-1"),
                  "60 02 00 01"),
    packet_closes("subscribe-flags-0000", ("MQTT-2.2.2-2", "MQTT-3.8.1-1"),
                  "80 06 00 01 00 01 'a' 00"),
    packet_closes("unsubscribe-flags-0000", ("MQTT-2.2.2-2", "MQTT-3.10.1-1"),
                  "a0 05 00 01 00 01 'a'"),
    packet_closes("pingreq-flags-0001", ("MQTT-2.2.2-2",), "c1 00"),
    packet_closes("puback-flags-0010", ("MQTT-2.2.2-2",), "42 02 00 01"),
    connect_closes("connect-flags-0001", ("MQTT-2.2.2-2",),
                   "11 10 00 04 'MQTT' 04 02 00 00 00 04 'dev1'"),
    packet_closes("publish-qos-3", ("MQTT-2.2.2-2", "MQTT-3.3.1-4"), "36 05 00 01 'a' 00 01"),
    packet_closes("publish-qos-0-dup", ("MQTT-3.3.1-2",), "38 03 00 01 'a'"),
    packet_closes("reserved-type-15", ("MQTT-2.2.2-2", "MQTT-4.8.0-1"), "f0 00"),
    packet_closes("remaining-length-5-bytes", ("MQTT-4.8.0-1",), "30 ff ff ff ff 01"),
]

PACKET_IDENTIFIERS = [
    packet_closes("subscribe-packet-id-0", ("MQTT-2.3.1-1",), "82 06 00 00 00 01 'a' 00"),
    packet_closes("unsubscribe-packet-id-0", ("MQTT-2.3.1-1",), "a2 05 00 00 00 01 'a'"),
    packet_closes("publish-qos1-packet-id-0", ("MQTT-2.3.1-1",), "32 05 00 01 'a' 00 00"),
    packet_closes("publish-qos2-packet-id-0", ("MQTT-2.3.1-1",), "34 05 00 01 'a' 00 00"),
    # Two QoS 1 requests: each answer gets the next unused packet id (DUP 0), kept until PUBACK.
    Vector("server-packet-ids", ("MQTT-2.3.1-4", "MQTT-4.3.2-1", "MQTT-2.3.1-6"), connected(
        send(f"32 30 00 2a {REQUEST} 00 0a 'p1'"),
        any_order("40 02 00 0a", ANSWER_QOS1),
        send("32 30 00 2a 'kp1/demo_application_v1/dcx/token-1/json/2' 00 0b 'p2'"),
        any_order("40 02 00 0b", "32 37 00 31 'kp1/demo_application_v1/dcx/token-1/json/2/status'"
                                 " 00 02 'p2'"),
        send("40 02 00 02 40 02 00 01"), send(PINGREQ), expect(PINGRESP),
    )),
    # A QoS 0 answer carries no packet id and DUP 0.
    Vector("qos0-answer-without-packet-id", ("MQTT-2.3.1-5", "MQTT-4.3.1-1"),
           connected(send(REQUEST_QOS0), expect(ANSWER_QOS0))),
    Vector("acknowledgements-repeat-the-packet-id", ("MQTT-2.3.1-6", "MQTT-4.3.3-2"), connected(
        send(f"32 2e 00 28 {MESSAGE} 12 34 'p1'"), expect("40 02 12 34"),
        send(f"34 2e 00 28 {MESSAGE} 43 21 'p2'"), expect("50 02 43 21"),
        send("62 02 43 21"), expect("70 02 43 21"),
    )),
    Vector("suback-unsuback-repeat-the-packet-id",
           ("MQTT-2.3.1-7", "MQTT-3.8.4-2", "MQTT-3.10.4-4"), connected(
               send("82 06 ab cd 00 01 'a' 01"), expect("90 03 ab cd 01"),
               send("a2 05 ab ce 00 01 'a'"), expect("b0 02 ab ce"),
           )),
]

CONNECT_PACKET = [
    connect_closes("first-packet-not-connect", ("MQTT-3.1.0-1", "MQTT-4.8.0-1"), PINGREQ),
    packet_closes("second-connect", ("MQTT-3.1.0-2",), CONNECT),
    connect_closes("protocol-name-MQT", ("MQTT-3.1.2-1",),
                   "10 0f 00 03 'MQT' 04 02 00 00 00 04 'dev1'"),
    connect_closes("protocol-name-empty", ("MQTT-3.1.2-1",),
                   "10 0c 00 00 04 02 00 00 00 04 'dev1'"),
    connect_closes("protocol-name-MQTU", ("MQTT-3.1.2-1",),
                   "10 10 00 04 'MQTU' 04 02 00 00 00 04 'dev1'"),
    connect_closes("protocol-name-lower-case", ("MQTT-3.1.2-1",),
                   "10 10 00 04 'mqtt' 04 02 00 00 00 04 'dev1'"),
    Vector("protocol-level-5", ("MQTT-3.1.2-2", "MQTT-3.2.2-4", "MQTT-3.2.2-5"), (
        send("10 10 00 04 'MQTT' 05 02 00 00 00 04 'dev1'"), expect("20 02 00 01"), closed())),
    Vector("protocol-level-3-named-MQTT", ("MQTT-3.1.2-2",), (
        send("10 10 00 04 'MQTT' 03 02 00 00 00 04 'dev1'"), expect("20 02 00 01"), closed())),
    connect_closes("connect-reserved-flag", ("MQTT-3.1.2-3",),
                   "10 10 00 04 'MQTT' 04 03 00 00 00 04 'dev1'"),
    connect_closes("will-flag-without-will", ("MQTT-3.1.2-9", "MQTT-3.1.4-1"),
                   "10 10 00 04 'MQTT' 04 06 00 00 00 04 'dev1'"),
    connect_closes("will-qos-without-will", ("MQTT-3.1.2-11", "MQTT-3.1.2-13"),
                   "10 10 00 04 'MQTT' 04 0a 00 00 00 04 'dev1'"),
    connect_closes("will-retain-without-will", ("MQTT-3.1.2-15",),
                   "10 10 00 04 'MQTT' 04 22 00 00 00 04 'dev1'"),
    connect_closes("will-qos-3", ("MQTT-3.1.2-14",),
                   "10 15 00 04 'MQTT' 04 1e 00 00 00 04 'dev1' 00 01 'w' 00 00"),
    connect_closes("user-name-without-flag", ("MQTT-3.1.2-18", "MQTT-3.1.4-1"),
                   "10 13 00 04 'MQTT' 04 02 00 00 00 04 'dev1' 00 01 'u'"),
    connect_closes("user-name-flag-without-user-name", ("MQTT-3.1.2-19", "MQTT-3.1.4-1"),
                   "10 10 00 04 'MQTT' 04 82 00 00 00 04 'dev1'"),
    connect_closes("password-without-flag", ("MQTT-3.1.2-20",),
                   "10 16 00 04 'MQTT' 04 82 00 00 00 04 'dev1' 00 01 'u' 00 01 'p'"),
    connect_closes("password-flag-without-password", ("MQTT-3.1.2-21",),
                   "10 13 00 04 'MQTT' 04 c2 00 00 00 04 'dev1' 00 01 'u'"),
    connect_closes("password-without-user-name", ("MQTT-3.1.2-22",),
                   "10 13 00 04 'MQTT' 04 42 00 00 00 04 'dev1' 00 01 'p'"),
    # Keepalive 1 s: silence for 1.5 s ends the connection.
    Vector("keepalive-silence", ("MQTT-3.1.2-24",), (
        send("10 10 00 04 'MQTT' 04 02 00 01 00 04 'dev1'"), expect(CONNACK),
        closed(reason="keepalive_timeout"))),
    # Will (QoS 1), user name, password, in this order; the credentials are known to Kaa.
    Vector("payload-fields-in-order", ("MQTT-3.1.3-1", "MQTT-3.1.4-4"), (
        send("10 28 00 04 'MQTT' 04 ce 00 00 00 04 'dev1' 00 01 'w' 00 03 'bye' "
             "00 08 'user@kaa' 00 04 'pass'"),
        expect(CONNACK))),
    connect_closes("no-client-id", ("MQTT-3.1.3-3", "MQTT-3.1.4-1"),
                   "10 0a 00 04 'MQTT' 04 02 00 00"),
    Vector("client-id-23-alphanumerics", ("MQTT-3.1.3-5",), (
        send("10 23 00 04 'MQTT' 04 02 00 00 00 17 '0123456789abcdefghijXYZ'"),
        expect(CONNACK))),
    Vector("empty-client-id-assigned", ("MQTT-3.1.3-6",), (
        send("10 0c 00 04 'MQTT' 04 02 00 00 00 00"), expect(CONNACK),
        send(PINGREQ), expect(PINGRESP))),
    Vector("empty-client-id-without-clean-session", ("MQTT-3.1.3-7", "MQTT-3.1.3-8"), (
        send("10 0c 00 04 'MQTT' 04 00 00 00 00 00"), expect("20 02 00 02"), closed())),
    # 257 bytes: one more than kaa.kpc.transports.mqtt.max-client-id-length (10 + 2 + 257 = 269).
    Vector("client-id-over-max-length", ("MQTT-3.1.3-9", "KPC-max-client-id-length"), (
        send("10 8d 02 00 04 'MQTT' 04 02 00 00 01 01 'x'*257"), expect("20 02 00 02"),
        closed())),
    connect_closes("will-topic-invalid-utf8", ("MQTT-3.1.3-10",),
                   "10 15 00 04 'MQTT' 04 06 00 00 00 04 'dev1' 00 01 ff 00 00"),
    connect_closes("user-name-invalid-utf8", ("MQTT-3.1.3-11",),
                   "10 13 00 04 'MQTT' 04 82 00 00 00 04 'dev1' 00 01 ff"),
    connect_closes("connect-trailing-byte", ("MQTT-3.1.4-1", "MQTT-3.2.2-6"),
                   "10 11 00 04 'MQTT' 04 02 00 00 00 04 'dev1' 00"),
    Vector("client-id-takeover", ("MQTT-3.1.4-2", "MQTT-3.1.3-2"), (
        *connected(on="a"), *connected(on="b"), closed("a", reason="takeover"),
        send(PINGREQ, "b"), expect(PINGRESP, "b"))),
    # The CONNACK comes first, before the answer to a PINGREQ sent in the same write.
    Vector("connack-first", ("MQTT-3.2.0-1", "MQTT-3.2.2-1", "MQTT-3.1.4-4"), (
        send(CONNECT + " " + PINGREQ), expect(CONNACK + " " + PINGRESP))),
    Vector("refused-connect-ignores-what-follows", ("MQTT-3.1.4-5",), (
        send("10 10 00 04 'MQTT' 05 02 00 00 00 04 'dev1' " + PINGREQ), expect("20 02 00 01"),
        closed())),
    # CleanSession 0: KPC holds no session, so Session Present is 0.
    Vector("clean-session-0-session-present-0", ("MQTT-3.2.2-3",), (
        send("10 10 00 04 'MQTT' 04 00 00 00 00 04 'dev1'"), expect(CONNACK))),
    # A subscription does not survive its (clean) session: the next answer is QoS 0 again.
    Vector("clean-session-starts-afresh", ("MQTT-3.1.2-6", "MQTT-3.1.4-3", "MQTT-4.1.0-1"), (
        *connected(send(f"82 36 00 01 00 31 {STATUS} 01"), expect("90 03 00 01 01"),
                   send(REQUEST_QOS0), expect(ANSWER_QOS1), send("40 02 00 01"),
                   send("e0 00"), closed(reason="client_disconnect")),
        *connected(send(REQUEST_QOS0, "b"), expect(ANSWER_QOS0, "b"), on="b"))),
]

PUBLISH_PACKET = [
    # DUP and RETAIN of a request are not carried over to its answer.
    Vector("answer-dup-0-retain-0", ("MQTT-3.3.1-3", "MQTT-3.3.1-9"), connected(
        send(f"3b 30 00 2a {REQUEST} 00 07 'p1'"), any_order("40 02 00 07", ANSWER_QOS1))),
    packet_closes("topic-with-plus", ("MQTT-3.3.2-2", "MQTT-4.7.1-1"), "30 05 00 03 'a/+'"),
    packet_closes("topic-with-hash", ("MQTT-3.3.2-2", "MQTT-4.7.1-1"), "30 05 00 03 'a/#'"),
    Vector("answer-topic-matches-the-filter", ("MQTT-3.3.2-3",), connected(
        send(f"82 2f 00 01 00 2a {ALL_JSON} 00"), expect("90 03 00 01 00"),
        send(REQUEST_QOS0), expect(ANSWER_QOS0))),
    Vector("response-per-qos", ("MQTT-3.3.4-1", "MQTT-4.3.2-2", "MQTT-4.3.3-2"), connected(
        send(f"30 2c 00 28 {MESSAGE} 'q0'"),
        send(f"32 2e 00 28 {MESSAGE} 00 01 'q1'"), expect("40 02 00 01"),
        send(f"34 2e 00 28 {MESSAGE} 00 02 'q2'"), expect("50 02 00 02"),
        send("62 02 00 02"), expect("70 02 00 02"),
        send(PINGREQ), expect(PINGRESP),
        relayed(b"q0", 1), relayed(b"q1", 1), relayed(b"q2", 1))),
    # Two matching subscriptions, QoS 0 and 1: the answer goes at QoS 1.
    Vector("highest-matching-subscription-qos", ("MQTT-3.3.5-1",), connected(
        send(f"82 63 00 01 00 2a {ALL_JSON} 00 00 31 {ANY_STATUS} 01"),
        expect("90 04 00 01 00 01"),
        send(REQUEST_QOS0), expect(ANSWER_QOS1))),
    # A message KPC may not relay (extension not allowed) is acknowledged, and answered with
    # a 1/KP error since it carries a request id.
    Vector("not-authorized-acknowledged", ("MQTT-3.3.5-2",), connected(
        send("32 30 00 2a 'kp1/demo_application_v1/nox/token-1/json/1' 00 01 'p1'"),
        any_order("40 02 00 01",
                  "32 6d 00 30 'kp1/demo_application_v1/nox/token-1/json/1/error' 00 01 "
                  "'{\"statusCode\":403,\"reasonPhrase\":\"Extension not allowed\"}'"))),
]

SUBSCRIBE_PACKETS = [
    packet_closes("subscribe-without-filter", ("MQTT-3.8.3-3",), "82 02 00 01"),
    packet_closes("subscribe-qos-3", ("MQTT-3.8.3-4",), "82 06 00 01 00 01 'a' 03"),
    packet_closes("subscribe-reserved-bits", ("MQTT-3.8.3-4",), "82 06 00 01 00 01 'a' 81"),
    # One SUBACK, codes in filter order: QoS 2 granted as 1, malformed wildcards refused.
    Vector("suback-per-filter", ("MQTT-3.8.4-1", "MQTT-3.8.4-4", "MQTT-3.8.4-5", "MQTT-3.9.3-1",
                                 "MQTT-3.9.3-2", "MQTT-4.7.1-2", "MQTT-4.7.1-3"),
           connected(
               send("82 1f 00 07 00 03 'a/#' 02 00 05 'a/#/b' 01 00 02 'a+' 00 00 03 '+/b' 01 "
                    "00 01 '#' 00"),
               expect("90 07 00 07 01 80 80 01 00"))),
    # The same filter again replaces the subscription: QoS 1, then 0.
    Vector("same-filter-replaces", ("MQTT-3.8.4-3", "MQTT-4.1.0-2"), connected(
        send(f"82 36 00 01 00 31 {STATUS} 01"), expect("90 03 00 01 01"),
        send(f"82 36 00 02 00 31 {STATUS} 00"), expect("90 03 00 02 00"),
        send(REQUEST_QOS0), expect(ANSWER_QOS0))),
    # Deviation: a QoS 1 request's answer stays QoS 1 under a QoS 0 subscription.
    Vector("qos1-answer-under-qos0-subscription", ("MQTT-3.8.4-6",), connected(
        send(f"82 36 00 01 00 31 {STATUS} 00"), expect("90 03 00 01 00"),
        send(f"32 30 00 2a {REQUEST} 00 0a 'p1'"), any_order("40 02 00 0a", ANSWER_QOS1))),
    packet_closes("unsubscribe-without-filter", ("MQTT-3.10.3-2",), "a2 02 00 01"),
    # UNSUBSCRIBE compares filters character by character; one UNSUBACK per packet.
    # The last answer also shows the deviation from MQTT-3.10.4-2: it comes without subscription.
    Vector("unsubscribe-exact-match", ("MQTT-3.10.4-1", "MQTT-3.10.4-4", "MQTT-3.10.4-5",
                                       "MQTT-3.10.4-6", "MQTT-3.10.4-2"), connected(
        send(f"82 36 00 01 00 31 {ANY_STATUS} 01"), expect("90 03 00 01 01"),
        send(f"a2 61 00 05 00 2a {ALL_JSON} 00 31 'kp1/demo_application_v1/dcx/token-1/JSON/+/"
             "status'"),
        expect("b0 02 00 05"),
        send(REQUEST_QOS0), expect(ANSWER_QOS1), send("40 02 00 01"),
        send(f"a2 35 00 06 00 31 {ANY_STATUS}"), expect("b0 02 00 06"),
        send(REQUEST_QOS0), expect(ANSWER_QOS0))),
    # A QoS 1 answer sent before the UNSUBSCRIBE is still acknowledged afterwards.
    Vector("delivery-completes-after-unsubscribe", ("MQTT-3.10.4-3",), connected(
        send(f"82 36 00 01 00 31 {STATUS} 01"), expect("90 03 00 01 01"),
        send(REQUEST_QOS0), expect(ANSWER_QOS1),
        send(f"a2 35 00 02 00 31 {STATUS}"), expect("b0 02 00 02"),
        send("40 02 00 01"), send(PINGREQ), expect(PINGRESP))),
    Vector("pingresp", ("MQTT-3.12.4-1",), connected(send(PINGREQ), expect(PINGRESP))),
    packet_closes("disconnect-reserved-bits", ("MQTT-3.14.1-1",), "e1 00"),
    packet_closes("disconnect-with-body", ("MQTT-3.14.1-1", "MQTT-4.8.0-1"), "e0 01 00"),
    Vector("disconnect", ("MQTT-3.14.4-3",), connected(
        send("e0 00"), closed(reason="client_disconnect"))),
]

OPERATIONAL_BEHAVIOUR = [
    # A packet id acknowledged is free: the same id again is a new message, relayed again.
    Vector("qos1-packet-id-reused-after-puback", ("MQTT-4.3.2-2",), connected(
        send(f"32 2e 00 28 {MESSAGE} 00 05 'r1'"), expect("40 02 00 05"),
        send(f"3a 2e 00 28 {MESSAGE} 00 05 'r1'"), expect("40 02 00 05"),
        relayed(b"r1", 2))),
    # A QoS 2 PUBLISH repeated before PUBREL is acknowledged again but relayed once; after
    # PUBCOMP the id starts a new message.
    Vector("qos2-exactly-once", ("MQTT-4.3.3-2",), connected(
        send(f"34 2e 00 28 {MESSAGE} 00 09 's2'"), expect("50 02 00 09"),
        send(f"3c 2e 00 28 {MESSAGE} 00 09 's2'"), expect("50 02 00 09"),
        send("62 02 00 09"), expect("70 02 00 09"),
        send(PINGREQ), expect(PINGRESP), relayed(b"s2", 1),
        send(f"34 2e 00 28 {MESSAGE} 00 09 's2'"), expect("50 02 00 09"),
        send("62 02 00 09"), expect("70 02 00 09"), relayed(b"s2", 2))),
    # A client resuming a session re-sends the PUBREL its last connection did not complete.
    Vector("resent-pubrel-completed", ("MQTT-4.4.0-1",), (
        send("10 10 00 04 'MQTT' 04 00 00 00 00 04 'dev1'"), expect(CONNACK),
        send("62 02 00 09"), expect("70 02 00 09"))),
    # Acknowledgements in the order the PUBLISHes came, answers in the order of the requests.
    Vector("ordered", ("MQTT-4.6.0-5", "MQTT-4.6.0-6"), connected(
        send(f"32 2e 00 28 {MESSAGE} 00 03 'o1' 32 2e 00 28 {MESSAGE} 00 01 'o2' "
             f"32 2e 00 28 {MESSAGE} 00 02 'o3'"),
        expect("40 02 00 03 40 02 00 01 40 02 00 02"),
        send(f"30 2e 00 2a {REQUEST} 'a1' 30 2e 00 2a {REQUEST} 'a2' 30 2e 00 2a {REQUEST} 'a3'"),
        expect(f"30 35 00 31 {STATUS} 'a1' 30 35 00 31 {STATUS} 'a2' 30 35 00 31 {STATUS} 'a3'"),
    )),
    packet_closes("empty-topic-name", ("MQTT-4.7.3-1",), "30 02 00 00"),
    packet_closes("empty-subscribe-filter", ("MQTT-4.7.3-1",), "82 05 00 01 00 00 00"),
    packet_closes("empty-unsubscribe-filter", ("MQTT-4.7.3-1",), "a2 04 00 01 00 00"),
    packet_closes("topic-length-beyond-packet", ("MQTT-4.7.3-3",), "30 03 00 ff 'a'"),
    # Filters are not case-folded: JSON does not match json, the answer stays QoS 0.
    Vector("no-normalisation", ("MQTT-4.7.3-4",), connected(
        send("82 2f 00 01 00 2a 'kp1/demo_application_v1/dcx/token-1/JSON/#' 01"),
        expect("90 03 00 01 01"),
        send(REQUEST_QOS0), expect(ANSWER_QOS0))),
]

WEBSOCKET = [
    # Closed by the WebSocket layer (Close 1003), below MQTT: logged as connection_lost.
    Vector("text-frame-closes", ("MQTT-6.0.0-1",),
           connected(send(PINGREQ, text=True), closed(reason="connection_lost")),
           transports=("websocket",)),
    # Packets cut anywhere across writes (TCP) or WebSocket messages of 3 bytes each.
    Vector("packets-across-frames", ("MQTT-6.0.0-2", "MQTT-7.1.1-1"), (
        send(CONNECT + " " + PINGREQ + " " + REQUEST_QOS0, piece=3),
        expect(CONNACK + " " + PINGRESP + " " + ANSWER_QOS0))),
    Vector("subprotocol-mqtt", ("MQTT-6.0.0-4",), connected(Subprotocol("mqtt")),
           transports=("websocket",)),
]

# Rules of KPC beyond what MQTT 3.1.1 requires of a server (issues 12 and 18).
KPC_RULES = [
    packet_closes("unsolicited-puback", ("KPC-unsolicited-acknowledgements",), "40 02 00 07"),
    packet_closes("unsolicited-pubrec", ("KPC-unsolicited-acknowledgements",), "50 02 00 01"),
    packet_closes("unsolicited-pubcomp", ("KPC-unsolicited-acknowledgements",), "70 02 00 01"),
    packet_closes("unsolicited-pubrel", ("KPC-unsolicited-acknowledgements",), "62 02 00 01"),
    packet_closes("client-sends-connack", ("KPC-server-packets",), "20 02 00 00"),
    packet_closes("client-sends-suback", ("KPC-server-packets",), "90 03 00 01 00"),
    packet_closes("client-sends-unsuback", ("KPC-server-packets",), "b0 02 00 01"),
    packet_closes("client-sends-pingresp", ("KPC-server-packets",), "d0 00"),
    # MQTT 3.1: 1 to 23 characters.
    Vector("mqtt31-connect", ("KPC-mqtt31-client-id",), (
        send("10 12 00 06 'MQIsdp' 03 02 00 00 00 04 'dev1'"), expect(CONNACK))),
    Vector("mqtt31-client-id-23", ("KPC-mqtt31-client-id",), (
        send("10 25 00 06 'MQIsdp' 03 02 00 00 00 17 'x'*23"), expect(CONNACK))),
    Vector("mqtt31-client-id-24", ("KPC-mqtt31-client-id",), (
        send("10 26 00 06 'MQIsdp' 03 02 00 00 00 18 'x'*24"), expect("20 02 00 02"),
        closed())),
    Vector("mqtt31-empty-client-id", ("KPC-mqtt31-client-id",), (
        send("10 0e 00 06 'MQIsdp' 03 02 00 00 00 00"), expect("20 02 00 02"), closed())),
    # max-subscriptions (default 100): a SUBSCRIBE of more filters closes, refused as soon as
    # the 101st filter is reached (20,000 are not all decoded); 100 in one packet are answered.
    Vector("subscribe-over-max-subscriptions", ("KPC-max-subscriptions",), connected(
        send("82 96 03 00 01 (00 01 'a' 00)*101"), closed())),
    Vector("subscribe-20000-filters", ("KPC-max-subscriptions",), connected(
        send("82 82 f1 04 00 01 (00 01 'a' 00)*20000"), closed())),
    Vector("subscribe-100-filters", ("KPC-max-subscriptions",), connected(
        send("82 92 03 00 01 (00 01 'a' 00)*100"), expect("90 66 00 01 (00)*100"))),
    # With max-subscriptions 3, a fourth filter in a later SUBSCRIBE gets 0x80; a filter
    # already held is replaced.
    Vector("subscriptions-beyond-max-refused", ("KPC-max-subscriptions",), connected(
        send("82 0e 00 01 00 01 'a' 00 00 01 'b' 00 00 01 'c' 00"),
        expect("90 05 00 01 00 00 00"),
        send("82 06 00 02 00 01 'd' 00"), expect("90 03 00 02 80"),
        send("82 06 00 03 00 01 'a' 01"), expect("90 03 00 03 01")),
        env=(("KAA_KPC_TRANSPORTS_MQTT_MAX_SUBSCRIPTIONS", "3"),)),
    # The filters held total at most max-packet-size bytes (64 here): 40 + 25 is too many.
    Vector("subscription-bytes-bounded", ("KPC-max-subscriptions",), connected(
        send("82 2d 00 01 00 28 'a'*40 00"), expect("90 03 00 01 00"),
        send("82 1e 00 02 00 19 'b'*25 00"), expect("90 03 00 02 80"),
        send("82 1d 00 03 00 18 'b'*24 00"), expect("90 03 00 03 00")),
        env=(("KAA_KPC_TRANSPORTS_MQTT_MAX_PACKET_SIZE", "64"),)),
    # max-inflight 2: a third QoS 2 message while two await PUBREL closes.
    Vector("qos2-awaiting-pubrel-bounded", ("KPC-max-inflight-qos2",), connected(
        send(f"34 2e 00 28 {MESSAGE} 00 01 'w1'"), expect("50 02 00 01"),
        send(f"34 2e 00 28 {MESSAGE} 00 02 'w2'"), expect("50 02 00 02"),
        send(f"34 2e 00 28 {MESSAGE} 00 03 'w3'"), closed()),
        env=(("KAA_KPC_TRANSPORTS_MQTT_MAX_INFLIGHT", "2"),)),
]

VECTORS = [
    *DATA_REPRESENTATION, *CONTROL_CHARACTERS, *FIXED_HEADER, *PACKET_IDENTIFIERS,
    *CONNECT_PACKET, *PUBLISH_PACKET, *SUBSCRIBE_PACKETS, *OPERATIONAL_BEHAVIOUR, *WEBSOCKET,
    *KPC_RULES,
]
