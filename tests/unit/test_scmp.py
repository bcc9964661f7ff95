"""17/SCMP events: both generations of both records, from bytes written by hand (Avro binary:
strings are a zig-zag length then UTF-8, a long is zig-zag, a union is its branch index)."""

from __future__ import annotations

import pytest

from kpc_trio.kaa import scmp

PROVIDER, INSTANCE = "tekton", "kpc"
BROADCAST = "kaa.v1.events.tekton.service.configuration.upsert"
BROADCAST_V1 = "kaa.v1.events.tekton.service.app-configuration.delete"
TARGETED = "kaa.v1.service.kpc.scmp.configuration.upsert"
TARGETED_V1 = "kaa.v1.service.kpc.scmp.app-configuration.upsert"

# correlationId "c1", timestamp 1, originatorReplicaId "r", tenantID "t", appName "a", no version
BROADCAST_V2_BYTES = bytes.fromhex("04 6331 02 02 72 02 02 74 02 02 61 00")
# the same without tenantID (Oct 2019 schema)
BROADCAST_V1_BYTES = bytes.fromhex("04 6331 02 02 72 02 02 61 00")
# correlationId "c1", timestamp 1, tenantID "t" (required), appName "a", appVerName "a-v1"
TARGETED_V2_BYTES = bytes.fromhex("04 6331 02 02 74 02 02 61 02 08 612d7631")
# correlationId "c1", timestamp 1, appName "a" (required), appVerName null
TARGETED_V1_BYTES = bytes.fromhex("04 6331 02 02 61 00")


def test_broadcast_events_of_both_generations() -> None:
    v2 = scmp.decode(BROADCAST, BROADCAST_V2_BYTES)
    assert (v2.generation, v2.delivery, v2.update_type) == (2, "broadcast", "upsert")
    assert (v2.correlation_id, v2.tenant_id, v2.app_name, v2.app_version) == ("c1", "t", "a", None)
    v1 = scmp.decode(BROADCAST_V1, BROADCAST_V1_BYTES)
    assert (v1.generation, v1.update_type, v1.tenant_id, v1.app_name) == (1, "delete", None, "a")


def test_targeted_events_of_both_generations() -> None:
    v2 = scmp.decode(TARGETED, TARGETED_V2_BYTES)
    assert (v2.generation, v2.delivery, v2.tenant_id, v2.app_name, v2.app_version) == (
        2, "targeted", "t", "a", "a-v1")
    v1 = scmp.decode(TARGETED_V1, TARGETED_V1_BYTES)
    assert (v1.generation, v1.tenant_id, v1.app_name, v1.app_version) == (1, None, "a", None)


def test_the_generation_is_told_by_the_bytes_not_the_subject() -> None:
    # A Tekton may send either schema on either subject generation.
    assert scmp.decode(BROADCAST, BROADCAST_V1_BYTES).generation == 1
    assert scmp.decode(BROADCAST_V1, BROADCAST_V2_BYTES).generation == 2


@pytest.mark.parametrize("payload", [
    b"", b"\x04c1", BROADCAST_V2_BYTES + b"\x00", b"\xff" * 12, b"\x04c1\x02\x02r\x02\x7f",
], ids=["empty", "truncated", "trailing-byte", "garbage", "bad-union-branch"])
def test_undecodable_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(scmp.ScmpDecodeError):
        scmp.decode(BROADCAST, payload)


def test_an_unknown_update_type_is_refused() -> None:
    with pytest.raises(scmp.ScmpDecodeError, match="update type 'merge'"):
        scmp.decode("kaa.v1.events.tekton.service.configuration.merge", BROADCAST_V2_BYTES)


def test_encode_writes_what_decode_reads() -> None:
    update = scmp.decode(TARGETED, TARGETED_V2_BYTES)
    assert scmp.encode(update, timestamp=1) == TARGETED_V2_BYTES


def test_subjects_cover_both_deliveries_and_generations_without_queue_groups() -> None:
    assert scmp.subjects(PROVIDER, INSTANCE, legacy=True) == (
        "kaa.v1.events.tekton.service.configuration.*",
        "kaa.v1.service.kpc.scmp.configuration.*",
        "kaa.v1.events.tekton.service.app-configuration.*",
        "kaa.v1.service.kpc.scmp.app-configuration.*",
    )
    assert len(scmp.subjects(PROVIDER, INSTANCE, legacy=False)) == 2
