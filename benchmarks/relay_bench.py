"""In-process micro-benchmark of the relay path: MQTT bytes in, NATS PUB frames out.

One device connects and sends `--messages` PUBLISHes (64-byte payload, the topic of
benchmarks/workload.py) in reads of 16 KiB; they go through the real `Session`, MQTT decoder and
state machine, `Relay` and `NatsGateway` (its publisher task and `PubFrames`). Fakes stand only
at the edges: the client socket (a stream that hands over the pre-encoded bytes), the NATS
socket (a stream that keeps what is written) and the token provider (every token is known).
Deterministic, so instruction counts compare commits on a busy machine:

    PYTHONPATH=. python benchmarks/relay_bench.py --qos 0 --messages 200000
    PYTHONPATH=. valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
        python benchmarks/relay_bench.py --qos 0 --messages 20000 --baseline

valgrind needs the interpreter itself (`python -c "import sys; print(sys.executable)"`), not
a pyenv shim. `--baseline` runs the same setup with no PUBLISH. docs/performance.md compares
the instructions of 10,000 and 30,000 messages (the difference is the messages' own).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, cast

import trio
import trio.lowlevel

from benchmarks.workload import (
    APP,
    APP_VERSION,
    ENDPOINTS,
    EXTENSION,
    PAYLOAD,
    connect_packet,
    data_topic,
)
from kpc_trio.auth import EndpointIdentity, EndpointTokenResolver
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.hub import Hub
from kpc_trio.kaa.kp1 import ApplicationRegistry
from kpc_trio.metrics import Metrics
from kpc_trio.mqtt.codec import encode
from kpc_trio.mqtt.packets import Publish, QoS
from kpc_trio.nats.connection import ConnectOptions, Link, NatsConnection, ServerPool
from kpc_trio.nats.gateway import NatsGateway, _OutboxRoom
from kpc_trio.nats.protocol import ServerInfo, ServerStreamParser, parse_url
from kpc_trio.net import Peer
from kpc_trio.relay import Relay
from kpc_trio.session import RECEIVE_SIZE, Session, SessionContext
from kpc_trio.traffic import TrafficMeter


class ClientStream(trio.abc.Stream):
    """The device's socket: the pre-encoded bytes in reads of at most `read_size`, then EOF."""

    def __init__(self, data: bytes, read_size: int = RECEIVE_SIZE) -> None:
        self._data = memoryview(data)
        self._position = 0
        self._read_size = read_size
        self.sent = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = min(max_bytes or RECEIVE_SIZE, self._read_size)
        chunk = self._data[self._position:self._position + size]
        self._position += len(chunk)
        return bytes(chunk)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class NatsStream(ClientStream):
    """The NATS socket: counts what is written and its PUB frames; `serve` answers PINGs."""

    def __init__(self) -> None:
        super().__init__(b"")
        self.written = 0
        self.pubs = 0
        self._pings = 0
        self._pinged = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        data = bytes(data)
        self.written += len(data)
        self.pubs += data.count(b"PUB ")
        if data.endswith(b"PING\r\n"):
            self._pings += 1
            self._pinged.set()

    async def serve(self, link: Link) -> None:
        """The server's PONGs, as NATS's reading task would hand them over."""
        while True:
            await self._pinged.wait()
            self._pinged = trio.Event()
            while self._pings:
                self._pings -= 1
                link.pong_arrived()


class KnownTokens:
    """The token provider's edge: every benchmark token is valid."""

    def __init__(self) -> None:
        self._identities = {(APP, record.token): EndpointIdentity(record.endpoint_id,
                                                                   record.token_id)
                            for record in ENDPOINTS}

    def identify_cached(self, app_name: str, token: str, now: float | None = None
                        ) -> EndpointIdentity | None:
        return self._identities.get((app_name, token))

    def record_cache_hits(self, count: int) -> None:
        pass


def client_bytes(qos: QoS, messages: int) -> bytes:
    topic = data_topic(0)
    if qos is QoS.AT_MOST_ONCE:
        publishes = [encode(Publish(topic, PAYLOAD))] * messages
    else:
        publishes = [encode(Publish(topic, PAYLOAD, qos, packet_id=index % 65535 + 1))
                     for index in range(messages)]
    return connect_packet("bench-device") + b"".join(publishes)


async def relay(qos: QoS, messages: int, read_size: int) -> tuple[float, NatsStream]:
    nats_stream = NatsStream()
    link = NatsConnection(ServerPool([parse_url("nats://127.0.0.1:4222")], randomize=False,
                                     reconnect_wait=1), ConnectOptions())
    link.current = nats_link = Link(nats_stream, parse_url("nats://127.0.0.1:4222"),
                                    ServerStreamParser(), ServerInfo())
    send, receive = trio.open_memory_channel[Any](2_000)
    gateway = NatsGateway(link, send, receive, _OutboxRoom(2_000))
    metrics = Metrics()
    registry = ApplicationRegistry.from_mappings({APP: {APP_VERSION: [EXTENSION]}},
                                                 {EXTENSION: True})
    context = SessionContext(
        hub=Hub(), gateway=gateway, relay=Relay(registry, replica_id="bench"),
        resolver=cast(EndpointTokenResolver, KnownTokens()),
        events=ConnectivityEvents(gateway, kpc_instance="kpc", replica_id="bench"),
        metrics=metrics, traffic=TrafficMeter(start_ns=time.time_ns()))
    client = ClientStream(client_bytes(qos, messages), read_size)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway._run_publisher)
        nursery.start_soon(nats_stream.serve, nats_link)
        gateway._nursery = nursery
        started = time.perf_counter()
        await Session(client, Peer("tcp", "bench:1"), context).run(nursery)
        while gateway._room.queued or gateway._in_flight:
            await trio.lowlevel.checkpoint()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed, nats_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--read-size", type=int, default=RECEIVE_SIZE,
                        help="bytes per read from the client (a busy server reads more at once)")
    parser.add_argument("--baseline", action="store_true", help="connect, send nothing")
    args = parser.parse_args()
    messages = 0 if args.baseline else args.messages
    elapsed, nats = trio.run(relay, QoS(args.qos), messages, args.read_size)
    assert nats.pubs == messages, (nats.pubs, messages)
    per_message = elapsed / messages * 1e6 if messages else 0.0
    print(f"QoS {args.qos}: {messages} messages relayed in {elapsed:.3f} s "
          f"({per_message:.2f} µs/msg), {nats.written} bytes to NATS")


if __name__ == "__main__":
    main()
