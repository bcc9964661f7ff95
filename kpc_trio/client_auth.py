"""Client authentication of an MQTT CONNECT over NATS (spec 5.1-5.4).

Kaa 1.2+ asks CCM over 22/CAP (`cap.basic-request`, `cap.certificate-request`); Kaa 1.0/1.1 asks
CM over 16/ECAP (`client-username-password-request`, `client-certificate-request`). Which one is
configuration (`kaa.kpc.auth.protocol`). Decisions where the spec leaves room:

* A client certificate (present only after the TLS layer verified its chain) takes precedence over
  a CONNECT username: it is the stronger credential and the one the transport already checked; the
  username/password of such a client is not sent anywhere.
* 22/CAP usernames are `<username>@<tenantId>`, split at the last `@`. A username with no `@` or an
  empty part is refused locally with 4 (bad user name or password): CCM cannot resolve a tenant
  for it, so asking would only cost a round trip. 16/ECAP sends the username unchanged.
* A password that is not UTF-8 is refused locally with 4 (both schemas carry strings). A username
  without a password is sent with an empty password (CAP requires a string) or null (ECAP).
* Provider status -> CONNACK: 2xx -> 0; 401 and 404 -> 4; 403 and any other 4xx -> 5;
  5xx, anything else, a timeout or NATS being down -> 3 (server unavailable: the client may retry).
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

import attrs

from kpc_trio.config import AuthSettings
from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.mqtt.packets import ConnAckCode, Connect
from kpc_trio.nats.gateway import NatsPort
from kpc_trio.nats.requests import (
    CorrelatedRequests,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from kpc_trio.net import Peer
from kpc_trio.net.certificate import ClientCertificate

log = get_logger(__name__)

AuthKind = Literal["anonymous", "basic", "certificate"]


@attrs.frozen
class AuthOutcome:
    """The CONNACK code for a CONNECT and, once accepted, who the client is (spec 7: the session
    keeps it to close the connection when these credentials are revoked)."""

    code: ConnAckCode
    tenant_id: str | None = None
    credentials_id: str | None = None
    client_id: str | None = None
    kind: AuthKind = "anonymous"

    @property
    def accepted(self) -> bool:
        return self.code is ConnAckCode.ACCEPTED


#: A client let in without credentials.
ANONYMOUS = AuthOutcome(ConnAckCode.ACCEPTED)


def connack_code_for_status(status_code: int) -> ConnAckCode:
    """The CONNACK return code for a provider's `statusCode` (see the module docstring)."""
    if 200 <= status_code < 300:
        return ConnAckCode.ACCEPTED
    if status_code in (401, 404):
        return ConnAckCode.BAD_USERNAME_OR_PASSWORD
    if 400 <= status_code < 500:
        return ConnAckCode.NOT_AUTHORIZED
    return ConnAckCode.SERVER_UNAVAILABLE


class CredentialsFormatError(ValueError):
    """CONNECT credentials no provider could accept (checked before asking one)."""


@attrs.frozen
class TenantUsername:
    tenant_id: str
    username: str


def split_tenant_username(mqtt_username: str) -> TenantUsername:
    """Split `user@tenant` at the last `@`; raises CredentialsFormatError without a tenant."""
    username, at, tenant_id = mqtt_username.rpartition("@")
    if not at or not username or not tenant_id:
        raise CredentialsFormatError(
            f"username {mqtt_username!r} does not end with '@<tenantId>': Kaa 1.2+ clients must "
            "connect with the exact username shown by the platform, e.g. 'device-1@my-tenant'"
        )
    return TenantUsername(tenant_id=tenant_id, username=username)


@attrs.frozen
class _ProviderAnswer:
    """A provider's reply, whatever protocol carried it."""

    status_code: int
    reason_phrase: str | None
    credentials_id: str | None
    client_id: str | None
    tenant_id: str | None


class _ProviderProtocol(Protocol):
    """How one protocol (CAP or ECAP) asks its provider about credentials."""

    replies: tuple[CorrelatedRequests[Any], ...]

    async def check_password(self, username: str, password: str | None) -> _ProviderAnswer: ...

    async def check_certificate(self, certificate: ClientCertificate) -> _ProviderAnswer: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


def _timeout_ms(requests: CorrelatedRequests[Any]) -> int:
    return int(requests.timeout * 1000)


class _Cap:
    """22/CAP against CCM (Kaa 1.2+)."""

    def __init__(self, gateway: NatsPort, provider: str, replica_id: str, timeout: float) -> None:
        self._basic_subject = subjects.cap_basic_request(provider)
        self._certificate_subject = subjects.cap_certificate_request(provider)
        self._basic = CorrelatedRequests(
            gateway, reply_subject=subjects.cap_basic_response(replica_id),
            response_type=records.ClientBasicAuthenticationResponse, timeout=timeout,
            correlation_prefix=f"{replica_id}-cap-basic",
        )
        self._certificate = CorrelatedRequests(
            gateway, reply_subject=subjects.cap_certificate_response(replica_id),
            response_type=records.ClientCertificateAuthenticationResponse, timeout=timeout,
            correlation_prefix=f"{replica_id}-cap-cert",
        )
        self.replies: tuple[CorrelatedRequests[Any], ...] = (self._basic, self._certificate)

    async def check_password(self, username: str, password: str | None) -> _ProviderAnswer:
        who = split_tenant_username(username)
        request = records.ClientBasicAuthenticationRequest(
            correlation_id=self._basic.next_correlation_id(),
            timestamp=_now_ms(),
            timeout=_timeout_ms(self._basic),
            tenant_id=who.tenant_id,
            username=who.username,
            password=password or "",
        )
        response = await self._basic.request(self._basic_subject, request)
        return _ProviderAnswer(response.status_code, response.reason_phrase,
                               response.credentials_id, response.client_id, who.tenant_id)

    async def check_certificate(self, certificate: ClientCertificate) -> _ProviderAnswer:
        request = records.ClientCertificateAuthenticationRequest(
            correlation_id=self._certificate.next_correlation_id(),
            timestamp=_now_ms(),
            timeout=_timeout_ms(self._certificate),
            issuer=certificate.issuer,
            serial_number=certificate.serial_number,
        )
        response = await self._certificate.request(self._certificate_subject, request)
        # The tenant comes back in the reply (RFC 0022 since June 2020).
        return _ProviderAnswer(response.status_code, response.reason_phrase,
                               response.credentials_id, response.client_id, response.tenant_id)


class _Ecap:
    """16/ECAP against CM (Kaa 1.0/1.1): no tenants."""

    def __init__(self, gateway: NatsPort, provider: str, replica_id: str, timeout: float) -> None:
        self._password_subject = subjects.ecap_username_password_request(provider)
        self._certificate_subject = subjects.ecap_certificate_request(provider)
        self._password = CorrelatedRequests(
            gateway, reply_subject=subjects.ecap_username_password_response(replica_id),
            response_type=records.ClientUsernamePasswordValidationResponse, timeout=timeout,
            correlation_prefix=f"{replica_id}-ecap-basic",
        )
        self._certificate = CorrelatedRequests(
            gateway, reply_subject=subjects.ecap_certificate_response(replica_id),
            response_type=records.ClientCertificateValidationResponse, timeout=timeout,
            correlation_prefix=f"{replica_id}-ecap-cert",
        )
        self.replies: tuple[CorrelatedRequests[Any], ...] = (self._password, self._certificate)

    async def check_password(self, username: str, password: str | None) -> _ProviderAnswer:
        request = records.ClientUsernamePasswordValidationRequest(
            correlation_id=self._password.next_correlation_id(),
            timestamp=_now_ms(),
            timeout=_timeout_ms(self._password),
            username=username,
            password=password,
        )
        response = await self._password.request(self._password_subject, request)
        return _ProviderAnswer(response.status_code, response.reason_phrase,
                               response.credential_id, response.client_id, None)

    async def check_certificate(self, certificate: ClientCertificate) -> _ProviderAnswer:
        request = records.ClientCertificateValidationRequest(
            correlation_id=self._certificate.next_correlation_id(),
            timestamp=_now_ms(),
            timeout=_timeout_ms(self._certificate),
            issuer=certificate.issuer,
            serial_number=certificate.serial_number,
        )
        response = await self._certificate.request(self._certificate_subject, request)
        return _ProviderAnswer(response.status_code, response.reason_phrase,
                               response.credential_id, response.client_id, None)


_PROTOCOLS: dict[str, type[_Cap] | type[_Ecap]] = {"cap": _Cap, "ecap": _Ecap}


class NatsClientAuthenticator:
    """The session's ClientAuthenticator backed by a CAP or ECAP provider.

    Replies arrive on the replica's reply subjects: before the first CONNECT, the service starts
    one task per entry of `replies`:
    `nursery.start_soon(r.run_responses, await gateway.subscribe(r.reply_subject))`.
    """

    def __init__(
        self,
        gateway: NatsPort,
        *,
        protocol: str,
        provider: str,
        replica_id: str,
        request_timeout: float,
        anonymous_allowed: bool,
    ) -> None:
        try:
            provider_protocol = _PROTOCOLS[protocol]
        except KeyError:
            raise ValueError(
                f"client authentication protocol {protocol!r} is not one of {sorted(_PROTOCOLS)}"
            ) from None
        self._protocol: _ProviderProtocol = provider_protocol(
            gateway, provider, replica_id, request_timeout
        )
        self._protocol_name = protocol
        self.anonymous_allowed = anonymous_allowed  # a configuration reload may change it

    @classmethod
    def from_config(
        cls, gateway: NatsPort, settings: AuthSettings, *, replica_id: str
    ) -> NatsClientAuthenticator:
        """The authenticator `kaa.kpc.auth` describes."""
        return cls(
            gateway,
            protocol=settings.protocol,
            provider=settings.client_provider,
            replica_id=replica_id,
            request_timeout=settings.request_timeout,
            anonymous_allowed=settings.anonymous_allowed,
        )

    @property
    def replies(self) -> tuple[CorrelatedRequests[Any], ...]:
        """The reply subjects to subscribe to and their `run_responses` task bodies."""
        return self._protocol.replies

    async def authenticate(self, connect: Connect, peer: Peer) -> AuthOutcome:
        """Ask the provider about the peer's certificate or else the CONNECT's credentials."""
        if peer.certificate is None and connect.username is None:
            return self._without_credentials(connect)
        kind: AuthKind = "basic" if peer.certificate is None else "certificate"
        try:
            answer = await self._ask_provider(connect, peer.certificate)
        except CredentialsFormatError as exc:
            log.info("client_auth_refused", client_id=connect.client_id, kind=kind,
                     reason=str(exc))
            return AuthOutcome(ConnAckCode.BAD_USERNAME_OR_PASSWORD, kind=kind)
        except (ProviderUnavailableError, ProviderTimeoutError) as exc:
            log.warning("client_auth_provider_unavailable", client_id=connect.client_id,
                        kind=kind, protocol=self._protocol_name, reason=str(exc))
            return AuthOutcome(ConnAckCode.SERVER_UNAVAILABLE, kind=kind)
        code = connack_code_for_status(answer.status_code)
        if code is not ConnAckCode.ACCEPTED:
            log.info("client_auth_refused", client_id=connect.client_id, kind=kind,
                     status=answer.status_code, reason=answer.reason_phrase, code=int(code))
            return AuthOutcome(code, kind=kind)
        log.info("client_authenticated", client_id=connect.client_id, kind=kind,
                 tenant_id=answer.tenant_id, credentials_id=answer.credentials_id,
                 provider_client_id=answer.client_id)
        return AuthOutcome(code, answer.tenant_id, answer.credentials_id, answer.client_id, kind)

    def _without_credentials(self, connect: Connect) -> AuthOutcome:
        if self.anonymous_allowed:
            return ANONYMOUS
        log.info("client_auth_refused", client_id=connect.client_id, kind="anonymous",
                 reason="no credentials and anonymous clients are not allowed")
        return AuthOutcome(ConnAckCode.NOT_AUTHORIZED)

    async def _ask_provider(
        self, connect: Connect, certificate: ClientCertificate | None
    ) -> _ProviderAnswer:
        if certificate is not None:
            return await self._protocol.check_certificate(certificate)
        assert connect.username is not None  # authenticate() handles clients without credentials
        return await self._protocol.check_password(
            connect.username, _password_text(connect.password)
        )


def _password_text(password: bytes | None) -> str | None:
    try:
        return None if password is None else password.decode()
    except UnicodeDecodeError:
        raise CredentialsFormatError(
            "the CONNECT password is not UTF-8 text, which the provider protocols require"
        ) from None
