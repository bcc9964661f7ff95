"""Hostile input never breaks the MQTT core: only `ProtocolError` may escape, and the server's
output stays well-formed MQTT whatever the client sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.connection import (
    ConnectionState,
    ConnectReceived,
    DisconnectReceived,
    ServerConnection,
)
from kpc_trio.mqtt.errors import ProtocolError
from kpc_trio.mqtt.packets import (
    ConnAck,
    ConnAckCode,
    Connect,
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
from tests.unit.test_codec import connects, mqtt_packets, packets, publishes, qos_levels

SERVER_PACKETS = (ConnAck, Publish, PubAck, PubRec, PubComp, SubAck, UnsubAck, PingResp)


def decode_chunks(chunks: list[bytes], max_packet_size: int = 4096) -> list[Packet]:
    decoder = Decoder(max_packet_size)
    decoded = []
    for chunk in chunks:
        decoder.feed(chunk)
        while (packet := decoder.next_packet()) is not None:
            decoded.append(packet)
    return decoded


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_only_raise_protocol_error(chunks: list[bytes]) -> None:
    try:
        decoded = decode_chunks(chunks)
    except ProtocolError as error:
        assert error.reason
        return
    # Whatever was accepted is a valid packet: it survives an encode/decode round trip.
    for packet in decoded:
        assert decode_chunks([encode(packet)]) == [packet]


@given(st.lists(packets, min_size=1, max_size=4), st.data())
def test_corrupted_valid_streams_only_raise_protocol_error(
    sent: list[Packet], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(encode(packet) for packet in sent))
    for _ in range(data.draw(st.integers(1, 3))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    try:
        decode_chunks([bytes(stream[:cut]), bytes(stream[cut:])])
    except ProtocolError as error:
        assert error.reason


# ---- the connection driven by a random client and a random application ------------------------

_ids = st.integers(1, 4)  # few ids: retransmissions and id reuse happen
_filters = st.sampled_from(["a/+", "a/#", "#", "a/b", "a/#/b", "+x"])
# Mostly what a well-behaved client sends (so flows get deep), sometimes anything at all.
_client_packets = st.one_of(
    publishes(_ids, topics=st.sampled_from(["a", "a/b", "kp1/app/ext/tok/json"])),
    publishes(_ids, topics=st.sampled_from(["a", "a/b", "kp1/app/ext/tok/json"])),
    st.builds(PubRel, _ids),
    st.builds(PubAck, _ids),
    st.builds(PingReq),
    st.builds(Subscribe, _ids, st.lists(st.tuples(_filters, qos_levels), min_size=1).map(tuple)),
    st.builds(Unsubscribe, _ids, st.lists(_filters, min_size=1).map(tuple)),
    mqtt_packets(_ids),
)
_client_input = st.one_of(
    _client_packets.map(encode),
    st.lists(_client_packets, min_size=2, max_size=4).map(lambda sent: b"".join(map(encode, sent))),
    st.binary(min_size=1, max_size=16),
)


class _Checker:
    """Drives a `ServerConnection` like the session does and checks invariants after each step."""

    def __init__(self) -> None:
        self.conn = ServerConnection(max_packet_size=4096)
        self.unacknowledged: list[int] = []
        self.connack_seen = False
        self.server_decoder = Decoder(max_packet_size=1 << 20)

    def check_output(self) -> None:
        self.server_decoder.feed(self.conn.data_to_send())
        while (packet := self.server_decoder.next_packet()) is not None:
            assert isinstance(packet, SERVER_PACKETS), packet
            assert isinstance(packet, ConnAck) != self.connack_seen, "exactly one CONNACK, first"
            self.connack_seen = True
        assert self.server_decoder.buffered == 0, "output ends on a packet boundary"
        assert self.conn.inflight_in == len(self.unacknowledged)

    def handle(self, events: list, data: st.DataObject) -> None:
        disconnects = [i for i, event in enumerate(events) if isinstance(event, DisconnectReceived)]
        assert disconnects in ([], [len(events) - 1]), "no event after a DISCONNECT"
        for event in events:
            if isinstance(event, ConnectReceived):
                assert self.conn.client_id
                if data.draw(st.booleans(), label="accept"):
                    self.conn.accept_connect()
                    self.check_output()  # the CONNACK goes out before the held bytes are judged
                    self.handle(self.conn.receive_data(b""), data)
                else:
                    self.conn.refuse_connect(ConnAckCode.NOT_AUTHORIZED)
            elif isinstance(event, Publish) and event.packet_id is not None:
                assert event.packet_id not in self.unacknowledged
                self.unacknowledged.append(event.packet_id)

    def application_step(self, data: st.DataObject) -> None:
        if self.unacknowledged and data.draw(st.booleans(), label="acknowledge"):
            packet_id = data.draw(st.sampled_from(self.unacknowledged), label="packet id")
            self.unacknowledged.remove(packet_id)
            self.conn.acknowledge(packet_id)
        connected = self.conn.state is ConnectionState.CONNECTED
        if connected and data.draw(st.booleans(), label="publish"):
            qos = data.draw(st.sampled_from(QoS), label="qos")
            packet_id = self.conn.publish("kp1/app/ext/tok/status", b"{}", qos)
            assert (packet_id is None) == (qos is QoS.AT_MOST_ONCE)


@settings(max_examples=300)
@given(st.data(), st.integers(0, 3).map(bool), st.lists(_client_input, max_size=12))
def test_connection_survives_random_clients(
    data: st.DataObject, start_with_connect: bool, inputs: list[bytes]
) -> None:
    checker = _Checker()
    if start_with_connect:
        # Mostly acceptable CONNECTs, so that the session flows after it get exercised.
        acceptable = connects().filter(lambda connect: connect.client_id or connect.clean_session)
        connect = data.draw(acceptable, label="connect")
        inputs.insert(0, encode(connect))
    for chunk in inputs:
        closed_before = checker.conn.state is ConnectionState.CLOSED
        try:
            events = checker.conn.receive_data(chunk)
            assert not (closed_before and events), "a closed connection produces no events"
            checker.handle(events, data)  # accepting a CONNECT judges the bytes held behind it
        except ProtocolError as error:
            assert error.reason
            assert checker.conn.state is ConnectionState.CLOSED
            assert (error.connack is not None) == (
                checker.conn.pending_output > 0 and not checker.connack_seen
            )
            checker.check_output()
            assert checker.conn.receive_data(chunk) == []
            return
        checker.application_step(data)
        checker.check_output()


@pytest.mark.parametrize("accept", [True, False])
def test_connect_pipelined_with_garbage(accept: bool) -> None:
    """The held bytes after a CONNECT are only judged once the application accepted it."""
    conn = ServerConnection()
    connect = Connect("MQTT", 4, "c", True, 10)
    assert conn.receive_data(encode(connect) + b"\x00\x00") == [ConnectReceived(connect)]
    if accept:
        conn.accept_connect()
        with pytest.raises(ProtocolError, match="reserved"):
            conn.receive_data(b"")
    else:
        conn.refuse_connect(ConnAckCode.BAD_USERNAME_OR_PASSWORD)
        assert conn.receive_data(b"") == []


def _events_and_output(chunks: list[bytes]) -> tuple[list, bytes, str | None]:
    """Feed `chunks` as the session does (accepting the CONNECT) and record what comes out."""
    conn = ServerConnection(max_packet_size=4096, assign_client_id=lambda: "assigned")
    events: list = []
    try:
        for chunk in chunks:
            new_events = conn.receive_data(chunk)
            while new_events:
                events.extend(new_events)
                if not isinstance(new_events[-1], ConnectReceived):
                    break
                conn.accept_connect()
                new_events = conn.receive_data(b"")
    except ProtocolError as error:
        return events, conn.data_to_send(), error.reason
    return events, conn.data_to_send(), None


@settings(max_examples=200)
@given(st.lists(_client_packets, max_size=6), st.data())
def test_how_the_stream_is_split_changes_nothing(sent: list[Packet], data: st.DataObject) -> None:
    """TCP may cut a client's bytes anywhere: the events, the output and the verdict must not
    depend on where (the live server reads whatever `receive_some` returns)."""
    connect = Connect("MQTT", 4, "splitter", True, 0)
    stream = b"".join(encode(packet) for packet in [connect, *sent])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    bounds = zip([0, *cuts], [*cuts, len(stream)], strict=True)
    chunks = [stream[start:end] for start, end in bounds]
    split_events, split_output, split_verdict = _events_and_output(chunks)
    whole_events, whole_output, whole_verdict = _events_and_output([stream])
    assert split_verdict == whole_verdict
    if whole_verdict is None:
        assert (split_events, split_output) == (whole_events, whole_output)
    else:
        # The events of the read that broke the rules are dropped with the connection; with
        # smaller reads, some of them were delivered before it.
        assert split_events[:len(whole_events)] == whole_events
