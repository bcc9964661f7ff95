"""9/ELCE connectivity events: `ConnectedEvent` and `DisconnectedEvent` published on NATS.

This module only publishes the `Change`s the endpoint lifecycle (`kaa.endpoints`) decided. One
event carries every endpoint of a change at once (a gateway's disconnect is one
`DisconnectedEvent`, RFC 9).

Events survive NATS outages: changes wait in a bounded queue, coalesced per endpoint (a newer
state replaces the queued one of the same endpoint, and takes its place at the end, so the last
state wins and order is kept), and a publisher task hands them to NATS with confirmation, in
order, as soon as NATS is there; each change is still one event. A full queue drops its oldest
entry and counts it.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import Callable, Mapping

import trio

from kpc_trio.kaa import records, subjects
from kpc_trio.kaa.endpoints import Change
from kpc_trio.logs import get_logger
from kpc_trio.nats.gateway import (
    MessageRejectedError,
    NatsPort,
    NatsUnavailableError,
    OutboundMessage,
)

log = get_logger(__name__)

#: Endpoints named by one event at most: a large change is split so each event stays well below
#: NATS's max_payload (ids are tens of bytes).
MAX_ENDPOINTS_PER_EVENT = 5_000


class ConnectivityEvents:
    def __init__(self, gateway: NatsPort, *, kpc_instance: str, replica_id: str,
                 max_queued: int = 100_000,
                 on_dropped: Callable[[int], None] | None = None) -> None:
        self._gateway = gateway
        self._replica_id = replica_id
        self._connected_subject = subjects.connected_event(kpc_instance)
        self._disconnected_subject = subjects.disconnected_event(kpc_instance)
        self._id_prefix = f"{replica_id}-ev-{os.urandom(4).hex()}-"
        self._ids = itertools.count()
        # endpoint id -> (change number, connected, appversion), in the order of the changes
        self._queued: collections.OrderedDict[str, tuple[int, bool, str]] = (
            collections.OrderedDict())
        self._changes = itertools.count()
        self._max_queued = max_queued
        self._on_dropped = on_dropped
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._sending = 0  # endpoints of the events handed to NATS, not confirmed yet
        self.dropped = 0

    @property
    def queued(self) -> int:
        """Endpoints whose event NATS has not confirmed yet."""
        return len(self._queued) + self._sending

    def publish(self, change: Change) -> None:
        """Queue the change's events (never blocks); the publisher task sends them."""
        if not change:
            return
        queued = self._queued
        number = next(self._changes)
        for connected, endpoints in ((True, change.connected), (False, change.disconnected)):
            for endpoint_id, app_version in endpoints.items():
                queued.pop(endpoint_id, None)
                queued[endpoint_id] = (number, connected, app_version)
        overflow = len(queued) - self._max_queued
        if overflow > 0:
            for _ in range(overflow):
                queued.popitem(last=False)
            self.dropped += overflow
            if self._on_dropped is not None:
                self._on_dropped(overflow)
            log.warning("connectivity_events_dropped", reason="queue_full", endpoints=overflow,
                        limit=self._max_queued)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def flushed(self) -> None:
        """Return once every queued event was confirmed by NATS (shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        """The publisher task: until cancelled, send what is queued, in order."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queued:
                self._sending = len(self._queued)
                messages = self._take()
                try:
                    await self._gateway.publish_confirmed(messages)
                except (MessageRejectedError, NatsUnavailableError) as exc:
                    log.warning("connectivity_events_lost", reason=str(exc),
                                events=len(messages))
                finally:
                    self._sending = 0
            self._idle.set()

    def _take(self) -> list[OutboundMessage]:
        """Everything queued as events: what is left of each change is one event per kind."""
        messages = []
        run: dict[str, str] = {}
        run_kind = (-1, True)
        while self._queued:
            endpoint_id, (number, connected, app_version) = self._queued.popitem(last=False)
            if run and ((number, connected) != run_kind or len(run) >= MAX_ENDPOINTS_PER_EVENT):
                messages.append(self._event(run_kind[1], run))
                run = {}
            run_kind = (number, connected)
            run[endpoint_id] = app_version
        messages.append(self._event(run_kind[1], run))
        return messages

    def _event(self, connected: bool, endpoints: Mapping[str, str]) -> OutboundMessage:
        record_type = records.ConnectedEvent if connected else records.DisconnectedEvent
        event = record_type(
            correlation_id=f"{self._id_prefix}{next(self._ids)}",
            timestamp=int(time.time() * 1000),
            timeout=0,
            endpoints=dict(endpoints),
            originator_replica_id=self._replica_id,
        )
        subject = self._connected_subject if connected else self._disconnected_subject
        return OutboundMessage(subject, records.encode(event))
