"""The hub's table of requests waiting for their reply: unique ids, bounded, expiring."""

from __future__ import annotations

from kpc_trio.hub import REQUEST_ID_LIMIT, Hub
from kpc_trio.mqtt.packets import QoS

TIMEOUT = 30.0


def hub(**options: int) -> Hub[str]:
    return Hub(request_timeout=TIMEOUT, **options)


def test_requests_with_the_same_device_id_get_distinct_ids_and_their_own_session() -> None:
    table = hub()
    ids = {session: table.expect_reply(session, "app_v1", "tsx", 0, now=0.0)
           for session in ("first", "second", "third")}
    assert len(set(ids.values())) == 3
    assert all(0 <= request_id < REQUEST_ID_LIMIT for request_id in ids.values())
    for session in ("second", "first", "third"):
        pending = table.take_reply("app_v1", "tsx", ids[session], now=1.0)
        assert pending is not None
        assert (pending.session, pending.device_request_id) == (session, 0)
    assert table.pending_request_count == 0


def test_a_reply_is_taken_once_and_only_for_its_extension_and_app_version() -> None:
    table = hub()
    request_id = table.expect_reply("s", "app_v1", "tsx", 7, now=0.0)
    assert table.take_reply("app_v1", "other", request_id, now=0.0) is None
    assert table.take_reply("app_v2", "tsx", request_id, now=0.0) is None
    assert table.take_reply("app_v1", "tsx", request_id, now=0.0) is not None
    assert table.take_reply("app_v1", "tsx", request_id, now=0.0) is None


def test_pending_requests_expire_with_the_response_timeout() -> None:
    table = hub()
    early = table.expect_reply("s", "app_v1", "tsx", 1, now=0.0)
    late = table.expect_reply("s", "app_v1", "tsx", 2, now=10.0)
    assert table.take_reply("app_v1", "tsx", early, now=TIMEOUT) is None
    assert table.pending_request_count == 1
    assert table.take_reply("app_v1", "tsx", late, now=TIMEOUT + 9.9) is not None


def test_the_table_is_bounded_the_oldest_request_goes_first() -> None:
    table = hub(max_pending_requests=3)
    ids = [table.expect_reply("s", "app_v1", "tsx", n, now=0.0) for n in range(5)]
    assert table.pending_request_count == 3
    assert table.take_reply("app_v1", "tsx", ids[1], now=0.0) is None
    assert table.take_reply("app_v1", "tsx", ids[2], now=0.0) is not None


def test_a_closed_session_leaves_nothing_pending() -> None:
    table = hub()
    table.expect_reply("gone", "app_v1", "tsx", 1, now=0.0)
    kept = table.expect_reply("kept", "app_v1", "tsx", 1, now=0.0)
    table.forget_session("gone")
    assert table.pending_request_count == 1
    assert table.take_reply("app_v1", "tsx", kept, now=0.0) is not None


def test_an_endpoint_aware_request_keeps_its_id_and_its_reply_goes_to_the_asker() -> None:
    table = hub()
    # The endpoint's requests come from two connections, with their own ids.
    assert table.expect_reply("old", "app_v1", "dcx", 0, now=0.0, endpoint_id="ep",
                              token="tok") == 0
    assert table.expect_reply("new", "app_v1", "cex", 0, now=0.0, endpoint_id="ep",
                              token="tok") == 0
    assert table.take_reply("app_v1", "dcx", 0, now=1.0, endpoint_id="other") is None
    pending = table.take_reply("app_v1", "dcx", 0, now=1.0, endpoint_id="ep")
    assert pending is not None
    assert (pending.session, pending.token, pending.device_request_id) == ("old", "tok", 0)
    pending = table.take_reply("app_v1", "cex", 0, now=1.0, endpoint_id="ep")
    assert pending is not None and pending.session == "new"
    # An unaware reply with the same id is not the aware request's, and vice versa.
    assert table.take_reply("app_v1", "dcx", 0, now=1.0) is None
    assert table.pending_request_count == 0


def test_an_endpoint_aware_request_asked_again_goes_to_the_newest_asker() -> None:
    table = hub()
    table.expect_reply("first", "app_v1", "dcx", 5, now=0.0, endpoint_id="ep")
    table.expect_reply("second", "app_v1", "dcx", 5, now=1.0, endpoint_id="ep")
    assert table.pending_request_count == 1
    pending = table.take_reply("app_v1", "dcx", 5, now=2.0, endpoint_id="ep")
    assert pending is not None and pending.session == "second"


def test_a_pending_request_keeps_the_qos_its_reply_goes_out_with() -> None:
    table = hub()
    unaware = table.expect_reply("s", "app_v1", "tsx", 3, now=0.0, qos=QoS.AT_LEAST_ONCE)
    table.expect_reply("s", "app_v1", "tsx", 3, now=0.0, endpoint_id="e1")
    assert table.awaiting_replies(now=1.0) == 2
    taken = table.take_reply("app_v1", "tsx", unaware, now=1.0)
    assert taken is not None and taken.qos is QoS.AT_LEAST_ONCE
    aware = table.take_reply("app_v1", "tsx", 3, now=1.0, endpoint_id="e1")
    assert aware is not None and aware.qos is QoS.AT_MOST_ONCE


def test_expired_requests_are_no_longer_awaited() -> None:
    table = hub()
    table.expect_reply("s", "app_v1", "tsx", 1, now=0.0)
    table.expect_reply("s", "app_v1", "tsx", 2, now=5.0)
    assert table.awaiting_replies(now=TIMEOUT - 1) == 2
    assert table.awaiting_replies(now=TIMEOUT) == 1
    assert table.awaiting_replies(now=TIMEOUT + 5) == 0
