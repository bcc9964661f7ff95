"""KPC on a 3-member nats-server cluster, NATS_URLS naming one member, 4 paho devices publishing
QoS 1 throughout: the member in use dies, or enters lame duck mode (a rolling upgrade).

The simulated extensions sit on another member that stays up: what NATS itself loses when a
member dies (core NATS keeps nothing) is then not counted against KPC.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from kpc_trio.nats.connection import Connected, NatsEvent
from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.nats.gateway import OutboundMessage, open_nats_gateway
from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, make_config, open_device
from tests.integration.nats_cluster import nats_cluster
from tests.integration.qos1_load import CountingPublisher, all_acknowledged
from tests.integration.waiting import eventually, logged

DEVICES = 4
LOAD = 100  # acknowledged messages per device before, and again after, the event


@attrs.define
class ReadyRecorder:
    """Samples what /ready answers (the service's health) every few milliseconds."""

    kpc: KpcService
    unready_since: float | None = None
    longest_gap: float = 0.0
    gaps: int = 0

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            if not self.kpc.health.ready:
                if self.unready_since is None:
                    self.unready_since = now
                    self.gaps += 1
                self.longest_gap = max(self.longest_gap, now - self.unready_since)
            else:
                self.unready_since = None
            await trio.sleep(0.005)


@attrs.frozen
class Run:
    kpc: KpcService
    kaa: SimulatedKaa
    publishers: list[CountingPublisher]
    ready: ReadyRecorder


def sample(kpc: KpcService, name: str, **labels: str) -> float:
    return kpc.metrics.registry.get_sample_value(name, labels) or 0.0


def current_server(kpc: KpcService) -> str:
    for metric in kpc.metrics.nats_server.collect():
        for found in metric.samples:
            if found.value == 1:
                return found.labels["server"]
    return ""


def each_grew(publishers: list[CountingPublisher], counts: list[int]) -> bool:
    return all(len(p.acknowledged) >= count + LOAD
               for p, count in zip(publishers, counts, strict=True))


@asynccontextmanager
async def loaded_kpc(tmp_path: Path, kpc_member: NatsServerProcess,
                     kaa_member: NatsServerProcess) -> AsyncIterator[Run]:
    """KPC configured with `kpc_member` only, DEVICES devices publishing QoS 1 until the block
    ends; then every acknowledged message must reach the extension."""
    async with open_simulated_kaa(kaa_member.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx",)) as kaa, \
            open_kpc(make_config(tmp_path, kpc_member.url)) as kpc, \
            trio.open_nursery() as nursery:
        port = kpc.ports["mqtt_tcp"]
        topic = f"kp1/{APP_VERSION}/dcx/{{}}/json"
        devices = [await nursery.start(_device, port) for _ in range(DEVICES)]
        for device, endpoint in zip(devices, ENDPOINTS, strict=True):
            # Validated first: a slow validation would answer an early message with a 504.
            await call(device.publish, topic.format(endpoint.token) + "/1", b"warm-up", qos=1)
            assert (await call(device.expect, 15)).topic.endswith("/1/status")
        publishers = [CountingPublisher(device, topic.format(endpoint.token), f"dev{n}").start()
                      for n, (device, endpoint) in enumerate(zip(devices, ENDPOINTS, strict=True))]
        ready = ReadyRecorder(kpc)
        nursery.start_soon(ready.run)
        try:
            await eventually(lambda: each_grew(publishers, [0] * DEVICES), timeout=30)
            yield Run(kpc, kaa, publishers, ready)
        finally:
            for publisher in publishers:
                await trio.to_thread.run_sync(publisher.stop)
        acknowledged = set(all_acknowledged(publishers))
        await eventually(lambda: acknowledged <= {cd.payload for cd in kaa.received("dcx")},
                         "every acknowledged message at the extension", timeout=20)
        nursery.cancel_scope.cancel()


async def _device(port: int, *, task_status: trio.TaskStatus[object]) -> None:
    async with open_device(port) as device:
        task_status.started(device)
        await trio.sleep_forever()


def figures(run: Run) -> str:
    acknowledged = set(all_acknowledged(run.publishers))
    arrived = {cd.payload for cd in run.kaa.received("dcx")} & acknowledged
    return (f"acknowledged {len(acknowledged)}, arrived {len(arrived)}, /ready unready "
            f"{run.ready.gaps} time(s), longest {run.ready.longest_gap * 1000:.0f} ms, longest "
            f"PUBACK {max(p.longest_ack_delay for p in run.publishers) * 1000:.0f} ms")


async def test_killing_the_member_in_use_moves_kpc_to_another_member(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with nats_cluster() as members:
        used, kaa_member = members[0], members[1]
        async with loaded_kpc(tmp_path, used, kaa_member) as run:
            assert current_server(run.kpc) == used.url.removeprefix("nats://")
            counts = [len(p.acknowledged) for p in run.publishers]
            killed_at = trio.current_time()
            used.kill()
            await eventually(lambda: sample(run.kpc, "kpc_nats_reconnects_total") == 1, timeout=10)
            failover = trio.current_time() - killed_at
            assert current_server(run.kpc) != used.url.removeprefix("nats://")
            await eventually(lambda: each_grew(run.publishers, counts), timeout=30)
        times = {record.getMessage(): record.created for record in caplog.records
                 if record.getMessage() in ("nats_disconnected", "nats_connected")}
        print(f"\nmember killed: on another member after {failover * 1000:.0f} ms "
              f"(disconnected to connected in the log: "
              f"{(times['nats_connected'] - times['nats_disconnected']) * 1000:.1f} ms); "
              f"{figures(run)}")
        assert failover < 2.0
        assert run.ready.longest_gap <= 2.0
        assert logged(caplog, "nats_servers_discovered")


async def test_a_lame_duck_member_is_left_without_unreadiness_or_held_acknowledgements(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with nats_cluster() as members:
        used, kaa_member = members[0], members[1]
        async with loaded_kpc(tmp_path, used, kaa_member) as run:
            counts = [len(p.acknowledged) for p in run.publishers]
            used.enter_lame_duck_mode()
            await eventually(lambda: sample(run.kpc, "kpc_nats_lame_duck_moves_total") == 1,
                             timeout=10)
            await eventually(lambda: current_server(run.kpc) != used.url.removeprefix("nats://"),
                             timeout=10)
            await eventually(lambda: each_grew(run.publishers, counts), timeout=30)
        print(f"\nlame duck: {figures(run)}")
        assert run.ready.gaps == 0
        assert max(p.longest_ack_delay for p in run.publishers) < 1.0
        assert logged(caplog, "nats_lame_duck")[0]["server"] == used.url.removeprefix("nats://")
        assert logged(caplog, "nats_lame_duck_left")


@pytest.mark.parametrize("naming", ["one member", "a name (as a Service)", "every member"])
async def test_nats_urls_of_one_member_a_name_or_every_member_survive_losing_the_member_in_use(
    naming: str,
) -> None:
    with nats_cluster() as members:
        urls = {"one member": [members[0].url],
                "a name (as a Service)": [f"nats://localhost:{members[0].port}"],
                "every member": [member.url for member in members]}[naming]
        events: list[NatsEvent] = []
        with trio.fail_after(30):
            async with open_nats_gateway(urls, on_event=events.append) as gateway:
                await eventually(lambda: gateway.connected)
                in_use = next(e for e in events if isinstance(e, Connected)).server
                port = int(in_use.rsplit(":", 1)[1])
                next(m for m in members if m.port == port).kill()
                await eventually(lambda: sum(isinstance(e, Connected) for e in events) == 2)
                assert events[-1].server.rsplit(":", 1)[1] != str(port)  # type: ignore[union-attr]
                received = await gateway.subscribe("cluster.check")
                await gateway.sync()
                await gateway.publish_confirmed([OutboundMessage("cluster.check", b"still")])
                assert (await received.receive()).payload == b"still"
