"""End to end: per-application endpoint disconnection (spec 3.3) with real paho devices, a real
nats-server and the simulated Kaa listening to the 9/ELCE connectivity events.

Idle durations are real seconds here (real NATS and paho threads cannot run on trio's mock clock);
tests/trio/test_idle_service.py covers a realistic 300 s duration on the autojump clock.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from kpc_trio.config import Config, load_config
from kpc_trio.kaa import records
from kpc_trio.service import open_kpc
from kpc_trio.simulator import SimulatedKaa
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from kpc_trio.simulator.recording import WaitTimeoutError
from tests.integration.kpc_harness import (
    APP,
    APP_VERSION,
    BASE_CONFIG,
    ENDPOINTS,
    call,
    open_device,
)

EP1 = ENDPOINTS[0]
CONNECTED = "connectivity.connected"
DISCONNECTED = "connectivity.disconnected"
#: Longest wait for an event that must come (generous: the sweeper may be up to 1 s late).
EVENT_TIMEOUT = 10.0
#: How long "no event now" is watched for: the client's close reaches KPC in milliseconds.
QUIET_WINDOW = 0.3
#: Wait for an event due at once (a client's close, a shutdown), not at an idle deadline.
PROMPT_TIMEOUT = 3.0


def disconnect_config(tmp_path: Path, nats_url: str, instance: str,
                      disconnect: dict[str, Any]) -> Config:
    """The harness configuration with `disconnect` settings on the test application."""
    document = yaml.safe_load(BASE_CONFIG)
    document["kaa"]["applications"][APP]["disconnect"] = disconnect
    path = tmp_path / "service-config.yml"
    path.write_text(yaml.safe_dump(document))
    return load_config(str(path), env={"NATS_URLS": nats_url, "SERVICE_INSTANCE_NAME": instance})


@contextlib.asynccontextmanager
async def open_kaa(nats_url: str) -> AsyncIterator[SimulatedKaa]:
    """Simulated Kaa on a KPC instance name of its own (the nats-server is shared by the run)."""
    instance = f"kpc-idle-{uuid.uuid4().hex[:8]}"
    async with open_simulated_kaa(nats_url, endpoints=ENDPOINTS, echo_extensions=("dcx",),
                                  kpc_instance=instance) as kaa:
        yield kaa


@contextlib.asynccontextmanager
async def open_setup(
    tmp_path: Path, nats_url: str, disconnect: dict[str, Any]
) -> AsyncIterator[tuple[SimulatedKaa, int]]:
    """Simulated Kaa + a KPC with `disconnect` settings; yields the KPC's MQTT/TCP port."""
    async with open_kaa(nats_url) as kaa, \
            open_kpc(disconnect_config(tmp_path, nats_url, kaa.kpc_instance, disconnect)) as kpc:
        yield kaa, kpc.ports["mqtt_tcp"]


async def send(device: Any, kaa: SimulatedKaa, total_received: int) -> None:
    """One fire-and-forget message for EP1, waited for until the extension has it."""
    await call(device.publish, f"kp1/{APP_VERSION}/dcx/{EP1.token}/json", b"{}", qos=1)
    await kaa.await_received("dcx", total_received)


async def events_of(kaa: SimulatedKaa, kind: str, count: int,
                    timeout: float = EVENT_TIMEOUT) -> list[Any]:
    return await kaa.await_events(kind, count, timeout=timeout)


async def assert_no_new_event(kaa: SimulatedKaa, kind: str, seen: int, window: float) -> None:
    with pytest.raises(WaitTimeoutError):
        await kaa.await_events(kind, seen + 1, timeout=window)


def endpoints(events: list[Any]) -> list[dict[str, str]]:
    return [event.endpoints for event in events]


IDLE_1S = {"idle": {"enabled": True, "duration": "1s"}}
GATEWAY_1S = {"on-client-disconnect": False, "idle": {"enabled": True, "duration": "1s"}}


async def test_idle_endpoint_goes_offline_while_its_connection_stays_up(tmp_path, nats_server):
    async with open_setup(tmp_path, nats_server.url, IDLE_1S) as (kaa, port), \
            open_device(port) as device:
        await send(device, kaa, 1)
        [connected] = await events_of(kaa, CONNECTED, 1)
        [disconnected] = await events_of(kaa, DISCONNECTED, 1)
        assert device.client.is_connected()
        await send(device, kaa, 2)  # acknowledged: the MQTT connection is still served
        reconnected = await events_of(kaa, CONNECTED, 2)
    assert isinstance(disconnected, records.DisconnectedEvent)
    assert connected.endpoints == disconnected.endpoints == {EP1.endpoint_id: APP_VERSION}
    assert endpoints(reconnected) == [{EP1.endpoint_id: APP_VERSION}] * 2


async def test_with_both_settings_closing_the_client_disconnects_at_once(tmp_path, nats_server):
    idle_long = {"idle": {"enabled": True, "duration": "60s"}}
    async with open_setup(tmp_path, nats_server.url, idle_long) as (kaa, port):
        async with open_device(port) as device:
            await send(device, kaa, 1)
            await events_of(kaa, CONNECTED, 1)
        [disconnected] = await events_of(kaa, DISCONNECTED, 1, PROMPT_TIMEOUT)
    assert disconnected.endpoints == {EP1.endpoint_id: APP_VERSION}


async def test_without_on_client_disconnect_the_endpoint_outlives_its_client_until_idle(
    tmp_path, nats_server,
):
    async with open_setup(tmp_path, nats_server.url, GATEWAY_1S) as (kaa, port):
        async with open_device(port) as device:
            await send(device, kaa, 1)
            await events_of(kaa, CONNECTED, 1)
        await assert_no_new_event(kaa, DISCONNECTED, 0, QUIET_WINDOW)
        [disconnected] = await events_of(kaa, DISCONNECTED, 1)
        await trio.sleep(QUIET_WINDOW)
        later = kaa.events(DISCONNECTED)
    assert disconnected.endpoints == {EP1.endpoint_id: APP_VERSION}
    assert later == [disconnected]  # reported once


async def test_reconnecting_within_the_idle_duration_is_no_new_connection(tmp_path, nats_server):
    # 3 s leaves ample room for close + reconnect + one acknowledged PUBLISH on a loaded machine.
    gateway_3s = {"on-client-disconnect": False, "idle": {"enabled": True, "duration": "3s"}}
    async with open_setup(tmp_path, nats_server.url, gateway_3s) as (kaa, port):
        async with open_device(port) as device:
            await send(device, kaa, 1)
            await events_of(kaa, CONNECTED, 1)
        async with open_device(port) as device:
            await send(device, kaa, 2)
            assert kaa.events(DISCONNECTED) == []  # still within the duration
            await assert_no_new_event(kaa, CONNECTED, 1, QUIET_WINDOW)
            [disconnected] = await events_of(kaa, DISCONNECTED, 1)
            assert device.client.is_connected()
    assert disconnected.endpoints == {EP1.endpoint_id: APP_VERSION}
    assert len(kaa.events(CONNECTED)) == 1


async def test_shutdown_reports_endpoints_kept_online_after_their_client_left(
    tmp_path, nats_server,
):
    gateway_60s = {"on-client-disconnect": False, "idle": {"enabled": True, "duration": "60s"}}
    async with open_kaa(nats_server.url) as kaa:
        config = disconnect_config(tmp_path, nats_server.url, kaa.kpc_instance, gateway_60s)
        async with open_kpc(config) as kpc:
            async with open_device(kpc.ports["mqtt_tcp"]) as device:
                await send(device, kaa, 1)
                await events_of(kaa, CONNECTED, 1)
            await assert_no_new_event(kaa, DISCONNECTED, 0, QUIET_WINDOW)
        # The KPC has stopped: no replica is left to report this endpoint offline later.
        [disconnected] = await events_of(kaa, DISCONNECTED, 1, PROMPT_TIMEOUT)
    assert disconnected.endpoints == {EP1.endpoint_id: APP_VERSION}
