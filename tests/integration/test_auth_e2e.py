"""Client authentication and revocation end to end: real paho devices -> KPC -> real nats-server
-> the simulated CCM/CM (22/CAP and 16/ECAP, real Avro) and the revocation events they broadcast.
"""

from __future__ import annotations

import contextlib
import json
import queue
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trustme

from kpc_trio.kaa import records
from kpc_trio.mqtt.packets import ConnAckCode
from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator import BasicCredentials
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from kpc_trio.simulator.token_provider import EndpointRecord
from tests.clients.paho_device import PahoDevice
from tests.integration.kpc_harness import (
    APP,
    APP_VERSION,
    ENDPOINTS,
    call,
    make_config,
    open_device,
    push_data,
)
from tests.integration.test_transports_e2e import (
    HOST,
    client_tls,
    credentials_of,
    tls_settings,
    write_server_tls_files,
)

# The raw 3.1.1 return code is what paho hands a v1-callback application; v2 maps it to 5.0 codes.
pytestmark = pytest.mark.filterwarnings("ignore:Callback API version 1:DeprecationWarning")

EP1, EP2 = ENDPOINTS[0], ENDPOINTS[1]
ALICE = BasicCredentials(username="alice", password="alice-pw", credentials_id="cred-alice",
                         tenant_id="tenant-a")
CAROL = BasicCredentials(username="carol", password="carol-pw", credentials_id="cred-carol",
                         tenant_id="tenant-b")
SUSPENDED = BasicCredentials(username="bob", password="bob-pw", credentials_id="cred-bob",
                             tenant_id="tenant-a", status=403)
REQUEST_TIMEOUT = 1.0  # the provider-timeout tests wait this long once
PROTOCOLS = pytest.mark.parametrize("protocol", ["cap", "ecap"])


def username_for(protocol: str, who: BasicCredentials) -> str:
    """22/CAP clients carry their tenant after the last `@`; 16/ECAP has no tenants."""
    return f"{who.username}@{who.tenant_id}" if protocol == "cap" else who.username


def auth_env(protocol: str, *, anonymous_allowed: bool = True) -> dict[str, str]:
    return {"KAA_KPC_AUTH_PROTOCOL": protocol,
            "KAA_KPC_AUTH_REQUEST_TIMEOUT": f"{REQUEST_TIMEOUT}s",
            "KAA_KPC_AUTH_ANONYMOUS_ALLOWED": str(anonymous_allowed).lower()}


@contextlib.asynccontextmanager
async def open_kpc_env(nats_url: str, tmp_path: Path, env: dict[str, str]
                       ) -> AsyncIterator[KpcService]:
    async with open_kpc(make_config(tmp_path, nats_url, env=env)) as service:
        yield service


def connack_return_code(port: int, username: str | None = None, password: str | None = None
                        ) -> int:
    """Connect with MQTT 3.1.1 and return the CONNACK return code paho reports (0..5)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, protocol=mqtt.MQTTv311)
    codes: queue.Queue[int] = queue.Queue()
    client.on_connect = lambda _client, _userdata, _flags, rc: codes.put(int(rc))
    if username is not None:
        client.username_pw_set(username, password)
    client.connect(HOST, port)
    client.loop_start()
    try:
        return codes.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


async def assert_round_trip(device: PahoDevice, token: str, request_id: int) -> None:
    """A dcx request through this connection is answered on it (the echo extension)."""
    topic = f"kp1/{APP_VERSION}/dcx/{token}/json/{request_id}"
    payload = f'[{{"request":{request_id}}}]'.encode()
    await call(device.publish, topic, payload, qos=1)
    reply = await call(device.expect)
    assert (reply.topic, reply.payload) == (topic + "/status", payload)


# --- CONNECT outcomes, 22/CAP and 16/ECAP --------------------------------------------------------


@pytest.fixture
async def kaa(nats_server) -> AsyncIterator[SimulatedKaa]:
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS, echo_extensions=("dcx",),
                                  basic_credentials=[ALICE, CAROL, SUSPENDED]) as kaa:
        yield kaa


@PROTOCOLS
async def test_valid_credentials_are_accepted_and_the_session_knows_its_client(
        nats_server, tmp_path, kaa, protocol):
    async with open_kpc_env(nats_server.url, tmp_path, auth_env(protocol)) as kpc:
        port = kpc.ports["mqtt_tcp"]
        async with open_device(port, username=username_for(protocol, ALICE),
                               password=ALICE.password) as device:
            [session] = kpc.sessions
            assert (session.auth.kind, session.auth.credentials_id) == ("basic", "cred-alice")
            # 16/ECAP has no tenants; 22/CAP's tenant is the username's suffix.
            assert session.auth.tenant_id == ("tenant-a" if protocol == "cap" else None)
            await assert_round_trip(device, EP1.token, request_id=1)
    [request] = kaa.credentials_requests
    if protocol == "cap":
        assert isinstance(request, records.ClientBasicAuthenticationRequest)
        assert (request.tenant_id, request.username, request.password) == (
            "tenant-a", "alice", "alice-pw")
    else:
        assert isinstance(request, records.ClientUsernamePasswordValidationRequest)
        assert (request.username, request.password) == ("alice", "alice-pw")


@PROTOCOLS
@pytest.mark.parametrize(("who", "password", "code"), [
    (ALICE, "wrong-pw", 4),       # provider 401: bad user name or password
    (SUSPENDED, "bob-pw", 5),     # provider 403: not authorized
], ids=["bad-password", "not-authorized"])
async def test_rejected_credentials_get_the_connack_code_of_the_providers_status(
        nats_server, tmp_path, kaa, protocol, who, password, code):
    async with open_kpc_env(nats_server.url, tmp_path, auth_env(protocol)) as kpc:
        port = kpc.ports["mqtt_tcp"]
        assert await call(connack_return_code, port, username_for(protocol, who),
                          password) == code
        assert len(kaa.credentials_requests) == 1  # the provider decided, not KPC
        refusals = kpc.metrics.registry.get_sample_value(
            "kpc_connect_refusals_total",
            {"transport": "tcp", "reason": ConnAckCode(code).name.lower()})
        assert refusals == 1


@PROTOCOLS
async def test_provider_timeout_gets_server_unavailable_and_a_retry_gets_in(
        nats_server, tmp_path, kaa, protocol):
    async with open_kpc_env(nats_server.url, tmp_path, auth_env(protocol)) as kpc:
        port = kpc.ports["mqtt_tcp"]
        username = username_for(protocol, ALICE)
        await call(kaa.set_credentials_delay, REQUEST_TIMEOUT * 3)
        assert await call(connack_return_code, port, username, ALICE.password) == 3
        await call(kaa.set_credentials_delay, 0)
        assert await call(connack_return_code, port, username, ALICE.password) == 0


async def test_anonymous_clients_refused_when_not_allowed(nats_server, tmp_path, kaa):
    async with open_kpc_env(nats_server.url, tmp_path,
                            auth_env("cap", anonymous_allowed=False)) as kpc:
        port = kpc.ports["mqtt_tcp"]
        assert await call(connack_return_code, port) == 5
        assert kaa.credentials_requests == []  # refused by policy, no provider asked
        assert await call(connack_return_code, port, username_for("cap", ALICE),
                          ALICE.password) == 0


# --- credentials revoked: the connections they authenticated are closed ----------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def device_certs(ca: trustme.CA) -> tuple[trustme.LeafCert, trustme.LeafCert]:
    return (ca.issue_cert("device-1.example", common_name="device-1"),
            ca.issue_cert("device-2.example", common_name="device-2"))


@pytest.fixture
def tls_env(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """KPC serving MQTT/TLS that requires a client certificate signed by `ca`."""
    settings = tls_settings(write_server_tls_files(ca, tmp_path), "require")
    return {f"KAA_KPC_TRANSPORTS_MQTT_{key.upper()}": value for key, value in settings.items()}


@PROTOCOLS
async def test_revoked_certificate_drops_its_connection_only(
        nats_server, tmp_path, ca, device_certs, tls_env, protocol):
    known = [credentials_of(cert, f"credentials-{n}") for n, cert in enumerate(device_certs, 1)]
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS, echo_extensions=("dcx",),
                                  certificate_credentials=known) as kaa, \
            open_kpc_env(nats_server.url, tmp_path, {**tls_env, **auth_env(protocol)}) as kpc:
        port = kpc.ports["mqtt_tls"]
        async with open_device(port, tls=client_tls(ca, device_certs[0])) as revoked, \
                open_device(port, tls=client_tls(ca, device_certs[1])) as kept:
            assert sorted((s.auth.kind, s.auth.credentials_id) for s in kpc.sessions) == [
                ("certificate", "credentials-1"), ("certificate", "credentials-2")]
            await assert_round_trip(revoked, EP1.token, request_id=1)
            if protocol == "cap":
                await call(kaa.revoke_certificate_credentials, "kaa", "credentials-1")
            else:
                await call(kaa.revoke_client_credential, "credentials-1")
            assert await call(revoked.wait_disconnected)
            [event] = await kaa.await_events("connectivity.disconnected", 1)
            assert event.endpoints == {EP1.endpoint_id: APP_VERSION}
            await assert_round_trip(kept, EP2.token, request_id=2)
            assert not kept.wait_disconnected(0)


async def test_revoked_basic_credentials_drop_their_connection_only(nats_server, tmp_path, kaa):
    async with open_kpc_env(nats_server.url, tmp_path, auth_env("cap")) as kpc:
        port = kpc.ports["mqtt_tcp"]
        async with open_device(port, username=username_for("cap", ALICE),
                               password=ALICE.password) as alice, \
                open_device(port, username=username_for("cap", CAROL),
                            password=CAROL.password) as carol:
            # Carol's credentials id revoked in another tenant: not hers, she stays.
            await call(kaa.revoke_basic_credentials, "tenant-a", "cred-carol")
            await call(kaa.revoke_basic_credentials, "tenant-a", "cred-alice")
            assert await call(alice.wait_disconnected)
            # Both events came in order on one subject: the first was handled before Alice left.
            await assert_round_trip(carol, EP2.token, request_id=1)
            assert not carol.wait_disconnected(0)


# --- endpoint token revoked: that endpoint's session ends, the connection stays ---------------


async def test_revoked_token_ends_its_endpoint_and_the_gateway_keeps_the_others(
        nats_server, tmp_path, kaa):
    async with open_kpc_env(nats_server.url, tmp_path, auth_env("cap")) as kpc:
        async with open_device(kpc.ports["mqtt_tcp"]) as gateway:
            await assert_round_trip(gateway, EP1.token, request_id=1)
            await assert_round_trip(gateway, EP2.token, request_id=2)
            await kaa.await_events("connectivity.connected", 2)

            await call(kaa.revoke_tokens, APP, EP1.endpoint_id, [EP1.token_id])
            [event] = await kaa.await_events("connectivity.disconnected", 1)
            assert event.endpoints == {EP1.endpoint_id: APP_VERSION}
            assert event.originator_replica_id == kpc.replica_id

            # The cache entry went with the session: the provider is asked again and says no.
            topic = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/3"
            await call(gateway.publish, topic, b"{}", qos=1)
            error = await call(gateway.expect)
            assert error.topic == topic + "/error"
            assert json.loads(error.payload)["statusCode"] == 401
            await assert_round_trip(gateway, EP2.token, request_id=4)
            assert [cd.request_id for cd in kaa.received("dcx")] == [1, 2, 4]

            # Pushes for the ended endpoint go nowhere; the next one, for EP2, arrives first.
            await call(kaa.push, "cex", push_data(EP1.endpoint_id, "/command/x", b"for-1"))
            await call(kaa.push, "cex", push_data(EP2.endpoint_id, "/command/x", b"for-2"))
            pushed = await call(gateway.expect)
            assert (pushed.topic, pushed.payload) == (
                f"kp1/{APP_VERSION}/cex/{EP2.token}/command/x/status", b"for-2")


async def test_revoking_another_token_of_the_endpoint_keeps_its_session(nats_server, tmp_path):
    spare = EndpointRecord(app_name=APP, token="token-1-spare", endpoint_id=EP1.endpoint_id,
                           token_id="token-id-1-spare")
    async with open_simulated_kaa(nats_server.url, endpoints=[*ENDPOINTS, spare],
                                  echo_extensions=("dcx",)) as kaa, \
            open_kpc_env(nats_server.url, tmp_path, auth_env("cap")) as kpc:
        async with open_device(kpc.ports["mqtt_tcp"]) as gateway:
            await assert_round_trip(gateway, EP1.token, request_id=1)  # EP1 via its first token
            await assert_round_trip(gateway, EP2.token, request_id=2)
            await call(kaa.revoke_tokens, APP, EP1.endpoint_id, [spare.token_id])
            # Same subject, so handled after the first: EP2's event marks that both were.
            await call(kaa.revoke_tokens, APP, EP2.endpoint_id, [EP2.token_id])
            first, *_ = await kaa.await_events("connectivity.disconnected", 1)
            assert first.endpoints == {EP2.endpoint_id: APP_VERSION}
            await assert_round_trip(gateway, EP1.token, request_id=3)
