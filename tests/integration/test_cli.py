"""`kpc-trio` as a real process: check-config output, startup errors (exit 2), license checks."""

from __future__ import annotations

import datetime
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from cryptography.x509.oid import NameOID

from tests.integration.kpc_harness import BASE_CONFIG, make_config
from tests.integration.kpc_process import child_env, kpc_command, running_kpc

EXIT_STARTUP_ERROR = 2
PASSWORD = "license-password"
UNREACHABLE_NATS = "nats://127.0.0.1:1"  # never contacted: these runs stop before NATS


def kpc_trio(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(kpc_command(*args), env=child_env(env or {}), capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def write_license(path: Path, *, days_valid: float, password: str = PASSWORD) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kpc-trio test license")])
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days_valid)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - datetime.timedelta(days=1))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b"license", key, certificate, None, BestAvailableEncryption(password.encode())))
    return path


@pytest.fixture
def config_path(tmp_path) -> str:
    return make_config(tmp_path, UNREACHABLE_NATS).source


def test_check_config_prints_the_effective_configuration(config_path):
    result = kpc_trio("--config", config_path, "check-config",
                      env={"KAA_KPC_TRANSPORTS_MQTT_TCP_PORT": "18830"})
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["kaa"]["kpc"]["transports"]["mqtt"]["tcp"]["port"] == 18830  # env wins
    assert effective["service"]["graceful-shutdown"] == 30.0  # documented default filled in
    assert "demo_application_v1" in effective["kaa"]["applications"]["demo_application"][
        "versions"]


def test_a_bad_value_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(BASE_CONFIG + "service: {graceful-shutdown: soon}\n")
    result = kpc_trio("--config", str(path), "check-config")
    assert result.returncode == EXIT_STARTUP_ERROR
    assert "service.graceful-shutdown" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("yaml_text", "key_path"), [
    ("kaa.extension-instances: {'dc x': {endpoint-aware: true}}\n",
     "kaa.extension-instances.dc x"),
    ("kaa.applications.demo_application.versions: {'v>1': {}}\n",
     "kaa.applications.demo_application.versions.v>1"),
])
def test_a_name_unusable_in_nats_subjects_exits_2_naming_the_key(tmp_path, yaml_text, key_path):
    path = tmp_path / "bad.yml"
    path.write_text(BASE_CONFIG + yaml_text)
    result = kpc_trio("--config", str(path), "check-config")
    assert result.returncode == EXIT_STARTUP_ERROR
    assert f"{key_path}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_app_config_path_file_exits_2(tmp_path):
    missing = tmp_path / "nowhere" / "service-config.yml"
    result = kpc_trio("check-config", env={"APP_CONFIG_PATH": str(missing)})
    assert result.returncode == EXIT_STARTUP_ERROR
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_nats_seed_file_stops_startup_naming_the_key(tmp_path, config_path):
    seed = tmp_path / "kpc.nk"
    seed.write_text("SUNOTASEED\n")
    result = kpc_trio("--config", config_path, "run", env={
        "NATS_URLS": UNREACHABLE_NATS, "NATS_NKEY_SEED_FILE": str(seed)})
    assert result.returncode == EXIT_STARTUP_ERROR
    assert f"nats.nkey-seed-file: {seed}: not an nkey seed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("problem", "expected"), [
    ("wrong_password", "wrong password"),
    ("corrupt", "not a PKCS #12 file"),
    ("expired", "expired"),
])
def test_an_unusable_license_stops_startup(tmp_path, config_path, problem, expected):
    license_path = write_license(tmp_path / "license.p12",
                                 days_valid=-1 if problem == "expired" else 30)
    password = "not-the-password" if problem == "wrong_password" else PASSWORD
    if problem == "corrupt":
        license_path.write_bytes(license_path.read_bytes()[:-40])
    result = kpc_trio("--config", config_path, "run", env={
        "KAA_LICENSE_CERT_PATH": str(license_path), "KAA_LICENSE_CERT_PASSWORD": password,
        "NATS_URLS": UNREACHABLE_NATS})
    assert result.returncode == EXIT_STARTUP_ERROR
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("licensed", [False, True])
def test_runs_with_a_valid_license_or_warns_without_one(tmp_path, nats_server, licensed):
    env = {"NATS_URLS": nats_server.url,
           "KAA_LICENSE_CERT_PATH": str(tmp_path / "absent.p12")}
    if licensed:
        env["KAA_LICENSE_CERT_PATH"] = str(write_license(tmp_path / "license.p12", days_valid=30))
        env["KAA_LICENSE_CERT_PASSWORD"] = PASSWORD
    config = make_config(tmp_path, nats_server.url, "logging: {format: json}\n")
    with running_kpc(config.source, tmp_path / "kpc.log", env) as kpc:
        kpc.send_signal(signal.SIGTERM)
        assert kpc.process.wait(30) == 0
    if licensed:
        [loaded] = kpc.named("license_loaded")
        assert loaded["subject"] == "CN=kpc-trio test license"
        assert kpc.named("license_missing") == []
    else:
        [missing] = kpc.named("license_missing")
        assert missing["level"] == "warning"
        assert missing["path"] == env["KAA_LICENSE_CERT_PATH"]
