"""Server `ssl.SSLContext` for MQTT/TLS, with configuration errors that name the bad file."""

from __future__ import annotations

import enum
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


class ClientAuth(enum.Enum):
    """`kaa.kpc.transports.mqtt.tls.client-auth`."""

    NONE = "none"  # no client certificate asked for
    REQUEST = "request"  # asked for; verified if presented (tenants enforce mTLS later)
    REQUIRE = "require"  # handshake fails without a trusted certificate


_VERIFY_MODE = {
    ClientAuth.NONE: ssl.CERT_NONE,
    ClientAuth.REQUEST: ssl.CERT_OPTIONAL,
    ClientAuth.REQUIRE: ssl.CERT_REQUIRED,
}


class TlsConfigError(Exception):
    """The TLS settings cannot be used; the message names the file or key to fix."""


def build_server_ssl_context(
    cert_file: str | Path,
    key_file: str | Path,
    ca_file: str | Path | None,
    client_auth: ClientAuth | str,
) -> ssl.SSLContext:
    """TLS 1.2/1.3 server context; `ca_file` (PEM bundle) is required unless client_auth is none.

    An empty `ca_file` means none, as in the configuration (where "" is the unset default).
    """
    try:
        auth = ClientAuth(client_auth)
    except ValueError:
        choices = ", ".join(mode.value for mode in ClientAuth)
        raise TlsConfigError(
            f"client-auth must be one of {choices}; got {client_auth!r}"
        ) from None
    certificates = _load_certificates(cert_file, "certificate file")
    key = _load_private_key(key_file)
    if certificates[0].public_key() != key.public_key():
        raise TlsConfigError(
            f"TLS key file {key_file} does not match the certificate in {cert_file}"
        )

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    if ca_file:
        _load_certificates(ca_file, "CA file")
        context.load_verify_locations(cafile=str(ca_file))
    elif auth is not ClientAuth.NONE:
        raise TlsConfigError(
            f"client-auth {auth.value} needs ca-file "
            "(the PEM bundle of the CAs that sign client certificates)"
        )
    context.verify_mode = _VERIFY_MODE[auth]
    return context


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from exc


def _load_certificates(path: str | Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsConfigError(
            f"TLS {what} {path} holds no valid PEM certificate: {exc}"
        ) from exc
    return certificates


def _load_private_key(path: str | Path) -> PrivateKeyTypes:
    data = _read(path, "key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's signal for an encrypted key
        raise TlsConfigError(
            f"TLS key file {path} is encrypted; provide an unencrypted PEM key"
        ) from exc
    except ValueError as exc:
        raise TlsConfigError(f"TLS key file {path} holds no valid PEM private key: {exc}") from exc
