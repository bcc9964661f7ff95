"""Endpoint token validation over NATS (16/ECAP `ep-token-request`), cached and coalesced.

One task (`run_responses`) consumes the replica's `ep-token-response` subject and completes the
waiting validation by correlation id. Concurrent validations of one (application, token) share one
NATS request. Results are cached: positive ones for `ttl`, negative ones for `negative_ttl`.
"""

from __future__ import annotations

import itertools
import os
import time

import attrs
import trio

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.metrics import Metrics
from kpc_trio.nats_gateway import InboundMessage, NatsGateway, OutboundMessage
from kpc_trio.token_cache import TtlCache

log = get_logger(__name__)


@attrs.frozen
class EndpointIdentity:
    endpoint_id: str
    token_id: str | None


@attrs.frozen
class TokenRejected:
    """The provider's negative answer, also what KPC publishes on `/error`."""

    status_code: int
    reason_phrase: str


class TokenValidationError(Exception):
    def __init__(self, status_code: int, reason_phrase: str) -> None:
        super().__init__(f"{status_code} {reason_phrase}")
        self.status_code = status_code
        self.reason_phrase = reason_phrase


@attrs.define
class _PendingValidation:
    correlation_id: str
    done: trio.Event = attrs.field(factory=trio.Event)
    result: EndpointIdentity | TokenRejected | None = None


CacheKey = tuple[str, str]  # (application name, token)


class EndpointTokenResolver:
    def __init__(
        self,
        gateway: NatsGateway,
        *,
        provider: str,
        replica_id: str,
        request_timeout: float,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        metrics: Metrics,
    ) -> None:
        self._gateway = gateway
        self._request_subject = subjects.token_request(provider)
        self._reply_subject = subjects.token_response(replica_id)
        self._timeout = request_timeout
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._cache: TtlCache[CacheKey, EndpointIdentity | TokenRejected] = TtlCache(max_entries)
        self._inflight: dict[CacheKey, _PendingValidation] = {}
        self._by_correlation: dict[str, _PendingValidation] = {}
        self._ids = itertools.count()
        self._id_prefix = f"{replica_id}-tok-{os.urandom(4).hex()}"
        self._metrics = metrics

    @property
    def reply_subject(self) -> str:
        return self._reply_subject

    def cached(self, app_name: str, token: str) -> EndpointIdentity | TokenRejected | None:
        """The cached answer for this token, if any: the fast path that never awaits."""
        result = self._cache.get((app_name, token), trio.current_time())
        if result is not None:
            self._metrics.token_cache_hits.inc()
        return result

    async def resolve(self, app_name: str, token: str) -> EndpointIdentity:
        """Validate `token` of application `app_name`; raise TokenValidationError on rejection."""
        result = self.cached(app_name, token)
        if result is None:
            self._metrics.token_cache_misses.inc()
            result = await self._validate(app_name, token)
        if isinstance(result, TokenRejected):
            raise TokenValidationError(result.status_code, result.reason_phrase)
        return result

    async def _validate(self, app_name: str, token: str) -> EndpointIdentity | TokenRejected:
        key = (app_name, token)
        pending = self._inflight.get(key)
        if pending is None:
            if not self._gateway.connected:
                return TokenRejected(503, "Endpoint token provider unavailable")
            pending = _PendingValidation(f"{self._id_prefix}-{next(self._ids)}")
            self._inflight[key] = pending
            self._by_correlation[pending.correlation_id] = pending
            started = time.perf_counter()
            try:
                return await self._request(key, pending, started)
            finally:
                del self._inflight[key]
                self._by_correlation.pop(pending.correlation_id, None)
        with trio.move_on_after(self._timeout):
            await pending.done.wait()
        return pending.result or TokenRejected(504, "Endpoint token validation timed out")

    async def _request(
        self, key: CacheKey, pending: _PendingValidation, started: float
    ) -> EndpointIdentity | TokenRejected:
        app_name, token = key
        request = records.EndpointTokenValidationRequest(
            correlation_id=pending.correlation_id,
            timestamp=int(time.time() * 1000),
            timeout=int(self._timeout * 1000),
            app_name=app_name,
            token=token,
        )
        sent = self._gateway.publish_nowait(
            OutboundMessage(self._request_subject, records.encode(request), self._reply_subject)
        )
        if not sent:
            return TokenRejected(503, "Endpoint token provider unavailable")
        with trio.move_on_after(self._timeout):
            await pending.done.wait()
        self._metrics.token_validation_latency.observe(time.perf_counter() - started)
        if pending.result is None:
            log.warning("token_validation_timeout", app_name=app_name,
                        correlation_id=pending.correlation_id)
            return TokenRejected(504, "Endpoint token validation timed out")
        now = trio.current_time()
        if isinstance(pending.result, EndpointIdentity):
            self._cache.put(key, pending.result, self._ttl, now)
        else:
            self._cache.put(key, pending.result, self._negative_ttl, now)
        return pending.result

    async def run_responses(self, responses: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Task body: complete pending validations from the replica's response subject."""
        async for message in responses:
            try:
                response = records.decode(records.EndpointTokenValidationResponse, message.payload)
            except records.RecordDecodeError as exc:
                log.warning("token_response_undecodable", reason=str(exc))
                continue
            pending = self._by_correlation.pop(response.correlation_id, None)
            if pending is None:
                log.debug("token_response_unmatched", correlation_id=response.correlation_id)
                continue
            if 200 <= response.status_code < 300 and response.endpoint_id:
                pending.result = EndpointIdentity(response.endpoint_id, response.token_id)
            else:
                pending.result = TokenRejected(
                    response.status_code if response.status_code >= 300 else 502,
                    response.reason_phrase or "Endpoint token rejected",
                )
            pending.done.set()

    def revoke_tokens(self, app_name: str, token_ids: set[str]) -> int:
        """Evict cached tokens whose token id was revoked; return how many went."""
        return len(self._cache.evict_where(
            lambda key, value: key[0] == app_name
            and isinstance(value, EndpointIdentity)
            and value.token_id in token_ids
        ))
