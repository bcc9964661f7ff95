"""Reloading the configuration without a restart, with `kpc-trio run` as a real process: SIGHUP
and a ConfigMap-style symlink swap, a broken file, and TLS certificate rotation. Real
nats-server, simulated Kaa, paho devices and a plain `ssl` client.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.simulator import SimulatedKaa
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from kpc_trio.simulator.token_provider import EndpointRecord
from tests.clients.paho_device import PahoDevice
from tests.integration.kpc_harness import call, open_device
from tests.integration.kpc_process import KpcProcess, running_kpc
from tests.integration.waiting import eventually

APP, VERSION, NEW_VERSION = "plant", "plant-v1", "plant-v2"
DEVICE = EndpointRecord(app_name=APP, token="plant-token", endpoint_id="plant-ep-1",
                        token_id="plant-tid-1")
HOST = "127.0.0.1"
DOCUMENT: dict[str, Any] = {
    "logging": {"format": "json"},
    "management": {"port": 0},
    "server": {"port": 0},
    "service": {"config-watch-interval": "100ms"},
    "kaa": {
        "kpc": {"transports": {"mqtt": {"tcp": {"host": HOST, "port": 0}}}},
        "applications": {APP: {"versions": {
            VERSION: {"allowed-extension-instances": ["dcx"]}}}},
        "extension-instances": {"dcx": {"endpoint-aware": True}},
    },
}


def with_version(document: dict[str, Any], version: str) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    changed["kaa"]["applications"][APP]["versions"][version] = {
        "allowed-extension-instances": ["dcx"]}
    return changed


@contextlib.contextmanager
def kpc_process(tmp_path: Path, kaa: SimulatedKaa, nats_url: str, config: Path
                ) -> Iterator[KpcProcess]:
    env = {"NATS_URLS": nats_url, "SERVICE_INSTANCE_NAME": kaa.kpc_instance}
    with running_kpc(str(config), tmp_path / "kpc.log", env) as kpc:
        yield kpc
        kpc.send_signal(signal.SIGTERM)
        assert kpc.process.wait(30) == 0


async def answer(device: PahoDevice, app_version: str, request_id: int) -> str:
    """"status" or "error": how KPC answered a request to `app_version`."""
    topic = f"kp1/{app_version}/dcx/{DEVICE.token}/json/{request_id}"
    await call(device.publish, topic, b"{}", qos=1)
    reply = await call(device.expect, 5.0)
    assert reply.topic.startswith(topic + "/"), reply
    return reply.topic.rsplit("/", 1)[1]


def write(path: Path, document: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(document))


@contextlib.asynccontextmanager
async def open_kaa(nats_url: str) -> AsyncIterator[SimulatedKaa]:
    async with open_simulated_kaa(nats_url, endpoints=(DEVICE,), echo_extensions=("dcx",),
                                  kpc_instance=f"kpc-reload-{uuid.uuid4().hex[:8]}") as kaa:
        yield kaa


@pytest.mark.expected_errors("config_reload_refused")
async def test_sighup_applies_a_new_appversion_and_refuses_a_broken_file(
    tmp_path: Path, nats_server: NatsServerProcess,
) -> None:
    config = tmp_path / "service-config.yml"
    write(config, DOCUMENT | {"service": {"config-watch-interval": 0}})  # SIGHUP only
    async with open_kaa(nats_server.url) as kaa:
        with kpc_process(tmp_path, kaa, nats_server.url, config) as kpc:
            async with open_device(kpc.ports["mqtt_tcp"], client_id="plant-1") as device:
                assert await answer(device, VERSION, 1) == "status"
                assert await answer(device, NEW_VERSION, 2) == "error"

                added = with_version(DOCUMENT, NEW_VERSION) | {
                    "service": {"config-watch-interval": 0}}
                added["logging"]["level"] = "DEBUG"
                added["kaa"]["kpc"]["transports"]["mqtt"]["tcp"]["port"] = 1  # needs a restart
                write(config, added)
                kpc.send_signal(signal.SIGHUP)
                await eventually(lambda: bool(kpc.named("config_reloaded")))
                [reloaded] = kpc.named("config_reloaded")
                assert reloaded["applied"] == "kaa.applications,logging.level"
                [restart] = kpc.named("config_change_needs_restart")
                assert restart["keys"] == "kaa.kpc.transports.mqtt.tcp.port"
                assert await answer(device, NEW_VERSION, 3) == "status"  # same connection

                broken = copy.deepcopy(added)
                broken["kaa"]["applications"][APP]["versions"][VERSION] = {
                    "allowed-extension-instances": "dcx"}
                write(config, broken)
                kpc.send_signal(signal.SIGHUP)
                await eventually(lambda: bool(kpc.named("config_reload_refused")))
                [refused] = kpc.named("config_reload_refused")
                assert refused["key_path"] == (
                    f"kaa.applications.{APP}.versions.{VERSION}.allowed-extension-instances")
                assert refused["level"] == "error"
                assert await answer(device, VERSION, 4) == "status"  # old configuration kept
                assert await answer(device, NEW_VERSION, 5) == "status"


async def test_a_configmap_symlink_swap_is_noticed_without_a_signal(
    tmp_path: Path, nats_server: NatsServerProcess,
) -> None:
    # Kubernetes mounts a ConfigMap as <dir>/..data -> ..<timestamp>/ and swaps that link.
    first, second = tmp_path / "..2026_1", tmp_path / "..2026_2"
    first.mkdir()
    second.mkdir()
    write(first / "service-config.yml", DOCUMENT)
    write(second / "service-config.yml", with_version(DOCUMENT, NEW_VERSION))
    (tmp_path / "..data").symlink_to(first.name)
    config = tmp_path / "service-config.yml"
    config.symlink_to("..data/service-config.yml")
    async with open_kaa(nats_server.url) as kaa:
        with kpc_process(tmp_path, kaa, nats_server.url, config) as kpc:
            async with open_device(kpc.ports["mqtt_tcp"], client_id="plant-2") as device:
                assert await answer(device, NEW_VERSION, 1) == "error"
                (tmp_path / "..data_tmp").symlink_to(second.name)
                os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
                await eventually(lambda: bool(kpc.named("config_reloaded")))
                assert kpc.named("config_reloaded")[0]["trigger"] == "file_changed"
                assert await answer(device, NEW_VERSION, 2) == "status"


def server_certificate(port: int, ca: trustme.CA) -> bytes:
    """The DER certificate a new TLS client that trusts only `ca` is shown."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def issue(ca: trustme.CA, directory: Path) -> bytes:
    """Write a server certificate and key from `ca` (over the previous ones); its DER."""
    leaf = ca.issue_cert(HOST)
    leaf.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    leaf.private_key_pem.write_to_path(str(directory / "server.key"))
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def test_certificate_rotation_with_sighup_keeps_connected_devices(
    tmp_path: Path, nats_server: NatsServerProcess,
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old_der = issue(old_ca, tmp_path)
    document = copy.deepcopy(DOCUMENT) | {"service": {"config-watch-interval": 0}}
    document["kaa"]["kpc"]["transports"]["mqtt"]["tls"] = {
        "enabled": True, "host": HOST, "port": 0, "client-auth": "none",
        "cert-file": str(tmp_path / "server.crt"), "key-file": str(tmp_path / "server.key")}
    config = tmp_path / "service-config.yml"
    write(config, document)
    device_tls = ssl.create_default_context()
    old_ca.configure_trust(device_tls)
    async with open_kaa(nats_server.url) as kaa:
        with kpc_process(tmp_path, kaa, nats_server.url, config) as kpc:
            port = kpc.ports["mqtt_tls"]
            async with open_device(port, client_id="plant-tls", tls=device_tls) as device:
                assert await answer(device, VERSION, 1) == "status"
                assert await call(server_certificate, port, old_ca) == old_der
                new_der = issue(new_ca, tmp_path)
                kpc.send_signal(signal.SIGHUP)
                await eventually(lambda: bool(kpc.named("config_reloaded")))
                assert kpc.named("config_reloaded")[0]["tls_context"] == "renewed"
                assert await call(server_certificate, port, new_ca) == new_der
                # The device connected before keeps its session on the old certificate.
                assert await answer(device, VERSION, 2) == "status"
                assert not device._disconnected.is_set()
                assert not [event for event in kpc.named("client_disconnected")
                            if event.get("client_id") == "plant-tls"]
