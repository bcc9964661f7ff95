"""End to end over MQTT/TLS and MQTT/WebSocket with paho: real KPC, real nats-server, real certs.

Every test goes device -> KPC -> nats-server -> simulated Kaa (echo dcx) -> KPC -> device.
"""

from __future__ import annotations

import contextlib
import datetime
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trio
import trustme
from cryptography import x509

from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator.credentials import CertificateCredentials
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from tests.clients.paho_device import PahoDevice
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, make_config, open_device
from tests.integration.waiting import eventually

HOST = "127.0.0.1"
EP1 = ENDPOINTS[0]
# Bounds a test that would otherwise hang if the stalled-handshake isolation regressed.
TEST_DEADLINE = 30


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_server_tls_files(ca: trustme.CA, directory: Path) -> dict[str, str]:
    """Server certificate for 127.0.0.1 and the CA bundle that signs client certificates."""
    server = ca.issue_cert(HOST)
    files = {"cert": directory / "server.crt", "key": directory / "server.key",
             "ca": directory / "ca.crt"}
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return {name: str(path) for name, path in files.items()}


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    return write_server_tls_files(ca, tmp_path)


@pytest.fixture(scope="module")
def device_certs(ca: trustme.CA) -> tuple[trustme.LeafCert, trustme.LeafCert]:
    """Two client certificates signed by `ca` and known to the credentials provider."""
    return (ca.issue_cert("device-1.example", common_name="device-1"),
            ca.issue_cert("device-2.example", common_name="device-2"))


def credentials_of(certificate: trustme.LeafCert, credentials_id: str) -> CertificateCredentials:
    issued = x509.load_pem_x509_certificate(certificate.cert_chain_pems[0].bytes())
    return CertificateCredentials(issuer=issued.issuer.rfc4514_string(),
                                  serial_number=str(issued.serial_number),
                                  credentials_id=credentials_id)


@pytest.fixture
async def kaa(nats_server, device_certs) -> AsyncIterator[SimulatedKaa]:
    known = [credentials_of(cert, f"credentials-{n}") for n, cert in enumerate(device_certs, 1)]
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS, echo_extensions=("dcx",),
                                  certificate_credentials=known) as kaa:
        yield kaa


@contextlib.asynccontextmanager
async def open_kpc_with(nats_url: str, tmp_path: Path,
                        **settings: str) -> AsyncIterator[KpcService]:
    """KPC with extra `kaa.kpc.transports.mqtt.*` settings given as environment overrides,
    e.g. `tls_enabled="true"` for KAA_KPC_TRANSPORTS_MQTT_TLS_ENABLED."""
    env = {f"KAA_KPC_TRANSPORTS_MQTT_{key.upper()}": value for key, value in settings.items()}
    async with open_kpc(make_config(tmp_path, nats_url, env=env)) as service:
        yield service


def tls_settings(files: dict[str, str], client_auth: str, handshake_timeout: str = "10s"
                 ) -> dict[str, str]:
    return {"tls_enabled": "true", "tls_host": HOST, "tls_port": "0",
            "tls_cert_file": files["cert"], "tls_key_file": files["key"],
            "tls_ca_file": files["ca"], "tls_client_auth": client_auth,
            "tls_handshake_timeout": handshake_timeout}


def client_tls(ca: trustme.CA, certificate: trustme.LeafCert | None = None,
               version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
    """What a device uses: trusts the KPC's CA, optionally presents a client certificate."""
    context = ssl.create_default_context()
    context.maximum_version = version
    ca.configure_trust(context)
    if certificate is not None:
        certificate.configure_cert(context)
    return context


async def assert_dcx_round_trip(device: PahoDevice, kaa: SimulatedKaa, request_id: int,
                                received_before: int = 0) -> None:
    topic = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/{request_id}"
    payload = f'[{{"request":{request_id}}}]'.encode()
    await call(device.publish, topic, payload, qos=1)
    *_, client_data = await kaa.await_received("dcx", received_before + 1)
    assert (client_data.endpoint_id, client_data.request_id, client_data.payload) == (
        EP1.endpoint_id, request_id, payload)
    reply = await call(device.expect)
    assert (reply.topic, reply.payload, reply.qos) == (topic + "/status", payload, 1)


def handshake_failures(kpc) -> float:
    """Failed TLS handshakes of every reason, as the metrics report them."""
    samples = kpc.metrics.tls_handshake_failures.collect()[0].samples
    return sum(sample.value for sample in samples if sample.name.endswith("_total"))


def accepted_connects(kpc: KpcService, transport: str) -> float:
    value = kpc.metrics.registry.get_sample_value("kpc_connects_total", {"transport": transport})
    return value or 0.0


def assert_connect_refused(port: int, tls: ssl.SSLContext) -> None:
    """A paho device gets no CONNACK: connect() fails, or the connection drops before CONNACK.

    With TLS 1.2 connect() fails. With TLS 1.3 the client finishes its side of the handshake
    before the server checks the client certificate, so the rejection shows only at the client's
    first read after connect() returned.
    """
    client = PahoDevice(port, tls=tls).client
    accepted: list[object] = []
    client.on_connect = lambda *args: accepted.append(args)
    try:
        client.connect(HOST, port)
    except (OSError, ssl.SSLError):
        return
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            result = client.loop(timeout=0.2)
            assert not accepted, "the server accepted the connection"
            if result != mqtt.MQTT_ERR_SUCCESS:
                return
        raise AssertionError("connection neither refused nor accepted within 10 s")
    finally:
        client.disconnect()


# --- MQTT/TLS ----------------------------------------------------------------------------------


TLS_VERSIONS = pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])


@TLS_VERSIONS
async def test_tls_round_trip_without_client_certificate(nats_server, tmp_path, kaa, ca,
                                                          tls_files, version):
    async with open_kpc_with(nats_server.url, tmp_path,
                             **tls_settings(tls_files, "request")) as kpc:
        async with open_device(kpc.ports["mqtt_tls"],
                               tls=client_tls(ca, version=version)) as device:
            [session] = kpc.sessions
            assert (session.peer.transport, session.peer.certificate) == ("tls", None)
            await assert_dcx_round_trip(device, kaa, request_id=42)


async def test_an_idle_tls_session_parks_and_answers_when_its_device_speaks(
        nats_server, tmp_path, kaa, ca, tls_files):
    env = {f"KAA_KPC_TRANSPORTS_MQTT_{key.upper()}": value
           for key, value in tls_settings(tls_files, "request").items()}
    env["KAA_KPC_LIMITS_PARK_IDLE_AFTER"] = "1s"
    async with open_kpc(make_config(tmp_path, nats_server.url, env=env)) as kpc:
        async with open_device(kpc.ports["mqtt_tls"], tls=client_tls(ca)) as device:
            [session] = kpc.sessions
            for request_id in (1, 2):
                await eventually(lambda: session.parked)  # idle for 1 s
                assert kpc.metrics.registry.get_sample_value("kpc_parked_connections") == 1
                await assert_dcx_round_trip(device, kaa, request_id=request_id,
                                            received_before=request_id - 1)
            assert kpc.sessions == {session}

async def test_tls_without_ca_file_serves_server_only_tls(nats_server, tmp_path, kaa, ca,
                                                          tls_files):
    settings = tls_settings(tls_files, "request") | {"tls_ca_file": ""}
    async with open_kpc_with(nats_server.url, tmp_path, **settings) as kpc:
        async with open_device(kpc.ports["mqtt_tls"], tls=client_tls(ca)) as device:
            await assert_dcx_round_trip(device, kaa, request_id=5)


async def test_mutual_tls_accepts_a_valid_client_certificate(nats_server, tmp_path, kaa, ca,
                                                             tls_files, device_certs):
    device_cert = device_certs[0]
    async with open_kpc_with(nats_server.url, tmp_path,
                             **tls_settings(tls_files, "require")) as kpc:
        async with open_device(kpc.ports["mqtt_tls"],
                               tls=client_tls(ca, device_cert)) as device:
            [session] = kpc.sessions
            certificate = session.peer.certificate
            assert certificate is not None
            issued = x509.load_pem_x509_certificate(device_cert.cert_chain_pems[0].bytes())
            assert (certificate.subject, certificate.issuer, certificate.serial_number) == (
                issued.subject.rfc4514_string(), issued.issuer.rfc4514_string(),
                str(issued.serial_number))
            # The transport handed the certificate on: the credentials provider recognised it.
            assert (session.auth.kind, session.auth.credentials_id) == (
                "certificate", "credentials-1")
            await assert_dcx_round_trip(device, kaa, request_id=7)


@TLS_VERSIONS
@pytest.mark.parametrize("which", ["untrusted", "expired", "missing"])
async def test_mutual_tls_rejects_a_bad_client_certificate(nats_server, tmp_path, kaa, ca,
                                                           tls_files, device_certs, which,
                                                           version):
    now = datetime.datetime.now(datetime.UTC)
    certificate = {
        "untrusted": lambda: trustme.CA().issue_cert("device-1.example"),
        "expired": lambda: ca.issue_cert("device-1.example",
                                         not_before=now - datetime.timedelta(days=30),
                                         not_after=now - datetime.timedelta(days=1)),
        "missing": lambda: None,
    }[which]()
    async with open_kpc_with(nats_server.url, tmp_path,
                             **tls_settings(tls_files, "require")) as kpc:
        port = kpc.ports["mqtt_tls"]
        await call(assert_connect_refused, port, client_tls(ca, certificate, version))
        assert accepted_connects(kpc, "tls") == 0
        assert handshake_failures(kpc) >= 1
        # The listener is unharmed: a good device still gets through.
        async with open_device(port, tls=client_tls(ca, device_certs[1])) as device:
            await assert_dcx_round_trip(device, kaa, request_id=9)
        assert accepted_connects(kpc, "tls") == 1


async def test_stalled_tls_handshake_does_not_block_another_client(nats_server, tmp_path, kaa,
                                                                   ca, tls_files):
    settings = tls_settings(tls_files, "request", handshake_timeout="120s")
    async with open_kpc_with(nats_server.url, tmp_path, **settings) as kpc:
        port = kpc.ports["mqtt_tls"]
        with trio.fail_after(TEST_DEADLINE):
            # Opens TCP and never sends a ClientHello.
            async with await trio.open_tcp_stream(HOST, port):
                async with open_device(port, tls=client_tls(ca)) as device:
                    await assert_dcx_round_trip(device, kaa, request_id=11)


# --- MQTT over WebSocket -----------------------------------------------------------------------


async def upgrade_status(port: int, path: str) -> bytes:
    """The start of the status line KPC answers a WebSocket upgrade of `path` with."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    async with await trio.open_tcp_stream(HOST, port) as stream:
        await stream.send_all(request.encode())
        response = b""
        with trio.fail_after(10):
            while len(response) < 13:
                chunk = await stream.receive_some()
                assert chunk, f"connection closed after {response!r}"
                response += chunk
    return response[:13]


def websocket_settings() -> dict[str, str]:
    return {"websocket_enabled": "true", "websocket_host": HOST, "websocket_port": "0"}


async def test_websocket_round_trip(nats_server, tmp_path, kaa):
    async with open_kpc_with(nats_server.url, tmp_path, **websocket_settings()) as kpc:
        async with open_device(kpc.ports["mqtt_websocket"], transport="websockets") as device:
            [session] = kpc.sessions
            assert session.peer.transport == "websocket"
            await assert_dcx_round_trip(device, kaa, request_id=21)


async def test_websocket_wrong_path_is_refused(nats_server, tmp_path, kaa):
    async with open_kpc_with(nats_server.url, tmp_path, **websocket_settings()) as kpc:
        port = kpc.ports["mqtt_websocket"]
        lost = PahoDevice(port, transport="websockets", ws_path="/mqtt")
        with pytest.raises(mqtt.WebsocketConnectionError):  # paho does not say why
            await call(lost.connect)
        assert await upgrade_status(port, "/mqtt") == b"HTTP/1.1 404 "
        assert await upgrade_status(port, "/ws") == b"HTTP/1.1 101 "
        async with open_device(port, transport="websockets") as device:
            await assert_dcx_round_trip(device, kaa, request_id=22)
