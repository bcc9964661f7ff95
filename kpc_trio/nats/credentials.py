"""NATS client credentials beyond user/password: nkey seeds and JWT `.creds` files.

An nkey seed is base32 (no padding) of: two prefix bytes (seed + key type), the 32-byte Ed25519
seed, and a CRC16/XMODEM of the rest, little-endian (github.com/nats-io/nkeys). The client signs
the server's INFO `nonce` with it; CONNECT carries the signature (base64url, no padding) and
either the public nkey (`nkey` auth) or the user JWT (`.creds`, operator mode).

`cryptography` is imported only when a seed is decoded: a plain KPC does not pay its memory.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from kpc_trio.logs import get_logger

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = get_logger(__name__)

_PREFIX_SEED = 18 << 3  # 'S'
_PREFIX_USER = 20 << 3  # 'U'
_SEED_LENGTH = 36  # 2 prefix bytes, 32 bytes of seed, 2 bytes of CRC

# Blocks of a .creds file: a dashed header line, the content, a dashed footer line (nats.go's rule).
_CREDS_BLOCK = re.compile(r"-{3,}[^\n]*-{3,}\s*\n\s*([^\s-][^\n]*?)\s*\n\s*-{3,}[^\n]*-{3,}")


class NatsCredentialsError(Exception):
    """A credentials file cannot be used; the message says what is wrong with it."""


def crc16(data: bytes) -> int:
    """CRC16/XMODEM (polynomial 0x1021, initial 0), as nkeys checksums its keys."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _b32decode(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def encode_public_key(prefix: int, raw: bytes) -> str:
    """The text form of a public nkey (`U...` for a user), as nats-server expects it."""
    body = bytes([prefix]) + raw
    return base64.b32encode(body + crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def encode_seed(prefix: int, raw: bytes) -> str:
    """The text form of a seed of key type `prefix` (`SU...` for a user)."""
    body = bytes([_PREFIX_SEED | prefix >> 5, (prefix & 31) << 3]) + raw
    return base64.b32encode(body + crc16(body).to_bytes(2, "little")).decode().rstrip("=")


@attrs.frozen
class NkeySeed:
    """A decoded seed: its key type prefix and the raw 32 bytes."""

    prefix: int
    raw: bytes = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: str) -> NkeySeed:
        text = text.strip()
        try:
            decoded = _b32decode(text)
        except ValueError:
            raise NatsCredentialsError("not an nkey seed (not base32)") from None
        if len(decoded) != _SEED_LENGTH:
            raise NatsCredentialsError(f"not an nkey seed ({len(decoded)} bytes, expected "
                                       f"{_SEED_LENGTH})")
        body, checksum = decoded[:-2], int.from_bytes(decoded[-2:], "little")
        if crc16(body) != checksum:
            raise NatsCredentialsError("not an nkey seed (checksum mismatch: truncated or "
                                       "mistyped?)")
        if body[0] & 0xF8 != _PREFIX_SEED:
            raise NatsCredentialsError("not an nkey seed (a public key? seeds start with 'S')")
        prefix = (body[0] & 7) << 5 | (body[1] & 0xF8) >> 3
        if prefix != _PREFIX_USER:
            raise NatsCredentialsError("the nkey seed is not a user seed (expected 'SU...')")
        return cls(prefix, bytes(body[2:]))

    def _private_key(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.raw)

    @property
    def public_key(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self._private_key().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return encode_public_key(self.prefix, raw)

    def sign(self, nonce: str) -> str:
        """The signature of the server's nonce, base64url without padding."""
        signature = self._private_key().sign(nonce.encode())
        return base64.urlsafe_b64encode(signature).decode().rstrip("=")


@attrs.frozen
class NatsCredentials:
    """What authenticates KPC to NATS besides the URL: an nkey seed, with a user JWT or not."""

    seed: NkeySeed
    user_jwt: str | None = attrs.field(default=None, repr=False)
    #: The file they were read from: read again for every connection, so a rotated Secret is
    #: used without a restart (as nats.go does).
    source: str = ""

    def reloaded(self) -> NatsCredentials:
        """The file read again; these credentials if it cannot be used now (logged)."""
        if not self.source:
            return self
        try:
            return (load_creds if self.user_jwt is not None else load_nkey_seed)(self.source)
        except NatsCredentialsError as exc:
            log.warning("nats_credentials_unreadable", error=str(exc),
                        action="the credentials read before are used")
            return self

    def connect_fields(self, nonce: str) -> dict[str, str]:
        """The CONNECT fields answering the server's INFO `nonce`."""
        fields = {"sig": self.seed.sign(nonce)}
        if self.user_jwt is not None:
            fields["jwt"] = self.user_jwt
        else:
            fields["nkey"] = self.seed.public_key
        return fields


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise NatsCredentialsError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise NatsCredentialsError(f"{path} is not a text file") from None


def load_nkey_seed(path: str) -> NatsCredentials:
    """Credentials from a file holding a user nkey seed (`SU...`)."""
    text = _read(path)
    try:
        seed = NkeySeed.parse(text)
    except NatsCredentialsError as exc:
        raise NatsCredentialsError(f"{path}: {exc}") from None
    seed.public_key  # noqa: B018 - fails now, at startup, if the seed is not an Ed25519 key
    return NatsCredentials(seed, source=path)


def load_creds(path: str) -> NatsCredentials:
    """Credentials from a `.creds` file: the user JWT block, then the user nkey seed block."""
    blocks = _CREDS_BLOCK.findall(_read(path))
    if len(blocks) < 2:
        raise NatsCredentialsError(f"{path}: not a .creds file (expected a user JWT block and "
                                   "an nkey seed block)")
    user_jwt, seed_text = blocks[0], blocks[1]
    if user_jwt.count(".") != 2:
        raise NatsCredentialsError(f"{path}: the first block is not a JWT")
    try:
        seed = NkeySeed.parse(seed_text)
    except NatsCredentialsError as exc:
        raise NatsCredentialsError(f"{path}: {exc}") from None
    return NatsCredentials(seed, user_jwt, path)
