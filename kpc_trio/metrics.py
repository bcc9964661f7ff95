"""Prometheus metrics of one KPC instance.

Each `Metrics` owns its own `CollectorRegistry` so several KPC instances can live in one process
(tests) without colliding in the global registry. Names use the `kpc_` prefix and base units
(seconds, bytes).

Label values must come from small closed sets: transports (`tcp`, `tls`, `websocket`, `http`),
packet type names (`PacketType.name`), CONNACK/refusal reasons, drop reasons, and extension
instance names *from the configuration* (never the extension segment of a client topic, never
client ids or endpoint tokens): every distinct value is a new time series kept forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from kpc_trio.license import LicenseInfo

#: Content-Type header value for `Metrics.render()` output.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Batches are lingered up to ~1000 messages (design.md, "NATS from trio").
_BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
# Sub-millisecond publishes up to NATS request timeouts (default 5 s).
_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class Metrics:
    """The metric objects of one KPC instance, registered in `self.registry`.

    Callers update the attributes directly, e.g.
    ``metrics.connections_open.labels(transport="tcp").inc()``.
    """

    def __init__(self) -> None:
        self.registry: Final = CollectorRegistry(auto_describe=True)
        r = self.registry

        # Connections
        self.connections_open: Final = Gauge(
            "kpc_connections_open", "Open MQTT connections.", ["transport"], registry=r
        )
        self.connects: Final = Counter(
            "kpc_connects", "Accepted MQTT CONNECTs.", ["transport"], registry=r
        )
        self.connect_refusals: Final = Counter(
            "kpc_connect_refusals",
            "Refused or aborted connection attempts by reason.",
            ["transport", "reason"],
            registry=r,
        )

        self.connection_failures: Final = Counter(
            "kpc_connection_failures",
            "Connections ended by an unexpected error (a transport library's or ours), each "
            "logged once as connection_failed.",
            ["transport"],
            registry=r,
        )
        self.tls_handshake_failures: Final = Counter(
            "kpc_tls_handshake_failures",
            "MQTT/TLS handshakes that failed, by reason.",
            ["reason"],
            registry=r,
        )

        # MQTT traffic
        self.packets_received: Final = Counter(
            "kpc_packets_received", "MQTT packets received.", ["packet_type"], registry=r
        )
        self.packets_sent: Final = Counter(
            "kpc_packets_sent", "MQTT packets sent.", ["packet_type"], registry=r
        )
        self.received_bytes: Final = Counter(
            "kpc_received_bytes", "Bytes received from MQTT clients.", ["transport"], registry=r
        )
        self.sent_bytes: Final = Counter(
            "kpc_sent_bytes", "Bytes sent to MQTT clients.", ["transport"], registry=r
        )

        # 1/KP <-> 4/ESP relay
        self._relayed_counters: dict[str, Any] = {}
        self.client_data_relayed: Final = Counter(
            "kpc_client_data_relayed",
            "ClientData records published to extensions.",
            ["extension"],
            registry=r,
        )
        self.extension_data_delivered: Final = Counter(
            "kpc_extension_data_delivered",
            "ExtensionData records delivered to clients.",
            ["extension"],
            registry=r,
        )
        self.messages_dropped: Final = Counter(
            "kpc_messages_dropped", "Messages dropped by reason.", ["reason"], registry=r
        )

        self.requests_rejected: Final = Counter(
            "kpc_requests_rejected",
            "Client messages KPC refused itself (bad topic, token, size), by 1/KP status code; "
            "logged once per connection and interval.",
            ["status"],
            registry=r,
        )
        self.subscriptions_unidentified: Final = Counter(
            "kpc_subscriptions_unidentified",
            "SUBSCRIBE filters naming a kp1 endpoint that could not be identified.",
            registry=r,
        )
        self.http_requests: Final = Counter(
            "kpc_http_requests",
            "1/KP requests over the HTTP transport by response status code.",
            ["status"],
            registry=r,
        )

        # NATS
        self.nats_connected: Final = Gauge(
            "kpc_nats_connected", "1 while connected to NATS, else 0.", registry=r
        )
        self.nats_publish_batch_size: Final = Histogram(
            "kpc_nats_publish_batch_size",
            "Messages per NATS publish batch.",
            buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.nats_reconnects: Final = Counter(
            "kpc_nats_reconnects", "Connections to NATS made after the first one.", registry=r
        )
        self.nats_lame_duck_moves: Final = Counter(
            "kpc_nats_lame_duck_moves",
            "Moves to another NATS server because the one in use entered lame duck mode.",
            registry=r,
        )
        self.nats_server_errors: Final = Counter(
            "kpc_nats_server_errors", "-ERR messages from NATS servers by kind.", ["kind"],
            registry=r,
        )
        self.nats_server: Final = Gauge(
            "kpc_nats_server", "1 for the NATS server in use (host:port and server name).",
            ["server", "server_name"], registry=r,
        )
        self.nats_publish_latency: Final = Histogram(
            "kpc_nats_publish_latency_seconds",
            "Time from handing a batch to NATS until it was flushed.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        # Endpoint token validation (16/ECAP)
        self.token_validation_latency: Final = Histogram(
            "kpc_token_validation_latency_seconds",
            "Round trip of endpoint token validation requests.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_cache_hits: Final = Counter(
            "kpc_token_cache_hits", "Endpoint token cache hits.", registry=r
        )
        self.token_cache_misses: Final = Counter(
            "kpc_token_cache_misses", "Endpoint token cache misses.", registry=r
        )

        self.token_cache_bytes: Final = Gauge(
            "kpc_token_cache_bytes",
            "Estimated memory of the endpoint token cache (bounded by token-cache.max-bytes).",
            registry=r,
        )
        self.route_memory_bytes: Final = Gauge(
            "kpc_route_memory_bytes",
            "Estimated memory of the remembered topics (bounded by limits.route-memory-bytes).",
            registry=r,
        )

        self.parked_connections: Final = Gauge(
            "kpc_parked_connections",
            "Idle MQTT connections waiting for their client without a task of their own "
            "(limits.park-idle-after).",
            registry=r,
        )
        self.memory_trims: Final = Counter(
            "kpc_memory_trims", "Times freed memory was given back to the operating system.",
            registry=r,
        )

        # Live configuration (Tekton, 17/SCMP, file reloads)
        self.scmp_events: Final = Counter(
            "kpc_scmp_events", "17/SCMP configuration update events by update type (bad = "
            "undecodable).", ["result"], registry=r
        )
        self.tekton_last_success: Final = Gauge(
            "kpc_tekton_last_success_timestamp_seconds",
            "Unix time of the last successful load from Tekton (0 = none yet).", registry=r
        )
        self.tekton_refresh_failures: Final = Counter(
            "kpc_tekton_refresh_failures", "Failed loads from Tekton by cause (tekton, keycloak).",
            ["reason"], registry=r
        )
        self.config_reloads: Final = Counter(
            "kpc_config_reloads", "Configuration file reloads by result (applied, refused, "
            "unchanged).", ["result"], registry=r
        )
        self.applications_changes: Final = Counter(
            "kpc_appversion_changes", "Appversions added, removed or changed by configuration "
            "swaps.", ["change"], registry=r
        )

        # Endpoints and license
        self.endpoints_online: Final = Gauge(
            "kpc_endpoints_online", "Endpoints online on this replica (held by a session, kept "
            "until idle, or seen over HTTP).", registry=r
        )
        self.connectivity_events_queued: Final = Gauge(
            "kpc_connectivity_events_queued",
            "Endpoints whose connectivity event waits for NATS (bounded by "
            "limits.max-queued-events).", registry=r
        )
        self.license_expiry_remaining: Final = Gauge(
            "kpc_license_expiry_remaining_seconds",
            "Seconds until the license certificate expires (NaN without a license).",
            registry=r,
        )
        # NaN, not 0: an "expires soon" alert must not fire when no license is installed.
        self.license_expiry_remaining.set(float("nan"))

    def relayed_to(self, extension: str) -> Any:
        """The `client_data_relayed` counter of `extension`, looked up once (`labels()` takes
        a lock, and sessions count every read)."""
        counter = self._relayed_counters.get(extension)
        if counter is None:
            counter = self._relayed_counters[extension] = self.client_data_relayed.labels(
                extension)
        return counter

    def track_license(self, license_info: LicenseInfo) -> None:
        """Report the license's remaining validity, recomputed at every scrape."""
        self.license_expiry_remaining.set_function(license_info.seconds_until_expiry)

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
