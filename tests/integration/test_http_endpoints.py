"""Metrics, health, readiness and the REST certificate download of an in-process KPC."""

from __future__ import annotations

import pytest
import trio
import trustme

from kpc_trio.httpd import Request, management_routes
from kpc_trio.service import open_kpc
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.integration.http_probe import HttpReply, http_get, metric_value
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, make_config, open_device


async def get(kpc, app: str, path: str) -> HttpReply:
    return await call(http_get, kpc.ports[app], path)


async def metric(kpc, name: str, **labels: str) -> float | None:
    return metric_value((await get(kpc, "management", "/metrics")).body, name, **labels)


async def metric_becomes(kpc, expected: float, name: str, **labels: str) -> float | None:
    """The metric once it equals `expected`, or its last value after 10 s of polling."""
    with trio.move_on_after(10):
        while (value := await metric(kpc, name, **labels)) != expected:
            await trio.sleep(0.02)
    return value


@pytest.fixture
async def kpc(nats_server, tmp_path):
    async with open_kpc(make_config(tmp_path, nats_server.url)) as service:
        yield service


async def test_open_connections_gauge_follows_a_client(kpc):
    async with open_device(kpc.ports["mqtt_tcp"]) as device:
        assert await metric(kpc, "kpc_connections_open", transport="tcp") == 1
        await call(device.close)
        await call(device.wait_disconnected)
    # The session ends shortly after the client's DISCONNECT.
    assert await metric_becomes(kpc, 0, "kpc_connections_open", transport="tcp") == 0
    assert await metric(kpc, "kpc_packets_received_total", packet_type="CONNECT") == 1
    assert await metric(kpc, "kpc_packets_received_total", packet_type="DISCONNECT") == 1
    assert await metric(kpc, "kpc_received_bytes_total", transport="tcp") > 0


async def test_relayed_client_data_is_counted(nats_server, kpc):
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx",)) as kaa:
        async with open_device(kpc.ports["mqtt_tcp"]) as device:
            await call(device.publish, f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json",
                       b"{}", qos=1)
            await kaa.await_received("dcx", 1)
    assert await metric(kpc, "kpc_client_data_relayed_total", extension="dcx") == 1


async def test_metrics_are_prometheus_text(kpc):
    reply = await get(kpc, "management", "/metrics")
    assert reply.status == 200
    assert reply.content_type.startswith("text/plain")
    assert b"# TYPE kpc_connections_open gauge" in reply.body


async def test_health_and_ready_while_serving(kpc):
    health = await get(kpc, "management", "/health")
    ready = await get(kpc, "management", "/ready")
    assert (health.status, ready.status) == (200, 200)
    assert health.content_type == ready.content_type == "application/json"


async def test_not_ready_once_shutdown_is_requested(kpc):
    # With no session to wait for the service is gone a moment later, so ask the app directly
    # (tests/integration/test_shutdown.py polls a real process held up during its shutdown).
    routes = management_routes(kpc.metrics, kpc.health)
    kpc.request_shutdown(unready_delay=0.0)
    status, _, body = await routes["/ready"](Request("GET", "/ready", "", (), b""))
    assert status == 503
    assert b"shutting_down" in body
    status, _, _ = await routes["/health"](Request("GET", "/health", "", (), b""))
    assert status == 200  # alive, just leaving


async def test_not_ready_while_nats_is_stopped(nats_server_factory, tmp_path):
    nats = nats_server_factory()
    async with open_kpc(make_config(tmp_path, nats.url)) as kpc:
        assert (await get(kpc, "management", "/ready")).status == 200
        await call(nats.stop)
        assert await metric_becomes(kpc, 0, "kpc_nats_connected") == 0
        reply = await get(kpc, "management", "/ready")
        assert reply.status == 503
        assert b"nats_disconnected" in reply.body
        kpc.request_shutdown(unready_delay=0.0)


async def test_certificate_download_when_tls_is_enabled(nats_server, tmp_path):
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))  # key included
    server_cert.private_key_pem.write_to_path(str(key_path))
    tls = ("kaa.kpc.transports.mqtt.tls: {enabled: true, host: 127.0.0.1, port: 0, "
           f"cert-file: {cert_path}, key-file: {key_path}}}\n")
    async with open_kpc(make_config(tmp_path, nats_server.url, tls)) as kpc:
        reply = await get(kpc, "rest", "/api/v1/certificate")
    assert reply.status == 200
    assert reply.content_type == "application/x-pem-file"
    assert reply.body == server_cert.cert_chain_pems[0].bytes()  # and never the private key


async def test_no_certificate_without_tls(kpc):
    assert (await get(kpc, "rest", "/api/v1/certificate")).status == 404
