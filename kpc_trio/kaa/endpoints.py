"""The endpoint lifecycle: is endpoint X online, and on which session of this replica (sans-IO).

Every transition of an endpoint goes through `Endpoints`, and each returns the `Change` to
publish (9/ELCE `ConnectedEvent` / `DisconnectedEvent`), so no caller decides it again. Two
rules, after h11's `_state.py`:

1. An endpoint is OFFLINE (not tracked), ATTACHED (a session of this replica holds it: its
   pushes go there) or KEPT (online with no session: its client left but its application keeps
   it online until idle, or it is an HTTP device, which has no connection). Only the table
   `TRANSITIONS` below moves it between them.
2. A `ConnectedEvent` is published exactly when an endpoint goes from OFFLINE to online (or is
   identified with another appversion), a `DisconnectedEvent` exactly when it goes from online
   to OFFLINE, except by roaming (another replica or session now holds it, still online).

Idle expiry: an endpoint whose application version has an idle timeout (`DisconnectPolicy`,
spec 3.3), and every HTTP device, has a deadline (last activity + timeout). One
insertion-ordered dict per distinct timeout keeps the endpoints in deadline order, so a touch
and an expiry are O(1); distinct timeouts are few (one per application version at most).

Times are given by the caller (trio's clock in the service); `presence.run_idle_sweeper` turns
deadlines into `expired()` calls. A session that loses an endpoint to a transition it did not
make (roaming, revocation, idle expiry, removed appversion) is told by `Holder.forget_endpoint`.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Generic, Protocol, TypeVar

import attrs


@attrs.frozen
class DisconnectPolicy:
    """When an endpoint of one application version counts as disconnected (DisconnectedEvent)."""

    on_client_disconnect: bool = True
    idle_timeout: float | None = None  # seconds without messages; None = no idle disconnection


class Holder(Protocol):
    def forget_endpoint(self, endpoint_id: str) -> None:
        """Stop addressing the endpoint, silently: the lifecycle took it away."""


H = TypeVar("H", bound=Holder)


class State(enum.Enum):
    OFFLINE = "offline"
    ATTACHED = "attached"
    KEPT = "kept"


class Cause(enum.Enum):
    IDENTIFIED = "identified"  # a session identified it (first time, again, or from another)
    HTTP_REQUEST = "http_request"  # an HTTP request named it
    ROAMED = "roamed"  # another replica announced it (ConnectedEvent)
    CLIENT_GONE = "client_gone"  # its session closed; the policy lets it go
    CLIENT_GONE_KEPT = "client_gone_kept"  # its session closed; the policy keeps it until idle
    REVOKED = "revoked"  # its token was revoked (16/ECAP)
    IDLE = "idle"  # no activity for its idle timeout
    REMOVED = "removed"  # its appversion left the configuration (Tekton, reload)
    SHUTDOWN = "shutdown"  # the replica stops


class Publish(enum.Enum):
    NOTHING = "nothing"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


_ONLINE = (State.ATTACHED, State.KEPT)
#: (state, cause) -> (next state, what to publish). A pair that is not here is no transition:
#: the endpoint stays as it is and nothing is published (e.g. a revocation of an endpoint that
#: no session holds, a roaming announcement of an endpoint that is offline here).
TRANSITIONS: Mapping[tuple[State, Cause], tuple[State, Publish]] = {
    (State.OFFLINE, Cause.IDENTIFIED): (State.ATTACHED, Publish.CONNECTED),
    (State.ATTACHED, Cause.IDENTIFIED): (State.ATTACHED, Publish.NOTHING),
    (State.KEPT, Cause.IDENTIFIED): (State.ATTACHED, Publish.NOTHING),  # it came back
    (State.OFFLINE, Cause.HTTP_REQUEST): (State.KEPT, Publish.CONNECTED),
    (State.ATTACHED, Cause.HTTP_REQUEST): (State.ATTACHED, Publish.NOTHING),
    (State.KEPT, Cause.HTTP_REQUEST): (State.KEPT, Publish.NOTHING),
    (State.ATTACHED, Cause.CLIENT_GONE): (State.OFFLINE, Publish.DISCONNECTED),
    (State.ATTACHED, Cause.CLIENT_GONE_KEPT): (State.KEPT, Publish.NOTHING),
    (State.ATTACHED, Cause.REVOKED): (State.OFFLINE, Publish.DISCONNECTED),
    # from either online state
    **{(state, Cause.ROAMED): (State.OFFLINE, Publish.NOTHING) for state in _ONLINE},
    **{(state, cause): (State.OFFLINE, Publish.DISCONNECTED)
       for state in _ONLINE for cause in (Cause.IDLE, Cause.REMOVED, Cause.SHUTDOWN)},
}


@attrs.frozen
class Change:
    """What to publish after a transition: endpoint id -> appversion name, each map one event."""

    connected: Mapping[str, str] = attrs.field(factory=dict)
    disconnected: Mapping[str, str] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self.connected or self.disconnected)


NO_CHANGE = Change()


@attrs.define(slots=True)
class _Entry(Generic[H]):
    state: State
    app_version: str
    holder: H | None
    timeout: float | None  # idle timeout; None = no deadline
    last_active: float


class Endpoints(Generic[H]):
    """The online endpoints of this replica and who holds them. See the module's rules."""

    def __init__(self, policy_of: Callable[[str], DisconnectPolicy], *,
                 http_idle_timeout: float = 300.0) -> None:
        self._policy_of = policy_of
        self._http_idle_timeout = http_idle_timeout
        self._online: dict[str, _Entry[H]] = {}
        self._deadlines: dict[float, collections.OrderedDict[str, _Entry[H]]] = {}

    # --- queries ---------------------------------------------------------------------------
    @property
    def online_count(self) -> int:
        return len(self._online)

    def state_of(self, endpoint_id: str) -> State:
        entry = self._online.get(endpoint_id)
        return State.OFFLINE if entry is None else entry.state

    def holder_of(self, endpoint_id: str) -> H | None:
        """The session holding the endpoint (where its pushes go), if any."""
        entry = self._online.get(endpoint_id)
        return None if entry is None else entry.holder

    def next_deadline(self) -> float | None:
        """The earliest idle deadline, or None when no endpoint has one."""
        return min((next(iter(bucket.values())).last_active + timeout
                    for timeout, bucket in self._deadlines.items()), default=None)

    # --- transitions -----------------------------------------------------------------------
    def identified(self, endpoint_id: str, holder: H, app_version: str, now: float) -> Change:
        """`holder` identified the endpoint (its token): it holds it from now on. From another
        session of this replica it roams silently; with another appversion it is announced."""
        entry = self._online.get(endpoint_id)
        state = State.OFFLINE if entry is None else entry.state
        _, publish = TRANSITIONS[state, Cause.IDENTIFIED]
        if entry is not None:
            if entry.holder is not None and entry.holder is not holder:
                entry.holder.forget_endpoint(endpoint_id)
            if entry.app_version != app_version:
                publish = Publish.CONNECTED
        self._enter(endpoint_id, State.ATTACHED, app_version, holder, now,
                    self._policy_of(app_version).idle_timeout)
        return _change(publish, {endpoint_id: app_version})

    def http_request(self, endpoint_id: str, app_version: str, now: float) -> Change:
        """An HTTP request named the endpoint: online until `http_idle_timeout` without one
        (or its session's rules, when an MQTT session holds it)."""
        entry = self._online.get(endpoint_id)
        if entry is not None and entry.app_version == app_version:
            self.touch(endpoint_id, now)
            return NO_CHANGE
        state = State.OFFLINE if entry is None else entry.state
        next_state, publish = TRANSITIONS[state, Cause.HTTP_REQUEST]
        if entry is not None:  # another appversion: announced as such
            publish = Publish.CONNECTED
        holder = entry.holder if entry is not None else None
        timeout = (self._http_idle_timeout if next_state is State.KEPT
                   else self._policy_of(app_version).idle_timeout)
        self._enter(endpoint_id, next_state, app_version, holder, now, timeout)
        return _change(publish, {endpoint_id: app_version})

    def touch(self, endpoint_id: str, now: float) -> None:
        """The endpoint was active at `now`: its idle deadline restarts (hot path)."""
        entry = self._online.get(endpoint_id)
        if entry is not None and entry.timeout is not None:
            entry.last_active = now
            self._deadlines[entry.timeout].move_to_end(endpoint_id)

    def client_gone(self, holder: H, endpoint_ids: Iterable[str]) -> Change:
        """`holder`'s connection closed: each endpoint it still holds goes offline, or stays
        online until its idle deadline if its application keeps it (gateways)."""
        gone: dict[str, str] = {}
        for endpoint_id in endpoint_ids:
            entry = self._online.get(endpoint_id)
            if entry is None or entry.holder is not holder:
                continue  # it roamed away meanwhile
            keep = (entry.timeout is not None
                    and not self._policy_of(entry.app_version).on_client_disconnect)
            cause = Cause.CLIENT_GONE_KEPT if keep else Cause.CLIENT_GONE
            if self._apply(endpoint_id, entry, cause, notify=False) is Publish.DISCONNECTED:
                gone[endpoint_id] = entry.app_version
        return Change(disconnected=gone)

    def revoked(self, endpoint_id: str) -> Change:
        """Its token was revoked (the caller checked the holder uses a revoked one)."""
        return self._each(Cause.REVOKED, [endpoint_id])

    def roamed(self, endpoint_ids: Iterable[str]) -> Change:
        """Another replica announced these endpoints: still online, but not here."""
        return self._each(Cause.ROAMED, endpoint_ids)

    def app_versions_removed(self, app_versions: Set[str]) -> Change:
        """These appversions left the configuration: their endpoints go offline (the
        connections stay)."""
        return self._each(Cause.REMOVED, [endpoint_id for endpoint_id, entry
                                          in self._online.items()
                                          if entry.app_version in app_versions])

    def expired(self, now: float) -> Change:
        """Every endpoint whose idle deadline (last activity + timeout) is <= now."""
        due = []
        for timeout, bucket in self._deadlines.items():
            for endpoint_id, entry in bucket.items():
                if entry.last_active + timeout > now:
                    break
                due.append(endpoint_id)
        return self._each(Cause.IDLE, due)

    def shutdown(self) -> Change:
        """The replica stops: whatever is still online goes offline."""
        return self._each(Cause.SHUTDOWN, list(self._online))

    # --- bookkeeping -----------------------------------------------------------------------
    def _each(self, cause: Cause, endpoint_ids: Iterable[str]) -> Change:
        gone: dict[str, str] = {}
        for endpoint_id in endpoint_ids:
            entry = self._online.get(endpoint_id)
            if entry is not None and self._apply(endpoint_id, entry, cause, notify=True) \
                    is Publish.DISCONNECTED:
                gone[endpoint_id] = entry.app_version
        return Change(disconnected=gone)

    def _apply(self, endpoint_id: str, entry: _Entry[H], cause: Cause,
               notify: bool) -> Publish:
        transition = TRANSITIONS.get((entry.state, cause))
        if transition is None:
            return Publish.NOTHING
        next_state, publish = transition
        holder = entry.holder
        if next_state is State.OFFLINE:
            self._leave(endpoint_id, entry)
        else:
            entry.state = next_state
            entry.holder = None if next_state is State.KEPT else holder
        if notify and holder is not None and next_state is not State.ATTACHED:
            holder.forget_endpoint(endpoint_id)
        return publish

    def _enter(self, endpoint_id: str, state: State, app_version: str, holder: H | None,
               now: float, timeout: float | None) -> None:
        entry = self._online.get(endpoint_id)
        if entry is not None:
            self._leave(endpoint_id, entry)
        entry = self._online[endpoint_id] = _Entry(state, app_version, holder, timeout, now)
        if timeout is not None:
            self._deadlines.setdefault(timeout, collections.OrderedDict())[endpoint_id] = entry

    def _leave(self, endpoint_id: str, entry: _Entry[H]) -> None:
        del self._online[endpoint_id]
        if entry.timeout is not None:
            bucket = self._deadlines[entry.timeout]
            del bucket[endpoint_id]
            if not bucket:
                del self._deadlines[entry.timeout]


def _change(publish: Publish, endpoints: dict[str, str]) -> Change:
    if publish is Publish.CONNECTED:
        return Change(connected=endpoints)
    if publish is Publish.DISCONNECTED:
        return Change(disconnected=endpoints)
    return NO_CHANGE
