"""`kpc-trio demo`: KPC + embedded NATS + a simulated Kaa side, for a first round trip.

The simulated side knows the spec's demo endpoint (token `JTjdbENzHh` of `demo_application`),
answers every request of the echo extensions with the request's payload, and periodically pushes a
`cex` `/command/reboot` to every connected endpoint, so a device that never subscribed still sees
pushes arrive.
"""

from __future__ import annotations

import signal

import attrs
import trio

from kpc_trio.config import Config, with_value
from kpc_trio.logs import get_logger
from kpc_trio.nats.embedded import open_embedded_nats
from kpc_trio.service import open_kpc
from kpc_trio.simulator import DEMO_ENDPOINTS, run_demo_side
from kpc_trio.simulator.demo import DEMO_CLIENT_SECRET, seeded_tekton
from kpc_trio.simulator.tekton import TOKEN_PATH

log = get_logger(__name__)


async def run_demo(config: Config, push_interval: float, *, tekton: bool = False) -> None:
    """Run until SIGINT/SIGTERM; with `tekton`, the applications come from a simulated Tekton
    (and Keycloak) seeded with the file's, which adds an appversion after a few seconds."""
    async with open_embedded_nats() as nats_url:
        config = attrs.evolve(config, nats=attrs.evolve(config.nats, urls=nats_url))
        endpoint = DEMO_ENDPOINTS[0]
        app_version = next(iter(config.kaa.applications[endpoint.app_name].versions))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                simulated_tekton = None
                if tekton:
                    simulated_tekton = seeded_tekton(config)
                    url = await nursery.start(simulated_tekton.serve)
                    config = with_tekton(config, url)
                nursery.start_soon(lambda: run_demo_side(
                    nats_url, push_interval=push_interval,
                    kpc_instance=config.service.instance.name,
                    token_provider=config.kaa.kpc.auth.token_provider,
                    tekton=simulated_tekton,
                ))
                async with open_kpc(config) as kpc:
                    log.info(
                        "demo_ready",
                        try_this=f"mosquitto_pub -h 127.0.0.1 -p {kpc.ports['mqtt_tcp']} -q 1 "
                        f"-t kp1/{app_version}/dcx/{endpoint.token}/json/42 "
                        "-m '{\"temperature\":23}'",
                    )
                    async for _ in signals:
                        break
                nursery.cancel_scope.cancel()


def with_tekton(config: Config, url: str) -> Config:
    """`config` reading its applications from the simulated Tekton at `url`."""
    for key, value in (("kaa.tekton.enabled", True), ("kaa.tekton.url", url),
                       ("kaa.applications", {}),  # they are in Tekton now
                       ("kaa.oauth2.token-url", url + TOKEN_PATH),
                       ("kaa.oauth2.client-secret", DEMO_CLIENT_SECRET)):
        config = with_value(config, key, value)
    return config
