"""The KPC service: the nursery tree and the shutdown order (design.md, "Task tree").

```
KpcService.serve
├─ NATS gateway (context)            outlives the sessions so their last messages flush
└─ services nursery                  token responses, ExtensionData dispatch, HTTP
   └─ sessions nursery               deadline = graceful-shutdown period once shutdown starts
      └─ listeners nursery           cancelled first on shutdown
```
Shutdown, all within `service.graceful-shutdown` (a second SIGTERM or the end of the period cuts
it short), each phase logged as `shutdown_phase` with its counts:
unready (/ready 503 for `service.shutdown.unready-delay`) -> stop accepting -> stop reading (the
relays under way finish) -> await replies (the ExtensionData of requests already relayed are
delivered) -> disconnect (the remaining connections, at most `service.shutdown.disconnect-rate`
per second) -> disconnected events (endpoints still kept online) -> NATS drained.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable

import attrs
import trio

from kpc_trio.applications import (
    Applications,
    ApplicationsChange,
    AppVersionSettings,
    LiveApplications,
    describe,
    endpoint_aware_of,
)
from kpc_trio.auth import EndpointTokenResolver
from kpc_trio.client_auth import NatsClientAuthenticator
from kpc_trio.config import Config, ConfigError, env_var_name
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.health import Health
from kpc_trio.http_transport import HttpTransport, ReplyWaiters, kp1_error_response
from kpc_trio.httpd import HttpLimits, management_routes, rest_routes, serve_http
from kpc_trio.hub import Hub, PendingRequest
from kpc_trio.kaa import records, scmp, subjects
from kpc_trio.kaa.affinity import Affinity
from kpc_trio.kaa.endpoints import State
from kpc_trio.kaa.extension_data import read_extension_data
from kpc_trio.keycloak import ServiceTokens
from kpc_trio.logs import get_logger
from kpc_trio.memory import run_memory_trimmer
from kpc_trio.metrics import Metrics
from kpc_trio.nats.connection import (
    Connected,
    ConnectOptions,
    LameDuck,
    NatsEvent,
    PublishRefused,
    ServerErrorSeen,
    SubscriptionRefused,
    TlsOptions,
)
from kpc_trio.nats.credentials import NatsCredentialsError, load_creds, load_nkey_seed
from kpc_trio.nats.embedded import open_embedded_nats
from kpc_trio.nats.gateway import InboundMessage, NatsPort, open_nats_gateway
from kpc_trio.net import (
    EdgeSettings,
    HandshakeFailureReason,
    Peer,
    ProxyMode,
    TrustedProxies,
    build_server_ssl_context,
    serve_tcp,
    serve_tls,
    serve_websocket,
)
from kpc_trio.parking import Parking
from kpc_trio.presence import run_idle_sweeper
from kpc_trio.relay import Relay, TopicLimits, is_expired
from kpc_trio.revocation import RevocationListener
from kpc_trio.session import Delivery, Session, SessionContext, SessionLimits, run_refusal
from kpc_trio.tekton import EVERYTHING, Catalogue, TektonClient, TektonSource
from kpc_trio.traffic import TrafficMeter, run_traffic_reports

log = get_logger(__name__)

#: Seconds the listeners wait for the first NATS connection before opening regardless.
NATS_STARTUP_WAIT = 10.0
#: Seconds the NATS gateway may always take to flush the last events during shutdown.
NATS_DRAIN_MINIMUM = 0.5
#: How often a shutdown checks whether the replies it waits for arrived.
REPLY_POLL_INTERVAL = 0.05


def session_limits(config: Config) -> SessionLimits:
    mqtt = config.kaa.kpc.transports.mqtt
    return SessionLimits(
        max_packet_size=mqtt.max_packet_size,
        connect_timeout=mqtt.connect_timeout,
        max_outbox_bytes=mqtt.max_outbox_bytes,
        max_inflight=mqtt.max_inflight,
        max_subscriptions=mqtt.max_subscriptions,
        max_client_id_length=mqtt.max_client_id_length,
        max_publish_rate=mqtt.max_publish_rate,
        max_receive_rate=mqtt.max_receive_rate,
        log_repeat_interval=config.logging.repeat_interval,
        park_after=config.kaa.kpc.limits.park_idle_after,
    )


def nats_urls(config: Config) -> list[str]:
    return [url.strip() for url in config.nats.urls.split(",") if url.strip()]


def nats_connect_options(config: Config, name: str) -> ConnectOptions:
    """The NATS connection settings, with their files read and checked now: a wrong path, a bad
    seed or an unusable certificate stops the start with the key to fix."""
    nats = config.nats
    credentials = None
    for key, path, load in (("nats.creds-file", nats.creds_file, load_creds),
                            ("nats.nkey-seed-file", nats.nkey_seed_file, load_nkey_seed)):
        if path:
            try:
                credentials = load(path)
            except NatsCredentialsError as exc:
                raise ConfigError(f"{key}: {exc} (from {_origin(config, key)})",
                                  key_path=key) from None
    tls = TlsOptions(nats.tls.ca_file, nats.tls.cert_file, nats.tls.key_file,
                     nats.tls.handshake_first)
    for key, path in (("nats.tls.ca-file", tls.ca_file), ("nats.tls.cert-file", tls.cert_file),
                      ("nats.tls.key-file", tls.key_file)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{key}: cannot read {path}: {exc.strerror} (from "
                                  f"{_origin(config, key)})", key_path=key) from None
    try:
        tls.context()
    except ssl.SSLError as exc:
        key = "nats.tls.cert-file" if tls.cert_file else "nats.tls.ca-file"
        raise ConfigError(f"{key}: the NATS TLS files cannot be used: {exc} (from "
                          f"{_origin(config, key)})", key_path=key) from None
    return ConnectOptions(name=name, reconnect_wait=nats.reconnect_wait,
                          randomize=nats.randomize_servers, credentials=credentials, tls=tls)


def _origin(config: Config, key: str) -> str:
    env_name = env_var_name(key)
    return f"env {env_name}" if env_name in os.environ else config.source


@attrs.define
class KpcService:
    config: Config
    hub: Hub[Session] = attrs.field()
    ports: dict[str, int] = attrs.field(factory=dict)
    sessions: set[Session] = attrs.field(factory=set)
    metrics: Metrics = attrs.field(factory=Metrics)
    health: Health = attrs.field(factory=Health)
    _shutdown_requested: trio.Event = attrs.field(factory=trio.Event)
    _nats_up: trio.Event = attrs.field(factory=trio.Event)
    _http_waiters: ReplyWaiters = attrs.field(factory=ReplyWaiters)
    _grace_deadline: float = -math.inf
    _unready_delay: float = 0.0
    _context: SessionContext | None = None
    _sessions_nursery: trio.Nursery | None = None  # hosts the sessions and their writer tasks
    _parking: Parking = attrs.field(factory=Parking)  # idle sessions without a task
    applications: LiveApplications = attrs.field(init=False)
    tekton: TektonSource | None = None  # set when kaa.tekton.enabled
    _ssl_context: ssl.SSLContext | None = None  # replaced by a reload: new handshakes use it
    #: One of `kpc-trio run --workers N`: every listener shares its port (SO_REUSEPORT).
    reuse_port: bool = False

    def __attrs_post_init__(self) -> None:
        if self.config.kaa.tekton.enabled:
            if self.config.kaa.applications:
                log.warning("file_applications_ignored", reason="kaa.tekton.enabled is true: "
                            "Tekton is the source of applications",
                            applications=describe(self.config.kaa.applications))
            self.health.configuration_loaded = False
            self.applications = LiveApplications(
                Applications.build({}, endpoint_aware_of(self.config), "tekton"))
        else:
            self.applications = LiveApplications(Applications.from_config(self.config))

    @hub.default
    def _hub_for_config(self) -> Hub[Session]:
        return Hub(request_timeout=self.config.kaa.kpc.esp.response_timeout,
                   policy_of=lambda app_version: self.applications.disconnect_policy(app_version),
                   http_idle_timeout=self.config.kaa.kpc.transports.http.idle_timeout)

    @property
    def replica_id(self) -> str:
        return self.config.service.instance.replica.id

    @property
    def shutdown_started(self) -> bool:
        return self._shutdown_requested.is_set()

    def request_shutdown(self, *, unready_delay: float | None = None) -> None:
        """Start the graceful shutdown (from the trio thread); `unready_delay` overrides
        `service.shutdown.unready-delay` (an in-process service has no load balancer)."""
        if not self._shutdown_requested.is_set():
            log.info("shutdown_requested", sessions=len(self.sessions))
            self.health.shutting_down = True
            self._grace_deadline = trio.current_time() + self.config.service.graceful_shutdown
            self._unready_delay = (self.config.service.shutdown.unready_delay
                                   if unready_delay is None else unready_delay)
            self._shutdown_requested.set()

    async def serve(self, *, task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        self.metrics.endpoints_online.set_function(lambda: self.hub.endpoint_count)
        # Its files are checked before anything listens.
        options = nats_connect_options(
            self.config, f"{self.config.service.instance.name}-{self.replica_id}")
        async with trio.open_nursery() as http_nursery:
            # Metrics, health and REST live until the very end: readiness reports the shutdown.
            await self._start_http(http_nursery)
            # The gateway drains on exit; bounded, since NATS may be the very thing that is gone.
            with trio.CancelScope() as drain_scope:
                async with contextlib.AsyncExitStack() as stack:
                    urls = nats_urls(self.config)
                    if not urls:
                        urls = [await stack.enter_async_context(open_embedded_nats())]
                        log.info("embedded_nats_started", url=urls[0])
                    gateway = await stack.enter_async_context(open_nats_gateway(
                        urls,
                        options=options,
                        on_connection_change=self._nats_connection_changed,
                        on_batch=self._observe_batch,
                        on_event=self._nats_event,
                    ))
                    await self._await_first_nats_connection()
                    await self._serve_with(gateway, task_status)
                    log.info("shutdown_phase", phase="nats_drain")
                    # What is left of the graceful period, but a moment at least for the events.
                    drain_scope.deadline = max(self._grace_deadline,
                                               trio.current_time() + NATS_DRAIN_MINIMUM)
            if drain_scope.cancelled_caught:
                log.warning("nats_drain_incomplete", reason="graceful shutdown period over")
            http_nursery.cancel_scope.cancel()

    async def _await_first_nats_connection(self) -> None:
        """Devices connecting before NATS would only get 503s: give NATS a head start.

        After `NATS_STARTUP_WAIT` the listeners open anyway (not ready) and the gateway keeps
        reconnecting in the background.
        """
        with trio.move_on_after(NATS_STARTUP_WAIT):
            await self._nats_up.wait()
        if not self._nats_up.is_set():
            log.warning("nats_unreachable_at_startup", waited_seconds=NATS_STARTUP_WAIT)

    def _nats_connection_changed(self, connected: bool) -> None:
        if connected:
            if self._nats_up.is_set() and self.tekton is not None:
                # Core NATS is at most once: events sent while we were away are lost.
                self.tekton.request(EVERYTHING)
            self._nats_up.set()
        elif self._context is not None:
            # Replies cannot arrive now: fail what waits (503 / CONNACK 3) instead of timing out.
            self._context.resolver.fail_pending()
            authenticator = self._context.authenticator
            if isinstance(authenticator, NatsClientAuthenticator):
                for replies in authenticator.replies:
                    replies.abandon_all()
        self.health.nats_connected = connected
        self.metrics.nats_connected.set(1 if connected else 0)

    def _nats_event(self, event: NatsEvent) -> None:
        metrics = self.metrics
        if isinstance(event, Connected):
            if event.reconnect:
                metrics.nats_reconnects.inc()
            metrics.nats_server.clear()
            metrics.nats_server.labels(event.server, event.server_name).set(1)
            self.health.nats_refused_subscriptions = event.refused_subscriptions
        elif isinstance(event, LameDuck):
            metrics.nats_lame_duck_moves.inc()
        elif isinstance(event, ServerErrorSeen):
            metrics.nats_server_errors.labels(event.kind).inc()
        elif isinstance(event, PublishRefused):
            metrics.messages_dropped.labels("nats_permission_denied").inc()
        elif isinstance(event, SubscriptionRefused):
            self.health.nats_refused_subscriptions |= {event.subject}
        if isinstance(event, (Connected, SubscriptionRefused)) and \
                self.health.nats_refused_subscriptions:
            log.error("not_ready", reason="nats_subscription_refused",
                      subjects=",".join(sorted(self.health.nats_refused_subscriptions)))

    def _observe_batch(self, messages: int, seconds: float) -> None:
        self.metrics.nats_publish_batch_size.observe(messages)
        self.metrics.nats_publish_latency.observe(seconds)

    async def _start_http(self, nursery: trio.Nursery) -> None:
        tls = self.config.kaa.kpc.transports.mqtt.tls
        management, server = self.config.management, self.config.server
        apps = {
            "management": (management_routes(self.metrics, self.health),
                           management.host, management.port),
            "rest": (rest_routes(tls_cert_file=tls.cert_file if tls.enabled else None),
                     server.host, server.port),
        }
        for name, (routes, host, port) in apps.items():
            self.ports[name] = await nursery.start(functools.partial(
                serve_http, routes, host=host or None, port=port, name=name,
                reuse_port=self.reuse_port))

    async def _serve_with(self, gateway: NatsPort,
                          task_status: trio.TaskStatus[dict[str, int]]) -> None:
        config = self.config
        context = self._context = self._session_context(gateway)
        self.metrics.token_cache_bytes.set_function(lambda: context.resolver.cache_bytes)
        self.metrics.parked_connections.set_function(self._parking.__len__)
        self.metrics.route_memory_bytes.set_function(
            lambda: context.relay.remembered_routes_bytes)
        self.metrics.connectivity_events_queued.set_function(lambda: context.events.queued)
        async with trio.open_nursery() as services:
            await self._start_nats_consumers(services, gateway, context)
            if self.tekton is not None:
                # Before any listener opens: devices must not meet an empty configuration.
                await services.start(self.tekton.serve)
                self.health.configuration_loaded = True
            services.start_soon(context.events.run)
            services.start_soon(run_idle_sweeper, self.hub.endpoints, context.events.publish)
            services.start_soon(run_memory_trimmer, config.kaa.kpc.limits.memory_trim_interval,
                                self.metrics.memory_trims.inc)
            if context.traffic is not None:
                services.start_soon(functools.partial(
                    run_traffic_reports, context.traffic, gateway,
                    period=config.kaa.kpc.traffic_report.period,
                    subject=subjects.traffic_report(config.service.instance.name),
                    replica_id=self.replica_id,
                ))
            async with trio.open_nursery() as sessions_nursery:
                self._sessions_nursery = sessions_nursery
                await sessions_nursery.start(self._parking.serve, sessions_nursery)
                async with trio.open_nursery() as listeners_nursery:
                    await self._start_listeners(listeners_nursery, sessions_nursery)
                    await self._start_http_transport(listeners_nursery, sessions_nursery)
                    log.info("kpc_started", replica_id=self.replica_id, **{
                        f"{name}_port": port for name, port in self.ports.items()})
                    task_status.started(dict(self.ports))
                    await self._shutdown_requested.wait()
                    log.info("shutdown_phase", phase="unready", seconds=self._unready_delay,
                             connections=len(self.sessions))
                    await trio.sleep_until(min(trio.current_time() + self._unready_delay,
                                               self._grace_deadline))
                    log.info("shutdown_phase", phase="stop_accepting",
                             connections=len(self.sessions))
                    listeners_nursery.cancel_scope.cancel()
                sessions_nursery.cancel_scope.deadline = self._grace_deadline
                with trio.move_on_at(self._grace_deadline) as period:
                    await self._close_sessions()
                if period.cancelled_caught:
                    log.warning("shutdown_cut_short", reason="graceful shutdown period over",
                                connections=len(self.sessions),
                                awaited_replies=self._awaiting_replies())
                sessions_nursery.cancel_scope.cancel()  # idle HTTP keep-alive connections
            # Endpoints kept online for clients that already left: nobody would report them.
            kept = self.hub.endpoints.shutdown()
            context.events.publish(kept)
            log.info("shutdown_phase", phase="disconnected_events",
                     endpoints=len(kept.disconnected), queued=context.events.queued)
            with trio.move_on_at(max(self._grace_deadline,
                                     trio.current_time() + NATS_DRAIN_MINIMUM)):
                await context.events.flushed()
            if context.events.queued:
                log.warning("connectivity_events_unpublished", endpoints=context.events.queued,
                            reason="graceful shutdown period over")
            services.cancel_scope.cancel()
        log.info("kpc_stopped", replica_id=self.replica_id)

    async def _close_sessions(self) -> None:
        """Shutdown phases from stop reading to disconnect (the caller bounds them)."""
        for session in list(self.sessions):
            session.stop_reading()
        log.info("shutdown_phase", phase="stop_reading", connections=len(self.sessions))
        rate = self.config.service.shutdown.disconnect_rate
        log.info("shutdown_phase", phase="await_replies", requests=self._awaiting_replies())
        # Replies are waited for as long as the paced disconnection still fits in the period.
        with trio.move_on_at(self._grace_deadline - len(self.sessions) / rate
                             - NATS_DRAIN_MINIMUM):
            # Polled: an event per delivered reply would cost every reply, for a rare shutdown.
            while self._awaiting_replies():  # noqa: ASYNC110
                await trio.sleep(REPLY_POLL_INTERVAL)
        sessions = list(self.sessions)
        log.info("shutdown_phase", phase="disconnect", connections=len(sessions),
                 per_second=rate, replies_abandoned=self._awaiting_replies())
        start = trio.current_time()
        for n, session in enumerate(sessions):
            await trio.sleep_until(start + n / rate)
            session.close()
        while self.sessions:  # noqa: ASYNC110 - as above: sessions end on their own
            await trio.sleep(REPLY_POLL_INTERVAL)

    def _awaiting_replies(self) -> int:
        """Requests relayed whose reply a device still expects (MQTT sessions and HTTP)."""
        now = trio.current_time()
        return self.hub.awaiting_replies(now) + len(self._http_waiters)

    def _session_context(self, gateway: NatsPort) -> SessionContext:
        config = self.config
        kpc = config.kaa.kpc
        traffic = None
        if kpc.traffic_report.enabled:
            traffic = TrafficMeter(start_ns=time.time_ns(),
                                   default_tenant_id=kpc.traffic_report.default_tenant_id)
        return SessionContext(
            live=self.sessions,
            parking=self._parking,
            hub=self.hub,
            gateway=gateway,
            relay=Relay(
                self.applications.current.registry,
                replica_id=self.replica_id,
                message_timeout_ms=kpc.esp.message_timeout,
                with_config_name=kpc.esp.with_config_name,
                limits=TopicLimits(
                    max_topic_length=kpc.limits.max_topic_length,
                    max_token_length=kpc.limits.max_token_length,
                    route_memory_bytes=kpc.limits.route_memory_bytes,
                ),
                affinity=Affinity(ttl=kpc.esp.affinity_ttl, max_bytes=kpc.limits.affinity_bytes,
                                  unanswered_limit=kpc.esp.response_timeout),
            ),
            resolver=EndpointTokenResolver(
                gateway,
                provider=kpc.auth.token_provider,
                replica_id=self.replica_id,
                request_timeout=kpc.auth.request_timeout,
                ttl=kpc.auth.token_cache.ttl,
                negative_ttl=kpc.auth.token_cache.negative_ttl,
                max_entries=kpc.auth.token_cache.max_entries,
                max_bytes=kpc.auth.token_cache.max_bytes,
                metrics=self.metrics,
            ),
            events=ConnectivityEvents(
                gateway, kpc_instance=config.service.instance.name, replica_id=self.replica_id,
                max_queued=kpc.limits.max_queued_events,
                on_dropped=self.metrics.messages_dropped.labels("event_queue_full").inc),
            metrics=self.metrics,
            traffic=traffic,
            limits=session_limits(config),
            authenticator=NatsClientAuthenticator.from_config(
                gateway, kpc.auth, replica_id=self.replica_id),
        )

    async def _start_nats_consumers(self, services: trio.Nursery, gateway: NatsPort,
                                    context: SessionContext) -> None:
        """Subscribe every task that consumes NATS, then sync so none can miss an early event."""
        instance = self.config.service.instance.name
        await services.start(context.resolver.run)
        assert isinstance(context.authenticator, NatsClientAuthenticator)
        for replies in context.authenticator.replies:
            services.start_soon(replies.run_responses,
                                await gateway.subscribe(replies.reply_subject))
        for subject in (subjects.extension_data_service(instance),
                        subjects.extension_data_replica(self.replica_id)):
            await gateway.subscribe_handler(subject, self._dispatch_extension_data)
        services.start_soon(self._follow_roaming,
                            await gateway.subscribe(subjects.connected_event(instance)))
        await services.start(RevocationListener(self).run, gateway)
        tekton = self.config.kaa.tekton
        if tekton.enabled:
            self.tekton = TektonSource(
                tekton, TektonClient(tekton, ServiceTokens(
                    self.config.kaa.oauth2, request_timeout=tekton.request_timeout)),
                instance=instance,
                extension_instances=lambda: self.config.kaa.extension_instances,
                on_catalogue=self._use_catalogue, metrics=self.metrics)
            # No queue group: every replica keeps its own copy of the configuration.
            provider = self.config.kaa.scmp.consumer.provider.service_instance.name
            for subject in scmp.subjects(provider, instance, legacy=tekton.accept_legacy_scmp):
                await gateway.subscribe_handler(subject, self.tekton.on_scmp_message)
        await gateway.sync()

    # --- live configuration ---------------------------------------------------------------------
    def _use_catalogue(self, catalogue: Catalogue) -> None:
        """Tekton's applications, with this file's extension instances."""
        versions: dict[str, AppVersionSettings] = {}
        for app_name, app_versions in catalogue.items():
            for name, settings in app_versions.items():
                if name in versions:
                    log.error("tekton_appversion_ambiguous", app_version=name,
                              applications=f"{versions[name].app_name},{app_name}",
                              action=f"served for {versions[name].app_name} only")
                    continue
                versions[name] = settings
        self.replace_applications(Applications.build(
            versions, endpoint_aware_of(self.config), "tekton"))

    def replace_applications(self, applications: Applications) -> ApplicationsChange:
        """Serve `applications` from now on: new messages are routed by it, and endpoints of
        appversions that left are released (the connections stay)."""
        change = self.applications.replace(applications)
        if self._context is not None:
            self._context.relay.use_registry(applications.registry)
        if not change:
            return change
        for kind, names in (("added", change.added), ("removed", change.removed),
                            ("changed", change.changed)):
            if names:
                self.metrics.applications_changes.labels(kind).inc(len(names))
        log.info("applications_changed", source=applications.source,
                 added=describe(change.added) or None, removed=describe(change.removed) or None,
                 changed=describe(change.changed) or None,
                 appversions=len(applications.versions))
        if change.removed:
            self.release_endpoints_of(change.removed, change.removed_applications)
        return change

    def apply_config(self, config: Config, changed: frozenset[str],
                     ssl_context: ssl.SSLContext | None) -> None:
        """A reloaded configuration (kpc_trio.reload): `changed` holds the live keys that
        changed; every other key of `config` has its running value."""
        self.config = config
        if ssl_context is not None and self._ssl_context is not None:
            self._ssl_context = ssl_context  # new handshakes; sessions keep theirs
        if "logging.level" in changed:
            logging.getLogger().setLevel(config.logging.level)
        if self._context is not None:
            self._context.limits = session_limits(config)
            authenticator = self._context.authenticator
            if isinstance(authenticator, NatsClientAuthenticator):
                authenticator.anonymous_allowed = config.kaa.kpc.auth.anonymous_allowed
        if changed & {"kaa.applications", "kaa.extension-instances"}:
            if self.tekton is None:
                self.replace_applications(Applications.from_config(config))
            else:  # Tekton's applications, with the new extension instances
                self.replace_applications(Applications.build(
                    self.applications.current.versions, endpoint_aware_of(config), "tekton"))
                self.tekton.request(EVERYTHING)

    def release_endpoints_of(self, app_versions: frozenset[str],
                             applications: frozenset[str] = frozenset()) -> None:
        """Endpoints of appversions (and applications) that left the configuration go offline
        (one DisconnectedEvent), token cache entries evicted; connections stay."""
        if self._context is None:
            return
        change = self.hub.endpoints.app_versions_removed(app_versions)
        self._context.events.publish(change)
        evicted = sum(self._context.resolver.forget_application(app) for app in applications)
        log.info("endpoints_released", app_versions=describe(app_versions),
                 endpoints=len(change.disconnected), token_cache_entries=evicted)

    # --- revocation (RevocationHandler) and idle endpoints --------------------------------------
    def on_tokens_revoked(self, app_name: str, endpoint_id: str, token_ids: frozenset[str]) -> None:
        """16/ECAP: evict the tokens and end that endpoint's session; its connection stays."""
        assert self._context is not None
        evicted = self._context.resolver.revoke_tokens(app_name, set(token_ids))
        session = self.hub.session_for_endpoint(endpoint_id)
        ended = session is not None and session.uses_token(endpoint_id, token_ids)
        if ended:
            self._context.events.publish(self.hub.endpoints.revoked(endpoint_id))
            log.info("endpoint_disconnected", endpoint_id=endpoint_id, reason="token_revoked",
                     client_id=session.client_id if session is not None else None)
        log.info("tokens_revoked", app_name=app_name, endpoint_id=endpoint_id,
                 cache_entries=evicted, session_ended=ended)

    def on_credentials_revoked(self, credentials_id: str, tenant_id: str | None) -> None:
        """22/CAP or 16/ECAP: close every connection authenticated with these credentials."""
        doomed = [s for s in self.sessions if s.auth.credentials_id == credentials_id
                  and (tenant_id is None or s.auth.tenant_id in (None, tenant_id))]
        for session in doomed:
            session.terminate("credentials_revoked")
        log.info("credentials_revoked", credentials_id=credentials_id, tenant_id=tenant_id,
                 connections_closed=len(doomed))

    async def _start_listeners(self, listeners_nursery: trio.Nursery,
                               sessions_nursery: trio.Nursery) -> None:
        """Start every enabled MQTT listener; each reports its bound port (0 = pick one)."""
        mqtt = self.config.kaa.kpc.transports.mqtt
        handler = self._handle_connection
        edge = EdgeSettings(
            trusted_proxies=TrustedProxies.from_config(
                self.config.kaa.kpc.transports.trusted_proxies),
            max_connection_rate=mqtt.max_connection_rate,
            connection_rate_burst=mqtt.connection_rate_burst,
            on_refused=self._count_refusal,
        )
        starters = {}
        if mqtt.tcp.enabled:
            starters["mqtt_tcp"] = functools.partial(
                serve_tcp, handler, host=mqtt.tcp.host, port=mqtt.tcp.port,
                handler_nursery=sessions_nursery, reuse_port=self.reuse_port,
                on_failure=self._count_connection_failure,
                edge=attrs.evolve(
                    edge, proxy_mode=ProxyMode(mqtt.tcp.proxy_protocol),
                    header_timeout=mqtt.connect_timeout))
        if mqtt.tls.enabled:
            self._ssl_context = self.tls_context(self.config)
            starters["mqtt_tls"] = functools.partial(
                serve_tls, handler, host=mqtt.tls.host, port=mqtt.tls.port,
                ssl_context=self._current_ssl_context,
                handshake_timeout=mqtt.tls.handshake_timeout,
                on_handshake_failure=self._count_handshake_failure,
                on_failure=self._count_connection_failure, handler_nursery=sessions_nursery,
                reuse_port=self.reuse_port,
                edge=attrs.evolve(
                    edge, proxy_mode=ProxyMode(mqtt.tls.proxy_protocol),
                    max_concurrent_handshakes=mqtt.tls.max_concurrent_handshakes))
        if mqtt.websocket.enabled:
            starters["mqtt_websocket"] = functools.partial(
                serve_websocket, handler, host=mqtt.websocket.host,
                port=mqtt.websocket.port, path=mqtt.websocket.path,
                max_packet_size=mqtt.max_packet_size,
                max_message_fragments=mqtt.websocket.max_message_fragments,
                on_failure=self._count_connection_failure, edge=edge,
                handler_nursery=sessions_nursery, reuse_port=self.reuse_port)
        for name, serve in starters.items():
            _, self.ports[name] = await listeners_nursery.start(serve)

    async def _start_http_transport(self, listeners_nursery: trio.Nursery,
                                    requests_nursery: trio.Nursery) -> None:
        http = self.config.kaa.kpc.transports.http
        if not http.enabled:
            return
        assert self._context is not None
        transport = HttpTransport(
            relay=self._context.relay, resolver=self._context.resolver,
            gateway=self._context.gateway, waiters=self._http_waiters, metrics=self.metrics,
            request_timeout=http.request_timeout, endpoints=self.hub.endpoints,
            events=self._context.events, traffic=self._context.traffic,
        )
        self.ports["http"] = await listeners_nursery.start(functools.partial(
            serve_http, {}, host=http.host, port=http.port, fallback=transport.handle,
            error_response=kp1_error_response, handler_nursery=requests_nursery,
            limits=HttpLimits(max_body_bytes=http.max_body_size), reuse_port=self.reuse_port,
            max_connections=http.max_connections,
            edge=EdgeSettings(
                trusted_proxies=TrustedProxies.from_config(
                    self.config.kaa.kpc.transports.trusted_proxies),
                max_connection_rate=http.max_connection_rate,
                connection_rate_burst=http.connection_rate_burst,
                on_refused=self._count_refusal),
        ))

    def _count_refusal(self, transport: str, reason: str) -> None:
        self.metrics.connect_refusals.labels(transport, reason).inc()

    def _count_handshake_failure(self, reason: HandshakeFailureReason) -> None:
        self.metrics.tls_handshake_failures.labels(reason.name.lower()).inc()

    def _count_connection_failure(self, transport: str) -> None:
        self.metrics.connection_failures.labels(transport).inc()

    def _current_ssl_context(self) -> ssl.SSLContext:
        assert self._ssl_context is not None
        return self._ssl_context

    @staticmethod
    def tls_context(config: Config) -> ssl.SSLContext:
        """The MQTT/TLS server context of `config`; raises TlsConfigError."""
        tls = config.kaa.kpc.transports.mqtt.tls
        client_auth = tls.client_auth
        if client_auth == "request" and not tls.ca_file:
            # Nothing to verify client certificates against: serve TLS without asking for them.
            log.warning("tls_client_certificates_not_requested",
                        reason="kaa.kpc.transports.mqtt.tls.ca-file is empty")
            client_auth = "none"
        return build_server_ssl_context(tls.cert_file, tls.key_file, tls.ca_file, client_auth)

    def _handle_connection(self, stream: trio.abc.Stream, peer: Peer) -> Awaitable[None]:
        """The body of a connection's task: the session's own `run`, with no coroutine of ours
        around it (each frame on an idle connection's stack is memory, times thousands)."""
        assert self._context is not None and self._sessions_nursery is not None
        limit = self.config.kaa.kpc.transports.mqtt.max_connections
        if limit and len(self.sessions) >= limit:
            # Refused without a session: under a connection storm this is the cheapest.
            self.metrics.connect_refusals.labels(peer.transport, "max_connections").inc()
            log.warning("connection_refused", reason="max_connections", peer=peer.address,
                        limit=limit)
            return run_refusal(stream, self.config.kaa.kpc.transports.mqtt.connect_timeout)
        return Session(stream, peer, self._context).run(self._sessions_nursery)

    def _dispatch_extension_data(self, message: InboundMessage) -> None:
        """Route an `ExtensionData` to the session holding its endpoint (or pending request).
        Runs in the NATS reading task (never blocks: sessions queue what they deliver)."""
        try:
            data = read_extension_data(message.payload)
        except records.RecordDecodeError as exc:
            self.metrics.messages_dropped.labels("undecodable").inc()
            log.warning("extension_data_undecodable", subject=message.subject, reason=str(exc))
            return
        if is_expired(data, int(time.time() * 1000)):
            self.metrics.messages_dropped.labels("expired").inc()
            log.info("extension_data_expired", correlation_id=data.correlation_id)
            return
        if message.reply and data.endpoint_id and data.extension_instance_name:
            assert self._context is not None
            self._context.relay.affinity.remember(data.endpoint_id, data.extension_instance_name,
                                                  message.reply, time.monotonic())
        delivery = Delivery.DELIVERED if self._http_waiters.deliver(data) else Delivery.NOT_ROUTED
        if delivery is Delivery.NOT_ROUTED:
            session, data, pending = self._session_for(data)
            if session is not None:
                delivery = (session.deliver_extension_data(data) if pending is None
                            else session.deliver_extension_data(data, pending.token, pending.qos))
        if delivery is Delivery.DELIVERED:
            self.metrics.extension_data_delivered.labels(data.extension_instance_name or "").inc()
        elif delivery is Delivery.NOT_ROUTED:  # a dropped one is counted with its reason
            # Normal with several replicas: the endpoint is held by another one.
            self.metrics.messages_dropped.labels("not_routed").inc()
            log.debug("extension_data_not_routed", endpoint_id=data.endpoint_id,
                      correlation_id=data.correlation_id)

    async def _follow_roaming(self, events: trio.MemoryReceiveChannel[InboundMessage]) -> None:
        """Another replica's `ConnectedEvent` means the endpoint roamed there: stop routing it
        here, silently (it is online, only elsewhere)."""
        async for message in events:
            try:
                event = records.decode(records.ConnectedEvent, message.payload)
            except records.RecordDecodeError as exc:
                log.warning("connected_event_undecodable", reason=str(exc))
                continue
            if event.originator_replica_id == self.replica_id:
                continue
            roamed = [endpoint_id for endpoint_id in event.endpoints
                      if self.hub.endpoints.state_of(endpoint_id) is not State.OFFLINE]
            self.hub.endpoints.roamed(roamed)  # still online, elsewhere: nothing to publish
            for endpoint_id in roamed:
                log.info("endpoint_roamed", endpoint_id=endpoint_id,
                         to_replica=event.originator_replica_id)

    def _session_for(
        self, data: records.ExtensionData,
    ) -> tuple[Session | None, records.ExtensionData, PendingRequest[Session] | None]:
        """The session to deliver `data` to, `data` as that session's device knows it (a reply
        carries KPC's request id, not the device's), and the request answered, if pending.

        A reply goes to the connection that sent the request, even if its endpoint moved to
        another connection meanwhile. An `ExtensionData` that answers no pending request (a push,
        or a reply whose connection is gone or which came after the response timeout) goes to
        the connection holding its endpoint; endpoint-unaware, it names no device and goes
        nowhere."""
        if data.request_id is not None and data.app_version_name \
                and data.extension_instance_name:
            pending = self.hub.take_reply(data.app_version_name, data.extension_instance_name,
                                          data.request_id, trio.current_time(),
                                          endpoint_id=data.endpoint_id)
            if pending is not None:
                return (pending.session, attrs.evolve(data, request_id=pending.device_request_id),
                        pending)
        if data.endpoint_id is not None:
            return self.hub.session_for_endpoint(data.endpoint_id), data, None
        return None, data, None


@contextlib.asynccontextmanager
async def open_kpc(config: Config) -> AsyncIterator[KpcService]:
    """Run a KPC service for the duration of the block (tests, demo); shuts down gracefully."""
    service = KpcService(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        try:
            yield service
        finally:
            service.request_shutdown(unready_delay=0.0)
