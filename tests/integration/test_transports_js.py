"""End to end over MQTT/WebSocket with MQTT.js: in Node, and in a real headless Chromium.

Needs `node`, `chromium` and `npm install` in tests/js (CI has all three); skips without them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator.kaa_side import SimulatedKaa
from tests.integration.browser_harness import (
    CHROMIUM,
    JS_DIR,
    MQTT_BUNDLE,
    open_headless_chromium,
    open_page_server,
)
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, make_config

NODE = shutil.which("node")
EP1 = ENDPOINTS[0]
MQTTJS_MISSING = f"MQTT.js is not installed: run `npm install` in {JS_DIR}"
# Generous bounds on whole client runs (they normally take well under a second or two).
NODE_DEADLINE = 30
BROWSER_DEADLINE = 30

requires_mqttjs = pytest.mark.skipif(not MQTT_BUNDLE.is_file(), reason=MQTTJS_MISSING)
requires_node = pytest.mark.skipif(NODE is None, reason="node is not on PATH")
requires_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH "
                                       "(Debian: apt-get install chromium)")


@pytest.fixture
async def kpc(nats_server, tmp_path, kaa) -> AsyncIterator[KpcService]:
    env = {"KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_ENABLED": "true",
           "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_HOST": "127.0.0.1",
           "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_PORT": "0"}
    async with open_kpc(make_config(tmp_path, nats_server.url, env=env)) as service:
        yield service


def ws_url(kpc: KpcService) -> str:
    return f"ws://127.0.0.1:{kpc.ports['mqtt_websocket']}/ws"


async def assert_relayed(kaa: SimulatedKaa, request_id: int, payload: str) -> None:
    [client_data] = await kaa.await_received("dcx", 1)
    assert (client_data.endpoint_id, client_data.request_id, client_data.payload) == (
        EP1.endpoint_id, request_id, payload.encode())


@requires_node
@requires_mqttjs
async def test_mqttjs_in_node_round_trip_over_websocket(kpc, kaa):
    topic = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/31"
    payload = '[{"client":"mqtt.js/node"}]'
    with trio.fail_after(NODE_DEADLINE):
        result = await trio.run_process(
            [NODE, str(JS_DIR / "mqtt_round_trip.mjs"), ws_url(kpc), topic, payload],
            capture_stdout=True, capture_stderr=True, check=False)
    output = result.stdout.decode()
    assert result.returncode == 0, f"{output}\n{result.stderr.decode()}"
    reply = json.loads(output.splitlines()[-1])
    assert reply == {"topic": topic + "/status", "payload": payload, "qos": 1, "granted": 1}
    await assert_relayed(kaa, 31, payload)


@requires_chromium
@requires_mqttjs
async def test_mqttjs_in_headless_chromium_round_trip_over_websocket(kpc, kaa, tmp_path: Path):
    topic = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json/32"
    payload = '[{"client":"mqtt.js/chromium"}]'
    with trio.fail_after(BROWSER_DEADLINE):
        async with open_page_server() as pages:
            url = pages.page_url(ws=ws_url(kpc), topic=topic, payload=payload)
            async with open_headless_chromium(url, tmp_path / "chromium-profile"):
                report = await pages.next_report()
    assert "error" not in report, report
    assert "HeadlessChrome" in report["userAgent"]  # a real browser ran it
    assert (report["topic"], report["payload"], report["qos"]) == (topic + "/status", payload, 1)
    await assert_relayed(kaa, 32, payload)
