"""The replica's routing table: which session holds which client id, and the endpoints.

Pure bookkeeping (no I/O, no trio): sessions register here and the NATS side looks sessions up
here to deliver `ExtensionData`. The newest connection with a client id takes the id over from
the older one. Which session holds an endpoint is the endpoint lifecycle's (`endpoints`, one
`kaa.endpoints.Endpoints`), reached through the hub.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

from kpc_trio.kaa.endpoints import DisconnectPolicy, Endpoints, Holder
from kpc_trio.mqtt.packets import QoS

S = TypeVar("S", bound=Holder)


#: Request ids KPC gives MQTT requests on NATS: below the HTTP transport's
#: (`http_transport.HTTP_REQUEST_ID_BASE`), so a reply is never taken for the other kind.
REQUEST_ID_LIMIT = 1 << 30


#: KPC's request id (endpoint-unaware), or (endpoint id, extension, the device's request id).
PendingKey = int | tuple[str, str, int]


@attrs.frozen
class PendingRequest(Generic[S]):
    """A request waiting for its reply: who asked, on which topic, the request id the device
    chose and the QoS its reply goes out with (the request's). The reply goes back to the
    connection that asked even when the endpoint moved to another one meanwhile (design
    property 5: routed by what is unique to the request)."""

    session: S
    app_version: str
    extension: str
    endpoint_id: str | None  # None: an endpoint-unaware request
    token: str | None  # of the request's topic, for the response topic
    device_request_id: int
    expires_at: float
    qos: QoS = QoS.AT_MOST_ONCE


class Hub(Generic[S]):
    def __init__(self, *, max_pending_requests: int = 10_000, request_timeout: float = 30.0,
                 policy_of: Callable[[str], DisconnectPolicy] = lambda _: DisconnectPolicy(),
                 http_idle_timeout: float = 300.0) -> None:
        self._clients: dict[str, S] = {}
        self.endpoints = Endpoints[S](policy_of, http_idle_timeout=http_idle_timeout)
        self._pending: OrderedDict[PendingKey, PendingRequest[S]] = OrderedDict()
        self._max_pending_requests = max_pending_requests
        self._request_timeout = request_timeout
        # A random start: another replica's ids (or this one's before a restart) rarely match.
        start = int.from_bytes(os.urandom(4), "big")
        self._request_ids = ((start + n) % REQUEST_ID_LIMIT for n in itertools.count())

    # --- client ids -------------------------------------------------------------------------
    def claim_client_id(self, client_id: str, session: S) -> S | None:
        """Register `session` under `client_id`; return the session it takes over from, if any."""
        previous = self._clients.get(client_id)
        self._clients[client_id] = session
        return previous if previous is not session else None

    def release_client_id(self, client_id: str, session: S) -> None:
        if self._clients.get(client_id) is session:
            del self._clients[client_id]

    # --- endpoints --------------------------------------------------------------------------
    def session_for_endpoint(self, endpoint_id: str) -> S | None:
        return self.endpoints.holder_of(endpoint_id)

    # --- requests waiting for their reply ----------------------------------------------------
    # A reply goes back to the connection that sent the request (design property 5), also
    # when its endpoint moved to another connection meanwhile.
    # - Endpoint-unaware requests have no endpoint id to route on, and devices choose request ids
    #   themselves (tutorial clients count from 0), so many pending requests share one. Each gets
    #   a request id of KPC's own on NATS instead, unique among the pending ones; the reply
    #   carries it back and is mapped to the device's id and connection.
    # - Endpoint-aware requests keep the device's request id on NATS (an extension answering on
    #   the service-wide subject may reach another replica, which routes by endpoint): the
    #   request is remembered under (endpoint, extension, request id).
    # All expire after the same timeout, so the oldest (first in order) expire first. A request
    # without a request id is fire and forget: nothing is remembered, and an extension's reply to
    # it (no endpoint id, no request id) names no device and is dropped as not routed.
    def expect_reply(self, session: S, app_version: str, extension: str,
                     device_request_id: int, now: float, *, endpoint_id: str | None = None,
                     token: str | None = None, qos: QoS = QoS.AT_MOST_ONCE) -> int:
        """Remember a request until `now + request_timeout`; return the request id to put in
        its `ClientData`. Over the bound, the oldest pending request is forgotten."""
        self._expire_requests(now)
        key: PendingKey
        if endpoint_id is None:
            request_id = key = next(self._request_ids)
            while key in self._pending:  # only after 2^30 requests, with one still pending
                request_id = key = next(self._request_ids)
        else:
            request_id = device_request_id
            key = (endpoint_id, extension, device_request_id)
            self._pending.pop(key, None)  # asked again: the newest asker, last in order
        self._pending[key] = PendingRequest(
            session, app_version, extension, endpoint_id, token, device_request_id,
            now + self._request_timeout, qos)
        while len(self._pending) > self._max_pending_requests:
            self._pending.popitem(last=False)
        return request_id

    def take_reply(self, app_version: str, extension: str, request_id: int, now: float, *,
                   endpoint_id: str | None = None) -> PendingRequest[S] | None:
        """The pending request a reply with `request_id` answers, if it did not expire."""
        self._expire_requests(now)
        key: PendingKey = request_id if endpoint_id is None else (
            endpoint_id, extension, request_id)
        pending = self._pending.get(key)
        if pending is None or pending.extension != extension \
                or pending.app_version != app_version:
            return None
        del self._pending[key]
        return pending

    def _expire_requests(self, now: float) -> None:
        pending = self._pending
        while pending and pending[next(iter(pending))].expires_at <= now:
            pending.popitem(last=False)

    def awaiting_replies(self, now: float) -> int:
        """Requests relayed whose reply is still expected (a graceful shutdown waits for them)."""
        self._expire_requests(now)
        return len(self._pending)

    def forget_session(self, session: S) -> None:
        """Drop every pending request of a closed session."""
        for key in [k for k, pending in self._pending.items() if pending.session is session]:
            del self._pending[key]

    # --- introspection (metrics, leak checks in tests) --------------------------------------
    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def endpoint_count(self) -> int:
        """Endpoints online on this replica (held by a session or kept until idle)."""
        return self.endpoints.online_count

    @property
    def pending_request_count(self) -> int:
        return len(self._pending)
