"""Simulated client credentials provider (CCM over 22/CAP, CM over 16/ECAP) and the revocation
events CM and CCM broadcast.

One provider instance answers both protocols on its instance name, from one credentials table:
22/CAP looks basic credentials up by (tenant, username, password) and 16/ECAP by the username as
the client sent it. Each entry carries the status its provider answers (200, or e.g. 403 for
suspended credentials); `status` overrides every answer, `delay` postpones it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.simulator.recording import Recording
from kpc_trio.simulator.service import Spawn, decode_message, now_ms

log = get_logger(__name__)

UNKNOWN_CREDENTIALS_REASON = "Invalid client credentials"


@attrs.frozen
class BasicCredentials:
    """Username/password credentials; `tenant_id` matters to 22/CAP only."""

    username: str
    password: str
    credentials_id: str
    tenant_id: str = "kaa"
    client_id: str | None = None
    status: int = 200


@attrs.frozen
class CertificateCredentials:
    """A client certificate known by issuer (RFC 4514) and base-10 serial number."""

    issuer: str
    serial_number: str
    credentials_id: str
    tenant_id: str = "kaa"
    client_id: str | None = None
    status: int = 200


@attrs.frozen
class _Verdict:
    status: int
    reason: str
    found: BasicCredentials | CertificateCredentials | None

    @property
    def credentials_id(self) -> str | None:
        return None if self.found is None else self.found.credentials_id

    @property
    def client_id(self) -> str | None:
        return None if self.found is None else self.found.client_id

    @property
    def tenant_id(self) -> str | None:
        return None if self.found is None else self.found.tenant_id


CredentialsRequest = (
    records.ClientBasicAuthenticationRequest
    | records.ClientCertificateAuthenticationRequest
    | records.ClientUsernamePasswordValidationRequest
    | records.ClientCertificateValidationRequest
)
CredentialsResponse = (
    records.ClientBasicAuthenticationResponse
    | records.ClientCertificateAuthenticationResponse
    | records.ClientUsernamePasswordValidationResponse
    | records.ClientCertificateValidationResponse
)


class CredentialsProvider:
    """Answers 22/CAP and 16/ECAP client authentication requests to instance `name`."""

    def __init__(
        self,
        name: str,
        basic: Iterable[BasicCredentials] = (),
        certificates: Iterable[CertificateCredentials] = (),
        *,
        unknown_status: int = 401,
    ) -> None:
        self.name = name
        self._basic = tuple(basic)
        self._certificates = {(c.issuer, c.serial_number): c for c in certificates}
        self._unknown_status = unknown_status
        self.delay = 0.0
        self.status: int | None = None  # answer every request with this status when set
        self.requests: Recording[CredentialsRequest] = Recording(
            f"client credentials requests to {name!r}"
        )

    def _verdict(self, found: BasicCredentials | CertificateCredentials | None) -> _Verdict:
        if self.status is not None:
            return _Verdict(self.status, f"Simulated status {self.status}", found)
        if found is None:
            return _Verdict(self._unknown_status, UNKNOWN_CREDENTIALS_REASON, None)
        ok = 200 <= found.status < 300
        return _Verdict(found.status, "OK" if ok else f"Credentials status {found.status}", found)

    def _find_basic(
        self, username: str | None, password: str | None, tenant_id: str | None
    ) -> BasicCredentials | None:
        """The entry matching; 16/ECAP has no tenant (`tenant_id` None matches any)."""
        return next((c for c in self._basic if c.username == username and c.password == password
                     and tenant_id in (None, c.tenant_id)), None)

    def answer(self, request: CredentialsRequest) -> CredentialsResponse:
        """The reply the real provider would give to `request`."""
        common: dict[str, Any] = {
            "correlation_id": request.correlation_id,  # KPC matches replies by it
            "timestamp": now_ms(),
            "timeout": 0,
        }
        if isinstance(request, records.ClientBasicAuthenticationRequest):
            v = self._verdict(self._find_basic(request.username, request.password,
                                               request.tenant_id))
            return records.ClientBasicAuthenticationResponse(
                **common, credentials_id=v.credentials_id, client_id=v.client_id,
                status_code=v.status, reason_phrase=v.reason)
        if isinstance(request, records.ClientUsernamePasswordValidationRequest):
            v = self._verdict(self._find_basic(request.username, request.password, None))
            return records.ClientUsernamePasswordValidationResponse(
                **common, credential_id=v.credentials_id, client_id=v.client_id,
                status_code=v.status, reason_phrase=v.reason)
        v = self._verdict(self._certificates.get((request.issuer, request.serial_number)))
        if isinstance(request, records.ClientCertificateAuthenticationRequest):
            return records.ClientCertificateAuthenticationResponse(
                **common, tenant_id=v.tenant_id, credentials_id=v.credentials_id,
                client_id=v.client_id, status_code=v.status, reason_phrase=v.reason)
        return records.ClientCertificateValidationResponse(
            **common, credential_id=v.credentials_id, client_id=v.client_id,
            status_code=v.status, reason_phrase=v.reason)

    async def attach(self, nc: NatsClient, spawn: Spawn) -> None:
        request_types: dict[str, type[CredentialsRequest]] = {
            subjects.cap_basic_request(self.name): records.ClientBasicAuthenticationRequest,
            subjects.cap_certificate_request(self.name):
                records.ClientCertificateAuthenticationRequest,
            subjects.ecap_username_password_request(self.name):
                records.ClientUsernamePasswordValidationRequest,
            subjects.ecap_certificate_request(self.name):
                records.ClientCertificateValidationRequest,
        }
        for subject, request_type in request_types.items():
            await nc.subscribe(subject, queue=self.name,
                               cb=self._on_request(nc, spawn, request_type))

    def _on_request(
        self, nc: NatsClient, spawn: Spawn, request_type: type[CredentialsRequest]
    ) -> Callable[[Msg], Any]:
        async def on_request(msg: Msg) -> None:
            request = decode_message(request_type, msg)
            if request is None:
                return
            delay = self.delay  # read before recording: a test that saw the request knows it
            self.requests.append(request)
            if msg.reply:
                spawn(self._reply(nc, msg.reply, request, delay))
            else:
                log.warning("sim_credentials_request_without_reply_to", provider=self.name,
                            correlation_id=request.correlation_id)
        return on_request

    async def _reply(
        self, nc: NatsClient, reply_to: str, request: CredentialsRequest, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        response = self.answer(request)
        await nc.publish(reply_to, records.encode(response))
        log.info("sim_client_credentials_checked", provider=self.name,
                 request=type(request).__name__, status=response.status_code,
                 correlation_id=request.correlation_id)


# ---- revocation events, as CM (16/ECAP) and CCM (22/CAP) broadcast them --------------------------


def _originated(wildcard: str, originator: str) -> str:
    """The concrete subject a provider publishes on for a subscription `wildcard` (spec 5.7)."""
    return wildcard.replace("*", originator, 1)


def token_revoked(
    app_name: str, endpoint_id: str, token_ids: Iterable[str], *, originator: str = "cm"
) -> tuple[str, records.EndpointTokenRevokedEvent]:
    event = records.EndpointTokenRevokedEvent(
        correlation_id=_event_id(), timestamp=now_ms(), timeout=0, app_name=app_name,
        endpoint_id=endpoint_id, token_ids=tuple(token_ids), originator_replica_id=originator)
    return _originated(subjects.token_revoked_wildcard(), originator), event


def basic_credentials_revoked(
    tenant_id: str, credentials_id: str, *, originator: str = "ccm"
) -> tuple[str, records.ClientCredentialsRevokedEvent]:
    return (_originated(subjects.basic_credentials_revoked_wildcard(), originator),
            _credentials_revoked(tenant_id, credentials_id, originator))


def certificate_credentials_revoked(
    tenant_id: str, credentials_id: str, *, originator: str = "ccm"
) -> tuple[str, records.ClientCredentialsRevokedEvent]:
    return (_originated(subjects.certificate_credentials_revoked_wildcard(), originator),
            _credentials_revoked(tenant_id, credentials_id, originator))


def client_credential_revoked(
    credential_id: str, *, originator: str = "cm"
) -> tuple[str, records.ClientCredentialRevokedEvent]:
    event = records.ClientCredentialRevokedEvent(
        correlation_id=_event_id(), timestamp=now_ms(), timeout=0,
        credential_id=credential_id, originator_replica_id=originator)
    return _originated(subjects.client_credential_revoked_wildcard(), originator), event


def _credentials_revoked(
    tenant_id: str, credentials_id: str, originator: str
) -> records.ClientCredentialsRevokedEvent:
    return records.ClientCredentialsRevokedEvent(
        correlation_id=_event_id(), timestamp=now_ms(), timeout=0, tenant_id=tenant_id,
        credentials_id=credentials_id, originator_replica_id=originator)


def _event_id() -> str:
    return f"revoked-{time.monotonic_ns()}"
