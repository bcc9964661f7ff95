"""The Kaa platform license: a PKCS #12 file with a mandatory password.

KPC's documentation only says where the license lives (`KAA_LICENSE_CERT_PATH`, password in
`KAA_LICENSE_CERT_PASSWORD`), not what is checked, so we check what can be checked offline: the
file opens with the password, holds a certificate, and that certificate is currently valid.
"""

from __future__ import annotations

import datetime
import os
from typing import Final

import attrs

PATH_ENV: Final = "KAA_LICENSE_CERT_PATH"
PASSWORD_ENV: Final = "KAA_LICENSE_CERT_PASSWORD"
DEFAULT_PATH: Final = "/run/license/license.p12"


class LicenseError(Exception):
    """The license cannot be used; the message says what to fix."""


@attrs.frozen
class LicenseInfo:
    subject: str
    not_after: datetime.datetime

    def seconds_until_expiry(self, now: datetime.datetime | None = None) -> float:
        return (self.not_after - (now or _utcnow())).total_seconds()


def load_license(
    path: str | None,
    password: str | None,
    *,
    required: bool,
    now: datetime.datetime | None = None,
) -> LicenseInfo | None:
    """Open and validate the license at `path` (default `DEFAULT_PATH`).

    Returns None when there is no file and the license is not `required` (the caller warns).
    Raises `LicenseError` for a missing required file, a missing password, an unreadable, damaged
    or wrongly protected file, and a certificate outside its validity period.
    """
    path = path or DEFAULT_PATH
    now = now or _utcnow()
    if not os.path.exists(path):
        if required:
            raise LicenseError(
                f"license required (license.required=true) but {path} does not exist: mount the "
                f"license secret there or point {PATH_ENV} at the PKCS #12 file"
            )
        return None
    if not password:
        raise LicenseError(f"{PASSWORD_ENV} is not set: it must hold the password of {path}")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise LicenseError(f"cannot read license file {path}: {exc.strerror}") from None
    if not _is_der_sequence(data):
        raise LicenseError(
            f"license file {path} is not a PKCS #12 file or is truncated: re-create the secret "
            "from the original .p12 file"
        )
    # Imported here: cryptography costs about 8 MiB of RSS, paid only when a license is present.
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        bundle = pkcs12.load_pkcs12(data, password.encode())
    except ValueError:
        raise LicenseError(
            f"cannot open license file {path}: wrong password in {PASSWORD_ENV} (or the file is "
            "damaged)"
        ) from None
    certificate = bundle.cert.certificate if bundle.cert else None
    if certificate is None and bundle.additional_certs:
        certificate = bundle.additional_certs[0].certificate
    if certificate is None:
        raise LicenseError(f"license file {path} contains no certificate")
    info = LicenseInfo(
        subject=certificate.subject.rfc4514_string(), not_after=certificate.not_valid_after_utc
    )
    if now > info.not_after:
        raise LicenseError(
            f"license {info.subject!r} expired on {info.not_after.isoformat()}: install a renewed "
            "license"
        )
    if now < certificate.not_valid_before_utc:
        raise LicenseError(
            f"license {info.subject!r} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()}: check the system clock"
        )
    return info


def _is_der_sequence(data: bytes) -> bool:
    """Whether `data` is exactly one DER SEQUENCE, the outer shape of every PKCS #12 file.

    Tells a damaged or foreign file apart from a wrong password, which the PKCS #12 parser
    reports with one shared error.
    """
    if len(data) < 2 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        return 2 + first == len(data)
    size_bytes = first & 0x7F
    if size_bytes == 0:
        return True  # BER indefinite length (old tools): let the parser judge
    header = 2 + size_bytes
    return header + int.from_bytes(data[2:header], "big") == len(data)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
