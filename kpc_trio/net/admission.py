"""Admission control: what a listener decides about a new connection before any work on it.

Sans-IO (the caller passes the clock): a token bucket for the connection rate and counts of
what is under way (TLS handshakes, HTTP connections). A refusal costs the caller one `close()`:
no task, no TLS, no read.
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
    """`kaa.kpc.transports.{mqtt,http}.max-connection-rate` / `connection-rate-burst`; None: no
    limit."""
    if rate <= 0:
        return None
    return TokenBucket(rate=float(rate), burst=float(max(burst or rate, 1)))


@attrs.define
class Slots:
    """Things allowed under way at once (TLS handshakes, open HTTP connections); `limit` 0
    means unlimited (still counted)."""

    limit: int
    busy: int = 0

    def acquire_nowait(self) -> bool:
        if self.limit and self.busy >= self.limit:
            return False
        self.busy += 1
        return True

    def release(self) -> None:
        self.busy -= 1


@attrs.define(slots=True)
class ReadPacer:
    """Per-connection read rates (`max-publish-rate` messages/s, `max-receive-rate` bytes/s):
    after each read, how long to wait before reading again. A client over its rate is slowed
    down (TCP backpressure does the rest), never dropped; each rate allows a second's burst.
    """

    publish_rate: float  # 0 = unlimited
    receive_rate: float
    publish_tokens: float = 0.0
    receive_tokens: float = 0.0
    updated: float = -1.0

    def __attrs_post_init__(self) -> None:
        self.publish_tokens, self.receive_tokens = self.publish_rate, self.receive_rate

    @property
    def publishes_per_slice(self) -> int:
        """PUBLISHes handled between two waits: a tenth of a second's worth."""
        return max(1, int(self.publish_rate // 10)) if self.publish_rate else 2**31

    def delay(self, now: float, publishes: int, received_bytes: int) -> float:
        """Seconds until both rates are honoured again, after a read of `received_bytes`
        holding `publishes` PUBLISH packets at `now`."""
        elapsed = now - self.updated if self.updated >= 0 else 0.0
        self.updated = now
        wait = 0.0
        if self.publish_rate:
            self.publish_tokens = min(self.publish_rate,
                                      self.publish_tokens + elapsed * self.publish_rate)
            self.publish_tokens -= publishes
            wait = max(wait, -self.publish_tokens / self.publish_rate)
        if self.receive_rate:
            self.receive_tokens = min(self.receive_rate,
                                      self.receive_tokens + elapsed * self.receive_rate)
            self.receive_tokens -= received_bytes
            wait = max(wait, -self.receive_tokens / self.receive_rate)
        return wait
