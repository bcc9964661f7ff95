from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from kpc_trio.license import PASSWORD_ENV, LicenseError, LicenseInfo, load_license

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
PASSWORD = "s3cret"


def write_p12(
    path: Path,
    *,
    password: str = PASSWORD,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 10 * DAY,
) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Acme Kaa license")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"license",
            key,
            certificate,
            None,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    return path


def test_valid_license_is_loaded(tmp_path: Path) -> None:
    path = write_p12(tmp_path / "license.p12")

    info = load_license(str(path), PASSWORD, required=True, now=NOW)

    assert info == LicenseInfo(subject="CN=Acme Kaa license", not_after=NOW + 10 * DAY)
    assert info.seconds_until_expiry(NOW) == 10 * DAY.total_seconds()


def test_missing_file_is_none_when_not_required(tmp_path: Path) -> None:
    assert load_license(str(tmp_path / "absent.p12"), None, required=False, now=NOW) is None


def test_missing_file_fails_when_required(tmp_path: Path) -> None:
    with pytest.raises(LicenseError, match="license required.*absent.p12 does not exist"):
        load_license(str(tmp_path / "absent.p12"), PASSWORD, required=True, now=NOW)


@pytest.mark.parametrize("password", [None, ""])
def test_missing_password_fails(tmp_path: Path, password: str | None) -> None:
    path = write_p12(tmp_path / "license.p12")
    with pytest.raises(LicenseError, match=f"{PASSWORD_ENV} is not set"):
        load_license(str(path), password, required=False, now=NOW)


def test_wrong_password_fails(tmp_path: Path) -> None:
    path = write_p12(tmp_path / "license.p12")
    with pytest.raises(LicenseError, match="wrong password"):
        load_license(str(path), "not-the-password", required=False, now=NOW)


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"not a pkcs12 file at all"],
    ids=["truncated", "garbage"],
)
def test_corrupt_file_fails(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = write_p12(tmp_path / "license.p12")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LicenseError, match="not a PKCS #12 file or is truncated"):
        load_license(str(path), PASSWORD, required=False, now=NOW)


def test_expired_certificate_fails(tmp_path: Path) -> None:
    path = write_p12(tmp_path / "license.p12", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    with pytest.raises(LicenseError, match="expired on 2030-05-31"):
        load_license(str(path), PASSWORD, required=False, now=NOW)


def test_not_yet_valid_certificate_fails(tmp_path: Path) -> None:
    path = write_p12(tmp_path / "license.p12", not_before=NOW + DAY, not_after=NOW + 2 * DAY)
    with pytest.raises(LicenseError, match="not valid before"):
        load_license(str(path), PASSWORD, required=False, now=NOW)


def test_unreadable_file_fails(tmp_path: Path) -> None:
    # A directory exists but cannot be read as a file, whatever user runs the tests.
    with pytest.raises(LicenseError, match="cannot read license file"):
        load_license(str(tmp_path), PASSWORD, required=False, now=NOW)
