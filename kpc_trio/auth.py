"""Endpoint token validation over NATS (16/ECAP `ep-token-request`), cached and coalesced.

Concurrent validations of one (application, token) share one NATS request, and that request
belongs to the resolver's own task tree (`run`), not to the first session that asked: a session
cancelled meanwhile (takeover, disconnect) cannot take the answer away from the others. Results
are cached: positive ones for `ttl`, negative ones for `negative_ttl`.
"""

from __future__ import annotations

import math
import time

import attrs
import trio

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.metrics import Metrics
from kpc_trio.nats.gateway import NatsPort
from kpc_trio.nats.requests import (
    CorrelatedRequests,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
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


Validation = EndpointIdentity | TokenRejected
CacheKey = tuple[str, str]  # (application name, token)

#: Bytes of one cache entry besides the token's characters: dict and queue slots, the entry,
#: the key tuple, the validation and its endpoint and token ids (typical ids, rounded up).
CACHE_ENTRY_OVERHEAD_BYTES = 600
#: How often expired validations are reclaimed when no new validation does it.
CACHE_RECLAIM_INTERVAL = 5.0


def _cache_entry_size(key: CacheKey, value: Validation) -> int:
    return len(key[1]) + CACHE_ENTRY_OVERHEAD_BYTES


UNAVAILABLE = TokenRejected(503, "Endpoint token provider unavailable")
TIMED_OUT = TokenRejected(504, "Endpoint token validation timed out")


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Validation = TIMED_OUT


class EndpointTokenResolver:
    def __init__(
        self,
        gateway: NatsPort,
        *,
        provider: str,
        replica_id: str,
        request_timeout: float,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        metrics: Metrics,
        max_bytes: int | None = None,
    ) -> None:
        self._gateway = gateway
        self._request_subject = subjects.token_request(provider)
        self._requests = CorrelatedRequests(
            gateway,
            reply_subject=subjects.token_response(replica_id),
            response_type=records.EndpointTokenValidationResponse,
            timeout=request_timeout,
            correlation_prefix=f"{replica_id}-tok",
        )
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._cache: TtlCache[CacheKey, Validation] = TtlCache(
            max_entries, max_bytes, _cache_entry_size)
        self._inflight: dict[CacheKey, _Pending] = {}
        self._metrics = metrics
        self._nursery: trio.Nursery | None = None

    @property
    def reply_subject(self) -> str:
        return self._requests.reply_subject

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Task body: consume the provider's replies and own the validations in flight."""
        responses = await self._gateway.subscribe(self._requests.reply_subject)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._requests.run_responses, responses)
            nursery.start_soon(self._reclaim_expired)
            task_status.started()

    async def _reclaim_expired(self) -> None:
        """A burst of distinct tokens (rejected ones, say) must not stay after its TTL."""
        # A short negative TTL (tests, strict setups) is followed closely.
        interval = min(CACHE_RECLAIM_INTERVAL, self._negative_ttl or math.inf,
                       self._ttl or math.inf)
        while True:
            await trio.sleep(interval)
            self._cache.reclaim(trio.current_time())

    def identify_cached(self, app_name: str, token: str,
                        now: float | None = None) -> EndpointIdentity | None:
        """The cached identity of `token`, None on a cache miss (then await `identify`).

        The per-message fast path, so it never awaits: raises TokenValidationError for a cached
        rejection. Callers count the hits and report them in bulk with `record_cache_hits` (a
        metric increment takes a lock). `now` is trio's current time if the caller has it.
        """
        result = self._cache.get((app_name, token), trio.current_time() if now is None else now)
        if isinstance(result, TokenRejected):
            raise TokenValidationError(result.status_code, result.reason_phrase)
        return result

    async def identify(self, app_name: str, token: str) -> EndpointIdentity:
        """Validate `token` of application `app_name` with the provider (a cache miss);
        raises TokenValidationError on rejection."""
        self._metrics.token_cache_misses.inc()
        result = await self._validate((app_name, token))
        if isinstance(result, TokenRejected):
            raise TokenValidationError(result.status_code, result.reason_phrase)
        return result

    @property
    def cache_bytes(self) -> int:
        return self._cache.size_bytes

    def record_cache_hits(self, count: int) -> None:
        self._metrics.token_cache_hits.inc(count)

    async def _validate(self, key: CacheKey) -> Validation:
        pending = self._inflight.get(key)
        if pending is None:
            if not self._gateway.connected or self._nursery is None:
                return UNAVAILABLE  # fail fast during an outage, do not queue requests
            pending = self._inflight[key] = _Pending()
            self._nursery.start_soon(self._request, key, pending)
        await pending.done.wait()
        return pending.result

    async def _request(self, key: CacheKey, pending: _Pending) -> None:
        app_name, token = key
        started = time.perf_counter()
        request = records.EndpointTokenValidationRequest(
            correlation_id=self._requests.next_correlation_id(),
            timestamp=int(time.time() * 1000),
            timeout=int(self._requests.timeout * 1000),
            app_name=app_name,
            token=token,
        )
        try:
            response = await self._requests.request(self._request_subject, request)
        except ProviderUnavailableError:
            pending.result = UNAVAILABLE
        except ProviderTimeoutError as exc:
            log.warning("token_validation_timeout", app_name=app_name, reason=str(exc),
                        correlation_id=request.correlation_id)
        else:
            self._metrics.token_validation_latency.observe(time.perf_counter() - started)
            pending.result = self._validation_of(response)
            ttl = self._ttl if isinstance(pending.result, EndpointIdentity) else self._negative_ttl
            self._cache.put(key, pending.result, ttl, trio.current_time())
        finally:
            del self._inflight[key]
            pending.done.set()

    @staticmethod
    def _validation_of(response: records.EndpointTokenValidationResponse) -> Validation:
        if 200 <= response.status_code < 300 and response.endpoint_id:
            return EndpointIdentity(response.endpoint_id, response.token_id)
        return TokenRejected(
            # A "success" without an endpoint id is the provider's fault, not the client's.
            response.status_code if response.status_code >= 300 else 502,
            response.reason_phrase or "Endpoint token rejected",
        )

    def fail_pending(self) -> None:
        """NATS went away: pending validations answer 503 now (spec: fail fast in an outage)."""
        failed = self._requests.abandon_all()
        if failed:
            log.warning("token_validations_failed", reason="nats_disconnected", count=failed)

    def revoke_tokens(self, app_name: str, token_ids: set[str]) -> int:
        """Evict cached tokens whose token id was revoked; return how many went."""
        return len(self._cache.evict_where(
            lambda key, value: key[0] == app_name
            and isinstance(value, EndpointIdentity)
            and value.token_id in token_ids
        ))

    def forget_application(self, app_name: str) -> int:
        """Evict every cached validation of `app_name` (it left the configuration)."""
        return len(self._cache.evict_where(lambda key, value: key[0] == app_name))
