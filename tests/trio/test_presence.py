"""Idle endpoint expiry: IdleTracker bookkeeping and the sweeper task on trio's mock clock."""

from __future__ import annotations

import trio
import trio.testing

from kpc_trio.presence import DisconnectPolicy, Expiry, IdleTracker, run_idle_sweeper

POLICIES = {
    "idle-5m": DisconnectPolicy(on_client_disconnect=True, idle_timeout=300.0),
    "gateway": DisconnectPolicy(on_client_disconnect=False, idle_timeout=60.0),
    "follows-client": DisconnectPolicy(on_client_disconnect=True, idle_timeout=None),
    "short": DisconnectPolicy(on_client_disconnect=True, idle_timeout=0.25),
}


def make_tracker() -> IdleTracker:
    return IdleTracker(POLICIES.__getitem__)


# ---------------------------------------------------------------------------------- IdleTracker


def test_endpoint_expires_exactly_at_its_deadline() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "idle-5m", now=100.0)
    assert tracker.next_deadline() == 400.0
    assert tracker.expired(399.999) == []
    assert tracker.expired(400.0) == [("ep-1", "idle-5m", False)]
    assert len(tracker) == 0 and tracker.next_deadline() is None
    assert tracker.expired(10_000.0) == []


def test_touch_postpones_the_deadline() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "idle-5m", now=0.0)
    tracker.touch("ep-2", "idle-5m", now=10.0)
    tracker.touch("ep-1", "idle-5m", now=20.0)
    assert tracker.next_deadline() == 310.0
    assert tracker.expired(310.0) == [("ep-2", "idle-5m", False)]
    assert tracker.expired(319.0) == []
    assert tracker.expired(320.0) == [("ep-1", "idle-5m", False)]


def test_endpoints_without_idle_timeout_are_not_tracked() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "follows-client", now=0.0)
    assert len(tracker) == 0 and tracker.next_deadline() is None
    assert tracker.detach("ep-1") is False  # the caller disconnects it right away


def test_detached_endpoint_stays_until_expiry_and_is_reported_detached() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "gateway", now=0.0)
    tracker.touch("ep-2", "gateway", now=0.0)
    assert tracker.detach("ep-1") is True
    assert tracker.next_deadline() == 60.0  # leaving does not move the deadline
    assert tracker.expired(59.0) == []
    assert sorted(tracker.expired(60.0)) == [("ep-1", "gateway", True), ("ep-2", "gateway", False)]


def test_activity_after_detach_reattaches() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "gateway", now=0.0)
    tracker.detach("ep-1")
    tracker.touch("ep-1", "gateway", now=30.0)  # its device came back on another connection
    assert tracker.expired(90.0) == [("ep-1", "gateway", False)]


def test_forget_stops_tracking() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "idle-5m", now=0.0)
    tracker.touch("ep-2", "gateway", now=0.0)
    tracker.forget("ep-2")
    tracker.forget("never-seen")
    assert tracker.next_deadline() == 300.0
    assert tracker.expired(1_000.0) == [("ep-1", "idle-5m", False)]


def test_next_deadline_is_the_earliest_across_timeouts() -> None:
    tracker = make_tracker()
    tracker.touch("ep-long", "idle-5m", now=0.0)
    tracker.touch("ep-short", "gateway", now=100.0)
    assert tracker.next_deadline() == 160.0
    assert tracker.expired(300.0) == [("ep-long", "idle-5m", False), ("ep-short", "gateway", False)]


def test_app_version_change_moves_the_endpoint_to_its_new_timeout() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "idle-5m", now=0.0)
    tracker.touch("ep-1", "gateway", now=10.0)
    assert tracker.next_deadline() == 70.0
    assert tracker.expired(70.0) == [("ep-1", "gateway", False)]
    tracker.touch("ep-2", "gateway", now=0.0)
    tracker.touch("ep-2", "follows-client", now=1.0)
    assert len(tracker) == 0


def test_many_endpoints_expire_in_deadline_order() -> None:
    tracker = make_tracker()
    for i in range(10_000):
        tracker.touch(f"ep-{i}", "gateway", now=float(i))
    for i in range(0, 10_000, 2):  # even ones stay active
        tracker.touch(f"ep-{i}", "gateway", now=20_000.0)
    gone = tracker.expired(10_059.5)
    assert [endpoint for endpoint, _, _ in gone] == [f"ep-{i}" for i in range(1, 10_000, 2)]
    assert len(tracker) == 5_000 and tracker.next_deadline() == 20_060.0


# ---------------------------------------------------------------------------------- sweeper


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, list[Expiry]]] = []

    def __call__(self, expired: list[Expiry]) -> None:
        self.calls.append((trio.current_time(), expired))


async def test_sweeper_reports_an_idle_endpoint_after_exactly_its_duration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker, recorder = make_tracker(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, tracker, recorder)
        await trio.sleep(12.5)  # the sweeper is asleep with an empty tracker
        touched_at = trio.current_time()
        tracker.touch("ep-1", "idle-5m", touched_at)
        await trio.sleep(400)
        nursery.cancel_scope.cancel()
    assert recorder.calls == [(touched_at + 300.0, [("ep-1", "idle-5m", False)])]


async def test_sweeper_follows_touches_and_reports_detached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker, recorder = make_tracker(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, tracker, recorder)
        start = trio.current_time()
        tracker.touch("ep-1", "gateway", start)
        tracker.touch("ep-2", "gateway", start)
        await trio.sleep(50)
        tracker.touch("ep-1", "gateway", trio.current_time())  # postponed to start + 110
        tracker.detach("ep-2")
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert recorder.calls == [
        (start + 60.0, [("ep-2", "gateway", True)]),
        (start + 110.0, [("ep-1", "gateway", False)]),
    ]


async def test_sweeper_catches_a_shorter_deadline_within_its_poll_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker, recorder = make_tracker(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, tracker, recorder)
        tracker.touch("ep-long", "idle-5m", trio.current_time())
        await trio.sleep(10.1)
        touched_at = trio.current_time()
        tracker.touch("ep-short", "short", touched_at)  # sub-second: earlier than any sleep target
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    [(reported_at, expired)] = recorder.calls
    assert expired == [("ep-short", "short", False)]
    assert touched_at + 0.25 <= reported_at <= touched_at + 1.0


async def test_sweeper_hands_over_everything_due_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker, recorder = make_tracker(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, tracker, recorder)
        now = trio.current_time()
        for i in range(3):
            tracker.touch(f"ep-{i}", "gateway", now)
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    assert recorder.calls == [(now + 60.0, [(f"ep-{i}", "gateway", False) for i in range(3)])]


def test_releasing_appversions_returns_their_detached_endpoints() -> None:
    tracker = make_tracker()
    tracker.touch("ep-1", "gateway", now=0.0)
    tracker.touch("ep-2", "gateway", now=0.0)
    tracker.touch("ep-3", "idle-5m", now=0.0)
    assert tracker.detach("ep-1")
    assert tracker.release_app_versions({"gateway"}) == {"ep-1": "gateway"}
    assert len(tracker) == 1 and not tracker.is_detached("ep-1")
    assert tracker.expired(10_000.0) == [("ep-3", "idle-5m", False)]
