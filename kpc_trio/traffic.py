"""9/ELCE traffic reports (Kaa 1.4): payload bytes and message counts per tenant, application and
endpoint, aggregated over a period and published as one `TrafficReportEvent` (spec 6.3).

`TrafficMeter` is the pure accumulator (one call per relayed message); `run_traffic_reports` is the
task that takes a report every period and publishes it. Counts survive NATS outages: while NATS is
away no report is taken (the window grows), and a report NATS did not take goes back into the
meter, so the next one covers its period too.
"""

from __future__ import annotations

import time
import uuid

import attrs
import trio

from kpc_trio.kaa import records
from kpc_trio.logs import get_logger
from kpc_trio.nats.gateway import (
    MessageRejectedError,
    NatsPort,
    NatsUnavailableError,
    OutboundMessage,
)

log = get_logger(__name__)

_NS_PER_MS = 1_000_000
#: Longest the last report waits for NATS's confirmation at shutdown.
FINAL_REPORT_WAIT = 2.0


@attrs.define(slots=True)
class _Tally:
    received_bytes: int = 0
    sent_bytes: int = 0
    received_messages: int = 0
    sent_messages: int = 0

    def stat(self) -> records.TrafficStat:
        return records.TrafficStat(
            total_received_payload=self.received_bytes,
            total_sent_payload=self.sent_bytes,
            total_received_message_count=self.received_messages,
            total_sent_message_count=self.sent_messages,
        )


_Tallies = dict[str, dict[str, dict[str, _Tally]]]  # tenant id -> app name -> endpoint id


class TrafficMeter:
    """Counts client payloads in both directions until the next report.

    `tenant_id` None (or empty) stands for a session without an authenticated tenant; its traffic
    is reported under `default_tenant_id` (config `kaa.kpc.traffic-report.default-tenant-id`).
    """

    def __init__(self, *, start_ns: int, default_tenant_id: str = "kaa") -> None:
        self._default_tenant_id = default_tenant_id
        self._period_start_ns = start_ns
        self._tallies: _Tallies = {}

    def received(self, tenant_id: str | None, app_name: str, endpoint_id: str,
                 payload_bytes: int, messages: int = 1) -> None:
        """Client messages for an extension (their payloads' length in bytes)."""
        tally = self._tally(tenant_id, app_name, endpoint_id)
        tally.received_bytes += payload_bytes
        tally.received_messages += messages

    def sent(self, tenant_id: str | None, app_name: str, endpoint_id: str,
             payload_bytes: int) -> None:
        """A message delivered to the client (payload length in bytes)."""
        tally = self._tally(tenant_id, app_name, endpoint_id)
        tally.sent_bytes += payload_bytes
        tally.sent_messages += 1

    def _tally(self, tenant_id: str | None, app_name: str, endpoint_id: str) -> _Tally:
        try:  # hot path: three dict lookups, no allocation once the endpoint has a tally
            return self._tallies[tenant_id or self._default_tenant_id][app_name][endpoint_id]
        except KeyError:
            apps = self._tallies.setdefault(tenant_id or self._default_tenant_id, {})
            return apps.setdefault(app_name, {}).setdefault(endpoint_id, _Tally())

    def take_report(self, *, now_ns: int, originator_replica_id: str,
                    correlation_id: str) -> records.TrafficReportEvent | None:
        """The report since the previous one (or the meter's start) up to `now_ns` (wall clock,
        nanoseconds), and start counting afresh; None when there was no traffic.

        An empty period publishes nothing and does not move the report window's start, so the
        published windows still tile time without gaps.
        """
        if not self._tallies:
            return None
        tallies, self._tallies = self._tallies, {}
        report = records.TrafficReportEvent(
            tenant_traffic_stats={
                tenant: {
                    app: {endpoint: tally.stat() for endpoint, tally in endpoints.items()}
                    for app, endpoints in apps.items()
                }
                for tenant, apps in tallies.items()
            },
            time_from=self._period_start_ns,
            time_to=now_ns,
            correlation_id=correlation_id,
            originator_replica_id=originator_replica_id,
            timestamp=now_ns // _NS_PER_MS,
            timeout=0,
        )
        self._period_start_ns = now_ns
        return report

    def restore(self, report: records.TrafficReportEvent) -> None:
        """Put back a report that could not be published: the next one includes its counts
        and starts where it started."""
        for tenant, apps in report.tenant_traffic_stats.items():
            for app, endpoints in apps.items():
                for endpoint, stat in endpoints.items():
                    tally = self._tally(tenant, app, endpoint)
                    tally.received_bytes += stat.total_received_payload
                    tally.sent_bytes += stat.total_sent_payload
                    tally.received_messages += stat.total_received_message_count
                    tally.sent_messages += stat.total_sent_message_count
        self._period_start_ns = min(self._period_start_ns, report.time_from)


async def run_traffic_reports(
    meter: TrafficMeter,
    gateway: NatsPort,
    *,
    period: float,
    subject: str,
    replica_id: str,
) -> None:
    """Publish the meter's report every `period` seconds (trio clock) until cancelled.

    On cancellation (shutdown) the last partial period is published too (for at most
    FINAL_REPORT_WAIT), so a restart does not lose up to a period of usage statistics; the
    service should cancel this task after the sessions ended and before NATS is drained.
    """

    async def publish_report() -> None:
        if not gateway.connected:
            return  # the counts wait in the meter for NATS
        report = meter.take_report(now_ns=time.time_ns(), originator_replica_id=replica_id,
                                   correlation_id=str(uuid.uuid4()))
        if report is None:
            return
        try:
            await gateway.publish_confirmed([OutboundMessage(subject, records.encode(report))],
                                            fail_fast=True)
        except (NatsUnavailableError, MessageRejectedError) as exc:
            meter.restore(report)
            log.warning("traffic_report_delayed", reason=str(exc), time_from=report.time_from)

    next_report_at = trio.current_time() + period
    try:
        while True:
            # sleep_until a schedule rather than sleep(period): publishing time does not drift it
            await trio.sleep_until(next_report_at)
            next_report_at += period
            await publish_report()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(FINAL_REPORT_WAIT):
            await publish_report()
