"""The Kaa side of `kpc-trio demo`: simulated services plus a periodic command push.

Every ClientData received, reply sent and push made is logged by the services (`sim_*` events),
so the demo output shows both directions of the 1/KP <-> 4/ESP relay.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import NoReturn

import trio

from kpc_trio.kaa import records
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from kpc_trio.simulator.service import now_ms
from kpc_trio.simulator.token_provider import EndpointRecord

# The endpoint of the spec's scenarios (section 10).
DEMO_ENDPOINTS = (
    EndpointRecord(
        app_name="demo_application",
        token="JTjdbENzHh",
        endpoint_id="7ad263ec-3347-4c7d-af89-50c67061367a",
        token_id="t1",
    ),
)
DEMO_EXTENSIONS = ("dcx", "epmx", "cmx", "cex", "tsx")


def reboot_command(command_id: int, endpoint_id: str, app_version: str) -> records.ExtensionData:
    """A CEX `reboot` command push (11/CEP, scenario S6)."""
    return records.ExtensionData(
        correlation_id=f"demo-reboot-{command_id}",
        timestamp=now_ms(),
        timeout=0,
        app_version_name=app_version,
        extension_instance_name="cex",
        endpoint_id=endpoint_id,
        resource_path="/command/reboot",
        request_id=None,
        payload=json.dumps([{"id": command_id, "payload": {}}]).encode(),
        status_code=200,
    )


async def run_reboot_pushes(kaa: SimulatedKaa, push_interval: float) -> NoReturn:
    """Task body: every `push_interval` seconds push a reboot command to each endpoint that is
    online per the connected events, so a device that never subscribed still sees pushes."""
    command_ids = itertools.count(1)
    while True:
        await trio.sleep(push_interval)
        for endpoint_id, app_version in kaa.online_endpoints().items():
            command = reboot_command(next(command_ids), endpoint_id, app_version)
            await trio.to_thread.run_sync(kaa.push, "cex", command)


async def run_demo_side(
    nats_url: str,
    *,
    endpoints: Iterable[EndpointRecord] = DEMO_ENDPOINTS,
    push_interval: float = 10.0,
    kpc_instance: str = "kpc",
    token_provider: str = "cm",
) -> NoReturn:
    """Task body: serve the simulated Kaa services with reboot pushes until cancelled."""
    async with open_simulated_kaa(
        nats_url,
        token_provider=token_provider,
        endpoints=endpoints,
        echo_extensions=DEMO_EXTENSIONS,
        kpc_instance=kpc_instance,
    ) as kaa:
        await run_reboot_pushes(kaa, push_interval)
