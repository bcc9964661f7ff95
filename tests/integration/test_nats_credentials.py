"""KPC's NATS client against nats-servers that demand nkeys, JWT `.creds` (operator mode), a
client certificate, or TLS first; keys and certificates are made by the test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trustme

from kpc_trio.nats.connection import ConnectOptions, TlsOptions
from kpc_trio.nats.credentials import load_creds, load_nkey_seed
from kpc_trio.nats.embedded import HOST
from kpc_trio.nats.gateway import OutboundMessage, open_nats_gateway
from tests.integration.nats_auth import USER, Nkey, OperatorMode
from tests.integration.waiting import eventually, logged

DEADLINE = 10


async def assert_round_trip(url: str, options: ConnectOptions) -> None:
    """Connected, subscribed, published and received over `url` with `options`."""
    with trio.fail_after(DEADLINE):
        async with open_nats_gateway([url], options=options) as gateway:
            received = await gateway.subscribe("credentials.check")
            await gateway.sync()
            await gateway.publish_confirmed([OutboundMessage("credentials.check", b"hello")])
            assert (await received.receive()).payload == b"hello"


async def assert_refused(url: str, options: ConnectOptions, caplog: pytest.LogCaptureFixture,
                         kind: str = "") -> None:
    with trio.CancelScope() as scope:  # cancelled, not drained: there is no connection
        async with open_nats_gateway([url], options=options) as gateway:
            await eventually(lambda: bool(logged(caplog, "nats_error")))
            assert not gateway.connected
            if kind:
                assert logged(caplog, "nats_error")[0]["kind"] == kind
            scope.cancel()


async def test_an_nkey_seed_authenticates_and_another_is_refused(
    nats_server_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user = Nkey(USER)
    server = nats_server_factory(
        config=f"authorization {{ users = [ {{ nkey: {user.public} }} ] }}\n")
    seed_file = tmp_path / "kpc.nk"
    seed_file.write_text(user.seed + "\n")
    url = f"nats://{HOST}:{server.port}"
    await assert_round_trip(url, ConnectOptions(credentials=load_nkey_seed(str(seed_file))))

    stranger = tmp_path / "stranger.nk"
    stranger.write_text(Nkey(USER).seed)
    await assert_refused(url, ConnectOptions(credentials=load_nkey_seed(str(stranger))), caplog,
                         "authorization_violation")


async def test_a_creds_file_authenticates_in_operator_mode(
    nats_server_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    operator_mode = OperatorMode()
    server = nats_server_factory(config=operator_mode.server_config())
    creds = tmp_path / "kpc.creds"
    creds.write_text(operator_mode.creds())
    url = f"nats://{HOST}:{server.port}"
    await assert_round_trip(url, ConnectOptions(credentials=load_creds(str(creds))))

    # A user JWT signed by an account the server does not know.
    foreign = tmp_path / "foreign.creds"
    foreign.write_text(OperatorMode().creds())
    await assert_refused(url, ConnectOptions(credentials=load_creds(str(foreign))), caplog,
                         "authorization_violation")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pem_files(ca: trustme.CA, directory: Path, name: str, identity: str) -> tuple[str, str]:
    issued = ca.issue_cert(identity)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def tls_server_config(ca: trustme.CA, directory: Path, extra: str) -> str:
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = pem_files(ca, directory, "server", HOST)
    return (f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca_file}", '
            f"{extra} }}\n")


async def test_a_client_certificate_is_presented_when_the_server_verifies_clients(
    nats_server_factory, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = nats_server_factory(config=tls_server_config(ca, tmp_path, "verify: true"))
    ca_file = str(tmp_path / "ca.pem")
    cert, key = pem_files(ca, tmp_path, "kpc", "kpc-client")
    url = f"tls://{HOST}:{server.port}"
    await assert_round_trip(url, ConnectOptions(tls=TlsOptions(ca_file, cert, key)))
    # Without one the server ends the handshake.
    await assert_refused(url, ConnectOptions(tls=TlsOptions(ca_file)), caplog)


async def test_tls_first_for_a_server_with_handshake_first(
    nats_server_factory, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory(config=tls_server_config(ca, tmp_path, "handshake_first: true"))
    ca_file = str(tmp_path / "ca.pem")
    await assert_round_trip(f"tls://{HOST}:{server.port}",
                            ConnectOptions(tls=TlsOptions(ca_file, handshake_first=True)))
    # A client waiting for INFO first gets nothing from such a server.
    await assert_refused(f"tls://{HOST}:{server.port}", ConnectOptions(tls=TlsOptions(ca_file)),
                         caplog)
