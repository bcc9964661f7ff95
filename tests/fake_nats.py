"""The one in-memory NATS of the tests that do not start nats-server: a typed `NatsPort`.

It records what is published (with trio's time), feeds subscribers with `inject`, and behaves
like the gateway while "disconnected": confirmed publishes wait for the reconnect (or raise
NatsUnavailableError with fail_fast), best-effort ones are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import trio

from kpc_trio.nats.gateway import (
    InboundMessage,
    NatsUnavailableError,
    OnSettled,
    OutboundMessage,
)

NOTHING_REFUSED: tuple[int, ...] = ()


@attrs.define(eq=False)
class FakeNats:
    connected: bool = True
    #: False: the outbound queue is full (publish_nowait and publish drop).
    accepting: bool = True
    max_payload: int = 1_048_576
    published: list[OutboundMessage] = attrs.field(factory=list)
    published_at: list[float] = attrs.field(factory=list)
    _handlers: dict[str, list[Callable[[InboundMessage], None]]] = attrs.field(factory=dict)
    _channels: dict[str, list[trio.MemorySendChannel[InboundMessage]]] = attrs.field(
        factory=dict)
    _back: trio.Event = attrs.field(factory=trio.Event)

    def disconnect(self) -> None:
        self.connected = False
        self._back = trio.Event()

    def reconnect(self) -> None:
        self.connected = True
        self._back.set()

    def on(self, subject: str) -> list[OutboundMessage]:
        return [message for message in self.published if message.subject == subject]

    # --- NatsPort --------------------------------------------------------------------------
    async def publish_confirmed(self, messages: Sequence[OutboundMessage], *,
                                fail_fast: bool = False) -> Sequence[int]:
        await trio.lowlevel.checkpoint()
        if not self.connected:
            if fail_fast:
                raise NatsUnavailableError("FakeNats is disconnected")
            await self._back.wait()
        self._record(messages)
        return NOTHING_REFUSED

    async def publish_confirmed_later(self, messages: Sequence[OutboundMessage],
                                      on_settled: OnSettled, owner: object) -> bool:
        return False  # the session falls back to publish_confirmed

    def unconfirmed_for(self, owner: object) -> trio.Event | None:
        return None

    async def publish(self, messages: Sequence[OutboundMessage]) -> bool:
        await trio.lowlevel.checkpoint()
        if not (self.connected and self.accepting):
            return False
        self._record(messages)
        return True

    def publish_nowait(self, message: OutboundMessage) -> bool:
        if not (self.connected and self.accepting):
            return False
        self._record([message])
        return True

    async def subscribe(self, subject: str, *, queue: str = "", capacity: int = 10_000
                        ) -> trio.MemoryReceiveChannel[InboundMessage]:
        send, receive = trio.open_memory_channel[InboundMessage](capacity)
        self._channels.setdefault(subject, []).append(send)
        await trio.lowlevel.checkpoint()
        return receive

    async def subscribe_handler(self, subject: str, handler: Callable[[InboundMessage], None],
                                *, queue: str = "") -> None:
        self._handlers.setdefault(subject, []).append(handler)
        await trio.lowlevel.checkpoint()

    async def sync(self) -> None:
        await trio.lowlevel.checkpoint()

    # --- the far side ----------------------------------------------------------------------
    def inject(self, subject: str, payload: bytes, reply: str = "") -> None:
        """A message from NATS on `subject` (exact subjects only: no wildcards here)."""
        message = InboundMessage(subject, reply, payload)
        for handler in self._handlers.get(subject, []):
            handler(message)
        for channel in self._channels.get(subject, []):
            channel.send_nowait(message)

    def _record(self, messages: Sequence[OutboundMessage]) -> None:
        now = trio.current_time()
        for message in messages:
            self.published.append(message)
            self.published_at.append(now)
