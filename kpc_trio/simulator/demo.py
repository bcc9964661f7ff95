"""The Kaa side of `kpc-trio demo`: simulated services plus a periodic command push.

Every ClientData received, reply sent and push made is logged by the services (`sim_*` events),
so the demo output shows both directions of the 1/KP <-> 4/ESP relay.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from typing import NoReturn

import trio

from kpc_trio.config import Config
from kpc_trio.kaa import records
from kpc_trio.logs import get_logger
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from kpc_trio.simulator.service import now_ms
from kpc_trio.simulator.tekton import SimulatedKeycloak, SimulatedTekton
from kpc_trio.simulator.token_provider import EndpointRecord

log = get_logger(__name__)

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
#: Seconds after which `demo --tekton` adds an appversion in Tekton and announces it.
TEKTON_CHANGE_AFTER = 3.0
DEMO_CLIENT_SECRET = "demo-secret"


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


def seeded_tekton(config: Config) -> SimulatedTekton:
    """A simulated Tekton (with Keycloak) holding the file's applications, as the Kaa 1.1
    migration script would have moved them."""
    tekton = SimulatedTekton(
        keycloak=SimulatedKeycloak(clients={config.kaa.oauth2.client_id: DEMO_CLIENT_SECRET}),
        provider=config.kaa.scmp.consumer.provider.service_instance.name)
    for app_name, application in config.kaa.applications.items():
        tekton.create_application(app_name)
        for version_name, version in application.versions.items():
            tekton.create_app_version(app_name, version_name, {
                "allowed-extension-instances": list(version.allowed_extension_instances)})
    return tekton


async def run_tekton_change(tekton: SimulatedTekton) -> None:
    """Task body: after a while, add the next version of the first application's first
    appversion (`..._v1` -> `..._v2`) and announce it (17/SCMP), as creating a version in the
    Web Dashboard would."""
    await trio.sleep(TEKTON_CHANGE_AFTER)
    app_name, application = next(iter(tekton.applications.items()))
    version, config = next(iter(application.versions.items()))
    following = re.sub(r"\d+$", lambda number: str(int(number[0]) + 1), version)
    following = following if following != version else f"{version}-2"
    tekton.create_app_version(app_name, following, config)
    await tekton.announce("upsert", app_name, following)
    log.info("demo_tekton_change", app_name=app_name, added=following)


async def run_demo_side(
    nats_url: str,
    *,
    endpoints: Iterable[EndpointRecord] = DEMO_ENDPOINTS,
    push_interval: float = 10.0,
    kpc_instance: str = "kpc",
    token_provider: str = "cm",
    tekton: SimulatedTekton | None = None,
) -> NoReturn:
    """Task body: serve the simulated Kaa services with reboot pushes until cancelled; with
    `tekton`, also publish its 17/SCMP events and make one change in it."""
    async with open_simulated_kaa(
        nats_url,
        token_provider=token_provider,
        endpoints=endpoints,
        echo_extensions=DEMO_EXTENSIONS,
        kpc_instance=kpc_instance,
    ) as kaa, trio.open_nursery() as nursery:
        if tekton is not None:
            tekton.publish = kaa.publish
            nursery.start_soon(run_tekton_change, tekton)
        await run_reboot_pushes(kaa, push_interval)
