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

S = TypeVar("S", bound=Holder)


#: Request ids KPC gives endpoint-unaware requests on NATS: below the HTTP transport's
#: (`http_transport.HTTP_REQUEST_ID_BASE`), so a reply is never taken for the other kind.
UNAWARE_REQUEST_ID_LIMIT = 1 << 30


@attrs.frozen
class UnawareRequest(Generic[S]):
    """A request to an endpoint-unaware extension waiting for its reply (no endpoint id in
    `ExtensionData` to route it on): who asked, and the request id the device chose."""

    session: S
    app_version: str
    extension: str
    device_request_id: int
    expires_at: float


class Hub(Generic[S]):
    def __init__(self, *, max_pending_unaware: int = 10_000, unaware_timeout: float = 30.0,
                 policy_of: Callable[[str], DisconnectPolicy] = lambda _: DisconnectPolicy(),
                 http_idle_timeout: float = 300.0) -> None:
        self._clients: dict[str, S] = {}
        self.endpoints = Endpoints[S](policy_of, http_idle_timeout=http_idle_timeout)
        self._unaware: OrderedDict[int, UnawareRequest[S]] = OrderedDict()
        self._max_pending_unaware = max_pending_unaware
        self._unaware_timeout = unaware_timeout
        # A random start: another replica's ids (or this one's before a restart) rarely match.
        start = int.from_bytes(os.urandom(4), "big")
        self._unaware_ids = ((start + n) % UNAWARE_REQUEST_ID_LIMIT for n in itertools.count())

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

    # --- endpoint-unaware requests ----------------------------------------------------------
    # Devices choose request ids themselves (tutorial clients count from 0), so many pending
    # requests share one. Each gets a request id of KPC's own on NATS instead, unique among the
    # pending ones; the reply carries it back and is mapped to the device's id and session.
    # All expire after the same timeout, so the oldest (first in order) expire first. A request
    # without a request id is fire and forget: nothing is remembered, and an extension's reply to
    # it (no endpoint id, no request id) names no device and is dropped as not routed.
    def expect_unaware_reply(self, session: S, app_version: str, extension: str,
                             device_request_id: int, now: float) -> int:
        """Remember a request until `now + unaware_timeout`; return the request id to put in
        its `ClientData`. Over the bound, the oldest pending request is forgotten."""
        self._expire_unaware(now)
        request_id = next(self._unaware_ids)
        while request_id in self._unaware:  # only after 2^30 requests, with one still pending
            request_id = next(self._unaware_ids)
        self._unaware[request_id] = UnawareRequest(
            session, app_version, extension, device_request_id, now + self._unaware_timeout)
        while len(self._unaware) > self._max_pending_unaware:
            self._unaware.popitem(last=False)
        return request_id

    def take_unaware_reply(self, app_version: str, extension: str, request_id: int,
                           now: float) -> UnawareRequest[S] | None:
        """The pending request a reply with KPC's `request_id` answers, if it did not expire."""
        self._expire_unaware(now)
        pending = self._unaware.get(request_id)
        if pending is None or pending.extension != extension \
                or pending.app_version != app_version:
            return None
        del self._unaware[request_id]
        return pending

    def _expire_unaware(self, now: float) -> None:
        unaware = self._unaware
        while unaware and unaware[next(iter(unaware))].expires_at <= now:
            unaware.popitem(last=False)

    def forget_session(self, session: S) -> None:
        """Drop every pending unaware request of a closed session."""
        for key in [k for k, pending in self._unaware.items() if pending.session is session]:
            del self._unaware[key]

    # --- introspection (metrics, leak checks in tests) --------------------------------------
    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def endpoint_count(self) -> int:
        """Endpoints online on this replica (held by a session or kept until idle)."""
        return self.endpoints.online_count

    @property
    def pending_unaware_count(self) -> int:
        return len(self._unaware)
