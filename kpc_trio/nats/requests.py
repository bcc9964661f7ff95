"""Requests to a Kaa provider over NATS, answered on a shared reply subject (spec 5.5).

A replica names one reply subject per request type (`kaa.v1.replica.<id>.<protocol>.<type>`), so
every outstanding request of that type is answered there and only the `correlationId` inside a
reply says which request it belongs to. `CorrelatedRequests` owns that matching: `request()`
publishes and waits, `run_responses()` (one task per reply subject) completes the waiters.
"""

from __future__ import annotations

import itertools
import os
from typing import Generic, TypeVar

import attrs
import trio

from kpc_trio.kaa import records
from kpc_trio.logs import get_logger
from kpc_trio.nats.gateway import InboundMessage, NatsPort, OutboundMessage

log = get_logger(__name__)

R = TypeVar("R", bound=records.Record)


class ProviderUnavailableError(Exception):
    """The request could not be sent: NATS is down or the outbound queue is full."""


class ProviderTimeoutError(Exception):
    """No reply with the request's correlation id arrived in time."""


@attrs.define(eq=False)
class _Waiter(Generic[R]):
    done: trio.Event = attrs.field(factory=trio.Event)
    response: R | None = None
    abandoned: bool = False  # NATS went away: no reply can come


class CorrelatedRequests(Generic[R]):
    """Requests whose replies of type `response_type` all arrive on `reply_subject`."""

    def __init__(
        self,
        gateway: NatsPort,
        *,
        reply_subject: str,
        response_type: type[R],
        timeout: float,
        correlation_prefix: str,
    ) -> None:
        self._gateway = gateway
        self._reply_subject = reply_subject
        self._response_type = response_type
        self._timeout = timeout
        # Random part: a restarted replica must not take a late reply meant for its predecessor.
        self._prefix = f"{correlation_prefix}-{os.urandom(4).hex()}"
        self._ids = itertools.count()
        self._waiters: dict[str, _Waiter[R]] = {}
        self.undecodable = 0  # replies that were not a `response_type` datum

    @property
    def reply_subject(self) -> str:
        return self._reply_subject

    @property
    def timeout(self) -> float:
        """Seconds `request()` waits; also what the request record's `timeout` field should say."""
        return self._timeout

    @property
    def pending(self) -> int:
        return len(self._waiters)

    def next_correlation_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    async def request(self, subject: str, request: records.Record) -> R:
        """Publish `request` to `subject` and return the reply carrying its correlation id.

        Raises ProviderUnavailableError if NATS cannot take the request now and
        ProviderTimeoutError if no reply came within `timeout` seconds.
        """
        correlation_id = request.correlation_id
        if correlation_id in self._waiters:
            raise ValueError(
                f"correlation id {correlation_id!r} is already waiting for a reply; "
                "take a fresh one from next_correlation_id()"
            )
        if not self._gateway.connected:
            raise ProviderUnavailableError(f"NATS is not connected: cannot send to {subject}")
        waiter: _Waiter[R] = _Waiter()
        self._waiters[correlation_id] = waiter
        try:
            sent = self._gateway.publish_nowait(
                OutboundMessage(subject, records.encode(request), self._reply_subject)
            )
            if not sent:
                raise ProviderUnavailableError(f"NATS did not take the request to {subject}")
            with trio.move_on_after(self._timeout):
                await waiter.done.wait()
        finally:
            # Also on cancellation: nobody is left to take a late reply.
            self._waiters.pop(correlation_id, None)
        if waiter.abandoned:
            raise ProviderUnavailableError(f"NATS connection lost while waiting for {subject}")
        if waiter.response is None:
            raise ProviderTimeoutError(
                f"no reply on {self._reply_subject} to the request sent to {subject} within "
                f"{self._timeout}s (correlation id {correlation_id}); is the provider running?"
            )
        return waiter.response

    def abandon_all(self) -> int:
        """NATS is disconnected: replies to what is pending cannot arrive, so fail it now (the
        callers answer 503 at once instead of waiting out the timeout). Returns how many."""
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for waiter in waiters:
            waiter.abandoned = True
            waiter.done.set()
        return len(waiters)

    async def run_responses(self, responses: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Task body: complete waiting requests from the messages of `reply_subject`."""
        async for message in responses:
            try:
                response = records.decode(self._response_type, message.payload)
            except records.RecordDecodeError as exc:
                self.undecodable += 1
                log.warning("provider_reply_undecodable", subject=message.subject,
                            reason=str(exc))
                continue
            waiter = self._waiters.pop(response.correlation_id, None)
            if waiter is None:  # late reply to a request that timed out, or a foreign one
                log.debug("provider_reply_unmatched", subject=message.subject,
                          correlation_id=response.correlation_id)
                continue
            waiter.response = response
            waiter.done.set()
