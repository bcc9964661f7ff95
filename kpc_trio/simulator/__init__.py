"""The Kaa services on the other side of NATS, simulated for tests and `kpc-trio demo`."""

from kpc_trio.simulator.credentials import BasicCredentials, CertificateCredentials
from kpc_trio.simulator.demo import DEMO_ENDPOINTS, run_demo_side, run_reboot_pushes
from kpc_trio.simulator.events import EndpointEvent, UnknownEventError
from kpc_trio.simulator.extension import ExtensionBehaviour, ReplyPayload
from kpc_trio.simulator.kaa_side import SimulatedKaa, SimulatorError, open_simulated_kaa
from kpc_trio.simulator.recording import WaitTimeoutError
from kpc_trio.simulator.token_provider import INVALID_TOKEN_REASON, EndpointRecord

__all__ = [
    "BasicCredentials",
    "CertificateCredentials",
    "DEMO_ENDPOINTS",
    "INVALID_TOKEN_REASON",
    "EndpointEvent",
    "EndpointRecord",
    "ExtensionBehaviour",
    "ReplyPayload",
    "SimulatedKaa",
    "SimulatorError",
    "UnknownEventError",
    "WaitTimeoutError",
    "open_simulated_kaa",
    "run_demo_side",
    "run_reboot_pushes",
]
