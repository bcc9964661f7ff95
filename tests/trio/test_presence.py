"""The idle sweeper on trio's mock clock: it expires endpoints at their deadline (the rules
themselves are tested in tests/unit/test_endpoints.py)."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from kpc_trio.kaa.endpoints import Change, DisconnectPolicy, Endpoints
from kpc_trio.presence import run_idle_sweeper

POLICIES = {
    "idle-5m": DisconnectPolicy(on_client_disconnect=True, idle_timeout=300.0),
    "gateway": DisconnectPolicy(on_client_disconnect=False, idle_timeout=60.0),
    "short": DisconnectPolicy(on_client_disconnect=True, idle_timeout=0.25),
}


@attrs.define(eq=False)
class Holder:
    def forget_endpoint(self, endpoint_id: str) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str]]] = []

    def __call__(self, change: Change) -> None:
        self.calls.append((trio.current_time(), dict(change.disconnected)))


def make() -> Endpoints[Holder]:
    return Endpoints(POLICIES.__getitem__)


async def test_sweeper_reports_an_idle_endpoint_after_exactly_its_duration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoints, recorder = make(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, endpoints, recorder)
        await trio.sleep(12.5)  # the sweeper is asleep with nothing to expire
        touched_at = trio.current_time()
        endpoints.identified("ep-1", Holder(), "idle-5m", touched_at)
        await trio.sleep(400)
        nursery.cancel_scope.cancel()
    assert recorder.calls == [(touched_at + 300.0, {"ep-1": "idle-5m"})]


async def test_sweeper_follows_touches_and_kept_endpoints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoints, recorder, session = make(), Recorder(), Holder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, endpoints, recorder)
        start = trio.current_time()
        endpoints.identified("ep-1", session, "gateway", start)
        endpoints.identified("ep-2", session, "gateway", start)
        await trio.sleep(50)
        endpoints.touch("ep-1", trio.current_time())  # postponed to start + 110
        endpoints.client_gone(session, ["ep-2"])
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert recorder.calls == [
        (start + 60.0, {"ep-2": "gateway"}),
        (start + 110.0, {"ep-1": "gateway"}),
    ]


async def test_sweeper_catches_a_shorter_deadline_within_its_poll_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoints, recorder = make(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, endpoints, recorder)
        endpoints.identified("ep-long", Holder(), "idle-5m", trio.current_time())
        await trio.sleep(10.1)
        touched_at = trio.current_time()
        endpoints.identified("ep-short", Holder(), "short", touched_at)  # earlier than any sleep
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    [(reported_at, expired)] = recorder.calls
    assert expired == {"ep-short": "short"}
    assert touched_at + 0.25 <= reported_at <= touched_at + 1.0


async def test_sweeper_hands_over_everything_due_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoints, recorder = make(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, endpoints, recorder)
        now = trio.current_time()
        for i in range(3):
            endpoints.identified(f"ep-{i}", Holder(), "gateway", now)
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    assert recorder.calls == [(now + 60.0, {f"ep-{i}": "gateway" for i in range(3)})]
