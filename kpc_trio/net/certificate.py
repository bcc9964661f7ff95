"""X.509 client certificates as KPC needs them: the fields sent to the 22/CAP provider."""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen
class ClientCertificate:
    subject: str  # RFC 4514
    issuer: str  # RFC 4514; sent as `issuer` in the certificate authentication request
    serial_number: str  # base 10, as the CAP/ECAP providers require
    not_before: datetime  # timezone-aware UTC
    not_after: datetime
    der: bytes


def parse_certificate(der: bytes) -> ClientCertificate:
    """Parse a DER certificate; raises ValueError if it is not one."""
    # Imported here: cryptography costs about 8 MiB of RSS, paid only when clients present
    # certificates.
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    return ClientCertificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial_number=str(cert.serial_number),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        der=der,
    )
