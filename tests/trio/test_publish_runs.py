"""The QoS 0 run path (`PublishRun`, `Session._relay_run`) against the path of a lone message.

The same client bytes go through a session that takes runs (the default) and one that does not
(a read-rate limit too high to ever wait turns runs off): the NATS messages, the client's answers,
the traffic counts and the metrics must be the same, but for correlation ids and timestamps.
"""

from __future__ import annotations

import time
from typing import cast

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpc_trio.auth import EndpointIdentity, EndpointTokenResolver, TokenValidationError
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.hub import Hub
from kpc_trio.kaa import records
from kpc_trio.kaa.kp1 import ApplicationRegistry
from kpc_trio.metrics import Metrics
from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.connection import PublishRun, ServerConnection
from kpc_trio.mqtt.packets import Connect, Disconnect, PingReq, Publish, QoS
from kpc_trio.net import Peer
from kpc_trio.relay import Relay
from kpc_trio.session import Session, SessionContext, SessionLimits
from kpc_trio.traffic import TrafficMeter
from tests.fake_nats import FakeNats

APP, APP_VERSION = "app", "app_v1"
TOKENS = {"token-1": "endpoint-1", "token-2": "endpoint-2"}
REJECTED_TOKEN = "rejected"
#: NATS's max_payload here: payloads of ~200 bytes and more make a ClientData too large.
MAX_PAYLOAD = 300
TOPICS = (
    f"kp1/{APP_VERSION}/dcx/token-1/json",
    f"kp1/{APP_VERSION}/dcx/token-1/metrics",
    f"kp1/{APP_VERSION}/dcx/token-2/json",
    f"kp1/{APP_VERSION}/tsx/time",  # endpoint-unaware
    f"kp1/{APP_VERSION}/dcx/{REJECTED_TOKEN}/json",  # a rejected token
    f"kp1/{APP_VERSION}/dcx/token-1/json/5",  # a request (answered at QoS 0, not relayed here)
    "kp1/no_such_v1/dcx/token-1/json/9",  # unknown appversion: a 404 answer
    "kp1/no_such_v1/dcx/token-1/json",  # likewise, without an answer
    "not/kp1",
)
CONNECT = encode(Connect("MQTT", 4, "device", True, keepalive=0))


class KnownTokens:
    """The token provider: tokens known, one rejected (as cached validations are)."""

    def identify_cached(self, app_name: str, token: str, now: float | None = None
                        ) -> EndpointIdentity | None:
        if token == REJECTED_TOKEN:
            raise TokenValidationError(401, "Unauthorized")
        return EndpointIdentity(TOKENS[token], f"id-{token}")

    async def identify(self, app_name: str, token: str) -> EndpointIdentity:
        raise AssertionError("every token is cached")

    def record_cache_hits(self, count: int) -> None:
        pass


def context(limits: SessionLimits) -> SessionContext:
    gateway = FakeNats(max_payload=MAX_PAYLOAD)
    registry = ApplicationRegistry.from_mappings({APP: {APP_VERSION: ["dcx", "tsx"]}},
                                                 {"dcx": True, "tsx": False})
    return SessionContext(
        hub=Hub(), gateway=gateway, relay=Relay(registry, replica_id="r1"),
        resolver=cast(EndpointTokenResolver, KnownTokens()),
        events=ConnectivityEvents(gateway, kpc_instance="kpc", replica_id="r1"),
        metrics=Metrics(), traffic=TrafficMeter(start_ns=0), limits=limits)


async def relay(chunks: list[bytes], limits: SessionLimits) -> tuple[SessionContext, list]:
    """Send `chunks` one read at a time after CONNECT, then DISCONNECT: what KPC answered."""
    ctx = context(limits)
    client, server = trio.testing.memory_stream_pair()
    session = Session(server, Peer("tcp", "test:1"), ctx)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run, nursery)
        try:
            for chunk in (CONNECT, *chunks, encode(Disconnect())):
                await client.send_all(chunk)
                await trio.testing.wait_all_tasks_blocked()
        except trio.BrokenResourceError:
            pass  # closed for a protocol violation (a QoS 2 flow's packet id reused at QoS 1)
        while data := await client.receive_some(65536):
            received += data
    decoder = Decoder(1 << 20)
    decoder.feed(received)
    answers = []
    while (packet := decoder.next_packet()) is not None:
        answers.append(packet)
    return ctx, answers


def without_ids(datum: bytes) -> records.ClientData:
    return attrs.evolve(records.decode(records.ClientData, datum), correlation_id="",
                        timestamp=0)


def metric_lines(ctx: SessionContext) -> list[str]:
    return [line for line in ctx.metrics.render().decode().splitlines()
            if "_created" not in line]


packets = st.lists(st.one_of(
    st.tuples(st.sampled_from(TOPICS[:4]), st.binary(max_size=24)).map(
        lambda pair: encode(Publish(*pair))),  # mostly runs of the valid topics
    st.tuples(st.sampled_from(TOPICS), st.binary(max_size=260), st.sampled_from(QoS),
              st.integers(1, 3), st.booleans()).map(
        lambda args: encode(Publish(args[0], args[1], args[2], retain=args[4],
                                    packet_id=args[3] if args[2] else None))),
    st.just(encode(PingReq())),
), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=packets, cuts=st.lists(st.integers(0, 4000), max_size=4),
       repeats=st.integers(1, 20))
def test_runs_relay_what_lone_messages_relay(packets, cuts, repeats):
    stream = b"".join(packets * repeats)  # repeated: long runs, across reads
    bounds = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    chunks = [stream[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]
    fast, fast_answers = trio.run(relay, chunks, SessionLimits())
    lone, lone_answers = trio.run(relay, chunks, SessionLimits(max_publish_rate=10**9))

    assert fast_answers == lone_answers
    fast_nats = cast(FakeNats, fast.gateway).published
    lone_nats = cast(FakeNats, lone.gateway).published
    assert [(m.subject, m.reply) for m in fast_nats] == [(m.subject, m.reply) for m in lone_nats]
    assert [without_ids(m.payload) for m in fast_nats] == [
        without_ids(m.payload) for m in lone_nats]
    correlation_ids = [records.decode(records.ClientData, m.payload).correlation_id
                       for m in fast_nats]
    assert len(set(correlation_ids)) == len(correlation_ids)
    assert fast.traffic is not None and lone.traffic is not None
    assert fast.traffic.take_report(now_ns=1, originator_replica_id="r1", correlation_id="c") \
        == lone.traffic.take_report(now_ns=1, originator_replica_id="r1", correlation_id="c")
    assert metric_lines(fast) == metric_lines(lone)


def test_a_run_keeps_the_timestamp_and_encoding_of_lone_messages():
    """Each datum of `fill_client_data_run` is `fill_client_data`'s, correlation ids in turn."""
    template = records.client_data_template(0, APP_VERSION, "endpoint-1", "/json", None)
    payloads = [b"", b"x" * 63, b"y" * 64, b"z" * 9000, b"x" * 63]
    now = time.time_ns() // 1_000_000
    run = records.fill_client_data_run(template, b"r1-ab-", 98, now, payloads)
    assert run == [records.fill_client_data(template, f"r1-ab-{98 + index}", now, payload)
                   for index, payload in enumerate(payloads)]


def test_the_state_machine_makes_runs_of_repeated_qos0_publishes_only():
    topic = TOPICS[0]
    conn = ServerConnection(publish_runs=True)
    conn.receive_data(CONNECT)
    conn.accept_connect()
    data = b"".join((
        encode(Publish(topic, b"1")), encode(Publish(topic, b"2")),
        encode(Publish(topic, b"3", retain=True)),  # not a plain QoS 0: ends the run
        encode(Publish(topic, b"4")), encode(Publish(topic, b"5" * 200)),  # a longer header
        encode(Publish(topic, b"6", QoS.AT_LEAST_ONCE, packet_id=1)),
        encode(Publish(topic, b"7")), encode(PingReq()), encode(Publish(topic, b"8")),
        encode(Publish(TOPICS[1], b"9")), encode(Publish(topic, b"10")),
        encode(Publish(topic, b"11"))[:-1],  # incomplete: waits for its last byte
    ))
    assert conn.receive_data(data) == [
        PublishRun(topic, [b"1", b"2"]),
        Publish(topic, b"3", retain=True),
        PublishRun(topic, [b"4", b"5" * 200]),
        Publish(topic, b"6", QoS.AT_LEAST_ONCE, packet_id=1),
        Publish(topic, b"7"), Publish(topic, b"8"), Publish(TOPICS[1], b"9"),
        Publish(topic, b"10"),
    ]
    assert conn.receive_data(b"1" + encode(Publish(topic, b"12"))) == [
        PublishRun(topic, [b"11", b"12"])]
