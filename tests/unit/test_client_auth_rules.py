"""Pure rules of client authentication: provider status -> CONNACK code, CAP tenant usernames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.client_auth import (
    ANONYMOUS,
    CredentialsFormatError,
    TenantUsername,
    connack_code_for_status,
    split_tenant_username,
)
from kpc_trio.mqtt.packets import ConnAckCode


@pytest.mark.parametrize(("status", "code"), [
    (200, ConnAckCode.ACCEPTED),
    (204, ConnAckCode.ACCEPTED),
    (299, ConnAckCode.ACCEPTED),
    (401, ConnAckCode.BAD_USERNAME_OR_PASSWORD),
    (404, ConnAckCode.BAD_USERNAME_OR_PASSWORD),
    (403, ConnAckCode.NOT_AUTHORIZED),
    (400, ConnAckCode.NOT_AUTHORIZED),
    (409, ConnAckCode.NOT_AUTHORIZED),
    (500, ConnAckCode.SERVER_UNAVAILABLE),
    (503, ConnAckCode.SERVER_UNAVAILABLE),
    (504, ConnAckCode.SERVER_UNAVAILABLE),
    (302, ConnAckCode.SERVER_UNAVAILABLE),
    (0, ConnAckCode.SERVER_UNAVAILABLE),
])
def test_status_maps_to_connack_code(status: int, code: ConnAckCode) -> None:
    assert connack_code_for_status(status) is code


def test_anonymous_outcome_is_accepted_without_identity() -> None:
    assert ANONYMOUS.accepted
    assert (ANONYMOUS.tenant_id, ANONYMOUS.credentials_id, ANONYMOUS.kind) == (
        None, None, "anonymous")


@pytest.mark.parametrize(("mqtt_username", "expected"), [
    ("device-1@tenant-a", TenantUsername(tenant_id="tenant-a", username="device-1")),
    ("ops@example.com@tenant-b", TenantUsername(tenant_id="tenant-b", username="ops@example.com")),
    ("a@b", TenantUsername(tenant_id="b", username="a")),
])
def test_tenant_is_the_suffix_after_the_last_at(mqtt_username: str,
                                                expected: TenantUsername) -> None:
    assert split_tenant_username(mqtt_username) == expected


@pytest.mark.parametrize("mqtt_username", ["device-1", "", "device-1@", "@tenant-a", "@"])
def test_username_without_both_parts_is_refused(mqtt_username: str) -> None:
    with pytest.raises(CredentialsFormatError, match="@<tenantId>"):
        split_tenant_username(mqtt_username)


@given(username=st.text(min_size=1), tenant=st.text(min_size=1).filter(lambda t: "@" not in t))
def test_split_recovers_any_username_and_tenant(username: str, tenant: str) -> None:
    assert split_tenant_username(f"{username}@{tenant}") == TenantUsername(tenant, username)
