"""nkey seeds, .creds files and the startup checks of the nats.* files, without a server."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kpc_trio.config import ConfigError, load_config
from kpc_trio.nats.credentials import (
    NatsCredentialsError,
    NkeySeed,
    crc16,
    encode_seed,
    load_creds,
    load_nkey_seed,
)
from kpc_trio.service import nats_connect_options

# From nats.go's JWT tests: the seed of a .creds file, and the `sub` of its user JWT.
SEED = "SUAMK2FG4MI6UE3ACF3FK3OIQBCEIEZV7NSWFFEW63UXMRLFM2XLAXK4GY"
PUBLIC = "UAT6BWCSCWLUKJT6K6MBJJOEOTXZ5AJDOYKNEVRFC7VNO6OA43N4TRNO"


def test_crc16_is_xmodem() -> None:
    assert crc16(b"123456789") == 0x31C3


def test_a_user_seed_gives_its_public_key_and_signs() -> None:
    seed = NkeySeed.parse(SEED)
    assert seed.public_key == PUBLIC
    signature = seed.sign("nonce")
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64


@pytest.mark.parametrize(("text", "problem"), [
    ("not base32 at all!", "not base32"),
    (SEED[:-8], "bytes, expected"),
    (SEED[:10] + ("A" if SEED[10] != "A" else "B") + SEED[11:], "checksum"),
    (PUBLIC + "AA", "not an nkey seed"),
    (encode_seed(0, bytes(32)), "not a user seed"),
])
def test_a_bad_seed_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(NatsCredentialsError, match=problem):
        NkeySeed.parse(text)


CREDS = f"""-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVIn0.c2ln
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.

-----BEGIN USER NKEY SEED-----
{SEED}
------END USER NKEY SEED------

*************************************************************
"""


def test_a_creds_file_gives_the_jwt_and_signs_with_its_seed(tmp_path: Path) -> None:
    path = tmp_path / "kpc.creds"
    path.write_text(CREDS)
    fields = load_creds(str(path)).connect_fields("nonce")
    assert fields["jwt"] == "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVIn0.c2ln"
    assert "nkey" not in fields and fields["sig"]


def test_an_nkey_seed_file_sends_the_public_key(tmp_path: Path) -> None:
    path = tmp_path / "kpc.nk"
    path.write_text(SEED + "\n")
    assert load_nkey_seed(str(path)).connect_fields("n")["nkey"] == PUBLIC


@pytest.mark.parametrize(("env", "key", "problem"), [
    ({"NATS_NKEY_SEED_FILE": "/nonexistent/seed"}, "nats.nkey-seed-file", "cannot read"),
    ({"NATS_CREDS_FILE": "{bad}"}, "nats.creds-file", "not a .creds file"),
    ({"NATS_NKEY_SEED_FILE": "{bad}"}, "nats.nkey-seed-file", "not an nkey seed"),
    ({"NATS_TLS_CA_FILE": "/nonexistent/ca.pem"}, "nats.tls.ca-file", "cannot read"),
    ({"NATS_TLS_CA_FILE": "{bad}"}, "nats.tls.ca-file", "cannot be used"),
])
def test_nats_files_are_checked_at_startup_naming_the_key(
    tmp_path: Path, env: dict[str, str], key: str, problem: str
) -> None:
    bad = tmp_path / "bad"
    bad.write_text("garbage\n")
    env = {name: value.format(bad=bad) for name, value in env.items()}
    config = load_config(env=env)
    with pytest.raises(ConfigError, match=problem) as caught:
        nats_connect_options(config, "kpc")
    assert caught.value.key_path == key
    assert str(caught.value).startswith(f"{key}: ")


@pytest.mark.parametrize(("env", "key"), [
    ({"NATS_CREDS_FILE": "a", "NATS_NKEY_SEED_FILE": "b"}, "nats.nkey-seed-file"),
    ({"NATS_TLS_CERT_FILE": "a"}, "nats.tls.key-file"),
])
def test_nats_settings_that_do_not_go_together(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert caught.value.key_path == key


def test_a_rotated_seed_file_is_used_for_the_next_connection(tmp_path: Path) -> None:
    path = tmp_path / "kpc.nk"
    path.write_text(SEED)
    credentials = load_nkey_seed(str(path))
    rotated = encode_seed(20 << 3, bytes(range(32)))
    path.write_text(rotated)
    assert credentials.reloaded().seed == NkeySeed.parse(rotated)
    path.write_text("garbage")  # half-written by the rotation: the last good one is kept
    assert credentials.reloaded() is credentials
