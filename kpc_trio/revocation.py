"""Revocation events from CM and CCM, decoded and handed to the service (spec 5.7).

Every replica holds different sessions, so each one subscribes without a queue group; the
originator level of the subject is a wildcard because any provider instance may revoke.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.nats.gateway import InboundMessage, NatsPort

log = get_logger(__name__)


class RevocationHandler(Protocol):
    """What the service does about a revocation. Called on the trio thread, one event at a time;
    the calls must not block (evict caches, terminate sessions, publish_nowait)."""

    def on_tokens_revoked(self, app_name: str, endpoint_id: str, token_ids: frozenset[str]) -> None:
        """16/ECAP: the endpoint's tokens `token_ids` of application `app_name` are no longer
        valid; end the endpoint's communication sessions that use them."""

    def on_credentials_revoked(self, credentials_id: str, tenant_id: str | None) -> None:
        """22/CAP basic or certificate credentials (with their tenant) or 16/ECAP client
        credentials (tenant None) were revoked; close every connection authenticated with them."""


RevocationEvent = (
    records.EndpointTokenRevokedEvent
    | records.ClientCredentialsRevokedEvent
    | records.ClientCredentialRevokedEvent
)


@attrs.frozen
class _Subscription:
    subject: str
    record_type: type[RevocationEvent]


_SUBSCRIPTIONS = (
    _Subscription(subjects.token_revoked_wildcard(), records.EndpointTokenRevokedEvent),
    _Subscription(subjects.basic_credentials_revoked_wildcard(),
                  records.ClientCredentialsRevokedEvent),
    _Subscription(subjects.certificate_credentials_revoked_wildcard(),
                  records.ClientCredentialsRevokedEvent),
    _Subscription(subjects.client_credential_revoked_wildcard(),
                  records.ClientCredentialRevokedEvent),
)


class RevocationListener:
    """Subscribes to the revocation subjects and dispatches each event to `handler`.

    Counters: `dispatched` events, `undecodable` ones (logged and skipped, never fatal).
    """

    def __init__(self, handler: RevocationHandler) -> None:
        self._handler = handler
        self.dispatched = 0
        self.undecodable = 0

    async def run(
        self, gateway: NatsPort, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Task body: subscribe to every revocation subject, report started, then dispatch
        events until the gateway closes. Start it with `await nursery.start(listener.run, gw)`
        so no revocation published after startup can be missed."""
        channels = [
            (subscription, await gateway.subscribe(subscription.subject))
            for subscription in _SUBSCRIPTIONS
        ]
        task_status.started()
        async with trio.open_nursery() as nursery:
            for subscription, channel in channels:
                nursery.start_soon(self._dispatch_all, subscription.record_type, channel)

    async def _dispatch_all(
        self,
        record_type: type[RevocationEvent],
        channel: trio.MemoryReceiveChannel[InboundMessage],
    ) -> None:
        async for message in channel:
            try:
                event = records.decode(record_type, message.payload)
            except records.RecordDecodeError as exc:
                self.undecodable += 1
                log.warning("revocation_event_undecodable", subject=message.subject,
                            reason=str(exc))
                continue
            self._dispatch(message.subject, event)

    def _dispatch(self, subject: str, event: RevocationEvent) -> None:
        log.info("revocation_event_received", subject=subject,
                 correlation_id=event.correlation_id, originator=event.originator_replica_id)
        self.dispatched += 1
        if isinstance(event, records.EndpointTokenRevokedEvent):
            self._handler.on_tokens_revoked(event.app_name, event.endpoint_id,
                                            frozenset(event.token_ids))
        elif isinstance(event, records.ClientCredentialsRevokedEvent):
            self._handler.on_credentials_revoked(event.credentials_id, event.tenant_id)
        else:
            self._handler.on_credentials_revoked(event.credential_id, None)
