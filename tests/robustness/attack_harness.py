"""Attacks against a real `kpc-trio run` process: its memory (RSS from /proc), its metrics and its
log, and a well-behaved neighbour device doing round trips all along.

Each attack is measured the same way: RSS before (the neighbour already running), the peak RSS
while the attack runs (sampled every few milliseconds), RSS after the attack's effects are over
(connections closed, TTLs expired, freed memory given back to the system: waited for as
events, through the metrics), and the
neighbour's round-trip latencies over the whole run.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.clients.http_client import post
from tests.clients.paho_device import PahoDevice
from tests.integration.kpc_harness import APP_VERSION
from tests.integration.kpc_process import KpcProcess

RSS_SAMPLE_PERIOD = 0.005
POLL_PERIOD = 0.02
UNTIL_DEADLINE = 20.0
#: The neighbour's pause between round trips (a device reporting 20 times a second).
NEIGHBOUR_PERIOD = 0.05
#: A neighbour's request unanswered after this long counts as lost.
NEIGHBOUR_TIMEOUT = 10.0
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """The process's resident set size now (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@attrs.define
class Target:
    """The process under attack and how to reach it."""

    kpc: KpcProcess

    @property
    def pid(self) -> int:
        return self.kpc.process.pid

    def port(self, name: str) -> int:
        return self.kpc.ports[name]

    def alive(self) -> bool:
        return self.kpc.process.poll() is None

    def log_bytes(self) -> int:
        return self.kpc.log_path.stat().st_size

    async def metric(self, name: str, **labels: str) -> float:
        """A sample of the process's /metrics page (0 when the series does not exist yet)."""
        reply = await post(self.port("management"), "/metrics", method="GET")
        for family in text_string_to_metric_families(reply.body.decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    async def memory_trimmed(self) -> None:
        """Wait until KPC has given its freed memory back (two trims: one fully after now)."""
        trims = await self.metric("kpc_memory_trims_total")

        async def trimmed() -> bool:
            return await self.metric("kpc_memory_trims_total") >= trims + 2
        await self.until(trimmed, "two memory trims")

    async def until(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        """Wait for `condition` (polling the process); the deadline only stops a hang."""
        try:
            with trio.fail_after(UNTIL_DEADLINE):
                while True:
                    if await condition():
                        return
                    await trio.sleep(POLL_PERIOD)
        except trio.TooSlowError:
            raise AssertionError(f"never happened: {what}") from None


class Neighbour:
    """A well-behaved paho device doing request/response round trips in its own thread."""

    def __init__(self, port: int, token: str) -> None:
        self._device = PahoDevice(port, client_id="neighbour")
        self._topic = f"kp1/{APP_VERSION}/dcx/{token}/json"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neighbour", daemon=True)
        self.latencies: list[float] = []
        self.sent = 0
        self.lost = 0

    def start(self) -> None:
        assert self._device.connect() == 0
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(NEIGHBOUR_TIMEOUT * 2)
        self._device.close()

    def _run(self) -> None:
        request_id = 0
        while not self._stop.wait(NEIGHBOUR_PERIOD):
            request_id += 1
            started = time.perf_counter()
            self.sent += 1
            try:
                self._device.publish(f"{self._topic}/{request_id}", b"{}", qos=1,
                                     timeout=NEIGHBOUR_TIMEOUT)
                reply = self._device.expect(timeout=NEIGHBOUR_TIMEOUT)
            except Exception:  # noqa: BLE001 - a timeout, or the connection is gone: lost
                self.lost += 1
                continue
            if reply.topic != f"{self._topic}/{request_id}/status":
                self.lost += 1
                continue
            self.latencies.append(time.perf_counter() - started)

    async def wait_round_trips(self, count: int) -> None:
        """Wait until `count` more round trips were answered."""
        target = len(self.latencies) + count
        with trio.fail_after(NEIGHBOUR_TIMEOUT * 2):
            while True:
                if len(self.latencies) >= target:
                    return
                await trio.sleep(NEIGHBOUR_PERIOD)


@attrs.define
class Figures:
    """What one attack did to the process and to the neighbour (for docs/robustness.md)."""

    attack: str
    rss_before: int
    rss_peak: int
    rss_after: int
    log_growth: int
    neighbour_requests: int
    neighbour_lost: int
    p50_ms: float
    p99_ms: float

    def row(self) -> str:
        return (f"| {self.attack} | {self.rss_before / MIB:.1f} | {self.rss_peak / MIB:.1f} | "
                f"{self.rss_after / MIB:.1f} | {self.log_growth / 1024:.1f} | "
                f"{self.neighbour_requests} | {self.neighbour_lost} | {self.p50_ms:.1f} | "
                f"{self.p99_ms:.1f} |")


TABLE_HEADER = ("| attack | RSS before MiB | RSS peak MiB | RSS after MiB | log growth KiB | "
                "neighbour requests | lost | p50 ms | p99 ms |\n"
                "|---|---|---|---|---|---|---|---|---|")


@attrs.define
class Measurement:
    rss_before: int = 0
    rss_peak: int = 0


@contextlib.asynccontextmanager
async def measured(target: Target, attack: str, neighbour: Neighbour,
                   figures: list[Figures]) -> AsyncIterator[Measurement]:
    """Measure the block (the attack and the wait for its effects to end) as one attack."""
    await neighbour.wait_round_trips(3)
    measurement = Measurement(rss_bytes(target.pid))
    measurement.rss_peak = measurement.rss_before
    log_before = target.log_bytes()
    first_latency = len(neighbour.latencies)
    sent_before, lost_before = neighbour.sent, neighbour.lost

    async def sample() -> None:
        while True:
            measurement.rss_peak = max(measurement.rss_peak, rss_bytes(target.pid))
            await trio.sleep(RSS_SAMPLE_PERIOD)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        yield measurement
        nursery.cancel_scope.cancel()
    await neighbour.wait_round_trips(3)  # the neighbour is served after the attack, too
    await target.memory_trimmed()
    latencies = sorted(neighbour.latencies[first_latency:])
    figures.append(Figures(
        attack=attack,
        rss_before=measurement.rss_before,
        rss_peak=measurement.rss_peak,
        rss_after=rss_bytes(target.pid),
        log_growth=target.log_bytes() - log_before,
        neighbour_requests=neighbour.sent - sent_before,
        neighbour_lost=neighbour.lost - lost_before,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
    ))
