"""MQTT/TLS transport: server-only TLS, mutual TLS modes, independent handshakes."""

from __future__ import annotations

import datetime
import gc
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kpc_trio.net import (
    ClientAuth,
    HandshakeFailureReason,
    Peer,
    build_server_ssl_context,
    serve_tls,
)
from kpc_trio.net.socket_stream import LeanSocketStream
from tests.integration.waiting import within

HOST = "127.0.0.1"

ServerContext = Callable[[ClientAuth], ssl.SSLContext]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA, tmp_path: Path) -> ServerContext:
    server = ca.issue_cert(HOST)
    cert_file, key_file, ca_file = tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.crt"
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    server.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    return lambda mode: build_server_ssl_context(cert_file, key_file, ca_file, mode)


def client_context(ca: trustme.CA, client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


def expired_client_cert(ca: trustme.CA, tmp_path: Path) -> ssl.SSLContext:
    """A client context presenting a certificate signed by `ca` that expired yesterday."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired-device")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_file, key_file = tmp_path / "expired.crt", tmp_path / "expired.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = client_context(ca)
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


class TlsServer:
    """A TLS listener whose handler echoes one chunk; records peers and handshake failures."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.failures: list[HandshakeFailureReason] = []
        self.failed = trio.Event()
        self.port = 0

    async def handler(self, stream: trio.abc.Stream, peer: Peer) -> None:
        self.peers.append(peer)
        await stream.send_all(await stream.receive_some())

    def on_handshake_failure(self, reason: HandshakeFailureReason) -> None:
        self.failures.append(reason)
        self.failed.set()

    async def start(
        self, nursery: trio.Nursery, context: ssl.SSLContext, handshake_timeout: float = 30.0
    ) -> TlsServer:
        _, self.port = await nursery.start(
            lambda task_status: serve_tls(
                self.handler,
                host=HOST,
                port=0,
                ssl_context=context,
                handshake_timeout=handshake_timeout,
                handler_nursery=nursery,
                on_handshake_failure=self.on_handshake_failure,
                task_status=task_status,
            )
        )
        return self

    async def echo(self, context: ssl.SSLContext) -> bool:
        """Handshake and one echo round trip; False if the server dropped us."""
        stream = await trio.open_ssl_over_tcp_stream(
            HOST, self.port, ssl_context=context, https_compatible=True
        )
        async with stream:
            try:
                await stream.send_all(b"\xc0\x00")
                return await stream.receive_some() == b"\xc0\x00"
            except trio.BrokenResourceError:
                return False


async def test_server_only_tls(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    server = await TlsServer().start(nursery, server_context(ClientAuth.NONE))
    assert await server.echo(client_context(ca))
    assert server.peers[0].transport == "tls"
    assert server.peers[0].address.startswith(f"{HOST}:")
    assert server.peers[0].certificate is None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_1_1_client_is_refused(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    server = await TlsServer().start(nursery, server_context(ClientAuth.NONE))
    context = client_context(ca)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    assert not await server.echo(context)
    await server.failed.wait()
    assert server.failures == [HandshakeFailureReason.PROTOCOL_ERROR]
    assert server.peers == []


@pytest.mark.parametrize("mode", [ClientAuth.REQUEST, ClientAuth.REQUIRE])
async def test_trusted_client_certificate_reaches_handler(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA, mode: ClientAuth
) -> None:
    device = ca.issue_cert("device-42@tenant")
    server = await TlsServer().start(nursery, server_context(mode))
    assert await server.echo(client_context(ca, device))
    certificate = server.peers[0].certificate
    assert certificate is not None
    expected = x509.load_pem_x509_certificate(device.cert_chain_pems[0].bytes())
    assert certificate.der == expected.public_bytes(serialization.Encoding.DER)
    assert certificate.serial_number == str(expected.serial_number)
    assert certificate.issuer == expected.issuer.rfc4514_string()
    assert server.failures == []


async def test_untrusted_client_certificate_is_rejected(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    stranger = trustme.CA().issue_cert("intruder")
    server = await TlsServer().start(nursery, server_context(ClientAuth.REQUIRE))
    assert not await server.echo(client_context(ca, stranger))
    await server.failed.wait()
    assert server.failures == [HandshakeFailureReason.CERTIFICATE_REJECTED]
    assert server.peers == []


async def test_untrusted_client_certificate_is_rejected_in_request_mode_too(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    stranger = trustme.CA().issue_cert("intruder")
    server = await TlsServer().start(nursery, server_context(ClientAuth.REQUEST))
    assert not await server.echo(client_context(ca, stranger))
    await server.failed.wait()
    assert server.failures == [HandshakeFailureReason.CERTIFICATE_REJECTED]


async def test_expired_client_certificate_is_rejected(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA, tmp_path: Path
) -> None:
    server = await TlsServer().start(nursery, server_context(ClientAuth.REQUIRE))
    assert not await server.echo(expired_client_cert(ca, tmp_path))
    await server.failed.wait()
    assert server.failures == [HandshakeFailureReason.CERTIFICATE_REJECTED]
    assert server.peers == []


async def test_missing_client_certificate_rejected_when_required(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    server = await TlsServer().start(nursery, server_context(ClientAuth.REQUIRE))
    assert not await server.echo(client_context(ca))
    await server.failed.wait()
    assert server.failures == [HandshakeFailureReason.CERTIFICATE_REJECTED]
    assert server.peers == []


async def test_missing_client_certificate_accepted_when_requested(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    server = await TlsServer().start(nursery, server_context(ClientAuth.REQUEST))
    assert await server.echo(client_context(ca))
    assert server.peers[0].certificate is None


async def test_stalled_handshake_does_not_block_other_clients(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    # The stalled client never hits its (long) deadline during this test, so the second
    # handshake can only complete if it does not wait behind the first one.
    server = await TlsServer().start(nursery, server_context(ClientAuth.NONE), 3600)
    async with await trio.open_tcp_stream(HOST, server.port):  # opens TCP, sends nothing
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(60):  # a guard: serialized handshakes would hang here for an hour
            assert await server.echo(client_context(ca))
        assert server.failures == []
    assert len(server.peers) == 1


async def test_stalled_handshake_is_dropped_at_its_deadline(
    nursery: trio.Nursery, server_context: ServerContext
) -> None:
    server = await TlsServer().start(nursery, server_context(ClientAuth.NONE), 0.2)
    async with await trio.open_tcp_stream(HOST, server.port) as stalled:
        with within(10, "the server hanging up on a stalled handshake"):
            assert await stalled.receive_some() == b""  # the server hung up on us
    assert server.failures == [HandshakeFailureReason.TIMEOUT]
    assert server.peers == []


def server_tls_streams() -> list[trio.SSLStream[LeanSocketStream]]:
    return [obj for obj in gc.get_objects() if isinstance(obj, trio.SSLStream)
            and isinstance(obj.transport_stream, LeanSocketStream)]


async def test_finished_tls_streams_are_freed_without_waiting_for_the_garbage_collector(
    nursery: trio.Nursery, server_context: ServerContext, ca: trustme.CA
) -> None:
    """A few hundred stalled handshakes used to hold megabytes until a full collection."""
    server = await TlsServer().start(nursery, server_context(ClientAuth.NONE), 0.2)
    gc.collect()
    gc.disable()  # only reference counting frees memory from here on
    try:
        async with await trio.open_tcp_stream(HOST, server.port) as stalled:
            with within(10, "the server hanging up on a stalled handshake"):
                assert await stalled.receive_some() == b""  # dropped at the handshake deadline
        assert await server.echo(client_context(ca))  # and a connection served to the end
        await trio.testing.wait_all_tasks_blocked()
        assert server_tls_streams() == []
    finally:
        gc.enable()
