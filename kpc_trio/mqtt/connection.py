"""The server side of one MQTT connection as a sans-IO state machine (in the manner of h11).

Bytes from the client go into `receive_data()`, which returns events for the application; the
replies the protocol requires (CONNACK, PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK, PINGRESP) and the
application's own PUBLISHes are queued and drained with `data_to_send()`. Decisions that need I/O
(authentication, relaying a message before acknowledging it) stay with the application:
`accept_connect()`/`refuse_connect()` and `acknowledge()`.
"""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Callable, Sequence

import attrs

from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.errors import InvalidTopicError, LocalProtocolError, ProtocolError
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
from kpc_trio.mqtt.topics import Subscriptions, validate_topic_filter, validate_topic_name

#: The server never delivers above QoS 1 (no outbound QoS 2 flow).
MAX_OUTBOUND_QOS = QoS.AT_LEAST_ONCE

_PINGRESP = encode(PingResp())
#: A PUBACK as a big-endian 32-bit word: its two header bytes, then the packet id.
_PUBACK_WORD = int.from_bytes(encode(PubAck(0)), "big")
_MAX_PACKET_ID = 0xFFFF
#: MQTT 3.1 (protocol level 3) client identifiers are 1 to 23 characters long.
_MQTT31_MAX_CLIENT_ID = 23


class ConnectionState(enum.Enum):
    AWAIT_CONNECT = "await_connect"  # nothing received yet
    CONNECTING = "connecting"  # CONNECT received, the application decides
    CONNECTED = "connected"
    CLOSED = "closed"


# While CONNECTING the application is still deciding: bytes are held, not decoded.
_DECODING_STATES = frozenset((ConnectionState.AWAIT_CONNECT, ConnectionState.CONNECTED))


@attrs.frozen
class ConnectReceived:
    """The client asks to connect; answer with `accept_connect()` or `refuse_connect()`."""

    connect: Connect


@attrs.frozen
class Subscribed:
    subscriptions: tuple[tuple[str, QoS], ...]  # granted (topic filter, QoS) pairs only


@attrs.frozen
class Unsubscribed:
    topic_filters: tuple[str, ...]


@attrs.frozen
class DisconnectReceived:
    """The client said goodbye; the connection is now CLOSED."""


@attrs.frozen
class PublishRun:
    """Consecutive QoS 0 PUBLISHes (two or more) of one topic, as `Publish(topic, payload)`
    each would be, in order (only with `ServerConnection(publish_runs=True)`)."""

    topic: str
    payloads: list[bytes]


# A message from the client is its `Publish` packet itself (one object less per message, on the
# hottest path); for QoS > 0 call `acknowledge(packet_id)` once it is relayed. A retransmission of
# a flow already under way is not repeated as an event.
Event = ConnectReceived | Publish | PublishRun | Subscribed | Unsubscribed | DisconnectReceived


def _uuid_client_id() -> str:
    return f"kpc-{uuid.uuid4().hex}"


class ServerConnection:
    """MQTT 3.1/3.1.1 server protocol state for one client; all sessions are clean."""

    # Slots: one instance per connection, and a server holds thousands of idle ones.
    __slots__ = (
        "state", "client_id", "keepalive", "_assign_client_id", "_decoder",
        "_output", "_unacknowledged", "_awaiting_pubrel", "_awaiting_puback",
        "_last_packet_id", "_subscriptions", "_max_subscriptions", "_max_subscription_bytes",
        "_max_client_id_length", "_max_qos2_flows", "_qos2_flows", "_resumes_session",
        "_valid_topic", "_publish_runs",
    )

    def __init__(
        self,
        *,
        max_packet_size: int = 1_048_576,
        max_subscriptions: int = 100,
        max_client_id_length: int = 256,
        max_inflight: int = 100,
        assign_client_id: Callable[[], str] = _uuid_client_id,
        publish_runs: bool = False,
    ) -> None:
        """`max_subscriptions` bounds the topic filters held (a SUBSCRIBE with more closes, the
        excess of several gets SUBACK 0x80), and so does their size: at most `max_packet_size`
        bytes of filters in all, what one SUBSCRIBE may carry. A client id of more than
        `max_client_id_length` UTF-8 bytes gets CONNACK 2. A QoS 2 message beyond
        `max_inflight` inbound QoS 2 flows not yet released by PUBREL closes the connection.
        With `publish_runs`, consecutive QoS 0 PUBLISHes of one topic come as one `PublishRun`
        (an application that handles each message alike, at less cost per message)."""
        self.state = ConnectionState.AWAIT_CONNECT
        self.client_id: str | None = None
        self.keepalive = 0
        self._assign_client_id = assign_client_id
        self._decoder = Decoder(max_packet_size, max_topic_filters=max_subscriptions)
        self._max_subscriptions = max_subscriptions
        self._max_subscription_bytes = max_packet_size
        self._max_client_id_length = max_client_id_length
        self._max_qos2_flows = max_inflight
        self._output = bytearray()
        # Inbound QoS 1/2 packet ids the application has not acknowledged yet -> their QoS.
        self._unacknowledged: dict[int, QoS] = {}
        # Inbound QoS 2 messages from PUBLISH until PUBREL (unacknowledged or awaiting PUBREL).
        self._qos2_flows = 0
        # The client asked to resume a session (CleanSession 0): it may re-send PUBRELs of its
        # previous connection [MQTT-4.4.0-1], which this server, holding no session, never saw.
        self._resumes_session = False
        # The three below are created on first use (most connections never need them, and an
        # idle server holds thousands of connections); the first two are dicts used as sets.
        # Inbound QoS 2 packet ids answered with PUBREC, waiting for the client's PUBREL.
        self._awaiting_pubrel: dict[int, None] | None = None
        # Outbound QoS 1 packet ids waiting for the client's PUBACK.
        self._awaiting_puback: dict[int, None] | None = None
        self._last_packet_id = 0
        self._subscriptions: Subscriptions | None = None
        # The last PUBLISH topic found valid: the decoder hands a repeated topic over as the
        # same string, which then needs no second check.
        self._valid_topic: str | None = None
        self._publish_runs = publish_runs

    # ---- counters ------------------------------------------------------------------------------

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet drained by `data_to_send()`."""
        return len(self._output)

    @property
    def inflight_in(self) -> int:
        """Inbound QoS > 0 messages not yet acknowledged by the application."""
        return len(self._unacknowledged)

    @property
    def inflight_out(self) -> int:
        """Outbound QoS 1 PUBLISHes awaiting the client's PUBACK."""
        return len(self._awaiting_puback or ())

    # ---- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Feed bytes from the client; returns the events they complete.

        Decoding pauses after a CONNECT (the rest is held) until the application accepts it; then
        call `receive_data(b"")` to get the events of the held bytes. Raises `ProtocolError` (and
        the connection is CLOSED) when the client breaks MQTT; the events of packets before the
        offending one in `data` are then discarded.
        """
        if self.state is ConnectionState.CLOSED:
            return []
        self._decoder.feed(data)
        events: list[Event] = []
        next_packet = self._decoder.next_packet
        try:
            while self.state in _DECODING_STATES:
                packet = next_packet()
                if packet is None:
                    break
                if self.state is ConnectionState.CONNECTED:
                    self._handle_packet(packet, events)
                else:
                    events.append(self._handle_first_packet(packet))
        except ProtocolError as error:
            # The events of this call go down with the connection. Their messages were never
            # acknowledged, so the client sends them again when it reconnects.
            for event in events:
                if isinstance(event, Publish) and event.packet_id is not None:
                    del self._unacknowledged[event.packet_id]
            raise self._fail(error) from None
        return events

    def _fail(self, error: ProtocolError) -> ProtocolError:
        if error.connack is not None:
            if self.state is ConnectionState.AWAIT_CONNECT:
                self._send_packet(ConnAck(error.connack))
            else:
                # A CONNACK only ever answers the first CONNECT.
                error = ProtocolError(error.reason)
        self.state = ConnectionState.CLOSED
        return error

    def _handle_first_packet(self, packet: Packet) -> ConnectReceived:
        if not isinstance(packet, Connect):
            raise ProtocolError(f"the first packet must be CONNECT, got {type(packet).__name__}")
        client_id = packet.client_id
        self._check_client_id_length(packet)
        if not client_id:
            if not packet.clean_session:
                raise ProtocolError(
                    "empty client identifier requires clean session 1 (MQTT 3.1.1 3.1.3-7)",
                    connack=ConnAckCode.IDENTIFIER_REJECTED,
                )
            client_id = self._assign_client_id()
        self.client_id = client_id
        self.keepalive = packet.keepalive
        self._resumes_session = not packet.clean_session
        self.state = ConnectionState.CONNECTING
        return ConnectReceived(packet)

    def _check_client_id_length(self, packet: Connect) -> None:
        length = len(packet.client_id)
        if packet.protocol_level == 3 and not 1 <= length <= _MQTT31_MAX_CLIENT_ID:
            raise ProtocolError(
                f"an MQTT 3.1 client identifier has 1 to {_MQTT31_MAX_CLIENT_ID} characters, "
                f"got {length}",
                connack=ConnAckCode.IDENTIFIER_REJECTED,
            )
        # Characters first: the UTF-8 length is at least that, and never needs encoding then.
        if length > self._max_client_id_length or (
                not packet.client_id.isascii()
                and len(packet.client_id.encode()) > self._max_client_id_length):
            raise ProtocolError(
                f"client identifier longer than {self._max_client_id_length} bytes",
                connack=ConnAckCode.IDENTIFIER_REJECTED,
            )

    def _handle_packet(self, packet: Packet, events: list[Event]) -> None:
        # Ordered by frequency: this runs for every packet of a connected client.
        if isinstance(packet, Publish):
            self._handle_publish(packet, events)
        elif isinstance(packet, PubAck):
            awaiting = self._awaiting_puback
            if not awaiting or packet.packet_id not in awaiting:
                raise ProtocolError(f"PUBACK for packet id {packet.packet_id}, which the server "
                                    "is not waiting for")
            del awaiting[packet.packet_id]
        elif isinstance(packet, PubRel):
            self._handle_pubrel(packet.packet_id)
        elif isinstance(packet, PingReq):
            self._output += _PINGRESP
        elif isinstance(packet, Subscribe):
            events.append(self._handle_subscribe(packet))
        elif isinstance(packet, Unsubscribe):
            subscriptions = self._subscriptions
            if subscriptions:
                for topic_filter in packet.topic_filters:
                    subscriptions.remove(topic_filter)
            self._send_packet(UnsubAck(packet.packet_id))
            events.append(Unsubscribed(packet.topic_filters))
        elif isinstance(packet, Disconnect):
            self.state = ConnectionState.CLOSED
            events.append(DisconnectReceived())
        elif isinstance(packet, (PubRec, PubComp)):
            # The server never publishes at QoS 2, so there is no flow they could belong to.
            raise ProtocolError(f"{type(packet).__name__} for packet id {packet.packet_id}, but "
                                "the server never sends QoS 2 messages")
        elif isinstance(packet, Connect):
            raise ProtocolError("a second CONNECT on the same connection (MQTT 3.1.1 3.1.0-2)")
        else:
            raise ProtocolError(f"{type(packet).__name__} is a server-to-client packet")

    def _handle_publish(self, packet: Publish, events: list[Event]) -> None:
        topic = packet.topic
        if topic is not self._valid_topic:
            validate_topic_name(topic)
            self._valid_topic = topic
        packet_id = packet.packet_id
        if packet_id is not None:
            # A new flow (the common case) is neither unacknowledged nor awaiting PUBREL.
            if ((packet_id in self._unacknowledged or self._awaiting_pubrel)
                    and self._is_retransmission(packet_id, packet.qos)):
                return
            if packet.qos is QoS.EXACTLY_ONCE:
                # Each flow holds its packet id until PUBREL: without a bound a client that
                # never releases fills all 65535 of them.
                if self._qos2_flows >= self._max_qos2_flows:
                    raise ProtocolError(
                        f"QoS 2 PUBLISH beyond {self._max_qos2_flows} QoS 2 messages not yet "
                        "released by PUBREL (max-inflight)"
                    )
                self._qos2_flows += 1
            self._unacknowledged[packet_id] = packet.qos
        elif self._publish_runs and not packet.retain:
            # What a repeat of this message could break (topic, QoS, flags) is checked: the
            # decoder takes the QoS 0 PUBLISHes of this topic that follow it (a flood of
            # telemetry), which then cost the application one event, not one each.
            payloads = [packet.payload]
            self._decoder.take_repeats(topic, payloads)
            if len(payloads) > 1:
                events.append(PublishRun(topic, payloads))
                return
        events.append(packet)

    def _is_retransmission(self, packet_id: int, qos: QoS) -> bool:
        """Whether a QoS > 0 PUBLISH repeats a flow already under way (no new event then)."""
        pending_qos = self._unacknowledged.get(packet_id)
        if pending_qos is not None:
            if pending_qos != qos:
                raise ProtocolError(
                    f"PUBLISH packet id {packet_id} reused at QoS {qos} while its QoS "
                    f"{pending_qos} flow is incomplete"
                )
            return True  # the pending acknowledgement will answer it
        if self._awaiting_pubrel and packet_id in self._awaiting_pubrel:
            if qos != QoS.EXACTLY_ONCE:
                raise ProtocolError(
                    f"PUBLISH packet id {packet_id} reused at QoS {qos} before its QoS 2 flow ended"
                )
            self._send_packet(PubRec(packet_id))  # our PUBREC was lost: repeat it
            return True
        return False

    def _handle_pubrel(self, packet_id: int) -> None:
        if packet_id in self._unacknowledged:
            raise ProtocolError(f"PUBREL for packet id {packet_id} before the server sent PUBREC")
        awaiting = self._awaiting_pubrel
        if awaiting and packet_id in awaiting:
            del awaiting[packet_id]
            self._qos2_flows -= 1
        elif not self._resumes_session:
            raise ProtocolError(f"PUBREL for packet id {packet_id}, which has no QoS 2 flow")
        # Else a PUBREL re-sent from the client's previous connection: completed all the same.
        self._send_packet(PubComp(packet_id))

    def _handle_subscribe(self, packet: Subscribe) -> Subscribed:
        return_codes = []
        granted = []
        if self._subscriptions is None:
            self._subscriptions = Subscriptions()
        subscriptions = self._subscriptions
        for topic_filter, requested in packet.subscriptions:
            try:
                validate_topic_filter(topic_filter)
            except InvalidTopicError:
                return_codes.append(SUBACK_FAILURE)
                continue
            if topic_filter not in subscriptions and (
                    len(subscriptions) >= self._max_subscriptions
                    or subscriptions.size + len(topic_filter.encode())
                    > self._max_subscription_bytes):
                return_codes.append(SUBACK_FAILURE)  # the connection holds all it may
                continue
            qos = min(requested, MAX_OUTBOUND_QOS)
            subscriptions.add(topic_filter, qos)
            granted.append((topic_filter, qos))
            return_codes.append(qos)
        self._send_packet(SubAck(packet.packet_id, tuple(return_codes)))
        return Subscribed(tuple(granted))

    # ---- application decisions -----------------------------------------------------------------

    def _require_state(self, state: ConnectionState, action: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot {action} in state {self.state.name}")

    def accept_connect(self) -> None:
        """Queue CONNACK 0 (session present 0: every session is clean) and go CONNECTED."""
        self._require_state(ConnectionState.CONNECTING, "accept a CONNECT")
        self._send_packet(ConnAck(ConnAckCode.ACCEPTED))
        self.state = ConnectionState.CONNECTED

    def refuse_connect(self, code: ConnAckCode) -> None:
        """Queue a CONNACK with the refusal `code` and go CLOSED."""
        self._require_state(ConnectionState.CONNECTING, "refuse a CONNECT")
        if code is ConnAckCode.ACCEPTED:
            raise LocalProtocolError("refuse_connect() needs a refusal code, got ACCEPTED")
        self._send_packet(ConnAck(code))
        self.state = ConnectionState.CLOSED

    def acknowledge(self, packet_id: int) -> None:
        """Inbound message `packet_id` was relayed: queue PUBACK (QoS 1) or PUBREC (QoS 2).

        After CLOSED nothing is sent, so a late acknowledgement is dropped silently.
        """
        self.acknowledge_all((packet_id,))

    def acknowledge_all(self, packet_ids: Sequence[int]) -> None:
        """`acknowledge` each of `packet_ids`, in order. The PUBACKs of a run of QoS 1 messages
        (a read's worth) are packed into one buffer by one call, not built one by one."""
        unacknowledged = self._unacknowledged
        closed = self.state is ConnectionState.CLOSED
        pubacks: list[int] = []
        for packet_id in packet_ids:
            qos = unacknowledged.pop(packet_id, None)
            if qos is QoS.AT_LEAST_ONCE:
                pubacks.append(_PUBACK_WORD | packet_id)
            elif closed:
                continue
            elif qos is None:
                raise LocalProtocolError(
                    f"acknowledge({packet_id}): no inbound QoS 1/2 message has this id"
                )
            else:
                self._put_pubacks(pubacks)  # those before it go first
                pubacks.clear()
                if self._awaiting_pubrel is None:
                    self._awaiting_pubrel = {}
                self._awaiting_pubrel[packet_id] = None
                self._send_packet(PubRec(packet_id))
        if not closed:
            self._put_pubacks(pubacks)

    def _put_pubacks(self, words: list[int]) -> None:
        if words:
            self._output += struct.pack(f">{len(words)}I", *words)

    def publish(self, topic: str, payload: bytes, qos: QoS) -> int | None:
        """Queue a PUBLISH to the client at `qos` capped at 1; returns its packet id if QoS 1."""
        self._require_state(ConnectionState.CONNECTED, "publish")
        try:
            validate_topic_name(topic)
        except InvalidTopicError as error:
            raise LocalProtocolError(f"cannot publish: {error.reason}") from None
        if qos == QoS.AT_MOST_ONCE:
            self._send_packet(Publish(topic, payload))
            return None
        if self._awaiting_puback is None:
            self._awaiting_puback = {}
        packet_id = self._next_packet_id(self._awaiting_puback)
        self._awaiting_puback[packet_id] = None
        self._send_packet(Publish(topic, payload, MAX_OUTBOUND_QOS, packet_id=packet_id))
        return packet_id

    def _next_packet_id(self, in_flight: dict[int, None]) -> int:
        if len(in_flight) >= _MAX_PACKET_ID:
            raise LocalProtocolError("all 65535 packet ids are in flight; wait for PUBACKs")
        packet_id = self._last_packet_id
        while True:
            packet_id = packet_id % _MAX_PACKET_ID + 1
            if packet_id not in in_flight:
                self._last_packet_id = packet_id
                return packet_id

    def subscription_qos(self, topic: str) -> QoS | None:
        """The highest QoS granted among the subscriptions matching `topic`; None if none match.

        Looked up in an index, not by scanning: the cost does not grow with the filters held."""
        if not self._subscriptions:
            return None
        return self._subscriptions.max_qos(topic)

    def close(self) -> None:
        """The application drops the peer: receive nothing more. Queued output stays drainable."""
        self.state = ConnectionState.CLOSED

    # ---- output --------------------------------------------------------------------------------

    def _send_packet(self, packet: Packet) -> None:
        self._output += encode(packet)

    def data_to_send(self) -> bytes:
        """Drain the queued output (b"" if nothing is queued)."""
        data = bytes(self._output)
        self._output.clear()
        return data
