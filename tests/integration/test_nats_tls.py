"""The NATS gateway over TLS to a real nats-server with a trustme certificate for 127.0.0.1.

The gateway verifies with `ssl.create_default_context()`, which reads the trusted CAs from
SSL_CERT_FILE: each test points it at the CA it means the gateway to trust.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from kpc_trio.nats.embedded import NatsServerProcess, NatsServerStartError
from kpc_trio.nats.gateway import NatsGateway, OutboundMessage, open_nats_gateway
from tests.integration.waiting import eventually, logged

HOST = "127.0.0.1"
DEADLINE = 10


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_nats(ca: trustme.CA,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess]:
    """A nats-server that requires TLS, with a certificate for 127.0.0.1 signed by `ca`."""
    directory = tmp_path_factory.mktemp("nats-tls")
    certificate = ca.issue_cert(HOST)
    cert, key = directory / "server.crt", directory / "server.key"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    with NatsServerProcess(tls_cert=cert, tls_key=key) as server:
        yield server


def trust(ca: trustme.CA, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = directory / "trusted-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


def nats_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [str(fields.get("error")) for fields in logged(caplog, "nats_error")]


async def round_trip(gateway: NatsGateway, subject: str) -> bytes:
    messages = await gateway.subscribe(subject)
    await eventually(lambda: gateway.connected)
    await gateway.publish_confirmed([OutboundMessage(subject, b"over tls")])
    with trio.fail_after(DEADLINE):
        return (await messages.receive()).payload


async def test_a_tls_url_publishes_and_subscribes(
    tls_nats: NatsServerProcess, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust(ca, tmp_path, monkeypatch)
    assert tls_nats.url.startswith("tls://127.0.0.1:")
    async with open_nats_gateway([tls_nats.url]) as gateway:
        assert await round_trip(gateway, "tls.url") == b"over tls"


async def test_a_nats_url_upgrades_when_the_server_requires_tls(
    tls_nats: NatsServerProcess, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust(ca, tmp_path, monkeypatch)
    async with open_nats_gateway([tls_nats.url.replace("tls://", "nats://")]) as gateway:
        assert await round_trip(gateway, "tls.upgrade") == b"over tls"


async def test_an_untrusted_certificate_keeps_the_gateway_disconnected(
    tls_nats: NatsServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trust(trustme.CA(), tmp_path, monkeypatch)  # a CA that did not sign the server's certificate
    changes: list[bool] = []
    async with open_nats_gateway([tls_nats.url], reconnect_wait=0.05,
                                 on_connection_change=changes.append) as gateway:
        await eventually(lambda: len(nats_errors(caplog)) >= 2)  # refused, and again on retry
        assert not gateway.connected
    assert changes == []


async def test_an_untrusted_certificate_is_named_in_the_log(
    tls_nats: NatsServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trust(trustme.CA(), tmp_path, monkeypatch)
    async with open_nats_gateway([tls_nats.url], reconnect_wait=0.05):
        await eventually(lambda: bool(nats_errors(caplog)))
    assert "CERTIFICATE_VERIFY_FAILED" in nats_errors(caplog)[0]


def test_a_certificate_without_its_key_is_refused_before_launch(tmp_path: Path) -> None:
    server = NatsServerProcess(tls_cert=tmp_path / "server.crt")
    with pytest.raises(NatsServerStartError, match="tls_key"):
        server.start()
    assert not server.running
