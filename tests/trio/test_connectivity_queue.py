"""ConnectivityEvents' queue over the in-memory NATS: events survive an outage, coalesced per
endpoint (the last state wins), in order, one event per change; a full queue drops the oldest."""

from __future__ import annotations

import trio
import trio.testing

from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.kaa import records, subjects
from kpc_trio.kaa.endpoints import Change
from tests.fake_nats import FakeNats

CONNECTED = subjects.connected_event("kpc")


def events(nats: FakeNats) -> list[tuple[str, dict[str, str]]]:
    out = []
    for message in nats.published:
        kind = "connected" if message.subject == CONNECTED else "disconnected"
        record = records.ConnectedEvent if kind == "connected" else records.DisconnectedEvent
        out.append((kind, records.decode(record, message.payload).endpoints))
    return out


async def test_each_change_is_one_event_in_order(autojump_clock: trio.testing.MockClock) -> None:
    nats = FakeNats()
    queue = ConnectivityEvents(nats, kpc_instance="kpc", replica_id="r1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        for change in (Change(connected={"a": "v1"}), Change(connected={"b": "v1", "c": "v1"}),
                       Change(), Change(disconnected={"a": "v1"})):
            queue.publish(change)
            await queue.flushed()
        nursery.cancel_scope.cancel()
    assert events(nats) == [("connected", {"a": "v1"}), ("connected", {"b": "v1", "c": "v1"}),
                            ("disconnected", {"a": "v1"})]


async def test_outage_coalesces_and_publishes_after_the_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nats = FakeNats()
    nats.disconnect()
    queue = ConnectivityEvents(nats, kpc_instance="kpc", replica_id="r1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        queue.publish(Change(connected={"a": "v1", "b": "v1"}))
        await trio.sleep(5)
        # while the first change waits for NATS, two more: b leaves, c comes and leaves
        queue.publish(Change(disconnected={"b": "v1"}))
        queue.publish(Change(connected={"c": "v1"}))
        queue.publish(Change(disconnected={"c": "v1"}))
        await trio.sleep(30)
        assert nats.published == []
        nats.reconnect()
        await queue.flushed()
        nursery.cancel_scope.cancel()
    assert events(nats) == [
        ("connected", {"a": "v1", "b": "v1"}),  # taken before the later changes came
        ("disconnected", {"b": "v1"}),
        ("disconnected", {"c": "v1"}),  # its ConnectedEvent was replaced by its last state
    ]
    assert queue.dropped == 0 and queue.queued == 0


async def test_a_full_queue_drops_the_oldest_and_counts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nats = FakeNats()
    nats.disconnect()
    drops: list[int] = []
    queue = ConnectivityEvents(nats, kpc_instance="kpc", replica_id="r1", max_queued=2,
                               on_dropped=drops.append)
    queue.publish(Change(connected={"a": "v1"}))
    queue.publish(Change(connected={"b": "v1"}))
    queue.publish(Change(connected={"b": "v2"}))  # same endpoint: replaces, no drop
    assert drops == []
    queue.publish(Change(disconnected={"c": "v1", "d": "v1"}))
    assert drops == [2] and queue.dropped == 2 and queue.queued == 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        nats.reconnect()
        await queue.flushed()
        nursery.cancel_scope.cancel()
    assert events(nats) == [("disconnected", {"c": "v1", "d": "v1"})]
