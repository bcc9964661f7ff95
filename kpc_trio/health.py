"""Liveness and readiness of one KPC instance, as served on `/health` and `/ready`."""

from __future__ import annotations

import attrs


@attrs.define
class Health:
    """Mutable health flags, flipped by their owners.

    The NATS gateway sets `nats_connected`; the service sets `shutting_down` first thing on
    SIGTERM so Kubernetes stops routing new clients before listeners close; `live` turns false
    only when the process is wedged and a restart is the remedy.
    """

    nats_connected: bool = False
    shutting_down: bool = False
    live: bool = True
    #: False only until the first load of applications from Tekton succeeded; later Tekton
    #: outages keep the last good configuration and the instance ready.
    configuration_loaded: bool = True

    @property
    def ready(self) -> bool:
        return self.nats_connected and not self.shutting_down and self.configuration_loaded

    def not_ready_reasons(self) -> list[str]:
        """Why the instance is not ready; empty exactly when `ready` is true."""
        reasons = []
        if not self.nats_connected:
            reasons.append("nats_disconnected")
        if self.shutting_down:
            reasons.append("shutting_down")
        if not self.configuration_loaded:
            reasons.append("configuration_not_loaded")
        return reasons
