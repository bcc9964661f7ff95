"""9/ELCE connectivity events: `ConnectedEvent` and `DisconnectedEvent` published on NATS.

One event carries every endpoint of a client connection that changed state at once (a gateway's
disconnect is one `DisconnectedEvent`, RFC 9).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.nats.gateway import NatsGateway, OutboundMessage

log = get_logger(__name__)


class ConnectivityEvents:
    def __init__(self, gateway: NatsGateway, *, kpc_instance: str, replica_id: str) -> None:
        self._gateway = gateway
        self._replica_id = replica_id
        self._connected_subject = subjects.connected_event(kpc_instance)
        self._disconnected_subject = subjects.disconnected_event(kpc_instance)
        self._id_prefix = f"{replica_id}-ev-{os.urandom(4).hex()}-"
        self._ids = itertools.count()

    def connected(self, endpoints: Mapping[str, str]) -> None:
        """Endpoints (id -> appversion name) first identified on a session."""
        self._publish(self._connected_subject, records.ConnectedEvent, endpoints)

    def disconnected(self, endpoints: Mapping[str, str]) -> None:
        self._publish(self._disconnected_subject, records.DisconnectedEvent, endpoints)

    def _publish(self, subject: str, record_type: type, endpoints: Mapping[str, str]) -> None:
        if not endpoints:
            return
        event = record_type(
            correlation_id=f"{self._id_prefix}{next(self._ids)}",
            timestamp=int(time.time() * 1000),
            timeout=0,
            endpoints=dict(endpoints),
            originator_replica_id=self._replica_id,
        )
        if not self._gateway.publish_nowait(OutboundMessage(subject, records.encode(event))):
            log.warning("connectivity_event_dropped", subject=subject, endpoints=len(endpoints))
