"""Admission control: what a listener decides about a new connection before any work on it.

Sans-IO (the caller passes the clock): a token bucket for the connection rate and a count of
TLS handshakes under way. A refusal costs the caller one `close()`: no task, no TLS.
"""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one token per connection."""

    rate: float
    burst: float
    tokens: float = attrs.field(default=None)
    updated: float = -1.0

    def __attrs_post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = self.burst

    def take(self, now: float) -> bool:
        if self.updated >= 0:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def connection_rate_bucket(rate: int, burst: int) -> TokenBucket | None:
    """`kaa.kpc.transports.mqtt.max-connection-rate` / `connection-rate-burst`; None: no limit."""
    if rate <= 0:
        return None
    return TokenBucket(rate=float(rate), burst=float(max(burst or rate, 1)))


@attrs.define
class HandshakeSlots:
    """TLS handshakes allowed at once; `limit` 0 means unlimited."""

    limit: int
    busy: int = 0

    def acquire_nowait(self) -> bool:
        if self.limit and self.busy >= self.limit:
            return False
        self.busy += 1
        return True

    def release(self) -> None:
        self.busy -= 1
