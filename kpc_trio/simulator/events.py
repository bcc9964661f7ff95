"""Simulated 9/ELCE listener: decodes the endpoint events KPC broadcasts, for assertions.

It also keeps the set of endpoints currently online, the way the Endpoint Lifecycle service
does, so the demo knows whom to push commands to.
"""

from __future__ import annotations

import threading
from typing import TypeAlias

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.simulator.recording import Recording
from kpc_trio.simulator.service import Spawn, decode_message

log = get_logger(__name__)

EndpointEvent: TypeAlias = (
    records.ConnectedEvent | records.DisconnectedEvent | records.TrafficReportEvent
)


def _event_types(kpc_instance: str) -> dict[str, type[EndpointEvent]]:
    """Subject -> record for the endpoint events KPC broadcasts (spec 4.8)."""
    return {
        subjects.connected_event(kpc_instance): records.ConnectedEvent,
        subjects.disconnected_event(kpc_instance): records.DisconnectedEvent,
        subjects.traffic_report(kpc_instance): records.TrafficReportEvent,
    }


class UnknownEventError(LookupError):
    """Asked for events under a subject suffix the listener does not decode."""


class EventListener:
    """Every replica's endpoint events of one KPC instance (no queue group: broadcast)."""

    def __init__(self, kpc_instance: str) -> None:
        self._types = _event_types(kpc_instance)
        # Assertions name events by what follows `kaa.v1.events.<kpc>.endpoint.`.
        self._prefix = f"kaa.v1.events.{kpc_instance}.endpoint."
        self._events: dict[str, Recording[EndpointEvent]] = {
            subject.removeprefix(self._prefix): Recording(f"{record_type.__name__}s on {subject}")
            for subject, record_type in self._types.items()
        }
        self._online: dict[str, str] = {}
        self._online_lock = threading.Lock()

    def recording(self, subject_suffix: str) -> Recording[EndpointEvent]:
        try:
            return self._events[subject_suffix]
        except KeyError:
            raise UnknownEventError(
                f"no endpoint events under suffix {subject_suffix!r}; "
                f"use one of {sorted(self._events)}"
            ) from None

    def online_endpoints(self) -> dict[str, str]:
        """Endpoint id -> appversion name of every endpoint connected and not yet disconnected."""
        with self._online_lock:
            return dict(self._online)

    def _observe(self, subject: str, event: EndpointEvent) -> None:
        if isinstance(event, records.TrafficReportEvent):
            log.info("sim_traffic_report", subject=subject, originator=event.originator_replica_id)
        else:
            log.info("sim_connectivity_event", subject=subject,
                     originator=event.originator_replica_id, endpoints=event.endpoints)
            with self._online_lock:
                if isinstance(event, records.ConnectedEvent):
                    self._online.update(event.endpoints)
                else:
                    for endpoint_id in event.endpoints:
                        self._online.pop(endpoint_id, None)
        self._events[subject.removeprefix(self._prefix)].append(event)

    async def attach(self, nc: NatsClient, spawn: Spawn) -> None:
        async def on_event(msg: Msg) -> None:
            record_type = self._types.get(msg.subject)
            if record_type is None:
                log.warning("sim_unknown_endpoint_event", subject=msg.subject)
                return
            event = decode_message(record_type, msg)
            if event is not None:
                self._observe(msg.subject, event)

        # One wildcard subscription also surfaces event types KPC should not send (logged).
        await nc.subscribe(f"{self._prefix}>", cb=on_event)
