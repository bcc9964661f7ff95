"""The NATS gateway: KPC's client connection to NATS, spoken from the trio thread.

Why not nats-py: it is asyncio-only, so it needs its own loop thread, and every device request
then crosses threads three times (hand-over, confirmation, reply). On this 2-core machine those
crossings cost about 0.8 ms of CPU per request and held the round-trip p99 above 4 ms;
speaking the protocol here (`nats_protocol`, sans-IO) measured 1.9 ms (docs/performance.md).
nats-py still serves the simulated Kaa side and the tests, an independent client on the far side.

* outbound: all publish paths feed one trio memory channel, bounded in messages (`_OutboxRoom`);
  a publisher task takes whatever queued while the previous batch was being written (up to
  ~1000 messages, no linger) and writes it as one buffer of PUB frames. Batches go one at a time,
  which keeps them in order on the wire, also across retries. A batch with QoS 1/2 messages ends
  in a PING: the PONG of *that* connection confirms it; a lost connection means publishing it
  again (at least once) as soon as NATS is back.
* inbound: the connection's reader hands each MSG to its subscription's bounded channel; a full
  channel drops (and counts) rather than stalling the reader.
* refusals: a publish the server refuses (a permissions violation) is charged to the batch of
  the PING it preceded; `publish_confirmed` returns which of its messages were refused.
* a lone request (nothing else being published) is written by its caller, and with
  `publish_confirmed_later` its confirmation is handled by the NATS reading task when the PONG
  comes, so no task waits for it (one task switch less per request; docs/performance.md).
* connection: `nats.connection` (server pool, reconnects, lame duck, TLS, credentials).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from kpc_trio.logs import get_logger
from kpc_trio.nats.connection import (
    ConnectionLostError,
    ConnectOptions,
    NatsConnection,
    NatsEvent,
    NatsUnavailableError,
    ServerPool,
    Subscription,
    describe,
)
from kpc_trio.nats.protocol import (
    InboundMessage,
    OutboundMessage,
    PubFrames,
    parse_url,
    redact_url,
    subject_problem,
    unsub_frame,
)

__all__ = [
    "InboundMessage", "MessageRejectedError", "NatsGateway", "NatsPort", "NatsUnavailableError",
    "OutboundMessage", "open_nats_gateway", "redact_url", "subject_problem",
]

log = get_logger(__name__)

#: Longest an at-most-once publish waits for room in a full outbox before it is dropped.
PUBLISH_WAIT_LIMIT = 5.0
BATCH_MAX_MESSAGES = 1000
NOTHING_REFUSED: tuple[int, ...] = ()


class MessageRejectedError(Exception):
    """The message itself is unpublishable (bad subject, payload over max_payload): do not retry."""


#: Told once a deferred publish is settled: the indexes NATS refused, or why it may have failed.
OnSettled = Callable[[Sequence[int], Exception | None], None]


class NatsPort(Protocol):
    """Everything the rest of the service uses of NATS (`NatsGateway` is the real one); tests
    use the one in-memory fake of tests/fake_nats.py."""

    @property
    def connected(self) -> bool: ...

    async def publish_confirmed(
        self, messages: Sequence[OutboundMessage], *, fail_fast: bool = False
    ) -> Sequence[int]: ...

    async def publish_confirmed_later(self, messages: Sequence[OutboundMessage],
                                      on_settled: OnSettled, owner: object) -> bool: ...

    def unconfirmed_for(self, owner: object) -> trio.Event | None: ...

    @property
    def max_payload(self) -> int: ...

    async def publish(self, messages: Sequence[OutboundMessage]) -> bool: ...

    def publish_nowait(self, message: OutboundMessage) -> bool: ...

    async def subscribe(
        self, subject: str, *, queue: str = "", capacity: int = 10_000
    ) -> trio.MemoryReceiveChannel[InboundMessage]: ...

    async def subscribe_handler(self, subject: str, handler: Callable[[InboundMessage], None],
                                *, queue: str = "") -> None: ...

    async def sync(self) -> None: ...


# -- outbox ---------------------------------------------------------------------------------------


@attrs.define(eq=False)
class _ConfirmedGroup:
    """The messages of one publish_confirmed call: one channel item, one completion."""

    messages: Sequence[OutboundMessage]
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None
    #: Indexes of the messages the server refused (permissions).
    refused: Sequence[int] = NOTHING_REFUSED
    #: A deferred publish (`publish_confirmed_later`): who waits, and what tells them.
    owner: object = None
    on_settled: OnSettled | None = None

    def settle(self, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()
            if self.on_settled is not None:
                self.on_settled(self.refused, error)


@attrs.frozen
class _BestEffortGroup:
    """The messages of one `publish` call: one channel item, at most once, no completion."""

    messages: Sequence[OutboundMessage]


_Item = OutboundMessage | _ConfirmedGroup | _BestEffortGroup


def _size(item: _Item) -> int:
    return 1 if isinstance(item, OutboundMessage) else len(item.messages)


class _OutboxRoom:
    """The bound on messages waiting for the publisher.

    The channel counts items, and one item (the relays of one read) may hold hundreds of
    messages: without this a QoS 0 flood queued them by the million. An item larger than the
    whole capacity still goes, alone, when the outbox is empty.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queued = 0
        self._freed = trio.Event()

    def fits(self, count: int) -> bool:
        return self.queued == 0 or self.queued + count <= self.capacity

    async def wait_for(self, count: int) -> None:
        while not self.fits(count):
            await self._freed.wait()

    def take(self, count: int) -> None:
        self.queued += count

    def release(self, count: int) -> None:
        self.queued -= count
        self._freed.set()
        self._freed = trio.Event()


@attrs.frozen
class _Outcome:
    """What became of one batch; `rejected` maps batch index to the reason, `refused` holds the
    subjects the server refused."""

    published: int
    dropped: int
    rejected: dict[int, str]
    refused: frozenset[str] | set[str] = frozenset()


@attrs.define
class _Sorted:
    """A batch sorted for the wire: the frames to write, what of it needs confirming, what not
    to send."""

    frames: list[bytes]  # PUB frames of the `sent` messages, in order
    sent: int
    to_confirm: list[OutboundMessage]
    dropped: int
    rejected: dict[int, str]


# -- the gateway ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class NatsGateway:
    """KPC's NATS client. Create it with `open_nats_gateway`; every method runs on the trio thread.

    Counters for metrics: published_messages, publish_batches, last_batch_size,
    dropped_outbound, dropped_inbound.
    """

    _link: NatsConnection
    _outbox_send: trio.MemorySendChannel[_Item]
    _outbox_receive: trio.MemoryReceiveChannel[_Item]
    _room: _OutboxRoom
    #: Called after each published batch with (messages, seconds until NATS confirmed it).
    _on_batch: Callable[[int, float], None] | None = None
    published_messages: int = 0
    publish_batches: int = 0
    last_batch_size: int = 0
    dropped_outbound: int = 0
    _frames: PubFrames = attrs.field(factory=PubFrames)
    _next_sid: int = 1
    _in_flight: Sequence[_Item] = ()
    _direct_deliveries: int = 0  # publish_confirmed calls writing themselves (none in flight)
    _publisher_done: trio.Event = attrs.field(factory=trio.Event)
    #: The one `publish_confirmed_later` not settled yet; set while it is published again after
    #: its connection was lost (nothing else may overtake it then).
    _deferred: _ConfirmedGroup | None = None
    _republishing: trio.Event | None = None
    _nursery: trio.Nursery | None = None  # where a deferred publish is published again

    @property
    def connected(self) -> bool:
        return self._link.current is not None

    @property
    def dropped_inbound(self) -> int:
        return self._link.dropped_inbound

    @property
    def max_payload(self) -> int:
        """The largest message payload the NATS server takes (its INFO; 1 MiB until known)."""
        return self._link.max_payload

    async def publish_confirmed(
        self, messages: Sequence[OutboundMessage], *, fail_fast: bool = False
    ) -> Sequence[int]:
        """Return once the NATS server has the messages (published and PONG-confirmed): the
        indexes of those it refused (a permissions violation; usually none).

        While NATS is down this waits (backpressure) unless `fail_fast`, which raises
        NatsUnavailableError instead. A cancelled caller is fine: the messages may still go out.
        Raises MessageRejectedError (nothing of `messages` was sent) for unpublishable messages.
        """
        if not messages:
            await trio.lowlevel.checkpoint()
            return NOTHING_REFUSED
        if fail_fast and self._link.current is None:
            raise NatsUnavailableError("NATS is not connected (fail_fast): retry once it is back")
        group = _ConfirmedGroup(messages)
        if (self._link.current is not None and not self._in_flight and not self._direct_deliveries
                and self._room.queued == 0):
            # Nothing is being published: write from here, saving two task switches on the way
            # of a lone request. Nothing queued can be overtaken, and whatever comes meanwhile
            # queues for the publisher, so under load batches form as usual.
            self._direct_deliveries += 1
            try:
                await self._publish_batch([group])
            finally:
                self._direct_deliveries -= 1
        else:
            await self._hand_over(group)
        if group.error is not None:
            raise group.error
        return group.refused

    async def publish_confirmed_later(self, messages: Sequence[OutboundMessage],
                                      on_settled: OnSettled, owner: object) -> bool:
        """`publish_confirmed` for a lone request, without waiting for NATS's confirmation.

        Only while nothing else is being published: then the messages are written from here
        and this returns True once they are; `on_settled(refused indexes, None)` is called from
        the NATS reading task when the PONG comes (so no task wakes for it), or, after a lost
        connection, once they were published again; `on_settled((), error)` if the gateway
        closed first. `on_settled` must not block. One at a time: `unconfirmed_for(owner)`
        says whether `owner`'s is still waiting. False (nothing done): use `publish_confirmed`.
        """
        link = self._link.current
        if (link is None or not link.writable_now or self._in_flight or self._direct_deliveries
                or self._room.queued or self._nursery is None or not messages):
            return False
        group = _ConfirmedGroup(messages, owner=owner, on_settled=on_settled)
        ready = self._sort([group])
        if ready.rejected:  # publish_confirmed says why
            return False
        self._deferred = group
        self._direct_deliveries += 1
        started = time.perf_counter()

        def answered(refused: frozenset[str] | set[str]) -> None:
            if not link.lost.is_set():
                self._settle_deferred(group, ready, refused, started)
            elif self._nursery is not None:
                self._republishing = trio.Event()
                self._nursery.start_soon(self._republish_deferred, group, ready, started)

        try:
            await link.write(b"".join(ready.frames), ping=True, on_answer=answered)
        except ConnectionLostError:
            pass  # `answered` was told (the PING was queued) and publishes them again
        return True

    def unconfirmed_for(self, owner: object) -> trio.Event | None:
        """What to wait for until `owner`'s `publish_confirmed_later` is settled; None if
        none of its is waiting."""
        group = self._deferred
        return group.done if group is not None and group.owner is owner else None

    def _settle_deferred(self, group: _ConfirmedGroup, ready: _Sorted,
                         refused: frozenset[str] | set[str], started: float) -> None:
        self._deferred = None
        self._direct_deliveries -= 1
        self._settle([group], _Outcome(ready.sent, ready.dropped, ready.rejected, refused))
        if self._on_batch is not None:
            self._on_batch(self.last_batch_size, time.perf_counter() - started)

    async def _republish_deferred(self, group: _ConfirmedGroup, ready: _Sorted,
                                  started: float) -> None:
        log.warning("nats_publish_interrupted", error="connection lost before the PONG",
                    unconfirmed=len(ready.to_confirm))
        try:
            refused = await self._publish_until_confirmed(ready.to_confirm)
            self._settle_deferred(group, ready, refused, started)
        finally:
            if self._republishing is not None:
                self._republishing.set()
                self._republishing = None

    async def _after_republished(self) -> None:
        """Keep the order on the wire: a deferred publish whose connection was lost goes
        again before anything written after it."""
        while self._republishing is not None:
            await self._republishing.wait()

    async def _hand_over(self, group: _ConfirmedGroup) -> None:
        """Queue `group` for the publisher and wait until it is settled."""
        await self._room.wait_for(len(group.messages))
        try:
            self._enqueue(group)
        except trio.ClosedResourceError:
            raise NatsUnavailableError(
                "the NATS gateway is draining or closed: publish before shutting it down"
            ) from None
        await group.done.wait()

    async def publish(self, messages: Sequence[OutboundMessage]) -> bool:
        """At most once, with backpressure: waits while the outbox is full (NATS busy), but
        gives up at once, returning False (all dropped), while NATS is disconnected. One channel
        item for the whole sequence."""
        if self._link.current is not None:
            with trio.move_on_after(PUBLISH_WAIT_LIMIT):
                await self._room.wait_for(len(messages))
            if self._room.fits(len(messages)):
                try:
                    self._enqueue(_BestEffortGroup(messages))
                    return True
                except trio.ClosedResourceError:
                    pass
        self.dropped_outbound += len(messages)
        return False

    def publish_nowait(self, message: OutboundMessage) -> bool:
        """Fire and forget; False (and counted in dropped_outbound) if NATS is down or busy."""
        if self._link.current is not None and self._room.fits(1):
            try:
                self._enqueue(message)
                return True
            except trio.ClosedResourceError:
                pass
        self.dropped_outbound += 1
        return False

    async def subscribe(
        self, subject: str, *, queue: str = "", capacity: int = 10_000
    ) -> trio.MemoryReceiveChannel[InboundMessage]:
        """Messages on `subject` (optionally in queue group `queue`). A full channel drops and
        counts (dropped_inbound); closing the channel unsubscribes. While NATS is unreachable
        the subscription is sent with the next CONNECT; `sync()` waits until it is active."""
        send, receive = trio.open_memory_channel[InboundMessage](capacity)
        await self._subscribe(Subscription(self._next_sid, subject, queue, channel=send))
        return receive

    async def subscribe_handler(self, subject: str, handler: Callable[[InboundMessage], None],
                                *, queue: str = "") -> None:
        """Call `handler` for each message on `subject`, in the connection's reading task.

        For the response path, where a channel and a task hop per message cost as much as the
        handling itself. `handler` must be quick and never block (it may queue the message
        elsewhere, bounded); an exception from it is logged, not raised.
        """
        await self._subscribe(Subscription(self._next_sid, subject, queue, handler=handler))

    async def _subscribe(self, subscription: Subscription) -> None:
        subject, queue = subscription.subject, subscription.queue
        problem = subject_problem(subject) or (queue and subject_problem(queue))
        if problem:
            raise ValueError(f"cannot subscribe: {problem}")
        if self._link.closed:
            raise NatsUnavailableError("the NATS gateway is closed")
        self._next_sid += 1
        await self._link.subscribe(subscription)
        log.info("nats_subscribed", subject=subject, queue=queue)

    async def sync(self) -> None:
        """Return once the server has processed everything sent so far, subscriptions included
        (so an event published right after startup cannot slip past a new subscription)."""
        connection = await self._link.wait_connected()
        try:
            await connection.confirm()
        except ConnectionLostError as exc:
            # The next CONNECT carries every subscription again.
            log.info("nats_sync_interrupted", error=describe(exc))

    async def drain(self) -> None:
        """Publish everything queued (waiting for NATS if it is down), unsubscribe, and let the
        server confirm, so every message that arrived before is in its channel; then close."""
        self._outbox_send.close()
        await self._publisher_done.wait()
        await self._after_republished()
        connection = self._link.current
        if connection is not None:
            frames = b"".join(unsub_frame(sid) for sid in self._link.subscriptions)
            try:
                await connection.confirm(frames)
            except ConnectionLostError as exc:
                log.warning("nats_drain_failed", error=describe(exc))
        self._close()

    # -- outbound ---------------------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        """Queue `item`, for which the room was checked (no checkpoint since)."""
        self._outbox_send.send_nowait(item)  # the channel has room: it holds at most `queued`
        self._room.take(_size(item))

    async def _run_publisher(self) -> None:
        try:
            while batch := await self._next_batch():
                self._in_flight = batch
                await self._publish_batch(batch)
                self._in_flight = ()
        finally:
            self._publisher_done.set()

    async def _publish_batch(self, batch: Sequence[_Item]) -> None:
        """Write `batch`, then settle its groups and count it."""
        started = time.perf_counter()
        self._settle(batch, await self._deliver(batch))
        if self._on_batch is not None:
            self._on_batch(self.last_batch_size, time.perf_counter() - started)

    async def _next_batch(self) -> list[_Item]:
        """The first item plus whatever queued up meanwhile, up to the size cap.

        No linger timer: while one batch is written the next one accumulates, so batches grow
        with load and a lone request pays no waiting time.
        """
        try:
            batch = [await self._outbox_receive.receive()]
        except trio.EndOfChannel:
            return []
        size = _size(batch[0])
        while size < BATCH_MAX_MESSAGES:
            try:
                item = self._outbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.append(item)
            size += _size(item)
        self._room.release(size)
        return batch

    async def _deliver(self, batch: Sequence[_Item]) -> _Outcome:
        """Write a batch; returns once the server confirmed every `_ConfirmedGroup` in it."""
        await self._after_republished()
        ready = self._sort(batch)
        connection = self._link.current
        if connection is not None:
            try:
                data = b"".join(ready.frames)
                refused: frozenset[str] | set[str] = frozenset()
                if ready.to_confirm:
                    refused = await connection.confirm(data)
                elif data:
                    await connection.write(data)
                return _Outcome(ready.sent, ready.dropped, ready.rejected, refused)
            except ConnectionLostError as exc:
                log.warning("nats_publish_interrupted", error=describe(exc),
                            unconfirmed=len(ready.to_confirm))
        # Best-effort messages are not held back for a reconnect; confirmed ones wait for it.
        await self._after_republished()
        refused = await self._publish_until_confirmed(ready.to_confirm)
        best_effort = ready.sent - len(ready.to_confirm)
        return _Outcome(len(ready.to_confirm), ready.dropped + best_effort, ready.rejected,
                        refused)

    def _sort(self, batch: Sequence[_Item]) -> _Sorted:
        ready = _Sorted([], 0, [], 0, {})
        frames = self._frames
        max_payload = self._link.max_payload
        for index, item in enumerate(batch):
            messages = (item,) if isinstance(item, OutboundMessage) else item.messages
            confirmed = isinstance(item, _ConfirmedGroup)
            # One look-up per message, while framing it; a pair not seen yet or a payload over
            # max_payload (rare: sessions check the size) is checked one by one.
            if not frames.append_checked(ready.frames, messages, max_payload):
                if confirmed:
                    problem = next(filter(None, map(self._problem, messages)), None)
                    if problem is not None:
                        ready.rejected[index] = problem
                        continue
                else:
                    checked = [message for message in messages if self._problem(message) is None]
                    ready.dropped += len(messages) - len(checked)
                    messages = checked
                ready.frames.append(frames.frames(messages))
            ready.sent += len(messages)
            if confirmed:
                ready.to_confirm.extend(messages)
        return ready

    def _problem(self, message: OutboundMessage) -> str | None:
        if not self._frames.checked(message.subject, message.reply):
            problem = subject_problem(message.subject)
            if problem is None and message.reply:
                problem = subject_problem(message.reply)
            if problem is not None:
                return problem
            self._frames.add(message.subject, message.reply)
        if len(message.payload) > self._link.max_payload:
            return (f"payload of {len(message.payload)} bytes exceeds the server's "
                    f"max_payload of {self._link.max_payload} bytes")
        return None

    async def _publish_until_confirmed(self, messages: Sequence[OutboundMessage]
                                       ) -> frozenset[str] | set[str]:
        """At least once: publish again after every failure, each time on a live connection.
        Returns the subjects the server refused."""
        while messages:
            connection = await self._link.wait_connected()
            try:
                refused = await connection.confirm(self._frames.frames(messages))
                log.info("nats_publish_recovered", messages=len(messages))
                return refused
            except ConnectionLostError as exc:
                log.warning("nats_publish_retry", error=describe(exc), messages=len(messages))
        return frozenset()

    def _settle(self, batch: Sequence[_Item], outcome: _Outcome) -> None:
        self.published_messages += outcome.published
        self.dropped_outbound += outcome.dropped
        self.publish_batches += 1
        self.last_batch_size = sum(map(_size, batch))
        for index, item in enumerate(batch):
            if isinstance(item, _ConfirmedGroup):
                reason = outcome.rejected.get(index)
                if outcome.refused and reason is None:
                    item.refused = [position for position, message in enumerate(item.messages)
                                    if message.subject in outcome.refused]
                item.settle(None if reason is None else MessageRejectedError(
                    f"NATS cannot take this message: {reason}"))

    def _close(self) -> None:
        """No more traffic: fail what waits, end every subscription's channel."""
        if not self._link.closed:
            log.info("nats_closed")
        self._link.close()
        self._outbox_send.close()
        unsent = NatsUnavailableError("the NATS gateway closed before the server confirmed")
        leftovers: list[_Item] = [*self._in_flight]
        if self._deferred is not None:
            leftovers.append(self._deferred)
        while True:
            try:
                leftovers.append(self._outbox_receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        for item in leftovers:
            if isinstance(item, _ConfirmedGroup):
                item.settle(unsent)
        for subscription in self._link.subscriptions.values():
            if subscription.channel is not None:
                subscription.channel.close()
        self._link.subscriptions.clear()


@asynccontextmanager
async def open_nats_gateway(
    urls: Sequence[str],
    *,
    name: str = "kpc",
    queue_capacity: int = 2_000,
    on_connection_change: Callable[[bool], None] | None = None,
    on_batch: Callable[[int, float], None] | None = None,
    on_event: Callable[[NatsEvent], None] | None = None,
    reconnect_wait: float = 2.0,
    options: ConnectOptions | None = None,
) -> AsyncIterator[NatsGateway]:
    """Connect to NATS (`urls` may carry credentials: nats://user:pass@host:4222, or tls://)
    and yield the gateway. An unreachable NATS does not fail this: the gateway retries forever
    (`nats.connection`), and reports `connected=False` meanwhile. On a normal exit the gateway is
    drained (this waits for queued confirmed publishes: bound it with a cancel scope).
    `queue_capacity` bounds the messages waiting for the publisher; `on_event` hears of
    reconnects, lame duck moves, server errors and refusals. `options` (name, credentials, TLS,
    pool order) wins over `name` and `reconnect_wait`."""
    if not urls:
        raise ValueError("no NATS URL given: configure at least one (NATS_URLS)")
    if options is None:
        options = ConnectOptions(name=name, reconnect_wait=reconnect_wait)
    pool = ServerPool([parse_url(url) for url in urls], randomize=options.randomize,
                      reconnect_wait=options.reconnect_wait)
    link = NatsConnection(pool, options, on_connection_change, on_event)
    outbox_send, outbox_receive = trio.open_memory_channel[_Item](queue_capacity)
    gateway = NatsGateway(link, outbox_send, outbox_receive, _OutboxRoom(queue_capacity),
                          on_batch)
    try:
        async with trio.open_nursery() as nursery:
            gateway._nursery = nursery
            nursery.start_soon(link.run_connection)
            nursery.start_soon(gateway._run_publisher)
            try:
                yield gateway
                await gateway.drain()
            finally:
                link.stopping = True
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Only the body can fail here (the gateway's tasks do not raise): give the caller its
        # own exception back rather than a group it did not ask for.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        gateway._close()
