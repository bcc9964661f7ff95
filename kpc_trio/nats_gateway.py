"""The trio-facing NATS gateway: the only module that knows nats-py.

nats-py is asyncio-only, so it runs on its own asyncio loop in one worker thread (`_NatsLink`).
The trio side (`NatsGateway`) crosses over as little as possible (design.md, "NATS from trio"):

* outbound: both publish paths feed one trio memory channel, bounded in messages
  (`_OutboxRoom`); a publisher task takes whatever queued while the previous batch was in
  flight (up to ~1000 messages, no linger) and hands it over with one
  `run_coroutine_threadsafe`. Batches go one at a time, which keeps them in order on the wire,
  also across retries. A batch with QoS 1/2 messages is confirmed by a PONG on the connection
  it was written to.
* inbound: messages of a subscription cross into trio in batches, one `TrioToken.run_sync_soon`
  per batch; a full channel drops (and counts) instead of stalling the nats-py loop.

The loop thread never blocks on trio (no `trio.from_thread.run`): it only schedules callbacks.

nats-py has no batch publish: `Client.publish` costs about 2 µs per message, a tenth of KPC's
whole budget per relayed message. A batch is therefore written as one buffer of `PUB` frames
through the client's own write queue (`_send_command`, `_flush_pending`: private, so the nats-py
version is pinned and `tests/unit/test_nats_frames.py` checks these are still there).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import urlsplit

import attrs
import nats.errors
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kpc_trio.logs import get_logger

log = get_logger(__name__)

#: Longest an at-most-once publish waits for room in a full outbox before it is dropped.
PUBLISH_WAIT_LIMIT = 5.0
#: Header nats-server sets on status messages (no responders, etc.).
STATUS_HEADER = "Status"

T = TypeVar("T")

BATCH_MAX_MESSAGES = 1000
FLUSH_TIMEOUT = 5.0  # a PONG slower than this counts as lost: the batch is published again
RETRY_PAUSE = 0.05  # lets nats-py notice a dead connection before the next attempt
CLOSE_TIMEOUT = 5.0
_SUBJECT_FORBIDDEN = frozenset(" \t\r\n")


class OutboundMessage(NamedTuple):
    """A message for NATS. A named tuple, not an attrs class: one is built per relayed PUBLISH
    and a frozen attrs instance costs several times more to create."""

    subject: str
    payload: bytes
    reply: str = ""


@attrs.frozen
class InboundMessage:
    subject: str
    reply: str
    payload: bytes


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


def redact_url(url: str) -> str:
    """The URL without its password (or token), for logs."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return parts._replace(netloc=f"{user}@{host}").geturl()


def subject_problem(subject: str) -> str | None:
    """Why `subject` cannot go on the NATS wire, or None if it can."""
    if not subject:
        return "subject is empty"
    if not _SUBJECT_FORBIDDEN.isdisjoint(subject):
        return f"subject {subject!r} contains whitespace"
    return None


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
class _Delivery:
    """What the loop did with one batch; `rejected` maps batch index to the reason."""

    published: int
    dropped: int
    rejected: dict[int, str]


def _call_soon(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: object) -> None:
    """Schedule `fn` on the trio thread; a finished trio run has nobody left to tell."""
    try:
        token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        pass


@attrs.define(eq=False)
class _InboundSink:
    """One subscription's path into trio. `on_message` runs on the loop thread, the rest on trio."""

    channel: trio.MemorySendChannel[InboundMessage]
    token: trio.lowlevel.TrioToken
    count_dropped: Callable[[int], None]
    consumer_gone: Callable[[_InboundSink], None]
    subscription: Subscription | None = None
    _arrived: deque[InboundMessage] = attrs.field(factory=deque)
    _scheduled: bool = False
    _abandoned: bool = False

    async def on_message(self, msg: Msg) -> None:
        if msg.headers and STATUS_HEADER in msg.headers:
            # A server status (e.g. 503 "no responders" sent to a reply subject when nobody
            # listened to the request): not a message of any Kaa protocol.
            return
        self._arrived.append(InboundMessage(msg.subject, msg.reply, msg.data))
        if not self._scheduled:
            self._scheduled = True
            _call_soon(self.token, self._hand_over)

    def _hand_over(self) -> None:
        # Clear the flag before draining: a message appended meanwhile schedules another call.
        self._scheduled = False
        dropped = 0
        while self._arrived:
            message = self._arrived.popleft()
            try:
                self.channel.send_nowait(message)
            except trio.WouldBlock:
                dropped += 1
            except trio.ClosedResourceError:  # the gateway is closing: nobody counts on these
                self._arrived.clear()
            except trio.BrokenResourceError:  # the consumer closed its channel
                dropped += 1 + len(self._arrived)
                self._arrived.clear()
                if not self._abandoned:
                    self._abandoned = True
                    self.consumer_gone(self)
        if dropped:
            self.count_dropped(dropped)


class PubFrames:
    """NATS `PUB` frames for a batch; the head of each (subject, reply) pair is encoded once.

    Pairs are checked with `subject_problem` before their first use (`checked`, `add`).
    """

    MAX_HEADS = 10_000  # subjects are a handful of extensions and replicas: this is a leak guard

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str], bytes] = {}

    def checked(self, subject: str, reply: str) -> bool:
        return (subject, reply) in self._heads

    def add(self, subject: str, reply: str) -> bytes:
        """Remember a pair whose subjects are valid; returns its encoded head."""
        if len(self._heads) >= self.MAX_HEADS:
            self._heads.clear()
        head = self._heads[subject, reply] = (
            f"PUB {subject} {reply} " if reply else f"PUB {subject} ").encode()
        return head

    def frames(self, messages: Sequence[OutboundMessage]) -> bytes:
        heads = self._heads
        parts: list[bytes] = []
        append = parts.append
        for subject, payload, reply in messages:
            # A pair is missing only if the bound was hit after it was checked.
            append(heads.get((subject, reply)) or self.add(subject, reply))
            append(b"%d\r\n" % len(payload))
            append(payload)
            append(b"\r\n")
        return b"".join(parts)


@attrs.define(eq=False)
class _NatsLink:
    """The asyncio side: owns the nats-py client. Every coroutine here runs on the loop thread."""

    urls: tuple[str, ...]
    name: str
    reconnect_wait: float
    report_connection: Callable[[bool], None]
    client: Client = attrs.field(factory=Client)
    loop: asyncio.AbstractEventLoop | None = None
    _up: asyncio.Event | None = None
    _down: asyncio.Event | None = None
    _stop: asyncio.Event | None = None
    _background: set[asyncio.Task[None]] = attrs.field(factory=set)
    _frame_heads: PubFrames = attrs.field(factory=PubFrames)
    _disconnects: int = 0  # connections lost so far: a confirmation must not span one

    @property
    def max_payload(self) -> int:
        """From the server's INFO (nats-py starts with the server default, 1 MiB); an int read
        from another thread is safe."""
        return self.client.max_payload

    def run(self, started: Callable[[], None]) -> None:
        """Thread body: the loop is created here, in its own thread, and closed on stop()."""
        asyncio.run(self._main(started))

    def stop(self) -> None:
        """Any thread: close the client and end the loop."""
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)

    async def _main(self, started: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self._up, self._down, self._stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        started()
        connecting = asyncio.create_task(self._connect())
        await self._stop.wait()
        connecting.cancel()
        await self._close()

    async def _connect(self) -> None:
        log.info("nats_connecting", servers=",".join(map(redact_url, self.urls)), name=self.name)
        try:
            # max_reconnect_attempts=-1 also makes the first connect retry until it succeeds.
            await self.client.connect(
                servers=list(self.urls),
                name=self.name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
        except (nats.errors.Error, OSError, ValueError) as exc:
            log.error("nats_connect_failed", error=_describe(exc))
            return
        self._mark_up()

    def _mark_up(self) -> None:
        assert self._up is not None and self._down is not None
        self._down.clear()
        self._up.set()
        url = self.client.connected_url
        server = f"{url.hostname}:{url.port}" if url is not None else "?"
        log.info("nats_connected", server=server, max_payload=self.client.max_payload)
        self.report_connection(True)

    async def _on_disconnected(self) -> None:
        assert self._up is not None and self._down is not None
        self._disconnects += 1
        if self._up.is_set():
            self._up.clear()
            self._down.set()
            if self.client.is_closed:  # our own drain/close: expected, not an outage
                log.info("nats_disconnected", reason="closed")
            else:
                log.warning("nats_disconnected")
            self.report_connection(False)

    async def _on_reconnected(self) -> None:
        self._mark_up()

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats_error", error=_describe(exc))

    async def _on_closed(self) -> None:
        log.info("nats_closed")

    # -- outbound --------------------------------------------------------------------------------

    async def deliver(self, batch: Sequence[_Item]) -> _Delivery:
        """Publish a batch; returns once the server confirmed every `_ConfirmedGroup` in it."""
        sendable: list[OutboundMessage] = []
        to_confirm: list[OutboundMessage] = []
        rejected: dict[int, str] = {}
        dropped = 0
        for index, item in enumerate(batch):
            if isinstance(item, OutboundMessage):
                item = _BestEffortGroup((item,))
            if isinstance(item, _BestEffortGroup):
                for message in item.messages:
                    if self._problem(message) is None:
                        sendable.append(message)
                    else:
                        dropped += 1
                continue
            problem = next(filter(None, map(self._problem, item.messages)), None)
            if problem is not None:
                rejected[index] = problem
            else:
                sendable.extend(item.messages)
                to_confirm.extend(item.messages)
        if self.client.is_connected:
            try:
                connection = self._disconnects
                await self._publish(sendable)
                if to_confirm:
                    await self._confirm(connection)
                return _Delivery(published=len(sendable), dropped=dropped, rejected=rejected)
            except _TRANSIENT_ERRORS as exc:
                log.warning("nats_publish_interrupted", error=_describe(exc),
                            unconfirmed=len(to_confirm))
        # Best-effort messages are not held back for a reconnect; confirmed ones wait for it.
        await self._publish_until_confirmed(to_confirm)
        best_effort = len(sendable) - len(to_confirm)
        return _Delivery(published=len(to_confirm), dropped=dropped + best_effort,
                         rejected=rejected)

    def _problem(self, message: OutboundMessage) -> str | None:
        if not self._frame_heads.checked(message.subject, message.reply):
            problem = subject_problem(message.subject)
            if problem is None and message.reply:
                problem = subject_problem(message.reply)
            if problem is not None:
                return problem
            self._frame_heads.add(message.subject, message.reply)
        if len(message.payload) > self.client.max_payload:
            return (f"payload of {len(message.payload)} bytes exceeds the server's "
                    f"max_payload of {self.client.max_payload} bytes")
        return None

    async def _publish(self, messages: Sequence[OutboundMessage]) -> None:
        """Queue the messages as one buffer of PUB frames and kick nats-py's flusher."""
        if not messages:
            return
        await self.client._send_command(self._frame_heads.frames(messages))
        await self.client._flush_pending()

    async def _publish_until_confirmed(self, messages: Sequence[OutboundMessage]) -> None:
        """At-least-once: publish again after every failure, each time on a live connection."""
        assert self._up is not None
        while messages:
            await self._up.wait()
            try:
                connection = self._disconnects
                await self._publish(messages)
                await self._confirm(connection)
                log.info("nats_publish_recovered", messages=len(messages))
                return
            except _TRANSIENT_ERRORS as exc:
                log.warning("nats_publish_retry", error=_describe(exc), messages=len(messages))
                await asyncio.sleep(RETRY_PAUSE)

    async def _confirm(self, connection: int) -> None:
        """Return once the server has processed everything published so far on this connection;
        `connection` is the `_disconnects` count from before it was published."""
        assert self._down is not None
        # nats-py's flush() writes its PING straight to the socket, ahead of PUBs still queued for
        # its flusher task; wait until the flusher took them, so that the PONG really covers them.
        # The flusher was kicked by publish() and is ready to run: yield to it (a timed sleep
        # here would cost a whole epoll tick, about 1 ms, on every batch).
        while self.client.pending_data_size > 0:
            if not self.client.is_connected:
                raise _ConnectionLostError("disconnected before the batch was written")
            await asyncio.sleep(0)
        pong = asyncio.ensure_future(self.client.flush(timeout=FLUSH_TIMEOUT))  # type: ignore[arg-type]
        lost = asyncio.ensure_future(self._down.wait())
        try:
            await asyncio.wait({pong, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not pong.done():
            # The reconnect forgets outstanding PINGs: this PONG will never come.
            pong.cancel()
            raise _ConnectionLostError("disconnected before the server confirmed the batch")
        pong.result()
        # flush() also returns, without any PONG, once nats-py has begun reconnecting (its loops
        # are stopped before our disconnected callback runs): that is no confirmation.
        if connection != self._disconnects or not self.client.is_connected:
            raise _ConnectionLostError("disconnected before the server confirmed the batch")

    # -- inbound ---------------------------------------------------------------------------------

    async def subscribe(self, subject: str, queue: str, sink: _InboundSink) -> None:
        """Subscribe now if connected, else as soon as the first connection is up (FIFO with
        publishes, so a SUB still precedes any request published after it)."""
        assert self._up is not None
        if self._up.is_set():
            await self._subscribe_now(subject, queue, sink)
            return
        task = asyncio.create_task(self._subscribe_when_up(subject, queue, sink))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _subscribe_when_up(self, subject: str, queue: str, sink: _InboundSink) -> None:
        assert self._up is not None
        await self._up.wait()
        try:
            await self._subscribe_now(subject, queue, sink)
        except _TRANSIENT_ERRORS as exc:
            log.error("nats_subscribe_failed", subject=subject, error=_describe(exc))

    async def _subscribe_now(self, subject: str, queue: str, sink: _InboundSink) -> None:
        sink.subscription = await self.client.subscribe(subject, queue=queue, cb=sink.on_message)
        log.info("nats_subscribed", subject=subject, queue=queue)

    async def unsubscribe(self, sink: _InboundSink) -> None:
        if sink.subscription is not None:
            try:
                await sink.subscription.unsubscribe()
            except _TRANSIENT_ERRORS as exc:
                log.warning("nats_unsubscribe_failed", error=_describe(exc))

    # -- shutdown --------------------------------------------------------------------------------

    async def sync(self) -> None:
        assert self._up is not None
        await self._up.wait()
        try:
            await self._confirm(self._disconnects)
        except _TRANSIENT_ERRORS as exc:
            # Lost the connection meanwhile: nats-py re-sends every subscription on reconnect.
            log.info("nats_sync_interrupted", error=_describe(exc))

    async def drain(self) -> None:
        """Unsubscribe (handling what already arrived), flush, close."""
        if self.client.is_connected:
            try:
                await self.client.drain()
                return
            except _TRANSIENT_ERRORS as exc:
                log.warning("nats_drain_failed", error=_describe(exc))
        await self._close()

    async def _close(self) -> None:
        if self.client.is_closed:
            return
        try:
            await asyncio.wait_for(self.client.close(), CLOSE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - closing at shutdown is best effort, whatever state
            log.warning("nats_close_failed", error=_describe(exc))


class _ConnectionLostError(Exception):
    """The connection dropped while a batch waited for its confirmation."""


_TRANSIENT_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError, _ConnectionLostError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@attrs.define(eq=False)
class NatsGateway:
    """The trio side. Create it with `open_nats_gateway`; all methods run on the trio thread.

    Counters for metrics: published_messages, publish_batches, last_batch_size,
    dropped_outbound, dropped_inbound.
    """

    _link: _NatsLink
    _token: trio.lowlevel.TrioToken
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
    _connected: bool = False
    _in_flight: Sequence[_Item] = ()
    _sinks: list[_InboundSink] = attrs.field(factory=list)
    _publisher_done: trio.Event = attrs.field(factory=trio.Event)
    _loop_stopped: bool = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def publish_confirmed(
        self, messages: Sequence[OutboundMessage], *, fail_fast: bool = False
    ) -> None:
        """Return once the NATS server has the messages (published and flushed).

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
        await self._room.wait_for(len(messages))
        try:
            self._enqueue(group)
        except trio.ClosedResourceError:
            raise NatsUnavailableError(
                "the NATS gateway is draining or closed: publish before shutting it down"
            ) from None
        await group.done.wait()
        if group.error is not None:
            raise group.error

    @property
    def max_payload(self) -> int:
        """The largest message payload the NATS server takes (its INFO; 1 MiB until known)."""
        return self._link.max_payload

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
        counts (dropped_inbound); closing the channel unsubscribes. Before the first connection
        the subscription is registered as soon as NATS is reachable."""
        problem = subject_problem(subject)
        if problem is not None:
            raise ValueError(f"cannot subscribe: {problem}")
        send, receive = trio.open_memory_channel[InboundMessage](capacity)
        sink = _InboundSink(send, self._token, self._count_dropped_inbound, self._unsubscribe)
        await self._in_loop(self._link.subscribe(subject, queue, sink))
        self._sinks.append(sink)
        return receive

    async def sync(self) -> None:
        """Return once the server has processed everything sent so far, subscriptions included
        (so an event published right after startup cannot slip past a new subscription)."""
        await self._in_loop(self._link.sync())

    async def drain(self) -> None:
        """Publish everything queued (waiting for NATS if it is down), unsubscribe, close."""
        self._outbox_send.close()
        await self._publisher_done.wait()
        if not self._loop_stopped:
            await self._in_loop(self._link.drain())
        self._close_inbound()

    # -- internals -------------------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        """Queue `item`, for which the room was checked (no checkpoint since)."""
        self._outbox_send.send_nowait(item)  # the channel has room: it holds at most `queued`
        self._room.take(_size(item))

    def _count_dropped_inbound(self, count: int) -> None:
        self.dropped_inbound += count

    def _unsubscribe(self, sink: _InboundSink) -> None:
        self._sinks.remove(sink)
        sink.channel.close()
        if not self._loop_stopped:
            assert self._link.loop is not None
            asyncio.run_coroutine_threadsafe(self._link.unsubscribe(sink), self._link.loop)

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if self._on_connection_change is not None:
            try:
                self._on_connection_change(connected)
            except Exception as exc:  # noqa: BLE001 - raising here would crash the trio run
                log.error("nats_connection_callback_failed", error=_describe(exc))

    async def _in_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop thread; completion comes back with one run_sync_soon."""
        if self._loop_stopped:
            coroutine.close()
            raise NatsUnavailableError("the NATS gateway is closed")
        assert self._link.loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._link.loop)
        finished = trio.Event()
        future.add_done_callback(lambda _: _call_soon(self._token, finished.set))
        await finished.wait()
        if future.cancelled():
            raise NatsUnavailableError("the NATS gateway stopped before the call completed")
        return future.result()

    async def _run_publisher(self) -> None:
        try:
            while batch := await self._next_batch():
                self._in_flight = batch
                started = time.perf_counter()
                delivery = await self._in_loop(self._link.deliver(batch))
                self._in_flight = ()
                self._settle(batch, delivery)
                if self._on_batch is not None:
                    self._on_batch(self.last_batch_size, time.perf_counter() - started)
        finally:
            self._publisher_done.set()

    async def _next_batch(self) -> list[_Item]:
        """The first item plus whatever queued up meanwhile, up to the size cap.

        No linger timer: while one batch crosses to the NATS thread the next one accumulates, so
        batches grow with load and a lone request pays no waiting time (latency matters: p99 of
        a device round trip is measured in milliseconds).
        """
        try:
            batch = [await self._outbox_receive.receive()]
        except trio.EndOfChannel:
            return []
        self._room.release(self._take_ready(batch, _size(batch[0])))
        return batch

    def _take_ready(self, batch: list[_Item], size: int) -> int:
        """Add items already queued, without a checkpoint each; returns the new message count."""
        while size < BATCH_MAX_MESSAGES:
            try:
                item = self._outbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.append(item)
            size += _size(item)
        return size

    def _settle(self, batch: Sequence[_Item], delivery: _Delivery) -> None:
        self.published_messages += delivery.published
        self.dropped_outbound += delivery.dropped
        self.publish_batches += 1
        self.last_batch_size = sum(map(_size, batch))
        for index, item in enumerate(batch):
            if isinstance(item, _ConfirmedGroup):
                reason = delivery.rejected.get(index)
                item.settle(None if reason is None else MessageRejectedError(
                    f"NATS cannot take this message: {reason}"))

    async def _start_loop_thread(self) -> threading.Thread:
        started = trio.Event()
        thread = threading.Thread(
            target=self._link.run,
            args=(lambda: _call_soon(self._token, started.set),),
            name=f"nats-{self._link.name}",
            daemon=True,
        )
        thread.start()
        await started.wait()
        return thread

    async def _stop_loop_thread(self, thread: threading.Thread) -> None:
        """Stop the loop (closing the client), join the thread, fail whatever is left."""
        self._outbox_send.close()
        if not self._loop_stopped:
            self._link.stop()
            await trio.to_thread.run_sync(thread.join)
            self._loop_stopped = True
        self._connected = False
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
        self._close_inbound()

    def _close_inbound(self) -> None:
        for sink in self._sinks:
            sink.channel.close()
        self._sinks.clear()


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
    """Connect to NATS (`urls` may carry credentials: nats://user:pass@host:4222) and yield the
    gateway. An unreachable NATS does not fail this: the gateway retries every `reconnect_wait`
    seconds, forever, and reports `connected=False` meanwhile. On a normal exit the gateway is
    drained (this waits for queued confirmed publishes: bound it with a cancel scope).
    `queue_capacity` bounds the messages waiting for the publisher."""
    if not urls:
        raise ValueError("no NATS URL given: configure at least one (NATS_URLS)")
    token = trio.lowlevel.current_trio_token()
    outbox_send, outbox_receive = trio.open_memory_channel[_Item](queue_capacity)
    gateway: NatsGateway

    def report_connection(connected: bool) -> None:
        _call_soon(token, gateway._set_connected, connected)

    link = _NatsLink(tuple(urls), name, reconnect_wait, report_connection)
    gateway = NatsGateway(link, token, on_connection_change, outbox_send, outbox_receive,
                          _OutboxRoom(queue_capacity), on_batch)
    thread = await gateway._start_loop_thread()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway._run_publisher)
            try:
                yield gateway
                await gateway.drain()
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Only the body can fail here (the publisher does not raise): give the caller its own
        # exception back rather than a group it did not ask for.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        with trio.CancelScope(shield=True):
            await gateway._stop_loop_thread(thread)
