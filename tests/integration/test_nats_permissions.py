"""A nats-server whose permissions refuse some of what KPC does: the device and the operator
hear of it (1/KP `/error` 502, a drop counter, one log line per subject, `/ready` 503)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from kpc_trio.nats.embedded import HOST, NatsServerProcess
from kpc_trio.nats.gateway import open_nats_gateway
from kpc_trio.service import open_kpc
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.integration.http_probe import http_get
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, make_config, open_device
from tests.integration.waiting import eventually, logged

REFUSED_EXTENSION = "cex"


def users(kpc_permissions: str) -> str:
    return ("authorization { users = [\n"
            f"  {{ user: kpc, password: kpc, permissions: {kpc_permissions} }},\n"
            "  { user: kaa, password: kaa }\n"
            "] }\n")


@pytest.fixture
def restricted_nats(request: pytest.FixtureRequest) -> Iterator[NatsServerProcess]:
    with NatsServerProcess(config=users(request.param)) as server:
        yield server


def url(server: NatsServerProcess, user: str) -> str:
    return f"nats://{user}:{user}@{HOST}:{server.port}"


def dropped(kpc: object) -> float:
    return kpc.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "kpc_messages_dropped_total", {"reason": "nats_permission_denied"}) or 0.0


@pytest.mark.expected_errors("nats_publish_refused")
@pytest.mark.parametrize(
    "restricted_nats",
    [f'{{ publish: {{ deny: ["kaa.v1.service.{REFUSED_EXTENSION}.>"] }} }}'], indirect=True)
async def test_a_refused_publish_answers_the_request_with_502_and_is_counted(
    restricted_nats: NatsServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = ENDPOINTS[0].token
    async with open_simulated_kaa(url(restricted_nats, "kaa"), endpoints=ENDPOINTS,
                                  echo_extensions=("dcx", REFUSED_EXTENSION)) as kaa, \
            open_kpc(make_config(tmp_path, url(restricted_nats, "kpc"))) as kpc, \
            open_device(kpc.ports["mqtt_tcp"]) as device, \
            open_device(kpc.ports["mqtt_tcp"]) as other:
        refused = f"kp1/{APP_VERSION}/{REFUSED_EXTENSION}/{token}/json"
        allowed = f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[1].token}/json"
        for request_id in (5, 6):  # twice: logged once, counted twice
            await call(device.publish, f"{refused}/{request_id}", b"{}", qos=1)
            reply = await call(device.expect, 10)
            assert reply.topic == f"{refused}/{request_id}/error"
            assert json.loads(reply.payload)["statusCode"] == 502
            # The other extension, and the other device, still work in between.
            await call(other.publish, f"{allowed}/{request_id}", b"{}", qos=1)
            assert (await call(other.expect, 10)).topic == f"{allowed}/{request_id}/status"
        await eventually(lambda: dropped(kpc) == 2)
        # QoS 0 without a request id: no answer, still counted.
        await call(device.publish, refused, b"{}", qos=0)
        await eventually(lambda: dropped(kpc) == 3)
        await call(device.expect_none, 0.3)
        assert kpc.health.ready
        assert kpc.metrics.registry.get_sample_value(
            "kpc_nats_server_errors_total", {"kind": "publish_permission"}) == 3
        assert not kaa.received(REFUSED_EXTENSION)
        # A refused request is not waited for (a shutdown would wait for its reply).
        assert kpc.hub.awaiting_replies(trio.current_time()) == 0
    refusals = logged(caplog, "nats_publish_refused")
    assert [entry["subject"] for entry in refusals] == [
        f"kaa.v1.service.{REFUSED_EXTENSION}.esp.ClientData"]


@pytest.mark.expected_errors("nats_subscription_refused", "not_ready")
@pytest.mark.parametrize(
    "restricted_nats", ['{ subscribe: { deny: ["kaa.v1.replica.>"] } }'], indirect=True)
async def test_a_refused_reply_subscription_makes_kpc_unready(
    restricted_nats: NatsServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_kpc(make_config(tmp_path, url(restricted_nats, "kpc"))) as kpc:
        reply = await call(http_get, kpc.ports["management"], "/ready")
        assert reply.status == 503
        assert "nats_subscription_refused" in json.loads(reply.body)["reasons"]
    refused = {entry["subject"] for entry in logged(caplog, "nats_subscription_refused")}
    assert refused and all(subject.startswith("kaa.v1.replica.") for subject in refused)
    assert logged(caplog, "not_ready")[0]["reason"] == "nats_subscription_refused"


def _hold_the_only_connection(port: int) -> socket.socket:
    """A client registered with the server (CONNECT answered by PONG): it counts against
    max_connections. The server's own readiness probe may still hold the slot for a moment."""
    deadline = time.monotonic() + 10
    while True:
        client = socket.create_connection((HOST, port))
        client.sendall(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        answer = b""
        while b"PONG" not in answer and b"-ERR" not in answer:
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
        if b"PONG" in answer:
            return client
        client.close()
        assert time.monotonic() < deadline, f"nats-server never took a client: {answer!r}"
        time.sleep(0.05)


async def test_maximum_connections_exceeded_is_logged_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with NatsServerProcess(config="max_connections: 1\n") as server, \
            _hold_the_only_connection(server.port):
        with trio.CancelScope() as scope:  # cancelled, not drained: there is no connection
            async with open_nats_gateway([server.url], reconnect_wait=0.05) as gateway:
                await eventually(lambda: bool(logged(caplog, "nats_error")))
                assert not gateway.connected
                scope.cancel()
    assert logged(caplog, "nats_error")[0]["kind"] == "maximum_connections"
