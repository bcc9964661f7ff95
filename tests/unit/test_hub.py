"""The hub's table of pending endpoint-unaware requests: unique ids, bounded, expiring."""

from __future__ import annotations

from kpc_trio.hub import UNAWARE_REQUEST_ID_LIMIT, Hub

TIMEOUT = 30.0


def hub(**options: int) -> Hub[str]:
    return Hub(unaware_timeout=TIMEOUT, **options)


def test_requests_with_the_same_device_id_get_distinct_ids_and_their_own_session() -> None:
    table = hub()
    ids = {session: table.expect_unaware_reply(session, "app_v1", "tsx", 0, now=0.0)
           for session in ("first", "second", "third")}
    assert len(set(ids.values())) == 3
    assert all(0 <= request_id < UNAWARE_REQUEST_ID_LIMIT for request_id in ids.values())
    for session in ("second", "first", "third"):
        pending = table.take_unaware_reply("app_v1", "tsx", ids[session], now=1.0)
        assert pending is not None
        assert (pending.session, pending.device_request_id) == (session, 0)
    assert table.pending_unaware_count == 0


def test_a_reply_is_taken_once_and_only_for_its_extension_and_app_version() -> None:
    table = hub()
    request_id = table.expect_unaware_reply("s", "app_v1", "tsx", 7, now=0.0)
    assert table.take_unaware_reply("app_v1", "other", request_id, now=0.0) is None
    assert table.take_unaware_reply("app_v2", "tsx", request_id, now=0.0) is None
    assert table.take_unaware_reply("app_v1", "tsx", request_id, now=0.0) is not None
    assert table.take_unaware_reply("app_v1", "tsx", request_id, now=0.0) is None


def test_pending_requests_expire_with_the_response_timeout() -> None:
    table = hub()
    early = table.expect_unaware_reply("s", "app_v1", "tsx", 1, now=0.0)
    late = table.expect_unaware_reply("s", "app_v1", "tsx", 2, now=10.0)
    assert table.take_unaware_reply("app_v1", "tsx", early, now=TIMEOUT) is None
    assert table.pending_unaware_count == 1
    assert table.take_unaware_reply("app_v1", "tsx", late, now=TIMEOUT + 9.9) is not None


def test_the_table_is_bounded_the_oldest_request_goes_first() -> None:
    table = hub(max_pending_unaware=3)
    ids = [table.expect_unaware_reply("s", "app_v1", "tsx", n, now=0.0) for n in range(5)]
    assert table.pending_unaware_count == 3
    assert table.take_unaware_reply("app_v1", "tsx", ids[1], now=0.0) is None
    assert table.take_unaware_reply("app_v1", "tsx", ids[2], now=0.0) is not None


def test_a_closed_session_leaves_nothing_pending() -> None:
    table = hub()
    table.expect_unaware_reply("gone", "app_v1", "tsx", 1, now=0.0)
    kept = table.expect_unaware_reply("kept", "app_v1", "tsx", 1, now=0.0)
    table.forget_session("gone")
    assert table.pending_unaware_count == 1
    assert table.take_unaware_reply("app_v1", "tsx", kept, now=0.0) is not None
