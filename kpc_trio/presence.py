"""The idle sweeper: turns the endpoints' idle deadlines (`kaa.endpoints`) into transitions.

Kaa lets each application (with application-version overrides) choose between "disconnect the
endpoint when its client disconnects" (the default) and "disconnect an idle endpoint after a
duration" (for gateways such as LoRaWAN whose connection outlives their devices), or both
(spec 3.3); HTTP devices, which have no connection, always go offline when idle. What an expiry
changes is decided by `Endpoints.expired`; this task only keeps the time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from kpc_trio.kaa.endpoints import Change, Endpoints
from kpc_trio.logs import get_logger

log = get_logger(__name__)

#: Longest sleep of the sweeper; see run_idle_sweeper for why it polls.
SWEEP_POLL_INTERVAL = 1.0


async def run_idle_sweeper(endpoints: Endpoints[Any], publish: Callable[[Change], None]) -> None:
    """Expire idle endpoints at their deadline (trio clock) and `publish` the change; runs
    until cancelled.

    The sweeper polls at least every SWEEP_POLL_INTERVAL instead of being woken on each touch:
    a deadline earlier than the one it sleeps towards can only come from a newly tracked endpoint
    whose timeout is shorter than the sleep, and the sleep never exceeds the interval, so expiry
    is exact for timeouts >= 1 s (idle durations are minutes in practice) and at most 1 s late
    below that. One wake-up a second costs nothing, and `touch` (once per message) stays free of
    any trio call.
    """
    while True:
        now = trio.current_time()
        deadline = endpoints.next_deadline()
        wake_at = now + SWEEP_POLL_INTERVAL
        await trio.sleep_until(wake_at if deadline is None else min(deadline, wake_at))
        change = endpoints.expired(trio.current_time())
        if change:
            log.info("endpoints_idle", endpoints=len(change.disconnected))
            publish(change)
