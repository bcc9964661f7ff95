"""When an endpoint goes offline: per-application disconnection policy and idle expiry (spec 3.3).

Kaa lets each application (with application-version overrides) choose between "disconnect the
endpoint when its client disconnects" (the default) and "disconnect an idle endpoint after a
duration" (for gateways such as LoRaWAN whose connection outlives their devices), or both.

`IdleTracker` is pure bookkeeping over times given by the caller (trio's clock in the service);
`run_idle_sweeper` is the task that turns its deadlines into `on_expired` calls.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Set

import attrs
import trio

from kpc_trio.logs import get_logger

log = get_logger(__name__)

#: Longest sleep of the sweeper; see run_idle_sweeper for why it polls.
SWEEP_POLL_INTERVAL = 1.0


@attrs.frozen
class DisconnectPolicy:
    """When an endpoint of one application version counts as disconnected (DisconnectedEvent)."""

    on_client_disconnect: bool = True
    idle_timeout: float | None = None  # seconds without messages; None = no idle disconnection


#: (endpoint id, appversion name, detached: its client had already left)
Expiry = tuple[str, str, bool]


@attrs.define(slots=True)
class _Presence:
    last_active: float
    app_version: str
    detached: bool = False


class IdleTracker:
    """Endpoints whose policy has an idle timeout, each with the time of its last activity.

    One insertion-ordered dict per distinct timeout: a touch moves the endpoint to the end, so
    each dict stays ordered by deadline and every operation is O(1) (expiry pops from the front).
    Distinct timeouts are few (one per application version at most).
    """

    def __init__(self, policy_of: Callable[[str], DisconnectPolicy]) -> None:
        self._policy_of = policy_of
        self._by_timeout: dict[float, collections.OrderedDict[str, _Presence]] = {}
        self._timeout_of: dict[str, float] = {}  # endpoint id -> key of its dict above

    def __len__(self) -> int:
        return len(self._timeout_of)

    def touch(self, endpoint_id: str, app_version: str, now: float) -> None:
        """The endpoint was active at `now`; its idle deadline restarts (and it is attached)."""
        timeout = self._policy_of(app_version).idle_timeout
        current = self._timeout_of.get(endpoint_id)
        if current is not None and current == timeout:
            bucket = self._by_timeout[current]
            presence = bucket[endpoint_id]
            presence.last_active = now
            presence.app_version = app_version
            presence.detached = False
            bucket.move_to_end(endpoint_id)
            return
        if current is not None:  # its appversion changed to one with another timeout
            self.forget(endpoint_id)
        if timeout is None:
            return
        self._by_timeout.setdefault(timeout, collections.OrderedDict())[endpoint_id] = (
            _Presence(now, app_version)
        )
        self._timeout_of[endpoint_id] = timeout

    def detach(self, endpoint_id: str) -> bool:
        """Its client left: keep it online until its idle deadline if the policy says so.

        False when the endpoint is not tracked or its policy follows the client (then it is
        forgotten): the caller must disconnect it now.
        """
        timeout = self._timeout_of.get(endpoint_id)
        if timeout is None:
            return False
        presence = self._by_timeout[timeout][endpoint_id]
        if self._policy_of(presence.app_version).on_client_disconnect:
            self.forget(endpoint_id)
            return False
        presence.detached = True
        return True

    def is_detached(self, endpoint_id: str) -> bool:
        """Whether the endpoint is kept online (client gone) waiting for its idle deadline."""
        timeout = self._timeout_of.get(endpoint_id)
        return timeout is not None and self._by_timeout[timeout][endpoint_id].detached

    def forget(self, endpoint_id: str) -> None:
        """Stop tracking the endpoint (it went offline some other way); unknown ids are ignored."""
        timeout = self._timeout_of.pop(endpoint_id, None)
        if timeout is None:
            return
        bucket = self._by_timeout[timeout]
        del bucket[endpoint_id]
        if not bucket:
            del self._by_timeout[timeout]

    def release_app_versions(self, app_versions: Set[str]) -> dict[str, str]:
        """Stop tracking the endpoints of `app_versions` (they left the configuration); returns
        endpoint id -> appversion of the detached ones, which no session reports any more."""
        released = {}
        for bucket in list(self._by_timeout.values()):
            for endpoint_id, presence in list(bucket.items()):
                if presence.app_version in app_versions:
                    if presence.detached:
                        released[endpoint_id] = presence.app_version
                    self.forget(endpoint_id)
        return released

    def expired(self, now: float) -> list[Expiry]:
        """Remove and return the endpoints whose deadline (last activity + timeout) is <= now."""
        gone: list[Expiry] = []
        for timeout in list(self._by_timeout):
            bucket = self._by_timeout[timeout]
            while bucket:
                endpoint_id, presence = next(iter(bucket.items()))
                if presence.last_active + timeout > now:
                    break
                del bucket[endpoint_id]
                del self._timeout_of[endpoint_id]
                gone.append((endpoint_id, presence.app_version, presence.detached))
            if not bucket:
                del self._by_timeout[timeout]
        return gone

    def next_deadline(self) -> float | None:
        """The earliest idle deadline, or None when no endpoint is tracked."""
        return min(
            (next(iter(bucket.values())).last_active + timeout
             for timeout, bucket in self._by_timeout.items()),
            default=None,
        )


async def run_idle_sweeper(
    tracker: IdleTracker, on_expired: Callable[[list[Expiry]], None]
) -> None:
    """Report idle endpoints to `on_expired` at their deadline (trio clock); runs until cancelled.

    The sweeper polls at least every SWEEP_POLL_INTERVAL instead of being woken on each touch:
    a deadline earlier than the one it sleeps towards can only come from a newly tracked endpoint
    whose timeout is shorter than the sleep, and the sleep never exceeds the interval, so expiry
    is exact for timeouts >= 1 s (idle durations are minutes in practice) and at most 1 s late
    below that. One wake-up a second costs nothing, and `touch` (once per message) stays free of
    any trio call.
    """
    while True:
        now = trio.current_time()
        deadline = tracker.next_deadline()
        wake_at = now + SWEEP_POLL_INTERVAL
        await trio.sleep_until(wake_at if deadline is None else min(deadline, wake_at))
        gone = tracker.expired(trio.current_time())
        if gone:
            log.info("idle_endpoints_expired", endpoints=len(gone),
                     detached=sum(1 for _, _, detached in gone if detached))
            on_expired(gone)
