"""TLS configuration errors name the file to fix; certificates parse into CAP request fields."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kpc_trio.net import ClientAuth, TlsConfigError, build_server_ssl_context, parse_certificate


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("kpc.example")
    paths = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca", "other_key")}
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    ca.issue_cert("other").private_key_pem.write_to_path(str(paths["other_key"]))
    return paths


@pytest.mark.parametrize(
    ("mode", "verify_mode"),
    [("none", ssl.CERT_NONE), ("request", ssl.CERT_OPTIONAL), ("require", ssl.CERT_REQUIRED)],
)
def test_valid_files_build_a_tls12_plus_context(
    files: dict[str, Path], mode: str, verify_mode: ssl.VerifyMode
) -> None:
    context = build_server_ssl_context(files["cert"], files["key"], files["ca"], mode)
    assert context.verify_mode == verify_mode
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_missing_certificate_file_is_named(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(TlsConfigError, match=f"certificate file {missing}"):
        build_server_ssl_context(missing, files["key"], files["ca"], ClientAuth.NONE)


def test_garbage_certificate_file_is_named(files: dict[str, Path]) -> None:
    files["cert"].write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match=f"certificate file {files['cert']}"):
        build_server_ssl_context(files["cert"], files["key"], files["ca"], ClientAuth.NONE)


def test_garbage_key_file_is_named(files: dict[str, Path]) -> None:
    files["key"].write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TlsConfigError, match=f"key file {files['key']}"):
        build_server_ssl_context(files["cert"], files["key"], files["ca"], ClientAuth.NONE)


def test_encrypted_key_file_is_named(files: dict[str, Path]) -> None:
    key = serialization.load_pem_private_key(files["key"].read_bytes(), password=None)
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsConfigError, match=f"key file {files['key']} is encrypted"):
        build_server_ssl_context(files["cert"], files["key"], files["ca"], ClientAuth.NONE)


def test_key_not_matching_certificate_names_both_files(files: dict[str, Path]) -> None:
    with pytest.raises(TlsConfigError) as error:
        build_server_ssl_context(files["cert"], files["other_key"], files["ca"], ClientAuth.NONE)
    assert str(files["other_key"]) in str(error.value)
    assert str(files["cert"]) in str(error.value)


def test_garbage_ca_file_is_named(files: dict[str, Path]) -> None:
    files["ca"].write_text("")
    with pytest.raises(TlsConfigError, match=f"CA file {files['ca']}"):
        build_server_ssl_context(files["cert"], files["key"], files["ca"], ClientAuth.REQUIRE)


def test_client_auth_without_ca_file_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(TlsConfigError, match="needs ca-file"):
        build_server_ssl_context(files["cert"], files["key"], None, ClientAuth.REQUEST)


def test_unknown_client_auth_mode_lists_the_choices(files: dict[str, Path]) -> None:
    with pytest.raises(TlsConfigError, match="none, request, require; got 'optional'"):
        build_server_ssl_context(files["cert"], files["key"], files["ca"], "optional")


def test_parse_certificate_gives_rfc4514_names_and_base10_serial() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kaa, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, "tenant-ca"),
        ]
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")])
    not_before = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    not_after = datetime.datetime(2034, 1, 1, tzinfo=datetime.UTC)
    der = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(0xABCDEF0123456789)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    certificate = parse_certificate(der)
    assert certificate.subject == "CN=device-1"
    assert certificate.issuer == "CN=tenant-ca,O=Kaa\\, Inc."  # RFC 4514: reversed, escaped
    assert certificate.serial_number == "12379813738877118345"
    assert (certificate.not_before, certificate.not_after) == (not_before, not_after)
    assert certificate.der == der
