"""NATS credentials made by the test itself: nkeys (Ed25519, via cryptography) and the JWTs of
an operator, an account and a user, as `nsc` would write them (nats-io/jwt v2 layout)."""

from __future__ import annotations

import base64
import json
import os
import time

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kpc_trio.nats.credentials import encode_public_key, encode_seed

OPERATOR, ACCOUNT, USER = 14 << 3, 0, 20 << 3  # nkey type prefixes: 'O', 'A', 'U'


@attrs.frozen
class Nkey:
    prefix: int
    raw: bytes = attrs.field(factory=lambda: os.urandom(32), repr=False)

    @property
    def seed(self) -> str:
        return encode_seed(self.prefix, self.raw)

    @property
    def public(self) -> str:
        public = Ed25519PrivateKey.from_private_bytes(self.raw).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return encode_public_key(self.prefix, public)

    def sign(self, data: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.raw).sign(data)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer: Nkey, subject: Nkey, nats: dict[str, object], name: str) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = _b64(json.dumps({
        "jti": _b64(os.urandom(16)), "iat": int(time.time()), "iss": issuer.public,
        "sub": subject.public, "name": name, "nats": {**nats, "version": 2},
    }).encode())
    signing_input = f"{header}.{claims}".encode()
    return f"{header}.{claims}.{_b64(issuer.sign(signing_input))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


@attrs.frozen
class OperatorMode:
    """An operator, one account and one user: the server configuration and the user's .creds."""

    operator: Nkey = attrs.field(factory=lambda: Nkey(OPERATOR))
    account: Nkey = attrs.field(factory=lambda: Nkey(ACCOUNT))
    user: Nkey = attrs.field(factory=lambda: Nkey(USER))

    def server_config(self) -> str:
        operator_jwt = jwt(self.operator, self.operator, {"type": "operator"}, "test-operator")
        account_jwt = jwt(self.operator, self.account, {
            "type": "account",
            "limits": {**UNLIMITED, "conn": -1, "leaf": -1, "imports": -1, "exports": -1,
                       "wildcards": True},
        }, "test-account")
        return (f'operator: "{operator_jwt}"\n'
                "resolver: MEMORY\n"
                f'resolver_preload: {{ {self.account.public}: "{account_jwt}" }}\n')

    def creds(self, user: Nkey | None = None) -> str:
        user = user or self.user
        user_jwt = jwt(self.account, user, {"type": "user", "pub": {}, "sub": {}, **UNLIMITED},
                       "kpc")
        return ("-----BEGIN NATS USER JWT-----\n"
                f"{user_jwt}\n"
                "------END NATS USER JWT------\n\n"
                "************************* IMPORTANT *************************\n"
                "NKEY Seed printed below can be used to sign and prove identity.\n\n"
                "-----BEGIN USER NKEY SEED-----\n"
                f"{user.seed}\n"
                "------END USER NKEY SEED------\n\n"
                "*************************************************************\n")
