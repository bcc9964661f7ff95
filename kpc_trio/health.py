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
    #: Subjects of KPC subscriptions the NATS server refused (permissions): KPC cannot work.
    nats_refused_subscriptions: frozenset[str] = frozenset()
    shutting_down: bool = False
    live: bool = True
    #: False only until the first load of applications from Tekton succeeded; later Tekton
    #: outages keep the last good configuration and the instance ready.
    configuration_loaded: bool = True

    @property
    def ready(self) -> bool:
        return (self.nats_connected and not self.nats_refused_subscriptions
                and not self.shutting_down and self.configuration_loaded)

    def not_ready_reasons(self) -> list[str]:
        """Why the instance is not ready; empty exactly when `ready` is true."""
        reasons = []
        if not self.nats_connected:
            reasons.append("nats_disconnected")
        if self.nats_refused_subscriptions:
            reasons.append("nats_subscription_refused")
        if self.shutting_down:
            reasons.append("shutting_down")
        if not self.configuration_loaded:
            reasons.append("configuration_not_loaded")
        return reasons
