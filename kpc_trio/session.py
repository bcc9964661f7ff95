"""One MQTT client connection: the sans-IO core driven by a reader task and a writer task.

The reader decodes what the client sends, relays each PUBLISH as a `ClientData` and acknowledges
QoS 1/2 messages only after NATS accepted them (one NATS hand-over and one acknowledgement write
per read, no task per message). The writer drains the state machine's output buffer and runs
only while there is output, so an idle connection costs one task: responses and pushes from NATS
are encoded straight into that buffer by `deliver()`, which never blocks, and a client whose
buffer outgrows `max_outbox_bytes` is dropped instead of growing memory.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import attrs
import trio

from kpc_trio.auth import EndpointIdentity, EndpointTokenResolver, TokenValidationError
from kpc_trio.client_auth import ANONYMOUS, AuthOutcome
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.hub import Hub
from kpc_trio.kaa import records
from kpc_trio.kaa.kp1 import Kp1Error, Route, error_payload
from kpc_trio.logs import RepeatedEvents, get_logger, logging_for, set_log_source
from kpc_trio.metrics import Metrics
from kpc_trio.mqtt.codec import encode
from kpc_trio.mqtt.connection import (
    ConnectionState,
    ConnectReceived,
    DisconnectReceived,
    PublishRun,
    ServerConnection,
    Subscribed,
    Unsubscribed,
)
from kpc_trio.mqtt.errors import InvalidTopicError, LocalProtocolError, ProtocolError
from kpc_trio.mqtt.packets import ConnAck, ConnAckCode, Connect, PacketType, Publish, QoS
from kpc_trio.mqtt.topics import validate_topic_name
from kpc_trio.nats.gateway import NatsPort, OnSettled, OutboundMessage
from kpc_trio.net import Peer
from kpc_trio.net.admission import ReadPacer
from kpc_trio.net.socket_stream import LeanSocketStream
from kpc_trio.parking import Parking, can_park, idle_fileno
from kpc_trio.relay import (
    REFUSED_BY_NATS_REASON,
    REFUSED_BY_NATS_STATUS,
    Relay,
    UndeliverableError,
    utf8_length,
)
from kpc_trio.traffic import TrafficMeter

log = get_logger(__name__)

RECEIVE_SIZE = 16384
#: MQTT 3.1.1 section 3.1.2.10: the server disconnects after 1.5 keepalive periods of silence.
KEEPALIVE_FACTOR = 1.5
#: How long a closing session may take to flush its last bytes (CONNACK refusal, final acks).
FINAL_FLUSH_TIMEOUT = 5.0
#: MQTT 3.1.1 section 1.5.3: a topic is at most 65,535 bytes of UTF-8.
MAX_TOPIC_BYTES = 65_535


class Delivery(enum.Enum):
    """What became of a message for the client; a dropped one is counted with its reason."""

    DELIVERED = "delivered"
    NOT_ROUTED = "not_routed"  # not this session's (any more): the caller counts it
    DROPPED = "dropped"  # this session counted why (slow consumer, invalid topic)


@attrs.frozen
class SessionLimits:
    max_packet_size: int = 1_048_576
    connect_timeout: float = 10.0
    max_outbox_bytes: int = 1_048_576
    #: QoS 1/2 messages relayed but not yet confirmed by NATS before a connection stops reading;
    #: also the QoS 2 messages a client may leave unreleased (no PUBREL) before it is closed.
    max_inflight: int = 100
    max_publish_rate: int = 0  # PUBLISH packets per second read from a client; 0 = unlimited
    max_receive_rate: int = 0  # bytes per second read from a client; 0 = unlimited
    max_subscriptions: int = 100
    max_client_id_length: int = 256
    #: logging.repeat-interval: what a client can repeat at will is logged once per interval.
    log_repeat_interval: float = 10.0
    #: kaa.kpc.limits.park-idle-after: a connected session idle this long parks (0 = never).
    park_after: float = 0.0

    def read_pacer(self) -> ReadPacer | None:
        if not (self.max_publish_rate or self.max_receive_rate):
            return None
        return ReadPacer(self.max_publish_rate, self.max_receive_rate)

    @property
    def receive_size(self) -> int:
        """Bytes per read: at most a second's worth of the receive rate."""
        return min(RECEIVE_SIZE, self.max_receive_rate or RECEIVE_SIZE)


#: The first byte of a CONNECT packet (type 1, no flags).
CONNECT_FIRST_BYTE = bytes([PacketType.CONNECT << 4])
#: CONNACK 3 (server unavailable), the same bytes in MQTT 3.1 and 3.1.1.
SERVER_UNAVAILABLE_CONNACK = encode(ConnAck(ConnAckCode.SERVER_UNAVAILABLE))


async def run_refusal(stream: trio.abc.Stream, connect_timeout: float) -> None:
    """Answer a connection KPC has no room for (`max-connections`): CONNACK 3 to its CONNECT,
    then close. No session and nothing decoded beyond the packet type: under a connection storm
    a refusal must cost less than a connection. A client that sends no CONNECT within the
    connect timeout, or something else first, is closed without an answer, as a session would.
    """
    try:
        with trio.move_on_after(connect_timeout):
            first = await stream.receive_some(RECEIVE_SIZE)
            if first[:1] == CONNECT_FIRST_BYTE:
                await stream.send_all(SERVER_UNAVAILABLE_CONNACK)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


class ClientAuthenticator(Protocol):
    async def authenticate(self, connect: Connect, peer: Peer) -> AuthOutcome:
        """Decide the CONNACK return code for a CONNECT and who the client is."""


class AnonymousAuthenticator:
    """Accepts every client without asking anyone (tests of the relay alone)."""

    async def authenticate(self, connect: Connect, peer: Peer) -> AuthOutcome:
        return ANONYMOUS


@attrs.define
class SessionContext:
    """Everything a session needs from the service, shared by all sessions. Mutable only for
    a configuration reload (new limits and authentication settings apply to new sessions)."""

    hub: Hub[Session]
    gateway: NatsPort
    relay: Relay
    resolver: EndpointTokenResolver
    events: ConnectivityEvents
    metrics: Metrics
    traffic: TrafficMeter | None = None  # None when traffic reports are off
    limits: SessionLimits = SessionLimits()
    authenticator: ClientAuthenticator = AnonymousAuthenticator()
    live: set[Session] = attrs.field(factory=set)  # the sessions running now (or parked)
    parking: Parking | None = None  # None: sessions never park


@attrs.frozen
class _Request:
    """A request relayed in a batch: its PUBLISH, route, and the request id NATS saw."""

    event: Publish
    route: Route
    relayed_id: int
    endpoint_id: str | None


@attrs.define(slots=True)
class _Batch:
    """What one read from the client produced: relays to confirm, ids to acknowledge, counts."""

    now: float  # trio time of the read: one clock reading serves every message in it
    max_payload: int  # NATS's, read once per read and again after every wait
    outgoing: list[OutboundMessage] = attrs.field(factory=list)  # in the order received
    needs_confirmation: bool = False  # a QoS 1/2 message is among them
    acknowledgements: list[int] = attrs.field(factory=list)
    publishes: int = 0  # PUBLISH packets received, relayed or not
    token_cache_hits: int = 0
    relayed: dict[str, int] = attrs.field(factory=dict)  # per extension (a Counter costs more)
    # Endpoints already marked active at `now`: once per read is enough.
    touched: set[tuple[str, str]] = attrs.field(factory=set)
    # outgoing index -> the request: what a refused message is answered on and withdrawn from.
    requests: dict[int, _Request] | None = None
    debug: bool = attrs.field(factory=log.is_debug)  # asked once per read, not per message
    # The topic last relayed since the last wait, its route and binding: a device repeats its
    # topic, and the decoder then hands over the same string, so one identity check stands for
    # the route, token and binding look-ups (nothing can change them without a wait).
    topic: str | None = None
    route: Route | None = None
    binding: EndpointBinding | None = None


@attrs.frozen
class _Writer:
    """The running writer task: `terminate()` cancels it, the session waits for it to be done."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class EndpointBinding:
    """An endpoint identified on this session: how to address it in response topics."""

    endpoint_id: str
    token: str
    app_version: str
    app_name: str
    token_id: str | None  # what revocation events name


class Session:
    # Slots: thousands of idle sessions are the service's main memory cost.
    __slots__ = (
        "_stream", "peer", "_ctx", "_conn", "_endpoints", "_asked", "_writer",
        "_writer_nursery", "_writing_inline", "_stopping", "_reading_scope", "_receiving",
        "close_reason", "auth", "_dropping", "_bytes_in", "_bytes_out", "_publishes_in",
        "_publishes_out", "_pacer", "_repeats", "_closing", "_deadline", "_parked_fd",
    )

    def __init__(self, stream: trio.abc.Stream, peer: Peer, context: SessionContext) -> None:
        self._stream = stream
        self.peer = peer
        self._ctx = context
        limits = context.limits
        self._pacer = limits.read_pacer()  # None unless read rates are limited
        # Paced reads are handled in slices of PUBLISH packets: no runs to split there.
        self._conn = ServerConnection(
            max_packet_size=limits.max_packet_size, max_subscriptions=limits.max_subscriptions,
            max_client_id_length=limits.max_client_id_length, max_inflight=limits.max_inflight,
            publish_runs=self._pacer is None)
        self._endpoints: dict[str, EndpointBinding] = {}
        # Whether it relayed a request (the hub remembers them): only then does its end scan
        # the hub's pending requests.
        self._asked = False
        # The writer task runs only while output is pending: an idle connection has one task.
        self._writer: _Writer | None = None
        self._writer_nursery: trio.Nursery | None = None  # None: nothing more is written
        self._writing_inline = False  # the reading task writes its acknowledgements itself
        self._stopping = False
        # One scope around all the reading (see run); True while waiting for the client.
        self._reading_scope: trio.CancelScope | None = None
        self._receiving = False
        self.close_reason = "unknown"
        self.auth: AuthOutcome = ANONYMOUS
        self._dropping = False  # QoS 0 messages are being dropped (NATS away)
        metrics = context.metrics
        self._bytes_in = metrics.received_bytes.labels(peer.transport)
        self._bytes_out = metrics.sent_bytes.labels(peer.transport)
        self._publishes_in = metrics.packets_received.labels("PUBLISH")
        self._publishes_out = metrics.packets_sent.labels("PUBLISH")
        self._repeats: RepeatedEvents | None = None  # made by the first repeatable event
        self._closing: trio.Event | None = None  # set by stop_reading: close() ends the wait
        self._deadline = math.inf  # the connect timeout, then the keepalive's (trio time)
        self._parked_fd: int | None = None  # the socket it waits on while parked

    @property
    def parked(self) -> bool:
        """Waiting for its client without a task (`kpc_trio.parking`)."""
        return self._parked_fd is not None

    @property
    def client_id(self) -> str | None:
        return self._conn.client_id

    def log_fields(self) -> tuple[tuple[str, Any], ...]:
        """Added to every event this session's tasks log (`set_log_source`)."""
        return (("client_id", self.client_id), ("peer", self.peer.address),
                ("transport", self.peer.transport))

    # --- lifecycle --------------------------------------------------------------------------
    async def run(self, writer_nursery: trio.Nursery | None, resumed: bool = False) -> None:
        """Serve the connection until it ends or parks; always releases everything it held
        when it ends.

        The writer task runs in `writer_nursery`, shared with other sessions (a nursery per
        session would be a good part of an idle connection's memory); it always ends before the
        stream is closed.

        All the reading runs in one cancel scope, made once (a scope per read cost more than
        the rest of a request's handling): its deadline is the connect timeout, then the
        keepalive, and none while a read is being handled. `terminate()` cancels it at any
        time, `stop_reading()` only while waiting for the client.

        A connected session idle for `park_after` ends its task without releasing anything
        (`kpc_trio.parking`); `resume()` runs it again (`resumed`) in a new task.
        """
        set_log_source(self)
        open_connections = self._ctx.metrics.connections_open.labels(self.peer.transport)
        if not resumed:
            self._writer_nursery = writer_nursery
            self._ctx.live.add(self)
            open_connections.inc()
            self._deadline = trio.current_time() + self._ctx.limits.connect_timeout
        parked = False
        try:
            # Reading is inline, not a method: an idle connection waits here, and every
            # coroutine frame on its stack is memory held by each of thousands of connections.
            conn = self._conn
            receive_size = self._ctx.limits.receive_size
            # Only where it can park: a session that cannot would wake up for nothing.
            park_after = (self._ctx.limits.park_after
                          if self._ctx.parking is not None and can_park(self._stream) else 0.0)
            try:
                while True:  # again only when a session that meant to park could not
                    with trio.CancelScope(deadline=(
                        min(self._deadline, trio.current_time() + park_after)
                        if park_after and conn.state is ConnectionState.CONNECTED
                        else self._deadline
                    )) as self._reading_scope:
                        while conn.state is not ConnectionState.CLOSED and not self._stopping:
                            self._receiving = True
                            try:
                                data = await self._stream.receive_some(receive_size)
                            except (trio.BrokenResourceError, trio.ClosedResourceError):
                                self._set_reason("connection_lost")
                                break
                            finally:
                                self._receiving = False
                            if not data:
                                if conn.state is ConnectionState.CONNECTED:
                                    self._set_reason("connection_closed")
                                break
                            self._bytes_in.inc(len(data))
                            events = conn.receive_data(data)
                            # Also without events: replies such as PINGRESP wait for the
                            # writer. A PUBACK alone needs nothing but the keepalive below.
                            if self._pacer is not None:
                                self._reading_scope.deadline = math.inf
                                await self._handle_paced(events, len(data))
                            elif events or conn.pending_output:
                                # Handling is never timed out.
                                self._reading_scope.deadline = math.inf
                                await self._handle_events(events)
                            # An idle connection must not hold on to its last read and packets.
                            del data, events
                            if conn.state is ConnectionState.CONNECTED:
                                now = trio.current_time()
                                self._deadline = (now + conn.keepalive * KEEPALIVE_FACTOR
                                                  if conn.keepalive else math.inf)
                                self._reading_scope.deadline = (
                                    min(self._deadline, now + park_after) if park_after
                                    else self._deadline)
                            else:
                                self._reading_scope.deadline = self._deadline  # connect timeout
                    if self._stopping:
                        self._set_reason("shutdown")
                        if conn.state is ConnectionState.CONNECTED and self._closing is not None:
                            unconfirmed = self._ctx.gateway.unconfirmed_for(self)
                            if unconfirmed is not None:  # its acknowledgements go last
                                await unconfirmed.wait()
                            await self._flush()
                            await self._closing.wait()  # replies still reach the client
                    elif self._reading_scope.cancelled_caught and conn.state is not (
                            ConnectionState.CLOSED):
                        if trio.current_time() < self._deadline:  # idle for park_after
                            if self._park():
                                parked = True
                                return
                            continue
                        self._time_out()
                    break
            except ProtocolError as exc:
                self._set_reason("protocol_error")
                if self.client_id is None:
                    # e.g. identifier_rejected: the CONNACK the core sent says why
                    self._count_refusal(exc.connack.name.lower() if exc.connack else
                                        "protocol_error")
                log.info("protocol_violation", client_id=self.client_id, reason=exc.reason)
            await self._flush()
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop KPC
            self._set_reason("internal_error")
            log.exception("session_failed", client_id=self.client_id, error=repr(exc))
        finally:
            if not parked:  # else a later task ends it
                self._writer_nursery = None
                self._release()
                with trio.CancelScope(shield=True):
                    await self._stop_writer()
                    await trio.aclose_forcefully(self._stream)
                open_connections.dec()
                self._ctx.live.discard(self)
                if self._repeats is not None:
                    self._repeats.flush(log)
                log.info("client_disconnected", client_id=self.client_id,
                         reason=self.close_reason)

    async def _handle_paced(self, events: list, received_bytes: int) -> None:
        """Handle a read's events at the client's read rates: a slice of PUBLISHes at a time,
        waiting between slices (acknowledged as usual); its further bytes wait in the socket."""
        pacer = self._pacer
        assert pacer is not None
        start = 0
        while True:
            end, publishes = start, 0
            while end < len(events) and publishes < pacer.publishes_per_slice:
                publishes += isinstance(events[end], Publish)
                end += 1
            if end > start or self._conn.pending_output:
                await self._handle_events(events[start:end])
            delay = pacer.delay(trio.current_time(), publishes, received_bytes)
            received_bytes = 0
            if delay > 0:
                self._receiving = True  # shutdown cancels this wait as it would a read
                try:
                    await trio.sleep(delay)
                finally:
                    self._receiving = False
            start = end
            if start >= len(events):
                return

    def _park(self) -> bool:
        """End this task, the session waiting without one for its client (`run` resumed):
        False if it cannot (nothing to wait on, a write or a shutdown under way)."""
        parking = self._ctx.parking
        if parking is None or self._stopping or self._writing_inline:
            return False
        fd = idle_fileno(self._stream)
        if fd is None or not parking.park(self, fd, self._deadline):
            return False
        self._parked_fd = fd
        return True

    def resume(self) -> Awaitable[None]:
        """The body of the task that runs a parked session again (`kpc_trio.parking`)."""
        self._parked_fd = None
        return self.run(self._writer_nursery, resumed=True)

    def _unpark(self) -> None:
        """Give a parked session its task back now (the task sees why)."""
        if self._parked_fd is not None and self._ctx.parking is not None:
            self._ctx.parking.resume(self, self._parked_fd)

    def terminate(self, reason: str) -> None:
        """Drop the connection now (takeover, slow consumer, revocation)."""
        self._set_reason(reason)
        if self._closing is not None:
            self._closing.set()
        self._conn.close()
        self._writer_nursery = None
        if self._reading_scope is not None:
            self._reading_scope.cancel()
        if self._writer is not None:
            self._writer.scope.cancel()
        self._unpark()

    def stop_reading(self) -> None:
        """Graceful shutdown: read nothing more, finish in-flight relays, and keep delivering
        (replies to relayed requests) until `close()`."""
        self._stopping = True
        if self._closing is None:
            self._closing = trio.Event()
        if self._receiving and self._reading_scope is not None:
            self._reading_scope.cancel()  # a read under way is not waited for; handling is
        self._unpark()

    def close(self) -> None:
        """Graceful shutdown, after `stop_reading` (or instead of it, for a session that started
        after it was sent to all): close the connection now."""
        self.stop_reading()
        assert self._closing is not None
        self._closing.set()

    def _release(self) -> None:
        hub = self._ctx.hub
        if self.client_id is not None:
            hub.release_client_id(self.client_id, self)
        if self._asked:  # its pending requests go too
            hub.forget_session(self)
        if self._endpoints:
            change = hub.endpoints.client_gone(self, self._endpoints)
            self._endpoints.clear()
            self._ctx.events.publish(change)

    # --- reading ----------------------------------------------------------------------------
    def _set_reason(self, reason: str) -> None:
        if self.close_reason == "unknown":
            self.close_reason = reason

    def _time_out(self) -> None:
        if self._conn.state is ConnectionState.CONNECTED:
            self._set_reason("keepalive_timeout")
            return
        self._set_reason("connect_timeout")
        self._count_refusal("connect_timeout")
        log.info("connect_timeout", timeout=self._ctx.limits.connect_timeout)

    async def _handle_events(self, events: list) -> None:
        batch = _Batch(trio.current_time(), self._ctx.gateway.max_payload)
        max_inflight = self._ctx.limits.max_inflight
        index = 0
        while index < len(events):
            event = events[index]
            index += 1
            if isinstance(event, Publish):
                batch.publishes += 1
                if event.packet_id is not None:
                    # Also for rejected messages: the PUBLISH itself was received and answered.
                    batch.acknowledgements.append(event.packet_id)
                if event.topic is batch.topic:  # `route` is set with `topic`
                    self._relay_message(event, batch.route, batch.binding,  # type: ignore[arg-type]
                                        batch)
                elif not self._relay_identified(event, batch):
                    await self._on_message(event, batch)
                    self._waited(batch)
                if len(batch.outgoing) >= max_inflight:
                    await self._confirm(batch)
                    self._waited(batch)
                continue
            if isinstance(event, PublishRun):
                await self._relay_run(event, batch, max_inflight)
                continue
            if isinstance(event, ConnectReceived):
                self._count_packet("CONNECT")
                if await self._on_connect(event.connect):
                    # Packets pipelined behind CONNECT were held until the CONNACK decision.
                    events = [*events, *self._conn.receive_data(b"")]
            elif isinstance(event, Subscribed):
                self._count_packet("SUBSCRIBE")
                if log.is_debug():  # a SUBSCRIBE may carry thousands of filters
                    log.debug("subscribed", filters=",".join(f for f, _ in event.subscriptions))
                for topic_filter, _ in event.subscriptions:
                    await self._identify_subscriber(topic_filter, batch)
            elif isinstance(event, Unsubscribed):
                self._count_packet("UNSUBSCRIBE")
                if log.is_debug():
                    log.debug("unsubscribed", filters=",".join(event.topic_filters))
            elif isinstance(event, DisconnectReceived):
                self._count_packet("DISCONNECT")
                self._set_reason("client_disconnect")
            self._waited(batch)
        await self._confirm(batch)
        self._count(batch)

    async def _relay_run(self, run: PublishRun, batch: _Batch, max_inflight: int) -> None:
        """Relay a run of QoS 0 messages of one topic as `_handle_events` would relay each, with
        less work per message once the topic was relayed in this read (`batch.topic`): then
        everything but correlation id and payload is a fact of the topic, and its messages go
        to `Relay.client_data_run` up to `max_inflight` at a time, counted once per slice.
        The others (the first of a topic, a topic not relayable without a wait or refused,
        requests, debug logging) take the path of a lone message, one by one."""
        topic, payloads = run.topic, run.payloads
        batch.publishes += len(payloads)
        start = 0
        while start < len(payloads):
            route = batch.route
            if topic is not batch.topic or route is None:
                event = Publish(topic, payloads[start])
                start += 1
                if not self._relay_identified(event, batch):
                    await self._on_message(event, batch)
                    self._waited(batch)
            elif route.request_id is None and not batch.debug:
                start += self._relay_repeats(
                    topic, payloads[start:start + max_inflight - len(batch.outgoing)], route,
                    batch.binding, batch)
            else:
                self._relay_message(Publish(topic, payloads[start]), route, batch.binding, batch)
                start += 1
            if len(batch.outgoing) >= max_inflight:
                await self._confirm(batch)
                self._waited(batch)

    def _relay_repeats(self, topic: str, payloads: list[bytes], route: Route,
                       binding: EndpointBinding | None, batch: _Batch) -> int:
        """`_relay_message` for each of `payloads`, all at once, up to one too large for NATS
        (refused as `_relay_message` refuses it); returns how many it took."""
        endpoint_id = None if binding is None else binding.endpoint_id
        messages = self._ctx.relay.client_data_run(route, endpoint_id, payloads,
                                                   batch.max_payload)
        relayed = len(messages)
        if binding is not None and self._ctx.traffic is not None:
            self._ctx.traffic.received(self.auth.tenant_id, binding.app_name, binding.endpoint_id,
                                       sum(map(len, payloads[:relayed])), relayed)
        batch.outgoing += messages
        batch.relayed[route.extension] = batch.relayed.get(route.extension, 0) + relayed
        if relayed == len(payloads):
            return relayed
        self._relay_message(Publish(topic, payloads[relayed]), route, binding, batch)
        return relayed + 1

    def _waited(self, batch: _Batch) -> None:
        """After a wait, tokens, bindings, routes and NATS's max_payload may have changed."""
        batch.topic = None
        batch.max_payload = self._ctx.gateway.max_payload

    async def _confirm(self, batch: _Batch) -> None:
        """Hand the batch to NATS in one piece, then acknowledge: a batch with QoS 1/2 messages
        waits for NATS's confirmation (the backpressure point); QoS 0 alone only for room, and
        is dropped (counted) while NATS is away.

        A lone batch (nothing else being published) is not waited for: NATS's reading task
        acknowledges it when the PONG comes (`_acknowledge_later`), and this session reads on.
        The next batch waits for it, so acknowledgements keep the order of the PUBLISHes."""
        gateway = self._ctx.gateway
        unconfirmed = gateway.unconfirmed_for(self)
        if unconfirmed is not None:
            await unconfirmed.wait()
        if batch.outgoing:
            if batch.needs_confirmation:
                if await gateway.publish_confirmed_later(batch.outgoing,
                                                         self._acknowledge_later(batch), self):
                    batch.acknowledgements = []
                else:
                    refused = await gateway.publish_confirmed(batch.outgoing)
                    if refused:
                        self._answer_refused(batch.outgoing, batch.requests, refused)
            elif await gateway.publish(batch.outgoing):
                self._dropping = False
            else:
                self._count_drops(len(batch.outgoing))
            batch.outgoing = []
            batch.needs_confirmation = False
            batch.requests = None
        if batch.acknowledgements:
            self._conn.acknowledge_all(batch.acknowledgements)
            batch.acknowledgements.clear()
        # The reading task writes its own acknowledgements (no writer task to start per read);
        # a client that does not read them is not read from either.
        if self._writer is None and not self._writing_inline and self._conn.pending_output:
            unsent = self._send_now()
            if not unsent:
                return
            self._writing_inline = True
            try:
                await self._send_pending(unsent)  # cancelled with the reading: no scope of its own
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.terminate("connection_lost")
            finally:
                self._writing_inline = False

    def _acknowledge_later(self, batch: _Batch) -> OnSettled:
        """What acknowledges `batch` once NATS confirmed it, in NATS's reading task."""
        acknowledgements, outgoing, requests = batch.acknowledgements, batch.outgoing, \
            batch.requests

        def confirmed(refused: Sequence[int], error: Exception | None) -> None:
            try:
                if error is not None or refused:
                    with logging_for(self):  # this runs in NATS's task, logs are the session's
                        if error is not None:  # the gateway closed first: the client sends again
                            log.info("relay_unconfirmed", error=str(error))
                            self.terminate("nats_unavailable")
                            return
                        self._answer_refused(outgoing, requests, refused)
                self._conn.acknowledge_all(acknowledgements)
                self._wake_writer()
            except Exception as exc:  # noqa: BLE001 - NATS's reading task must go on
                with logging_for(self):
                    log.exception("session_failed", error=repr(exc))
                self.terminate("internal_error")

        return confirmed

    def _answer_refused(self, outgoing: list[OutboundMessage],
                        requests: dict[int, _Request] | None,
                        refused: Sequence[int]) -> None:
        """NATS refused these messages (permissions; counted and logged by the gateway): a
        request with a request id gets 502, since retrying cannot help until the NATS
        permissions change. The PUBACK still goes: MQTT 3.1.1 has no negative one, and holding
        it would only make the device send the same refused message again."""
        affinity = self._ctx.relay.affinity
        if affinity:  # a replica subject refused: the service subject from now on
            for index in refused:
                affinity.forget_subject(outgoing[index].subject)
        if requests is None:
            return
        for index in refused:
            request = requests.get(index)
            if request is not None:
                # Never delivered: no reply to wait for (a shutdown would wait for it).
                self._withdraw_request(request.route, request.relayed_id, request.endpoint_id)
                self._answer_error(request.event, request.route.request_id,
                                   REFUSED_BY_NATS_STATUS, REFUSED_BY_NATS_REASON)

    def _count_drops(self, count: int) -> None:
        self._ctx.metrics.messages_dropped.labels("nats_unavailable").inc(count)
        # One warning per connection and outage; the metric counts every message.
        if not self._dropping:
            self._dropping = True
            log.warning("messages_dropped", reason="nats_unavailable", qos=0, count=count)

    def _count_packet(self, packet_type: str) -> None:
        """Packets that are rare enough to count one by one (PUBLISH is counted per read)."""
        self._ctx.metrics.packets_received.labels(packet_type).inc()

    def _count(self, batch: _Batch) -> None:
        """Metrics once per read, not per message (each increment takes a lock)."""
        for extension, count in batch.relayed.items():
            self._ctx.metrics.relayed_to(extension).inc(count)
        if batch.publishes:
            self._publishes_in.inc(batch.publishes)
        if batch.token_cache_hits:
            self._ctx.resolver.record_cache_hits(batch.token_cache_hits)

    async def _on_connect(self, connect: Connect) -> bool:
        self.auth = await self._ctx.authenticator.authenticate(connect, self.peer)
        code = self.auth.code
        if code is not ConnAckCode.ACCEPTED:
            self._conn.refuse_connect(code)
            self.close_reason = f"refused_{code.name.lower()}"
            self._count_refusal(code.name.lower())
            log.info("connect_refused", client_id=connect.client_id, code=int(code))
            return False
        self._conn.accept_connect()
        self._ctx.metrics.connects.labels(self.peer.transport).inc()
        client_id = self._conn.client_id
        assert client_id is not None
        previous = self._ctx.hub.claim_client_id(client_id, self)
        if previous is not None:
            log.info("client_takeover", client_id=client_id)
            previous.terminate("takeover")
        log.info("client_connected", client_id=client_id, keepalive=self._conn.keepalive,
                 protocol_level=connect.protocol_level, auth=self.auth.kind,
                 tenant_id=self.auth.tenant_id)
        return True

    def _count_refusal(self, reason: str) -> None:
        self._ctx.metrics.connect_refusals.labels(self.peer.transport, reason).inc()

    def _relay_identified(self, event: Publish, batch: _Batch) -> bool:
        """Relay `event` if its route is valid and its endpoint known without waiting (a cached
        token): the common case, with no coroutine per message. A cached token rejection is
        answered here. False leaves the message, untouched, to `_on_message`."""
        try:
            route = self._ctx.relay.route(event.topic)
        except Kp1Error:
            return False
        binding = None
        if route.token is not None:
            try:
                binding = self._identify_cached(route, batch)
            except TokenValidationError as err:  # a cached rejection: answered like the first
                self._answer_error(event, route.request_id, err.status_code, err.reason_phrase)
                return True
            if binding is None:
                return False
        self._relay(event, route, binding, batch)
        batch.topic, batch.route, batch.binding = event.topic, route, binding
        return True

    async def _on_message(self, event: Publish, batch: _Batch) -> None:
        """Relay `event` once its endpoint is identified, or answer why it cannot be."""
        try:
            route = self._ctx.relay.route(event.topic)
            binding = await self._identify(route, batch) if route.token is not None else None
        except Kp1Error as err:
            self._answer_error(event, err.request_id, err.status_code, err.reason_phrase)
            return
        except TokenValidationError as err:
            self._answer_error(event, route.request_id, err.status_code, err.reason_phrase)
            return
        self._relay(event, route, binding, batch)

    def _relay(self, event: Publish, route: Route, binding: EndpointBinding | None,
               batch: _Batch) -> None:
        if binding is not None:
            activity = (binding.endpoint_id, route.app_version)
            if activity not in batch.touched:
                batch.touched.add(activity)
                self._ctx.hub.endpoints.touch(binding.endpoint_id, batch.now)
        self._relay_message(event, route, binding, batch)

    def _relay_message(self, event: Publish, route: Route, binding: EndpointBinding | None,
                       batch: _Batch) -> None:
        """Relay a message whose route is valid and endpoint (if any) touched in this read."""
        endpoint_id = None
        if binding is not None:
            endpoint_id = binding.endpoint_id
            if self._ctx.traffic is not None:
                self._ctx.traffic.received(self.auth.tenant_id, binding.app_name, endpoint_id,
                                           len(event.payload))
        correlation_id = self._ctx.relay.next_correlation_id()
        relayed_route = route
        relayed_id = None
        if route.request_id is not None:
            # The reply comes back to this connection (endpoint-unaware: under an id of KPC's).
            relayed_id = self._ctx.hub.expect_reply(
                self, route.app_version, route.extension, route.request_id, batch.now,
                endpoint_id=endpoint_id, token=route.token, qos=event.qos)
            self._asked = True
            relayed_route = attrs.evolve(route, request_id=relayed_id)
        message = self._ctx.relay.client_data_message(relayed_route, endpoint_id,
                                                      event.payload, correlation_id)
        if len(message.payload) > batch.max_payload:
            # NATS would refuse the whole batch: refuse this one message instead.
            self._ctx.metrics.messages_dropped.labels("too_large_for_nats").inc()
            if relayed_id is not None:  # never sent: no reply to wait for
                self._withdraw_request(route, relayed_id, endpoint_id)
            self._answer_error(event, route.request_id, 413,
                               f"Payload too large: NATS takes {batch.max_payload} "
                               "bytes per message")
            return
        if relayed_id is not None:
            if batch.requests is None:
                batch.requests = {}
            batch.requests[len(batch.outgoing)] = _Request(event, route, relayed_id, endpoint_id)
        batch.outgoing.append(message)
        if event.qos is not QoS.AT_MOST_ONCE:
            batch.needs_confirmation = True
        batch.relayed[route.extension] = batch.relayed.get(route.extension, 0) + 1
        if batch.debug:
            log.debug("client_data_relayed", topic=event.topic, endpoint_id=endpoint_id,
                      correlation_id=correlation_id)

    async def _identify(self, route: Route, batch: _Batch) -> EndpointBinding:
        """Resolve the route's token to an endpoint, binding the endpoint to this session."""
        binding = self._identify_cached(route, batch)
        if binding is None:
            assert route.token is not None
            app_name = self._app_name(route)
            identity = await self._ctx.resolver.identify(app_name, route.token)
            if self._ctx.relay.registry.app_name(route.app_version) != app_name:
                # The appversion left the configuration while its token was being validated.
                raise Kp1Error(404, "Application version not found", route.request_id,
                               f"appversion {route.app_version!r} was removed")
            binding = self._binding_for(identity, route, app_name)
        return binding

    def _identify_cached(self, route: Route, batch: _Batch) -> EndpointBinding | None:
        """`_identify` if the token's validation is cached, else None."""
        assert route.token is not None
        app_name = self._app_name(route)
        identity = self._ctx.resolver.identify_cached(app_name, route.token, batch.now)
        if identity is None:
            return None
        batch.token_cache_hits += 1
        return self._binding_for(identity, route, app_name)

    def _app_name(self, route: Route) -> str:
        app_name = self._ctx.relay.registry.app_name(route.app_version)
        assert app_name is not None  # parse_topic rejects unknown appversions
        return app_name

    def _binding_for(self, identity: EndpointIdentity, route: Route,
                     app_name: str) -> EndpointBinding:
        binding = self._endpoints.get(identity.endpoint_id)
        if binding is None or binding.token != route.token \
                or binding.app_version != route.app_version:
            binding = self._bind(identity, route, app_name)
        return binding

    async def _identify_subscriber(self, topic_filter: str, batch: _Batch) -> None:
        """A SUBSCRIBE to `kp1/<appversion>/<extension>/<token>/...` identifies the endpoint
        (spec 6.1), so a client that only subscribes gets the pushes for it."""
        levels = topic_filter.split("/", 4)
        if len(levels) < 4 or any("+" in level or "#" in level for level in levels[:4]):
            return
        try:
            route = self._ctx.relay.route("/".join(levels[:4]))
            if route.token is not None:
                await self._identify(route, batch)
        except (Kp1Error, TokenValidationError) as exc:
            self._ctx.metrics.subscriptions_unidentified.inc()
            self._log_repeatable(logging.INFO, "subscription_not_identified",
                                 topic_filter=topic_filter, reason=str(exc))

    def _bind(self, identity: EndpointIdentity, route: Route, app_name: str) -> EndpointBinding:
        assert route.token is not None
        endpoint_id = identity.endpoint_id
        binding = self._endpoints[endpoint_id] = EndpointBinding(
            endpoint_id, route.token, route.app_version, app_name, identity.token_id)
        change = self._ctx.hub.endpoints.identified(endpoint_id, self, route.app_version,
                                                    trio.current_time())
        if change:
            self._ctx.events.publish(change)
            log.info("endpoint_connected", endpoint_id=endpoint_id,
                     app_version=route.app_version)
        return binding

    def forget_endpoint(self, endpoint_id: str) -> None:
        """The endpoint lifecycle took the endpoint away (roamed, revoked, idle, appversion
        removed): stop addressing it here."""
        self._endpoints.pop(endpoint_id, None)

    def uses_token(self, endpoint_id: str, token_ids: frozenset[str]) -> bool:
        """Whether this session serves the endpoint with one of `token_ids` (16/ECAP: only
        sessions using a revoked token end)."""
        binding = self._endpoints.get(endpoint_id)
        return binding is not None and binding.token_id in token_ids

    def _withdraw_request(self, route: Route, relayed_id: int, endpoint_id: str | None) -> None:
        """Forget a request NATS never took: no reply will come for it."""
        self._ctx.hub.take_reply(route.app_version, route.extension, relayed_id,
                                 trio.current_time(), endpoint_id=endpoint_id)

    def _answer_error(
        self, event: Publish, request_id: int | None, status_code: int, reason: str
    ) -> None:
        """KPC's own 1/KP error: only when the request carries a request id (RFC 1, PR59)."""
        self._ctx.metrics.requests_rejected.labels(str(status_code)).inc()
        self._log_repeatable(logging.INFO, "request_rejected", topic=event.topic,
                             status_code=status_code, reason=reason)
        if request_id is None:
            return
        topic = event.topic + "/error"
        if utf8_length(topic) > MAX_TOPIC_BYTES:  # no MQTT topic can carry the answer
            self._ctx.metrics.messages_dropped.labels("reply_topic_too_long").inc()
            self._log_repeatable(logging.INFO, "request_unanswerable", topic=event.topic,
                                 reason=f"the answer's topic would exceed {MAX_TOPIC_BYTES} bytes")
            return
        self.deliver(topic, error_payload(status_code, reason), min(event.qos, QoS.AT_LEAST_ONCE))

    def _log_repeatable(self, level: int, event: str, **fields: Any) -> None:
        """Log an event the client can cause at will: once per interval, then a count."""
        if self._repeats is None:
            self._repeats = RepeatedEvents(self._ctx.limits.log_repeat_interval)
        self._repeats.log(log, level, event, trio.current_time(), **fields)

    # --- delivering to the client -----------------------------------------------------------
    def deliver_extension_data(self, data: records.ExtensionData,
                               request_token: str | None = None,
                               qos: QoS = QoS.AT_MOST_ONCE) -> Delivery:
        """Publish an extension's answer or push to this client. `request_token` is the token
        of the request answered, if this connection asked (its endpoint may have moved on);
        `qos` the request's (a push goes out at QoS 0)."""
        binding = self._endpoints.get(data.endpoint_id) if data.endpoint_id else None
        if data.endpoint_id is not None and binding is None and request_token is None:
            return Delivery.NOT_ROUTED
        try:
            message = self._ctx.relay.client_message(
                data, request_token or (binding.token if binding else None),
                binding.app_version if binding else None,
            )
        except UndeliverableError as exc:
            log.warning("extension_data_undeliverable", reason=str(exc),
                        correlation_id=data.correlation_id)
            return Delivery.NOT_ROUTED
        delivery = self.deliver(message.topic, message.payload, qos)
        traffic = self._ctx.traffic
        if delivery is Delivery.DELIVERED and binding is not None and traffic is not None:
            traffic.sent(self.auth.tenant_id, binding.app_name, binding.endpoint_id,
                         len(message.payload))
        return delivery

    def deliver(self, topic: str, payload: bytes, qos: QoS) -> Delivery:
        """Queue a PUBLISH to the client without blocking (official clients never SUBSCRIBE)."""
        if self._conn.state is not ConnectionState.CONNECTED:
            return Delivery.NOT_ROUTED
        subscribed = self._conn.subscription_qos(topic)
        if subscribed is not None and subscribed > qos:
            qos = subscribed
        try:
            self._conn.publish(topic, payload, qos)
        except LocalProtocolError as exc:
            try:
                validate_topic_name(topic)
            except InvalidTopicError:
                # e.g. an extension's resource path that makes the topic invalid (wildcards, NUL)
                self._ctx.metrics.messages_dropped.labels("invalid_topic").inc()
                self._log_repeatable(logging.WARNING, "publish_refused", topic=topic,
                                     reason=str(exc))
                return Delivery.DROPPED
            # Every packet id is in flight: the client stopped acknowledging its QoS 1 messages.
            return self._drop_slow_consumer(reason=str(exc))
        if self._conn.pending_output > self._ctx.limits.max_outbox_bytes:
            return self._drop_slow_consumer(pending_bytes=self._conn.pending_output)
        self._publishes_out.inc()
        self._wake_writer()
        return Delivery.DELIVERED

    def _drop_slow_consumer(self, **why: Any) -> Delivery:
        log.warning("slow_consumer", client_id=self.client_id, **why)
        self._ctx.metrics.messages_dropped.labels("slow_consumer").inc()
        self.terminate("slow_consumer")
        return Delivery.DROPPED

    # --- writing ----------------------------------------------------------------------------
    def _wake_writer(self) -> None:
        """Write pending output: at once if the socket takes it all, else in a writer task."""
        if (self._writer is None and not self._writing_inline and self._conn.pending_output
                and self._writer_nursery is not None):
            unsent = self._send_now()
            if not unsent:
                return
            self._writer = writer = _Writer()
            self._writer_nursery.start_soon(self._write_pending, writer, unsent)

    def _send_now(self) -> bytes:
        """Send the pending output as far as a plain TCP socket takes it without waiting;
        returns what is left to write (b"": nothing, or the connection is gone). Other
        transports leave it all to a task."""
        data = self._conn.data_to_send()
        if not isinstance(self._stream, LeanSocketStream):
            return data
        try:
            sent = self._stream.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.terminate("connection_lost")
            return b""
        self._bytes_out.inc(sent)
        return data[sent:]

    async def _send_pending(self, data: bytes) -> None:
        """Write `data`, then whatever the connection queues meanwhile."""
        while data:
            await self._stream.send_all(data)
            self._bytes_out.inc(len(data))
            data = self._conn.data_to_send()

    async def _write_pending(self, writer: _Writer, unsent: bytes) -> None:
        try:
            with writer.scope:
                await self._send_pending(unsent)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.terminate("connection_lost")
        except Exception as exc:  # noqa: BLE001 - the shared nursery must outlive one session's bug
            log.exception("session_writer_failed", client_id=self.client_id, error=repr(exc))
            self.terminate("internal_error")
        finally:
            self._writer = None
            writer.done.set()

    async def _flush(self) -> None:
        """Send what is still queued (a CONNACK refusal, last acknowledgements)."""
        self._wake_writer()
        if self._writer is not None:
            with trio.move_on_after(FINAL_FLUSH_TIMEOUT):
                await self._writer.done.wait()

    async def _stop_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.scope.cancel()
            await writer.done.wait()
