"""Load generator processes: raw MQTT bytes over blocking sockets, so the generator stays cheap.

Each function here is a `multiprocessing` target. Ingest runs one process per connection; the
round trip runs every device in one process so all latencies share one clock and one scheduler;
idle connections are opened in batches and held until the parent lets go.
"""

from __future__ import annotations

import functools
import multiprocessing.synchronize
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from multiprocessing.queues import Queue

import attrs

from benchmarks.nats_frames import NatsFrameCounter, connect_nats
from benchmarks.transports import HOST, Stream, Transport, open_stream
from benchmarks.workload import (
    APP_VERSION,
    ENDPOINTS,
    EXTENSION,
    PublishRing,
    connect_packet,
    data_topic,
    subscribe_packet,
)
from kpc_trio.kaa.records import write_client_data
from kpc_trio.kaa.subjects import client_data
from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.packets import ConnAck, PubAck, Publish, QoS, SubAck

CONNACK_SIZE = 4
PUBACK_SIZE = 4
DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
PINGRESP_SIZE = 2
QOS0_CHUNK = 256  # packets per write when streaming QoS 0
MAX_PACKET = 1 << 20


class LoadError(Exception):
    """The server refused or dropped a benchmark connection."""


@attrs.frozen
class IngestSpec:
    port: int
    transport: Transport
    qos: QoS
    messages: int  # per connection
    window: int  # in-flight QoS 1 messages per connection
    unrouted: bool = False  # publish outside the counted topics (ingest-only cases)


def _await_bytes(receive: Callable[[], bytes], count: int) -> bytes:
    buffer = b""
    while len(buffer) < count:
        data = receive()
        if not data:
            raise LoadError(f"connection closed after {len(buffer)} of {count} expected bytes")
        buffer += data
    return buffer


def ingest(spec: IngestSpec, device: int, start: multiprocessing.synchronize.Barrier,
           finished: Queue[float]) -> None:
    """CONNECT, wait at the barrier, send `spec.messages` PUBLISHes as fast as allowed, and put
    the time the last one was sent (QoS 0), processed (QoS 0 unrouted: the server answers a
    PINGREQ after them) or acknowledged (QoS 1)."""
    stream = open_stream(spec.transport, spec.port)
    stream.send(connect_packet(f"bench-ingest-{device}"))
    connack = _await_bytes(stream.receive, CONNACK_SIZE)
    if connack[3] != 0:
        raise LoadError(f"CONNACK return code {connack[3]} for device {device}")
    start.wait()
    if spec.qos is QoS.AT_MOST_ONCE:
        _stream_qos0(stream.send, device, spec.messages, spec.unrouted)
        if spec.unrouted:
            stream.send(PINGREQ)
            _await_bytes(stream.receive, PINGRESP_SIZE)
    else:
        _pipeline_qos1(stream, device, spec.messages, spec.window, spec.unrouted)
    finished.put(time.monotonic())
    stream.send(DISCONNECT)
    while stream.receive():  # the server closes after DISCONNECT; wait so nothing is cut short
        pass
    stream.close()


def _stream_qos0(send: Callable[[bytes], None], device: int, messages: int,
                 unrouted: bool) -> None:
    chunk = PublishRing.for_device(device, QoS.AT_MOST_ONCE, 1, unrouted).chunk(0, QOS0_CHUNK)
    full, rest = divmod(messages, QOS0_CHUNK)
    for _ in range(full):
        send(chunk)
    if rest:
        send(chunk[: rest * (len(chunk) // QOS0_CHUNK)])


def _pipeline_qos1(stream: Stream, device: int, messages: int, window: int,
                   unrouted: bool) -> None:
    # A ring 4x the window: an id comes round again only long after its PUBACK.
    ring = PublishRing.for_device(device, QoS.AT_LEAST_ONCE, 4 * window, unrouted)
    sent = acked = in_flight = spare = 0
    while acked < messages:
        refill = min(window - in_flight, messages - sent)
        if refill > 0:
            stream.send(ring.chunk(sent, refill))
            sent += refill
            in_flight += refill
        data = stream.receive()
        if not data:
            raise LoadError(f"device {device}: connection closed after {acked} PUBACKs")
        # Only PUBACKs come back on an ingest connection: count them by size.
        acks, spare = divmod(spare + len(data), PUBACK_SIZE)
        acked += acks
        in_flight -= acks


@attrs.frozen
class RoundTripSpec:
    port: int
    devices: int
    rate: float  # requests per second, all devices together
    requests: int
    # A plain broker has no extension: the device subscribes to its own topic and the "reply"
    # is its request coming back (one broker hop instead of KPC's two and the echo extension).
    loopback_subscription: bool
    timeout: float


@attrs.frozen
class NatsRoundTripSpec:
    """The round trip without KPC: devices speak NATS to the extension."""

    nats_url: str
    devices: int
    rate: float
    requests: int
    timeout: float


def round_trip(spec: RoundTripSpec | NatsRoundTripSpec,
               results: Queue[list[float] | str]) -> None:
    """Paced requests with request ids; puts the latencies (seconds) of answered requests.

    With a `NatsRoundTripSpec` the round trip goes without KPC: each device is a plain NATS
    connection that publishes the `ClientData` KPC would send to the echo extension, with its
    own inbox as replyTo."""
    try:
        results.put(_nats_round_trip(spec) if isinstance(spec, NatsRoundTripSpec)
                    else _mqtt_round_trip(spec))
    except Exception as exc:  # reported to the parent as text: a benchmark must not hang on it
        results.put(f"{type(exc).__name__}: {exc}")


def _mqtt_round_trip(spec: RoundTripSpec) -> list[float]:
    socks = [_connect_device(spec.port, f"bench-rt-{d}") for d in range(spec.devices)]
    decoders = [Decoder(MAX_PACKET) for _ in socks]
    if spec.loopback_subscription:
        for device, sock in enumerate(socks):
            sock.sendall(subscribe_packet(f"{data_topic(device)}/#"))
            _read_until(sock, decoders[device], SubAck)

    def request(device: int, number: int) -> bytes:
        return encode(Publish(f"{data_topic(device)}/{number}", b'{"n": %d}' % number,
                              qos=QoS.AT_LEAST_ONCE, packet_id=number % 65535 + 1))

    def answered(device: int, data: bytes) -> list[int]:
        decoder = decoders[device]
        decoder.feed(data)
        numbers = []
        while (packet := decoder.next_packet()) is not None:
            if isinstance(packet, Publish):
                numbers.append(_request_id(packet.topic))
                if packet.packet_id is not None:  # a QoS 1/2 answer needs its PUBACK
                    socks[device].sendall(encode(PubAck(packet.packet_id)))
        return numbers

    return _paced_requests(socks, spec.rate, spec.requests, spec.timeout, request, answered)


def _nats_round_trip(spec: NatsRoundTripSpec) -> list[float]:
    socks = [connect_nats(spec.nats_url, f"bench.rt.{d}.*") for d in range(spec.devices)]
    frames = [NatsFrameCounter(sock, keep_subjects=True) for sock in socks]
    for sock, counter in zip(socks, frames, strict=True):
        while not counter.ponged:  # subscribed
            counter.feed(sock.recv(1 << 16))
    subject = client_data(EXTENSION).encode()

    def request(device: int, number: int) -> bytes:
        data = write_client_data(f"bench-rt-{number}", int(time.time() * 1000), 0, APP_VERSION,
                                 ENDPOINTS[device].endpoint_id, "json", number,
                                 b'{"n": %d}' % number)
        return b"PUB %s bench.rt.%d.%d %d\r\n%s\r\n" % (subject, device, number, len(data),
                                                       data)

    def answered(device: int, data: bytes) -> list[int]:
        # The request number is the last token of the inbox the reply came to.
        frames[device].feed(data)
        return [int(inbox.rsplit(b".", 1)[1]) for inbox in frames[device].take_subjects()]

    return _paced_requests(socks, spec.rate, spec.requests, spec.timeout, request, answered)


def _paced_requests(socks: list[socket.socket], rate: float, requests: int, timeout: float,
                    request: Callable[[int, int], bytes],
                    answered: Callable[[int, bytes], list[int]]) -> list[float]:
    """Requests at `spec.rate` from every device in turn; the latency of each answer."""
    selector = selectors.DefaultSelector()
    for device, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, device)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    interval = 1.0 / rate
    started = time.perf_counter()
    deadline = started + requests * interval + timeout
    next_due = started
    number = 0
    while len(latencies) < requests and time.perf_counter() < deadline:
        now = time.perf_counter()
        if number < requests and now >= next_due:
            device = number % len(socks)
            socks[device].sendall(request(device, number))
            sent_at[number] = time.perf_counter()
            number += 1
            next_due += interval
            continue
        wait = max(0.0, next_due - now) if number < requests else 0.05
        for key, _ in selector.select(wait):
            device = key.data
            data = socks[device].recv(1 << 16)
            if not data:
                raise LoadError(f"round-trip device {device} was disconnected")
            arrived = time.perf_counter()
            latencies.extend(arrived - sent_at[n] for n in answered(device, data))
    for sock in socks:
        sock.close()
    return latencies


def _request_id(topic: str) -> int:
    # kpc answers on `.../json/<id>/status`; the loopback peers echo `.../json/<id>`.
    levels = topic.split("/")
    if levels[-1] in ("status", "error"):
        if levels[-1] == "error":
            raise LoadError(f"KPC answered a request with an error on {topic}")
        return int(levels[-2])
    return int(levels[-1])


def _connect_device(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    connack = _read_until(sock, Decoder(MAX_PACKET), ConnAck)
    if connack.return_code != 0:
        raise LoadError(f"CONNACK return code {connack.return_code} for {client_id}")
    return sock


def _read_until(sock: socket.socket, decoder: Decoder, packet_type: type) -> object:
    while True:
        packet = decoder.next_packet()
        if isinstance(packet, packet_type):
            return packet
        if packet is None:
            data = sock.recv(1 << 16)
            if not data:
                raise LoadError(f"closed while waiting for {packet_type.__name__}")
            decoder.feed(data)


def hold_idle(port: int, first: int, count: int, batch: int, opened: Queue[int | str],
              release: multiprocessing.synchronize.Event, tls: bool = False) -> None:
    """Open `count` connections (CONNECT + CONNACK), report, and keep them until `release`.
    With `tls`, each does a full TLS handshake first (no session resumption)."""
    socks: list[socket.socket] = []
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        for batch_start in range(0, count, batch):
            fresh = [socket.create_connection((HOST, port))
                     for _ in range(min(batch, count - batch_start))]
            if tls:
                fresh = [context.wrap_socket(sock) for sock in fresh]
            for offset, sock in enumerate(fresh):
                sock.sendall(connect_packet(f"bench-idle-{first + batch_start + offset}"))
            for sock in fresh:
                receive = functools.partial(sock.recv, CONNACK_SIZE)
                connack = _await_bytes(receive, CONNACK_SIZE)
                if connack[3] != 0:
                    raise LoadError(f"CONNACK return code {connack[3]} for an idle connection")
            socks += fresh
    except Exception as exc:
        opened.put(f"{type(exc).__name__} after {len(socks)} connections: {exc}")
        return
    opened.put(len(socks))
    release.wait()
    for sock in socks:
        sock.close()
