"""3/ISM subjects: exactly the strings of spec 4.8."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.kaa import subjects
from kpc_trio.kaa.subjects import SubjectTokenError


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (subjects.client_data("dcx"), "kaa.v1.service.dcx.esp.ClientData"),
        (subjects.extension_data_service("kpc"), "kaa.v1.service.kpc.esp.ExtensionData"),
        (subjects.extension_data_replica("kpc-r1"), "kaa.v1.replica.kpc-r1.esp.ExtensionData"),
        (subjects.token_request("cm"), "kaa.v1.service.cm.ecap.ep-token-request"),
        (subjects.token_response("kpc-r1"), "kaa.v1.replica.kpc-r1.ecap.ep-token-response"),
        (subjects.cap_basic_request("ccm"), "kaa.v1.service.ccm.cap.basic-request"),
        (subjects.cap_basic_response("kpc-r1"), "kaa.v1.replica.kpc-r1.cap.basic-response"),
        (subjects.cap_certificate_request("ccm"), "kaa.v1.service.ccm.cap.certificate-request"),
        (
            subjects.cap_certificate_response("kpc-r1"),
            "kaa.v1.replica.kpc-r1.cap.certificate-response",
        ),
        (
            subjects.ecap_username_password_request("cm"),
            "kaa.v1.service.cm.ecap.client-username-password-request",
        ),
        (
            subjects.ecap_username_password_response("kpc-r1"),
            "kaa.v1.replica.kpc-r1.ecap.client-username-password-response",
        ),
        (
            subjects.ecap_certificate_request("cm"),
            "kaa.v1.service.cm.ecap.client-certificate-request",
        ),
        (
            subjects.ecap_certificate_response("kpc-r1"),
            "kaa.v1.replica.kpc-r1.ecap.client-certificate-response",
        ),
        (subjects.connected_event("kpc"), "kaa.v1.events.kpc.endpoint.connectivity.connected"),
        (
            subjects.disconnected_event("kpc"),
            "kaa.v1.events.kpc.endpoint.connectivity.disconnected",
        ),
        (
            subjects.traffic_report("kpc"),
            "kaa.v1.events.kpc.endpoint.traffic-reporting.payload",
        ),
        (subjects.token_revoked_wildcard(), "kaa.v1.events.*.endpoint.token.revoked"),
        (
            subjects.basic_credentials_revoked_wildcard(),
            "kaa.v1.events.*.client-credentials.basic.revoked",
        ),
        (
            subjects.certificate_credentials_revoked_wildcard(),
            "kaa.v1.events.*.client-credentials.certificate.revoked",
        ),
        (
            subjects.client_credential_revoked_wildcard(),
            "kaa.v1.events.*.client.credential.revoked",
        ),
    ],
)
def test_subject_matches_spec_catalogue(built: str, expected: str) -> None:
    assert built == expected


NAMED_BUILDERS: list[Callable[[str], str]] = [
    subjects.client_data,
    subjects.extension_data_service,
    subjects.extension_data_replica,
    subjects.token_request,
    subjects.token_response,
    subjects.cap_basic_request,
    subjects.cap_basic_response,
    subjects.cap_certificate_request,
    subjects.cap_certificate_response,
    subjects.ecap_username_password_request,
    subjects.ecap_username_password_response,
    subjects.ecap_certificate_request,
    subjects.ecap_certificate_response,
    subjects.connected_event,
    subjects.disconnected_event,
    subjects.traffic_report,
]


@pytest.mark.parametrize("builder", NAMED_BUILDERS)
@pytest.mark.parametrize("bad_name", ["", "a.b", "*", ">", "kpc r1", "kpc\tr1", "kpc\u2028"])
def test_names_that_would_change_the_subject_structure_are_refused(
    builder: Callable[[str], str], bad_name: str
) -> None:
    with pytest.raises(SubjectTokenError, match="cannot be used in a NATS subject"):
        builder(bad_name)


@given(
    st.sampled_from(NAMED_BUILDERS),
    st.text(
        alphabet=st.characters(exclude_characters=".*>", exclude_categories=["Zs", "Cc"]),
        min_size=1,
    ).filter(lambda name: not any(c.isspace() for c in name)),
)
def test_the_name_is_the_fourth_subject_token(builder: Callable[[str], str], name: str) -> None:
    assert builder(name).split(".")[3] == name
