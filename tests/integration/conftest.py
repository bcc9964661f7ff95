"""Every integration test fails when the service logged an internal error. The simulated Kaa and
a KPC with the default configuration, for the modules that need no other."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from tests.integration.internal_errors import no_internal_error
from tests.integration.kpc_harness import ENDPOINTS, make_config

__all__ = ["no_internal_error"]


@pytest.fixture
def echo_extensions() -> tuple[str, ...]:
    """The extensions the simulated Kaa answers; a module overrides this fixture to name others."""
    return ("dcx",)


@pytest.fixture
async def kaa(nats_server, echo_extensions: tuple[str, ...]) -> AsyncIterator[SimulatedKaa]:
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS,
                                  echo_extensions=echo_extensions) as kaa:
        yield kaa


@pytest.fixture
async def kpc(nats_server, tmp_path, kaa) -> AsyncIterator[KpcService]:
    async with open_kpc(make_config(tmp_path, nats_server.url)) as service:
        yield service
