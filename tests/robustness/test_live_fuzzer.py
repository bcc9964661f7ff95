"""Hostile bytes against a live KPC: each offending connection is closed by the server, the
server stays up, and a well-behaved paho device working alongside completes all its round trips.

Offending streams are built from `encode()`d packets and then broken on purpose: named cases for
each rule (oversize lengths, bad UTF-8, empty topics, wrong flags, packets before CONNECT, a
second CONNECT, truncation), then seeded random mutations of valid sessions.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import attrs
import trio

from kpc_trio.mqtt.codec import encode
from kpc_trio.mqtt.connection import ConnectReceived, ServerConnection
from kpc_trio.mqtt.errors import ProtocolError
from kpc_trio.mqtt.packets import (
    ConnAck,
    ConnAckCode,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    Publish,
    PubRel,
    QoS,
    SubAck,
    Subscribe,
    Unsubscribe,
)
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, open_device
from tests.robustness.conftest import MAX_PACKET_SIZE, assert_nothing_left, sample, task_count
from tests.robustness.raw_client import RawClient, connect_packet

FUZZ_SEED = 6
RANDOM_CASES = 300
CONCURRENT_FUZZERS = 16
ROUND_TRIPS = 60
# The well-behaved device has its own endpoint; fuzzed streams only use these two.
WELL_BEHAVED_TOKEN = ENDPOINTS[2].token
FUZZ_TOPICS = (
    f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json",
    f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[1].token}/json/7",
    f"kp1/{APP_VERSION}/tsx/time/9",
    "kp1/no_such_v1/dcx/tok/json/1",
    "not/kaa",
)
TOPIC = FUZZ_TOPICS[0]
# Fixed header (2) + protocol name "MQTT" (6) + protocol level (1).
CONNECT_FLAGS_OFFSET = 9


def with_first_byte(packet: Packet, change: Callable[[int], int]) -> bytes:
    wire = bytearray(encode(packet))
    wire[0] = change(wire[0])
    return bytes(wire)


def with_topic_bytes(raw_topic: bytes) -> bytes:
    """A QoS 0 PUBLISH whose topic field holds `raw_topic` as is."""
    placeholder = "t" * len(raw_topic)
    return encode(Publish(placeholder, b"x")).replace(placeholder.encode(), raw_topic, 1)


def connect_with_client_id_bytes(raw_id: bytes) -> bytes:
    placeholder = "c" * len(raw_id)
    return encode(connect_packet(placeholder)).replace(placeholder.encode(), raw_id, 1)


def connect_with_reserved_flag() -> bytes:
    wire = bytearray(encode(connect_packet("r")))
    wire[CONNECT_FLAGS_OFFSET] |= 0x01
    return bytes(wire)


@attrs.frozen
class HostileCase:
    name: str
    after_connect: bytes  # sent right behind an accepted CONNECT; b"" = no CONNECT at all
    before_connect: bytes = b""
    keepalive: int = 0

    def stream(self, client_id: str) -> bytes:
        if self.before_connect:
            return self.before_connect
        return encode(connect_packet(client_id, keepalive=self.keepalive)) + self.after_connect


HOSTILE_CASES = [
    HostileCase("remaining length at the MQTT maximum", b"\x30\xff\xff\xff\x7f"),
    HostileCase("remaining length in five bytes", b"\x30\xff\xff\xff\xff\x7f"),
    HostileCase("packet over max-packet-size", encode(Publish(TOPIC, b"x" * MAX_PACKET_SIZE))),
    HostileCase("invalid UTF-8 topic", with_topic_bytes(b"\xc3\x28\xa0\xa1")),
    HostileCase("UTF-16 surrogate in the topic", with_topic_bytes(b"a/\xed\xa0\x80")),
    HostileCase("U+0000 in the topic", with_topic_bytes(b"a/\x00/b")),
    HostileCase("zero-length topic", encode(Publish("", b"x", QoS.AT_LEAST_ONCE, packet_id=1))),
    HostileCase("wildcard in a topic name", encode(Publish("kp1/+/x", b"x"))),
    HostileCase("PUBLISH at QoS 3", with_first_byte(Publish(TOPIC, b"x"), lambda b: b | 0x06)),
    HostileCase("DUP at QoS 0", with_first_byte(Publish(TOPIC, b"x"), lambda b: b | 0x08)),
    HostileCase("SUBSCRIBE without its flags",
                with_first_byte(Subscribe(1, (("a/b", QoS.AT_MOST_ONCE),)), lambda b: b & 0xF0)),
    HostileCase("PUBREL without its flags", with_first_byte(PubRel(1), lambda b: b & 0xF0)),
    HostileCase("PINGREQ with flags", with_first_byte(PingReq(), lambda b: b | 0x01)),
    HostileCase("reserved packet type 15", b"\xf0\x00"),
    HostileCase("reserved packet type 0", b"\x00\x00"),
    HostileCase("PINGREQ with a body", b"\xc0\x01\x00"),
    HostileCase("SUBSCRIBE without topic filters", b"\x82\x02\x00\x01"),
    HostileCase("CONNACK from the client", encode(ConnAck(ConnAckCode.ACCEPTED))),
    HostileCase("SUBACK from the client", encode(SubAck(1, (0,)))),
    HostileCase("second CONNECT", encode(connect_packet("second"))),
    HostileCase("PUBLISH before CONNECT", b"", before_connect=encode(Publish(TOPIC, b"x"))),
    HostileCase("PINGREQ before CONNECT", b"", before_connect=encode(PingReq())),
    HostileCase("DISCONNECT before CONNECT", b"", before_connect=encode(Disconnect())),
    HostileCase("CONNECT with the reserved flag", b"", before_connect=connect_with_reserved_flag()),
    HostileCase("CONNECT with an invalid UTF-8 client id", b"",
                before_connect=connect_with_client_id_bytes(b"\xff\xfe")),
    HostileCase("CONNECT of an unknown protocol level", b"", before_connect=encode(
        Connect("MQTT", 5, "p", clean_session=True, keepalive=0))),
    HostileCase("CONNECT of a wrong protocol name", b"", before_connect=encode(
        Connect("MQTX", 4, "p", clean_session=True, keepalive=0))),
    # Truncated and then silent: the connect timeout or the keepalive has to end these.
    HostileCase("truncated CONNECT", b"", before_connect=encode(connect_packet("t"))[:7]),
    HostileCase("truncated PUBLISH", encode(Publish(TOPIC, b"payload"))[:-3], keepalive=1),
]


def oracle_rejects(stream: bytes) -> bool:
    """Whether the MQTT core, driven as a session drives it, finds a protocol violation."""
    conn = ServerConnection(max_packet_size=MAX_PACKET_SIZE)
    try:
        events = conn.receive_data(stream)
        if events and isinstance(events[0], ConnectReceived):
            conn.accept_connect()  # KPC accepts every well-formed CONNECT (anonymous)
            conn.receive_data(b"")
    except ProtocolError:
        return True
    return False


def valid_session(rng: random.Random, client_id: str) -> list[Packet]:
    """CONNECT and a few packets a real device might send, with distinct packet ids."""
    packets: list[Packet] = [connect_packet(client_id)]
    for packet_id in range(1, rng.randint(2, 5)):
        qos = rng.choice(list(QoS))
        packets.append(rng.choice([
            Publish(rng.choice(FUZZ_TOPICS), rng.randbytes(rng.randint(0, 40)), qos,
                    packet_id=packet_id if qos else None),
            Subscribe(packet_id, ((rng.choice(["kp1/#", "a/+", "#"]), qos),)),
            Unsubscribe(packet_id, ("kp1/#",)),
            PingReq(),
            PubRel(packet_id),
            PubAck(packet_id),
        ]))
    return packets


def mutate(rng: random.Random, packets: list[Packet]) -> bytes:
    stream = bytearray(b"".join(encode(packet) for packet in packets))
    mutation = rng.randrange(5)
    if mutation == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 3)):
            stream[rng.randrange(len(stream))] = rng.randrange(256)
    elif mutation == 1:  # truncate
        del stream[rng.randrange(1, len(stream)):]
    elif mutation == 2:  # insert garbage
        at = rng.randrange(len(stream) + 1)
        stream[at:at] = rng.randbytes(rng.randint(1, 8))
    elif mutation == 3:  # repeat a packet (a second CONNECT when it is the first one)
        stream += encode(rng.choice(packets))
    else:  # claim a huge remaining length for the last packet
        last = encode(packets[-1])
        stream[len(stream) - len(last):] = last[:1] + b"\xff\xff\xff\x7f" + last[2:]
    return bytes(stream)


async def expect_closed_by_server(port: int, stream: bytes, *, offending: bool) -> list[Packet]:
    """Send `stream`; a non-offending client then ends its side, an offending one waits."""
    client = await RawClient.open(port)
    try:
        await client.send(stream)
        if not offending:
            await client.send_eof()
        return await client.packets_until_closed()
    finally:
        await client.aclose()


async def well_behaved_round_trips(port: int, done: list[int]) -> None:
    async with open_device(port, client_id="well-behaved") as device:
        for n in range(ROUND_TRIPS):
            topic = f"kp1/{APP_VERSION}/dcx/{WELL_BEHAVED_TOKEN}/json/{n}"
            payload = f'{{"n":{n}}}'.encode()
            await call(device.publish, topic, payload, qos=1)
            reply = await call(device.expect)
            assert (reply.topic, reply.payload) == (topic + "/status", payload)
            done.append(n)


async def run_alongside_well_behaved_device(port: int,
                                            fuzz: Callable[[], Awaitable[None]]) -> None:
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(well_behaved_round_trips, port, done)
        await fuzz()
    assert done == list(range(ROUND_TRIPS))


async def test_every_hostile_case_is_closed_while_a_device_works(kpc, port):
    baseline = task_count()
    received: dict[str, list[Packet]] = {}

    async def one_case(case: HostileCase) -> None:
        assert oracle_rejects(case.stream(case.name)) or case.name.startswith("truncated")
        received[case.name] = await expect_closed_by_server(port, case.stream(case.name),
                                                            offending=True)

    async def fuzz() -> None:
        async with trio.open_nursery() as nursery:
            for case in HOSTILE_CASES:
                nursery.start_soon(one_case, case)

    await run_alongside_well_behaved_device(port, fuzz)
    accepted = ConnAck(ConnAckCode.ACCEPTED)
    for case in HOSTILE_CASES:
        if case.before_connect:
            assert accepted not in received[case.name], case.name
        else:
            assert received[case.name][0] == accepted, case.name
    assert received["CONNECT of an unknown protocol level"] == [
        ConnAck(ConnAckCode.UNACCEPTABLE_PROTOCOL_VERSION)]
    assert received["CONNECT of a wrong protocol name"] == []  # not MQTT: no CONNACK
    assert sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                  reason="connect_timeout") == 1  # the truncated CONNECT
    await assert_nothing_left(kpc, baseline)


async def test_random_mutations_are_closed_while_a_device_works(kpc, port):
    baseline = task_count()
    rng = random.Random(FUZZ_SEED)
    streams = [mutate(rng, valid_session(rng, f"fuzz-{n}")) for n in range(RANDOM_CASES)]
    verdicts = [oracle_rejects(stream) for stream in streams]
    limiter = trio.CapacityLimiter(CONCURRENT_FUZZERS)

    async def one_case(stream: bytes, offending: bool) -> None:
        async with limiter:
            await expect_closed_by_server(port, stream, offending=offending)

    async def fuzz() -> None:
        async with trio.open_nursery() as nursery:
            for stream, offending in zip(streams, verdicts, strict=True):
                nursery.start_soon(one_case, stream, offending)

    await run_alongside_well_behaved_device(port, fuzz)
    # The seed must exercise both kinds, or the test proves little.
    assert RANDOM_CASES // 4 < sum(verdicts) < RANDOM_CASES
    await assert_nothing_left(kpc, baseline)
    # Still up: a new device gets its round trip.
    async with open_device(port) as device:
        await call(device.publish, f"kp1/{APP_VERSION}/tsx/time/1", b"", qos=1)
        assert (await call(device.expect)).topic == f"kp1/{APP_VERSION}/tsx/time/1/status"
