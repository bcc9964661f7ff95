"""Every rule of the endpoint lifecycle (`kaa.endpoints`), pure: no trio, no I/O, microseconds."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.kaa.endpoints import (
    NO_CHANGE,
    TRANSITIONS,
    Cause,
    Change,
    DisconnectPolicy,
    Endpoints,
    Publish,
    State,
)

POLICIES = {
    "follows-client": DisconnectPolicy(on_client_disconnect=True, idle_timeout=None),
    "idle-5m": DisconnectPolicy(on_client_disconnect=True, idle_timeout=300.0),
    "gateway": DisconnectPolicy(on_client_disconnect=False, idle_timeout=60.0),
}
HTTP_IDLE = 120.0


@attrs.define(eq=False)
class FakeSession:
    forgotten: list[str] = attrs.field(factory=list)

    def forget_endpoint(self, endpoint_id: str) -> None:
        self.forgotten.append(endpoint_id)


def make() -> Endpoints[FakeSession]:
    return Endpoints(POLICIES.__getitem__, http_idle_timeout=HTTP_IDLE)


def connected(**endpoints: str) -> Change:
    return Change(connected=endpoints)


def disconnected(**endpoints: str) -> Change:
    return Change(disconnected=endpoints)


# ----------------------------------------------------------------------------- the table


def test_only_leaving_by_roaming_is_silent() -> None:
    """Rule 2: going offline publishes a DisconnectedEvent except by roaming; going online from
    offline publishes a ConnectedEvent; nothing else publishes."""
    for (state, cause), (next_state, publish) in TRANSITIONS.items():
        if state is State.OFFLINE:
            assert publish is Publish.CONNECTED and next_state is not State.OFFLINE
        elif next_state is State.OFFLINE:
            assert publish is (Publish.NOTHING if cause is Cause.ROAMED
                               else Publish.DISCONNECTED), (state, cause)
        else:
            assert publish is Publish.NOTHING, (state, cause)


def test_first_identification_connects() -> None:
    endpoints, session = make(), FakeSession()
    assert endpoints.identified("ep", session, "follows-client", 0.0) == connected(
        ep="follows-client")
    assert endpoints.state_of("ep") is State.ATTACHED
    assert endpoints.holder_of("ep") is session
    assert endpoints.online_count == 1


def test_identified_again_on_the_same_session_publishes_nothing() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("ep", session, "follows-client", 0.0)
    assert endpoints.identified("ep", session, "follows-client", 1.0) == NO_CHANGE
    assert session.forgotten == []


def test_identified_with_another_appversion_is_announced() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("ep", session, "follows-client", 0.0)
    assert endpoints.identified("ep", session, "idle-5m", 1.0) == connected(ep="idle-5m")
    assert endpoints.next_deadline() == 301.0


def test_identified_on_another_session_roams_silently() -> None:
    endpoints, first, second = make(), FakeSession(), FakeSession()
    endpoints.identified("ep", first, "follows-client", 0.0)
    assert endpoints.identified("ep", second, "follows-client", 1.0) == NO_CHANGE
    assert endpoints.holder_of("ep") is second and first.forgotten == ["ep"]
    # the first session's close no longer concerns the endpoint
    assert endpoints.client_gone(first, ["ep"]) == NO_CHANGE
    assert endpoints.state_of("ep") is State.ATTACHED


def test_client_gone_disconnects_what_follows_the_client() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("a", session, "follows-client", 0.0)
    endpoints.identified("b", session, "idle-5m", 0.0)
    assert endpoints.client_gone(session, ["a", "b"]) == disconnected(
        a="follows-client", b="idle-5m")
    assert endpoints.online_count == 0 and endpoints.next_deadline() is None
    assert session.forgotten == []  # the closing session is not told what it did itself


def test_client_gone_keeps_a_gateway_online_until_idle() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("gw", session, "gateway", 0.0)
    assert endpoints.client_gone(session, ["gw"]) == NO_CHANGE
    assert endpoints.state_of("gw") is State.KEPT and endpoints.holder_of("gw") is None
    assert endpoints.expired(59.9) == NO_CHANGE
    assert endpoints.expired(60.0) == disconnected(gw="gateway")
    assert endpoints.state_of("gw") is State.OFFLINE


def test_kept_endpoint_identified_again_comes_back_silently() -> None:
    endpoints, old, new = make(), FakeSession(), FakeSession()
    endpoints.identified("gw", old, "gateway", 0.0)
    endpoints.client_gone(old, ["gw"])
    assert endpoints.identified("gw", new, "gateway", 30.0) == NO_CHANGE
    assert endpoints.holder_of("gw") is new
    assert endpoints.expired(60.0) == NO_CHANGE  # its deadline restarted at 30
    assert endpoints.expired(90.0) == disconnected(gw="gateway")
    assert new.forgotten == ["gw"] and old.forgotten == []


def test_touch_postpones_the_deadline() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("a", session, "idle-5m", 0.0)
    endpoints.identified("b", session, "idle-5m", 10.0)
    endpoints.touch("a", 20.0)
    endpoints.touch("unknown", 20.0)
    assert endpoints.next_deadline() == 310.0
    assert endpoints.expired(310.0) == disconnected(b="idle-5m")
    assert endpoints.expired(320.0) == disconnected(a="idle-5m")
    assert session.forgotten == ["b", "a"]


def test_idle_expiry_of_an_attached_endpoint_tells_its_session() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("a", session, "idle-5m", 0.0)
    endpoints.identified("c", session, "follows-client", 0.0)
    assert endpoints.expired(1e9) == disconnected(a="idle-5m")
    assert session.forgotten == ["a"] and endpoints.holder_of("c") is session


def test_revoked_disconnects_and_tells_the_session() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("ep", session, "idle-5m", 0.0)
    assert endpoints.revoked("ep") == disconnected(ep="idle-5m")
    assert session.forgotten == ["ep"] and endpoints.next_deadline() is None
    assert endpoints.revoked("ep") == NO_CHANGE


def test_revoking_a_kept_endpoint_changes_nothing() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("gw", session, "gateway", 0.0)
    endpoints.client_gone(session, ["gw"])
    assert endpoints.revoked("gw") == NO_CHANGE and endpoints.state_of("gw") is State.KEPT


@pytest.mark.parametrize("kept", [False, True])
def test_roamed_to_another_replica_goes_offline_silently(kept: bool) -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("gw", session, "gateway", 0.0)
    if kept:
        endpoints.client_gone(session, ["gw"])
    assert endpoints.roamed(["gw", "never-here"]) == NO_CHANGE
    assert endpoints.state_of("gw") is State.OFFLINE and endpoints.next_deadline() is None
    assert session.forgotten == ([] if kept else ["gw"])
    assert endpoints.expired(1e9) == NO_CHANGE


def test_removed_appversion_disconnects_its_endpoints_held_or_kept() -> None:
    endpoints, one, two = make(), FakeSession(), FakeSession()
    endpoints.identified("a", one, "gateway", 0.0)
    endpoints.identified("b", two, "gateway", 0.0)
    endpoints.identified("c", two, "idle-5m", 0.0)
    endpoints.client_gone(one, ["a"])
    assert endpoints.app_versions_removed({"gateway"}) == disconnected(a="gateway", b="gateway")
    assert two.forgotten == ["b"] and one.forgotten == []
    assert endpoints.online_count == 1 and endpoints.next_deadline() == 300.0


def test_shutdown_disconnects_everything_still_online() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("gw", session, "gateway", 0.0)
    endpoints.client_gone(session, ["gw"])
    endpoints.http_request("h", "follows-client", 0.0)
    assert endpoints.shutdown() == disconnected(gw="gateway", h="follows-client")
    assert endpoints.online_count == 0 and endpoints.shutdown() == NO_CHANGE


def test_http_request_connects_and_idles_out() -> None:
    endpoints = make()
    assert endpoints.http_request("h", "follows-client", 0.0) == connected(h="follows-client")
    assert endpoints.state_of("h") is State.KEPT
    assert endpoints.http_request("h", "follows-client", 100.0) == NO_CHANGE
    assert endpoints.expired(219.0) == NO_CHANGE
    assert endpoints.expired(220.0) == disconnected(h="follows-client")


def test_http_request_on_an_mqtt_endpoint_keeps_its_session() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("ep", session, "follows-client", 0.0)
    assert endpoints.http_request("ep", "follows-client", 1.0) == NO_CHANGE
    assert endpoints.holder_of("ep") is session and endpoints.next_deadline() is None
    # and an MQTT identification of an HTTP device takes it over silently
    endpoints.http_request("h", "follows-client", 0.0)
    assert endpoints.identified("h", session, "follows-client", 1.0) == NO_CHANGE
    assert endpoints.holder_of("h") is session and endpoints.next_deadline() is None


def test_next_deadline_is_the_earliest_across_timeouts() -> None:
    endpoints, session = make(), FakeSession()
    endpoints.identified("long", session, "idle-5m", 0.0)
    endpoints.identified("short", session, "gateway", 100.0)
    assert endpoints.next_deadline() == 160.0
    assert endpoints.expired(300.0) == disconnected(long="idle-5m", short="gateway")


def test_many_endpoints_expire_in_deadline_order() -> None:
    endpoints, session = make(), FakeSession()
    for i in range(10_000):
        endpoints.identified(f"ep-{i}", session, "gateway", float(i))
    for i in range(0, 10_000, 2):  # even ones stay active
        endpoints.touch(f"ep-{i}", 20_000.0)
    gone = endpoints.expired(10_059.5)
    assert list(gone.disconnected) == [f"ep-{i}" for i in range(1, 10_000, 2)]
    assert endpoints.online_count == 5_000 and endpoints.next_deadline() == 20_060.0


# ----------------------------------------------------------------------------- any sequence

ENDPOINT_IDS = st.sampled_from(["e1", "e2", "e3"])
APP_VERSIONS = st.sampled_from(sorted(POLICIES))
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("identified"), ENDPOINT_IDS, st.integers(0, 2), APP_VERSIONS),
    st.tuples(st.just("http"), ENDPOINT_IDS, APP_VERSIONS),
    st.tuples(st.just("close"), st.integers(0, 2)),
    st.tuples(st.just("revoked"), ENDPOINT_IDS),
    st.tuples(st.just("roamed"), ENDPOINT_IDS),
    st.tuples(st.just("removed"), APP_VERSIONS),
    st.tuples(st.just("time"), st.floats(0, 400)),
), max_size=40)


@given(OPERATIONS)
def test_the_events_always_tell_who_is_online(operations: list[tuple]) -> None:
    """Whatever happens, the published events (plus silent roaming) say exactly which
    endpoints are online, with which appversion, and a session holds only what it was given."""
    endpoints = make()
    sessions = [FakeSession() for _ in range(3)]
    held: list[set[str]] = [set() for _ in sessions]  # what each session believes it holds
    for session, owned in zip(sessions, held, strict=True):
        session.forgotten = _Discarding(owned)  # type: ignore[assignment]
    announced: dict[str, str] = {}
    now = 0.0
    for operation in operations:
        kind = operation[0]
        if kind == "identified":
            _, endpoint_id, n, app_version = operation
            change = endpoints.identified(endpoint_id, sessions[n], app_version, now)
            held[n].add(endpoint_id)
        elif kind == "http":
            change = endpoints.http_request(operation[1], operation[2], now)
        elif kind == "close":
            n = operation[1]
            change = endpoints.client_gone(sessions[n], sorted(held[n]))
            held[n].clear()
        elif kind == "revoked":
            change = endpoints.revoked(operation[1])
        elif kind == "roamed":
            change = endpoints.roamed([operation[1]])
            announced.pop(operation[1], None)
        elif kind == "removed":
            change = endpoints.app_versions_removed({operation[1]})
        else:
            now += operation[1]
            change = endpoints.expired(now)
        for endpoint_id in change.disconnected:
            assert announced.pop(endpoint_id) == change.disconnected[endpoint_id]
        announced.update(change.connected)
        online = {e: endpoints.state_of(e) for e in ("e1", "e2", "e3")}
        assert set(announced) == {e for e, state in online.items() if state is not State.OFFLINE}
        for n, session in enumerate(sessions):
            assert held[n] >= {e for e in online if endpoints.holder_of(e) is session}
            for endpoint_id in held[n]:
                assert endpoints.holder_of(endpoint_id) is session
    assert endpoints.shutdown() == Change(disconnected=announced)


class _Discarding(list):
    """A session's `forgotten` list that also drops the endpoint from what it holds."""

    def __init__(self, owned: set[str]) -> None:
        super().__init__()
        self._owned = owned

    def append(self, endpoint_id: str) -> None:  # type: ignore[override]
        self._owned.discard(endpoint_id)
        super().append(endpoint_id)
