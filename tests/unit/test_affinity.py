"""Session affinity towards extension replicas (`kaa.affinity`): pure, on given times."""

from __future__ import annotations

import pytest

from kpc_trio.kaa.affinity import ENTRY_OVERHEAD, Affinity, client_data_subject

REPLICA = "kaa.v1.replica.dcx-7.esp.ExtensionData"
SUBJECT = "kaa.v1.replica.dcx-7.esp.ClientData"


@pytest.mark.parametrize(("reply_to", "subject"), [
    (REPLICA, SUBJECT),
    (SUBJECT, SUBJECT),
    ("kaa.v1.replica.dcx-7.esp.Anything", SUBJECT),  # RFC 3: the last token is substituted
    ("kaa.v1.service.dcx.esp.ClientData", None),  # not a replica subject
    ("kaa.v1.replica.dcx-7.ecap.ep-token-response", None),  # another protocol
    ("kaa.v1.replica..esp.ClientData", None),
    ("kaa.v1.replica.dcx.7.esp.ClientData", None),
    ("kaa.v1.replica.*.esp.ClientData", None),
    ("_INBOX.abc", None),
])
def test_only_4esp_replica_subjects_are_taken(reply_to: str, subject: str | None) -> None:
    assert client_data_subject(reply_to) == subject


def test_remembered_until_the_ttl() -> None:
    affinity = Affinity(ttl=600, max_bytes=1 << 20)
    assert affinity.subject_for("ep", "dcx", 0.0) is None
    affinity.remember("ep", "dcx", REPLICA, 0.0)
    assert affinity.subject_for("ep", "dcx", 599.9) == SUBJECT
    assert affinity.subject_for("ep", "epmx", 1.0) is None  # per extension
    assert affinity.subject_for("other", "dcx", 1.0) is None  # per endpoint
    assert affinity.subject_for("ep", "dcx", 600.0) is None
    assert len(affinity) == 0 and affinity.bytes == 0


def test_a_later_reply_renews_and_moves() -> None:
    affinity = Affinity(ttl=10, max_bytes=1 << 20)
    affinity.remember("ep", "dcx", REPLICA, 0.0)
    affinity.remember("ep", "dcx", "kaa.v1.replica.dcx-9.esp.ExtensionData", 5.0)
    assert affinity.subject_for("ep", "dcx", 14.0) == "kaa.v1.replica.dcx-9.esp.ClientData"
    affinity.remember("ep", "dcx", "not-a-replica", 6.0)  # ignored: the entry stays
    assert len(affinity) == 1


def test_the_same_replica_answering_again_renews_in_place_with_exact_bytes() -> None:
    entry = len("ep-0") + len("dcx") + len(SUBJECT) + ENTRY_OVERHEAD
    affinity = Affinity(ttl=10, max_bytes=2 * entry)
    affinity.remember("ep-0", "dcx", REPLICA, 0.0)
    affinity.remember("ep-1", "dcx", REPLICA, 0.0)
    renewed = affinity.entries["ep-0", "dcx"]
    for n in range(1, 1001):
        affinity.remember("ep-0", "dcx", REPLICA, float(n))
        assert affinity.bytes == 2 * entry
    assert affinity.entries["ep-0", "dcx"] is renewed  # not rebuilt
    assert len(affinity) == 2
    assert affinity.subject_for("ep-0", "dcx", 1009.9) == SUBJECT  # expiry moved to 1010
    assert affinity.subject_for("ep-0", "dcx", 1010.0) is None
    assert affinity.subject_for("ep-1", "dcx", 10.0) is None  # never renewed
    assert len(affinity) == 0 and affinity.bytes == 0


def test_a_renewed_entry_becomes_the_most_recently_used() -> None:
    entry = len("ep-0") + len("dcx") + len(SUBJECT) + ENTRY_OVERHEAD
    affinity = Affinity(ttl=600, max_bytes=2 * entry)
    affinity.remember("ep-0", "dcx", REPLICA, 0.0)
    affinity.remember("ep-1", "dcx", REPLICA, 0.0)
    affinity.remember("ep-0", "dcx", REPLICA, 1.0)
    affinity.remember("ep-2", "dcx", REPLICA, 2.0)  # over the bound: ep-1 is the oldest now
    assert list(affinity.entries) == [("ep-0", "dcx"), ("ep-2", "dcx")]
    assert affinity.bytes == 2 * entry


def test_refused_subject_is_forgotten_for_every_endpoint() -> None:
    affinity = Affinity(ttl=600, max_bytes=1 << 20)
    affinity.remember("a", "dcx", REPLICA, 0.0)
    affinity.remember("b", "dcx", REPLICA, 0.0)
    affinity.remember("c", "dcx", "kaa.v1.replica.dcx-9.esp.ExtensionData", 0.0)
    assert affinity.forget_subject(SUBJECT) == 2
    assert affinity.subject_for("a", "dcx", 1.0) is None
    assert affinity.subject_for("c", "dcx", 1.0) == "kaa.v1.replica.dcx-9.esp.ClientData"


def test_bounded_in_bytes_least_recently_used_first() -> None:
    entry = len("ep-0") + len("dcx") + len(SUBJECT) + ENTRY_OVERHEAD
    affinity = Affinity(ttl=600, max_bytes=3 * entry)
    for i in range(3):
        affinity.remember(f"ep-{i}", "dcx", REPLICA, 0.0)
    assert affinity.subject_for("ep-0", "dcx", 1.0) == SUBJECT  # used: now the newest
    affinity.remember("ep-3", "dcx", REPLICA, 1.0)
    assert len(affinity) == 3 and affinity.bytes == 3 * entry
    assert affinity.subject_for("ep-1", "dcx", 2.0) is None
    assert affinity.subject_for("ep-0", "dcx", 2.0) == SUBJECT


def test_ttl_zero_disables() -> None:
    affinity = Affinity(ttl=0, max_bytes=1 << 20)
    affinity.remember("ep", "dcx", REPLICA, 0.0)
    assert not affinity and affinity.subject_for("ep", "dcx", 0.0) is None


def test_a_replica_that_stops_answering_is_left_after_the_limit() -> None:
    affinity = Affinity(ttl=600, max_bytes=1 << 20, unanswered_limit=30)
    affinity.remember("ep", "dcx", REPLICA, 0.0)
    assert affinity.subject_for("ep", "dcx", 1.0) == SUBJECT  # sent, unanswered from 1.0
    assert affinity.subject_for("ep", "dcx", 30.9) == SUBJECT
    affinity.remember("ep", "dcx", REPLICA, 31.0)  # it answered: the clock starts again
    assert affinity.subject_for("ep", "dcx", 40.0) == SUBJECT
    assert affinity.subject_for("ep", "dcx", 69.9) == SUBJECT
    assert affinity.subject_for("ep", "dcx", 70.0) is None  # 30 s of silence since 40.0
    assert len(affinity) == 0
