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
* connection: servers of NATS_URLS are tried in turn, each at most once per `reconnect_wait`,
  forever; subscriptions are sent again with every new CONNECT. A keepalive PING detects a dead
  connection that TCP does not report.
"""

from __future__ import annotations

import itertools
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from kpc_trio import __version__
from kpc_trio.logs import get_logger
from kpc_trio.nats.protocol import (
    DEFAULT_MAX_PAYLOAD,
    PING,
    PONG,
    Delivery,
    InboundMessage,
    NatsProtocolError,
    NatsServerAddress,
    OutboundMessage,
    Ping,
    Pong,
    PubFrames,
    ServerError,
    ServerInfo,
    ServerStreamParser,
    connect_frame,
    parse_url,
    redact_url,
    sub_frame,
    subject_problem,
    unsub_frame,
)
from kpc_trio.net.socket_stream import LeanSocketStream

__all__ = [
    "InboundMessage", "MessageRejectedError", "NatsGateway", "NatsPort", "NatsUnavailableError",
    "OutboundMessage", "open_nats_gateway", "redact_url", "subject_problem",
]

log = get_logger(__name__)

#: Longest an at-most-once publish waits for room in a full outbox before it is dropped.
PUBLISH_WAIT_LIMIT = 5.0
BATCH_MAX_MESSAGES = 1000
CONFIRM_TIMEOUT = 5.0  # a PONG slower than this: the connection is dead, publish the batch again
WATCH_INTERVAL = 0.5  # how often the oldest unanswered PING is checked against CONFIRM_TIMEOUT
CONNECT_TIMEOUT = 2.0  # TCP, TLS and the server's answer to CONNECT (nats-py's default)
PING_INTERVAL = 120.0  # keepalive, as nats-py and the Java client
RECEIVE_SIZE = 64 * 1024


class NatsUnavailableError(Exception):
    """NATS cannot take the message now: not connected (fail-fast caller) or gateway closed."""


class MessageRejectedError(Exception):
    """The message itself is unpublishable (bad subject, payload over max_payload): do not retry."""


class NatsPort(Protocol):
    """What the rest of the service needs from NATS; tests may provide a fake."""

    @property
    def connected(self) -> bool: ...

    async def publish_confirmed(
        self, messages: Sequence[OutboundMessage], *, fail_fast: bool = False
    ) -> None: ...

    @property
    def max_payload(self) -> int: ...

    async def publish(self, messages: Sequence[OutboundMessage]) -> bool: ...

    def publish_nowait(self, message: OutboundMessage) -> bool: ...

    async def subscribe(
        self, subject: str, *, queue: str = "", capacity: int = 10_000
    ) -> trio.MemoryReceiveChannel[InboundMessage]: ...


class _ConnectionLostError(Exception):
    """The connection broke (or went silent) before the server confirmed what was written."""


class _ServerRefusedError(Exception):
    """The server answered CONNECT with -ERR (wrong credentials, TLS needed, ...)."""


_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _describe(exc: BaseException) -> str:
    if not str(exc) and exc.__cause__ is not None:
        # trio.SSLStream raises a bare BrokenResourceError: the ssl error (an untrusted
        # certificate...) is its cause.
        return f"{type(exc).__name__}: {_describe(exc.__cause__)}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- outbox ---------------------------------------------------------------------------------------


@attrs.define(eq=False)
class _ConfirmedGroup:
    """The messages of one publish_confirmed call: one channel item, one completion."""

    messages: Sequence[OutboundMessage]
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None

    def settle(self, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


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
    """What became of one batch; `rejected` maps batch index to the reason."""

    published: int
    dropped: int
    rejected: dict[int, str]


@attrs.define
class _Sorted:
    """A batch sorted for the wire: what to write, what of it needs confirming, what not to send."""

    sendable: list[OutboundMessage]
    to_confirm: list[OutboundMessage]
    dropped: int
    rejected: dict[int, str]


# -- one connection -------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Subscription:
    """Where a subscription's messages go: a bounded channel, or a handler called in place."""

    sid: int
    subject: str
    queue: str
    channel: trio.MemorySendChannel[InboundMessage] | None = None
    handler: Callable[[InboundMessage], None] | None = None


@attrs.define(eq=False)
class _Connection:
    """One TCP (or TLS) connection to a NATS server, from CONNECT until it breaks.

    Writers (publisher, the reader's PONG, subscribe, keepalive) take turns through a FIFO lock,
    so each write goes out whole. The server answers PINGs in order, so each PING's waiter sits
    in a FIFO with the time it was sent; losing the connection wakes them all, to fail.
    """

    stream: trio.abc.Stream
    server: NatsServerAddress
    parser: ServerStreamParser
    _send_lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock)
    _pongs: deque[tuple[float, trio.Event]] = attrs.field(factory=deque)
    #: Set once the connection is dead: nothing written to it counts any more.
    lost: trio.Event = attrs.field(factory=trio.Event)
    #: The server answered CONNECT with its PONG.
    accepted: bool = False
    #: The -ERR the server answered CONNECT with.
    refusal: str | None = None
    _writing_since: float | None = None
    _send_nowait: Callable[[bytes], int] | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        stream = self.stream
        # TLS: no such shortcut
        self._send_nowait = stream.send_nowait if isinstance(stream, LeanSocketStream) else None

    async def write(self, data: bytes, *, ping: bool = False) -> trio.Event | None:
        """Write `data` (plus a PING whose PONG sets the returned event, if `ping`)."""
        if self.lost.is_set():
            raise _ConnectionLostError("the connection to NATS is lost")
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # send_all checkpoints: no need for acquire()'s own
        try:
            self._writing_since = trio.current_time()
            pong = None
            if ping:
                pong = trio.Event()
                self._pongs.append((self._writing_since, pong))
                data += PING
            try:
                # Most writes fit the socket buffer: sent with no scheduler round at all.
                sent = self._send_nowait(data) if self._send_nowait is not None else 0
                if sent < len(data):
                    # A write cancelled halfway would leave half a frame on the wire, garbling
                    # everything after it; a stuck one is ended by `_watch` closing the connection.
                    with trio.CancelScope(shield=True):
                        await self.stream.send_all(memoryview(data)[sent:])
            except _STREAM_ERRORS as exc:
                self.lose()
                raise _ConnectionLostError(_describe(exc)) from None
            return pong
        finally:
            self._writing_since = None
            lock.release()

    async def confirm(self, data: bytes = b"") -> None:
        """Write `data` and return once the server has processed it (and all written before).
        A server that does not answer is caught by `_watch`, which loses the connection."""
        pong = await self.write(data, ping=True)
        assert pong is not None
        await pong.wait()
        if self.lost.is_set():
            raise _ConnectionLostError("disconnected before the server confirmed")

    def pong_arrived(self) -> None:
        if self._pongs:
            self._pongs.popleft()[1].set()

    def stalled_for(self, now: float) -> float:
        """How long the oldest PING has waited for its PONG, or the current write to finish."""
        since = min(self._pongs[0][0] if self._pongs else now, self._writing_since or now)
        return now - since

    def lose(self) -> None:
        """Mark the connection dead and wake every confirmation waiting on it (they fail)."""
        self.lost.set()
        while self._pongs:
            self._pongs.popleft()[1].set()


# -- the gateway ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class NatsGateway:
    """KPC's NATS client. Create it with `open_nats_gateway`; every method runs on the trio thread.

    Counters for metrics: published_messages, publish_batches, last_batch_size,
    dropped_outbound, dropped_inbound.
    """

    _servers: tuple[NatsServerAddress, ...]
    _name: str
    _reconnect_wait: float
    _on_connection_change: Callable[[bool], None] | None
    _outbox_send: trio.MemorySendChannel[_Item]
    _outbox_receive: trio.MemoryReceiveChannel[_Item]
    _room: _OutboxRoom
    #: Called after each published batch with (messages, seconds until NATS confirmed it).
    _on_batch: Callable[[int, float], None] | None = None
    published_messages: int = 0
    publish_batches: int = 0
    last_batch_size: int = 0
    dropped_outbound: int = 0
    dropped_inbound: int = 0
    #: The connection CONNECT was written to (subscriptions go there); usable once `connected`.
    _connection: _Connection | None = None
    _connected: bool = False
    _connection_changed: trio.Event = attrs.field(factory=trio.Event)
    _max_payload: int = DEFAULT_MAX_PAYLOAD
    _frames: PubFrames = attrs.field(factory=PubFrames)
    _subscriptions: dict[int, _Subscription] = attrs.field(factory=dict)
    _next_sid: int = 1
    _in_flight: Sequence[_Item] = ()
    _direct_deliveries: int = 0  # publish_confirmed calls writing themselves (none in flight)
    _publisher_done: trio.Event = attrs.field(factory=trio.Event)
    _stopping: bool = False  # our own shutdown: losing the connection is no outage
    _closed: bool = False

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def max_payload(self) -> int:
        """The largest message payload the NATS server takes (its INFO; 1 MiB until known)."""
        return self._max_payload

    async def publish_confirmed(
        self, messages: Sequence[OutboundMessage], *, fail_fast: bool = False
    ) -> None:
        """Return once the NATS server has the messages (published and PONG-confirmed).

        While NATS is down this waits (backpressure) unless `fail_fast`, which raises
        NatsUnavailableError instead. A cancelled caller is fine: the messages may still go out.
        Raises MessageRejectedError (nothing of `messages` was sent) for unpublishable messages.
        """
        if not messages:
            await trio.lowlevel.checkpoint()
            return
        if fail_fast and not self._connected:
            raise NatsUnavailableError("NATS is not connected (fail_fast): retry once it is back")
        group = _ConfirmedGroup(messages)
        if (self._connected and not self._in_flight and not self._direct_deliveries
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
        if self._connected:
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
        if self._connected and self._room.fits(1):
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
        await self._subscribe(_Subscription(self._next_sid, subject, queue, channel=send))
        return receive

    async def subscribe_handler(self, subject: str, handler: Callable[[InboundMessage], None],
                                *, queue: str = "") -> None:
        """Call `handler` for each message on `subject`, in the connection's reading task.

        For the response path, where a channel and a task hop per message cost as much as the
        handling itself. `handler` must be quick and never block (it may queue the message
        elsewhere, bounded); an exception from it is logged, not raised.
        """
        await self._subscribe(_Subscription(self._next_sid, subject, queue, handler=handler))

    async def _subscribe(self, subscription: _Subscription) -> None:
        subject, queue = subscription.subject, subscription.queue
        problem = subject_problem(subject) or (queue and subject_problem(queue))
        if problem:
            raise ValueError(f"cannot subscribe: {problem}")
        if self._closed:
            raise NatsUnavailableError("the NATS gateway is closed")
        self._next_sid += 1
        # Registered and checked with no checkpoint in between: a CONNECT being written either
        # carries this SUB, or `_connection` is already set and the SUB is written below.
        self._subscriptions[subscription.sid] = subscription
        connection = self._connection
        if connection is not None:
            try:
                await connection.write(sub_frame(subject, queue, subscription.sid))
            except _ConnectionLostError:
                pass  # sent again with the next CONNECT
        else:
            await trio.lowlevel.checkpoint()
        log.info("nats_subscribed", subject=subject, queue=queue)

    async def sync(self) -> None:
        """Return once the server has processed everything sent so far, subscriptions included
        (so an event published right after startup cannot slip past a new subscription)."""
        connection = await self._wait_connected()
        try:
            await connection.confirm()
        except _ConnectionLostError as exc:
            # The next CONNECT carries every subscription again.
            log.info("nats_sync_interrupted", error=_describe(exc))

    async def drain(self) -> None:
        """Publish everything queued (waiting for NATS if it is down), unsubscribe, and let the
        server confirm, so every message that arrived before is in its channel; then close."""
        self._outbox_send.close()
        await self._publisher_done.wait()
        connection = self._connection
        if connection is not None and self._connected:
            frames = b"".join(unsub_frame(sid) for sid in self._subscriptions)
            try:
                await connection.confirm(frames)
            except _ConnectionLostError as exc:
                log.warning("nats_drain_failed", error=_describe(exc))
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
        ready = self._sort(batch)
        connection = self._connection if self._connected else None
        if connection is not None:
            try:
                data = self._frames.frames(ready.sendable)
                if ready.to_confirm:
                    await connection.confirm(data)
                elif data:
                    await connection.write(data)
                return _Outcome(len(ready.sendable), ready.dropped, ready.rejected)
            except _ConnectionLostError as exc:
                log.warning("nats_publish_interrupted", error=_describe(exc),
                            unconfirmed=len(ready.to_confirm))
        # Best-effort messages are not held back for a reconnect; confirmed ones wait for it.
        await self._publish_until_confirmed(ready.to_confirm)
        best_effort = len(ready.sendable) - len(ready.to_confirm)
        return _Outcome(len(ready.to_confirm), ready.dropped + best_effort, ready.rejected)

    def _sort(self, batch: Sequence[_Item]) -> _Sorted:
        ready = _Sorted([], [], 0, {})
        for index, item in enumerate(batch):
            if isinstance(item, OutboundMessage):
                item = _BestEffortGroup((item,))
            if isinstance(item, _BestEffortGroup):
                for message in item.messages:
                    if self._problem(message) is None:
                        ready.sendable.append(message)
                    else:
                        ready.dropped += 1
                continue
            problem = next(filter(None, map(self._problem, item.messages)), None)
            if problem is not None:
                ready.rejected[index] = problem
            else:
                ready.sendable.extend(item.messages)
                ready.to_confirm.extend(item.messages)
        return ready

    def _problem(self, message: OutboundMessage) -> str | None:
        if not self._frames.checked(message.subject, message.reply):
            problem = subject_problem(message.subject)
            if problem is None and message.reply:
                problem = subject_problem(message.reply)
            if problem is not None:
                return problem
            self._frames.add(message.subject, message.reply)
        if len(message.payload) > self._max_payload:
            return (f"payload of {len(message.payload)} bytes exceeds the server's "
                    f"max_payload of {self._max_payload} bytes")
        return None

    async def _publish_until_confirmed(self, messages: Sequence[OutboundMessage]) -> None:
        """At least once: publish again after every failure, each time on a live connection."""
        while messages:
            connection = await self._wait_connected()
            try:
                await connection.confirm(self._frames.frames(messages))
                log.info("nats_publish_recovered", messages=len(messages))
                return
            except _ConnectionLostError as exc:
                log.warning("nats_publish_retry", error=_describe(exc), messages=len(messages))

    def _settle(self, batch: Sequence[_Item], outcome: _Outcome) -> None:
        self.published_messages += outcome.published
        self.dropped_outbound += outcome.dropped
        self.publish_batches += 1
        self.last_batch_size = sum(map(_size, batch))
        for index, item in enumerate(batch):
            if isinstance(item, _ConfirmedGroup):
                reason = outcome.rejected.get(index)
                item.settle(None if reason is None else MessageRejectedError(
                    f"NATS cannot take this message: {reason}"))

    # -- inbound ----------------------------------------------------------------------------------

    async def _dispatch(self, connection: _Connection, event: object) -> None:
        if isinstance(event, Delivery):
            subscription = self._subscriptions.get(event.sid)
            if subscription is None:
                return  # unsubscribed while the message was on its way
            if subscription.handler is not None:
                try:
                    subscription.handler(event.message)
                except Exception as exc:  # noqa: BLE001 - one bad message must not stop reading
                    log.exception("nats_handler_failed", subject=event.message.subject,
                                  error=repr(exc))
                return
            assert subscription.channel is not None
            try:
                subscription.channel.send_nowait(event.message)
            except trio.WouldBlock:
                self.dropped_inbound += 1
            except trio.BrokenResourceError:  # the consumer closed its channel
                self.dropped_inbound += 1
                del self._subscriptions[event.sid]
                await connection.write(unsub_frame(event.sid))
            except trio.ClosedResourceError:  # closing: nobody counts on these
                pass
        elif isinstance(event, Pong):
            connection.pong_arrived()
        elif isinstance(event, Ping):
            await connection.write(PONG)
        elif isinstance(event, ServerError):
            if connection.accepted:
                log.warning("nats_error", server=connection.server.display, error=event.message)
            else:  # the answer to CONNECT: _maintain_connection reports it
                connection.refusal = event.message
        elif isinstance(event, ServerInfo):
            self._max_payload = event.max_payload

    async def _read(self, connection: _Connection) -> None:
        """Until the server closes the connection or breaks the protocol."""
        try:
            while True:
                data = await connection.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                for event in connection.parser.feed(data):
                    await self._dispatch(connection, event)
        except NatsProtocolError as exc:
            log.error("nats_protocol_error", server=connection.server.display, error=str(exc))
        except (*_STREAM_ERRORS, _ConnectionLostError) as exc:
            log.info("nats_connection_broken", server=connection.server.display,
                     error=_describe(exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must cost the connection, not KPC
            log.exception("nats_reader_failed", server=connection.server.display,
                          error=repr(exc))
        finally:
            connection.lose()

    async def _watch(self, connection: _Connection) -> None:
        """Drop a connection whose server stopped answering PINGs (a peer gone without a FIN, a
        stuck server), so confirmed publishes go again to a live one. An idle connection gets a
        keepalive PING every PING_INTERVAL. One timer here, none per batch."""
        last_keepalive = trio.current_time()
        while True:
            await trio.sleep(WATCH_INTERVAL)
            now = trio.current_time()
            if connection.stalled_for(now) > CONFIRM_TIMEOUT:
                log.warning("nats_stale_connection", server=connection.server.display,
                            error=f"no PONG (or write) within {CONFIRM_TIMEOUT:g}s")
                connection.lose()
                return
            if now - last_keepalive >= PING_INTERVAL:
                last_keepalive = now
                try:
                    await connection.write(b"", ping=True)
                except _ConnectionLostError:
                    return  # the reader ends too

    # -- connection -------------------------------------------------------------------------------

    async def _maintain_connection(self) -> None:
        """Forever: connect to the next server, serve the connection until it breaks, repeat.
        Each server is tried at most once per `reconnect_wait`."""
        log.info("nats_connecting", servers=",".join(s.display for s in self._servers),
                 name=self._name)
        last_attempt: dict[NatsServerAddress, float] = {}
        for attempt in itertools.count():
            server = self._servers[attempt % len(self._servers)]
            since = trio.current_time() - last_attempt.get(server, -math.inf)
            await trio.sleep(max(0.0, self._reconnect_wait - since))
            last_attempt[server] = trio.current_time()
            try:
                await self._serve(server)
            except (*_STREAM_ERRORS, trio.TooSlowError, NatsProtocolError, ssl.SSLError,
                    _ServerRefusedError, _ConnectionLostError) as exc:
                log.warning("nats_error", server=server.display, error=_describe(exc))
            except Exception as exc:  # noqa: BLE001 - a bug must cost a reconnect, not KPC
                log.exception("nats_connection_failed", server=server.display, error=repr(exc))

    async def _serve(self, server: NatsServerAddress) -> None:
        """One connection's life: open, handshake, serve until it breaks."""
        with trio.fail_after(CONNECT_TIMEOUT):
            stream, info, parser = await _open_stream(server)
        connection = _Connection(stream, server, parser)
        self._max_payload = info.max_payload
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, connection)
                refusal = await self._handshake(connection)
                if refusal is None:
                    self._set_connected(True)
                    log.info("nats_connected", server=server.display,
                             server_name=info.server_name, max_payload=info.max_payload)
                    nursery.start_soon(self._watch, connection)
                    await connection.lost.wait()
                nursery.cancel_scope.cancel()
        finally:
            connection.lose()
            self._connection = None
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            if self._connected:
                self._set_connected(False)
                if self._stopping:
                    log.info("nats_disconnected", server=server.display, reason="closed")
                else:
                    log.warning("nats_disconnected", server=server.display)
        if refusal is not None:
            raise _ServerRefusedError(refusal)

    async def _handshake(self, connection: _Connection) -> str | None:
        """CONNECT with every subscription and a PING; the PONG says the server accepted.
        Returns why it did not, or None."""
        self._connection = connection
        # No checkpoint between publishing `_connection` and reading the subscriptions (see
        # subscribe()); write() takes the lock before its first checkpoint.
        frames = connect_frame(self._name, __version__, connection.server.credentials())
        frames += b"".join(sub_frame(s.subject, s.queue, s.sid)
                           for s in self._subscriptions.values())
        try:
            with trio.move_on_after(CONNECT_TIMEOUT) as waiting:
                await connection.confirm(frames)
        except _ConnectionLostError as exc:
            return connection.refusal or _describe(exc)
        if waiting.cancelled_caught:
            return f"no answer to CONNECT within {CONNECT_TIMEOUT:g}s"
        connection.accepted = True
        return None

    async def _wait_connected(self) -> _Connection:
        """The live connection, once there is one."""
        while True:
            if self._closed:
                raise NatsUnavailableError("the NATS gateway is closed")
            connection = self._connection
            if self._connected and connection is not None and not connection.lost.is_set():
                return connection
            await self._connection_changed.wait()

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        self._connection_changed.set()
        self._connection_changed = trio.Event()
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(connected)
            except Exception as exc:  # noqa: BLE001 - raising here would end the connection
                log.error("nats_connection_callback_failed", error=_describe(exc))

    def _close(self) -> None:
        """No more traffic: fail what waits, end every subscription's channel."""
        if not self._closed:
            log.info("nats_closed")
        self._closed = True
        self._outbox_send.close()
        self._connected = False
        self._connection_changed.set()
        unsent = NatsUnavailableError("the NATS gateway closed before the server confirmed")
        leftovers: list[_Item] = [*self._in_flight]
        while True:
            try:
                leftovers.append(self._outbox_receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        for item in leftovers:
            if isinstance(item, _ConfirmedGroup):
                item.settle(unsent)
        for subscription in self._subscriptions.values():
            if subscription.channel is not None:
                subscription.channel.close()
        self._subscriptions.clear()


async def _open_stream(
    server: NatsServerAddress,
) -> tuple[trio.abc.Stream, ServerInfo, ServerStreamParser]:
    """TCP, the server's INFO, then TLS if the URL or the server asks for it."""
    # The lean stream: a third less CPU per read and write than trio.SocketStream's helpers.
    stream: trio.abc.Stream = LeanSocketStream.take_over(
        await trio.open_tcp_stream(server.host, server.port))
    try:
        parser = ServerStreamParser()
        info = await _read_info(stream, parser)
        if server.tls and not info.offers_tls():
            raise _ServerRefusedError("the URL asks for TLS (tls://) but the server offers none")
        if info.tls_required or server.tls:
            tls = trio.SSLStream(stream, ssl.create_default_context(),
                                 server_hostname=server.host)
            await tls.do_handshake()
            stream = tls
        return stream, info, parser
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _read_info(stream: trio.abc.Stream, parser: ServerStreamParser) -> ServerInfo:
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise _ConnectionLostError("the server closed the connection before its INFO")
        events = parser.feed(data)
        if events:
            if not isinstance(events[0], ServerInfo):
                raise NatsProtocolError(f"expected INFO first, got {events[0]!r}")
            return events[0]


@asynccontextmanager
async def open_nats_gateway(
    urls: Sequence[str],
    *,
    name: str = "kpc",
    queue_capacity: int = 2_000,
    on_connection_change: Callable[[bool], None] | None = None,
    on_batch: Callable[[int, float], None] | None = None,
    reconnect_wait: float = 2.0,
) -> AsyncIterator[NatsGateway]:
    """Connect to NATS (`urls` may carry credentials: nats://user:pass@host:4222, or tls://)
    and yield the gateway. An unreachable NATS does not fail this: the gateway retries every
    `reconnect_wait` seconds, forever, and reports `connected=False` meanwhile. On a normal exit
    the gateway is drained (this waits for queued confirmed publishes: bound it with a cancel
    scope). `queue_capacity` bounds the messages waiting for the publisher."""
    if not urls:
        raise ValueError("no NATS URL given: configure at least one (NATS_URLS)")
    servers = tuple(parse_url(url) for url in urls)
    outbox_send, outbox_receive = trio.open_memory_channel[_Item](queue_capacity)
    gateway = NatsGateway(servers, name, reconnect_wait, on_connection_change, outbox_send,
                          outbox_receive, _OutboxRoom(queue_capacity), on_batch)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway._maintain_connection)
            nursery.start_soon(gateway._run_publisher)
            try:
                yield gateway
                await gateway.drain()
            finally:
                gateway._stopping = True
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Only the body can fail here (the gateway's tasks do not raise): give the caller its
        # own exception back rather than a group it did not ask for.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        gateway._close()
