"""NatsClientAuthenticator against a real nats-server and the simulated CCM/CM (real Avro)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kpc_trio.client_auth import ANONYMOUS, AuthOutcome, NatsClientAuthenticator
from kpc_trio.kaa import records
from kpc_trio.mqtt.packets import ConnAckCode, Connect
from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.nats.gateway import NatsGateway, open_nats_gateway
from kpc_trio.net import Peer
from kpc_trio.net.certificate import ClientCertificate, parse_certificate
from kpc_trio.simulator import BasicCredentials, CertificateCredentials, SimulatedKaa
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.integration.waiting import eventually

_names = itertools.count()

ALICE = BasicCredentials(username="alice", password="alice-secret", credentials_id="cred-alice",
                         tenant_id="tenant-a", client_id="client-alice")
SUSPENDED = BasicCredentials(username="bob", password="bob-secret", credentials_id="cred-bob",
                             tenant_id="tenant-a", status=403)
TCP_PEER = Peer("tcp", "127.0.0.1:50000")


def connect(username: str | None = None, password: bytes | None = None) -> Connect:
    return Connect(protocol_name="MQTT", protocol_level=4, client_id="device-1",
                   clean_session=True, keepalive=30, username=username, password=password)


@pytest.fixture(scope="module")
def client_certificate() -> ClientCertificate:
    leaf = trustme.CA().issue_cert("device-1.example")
    pem = leaf.cert_chain_pems[0].bytes()
    return parse_certificate(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))


def tls_peer(certificate: ClientCertificate) -> Peer:
    return Peer("tls", "127.0.0.1:50001", certificate)


def certificate_credentials(
    certificate: ClientCertificate, **fields: Any
) -> CertificateCredentials:
    return CertificateCredentials(issuer=certificate.issuer,
                                  serial_number=certificate.serial_number, **fields)


@contextlib.asynccontextmanager
async def open_authenticator(
    gateway: NatsGateway, provider: str, *, protocol: str = "cap", request_timeout: float = 5.0,
    anonymous_allowed: bool = True,
) -> AsyncIterator[NatsClientAuthenticator]:
    """An authenticator with its reply tasks running, wired as the service wires it."""
    authenticator = NatsClientAuthenticator(
        gateway, protocol=protocol, provider=provider, replica_id=f"replica-{next(_names)}",
        request_timeout=request_timeout, anonymous_allowed=anonymous_allowed,
    )
    async with trio.open_nursery() as nursery:
        for replies in authenticator.replies:
            channel = await gateway.subscribe(replies.reply_subject)
            nursery.start_soon(replies.run_responses, channel)
        yield authenticator
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def open_setup(
    url: str, *, protocol: str = "cap", request_timeout: float = 5.0,
    anonymous_allowed: bool = True, **kaa_options: Any,
) -> AsyncIterator[tuple[NatsClientAuthenticator, SimulatedKaa]]:
    """Simulated provider + gateway + authenticator on their own provider name (the nats-server
    is shared by the whole run)."""
    provider = f"ccm-{next(_names)}"
    async with open_simulated_kaa(url, client_provider=provider, echo_extensions=(),
                                  **kaa_options) as kaa, \
            open_nats_gateway([url]) as gateway:
        await eventually(lambda: gateway.connected)
        async with open_authenticator(gateway, provider, protocol=protocol,
                                      request_timeout=request_timeout,
                                      anonymous_allowed=anonymous_allowed) as authenticator:
            yield authenticator, kaa


# ---- 22/CAP basic --------------------------------------------------------------------------------


async def test_cap_basic_accepts_known_credentials_and_reports_the_tenant(
    nats_server: NatsServerProcess,
) -> None:
    async with open_setup(nats_server.url, basic_credentials=[ALICE]) as (auth, kaa):
        outcome = await auth.authenticate(connect("alice@tenant-a", b"alice-secret"), TCP_PEER)
    assert outcome == AuthOutcome(ConnAckCode.ACCEPTED, tenant_id="tenant-a",
                                  credentials_id="cred-alice", client_id="client-alice",
                                  kind="basic")
    [request] = kaa.credentials_requests
    assert isinstance(request, records.ClientBasicAuthenticationRequest)
    assert (request.tenant_id, request.username, request.password) == (
        "tenant-a", "alice", "alice-secret")
    assert request.timeout == 5000


async def test_cap_username_is_split_at_the_last_at_sign(nats_server: NatsServerProcess) -> None:
    email = BasicCredentials(username="ops@example.com", password="pw", credentials_id="cred-ops",
                             tenant_id="tenant-b")
    async with open_setup(nats_server.url, basic_credentials=[email]) as (auth, kaa):
        outcome = await auth.authenticate(connect("ops@example.com@tenant-b", b"pw"), TCP_PEER)
    assert (outcome.code, outcome.tenant_id, outcome.credentials_id) == (
        ConnAckCode.ACCEPTED, "tenant-b", "cred-ops")
    [request] = kaa.credentials_requests
    assert isinstance(request, records.ClientBasicAuthenticationRequest)
    assert (request.username, request.tenant_id) == ("ops@example.com", "tenant-b")


@pytest.mark.parametrize("username", ["alice", "alice@", "@tenant-a"])
async def test_cap_username_without_a_tenant_is_refused_without_asking(
    nats_server: NatsServerProcess, username: str
) -> None:
    async with open_setup(nats_server.url, basic_credentials=[ALICE]) as (auth, kaa):
        outcome = await auth.authenticate(connect(username, b"alice-secret"), TCP_PEER)
    assert outcome == AuthOutcome(ConnAckCode.BAD_USERNAME_OR_PASSWORD, kind="basic")
    assert kaa.credentials_requests == []


async def test_cap_wrong_tenant_or_password_is_a_bad_password(
    nats_server: NatsServerProcess,
) -> None:
    async with open_setup(nats_server.url, basic_credentials=[ALICE]) as (auth, kaa):
        wrong_password = await auth.authenticate(connect("alice@tenant-a", b"nope"), TCP_PEER)
        wrong_tenant = await auth.authenticate(connect("alice@tenant-z", b"alice-secret"),
                                               TCP_PEER)
    assert wrong_password.code is ConnAckCode.BAD_USERNAME_OR_PASSWORD
    assert wrong_tenant.code is ConnAckCode.BAD_USERNAME_OR_PASSWORD
    assert wrong_password.credentials_id is None and wrong_tenant.tenant_id is None
    assert len(kaa.credentials_requests) == 2


async def test_suspended_credentials_are_not_authorized(nats_server: NatsServerProcess) -> None:
    async with open_setup(nats_server.url, basic_credentials=[SUSPENDED]) as (auth, _):
        outcome = await auth.authenticate(connect("bob@tenant-a", b"bob-secret"), TCP_PEER)
    assert outcome == AuthOutcome(ConnAckCode.NOT_AUTHORIZED, kind="basic")


async def test_username_without_password_is_sent_with_an_empty_password(
    nats_server: NatsServerProcess,
) -> None:
    async with open_setup(nats_server.url, basic_credentials=[ALICE]) as (auth, kaa):
        outcome = await auth.authenticate(connect("alice@tenant-a"), TCP_PEER)
    assert outcome.code is ConnAckCode.BAD_USERNAME_OR_PASSWORD
    [request] = kaa.credentials_requests
    assert isinstance(request, records.ClientBasicAuthenticationRequest)
    assert request.password == ""


async def test_password_that_is_not_utf8_is_refused_without_asking(
    nats_server: NatsServerProcess,
) -> None:
    async with open_setup(nats_server.url, basic_credentials=[ALICE]) as (auth, kaa):
        outcome = await auth.authenticate(connect("alice@tenant-a", b"\xff\xfe"), TCP_PEER)
    assert outcome.code is ConnAckCode.BAD_USERNAME_OR_PASSWORD
    assert kaa.credentials_requests == []


# ---- status mapping, timeouts, NATS down: both protocols, both credential kinds ---------------

STATUS_TO_CONNACK = [
    (200, ConnAckCode.ACCEPTED),
    (401, ConnAckCode.BAD_USERNAME_OR_PASSWORD),
    (403, ConnAckCode.NOT_AUTHORIZED),
    (404, ConnAckCode.BAD_USERNAME_OR_PASSWORD),
    (500, ConnAckCode.SERVER_UNAVAILABLE),
    (503, ConnAckCode.SERVER_UNAVAILABLE),
]


def credentials_for(kind: str, protocol: str, certificate: ClientCertificate
                    ) -> tuple[Connect, Peer]:
    if kind == "certificate":
        return connect(), tls_peer(certificate)
    return connect("alice@tenant-a" if protocol == "cap" else "alice", b"alice-secret"), TCP_PEER


@pytest.mark.parametrize("protocol", ["cap", "ecap"])
@pytest.mark.parametrize("kind", ["basic", "certificate"])
@pytest.mark.parametrize(("status", "code"), STATUS_TO_CONNACK)
async def test_provider_status_maps_to_connack_code(
    nats_server: NatsServerProcess, client_certificate: ClientCertificate, protocol: str,
    kind: str, status: int, code: ConnAckCode,
) -> None:
    kaa_options = {"basic_credentials": [ALICE],
                   "certificate_credentials": [certificate_credentials(
                       client_certificate, credentials_id="cred-cert", tenant_id="tenant-c")]}
    async with open_setup(nats_server.url, protocol=protocol, **kaa_options) as (auth, kaa):
        await trio.to_thread.run_sync(kaa.set_credentials_status, status)
        outcome = await auth.authenticate(*credentials_for(kind, protocol, client_certificate))
    assert (outcome.code, outcome.kind) == (code, kind)
    assert len(kaa.credentials_requests) == 1


@pytest.mark.parametrize("protocol", ["cap", "ecap"])
@pytest.mark.parametrize("kind", ["basic", "certificate"])
async def test_provider_timeout_is_server_unavailable_and_a_late_reply_is_ignored(
    nats_server: NatsServerProcess, client_certificate: ClientCertificate, protocol: str,
    kind: str,
) -> None:
    kaa_options = {"basic_credentials": [ALICE],
                   "certificate_credentials": [certificate_credentials(
                       client_certificate, credentials_id="cred-cert", tenant_id="tenant-c")]}
    async with open_setup(nats_server.url, protocol=protocol, request_timeout=0.2,
                          **kaa_options) as (auth, kaa):
        await trio.to_thread.run_sync(kaa.set_credentials_delay, 0.5)
        timed_out = await auth.authenticate(*credentials_for(kind, protocol, client_certificate))
        await trio.to_thread.run_sync(kaa.set_credentials_delay, 0.0)
        # The first request's late reply arrives meanwhile; it must not answer this one.
        answered = await auth.authenticate(*credentials_for(kind, protocol, client_certificate))
    assert timed_out == AuthOutcome(ConnAckCode.SERVER_UNAVAILABLE, kind=kind)
    assert (answered.code, answered.kind) == (ConnAckCode.ACCEPTED, kind)
    assert all(replies.pending == 0 for replies in auth.replies)


async def test_nats_down_is_server_unavailable(
    nats_server_factory: Callable[..., NatsServerProcess],
) -> None:
    server = nats_server_factory()
    async with open_nats_gateway([server.url], reconnect_wait=0.1) as gateway:
        await eventually(lambda: gateway.connected)
        async with open_authenticator(gateway, "ccm") as auth:
            await trio.to_thread.run_sync(server.stop)
            await eventually(lambda: not gateway.connected)
            outcome = await auth.authenticate(connect("alice@tenant-a", b"pw"), TCP_PEER)
            assert outcome == AuthOutcome(ConnAckCode.SERVER_UNAVAILABLE, kind="basic")
            assert all(replies.pending == 0 for replies in auth.replies)


# ---- 16/ECAP basic -------------------------------------------------------------------------------


async def test_ecap_sends_the_username_unchanged_and_has_no_tenant(
    nats_server: NatsServerProcess,
) -> None:
    with_at = BasicCredentials(username="alice@tenant-a", password="pw", credentials_id="cred-1",
                               client_id="client-1")
    async with open_setup(nats_server.url, protocol="ecap",
                          basic_credentials=[with_at]) as (auth, kaa):
        outcome = await auth.authenticate(connect("alice@tenant-a", b"pw"), TCP_PEER)
    assert outcome == AuthOutcome(ConnAckCode.ACCEPTED, tenant_id=None, credentials_id="cred-1",
                                  client_id="client-1", kind="basic")
    [request] = kaa.credentials_requests
    assert isinstance(request, records.ClientUsernamePasswordValidationRequest)
    assert (request.username, request.password) == ("alice@tenant-a", "pw")


async def test_ecap_username_without_password_is_sent_as_null(
    nats_server: NatsServerProcess,
) -> None:
    async with open_setup(nats_server.url, protocol="ecap", basic_credentials=[ALICE]) as (
            auth, kaa):
        outcome = await auth.authenticate(connect("alice"), TCP_PEER)
    assert outcome.code is ConnAckCode.BAD_USERNAME_OR_PASSWORD
    [request] = kaa.credentials_requests
    assert isinstance(request, records.ClientUsernamePasswordValidationRequest)
    assert request.password is None


# ---- certificates --------------------------------------------------------------------------------


async def test_cap_certificate_takes_the_tenant_from_the_reply_and_wins_over_a_username(
    nats_server: NatsServerProcess, client_certificate: ClientCertificate,
) -> None:
    known = certificate_credentials(client_certificate, credentials_id="cred-cert",
                                    tenant_id="tenant-c", client_id="client-cert")
    async with open_setup(nats_server.url, certificate_credentials=[known]) as (auth, kaa):
        outcome = await auth.authenticate(connect("nobody@nowhere", b"wrong"),
                                          tls_peer(client_certificate))
    assert outcome == AuthOutcome(ConnAckCode.ACCEPTED, tenant_id="tenant-c",
                                  credentials_id="cred-cert", client_id="client-cert",
                                  kind="certificate")
    [request] = kaa.credentials_requests  # the username/password went nowhere
    assert isinstance(request, records.ClientCertificateAuthenticationRequest)
    assert request.issuer == client_certificate.issuer
    assert request.serial_number == client_certificate.serial_number
    assert request.serial_number.isdigit()


async def test_unknown_certificate_is_refused(
    nats_server: NatsServerProcess, client_certificate: ClientCertificate,
) -> None:
    async with open_setup(nats_server.url) as (auth, _):
        outcome = await auth.authenticate(connect(), tls_peer(client_certificate))
    assert outcome == AuthOutcome(ConnAckCode.BAD_USERNAME_OR_PASSWORD, kind="certificate")


async def test_ecap_certificate_is_validated_by_issuer_and_serial(
    nats_server: NatsServerProcess, client_certificate: ClientCertificate,
) -> None:
    known = certificate_credentials(client_certificate, credentials_id="cred-cert")
    async with open_setup(nats_server.url, protocol="ecap",
                          certificate_credentials=[known]) as (auth, kaa):
        outcome = await auth.authenticate(connect(), tls_peer(client_certificate))
    assert outcome == AuthOutcome(ConnAckCode.ACCEPTED, credentials_id="cred-cert",
                                  kind="certificate")
    [request] = kaa.credentials_requests
    assert isinstance(request, records.ClientCertificateValidationRequest)
    assert (request.issuer, request.serial_number) == (
        client_certificate.issuer, client_certificate.serial_number)


# ---- anonymous clients ---------------------------------------------------------------------------


@pytest.mark.parametrize(("allowed", "expected"), [
    (True, ANONYMOUS),
    (False, AuthOutcome(ConnAckCode.NOT_AUTHORIZED)),
])
async def test_client_without_credentials_follows_the_anonymous_policy(
    nats_server: NatsServerProcess, allowed: bool, expected: AuthOutcome,
) -> None:
    async with open_setup(nats_server.url, anonymous_allowed=allowed) as (auth, kaa):
        outcome = await auth.authenticate(connect(), TCP_PEER)
    assert outcome == expected
    assert outcome.kind == "anonymous"
    assert kaa.credentials_requests == []


# ---- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_authentications_each_get_their_own_reply(
    nats_server: NatsServerProcess,
) -> None:
    table = [BasicCredentials(username=f"user-{n}", password=f"pw-{n}",
                              credentials_id=f"cred-{n}", tenant_id="t") for n in range(30)]
    outcomes: dict[int, AuthOutcome] = {}
    async with open_setup(nats_server.url, basic_credentials=table) as (auth, kaa):
        # Overlap all requests on the one reply subject; odd users give a wrong password.
        await trio.to_thread.run_sync(kaa.set_credentials_delay, 0.1)

        async def attempt(n: int) -> None:
            password = f"pw-{n}" if n % 2 == 0 else "wrong"
            outcomes[n] = await auth.authenticate(connect(f"user-{n}@t", password.encode()),
                                                  TCP_PEER)

        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(attempt, n)
    assert len(kaa.credentials_requests) == 30
    for n, outcome in outcomes.items():
        if n % 2 == 0:
            assert (outcome.code, outcome.credentials_id) == (ConnAckCode.ACCEPTED, f"cred-{n}")
        else:
            assert outcome == AuthOutcome(ConnAckCode.BAD_USERNAME_OR_PASSWORD, kind="basic")
    assert len(outcomes) == 30


async def test_replies_arriving_out_of_order_reach_their_own_requests(
    nats_server: NatsServerProcess,
) -> None:
    other = BasicCredentials(username="carol", password="carol-pw", credentials_id="cred-carol",
                             tenant_id="tenant-a")
    finished: list[str | None] = []
    async with open_setup(nats_server.url, basic_credentials=[ALICE, other]) as (auth, kaa):

        async def attempt(username: str, password: bytes) -> None:
            outcome = await auth.authenticate(connect(username, password), TCP_PEER)
            finished.append(outcome.credentials_id)

        async with trio.open_nursery() as nursery:
            await trio.to_thread.run_sync(kaa.set_credentials_delay, 1.0)
            nursery.start_soon(attempt, "alice@tenant-a", b"alice-secret")
            await trio.to_thread.run_sync(kaa.wait_credentials_requests, 1)
            await trio.to_thread.run_sync(kaa.set_credentials_delay, 0.0)
            nursery.start_soon(attempt, "carol@tenant-a", b"carol-pw")
    assert finished == ["cred-carol", "cred-alice"]
