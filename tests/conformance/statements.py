"""Every normative statement of MQTT 3.1.1 (OASIS Standard, 29 October 2014, appendix B) and
what it means for KPC: tested by vectors, binding the client only, not applicable, or a
documented deviation. Summaries are ours, not the specification's wording.

`docs/conformance.md` is generated from this table and the vectors (`conformance_table()`), and
a test keeps it in sync.
"""

from __future__ import annotations

import enum

import attrs


class Verdict(enum.Enum):
    PASS = "pass"  # binds the server, KPC does it, vectors show it
    CLIENT = "client"  # binds the client; where KPC checks it anyway, the vectors show it
    NOT_APPLICABLE = "n/a"  # concerns what KPC is not (a broker) or does not do
    DEVIATION = "deviation"  # binds the server and KPC does otherwise, on purpose


@attrs.frozen
class Statement:
    id: str
    summary: str
    verdict: Verdict
    note: str = ""
    tests: tuple[str, ...] = ()  # tests other than the vectors (module::test)


P, C, NA, DEV = Verdict.PASS, Verdict.CLIENT, Verdict.NOT_APPLICABLE, Verdict.DEVIATION

NOT_A_BROKER = ("KPC is not a broker: a PUBLISH goes to a Kaa extension over NATS, never to "
                "other MQTT clients")
NO_SESSIONS = ("KPC keeps no session state beyond the connection (every session is clean, as "
               "Kaa's KPC); CleanSession 0 is accepted with Session Present 0")
NO_WILLS = f"{NOT_A_BROKER}; a will is accepted and never published"
NO_RETAIN = f"{NOT_A_BROKER}; RETAIN is ignored and nothing is retained"

STATEMENTS = (
    Statement("MQTT-1.5.3-1", "Ill-formed UTF-8 (surrogates included) closes the connection", P),
    Statement("MQTT-1.5.3-2", "U+0000 in a string closes the connection", P),
    Statement("MQTT-1.5.3-3", "U+FEFF is neither skipped nor stripped", P),
    Statement("MQTT-2.2.2-1", "Reserved fixed-header flags hold the listed values", P),
    Statement("MQTT-2.2.2-2", "Invalid fixed-header flags close the connection", P),
    Statement("MQTT-2.3.1-1", "SUBSCRIBE, UNSUBSCRIBE and QoS>0 PUBLISH carry a non-zero id", P),
    Statement("MQTT-2.3.1-2", "A client uses a currently unused packet id", C),
    Statement("MQTT-2.3.1-3", "A client re-sends with the same packet id", C),
    Statement("MQTT-2.3.1-4", "The server assigns ids to its QoS>0 PUBLISHes likewise", P),
    Statement("MQTT-2.3.1-5", "A QoS 0 PUBLISH has no packet id", P),
    Statement("MQTT-2.3.1-6", "PUBACK, PUBREC, PUBREL repeat the PUBLISH's packet id", P),
    Statement("MQTT-2.3.1-7", "SUBACK and UNSUBACK repeat the request's packet id", P),
    Statement("MQTT-3.1.0-1", "The first packet from a client is CONNECT", C,
              "KPC closes a connection whose first packet is anything else"),
    Statement("MQTT-3.1.0-2", "A second CONNECT is a violation: disconnect", P),
    Statement("MQTT-3.1.2-1", "A wrong protocol name: disconnect (or follow another spec)", P,
              "closed without CONNACK; 'MQTT' (level 4) and 'MQIsdp' (level 3) are known"),
    Statement("MQTT-3.1.2-2", "An unsupported level: CONNACK 0x01, then disconnect", P),
    Statement("MQTT-3.1.2-3", "The CONNECT reserved flag must be 0, else disconnect", P),
    Statement("MQTT-3.1.2-4", "CleanSession 0 resumes (or creates) a stored session", DEV,
              NO_SESSIONS),
    Statement("MQTT-3.1.2-5", "A CleanSession 0 session stores QoS 1/2 messages while away",
              DEV, NO_SESSIONS),
    Statement("MQTT-3.1.2-6", "CleanSession 1 discards any previous session", P),
    Statement("MQTT-3.1.2-7", "Retained messages outlive sessions", NA, NO_RETAIN),
    Statement("MQTT-3.1.2-8", "A will is stored and published when the connection ends", NA,
              NO_WILLS),
    Statement("MQTT-3.1.2-9", "Will flag 1: will topic and message are present", C,
              "KPC closes a CONNECT that lacks them"),
    Statement("MQTT-3.1.2-10", "The will is removed once published or on DISCONNECT", NA,
              NO_WILLS),
    Statement("MQTT-3.1.2-11", "Will flag 0: will QoS, retain, topic, message absent", C,
              "KPC closes a CONNECT that has them"),
    Statement("MQTT-3.1.2-12", "Will flag 0: no will is published", NA, NO_WILLS),
    Statement("MQTT-3.1.2-13", "Will flag 0: will QoS is 0", C, "KPC closes otherwise"),
    Statement("MQTT-3.1.2-14", "Will QoS is not 3", C, "KPC closes otherwise"),
    Statement("MQTT-3.1.2-15", "Will flag 0: will retain is 0", C, "KPC closes otherwise"),
    Statement("MQTT-3.1.2-16", "A will without retain is published non-retained", NA, NO_WILLS),
    Statement("MQTT-3.1.2-17", "A will with retain is published retained", NA, NO_WILLS),
    Statement("MQTT-3.1.2-18", "User name flag 0: no user name in the payload", C,
              "KPC closes a CONNECT with bytes left over"),
    Statement("MQTT-3.1.2-19", "User name flag 1: a user name in the payload", C,
              "KPC closes a truncated CONNECT"),
    Statement("MQTT-3.1.2-20", "Password flag 0: no password in the payload", C,
              "KPC closes a CONNECT with bytes left over"),
    Statement("MQTT-3.1.2-21", "Password flag 1: a password in the payload", C,
              "KPC closes a truncated CONNECT"),
    Statement("MQTT-3.1.2-22", "User name flag 0: password flag 0", C,
              "KPC closes such an MQTT 3.1.1 CONNECT (MQTT 3.1 allows it)"),
    Statement("MQTT-3.1.2-23", "The client sends a packet (PINGREQ) within the keepalive", C),
    Statement("MQTT-3.1.2-24", "1.5 keepalives of silence: the server disconnects", P),
    Statement("MQTT-3.1.3-1", "Payload fields in the order id, will topic, will message, "
              "user name, password", C),
    Statement("MQTT-3.1.3-2", "The client id identifies the session's state", P,
              "the id names the connection: a second connection with it takes over"),
    Statement("MQTT-3.1.3-3", "The client id is present, first in the payload", C,
              "KPC closes a CONNECT without it"),
    Statement("MQTT-3.1.3-4", "The client id is a UTF-8 string", C,
              "KPC closes otherwise (MQTT-1.5.3-1)"),
    Statement("MQTT-3.1.3-5", "Client ids of 1-23 alphanumeric bytes are allowed", P),
    Statement("MQTT-3.1.3-6", "An empty client id gets a unique assigned one", P),
    Statement("MQTT-3.1.3-7", "An empty client id comes with CleanSession 1", C),
    Statement("MQTT-3.1.3-8", "Empty client id with CleanSession 0: CONNACK 0x02, close", P),
    Statement("MQTT-3.1.3-9", "A rejected client id: CONNACK 0x02, close", P,
              "longer than kaa.kpc.transports.mqtt.max-client-id-length (256 UTF-8 bytes)"),
    Statement("MQTT-3.1.3-10", "The will topic is a UTF-8 string", C, "KPC closes otherwise"),
    Statement("MQTT-3.1.3-11", "The user name is a UTF-8 string", C, "KPC closes otherwise"),
    Statement("MQTT-3.1.4-1", "A malformed CONNECT: close without CONNACK", P),
    Statement("MQTT-3.1.4-2", "A client id already connected: disconnect the older client", P),
    Statement("MQTT-3.1.4-3", "A valid CONNECT: CleanSession processing", P),
    Statement("MQTT-3.1.4-4", "A valid CONNECT: CONNACK 0x00", P),
    Statement("MQTT-3.1.4-5", "A refused CONNECT: nothing after it is processed", P),
    Statement("MQTT-3.2.0-1", "The server's first packet is CONNACK", P),
    Statement("MQTT-3.2.2-1", "CleanSession 1 accepted: Session Present 0", P),
    Statement("MQTT-3.2.2-2", "CleanSession 0 with a stored session: Session Present 1", DEV,
              NO_SESSIONS),
    Statement("MQTT-3.2.2-3", "CleanSession 0 without a stored session: Session Present 0", P),
    Statement("MQTT-3.2.2-4", "A refusal CONNACK has Session Present 0", P),
    Statement("MQTT-3.2.2-5", "After a refusal CONNACK the server closes", P),
    Statement("MQTT-3.2.2-6", "No return code applies: close without CONNACK", P),
    Statement("MQTT-3.3.1-1", "DUP 1 on a re-delivery", NA,
              "KPC never re-delivers a PUBLISH (no session is resumed)"),
    Statement("MQTT-3.3.1-2", "DUP 0 on every QoS 0 PUBLISH", P,
              "KPC sends DUP 0 and closes a QoS 0 PUBLISH with DUP 1"),
    Statement("MQTT-3.3.1-3", "An incoming DUP is not propagated", P),
    Statement("MQTT-3.3.1-4", "QoS 3 (both bits): close", P),
    Statement("MQTT-3.3.1-5", "RETAIN 1: store the message for future subscribers", NA,
              NO_RETAIN),
    Statement("MQTT-3.3.1-6", "A new subscription gets the matching retained messages", NA,
              NO_RETAIN),
    Statement("MQTT-3.3.1-7", "A retained QoS 0 message replaces the previous one", NA,
              NO_RETAIN),
    Statement("MQTT-3.3.1-8", "Retained messages sent on subscribing carry RETAIN 1", NA,
              NO_RETAIN),
    Statement("MQTT-3.3.1-9", "Messages matching a subscription go with RETAIN 0", P),
    Statement("MQTT-3.3.1-10", "An empty retained message clears the retained one", NA,
              NO_RETAIN),
    Statement("MQTT-3.3.1-11", "An empty retained message is not stored", NA, NO_RETAIN),
    Statement("MQTT-3.3.1-12", "RETAIN 0 neither stores nor clears", NA, NO_RETAIN),
    Statement("MQTT-3.3.2-1", "The topic name comes first and is UTF-8", P),
    Statement("MQTT-3.3.2-2", "A topic name has no wildcards", P,
              "KPC closes a PUBLISH to a topic with '+' or '#'"),
    Statement("MQTT-3.3.2-3", "The topic the server sends matches the subscription", P),
    Statement("MQTT-3.3.4-1", "PUBLISH answered per its QoS (none, PUBACK, PUBREC)", P),
    Statement("MQTT-3.3.5-1", "Delivery at the highest QoS of the matching subscriptions", P,
              "answers go at the request's QoS (at most 1) raised to that"),
    Statement("MQTT-3.3.5-2", "An unauthorized PUBLISH: acknowledge normally or close", P,
              "acknowledged, and answered with a 1/KP error when it has a request id"),
    Statement("MQTT-3.6.1-1", "PUBREL flags 0010, else close", P),
    Statement("MQTT-3.8.1-1", "SUBSCRIBE flags 0010, else close", P),
    Statement("MQTT-3.8.3-1", "SUBSCRIBE filters are UTF-8", P),
    Statement("MQTT-3.8.3-2", "A server without wildcard support refuses wildcard filters", NA,
              "KPC supports wildcard filters"),
    Statement("MQTT-3.8.3-3", "A SUBSCRIBE has at least one filter", P),
    Statement("MQTT-3.8.3-4", "Requested QoS byte: reserved bits 0 and QoS <= 2, else close",
              P),
    Statement("MQTT-3.8.4-1", "A SUBSCRIBE gets a SUBACK", P),
    Statement("MQTT-3.8.4-2", "The SUBACK repeats the SUBSCRIBE's packet id", P),
    Statement("MQTT-3.8.4-3", "An identical filter replaces the subscription", P),
    Statement("MQTT-3.8.4-4", "Several filters act as several SUBSCRIBEs, one SUBACK", P),
    Statement("MQTT-3.8.4-5", "One return code per filter: granted QoS or failure", P,
              "QoS 2 is granted as 1; beyond max-subscriptions 0x80"),
    Statement("MQTT-3.8.4-6", "Delivery QoS is the lower of message and granted QoS", DEV,
              "an answer to a QoS 1 request stays QoS 1 under a QoS 0 subscription: devices "
              "get answers whether or not they subscribe, a subscription only raises the QoS"),
    Statement("MQTT-3.9.3-1", "SUBACK codes in the order of the filters", P),
    Statement("MQTT-3.9.3-2", "SUBACK codes are 0x00, 0x01, 0x02 or 0x80 only", P),
    Statement("MQTT-3.10.1-1", "UNSUBSCRIBE flags 0010, else close", P),
    Statement("MQTT-3.10.3-1", "UNSUBSCRIBE filters are UTF-8", P),
    Statement("MQTT-3.10.3-2", "An UNSUBSCRIBE has at least one filter", P),
    Statement("MQTT-3.10.4-1", "Filters compared character by character; a match is deleted",
              P),
    Statement("MQTT-3.10.4-2", "After unsubscribing no new messages are added", DEV,
              "answers to the device's own requests still come (Kaa's clients never subscribe); "
              "they go at the request's QoS"),
    Statement("MQTT-3.10.4-3", "QoS 1/2 deliveries under way are completed", P),
    Statement("MQTT-3.10.4-4", "UNSUBSCRIBE gets an UNSUBACK with its packet id", P),
    Statement("MQTT-3.10.4-5", "UNSUBACK even when nothing was deleted", P),
    Statement("MQTT-3.10.4-6", "Several filters act as several UNSUBSCRIBEs, one UNSUBACK", P),
    Statement("MQTT-3.12.4-1", "PINGREQ gets a PINGRESP", P),
    Statement("MQTT-3.14.1-1", "DISCONNECT reserved bits 0, else disconnect", P),
    Statement("MQTT-3.14.4-1", "After DISCONNECT the client closes", C),
    Statement("MQTT-3.14.4-2", "After DISCONNECT the client sends nothing", C),
    Statement("MQTT-3.14.4-3", "DISCONNECT discards the will unpublished", P,
              "wills are never published; DISCONNECT ends the connection cleanly"),
    Statement("MQTT-4.1.0-1", "Session state is kept for the whole session", P,
              "subscriptions last as long as the connection"),
    Statement("MQTT-4.1.0-2", "A session lasts at least as long as its connection", P),
    Statement("MQTT-4.3.1-1", "QoS 0 sender: QoS 0, DUP 0", P),
    Statement("MQTT-4.3.2-1", "QoS 1 sender: unused id, DUP 0, unacknowledged until PUBACK",
              P),
    Statement("MQTT-4.3.2-2", "QoS 1 receiver: PUBACK; the id is then a new publication", P),
    Statement("MQTT-4.3.3-1", "QoS 2 sender rules", NA, "KPC never sends QoS 2"),
    Statement("MQTT-4.3.3-2", "QoS 2 receiver: PUBREC, no duplicate onward delivery, "
              "PUBCOMP for PUBREL", P,
              "a PUBREL for an unknown id closes a clean session, and gets PUBCOMP when the "
              "client asked to resume a session (it re-sends its last connection's PUBRELs)"),
    Statement("MQTT-4.4.0-1", "On reconnect with CleanSession 0 both sides re-send", DEV,
              f"{NO_SESSIONS}: KPC re-sends nothing; the client's re-sent PUBRELs are "
              "completed"),
    Statement("MQTT-4.5.0-1", "An accepted message joins matching subscribers' sessions", NA,
              NOT_A_BROKER),
    Statement("MQTT-4.5.0-2", "The client acknowledges every PUBLISH per its QoS", C),
    Statement("MQTT-4.6.0-1", "Re-sent PUBLISHes go in their original order", NA,
              "KPC never re-sends a PUBLISH"),
    Statement("MQTT-4.6.0-2", "Client PUBACKs in PUBLISH order", C),
    Statement("MQTT-4.6.0-3", "Client PUBRECs in PUBLISH order", C),
    Statement("MQTT-4.6.0-4", "Client PUBRELs in PUBREC order", C),
    Statement("MQTT-4.6.0-5", "Topics are Ordered Topics by default", P),
    Statement("MQTT-4.6.0-6", "Messages of one client on one topic keep their order", P,
              "acknowledgements and answers keep the order of the PUBLISHes"),
    Statement("MQTT-4.7.1-1", "Wildcards only in filters, never in topic names", P),
    Statement("MQTT-4.7.1-2", "'#' alone or after '/', and last", P,
              "a filter breaking it gets SUBACK 0x80"),
    Statement("MQTT-4.7.1-3", "'+' fills a whole level", P,
              "a filter breaking it gets SUBACK 0x80"),
    Statement("MQTT-4.7.2-1", "Filters starting with a wildcard do not match '$' topics", P,
              "KPC never sends a '$' topic, so a unit test shows it",
              ("tests/unit/test_topics.py",)),
    Statement("MQTT-4.7.3-1", "Topic names and filters are at least one character long", P),
    Statement("MQTT-4.7.3-2", "Topic names and filters contain no U+0000", P),
    Statement("MQTT-4.7.3-3", "Topic names and filters encode to at most 65535 bytes", P,
              "a length prefix beyond the packet closes"),
    Statement("MQTT-4.7.3-4", "Matching does not normalise topics or filters", P),
    Statement("MQTT-4.8.0-1", "A protocol violation closes the connection", P),
    Statement("MQTT-4.8.0-2", "A transient error while processing closes the connection", NA,
              "not reachable from the wire: a NATS outage holds the acknowledgement until NATS "
              "takes the message (tests/integration/test_nats_outage.py)"),
    Statement("MQTT-6.0.0-1", "WebSocket: binary frames only, else close", P),
    Statement("MQTT-6.0.0-2", "WebSocket frames need not align with packets", P),
    Statement("MQTT-6.0.0-3", "The client offers the 'mqtt' subprotocol", C),
    Statement("MQTT-6.0.0-4", "The server selects the 'mqtt' subprotocol", P),
    Statement("MQTT-7.0.0-1", "A server that also connects out conforms as a client too", NA,
              "KPC connects to no MQTT server"),
    Statement("MQTT-7.0.0-2", "No extension is required to interoperate", P,
              "every vector is plain MQTT 3.1.1 bytes", ("tests/conformance/test_vectors.py",)),
    Statement("MQTT-7.1.1-1", "The server offers an ordered, lossless byte stream transport", P,
              "TCP, TLS and WebSocket; every vector runs over TCP and WebSocket"),
    Statement("MQTT-7.1.2-1", "The client supports such a transport", C),
)

#: KPC's own rules beyond MQTT 3.1.1, tested by vectors like the statements.
KPC_RULES = {
    "KPC-control-characters": "U+0001-U+001F and U+007F-U+009F in a client id, user name, "
                              "will topic, topic name or filter close the connection",
    "KPC-unsolicited-acknowledgements": "PUBACK for an id KPC is not waiting for, PUBREC, "
                                        "PUBCOMP, and PUBREL without a QoS 2 flow on a clean "
                                        "session close the connection",
    "KPC-server-packets": "CONNACK, SUBACK, UNSUBACK or PINGRESP from a client close the "
                          "connection",
    "KPC-mqtt31-client-id": "MQTT 3.1 ('MQIsdp', level 3): client ids of 1 to 23 characters; "
                            "others get CONNACK 0x02",
    "KPC-max-client-id-length": "a client id longer than "
                                "kaa.kpc.transports.mqtt.max-client-id-length gets CONNACK 0x02",
    "KPC-max-subscriptions": "a SUBSCRIBE with more filters than "
                             "kaa.kpc.transports.mqtt.max-subscriptions closes (counted while "
                             "it is decoded); filters beyond it across SUBSCRIBEs get 0x80, "
                             "as do filters beyond max-packet-size bytes in all",
    "KPC-max-inflight-qos2": "a QoS 2 PUBLISH while kaa.kpc.transports.mqtt.max-inflight QoS 2 "
                             "messages await PUBREL closes the connection",
}
