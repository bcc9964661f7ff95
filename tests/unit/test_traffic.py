"""Traffic reports: TrafficMeter counting and reports, and the periodic publishing task."""

from __future__ import annotations

import time

import trio
import trio.testing

from kpc_trio.kaa import records
from kpc_trio.traffic import TrafficMeter, run_traffic_reports
from tests.fake_nats import FakeNats

SUBJECT = "kaa.v1.events.kpc.endpoint.traffic-reporting.payload"
START_NS = 1_700_000_000_123_456_789


def take(meter: TrafficMeter, now_ns: int) -> records.TrafficReportEvent | None:
    return meter.take_report(now_ns=now_ns, originator_replica_id="kpc-r1", correlation_id="c-1")


# ---------------------------------------------------------------------------------- TrafficMeter


def test_counts_payload_bytes_and_messages_per_endpoint() -> None:
    meter = TrafficMeter(start_ns=START_NS)
    meter.received("acme", "smart-meter", "ep-1", 100)
    meter.received("acme", "smart-meter", "ep-1", 0)
    meter.sent("acme", "smart-meter", "ep-1", 7)
    meter.sent("acme", "smart-meter", "ep-2", 30)
    meter.sent("acme", "smart-meter", "ep-2", 12)
    meter.received("acme", "thermostat", "ep-3", 5)
    meter.received("globex", "smart-meter", "ep-4", 64)

    report = take(meter, START_NS + 60_000_000_000)

    assert report is not None
    assert report.tenant_traffic_stats == {
        "acme": {
            "smart-meter": {
                "ep-1": records.TrafficStat(total_received_payload=100, total_sent_payload=7,
                                            total_received_message_count=2,
                                            total_sent_message_count=1),
                "ep-2": records.TrafficStat(total_sent_payload=42, total_sent_message_count=2),
            },
            "thermostat": {
                "ep-3": records.TrafficStat(total_received_payload=5,
                                            total_received_message_count=1),
            },
        },
        "globex": {
            "smart-meter": {
                "ep-4": records.TrafficStat(total_received_payload=64,
                                            total_received_message_count=1),
            },
        },
    }


def test_report_fields_and_nanosecond_window() -> None:
    meter = TrafficMeter(start_ns=START_NS)
    meter.received("acme", "app", "ep-1", 1)
    now_ns = START_NS + 60_000_000_001
    report = meter.take_report(now_ns=now_ns, originator_replica_id="kpc-r1",
                               correlation_id="corr-9")
    assert report is not None
    assert (report.time_from, report.time_to) == (START_NS, now_ns)
    assert (report.correlation_id, report.originator_replica_id) == ("corr-9", "kpc-r1")
    assert report.timestamp == now_ns // 1_000_000  # Avro timestamp is in milliseconds
    assert report.timeout == 0


def test_empty_period_gives_no_report() -> None:
    meter = TrafficMeter(start_ns=START_NS)
    assert take(meter, START_NS + 1) is None


def test_taking_a_report_resets_the_counters_and_starts_the_next_window() -> None:
    meter = TrafficMeter(start_ns=START_NS)
    meter.received("acme", "app", "ep-1", 10)
    first = take(meter, START_NS + 1_000)
    assert take(meter, START_NS + 2_000) is None  # nothing since: no report
    meter.sent("acme", "app", "ep-1", 3)
    second = take(meter, START_NS + 3_000)

    assert first is not None and second is not None
    assert second.tenant_traffic_stats == {
        "acme": {"app": {"ep-1": records.TrafficStat(total_sent_payload=3,
                                                     total_sent_message_count=1)}},
    }
    # windows tile time: the empty period is inside the next published window
    assert (second.time_from, second.time_to) == (first.time_to, START_NS + 3_000)


def test_sessions_without_tenant_count_under_the_default_tenant() -> None:
    meter = TrafficMeter(start_ns=START_NS, default_tenant_id="kaa")
    meter.received(None, "app", "ep-1", 4)
    meter.received("", "app", "ep-1", 6)
    meter.received("kaa", "app", "ep-1", 1)
    report = take(meter, START_NS + 1)
    assert report is not None
    assert report.tenant_traffic_stats == {
        "kaa": {"app": {"ep-1": records.TrafficStat(total_received_payload=11,
                                                    total_received_message_count=3)}},
    }


def test_report_encodes_and_decodes_with_the_real_schema() -> None:
    meter = TrafficMeter(start_ns=START_NS)
    meter.received("acme", "app", "ep-1", 2**40)  # Avro long, beyond 32 bits
    meter.sent("globex", "other", "ep-2", 9)
    report = take(meter, START_NS + 5)
    assert report is not None
    assert records.decode(records.TrafficReportEvent, records.encode(report)) == report


# ---------------------------------------------------------------------------------- the task


def reports(nats: FakeNats) -> list[tuple[float, records.TrafficReportEvent]]:
    """What reached NATS: (trio time, decoded report)."""
    assert {message.subject for message in nats.published} <= {SUBJECT}
    return [(at, records.decode(records.TrafficReportEvent, message.payload))
            for at, message in zip(nats.published_at, nats.published, strict=True)]


def endpoint_stats(report: records.TrafficReportEvent) -> dict[str, records.TrafficStat]:
    return {endpoint: stat
            for apps in report.tenant_traffic_stats.values()
            for endpoints in apps.values()
            for endpoint, stat in endpoints.items()}


async def test_one_report_per_period_with_traffic_and_none_for_an_empty_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    meter = TrafficMeter(start_ns=time.time_ns())
    nats = FakeNats()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(lambda: run_traffic_reports(
            meter, nats, period=60.0, subject=SUBJECT, replica_id="kpc-r1"))
        await trio.sleep(1)  # period 1: [0, 60)
        meter.received("acme", "app", "ep-1", 10)
        meter.received("acme", "app", "ep-1", 20)
        meter.sent("acme", "app", "ep-2", 5)
        await trio.sleep(129)  # period 2: [60, 120) stays empty
        meter.sent("acme", "app", "ep-1", 7)  # period 3: [120, 180)
        await trio.sleep(51)  # period 4 is empty up to the cancellation: nothing to flush
        nursery.cancel_scope.cancel()

    (first_at, first), (third_at, third) = reports(nats)
    assert (first_at, third_at) == (start + 60.0, start + 180.0)
    assert endpoint_stats(first) == {
        "ep-1": records.TrafficStat(total_received_payload=30, total_received_message_count=2),
        "ep-2": records.TrafficStat(total_sent_payload=5, total_sent_message_count=1),
    }
    assert endpoint_stats(third) == {
        "ep-1": records.TrafficStat(total_sent_payload=7, total_sent_message_count=1),
    }
    assert third.time_from == first.time_to
    assert first.originator_replica_id == third.originator_replica_id == "kpc-r1"
    assert first.correlation_id != third.correlation_id


async def test_cancellation_publishes_the_partial_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    meter = TrafficMeter(start_ns=time.time_ns())
    nats = FakeNats()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(lambda: run_traffic_reports(
            meter, nats, period=60.0, subject=SUBJECT, replica_id="kpc-r1"))
        await trio.sleep(10)
        meter.received("acme", "app", "ep-1", 3)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    [(published_at, report)] = reports(nats)
    assert published_at == start + 20.0
    assert endpoint_stats(report) == {
        "ep-1": records.TrafficStat(total_received_payload=3, total_received_message_count=1),
    }


async def test_nothing_published_without_traffic(autojump_clock: trio.testing.MockClock) -> None:
    nats = FakeNats()
    with trio.move_on_after(600):
        await run_traffic_reports(TrafficMeter(start_ns=time.time_ns()), nats, period=60.0,
                                  subject=SUBJECT, replica_id="kpc-r1")
    assert nats.published == []


async def test_counts_wait_for_nats_and_go_out_after_the_outage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    meter = TrafficMeter(start_ns=time.time_ns())
    nats = FakeNats()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(lambda: run_traffic_reports(
            meter, nats, period=60.0, subject=SUBJECT, replica_id="kpc-r1"))
        meter.received("acme", "app", "ep-1", 10)
        nats.disconnect()
        await trio.sleep(61)  # period 1 ends while NATS is away: nothing taken
        meter.received("acme", "app", "ep-1", 5)
        nats.reconnect()
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    [(published_at, report)] = reports(nats)
    assert published_at == start + 120.0
    assert endpoint_stats(report) == {
        "ep-1": records.TrafficStat(total_received_payload=15, total_received_message_count=2),
    }


def test_a_restored_report_is_part_of_the_next_one() -> None:
    meter = TrafficMeter(start_ns=START_NS)
    meter.received("acme", "app", "ep-1", 10)
    first = take(meter, START_NS + 10)
    assert first is not None
    meter.sent("acme", "app", "ep-1", 4)
    meter.restore(first)
    second = take(meter, START_NS + 20)
    assert second is not None and second.time_from == START_NS
    assert endpoint_stats(second) == {"ep-1": records.TrafficStat(
        total_received_payload=10, total_received_message_count=1,
        total_sent_payload=4, total_sent_message_count=1)}
