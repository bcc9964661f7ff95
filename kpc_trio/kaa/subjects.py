"""NATS subjects of the 3/ISM conventions, as KPC uses them (spec 4.3 and 4.8).

Targeted messages go to `kaa.v1.service.<instance>.<protocol>.<type>` (any replica of a service
instance) or `kaa.v1.replica.<replica-id>.<protocol>.<type>` (one replica: where KPC wants replies);
broadcast events go to `kaa.v1.events.<originator>.<entity>.<group>.<type>`.
"""

from __future__ import annotations

import functools


class SubjectTokenError(ValueError):
    """A name spliced into a NATS subject would change the subject's structure."""


_SEPARATOR_AND_WILDCARDS = frozenset(".*>")


def _token(name: str, role: str) -> str:
    structural = not _SEPARATOR_AND_WILDCARDS.isdisjoint(name) or any(c.isspace() for c in name)
    if not name or structural:
        raise SubjectTokenError(
            f"{role} {name!r} cannot be used in a NATS subject: it must be non-empty and contain "
            "no '.', '*', '>' or whitespace"
        )
    return name


def _service(instance: str, role: str, protocol_and_type: str) -> str:
    return f"kaa.v1.service.{_token(instance, role)}.{protocol_and_type}"


def _replica(replica_id: str, protocol_and_type: str) -> str:
    return f"kaa.v1.replica.{_token(replica_id, 'replica id')}.{protocol_and_type}"


def _event(originator: str, entity_group_type: str) -> str:
    return f"kaa.v1.events.{_token(originator, 'KPC instance name')}.{entity_group_type}"


# ---- 4/ESP ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # called once per client message; extension names are few
def client_data(extension: str) -> str:
    return _service(extension, "extension instance name", "esp.ClientData")


def extension_data_service(kpc_instance: str) -> str:
    return _service(kpc_instance, "KPC instance name", "esp.ExtensionData")


def extension_data_replica(replica_id: str) -> str:
    return _replica(replica_id, "esp.ExtensionData")


# ---- 16/ECAP endpoint tokens ---------------------------------------------------------------------


def token_request(provider: str) -> str:
    return _service(provider, "token provider", "ecap.ep-token-request")


def token_response(replica_id: str) -> str:
    return _replica(replica_id, "ecap.ep-token-response")


# ---- 22/CAP client authentication (Kaa 1.2+) -----------------------------------------------------


def cap_basic_request(provider: str) -> str:
    return _service(provider, "client credentials provider", "cap.basic-request")


def cap_basic_response(replica_id: str) -> str:
    return _replica(replica_id, "cap.basic-response")


def cap_certificate_request(provider: str) -> str:
    return _service(provider, "client credentials provider", "cap.certificate-request")


def cap_certificate_response(replica_id: str) -> str:
    return _replica(replica_id, "cap.certificate-response")


# ---- 16/ECAP client authentication (Kaa 1.0/1.1) -------------------------------------------------


def ecap_username_password_request(provider: str) -> str:
    return _service(provider, "credential provider", "ecap.client-username-password-request")


def ecap_username_password_response(replica_id: str) -> str:
    return _replica(replica_id, "ecap.client-username-password-response")


def ecap_certificate_request(provider: str) -> str:
    return _service(provider, "credential provider", "ecap.client-certificate-request")


def ecap_certificate_response(replica_id: str) -> str:
    return _replica(replica_id, "ecap.client-certificate-response")


# ---- 9/ELCE events KPC publishes -----------------------------------------------------------------


def connected_event(kpc_instance: str) -> str:
    return _event(kpc_instance, "endpoint.connectivity.connected")


def disconnected_event(kpc_instance: str) -> str:
    return _event(kpc_instance, "endpoint.connectivity.disconnected")


def traffic_report(kpc_instance: str) -> str:
    return _event(kpc_instance, "endpoint.traffic-reporting.payload")


# ---- revocation events (any originator; subscribe without a queue group, spec 5.7) ---------------


def token_revoked_wildcard() -> str:
    return "kaa.v1.events.*.endpoint.token.revoked"


def basic_credentials_revoked_wildcard() -> str:
    return "kaa.v1.events.*.client-credentials.basic.revoked"


def certificate_credentials_revoked_wildcard() -> str:
    return "kaa.v1.events.*.client-credentials.certificate.revoked"


def client_credential_revoked_wildcard() -> str:
    """16/ECAP revocation of Kaa 1.0/1.1 client credentials."""
    return "kaa.v1.events.*.client.credential.revoked"
