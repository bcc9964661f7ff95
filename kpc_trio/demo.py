"""`kpc-trio demo`: KPC + embedded NATS + a simulated Kaa side, for a first round trip.

The simulated side knows three endpoint tokens (`demo-token-1..3`), answers every request of the
echo extensions with the request's payload, and periodically pushes a `cex` `/command/reboot` to
every connected endpoint, so a device that never subscribed still sees pushes arrive.
"""

from __future__ import annotations

import time

import attrs
import trio

from kpc_trio.config import Config
from kpc_trio.embedded_nats import open_embedded_nats
from kpc_trio.kaa import records
from kpc_trio.logs import get_logger
from kpc_trio.service import open_kpc
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from kpc_trio.simulator.token_provider import EndpointRecord

log = get_logger(__name__)

DEMO_APP = "demo_application"
DEMO_APP_VERSION = "demo_application_v1"
DEMO_EXTENSIONS = ("dcx", "epmx", "cmx", "cex", "tsx")
DEMO_ENDPOINTS = tuple(
    EndpointRecord(app_name=DEMO_APP, token=f"demo-token-{n}", endpoint_id=f"demo-endpoint-{n}",
                   token_id=f"demo-token-id-{n}")
    for n in (1, 2, 3)
)


async def run_demo(config: Config, push_interval: float) -> None:
    async with open_embedded_nats() as nats_url:
        config = attrs.evolve(config, nats=attrs.evolve(config.nats, urls=nats_url))
        async with open_simulated_kaa(
            nats_url, endpoints=DEMO_ENDPOINTS, echo_extensions=DEMO_EXTENSIONS,
            kpc_instance=config.service.instance.name,
        ) as kaa, open_kpc(config) as kpc:
            port = kpc.ports.get("mqtt_tcp")
            token = DEMO_ENDPOINTS[0].token
            log.info(
                "demo_ready",
                hint=f"mosquitto_pub -h 127.0.0.1 -p {port} -q 1 "
                f"-t kp1/{DEMO_APP_VERSION}/dcx/{token}/json/42 -m '{{\"temperature\":23}}'",
                tokens=",".join(e.token for e in DEMO_ENDPOINTS),
            )
            with trio.open_signal_receiver(*_signals()) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_push_commands, kaa, push_interval)
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()


def _signals() -> tuple[int, ...]:
    import signal

    return (signal.SIGINT, signal.SIGTERM)


async def _push_commands(kaa: SimulatedKaa, interval: float) -> None:
    """Push a reboot command to each endpoint the events say is online."""
    while True:
        await trio.sleep(interval)
        for endpoint_id, app_version in kaa.online_endpoints().items():
            push = records.ExtensionData(
                correlation_id=f"demo-push-{time.monotonic_ns()}",
                timestamp=int(time.time() * 1000),
                timeout=0,
                app_version_name=app_version,
                extension_instance_name="cex",
                endpoint_id=endpoint_id,
                resource_path="/command/reboot",
                request_id=None,
                payload=b'[{"id":1,"payload":{"delay":0}}]',
                status_code=200,
            )
            await trio.to_thread.run_sync(kaa.push, "cex", push)
