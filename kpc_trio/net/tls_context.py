"""Server `ssl.SSLContext` for MQTT/TLS, with configuration errors that name the bad file."""

from __future__ import annotations

import enum
import ssl
from pathlib import Path


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
    Only the `ssl` module is used: cryptography would add about 8 MiB of RSS to every replica.
    """
    try:
        auth = ClientAuth(client_auth)
    except ValueError:
        choices = ", ".join(mode.value for mode in ClientAuth)
        raise TlsConfigError(
            f"client-auth must be one of {choices}; got {client_auth!r}"
        ) from None
    _check_certificates(cert_file, "certificate file")
    _check_private_key(key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file),
                                password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(
                f"TLS key file {key_file} does not match the certificate in {cert_file}"
            ) from exc
        raise TlsConfigError(
            f"TLS key file {key_file} holds no valid PEM private key: {_describe(exc)}"
        ) from exc
    if ca_file:
        _check_certificates(ca_file, "CA file")
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


def _check_certificates(path: str | Path, what: str) -> None:
    """The file holds at least one PEM certificate and every one of them parses."""
    data = _read(path, what)
    problem = None
    if _PEM_CERTIFICATE not in data:
        problem = "no PEM certificate"
    else:
        try:
            # A scratch context parses the whole bundle as OpenSSL will.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(
                cadata=data.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            problem = f"an invalid PEM certificate ({_describe(exc)})"
    if problem is not None:
        raise TlsConfigError(f"TLS {what} {path} holds {problem}")


def _check_private_key(path: str | Path) -> None:
    data = _read(path, "key file")
    if b"ENCRYPTED" in data:  # PKCS#8 "ENCRYPTED PRIVATE KEY" or a legacy Proc-Type header
        raise TlsConfigError(f"TLS key file {path} is encrypted; provide an unencrypted PEM key")
    if b"PRIVATE KEY-----" not in data:
        raise TlsConfigError(f"TLS key file {path} holds no PEM private key")


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TlsConfigError("the TLS key is encrypted; provide an unencrypted PEM key")


def _describe(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc)


_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
