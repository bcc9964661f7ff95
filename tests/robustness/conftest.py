"""A KPC with tight limits (so hostile clients trip them quickly), the simulated Kaa services,
and the leak check every robustness test ends with."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from tests.integration.internal_errors import no_internal_error
from tests.integration.kpc_harness import ENDPOINTS, make_config
from tests.integration.waiting import eventually
from tests.robustness.model_system import ModelSystem, running_system

CONNECT_TIMEOUT = 0.5
MAX_OUTBOX_BYTES = 65_536
MAX_PACKET_SIZE = 16_384

__all__ = ["no_internal_error"]  # autouse: no robustness test may pass with an internal error

LIMITS = {
    "KAA_KPC_TRANSPORTS_MQTT_CONNECT_TIMEOUT": f"{CONNECT_TIMEOUT}s",
    "KAA_KPC_TRANSPORTS_MQTT_MAX_OUTBOX_BYTES": str(MAX_OUTBOX_BYTES),
    "KAA_KPC_TRANSPORTS_MQTT_MAX_PACKET_SIZE": str(MAX_PACKET_SIZE),
}


@pytest.fixture
async def kaa(nats_server) -> AsyncIterator[SimulatedKaa]:
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx", "cex", "tsx")) as kaa:
        yield kaa


@pytest.fixture
def limits() -> dict[str, str]:
    """Environment overrides of the KPC under test; tests override this fixture to add some."""
    return LIMITS


@pytest.fixture
async def kpc(nats_server, tmp_path, kaa, limits) -> AsyncIterator[KpcService]:
    async with open_kpc(make_config(tmp_path, nats_server.url, env=limits)) as service:
        yield service


@pytest.fixture(scope="module")
def model_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelSystem]:
    """`kpc-trio run` with a private nats-server, for the model tests (started once per module:
    a process start costs about a second, and every example cleans up after itself)."""
    with running_system(tmp_path_factory.mktemp("model")) as system:
        yield system


@pytest.fixture
def port(kpc: KpcService) -> int:
    return kpc.ports["mqtt_tcp"]


def task_count() -> int:
    """Every live trio task of this run (KPC's and the test's own)."""
    count, pending = 0, [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        count += 1
        pending.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count


def sample(service: KpcService, name: str, **labels: str) -> float:
    """A sample as the /metrics page renders it (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(service.metrics.render().decode()):
        for metric_sample in family.samples:
            if metric_sample.name == name and metric_sample.labels == labels:
                return metric_sample.value
    return 0.0


async def assert_nothing_left(service: KpcService, baseline_tasks: int) -> None:
    """No session, routing entry, open-connection gauge or task survives the clients.

    The task count is the strongest check (a session's reader, writer or handler task that
    outlives its connection shows up here); the baseline is taken after KPC started and before
    the test's clients, with the test itself not running any task of its own at either point.
    """
    await eventually(lambda: not service.sessions, "all sessions ended")
    await eventually(lambda: task_count() == baseline_tasks,
                     f"task count back to the baseline of {baseline_tasks}")
    assert service.hub.client_count == 0
    assert service.hub.endpoint_count == 0
    assert service.hub.pending_request_count == 0
    assert sample(service, "kpc_connections_open", transport="tcp") == 0
    assert sample(service, "kpc_endpoints_online") == 0
