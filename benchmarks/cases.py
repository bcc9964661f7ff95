"""The benchmark cases: each one drives one server once and returns named figures.

A case function takes the `Bench` (sizes, helpers, how to count) and one server and returns
{metric: value}; `run.py` repeats it and `report.py` summarises.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue

import attrs

from benchmarks.counters import Counter
from benchmarks.cpu import CpuWindow, Parties, measure_cpu, tree_pids
from benchmarks.loadgen import (
    IngestSpec,
    NatsRoundTripSpec,
    RoundTripSpec,
    hold_idle,
    ingest,
    round_trip,
)
from benchmarks.servers import ServerProcess, is_kpc, rss_kib
from benchmarks.transports import Transport
from kpc_trio.mqtt.packets import QoS

START_TIMEOUT = 60.0
ROUND_TRIP_TIMEOUT = 10.0  # for the last answers, after the last request
STALL = 5.0  # seconds without a counted message that end an ingest run
IDLE_SETTLE = 1.0
# Idle TLS connections are measured once the handshakes' transient allocations are given back:
# after kpc_trio's memory-trim interval (10 s); every server gets the same wait.
TLS_IDLE_SETTLE = 11.0
IDLE_WORKERS = 4
IDLE_BATCH = 200


class CaseError(Exception):
    """A load generator process failed; the message says which and how."""


@attrs.frozen
class Sizes:
    connections: int = 10
    qos1_messages: int = 10_000  # per connection
    qos0_messages: int = 20_000  # per connection
    window: int = 64
    rate: float = 1000.0
    requests: int = 5_000
    idle_connections: int = 10_000
    tls_idle_connections: int = 5_000


QUICK = Sizes(qos1_messages=300, qos0_messages=300, requests=200, idle_connections=50,
              tls_idle_connections=50)


@attrs.define
class Bench:
    sizes: Sizes
    nats_url: str
    # Starts the downstream counter of a server: a process subscribed where the server's
    # messages end up. Started per counted run only: a subscriber that idles through the round
    # trip would still be woken by every request, a sixth process on 2 cores.
    start_counter: Callable[[ServerProcess], Counter]
    # kpc_trio's helpers, accounted apart from it: "nats" (nats-server), "kaa" (simulated Kaa
    # side: token provider, and the echo extension while a case needs it).
    helper_pids: dict[str, list[int]] = attrs.field(factory=dict)
    # RSS before the first idle run: servers keep freed memory, so later runs count from here.
    rss_baselines: dict[str, int] = attrs.field(factory=dict)

    def parties(self, server: ServerProcess, counter: Counter | None = None) -> Parties:
        helpers = self.helper_pids if is_kpc(server.name) else {}
        return Parties(server=(server.pid,),
                       helpers={name: tuple(pids) for name, pids in helpers.items()},
                       counter=() if counter is None else (counter.pid,))

    @contextlib.contextmanager
    def counting(self, server: ServerProcess, relayed: bool) -> Iterator[Counter | None]:
        """The server's counter for one run (None when nothing is relayed)."""
        if not relayed:
            yield None
            return
        counter = self.start_counter(server)
        try:
            yield counter
        finally:
            counter.close()


Figures = dict[str, float]
Case = Callable[[Bench, ServerProcess], Figures]


@attrs.frozen
class IngestFigures:
    relayed_rate: float  # msg/s counted downstream (NATS for kpc_trio, a subscriber for peers)
    acked_rate: float  # msg/s acknowledged (QoS 1) or processed (QoS 0, ingest-only) or sent
    relayed_share: float  # relayed / sent: a peer may drop QoS 0 deliveries to a slow subscriber
    cpu: dict[str, float]  # CPU per message and the load picture (benchmarks.cpu)


def _ingest(bench: Bench, server: ServerProcess, qos: QoS, messages: int,
            transport: Transport = Transport.TCP, relayed: bool = True) -> IngestFigures:
    """`relayed=False`: publish where nobody subscribed (the broker only receives and acks),
    and rate what the publishers saw through."""
    port = server.port if transport is Transport.TCP else server.extra_ports[transport.value]
    connections = bench.sizes.connections
    spec = IngestSpec(port=port, transport=transport, qos=qos, messages=messages,
                      window=bench.sizes.window, unrouted=not relayed)
    context = multiprocessing.get_context("fork")
    start = context.Barrier(connections + 1, timeout=START_TIMEOUT)
    finished = context.Queue()
    workers = [context.Process(target=ingest, args=(spec, device, start, finished), daemon=True)
               for device in range(connections)]
    expected = connections * messages
    with bench.counting(server, relayed) as counter, \
            measure_cpu(bench.parties(server, counter)) as cpu:
        for worker in workers:
            worker.start()
        start.wait()
        started = time.monotonic()
        counted = expected
        if counter is not None:
            counted = counter.wait_for(expected, STALL, timeout=START_TIMEOUT * 5)
        done = [finished.get(timeout=START_TIMEOUT * 5) for _ in workers]
        for worker in workers:
            worker.join(STALL)
        last_arrival = counter.last_arrival if counter is not None else 0.0
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    if failed:
        raise CaseError(f"{len(failed)} ingest generator(s) failed on {server.name} "
                        f"({transport.value}, QoS {int(qos)}), exit codes {failed}")
    if counted <= 0:
        raise CaseError(f"{server.name} relayed nothing ({transport.value}, QoS {int(qos)})")
    acked_rate = expected / (max(done) - started)
    return IngestFigures(
        relayed_rate=counted / (last_arrival - started) if relayed else acked_rate,
        acked_rate=acked_rate, relayed_share=counted / expected, cpu=cpu.figures(counted))


def qos1_ingest(bench: Bench, server: ServerProcess) -> Figures:
    figures = _ingest(bench, server, QoS.AT_LEAST_ONCE, bench.sizes.qos1_messages)
    return {"msg/s": figures.relayed_rate, "acked msg/s": figures.acked_rate,
            "relayed %": 100 * figures.relayed_share, **figures.cpu}


def qos0_ingest(bench: Bench, server: ServerProcess) -> Figures:
    figures = _ingest(bench, server, QoS.AT_MOST_ONCE, bench.sizes.qos0_messages)
    return {"msg/s": figures.relayed_rate, "relayed %": 100 * figures.relayed_share,
            **figures.cpu}


def qos1_ingest_only(bench: Bench, server: ServerProcess) -> Figures:
    """The C floor: a broker that receives and acknowledges QoS 1 and forwards nothing."""
    figures = _ingest(bench, server, QoS.AT_LEAST_ONCE, bench.sizes.qos1_messages,
                      relayed=False)
    return {"msg/s": figures.acked_rate, **figures.cpu}


def qos0_ingest_only(bench: Bench, server: ServerProcess) -> Figures:
    figures = _ingest(bench, server, QoS.AT_MOST_ONCE, bench.sizes.qos0_messages,
                      relayed=False)
    return {"msg/s": figures.acked_rate, **figures.cpu}


def round_trip_latency(bench: Bench, server: ServerProcess) -> Figures:
    sizes = bench.sizes
    spec = RoundTripSpec(port=server.port, devices=sizes.connections, rate=sizes.rate,
                         requests=sizes.requests, loopback_subscription=not is_kpc(server.name),
                         timeout=ROUND_TRIP_TIMEOUT)
    return _latencies(bench, server, spec)


def round_trip_floor(bench: Bench, server: ServerProcess) -> Figures:
    """The same requests as `roundtrip` without KPC: each device a plain NATS connection that
    sends the echo extension the `ClientData` KPC would send and reads the reply itself. What
    nats-server and the extension take of the round trip; KPC idles meanwhile."""
    sizes = bench.sizes
    spec = NatsRoundTripSpec(nats_url=bench.nats_url, devices=sizes.connections,
                             rate=sizes.rate, requests=sizes.requests,
                             timeout=ROUND_TRIP_TIMEOUT)
    return _latencies(bench, server, spec)


def _latencies(bench: Bench, server: ServerProcess,
               spec: RoundTripSpec | NatsRoundTripSpec) -> Figures:
    """Runs the paced requests in a process of their own; latency quantiles and CPU per
    request (its messages in and out of every party)."""
    context = multiprocessing.get_context("fork")
    results: Queue[list[float] | str] = context.Queue()
    worker = context.Process(target=round_trip, args=(spec, results), daemon=True)
    with measure_cpu(bench.parties(server)) as cpu:
        worker.start()
        outcome = results.get(timeout=spec.requests / spec.rate + START_TIMEOUT)
        worker.join(STALL)
    if isinstance(outcome, str):
        raise CaseError(f"round trip on {server.name}: {outcome}")
    if len(outcome) < spec.requests:
        raise CaseError(f"round trip on {server.name}: {spec.requests - len(outcome)} of "
                        f"{spec.requests} requests unanswered")
    cuts = statistics.quantiles(outcome, n=1000)
    return {"p50 ms": cuts[499] * 1000, "p99 ms": cuts[989] * 1000,
            "p99.9 ms": cuts[998] * 1000, **_per_request(cpu, len(outcome))}


def _per_request(cpu: CpuWindow, requests: int) -> Figures:
    return {metric.replace("/msg", "/req"): value
            for metric, value in cpu.figures(requests).items()}


def idle_memory(bench: Bench, server: ServerProcess, tls: bool = False) -> Figures:
    total = bench.sizes.tls_idle_connections if tls else bench.sizes.idle_connections
    port = server.extra_ports["tls"] if tls else server.port
    before = bench.rss_baselines.setdefault(f"{server.name}/{'tls' if tls else 'tcp'}",
                                            _tree_rss_kib(server))
    context = multiprocessing.get_context("fork")
    opened = context.Queue()
    release = context.Event()
    share = -(-total // IDLE_WORKERS)
    workers = [
        context.Process(target=hold_idle, daemon=True,
                        args=(port, first, min(share, total - first), IDLE_BATCH, opened,
                              release, tls))
        for first in range(0, total, share)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        reports = [opened.get(timeout=START_TIMEOUT * 2) for _ in workers]
        opened_in = time.monotonic() - started
        problems = [r for r in reports if isinstance(r, str)]
        if problems:
            raise CaseError(f"idle connections to {server.name}: {problems[0]}")
        time.sleep(TLS_IDLE_SETTLE if tls else IDLE_SETTLE)
        after = _tree_rss_kib(server)
    finally:
        release.set()
        for worker in workers:
            worker.join(STALL)
    time.sleep(IDLE_SETTLE)  # let the server close them before the next run
    figures = {"KiB/conn": (after - before) / total, "total MiB": after / 1024}
    if tls:
        figures["handshakes/s"] = total / opened_in  # TLS + CONNECT/CONNACK, 4 clients at once
    return figures


def tls_idle_memory(bench: Bench, server: ServerProcess) -> Figures:
    """Idle MQTT/TLS connections: RSS per connection, total RSS, full handshakes per second."""
    if "tls" not in server.extra_ports:
        return {}  # a peer without a TLS listener (amqtt here)
    return idle_memory(bench, server, tls=True)


def _tree_rss_kib(server: ServerProcess) -> int:
    """The server's RSS with its workers' (`--workers N`; the supervisor's counts too)."""
    return sum(rss_kib(pid) for pid in tree_pids([server.pid]))


def secure_transports(bench: Bench, server: ServerProcess) -> Figures:
    """QoS 1 ingest through the TLS and WebSocket listeners, next to plain TCP."""
    messages = bench.sizes.qos1_messages
    rates = {transport: _ingest(bench, server, QoS.AT_LEAST_ONCE, messages,
                                transport).relayed_rate
             for transport in Transport}
    tcp = rates[Transport.TCP]
    return {"tls msg/s": rates[Transport.TLS], "ws msg/s": rates[Transport.WEBSOCKET],
            "tls/tcp": rates[Transport.TLS] / tcp, "ws/tcp": rates[Transport.WEBSOCKET] / tcp}


@attrs.frozen
class CaseInfo:
    run: Case
    title: str
    peers: bool  # whether mosquitto and amqtt run it too
    needs_echo: bool = False  # kpc_trio needs the echo extension running
    kpc: bool = True  # whether kpc_trio runs it (ingest-only is a floor for peers only)
    once: bool = False  # it does not go through the server: measured with the first kpc_trio


CASES: dict[str, CaseInfo] = {
    "qos1": CaseInfo(qos1_ingest, "QoS 1 ingest, 10 connections, 64 B", peers=True),
    "qos0": CaseInfo(qos0_ingest, "QoS 0 ingest, 10 connections, 64 B", peers=True),
    "qos1_ingest": CaseInfo(qos1_ingest_only, "QoS 1 ingest-only (no subscriber)", peers=True,
                            kpc=False),
    "qos0_ingest": CaseInfo(qos0_ingest_only, "QoS 0 ingest-only (no subscriber)", peers=True,
                            kpc=False),
    "roundtrip": CaseInfo(round_trip_latency, "round trip at 1k req/s, 10 devices", peers=True,
                          needs_echo=True),
    "roundtrip_floor": CaseInfo(round_trip_floor, "the round trip's NATS and extension part "
                                "alone (devices speak NATS)", peers=False, needs_echo=True,
                                once=True),
    "rss": CaseInfo(idle_memory, "RSS of idle connections", peers=True),
    "tls_idle": CaseInfo(tls_idle_memory, "RSS of idle TLS connections, handshake rate",
                         peers=True),
    "tls_ws": CaseInfo(secure_transports, "QoS 1 ingest over TLS / WebSocket", peers=False),
}
