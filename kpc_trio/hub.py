"""The replica's routing table: which session holds which client id and which endpoint.

Pure bookkeeping (no I/O, no trio): sessions register here and the NATS side looks sessions up
here to deliver `ExtensionData`. The last session that used an endpoint wins (roaming), and the
newest connection with a client id takes the id over from the older one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

import attrs

S = TypeVar("S")


@attrs.frozen
class UnawareRequestKey:
    """A pending request to an endpoint-unaware extension (no endpoint id to route on)."""

    app_version: str
    extension: str
    request_id: int


class Hub(Generic[S]):
    def __init__(self, *, max_pending_unaware: int = 10_000) -> None:
        self._clients: dict[str, S] = {}
        self._endpoints: dict[str, S] = {}
        self._unaware: OrderedDict[UnawareRequestKey, S] = OrderedDict()
        self._max_pending_unaware = max_pending_unaware

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
    def bind_endpoint(self, endpoint_id: str, session: S) -> S | None:
        """Route `endpoint_id` to `session`; return the session it roamed from, if any."""
        previous = self._endpoints.get(endpoint_id)
        self._endpoints[endpoint_id] = session
        return previous if previous is not session else None

    def unbind_endpoint(self, endpoint_id: str, session: S | None = None) -> bool:
        """Forget the route; with `session`, only if that session still holds it."""
        current = self._endpoints.get(endpoint_id)
        if current is None or (session is not None and current is not session):
            return False
        del self._endpoints[endpoint_id]
        return True

    def session_for_endpoint(self, endpoint_id: str) -> S | None:
        return self._endpoints.get(endpoint_id)

    # --- endpoint-unaware requests ----------------------------------------------------------
    def expect_unaware_reply(self, key: UnawareRequestKey, session: S) -> None:
        self._unaware[key] = session
        self._unaware.move_to_end(key)
        while len(self._unaware) > self._max_pending_unaware:
            self._unaware.popitem(last=False)

    def take_unaware_reply(self, key: UnawareRequestKey) -> S | None:
        return self._unaware.pop(key, None)

    def forget_session(self, session: S) -> None:
        """Drop every pending unaware request of a closed session."""
        for key in [k for k, s in self._unaware.items() if s is session]:
            del self._unaware[key]

    # --- introspection (metrics, leak checks in tests) --------------------------------------
    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def endpoint_count(self) -> int:
        return len(self._endpoints)

    @property
    def pending_unaware_count(self) -> int:
        return len(self._unaware)
