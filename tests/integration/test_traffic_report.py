"""End to end: 9/ELCE traffic reports (spec 6.3) for real paho traffic through a real nats-server.

The reports are taken off NATS raw and decoded with fastavro and the RFC 9 schema file, not with
KPC's own codec, so a field KPC writes under the wrong name or type fails here.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import attrs
import fastavro
import trio

from kpc_trio.kaa import subjects
from kpc_trio.nats.gateway import InboundMessage, open_nats_gateway
from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator import BasicCredentials, SimulatedKaa
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.clients.http_client import post
from tests.integration.kpc_harness import (
    APP,
    APP_VERSION,
    ENDPOINTS,
    call,
    make_config,
    open_device,
    push_data,
)
from tests.integration.waiting import eventually

EP1, EP2 = ENDPOINTS[0], ENDPOINTS[1]
PERIOD = 1.0
#: Longest wait for the reports to account for traffic that already happened.
REPORT_TIMEOUT = 10.0
#: Quiet time watched for stray reports: covers at least two whole empty periods.
QUIET = 2.5 * PERIOD
ALICE = BasicCredentials(username="alice", password="alice-secret", credentials_id="cred-alice",
                         tenant_id="tenant-a")

_SCHEMA_TEXT = files("kpc_trio.kaa").joinpath("schemas", "0009-ep-traffic-stats.avsc").read_text()
TRAFFIC_REPORT_SCHEMA = fastavro.parse_schema(json.loads(_SCHEMA_TEXT))

Report = dict[str, Any]  # an Avro datum of TrafficReportEvent, field names as in the schema
Stat = tuple[int, int, int, int]  # received bytes, sent bytes, received count, sent count


@attrs.define
class ReportCollector:
    """Every TrafficReportEvent published on the instance's subject, in arrival order."""

    reports: list[Report] = attrs.field(factory=list)

    async def run(self, messages: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        async for message in messages:
            self.reports.append(
                fastavro.schemaless_reader(io.BytesIO(message.payload), TRAFFIC_REPORT_SCHEMA))

    async def wait_until(self, condition: Callable[[list[Report]], bool]) -> None:
        await eventually(lambda: condition(self.reports), "the traffic reports expected",
                         timeout=REPORT_TIMEOUT)


@attrs.frozen
class Setup:
    kaa: SimulatedKaa
    kpc: KpcService
    reports: ReportCollector

    @property
    def port(self) -> int:
        return self.kpc.ports["mqtt_tcp"]


@contextlib.asynccontextmanager
async def open_setup(tmp_path: Path, nats_url: str, **env: str) -> AsyncIterator[Setup]:
    """Simulated Kaa, a report collector and a KPC reporting every PERIOD, all on names of their
    own (the nats-server is shared by the run). The KPC stops first: its last report is seen."""
    instance = f"kpc-traffic-{uuid.uuid4().hex[:8]}"
    providers = {"token_provider": f"{instance}-cm", "client_provider": f"{instance}-ccm"}
    config = make_config(tmp_path, nats_url, env={
        "SERVICE_INSTANCE_NAME": instance,
        "KAA_KPC_AUTH_TOKEN_PROVIDER": providers["token_provider"],
        "KAA_KPC_AUTH_CLIENT_PROVIDER": providers["client_provider"],
        "KAA_KPC_TRAFFIC_REPORT_PERIOD": f"{PERIOD}s",
        **env,
    })
    collector = ReportCollector()
    async with open_simulated_kaa(nats_url, endpoints=ENDPOINTS, echo_extensions=("dcx",),
                                  kpc_instance=instance, basic_credentials=[ALICE],
                                  **providers) as kaa, \
            open_nats_gateway([nats_url], name=f"{instance}-reports") as gateway, \
            trio.open_nursery() as nursery:
        reports = await gateway.subscribe(subjects.traffic_report(instance))
        nursery.start_soon(collector.run, reports)
        await gateway.sync()
        async with open_kpc(config) as kpc:
            yield Setup(kaa, kpc, collector)
        nursery.cancel_scope.cancel()


def totals(reports: list[Report]) -> dict[str, dict[str, dict[str, Stat]]]:
    """Tenant -> app -> endpoint -> stat summed over the reports (a period may split traffic)."""
    summed: dict[str, dict[str, dict[str, Stat]]] = {}
    for report in reports:
        for tenant, apps in report["tenantTrafficStats"].items():
            for app, endpoints in apps.items():
                for endpoint, stat in endpoints.items():
                    endpoints_so_far = summed.setdefault(tenant, {}).setdefault(app, {})
                    before = endpoints_so_far.get(endpoint, (0, 0, 0, 0))
                    endpoints_so_far[endpoint] = tuple(  # type: ignore[assignment]
                        a + b for a, b in zip(before, (
                            stat["totalReceivedPayload"], stat["totalSentPayload"],
                            stat["totalReceivedMessageCount"], stat["totalSentMessageCount"]),
                            strict=True))
    return summed


def request(endpoint: Any, request_id: int) -> str:
    return f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json/{request_id}"


async def test_report_counts_what_the_device_sent_and_received(tmp_path, nats_server):
    requests = [b"a" * 5, b"b" * 17, b"c" * 100]  # echoed back: received and sent
    fire_and_forget = b"d" * 9  # no request id: received, never answered
    pushes = [b"e" * 7, b"f" * 11]  # sent only
    started_ns = time.time_ns()
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port) as device:
        for request_id, payload in enumerate(requests, start=1):
            await call(device.publish, request(EP1, request_id), payload, qos=1)
        await call(device.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json", fire_and_forget,
                   qos=1)
        await call(device.publish, request(EP2, 9), b"ep2", qos=1)
        replies = [await call(device.expect) for _ in range(len(requests) + 1)]
        for payload in pushes:
            await call(setup.kaa.push, "dcx", push_data(EP1.endpoint_id, "/command", payload,
                                                         extension="dcx"))
        replies += [await call(device.expect) for _ in pushes]
        expected = {"kaa": {APP: {
            EP1.endpoint_id: (sum(map(len, requests)) + len(fire_and_forget),
                              sum(map(len, requests + pushes)),
                              len(requests) + 1, len(requests) + len(pushes)),
            EP2.endpoint_id: (3, 3, 1, 1),
        }}}
        await setup.reports.wait_until(lambda reports: totals(reports) == expected)
        reported = len(setup.reports.reports)
        await trio.sleep(QUIET)
        assert len(setup.reports.reports) == reported  # empty periods publish nothing
        finished_ns = time.time_ns()
    assert sorted(r.payload for r in replies) == sorted(requests + [b"ep2"] + pushes)
    reports = setup.reports.reports
    assert totals(reports) == expected
    assert all(r["originatorReplicaId"] == setup.kpc.replica_id for r in reports)
    assert all(r["timeFrom"] < r["timeTo"] for r in reports)
    assert started_ns <= reports[0]["timeFrom"] and reports[-1]["timeTo"] <= finished_ns
    # The windows tile time (an empty period does not move the next window's start).
    assert all(earlier["timeTo"] == later["timeFrom"]
               for earlier, later in zip(reports, reports[1:], strict=False))


async def test_authenticated_client_is_reported_under_its_tenant(tmp_path, nats_server):
    async with open_setup(tmp_path, nats_server.url,
                          KAA_KPC_TRAFFIC_REPORT_DEFAULT_TENANT_ID="tenant-default") as setup, \
            open_device(setup.port, username="alice@tenant-a", password=ALICE.password) as alice, \
            open_device(setup.port) as anonymous:
        await call(alice.publish, request(EP1, 1), b"12345678", qos=1)
        await call(alice.expect)
        await call(anonymous.publish, f"kp1/{APP_VERSION}/dcx/{EP2.token}/json", b"1234", qos=1)
        expected = {
            "tenant-a": {APP: {EP1.endpoint_id: (8, 8, 1, 1)}},
            "tenant-default": {APP: {EP2.endpoint_id: (4, 0, 1, 0)}},
        }
        await setup.reports.wait_until(lambda reports: totals(reports) == expected)
    assert totals(setup.reports.reports) == expected
    assert len(setup.kaa.credentials_requests) == 1  # alice really authenticated


async def test_http_device_is_an_endpoint_online_until_idle_and_counted(tmp_path, nats_server):
    http_idle = 1.0
    async with open_setup(tmp_path, nats_server.url,
                          KAA_KPC_TRANSPORTS_HTTP_ENABLED="true",
                          KAA_KPC_TRANSPORTS_HTTP_HOST="127.0.0.1",
                          KAA_KPC_TRANSPORTS_HTTP_PORT="0",
                          KAA_KPC_TRANSPORTS_HTTP_IDLE_TIMEOUT=f"{http_idle}s") as setup:
        port = setup.kpc.ports["http"]
        path = f"/kp1/{APP_VERSION}/dcx/{EP2.token}/json"
        first = await post(port, path, b"h" * 12)
        [connected] = await setup.kaa.await_events("connectivity.connected", 1)
        assert connected.endpoints == {EP2.endpoint_id: APP_VERSION}
        second = await post(port, path, b"i" * 30)  # already online: no second event
        assert (first.status, first.body, second.status) == (200, b"h" * 12, 200)
        [disconnected] = await setup.kaa.await_events("connectivity.disconnected", 1,
                                                      timeout=http_idle + 5)
        assert disconnected.endpoints == {EP2.endpoint_id: APP_VERSION}
        assert len(setup.kaa.events("connectivity.connected")) == 1
        assert disconnected.originator_replica_id == setup.kpc.replica_id
        expected = {"kaa": {APP: {EP2.endpoint_id: (42, 42, 2, 2)}}}
        await setup.reports.wait_until(lambda reports: totals(reports) == expected)
        assert setup.kpc.hub.endpoint_count == 0
