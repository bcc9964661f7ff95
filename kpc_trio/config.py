"""KPC configuration: a frozen attrs tree whose nesting equals the YAML key path.

YAML key `graceful-shutdown` is attribute `graceful_shutdown`;
`config.kaa.kpc.transports.mqtt.tcp.port` is YAML `kaa.kpc.transports.mqtt.tcp.port`.
YAML may be nested or use dotted keys at any level (`replica.id: r1` inside `instance:`).
Every scalar key outside the `kaa.applications` and `kaa.extension-instances` maps can be
overridden from the environment by the documented KPC rule: upper-case the key path, `.` and `-`
become `_` (`KAA_KPC_TRANSPORTS_MQTT_TCP_ENABLED`).

The loader is generic: it walks the attrs fields, whose metadata carries the value type and the
one-line help text that `config_reference()` renders into docs/configuration.md.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import secrets
import types
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import attrs
import yaml

from kpc_trio.kaa.endpoints import DisconnectPolicy
from kpc_trio.nats.protocol import NatsUrlError, parse_url

DEFAULT_CONFIG_PATH = "/srv/kpc/service-config.yml"
CONFIG_PATH_ENV = "APP_CONFIG_PATH"
DEFAULTS_SOURCE = "defaults"

_META = "kpc_config"  # attrs metadata key; fields without it are not configuration keys


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key path and the value's origin."""

    def __init__(self, message: str, *, key_path: str = "") -> None:
        super().__init__(message)
        self.key_path = key_path


class InvalidValue(Exception):
    """Raised by a value type; the loader turns it into a ConfigError naming the key and origin.
    A message, if given, replaces the generic "expected ..., got <value>" (which would print a
    secret such as a NATS password)."""


# ----------------------------------------------------------------------------------------------
# Value types: parse one YAML or environment value (env values are always strings).


class ValueType(Protocol):
    @property
    def label(self) -> str:
        """Short type name for the reference table."""

    def parse(self, raw: object) -> Any: ...

    def expected(self) -> str: ...

    def show(self, value: Any) -> str: ...


def _is_number(raw: object) -> bool:
    return isinstance(raw, (int, float)) and not isinstance(raw, bool)


_BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@attrs.frozen
class Boolean:
    label: str = "boolean"

    def parse(self, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[raw.strip().lower()]
        raise InvalidValue

    def expected(self) -> str:
        return "a boolean (true/false/1/0/yes/no)"

    def show(self, value: Any) -> str:
        return "true" if value else "false"


@attrs.frozen
class Integer:
    minimum: int = 0
    maximum: int | None = None

    @property
    def label(self) -> str:
        bounds = f">= {self.minimum}" if self.maximum is None else f"{self.minimum}..{self.maximum}"
        return f"integer {bounds}"

    def parse(self, raw: object) -> int:
        if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise InvalidValue
        if raw < self.minimum or (self.maximum is not None and raw > self.maximum):
            raise InvalidValue
        return raw

    def expected(self) -> str:
        return f"an {self.label}"

    def show(self, value: Any) -> str:
        return str(value)


PORT = Integer(0, 65535)

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@attrs.frozen
class Duration:
    """Seconds as float; accepts numbers (seconds) and strings such as `10s`, `500ms`, `5m`."""

    positive: bool = False

    @property
    def label(self) -> str:
        return "duration > 0" if self.positive else "duration"

    def parse(self, raw: object) -> float:
        if _is_number(raw):
            seconds = float(raw)  # type: ignore[arg-type]
        elif isinstance(raw, str) and (match := _DURATION.fullmatch(raw)):
            seconds = float(match[1]) * _SECONDS_PER_UNIT[match[2]]
        else:
            raise InvalidValue
        if not math.isfinite(seconds) or seconds < 0 or (self.positive and seconds == 0):
            raise InvalidValue
        return seconds

    def expected(self) -> str:
        bound = "> 0" if self.positive else ">= 0"
        return f"a duration {bound} (seconds, or a number with unit ms/s/m/h such as 10s)"

    def show(self, value: Any) -> str:
        return f"{value:g}s"


@attrs.frozen
class Text:
    pattern: str | None = None
    meaning: str = "a string"
    label: str = "string"

    def parse(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise InvalidValue
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
            raise InvalidValue
        return raw

    def expected(self) -> str:
        return self.meaning

    def show(self, value: Any) -> str:
        return f'"{value}"' if value == "" else str(value)


# Instance names and replica ids become NATS subject tokens (3/ISM), so they cannot hold separators.
SUBJECT_TOKEN = Text(r"[^\s.*>]+", "a non-empty NATS subject token (no spaces, '.', '*' or '>')",
                     label="NATS subject token")
# Application, application-version and extension-instance names: versions and instances are
# MQTT topic levels of 1/KP, instances also NATS subject tokens (3/ISM); one rule for all three.
ENTRY_NAME = Text(r"[^\s.*>/+#]+",
                  "a non-empty name without spaces, '.', '*', '>', '/', '+' or '#' (it goes into "
                  "NATS subjects and MQTT topics)", label="name")
URL_PATH = Text(r"/\S*", "a URL path starting with '/'", label="URL path")


@attrs.frozen
class Choice:
    options: tuple[str, ...]

    @property
    def label(self) -> str:
        return "one of " + ", ".join(self.options)

    def parse(self, raw: object) -> str:
        if isinstance(raw, str):
            for option in self.options:
                if raw.strip().lower() == option.lower():
                    return option
        raise InvalidValue

    def expected(self) -> str:
        return self.label

    def show(self, value: Any) -> str:
        return str(value)


@attrs.frozen
class Inherited:
    """An application-version override of an application setting: null (or absent) inherits."""

    inner: ValueType

    @property
    def label(self) -> str:
        return f"{self.inner.label} or null"

    def parse(self, raw: object) -> Any:
        return None if raw is None else self.inner.parse(raw)

    def expected(self) -> str:
        return f"{self.inner.expected()}, or null to inherit the application's value"

    def show(self, value: Any) -> str:
        return "null" if value is None else self.inner.show(value)


@attrs.frozen
class NatsUrls(Text):
    """Comma-separated NATS URLs, each checked now rather than when NATS is first dialled."""

    meaning: str = "comma-separated nats:// or tls:// URLs"

    def parse(self, raw: object) -> str:
        text = super().parse(raw)
        for url in filter(None, map(str.strip, text.split(","))):
            try:
                parse_url(url)
            except NatsUrlError as exc:
                raise InvalidValue(f"expected {self.meaning}; {exc}") from None
        return text


@attrs.frozen
class TextList:
    item: Text = Text()
    label: str = "list of strings"

    def parse(self, raw: object) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise InvalidValue
        for item in raw:
            try:
                self.item.parse(item)
            except InvalidValue:
                raise InvalidValue(f"{item!r} is not {self.item.expected()}") from None
        return tuple(raw)

    def expected(self) -> str:
        return "a list of strings"

    def show(self, value: Any) -> str:
        return "[" + ", ".join(value) + "]"


@attrs.frozen
class CidrList:
    """IP networks (`10.0.0.0/8`, `fd00::/8`, or a single address): a YAML list, or a
    comma-separated string (the form an environment variable takes)."""

    label: str = "list of CIDR networks"

    def parse(self, raw: object) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = [item.strip() for item in raw.split(",") if item.strip()]
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise InvalidValue
        networks = []
        for item in raw:
            try:
                networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise InvalidValue(f"expected {self.expected()}; {item!r} is not one") from None
        return tuple(networks)

    def expected(self) -> str:
        return "a list of CIDR networks such as 10.0.0.0/8 (or a comma-separated string)"

    def show(self, value: Any) -> str:
        return "[" + ", ".join(value) + "]"


PROXY_PROTOCOL = Choice(("off", "optional", "required"))
_PROXY_PROTOCOL_HELP = ("PROXY protocol v1/v2 header before {what}: `off`, `optional` (used when "
                        "present), `required` (connections without one are closed); honoured only "
                        "from `kaa.kpc.transports.trusted-proxies`.")
_BIND_HELP = "Address the {what} binds to; empty = every interface (IPv4 and IPv6)."
_CONNECTION_RATE_HELP = ("New connections accepted per second on {what} (token bucket; of each "
                         "worker with `run --workers`); the excess is closed at once. "
                         "0 = unlimited.")
_CONNECTION_RATE_BURST_HELP = ("Connections a listener accepts in a burst above the rate; "
                               "0 = one second's worth of max-connection-rate.")


# ----------------------------------------------------------------------------------------------
# Field kinds, kept in attrs metadata.


@attrs.frozen
class Setting:
    """A scalar key."""

    value_type: ValueType
    help: str
    default_doc: str | None = None  # for defaults that are not a literal value


@attrs.frozen
class Section:
    """A nested group of keys."""

    node: type


@attrs.frozen
class NamedEntries:
    """A map from names chosen by the operator to nodes (no env overrides inside)."""

    node: type
    placeholder: str
    help: str


def setting(default: Any, value_type: ValueType, help: str) -> Any:
    return attrs.field(default=default, metadata={_META: Setting(value_type, help)})


def inherited(value_type: ValueType, help: str) -> Any:
    """An optional override; None means the application-level value applies."""
    return attrs.field(default=None, metadata={_META: Setting(
        Inherited(value_type), help, default_doc="inherited from the application")})


def section(node: type) -> Any:
    return attrs.field(factory=node, metadata={_META: Section(node)})


def named_entries(node: type, placeholder: str, help: str) -> Any:
    return attrs.field(
        factory=lambda: types.MappingProxyType({}),
        metadata={_META: NamedEntries(node, placeholder, help)},
    )


def _random_replica_id() -> str:
    return f"kpc-{secrets.token_hex(4)}"


# ----------------------------------------------------------------------------------------------
# The tree. Attribute names are the YAML keys with `-` replaced by `_`.


@attrs.frozen
class ReplicaSettings:
    id: str = attrs.field(
        factory=_random_replica_id,
        metadata={_META: Setting(
            SUBJECT_TOKEN,
            "Replica id, unique cluster-wide; names this replica's NATS reply subjects.",
            default_doc="random `kpc-<8 hex>`",
        )},
    )


@attrs.frozen
class InstanceSettings:
    name: str = setting("kpc", SUBJECT_TOKEN,
                        "Service instance name, unique cluster-wide; used in NATS subjects.")
    replica: ReplicaSettings = section(ReplicaSettings)


@attrs.frozen
class ShutdownSettings:
    unready_delay: float = setting(
        5.0, Duration(), "On SIGTERM, how long /ready answers 503 before the listeners close "
        "(the load balancer stops sending new devices meanwhile).")
    disconnect_rate: int = setting(
        500, Integer(1), "Connections closed per second at most at the end of a graceful "
        "shutdown (their devices reconnect to other replicas evenly).")


@attrs.frozen
class ServiceSettings:
    instance: InstanceSettings = section(InstanceSettings)
    graceful_shutdown: float = setting(30.0, Duration(),
                                       "Time given to a shutdown on SIGTERM: unready delay, "
                                       "replies still due, paced disconnection, NATS drain.")
    shutdown: ShutdownSettings = section(ShutdownSettings)
    config_watch_interval: float = setting(
        5.0, Duration(), "How often the configuration file (APP_CONFIG_PATH) is checked for a "
        "change to reload (its content, inode and mtime; 0 = on SIGHUP only).")


@attrs.frozen
class ServerSettings:
    host: str = setting("", Text(), _BIND_HELP.format(what="REST API"))
    port: int = setting(8008, PORT, "Port of the REST API (server certificate download).")


@attrs.frozen
class ManagementSettings:
    host: str = setting("", Text(), _BIND_HELP.format(what="management port"))
    port: int = setting(8080, PORT, "Port of /metrics, /health and /ready.")


@attrs.frozen
class NatsTlsSettings:
    ca_file: str = setting("", Text(), "Trust store (PEM) the NATS servers' certificates are "
                                       "verified against; empty = the system's.")
    cert_file: str = setting("", Text(), "Client certificate chain (PEM) KPC presents to NATS "
                                         "servers that ask for one.")
    key_file: str = setting("", Text(), "Private key (PEM) of `nats.tls.cert-file`.")
    handshake_first: bool = setting(False, Boolean(),
                                    "TLS before the server's INFO (nats-server "
                                    "`handshake_first`); implies TLS to every server.")


@attrs.frozen
class NatsSettings:
    urls: str = setting("", NatsUrls(), "Comma-separated NATS URLs, `nats://` or `tls://` (may "
                                        "carry credentials); one cluster member, a Service name "
                                        "or every member (the rest is discovered); empty starts "
                                        "an embedded nats-server.")
    randomize_servers: bool = setting(True, Boolean(),
                                      "Shuffle the servers (configured and discovered) before "
                                      "trying them; false keeps the configured order.")
    reconnect_wait: float = setting(2.0, Duration(positive=True),
                                    "Least time between two attempts on the same server; "
                                    "doubles per failure, up to 8 times, plus jitter.")
    creds_file: str = setting("", Text(), "JWT credentials file (`.creds`: user JWT and nkey "
                                          "seed) for NATS in operator mode.")
    nkey_seed_file: str = setting("", Text(), "File holding a user nkey seed (`SU...`) for "
                                              "NATS nkey authentication.")
    tls: NatsTlsSettings = section(NatsTlsSettings)


@attrs.frozen
class LoggingSettings:
    level: str = setting("INFO", Choice(("DEBUG", "INFO", "WARNING", "ERROR")), "Log level.")
    format: str = setting("kv", Choice(("kv", "json")),
                          "Log line format: key=value pairs or one JSON object per line.")
    max_value_length: int = setting(
        256, Integer(16, 65536), "Characters of one field value in a log line; longer values "
        "(a client id, topic, token chosen by a client) are cut and marked with the full length.")
    repeat_interval: float = setting(
        10.0, Duration(positive=True), "Events a client can repeat at will (rejected requests, "
        "unidentified subscriptions, refused publishes) are logged once per connection and "
        "interval; the repeats are summarised with a count at the end of it.")


@attrs.frozen
class LicenseSettings:
    required: bool = setting(False, Boolean(),
                             "Refuse to start without a valid Kaa license certificate.")


@attrs.frozen
class TcpListenerSettings:
    enabled: bool = setting(True, Boolean(), "Serve plain MQTT over TCP.")
    host: str = setting("0.0.0.0", Text(), "Address the plain MQTT listener binds to.")
    port: int = setting(1883, PORT, "Port of the plain MQTT listener.")
    proxy_protocol: str = setting("off", PROXY_PROTOCOL,
                                  _PROXY_PROTOCOL_HELP.format(what="MQTT"))


@attrs.frozen
class TlsListenerSettings:
    enabled: bool = setting(False, Boolean(), "Serve MQTT over TLS.")
    host: str = setting("0.0.0.0", Text(), "Address the MQTT/TLS listener binds to.")
    port: int = setting(8883, PORT, "Port of the MQTT/TLS listener.")
    cert_file: str = setting("", Text(), "Server certificate chain (PEM); also served by the "
                                         "REST API. Required when TLS is enabled.")
    key_file: str = setting("", Text(), "Server private key (PEM). Required when TLS is enabled.")
    ca_file: str = setting("", Text(), "Trust store (PEM) used to verify client certificates.")
    client_auth: str = setting("request", Choice(("none", "request", "require")),
                               "Client certificate mode; `request` lets tenants enforce mutual "
                               "TLS per tenant.")
    handshake_timeout: float = setting(10.0, Duration(positive=True),
                                       "Time a client has to complete the TLS handshake "
                                       "(and to send its PROXY protocol header).")
    max_concurrent_handshakes: int = setting(
        0, Integer(0), "TLS handshakes running at once; connections beyond are closed before "
                       "any TLS work. 0 = unlimited.")
    proxy_protocol: str = setting("off", PROXY_PROTOCOL,
                                  _PROXY_PROTOCOL_HELP.format(what="TLS"))


@attrs.frozen
class WebSocketListenerSettings:
    enabled: bool = setting(False, Boolean(), "Serve MQTT over WebSocket (TLS at the ingress).")
    host: str = setting("0.0.0.0", Text(), "Address the MQTT/WebSocket listener binds to.")
    port: int = setting(8081, PORT, "Port of the MQTT/WebSocket listener.")
    path: str = setting("/ws", URL_PATH, "HTTP path of the WebSocket endpoint.")
    max_message_fragments: int = setting(
        1024, Integer(1), "Frames one WebSocket message may span; more close the connection "
        "with 1009 (each frame costs a parse, whatever its size).")


@attrs.frozen
class MqttSettings:
    # 268435460 = 1 fixed header byte + 4 length bytes + the MQTT maximum remaining length.
    max_packet_size: int = setting(1048576, Integer(64, 268435460),
                                   "Largest MQTT packet accepted, in bytes; larger ones close the "
                                   "connection.")
    connect_timeout: float = setting(10.0, Duration(positive=True),
                                     "Time a new connection has to send CONNECT.")
    max_connections: int = setting(0, Integer(0), "Open MQTT connections allowed; 0 = unlimited.")
    max_inflight: int = setting(100, Integer(1),
                                "Unacknowledged inbound QoS 1/2 messages allowed per connection; "
                                "also QoS 2 messages awaiting PUBREL (one more closes the "
                                "connection).")
    max_outbox_bytes: int = setting(1048576, Integer(1),
                                    "Queued outbound bytes per connection before a slow client is "
                                    "dropped.")
    max_connection_rate: int = setting(
        0, Integer(0), _CONNECTION_RATE_HELP.format(what="each MQTT listener"))
    connection_rate_burst: int = setting(0, Integer(0), _CONNECTION_RATE_BURST_HELP)
    max_publish_rate: int = setting(0, Integer(0),
                                    "PUBLISH packets per second read from one connection; a "
                                    "faster client is not read from until back under it (TCP "
                                    "backpressure). 0 = unlimited.")
    max_receive_rate: int = setting(0, Integer(0),
                                    "Bytes per second read from one connection, likewise slowed "
                                    "down, not dropped. 0 = unlimited.")
    max_subscriptions: int = setting(100, Integer(1),
                                     "Topic filters one connection may hold (and at most "
                                     "max-packet-size bytes of them); further ones get SUBACK "
                                     "0x80, a SUBSCRIBE with more closes the connection.")
    # MQTT 3.1.1 [MQTT-3.1.3-5]: a server must accept client ids of up to 23 bytes.
    max_client_id_length: int = setting(256, Integer(23),
                                        "Longest client identifier accepted, in UTF-8 bytes; "
                                        "longer ones get CONNACK 2 (identifier rejected).")
    tcp: TcpListenerSettings = section(TcpListenerSettings)
    tls: TlsListenerSettings = section(TlsListenerSettings)
    websocket: WebSocketListenerSettings = section(WebSocketListenerSettings)


@attrs.frozen
class HttpTransportSettings:
    enabled: bool = setting(False, Boolean(), "Serve 1/KP over plain HTTP (POST only).")
    host: str = setting("0.0.0.0", Text(), "Address the HTTP transport binds to.")
    port: int = setting(8082, PORT, "Port of the HTTP transport.")
    request_timeout: float = setting(30.0, Duration(positive=True),
                                     "Time to wait for the extension's answer before replying 504.")
    max_body_size: int = setting(1048576, Integer(0), "Largest request body accepted, in bytes.")
    idle_timeout: float = setting(300.0, Duration(positive=True),
                                  "An endpoint seen only over HTTP goes offline "
                                  "(DisconnectedEvent) after this long without a request.")
    max_connections: int = setting(0, Integer(0),
                                   "Open HTTP connections allowed (of each worker with `run "
                                   "--workers`); further ones are closed at once, before any "
                                   "read. 0 = unlimited.")
    max_connection_rate: int = setting(
        0, Integer(0), _CONNECTION_RATE_HELP.format(what="the HTTP listener"))
    connection_rate_burst: int = setting(0, Integer(0), _CONNECTION_RATE_BURST_HELP)


@attrs.frozen
class TransportSettings:
    trusted_proxies: tuple[str, ...] = setting(
        (), CidrList(), "Load balancers and ingresses whose PROXY protocol header or "
                        "X-Forwarded-For/Forwarded header gives the client's real address; such "
                        "headers from anyone else are ignored.")
    mqtt: MqttSettings = section(MqttSettings)
    http: HttpTransportSettings = section(HttpTransportSettings)


@attrs.frozen
class TokenCacheSettings:
    ttl: float = setting(600.0, Duration(), "How long a valid endpoint token stays cached.")
    negative_ttl: float = setting(30.0, Duration(),
                                  "How long a rejected endpoint token stays cached.")
    max_entries: int = setting(100000, Integer(0), "Cached token validations kept at most.")
    max_bytes: int = setting(33554432, Integer(0),
                             "Bytes of cached token validations kept at most (tokens, endpoint "
                             "ids and bookkeeping); expired entries are reclaimed as they expire.")


@attrs.frozen
class AuthSettings:
    protocol: str = setting("cap", Choice(("cap", "ecap")),
                            "Client authentication protocol: 22/CAP (Kaa 1.2+) or 16/ECAP "
                            "(Kaa 1.0/1.1).")
    client_provider: str = setting("ccm", SUBJECT_TOKEN,
                                   "Service instance name of the client authentication provider.")
    token_provider: str = setting("cm", SUBJECT_TOKEN,
                                  "Service instance name of the 16/ECAP endpoint token provider.")
    request_timeout: float = setting(5.0, Duration(positive=True),
                                     "Time to wait for a client auth or token validation reply.")
    anonymous_allowed: bool = setting(True, Boolean(),
                                      "Accept clients without credentials (tenants may still "
                                      "enforce authentication).")
    token_cache: TokenCacheSettings = section(TokenCacheSettings)


@attrs.frozen
class EspSettings:
    message_timeout: int = setting(0, Integer(0, 2**63 - 1),
                                   "Milliseconds put in ClientData.timeout; 0 = messages do not "
                                   "expire.")
    with_config_name: bool = setting(True, Boolean(),
                                     "Encode ClientData with the `configName` field (false = the "
                                     "legacy schema).")
    response_timeout: float = setting(30.0, Duration(positive=True),
                                      "How long a request to an endpoint-unaware extension waits "
                                      "for its reply; a later reply is dropped.")
    affinity_ttl: float = setting(600.0, Duration(),
                                  "How long an endpoint's ClientData keep going to the replica "
                                  "subject an extension answered from (its replyTo); 0 = never. "
                                  "A replica refused by NATS, or silent for response-timeout, "
                                  "is left sooner.")


@attrs.frozen
class TrafficReportSettings:
    enabled: bool = setting(True, Boolean(), "Publish per-endpoint traffic reports (9/ELCE).")
    period: float = setting(60.0, Duration(positive=True), "Interval between traffic reports.")
    default_tenant_id: str = setting(
        "kaa", Text(r"\S+", "a non-empty tenant id without spaces", label="tenant id"),
        "Tenant id reported for sessions without an authenticated tenant (anonymous clients); "
        "`kaa` is Kaa's system tenant.")


@attrs.frozen
class LimitSettings:
    # 65535 (the MQTT maximum) minus room for "/<request-id>/status" in the answer's topic.
    max_topic_length: int = setting(
        1024, Integer(16, 65500), "Longest 1/KP topic (HTTP: resource path) accepted, in UTF-8 "
        "bytes; a longer one is answered with 414 (when it carries a request id) and never sent "
        "to NATS.")
    max_token_length: int = setting(
        256, Integer(1, 65500), "Longest endpoint token accepted, in UTF-8 bytes; a longer one "
        "is answered with 401 without asking the token provider.")
    route_memory_bytes: int = setting(
        8388608, Integer(0), "Bytes of parsed topics, and of the ClientData fields encoded "
        "for them, remembered for reuse (at most 10,000 topics); when full, the memory starts "
        "over.")
    memory_trim_interval: float = setting(
        10.0, Duration(), "How often freed memory is given back to the operating system "
        "(glibc's malloc_trim), so the RSS comes back after a burst; 0 = never.")
    park_idle_after: float = setting(
        2.0, Duration(), "An MQTT connection (TCP or TLS) whose client sent nothing for this "
        "long waits without a task of its own until it does (about 4 KiB less per idle "
        "connection); 0 = never.")
    max_queued_events: int = setting(
        100000, Integer(1), "Endpoints whose connectivity event waits for NATS (an outage) at "
        "most; a newer state of the same endpoint replaces the queued one, and a full queue "
        "drops the oldest (counted as kpc_messages_dropped{reason=\"event_queue_full\"}).")
    affinity_bytes: int = setting(
        8388608, Integer(0), "Bytes of remembered extension replica subjects (session "
        "affinity, kaa.kpc.esp.affinity-ttl) at most; the least recently used go first.")


@attrs.frozen
class KpcSettings:
    transports: TransportSettings = section(TransportSettings)
    limits: LimitSettings = section(LimitSettings)
    auth: AuthSettings = section(AuthSettings)
    esp: EspSettings = section(EspSettings)
    traffic_report: TrafficReportSettings = section(TrafficReportSettings)


@attrs.frozen
class IdleDisconnectSettings:
    enabled: bool = setting(False, Boolean(),
                            "Disconnect an endpoint that sent nothing for `duration` (for gateways "
                            "such as LoRaWAN whose connection outlives their devices).")
    duration: float = setting(300.0, Duration(positive=True),
                              "Time without messages after which an endpoint is disconnected.")


@attrs.frozen
class DisconnectSettings:
    on_client_disconnect: bool = setting(True, Boolean(),
                                         "An endpoint is disconnected when its client's "
                                         "connection ends (false needs idle.enabled).")
    idle: IdleDisconnectSettings = section(IdleDisconnectSettings)


@attrs.frozen
class IdleDisconnectOverride:
    enabled: bool | None = inherited(Boolean(), "Overrides the application's idle.enabled.")
    duration: float | None = inherited(Duration(positive=True),
                                       "Overrides the application's idle.duration.")


@attrs.frozen
class DisconnectOverride:
    on_client_disconnect: bool | None = inherited(
        Boolean(), "Overrides the application's on-client-disconnect.")
    idle: IdleDisconnectOverride = section(IdleDisconnectOverride)


@attrs.frozen
class ApplicationVersion:
    allowed_extension_instances: tuple[str, ...] = setting(
        (), TextList(ENTRY_NAME),
        "Extension instances that clients of this application version may address."
    )
    disconnect: DisconnectOverride = section(DisconnectOverride)


@attrs.frozen
class Application:
    disconnect: DisconnectSettings = section(DisconnectSettings)
    versions: Mapping[str, ApplicationVersion] = named_entries(
        ApplicationVersion, "<appversion>",
        "Application versions (the `<appversion>` topic level of 1/KP) of this application.",
    )

    def effective_disconnect(self, version_name: str) -> DisconnectSettings:
        """The application's disconnection settings with the version's overrides applied."""
        base = self.disconnect
        override = self.versions[version_name].disconnect
        return DisconnectSettings(
            on_client_disconnect=_first_set(override.on_client_disconnect,
                                            base.on_client_disconnect),
            idle=IdleDisconnectSettings(
                enabled=_first_set(override.idle.enabled, base.idle.enabled),
                duration=_first_set(override.idle.duration, base.idle.duration),
            ),
        )


def _first_set(override: Any, inherited_value: Any) -> Any:
    return inherited_value if override is None else override


def _policy(settings: DisconnectSettings) -> DisconnectPolicy:
    return DisconnectPolicy(
        on_client_disconnect=settings.on_client_disconnect,
        idle_timeout=settings.idle.duration if settings.idle.enabled else None,
    )


@attrs.frozen
class ExtensionInstance:
    endpoint_aware: bool = setting(False, Boolean(),
                                   "Topics carry an endpoint token (a key with no value = false).")


@attrs.frozen
class TektonSettings:
    enabled: bool = setting(False, Boolean(), "Load applications, appversions and KPC's "
                            "application configuration from Tekton and follow its 17/SCMP "
                            "events; `kaa.applications` in the file is then ignored.")
    url: str = setting("http://tekton", Text(r"https?://\S+", "an http:// or https:// URL",
                                             label="URL"),
                       "Tekton's base URL; its REST API is `<url>/api/v1`.")
    request_timeout: float = setting(10.0, Duration(positive=True),
                                     "Time allowed for one Tekton or Keycloak request.")
    max_concurrency: int = setting(8, Integer(1), "Tekton requests in parallel during a load.")
    resync_interval: float = setting(600.0, Duration(), "Interval of full reloads from Tekton, "
                                     "covering lost 17/SCMP events (0 = off).")
    debounce: float = setting(0.25, Duration(), "Time 17/SCMP events are collected before "
                              "the changed scopes are fetched.")
    initial_load_timeout: float = setting(300.0, Duration(), "Give up starting when the first "
                                          "load from Tekton fails for this long (0 = wait "
                                          "forever).")
    default_allow_all_extensions: bool = setting(
        True, Boolean(), "An appversion whose Tekton configuration lists no "
        "allowed-extension-instances may address every instance in kaa.extension-instances.")
    accept_legacy_scmp: bool = setting(True, Boolean(), "Also follow the pre-2020 "
                                       "`...app-configuration.*` 17/SCMP subjects and schemas.")


@attrs.frozen
class ScmpProviderInstance:
    name: str = setting("tekton", SUBJECT_TOKEN, "Service instance name of the 17/SCMP "
                        "configuration provider, a token of its broadcast subject.")


@attrs.frozen
class ScmpProvider:
    service_instance: ScmpProviderInstance = section(ScmpProviderInstance)


@attrs.frozen
class ScmpConsumer:
    provider: ScmpProvider = section(ScmpProvider)


@attrs.frozen
class ScmpSettings:
    consumer: ScmpConsumer = section(ScmpConsumer)


@attrs.frozen
class OAuth2Settings:
    enabled: bool = setting(True, Boolean(), "Call Tekton with a Keycloak service token "
                            "(false: without Authorization, for Tekton with API security off).")
    token_url: str = setting(
        "http://keycloak/auth/realms/kaa/protocol/openid-connect/token",
        Text(r"https?://\S+", "an http:// or https:// URL", label="URL"),
        "Keycloak token endpoint (client credentials grant).")
    client_id: str = setting("kpc", Text(r"\S+", "a non-empty client id", label="client id"),
                             "OAuth2 client id of KPC's service account.")
    client_secret: str = setting("", Text(), "OAuth2 client secret (prefer the env variable or "
                                 "client-secret-file; never logged).")
    client_secret_file: str = setting("", Text(), "File holding the client secret (a mounted "
                                      "Kubernetes secret); read at each token request.")
    refresh_skew: float = setting(30.0, Duration(), "Renew the token when less than "
                                  "max(refresh-skew, 10% of its lifetime) remains.")


@attrs.frozen
class KaaSettings:
    kpc: KpcSettings = section(KpcSettings)
    tekton: TektonSettings = section(TektonSettings)
    scmp: ScmpSettings = section(ScmpSettings)
    oauth2: OAuth2Settings = section(OAuth2Settings)
    applications: Mapping[str, Application] = named_entries(
        Application, "<application>", "Applications served by this KPC (file-based, Kaa 1.0 style)."
    )
    extension_instances: Mapping[str, ExtensionInstance] = named_entries(
        ExtensionInstance, "<instance>", "Extension instances that clients may address."
    )


@attrs.frozen
class Config:
    service: ServiceSettings = section(ServiceSettings)
    server: ServerSettings = section(ServerSettings)
    management: ManagementSettings = section(ManagementSettings)
    nats: NatsSettings = section(NatsSettings)
    logging: LoggingSettings = section(LoggingSettings)
    license: LicenseSettings = section(LicenseSettings)
    kaa: KaaSettings = section(KaaSettings)
    source: str = DEFAULTS_SOURCE  # the file that was loaded, or "defaults"; not a YAML key

    def disconnect_policy(self, app_version: str) -> DisconnectPolicy:
        """When endpoints of `app_version` go offline (spec 3.3); unknown versions get the
        default (follow the client's connection, no idle disconnection)."""
        return self._disconnect_policies.get(app_version, _DEFAULT_DISCONNECT_POLICY)

    @functools.cached_property
    def _disconnect_policies(self) -> Mapping[str, DisconnectPolicy]:
        # Resolved once per Config: sessions ask on every endpoint identification.
        return {
            version_name: _policy(application.effective_disconnect(version_name))
            for application in self.kaa.applications.values()
            for version_name in application.versions
        }


_DEFAULT_DISCONNECT_POLICY = DisconnectPolicy()


# ----------------------------------------------------------------------------------------------
# Loading.


def _yaml_key(field: attrs.Attribute) -> str:
    return field.name.replace("_", "-")


def env_var_name(key_path: str) -> str:
    """The documented KPC rule: upper-case the key path, `.` and `-` become `_`."""
    return re.sub(r"[.-]", "_", key_path).upper()


def _config_fields(node: type) -> Iterator[tuple[str, Any, Any]]:
    """(YAML key, attrs field, Setting | Section | NamedEntries) for each configuration key."""
    for field in attrs.fields(node):
        if _META in field.metadata:
            yield _yaml_key(field), field, field.metadata[_META]


@attrs.frozen
class _Origin:
    file: str
    env: Mapping[str, str] | None  # None inside named entries: no env overrides there


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _merge(existing: object, added: object, path: str, origin: _Origin) -> object:
    if isinstance(existing, dict) and isinstance(added, dict):
        merged = dict(existing)
        for key, value in added.items():
            if key in merged:
                value = _merge(merged[key], value, _join(path, key), origin)
            merged[key] = value
        return merged
    raise ConfigError(f"{path}: given twice (nested and as a dotted key) in {origin.file}",
                      key_path=path)


def _expand_dotted(raw: object, path: str, origin: _Origin) -> dict[str, object]:
    """One mapping level with dotted keys (`replica.id: r1`) turned into nested mappings."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or '<top level>'}: expected a mapping of keys, got {raw!r} "
                          f"(from {origin.file})", key_path=path)
    expanded: dict[str, object] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_join(path, str(key))}: keys must be strings, got {key!r} "
                              f"(quote it in {origin.file})", key_path=_join(path, str(key)))
        if not all(key.split(".")):
            raise ConfigError(f"{_join(path, key)}: malformed dotted key (from {origin.file})",
                              key_path=_join(path, key))
        head, _, rest = key.partition(".")
        item = {rest: value} if rest else value
        expanded[head] = (_merge(expanded[head], item, _join(path, head), origin)
                          if head in expanded else item)
    return expanded


def _parse_setting(spec: Setting, raw: object, path: str, where: str) -> Any:
    try:
        return spec.value_type.parse(raw)
    except InvalidValue as exc:
        problem = str(exc) or f"expected {spec.value_type.expected()}, got {raw!r}"
        raise ConfigError(f"{path}: {problem} (from {where})", key_path=path) from None


def _build(node: type, raw: object, path: str, origin: _Origin) -> Any:
    given = _expand_dotted(raw, path, origin)
    known = {key: (field, kind) for key, field, kind in _config_fields(node)}
    for key in given:
        if key not in known:
            raise ConfigError(
                f"{_join(path, key)}: unknown key (from {origin.file}); "
                f"known keys here: {', '.join(known)}", key_path=_join(path, key))
    values: dict[str, Any] = {}
    for key, (field, kind) in known.items():
        key_path = _join(path, key)
        if isinstance(kind, Section):
            values[field.name] = _build(kind.node, given.get(key), key_path, origin)
        elif isinstance(kind, NamedEntries):
            entries = _expand_dotted(given.get(key), key_path, origin)
            for name in entries:
                try:
                    ENTRY_NAME.parse(name)
                except InvalidValue:
                    raise ConfigError(f"{_join(key_path, name)}: {name!r} is not "
                                      f"{ENTRY_NAME.expected()} (from {origin.file})",
                                      key_path=_join(key_path, name)) from None
            inner = _Origin(origin.file, env=None)
            values[field.name] = types.MappingProxyType({
                name: _build(kind.node, entry, _join(key_path, name), inner)
                for name, entry in entries.items()
            })
        elif origin.env is not None and env_var_name(key_path) in origin.env:
            env_name = env_var_name(key_path)
            values[field.name] = _parse_setting(kind, origin.env[env_name], key_path,
                                                f"env {env_name}")
        elif key in given:
            values[field.name] = _parse_setting(kind, given[key], key_path, origin.file)
    return node(**values)


def _read_yaml(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _enabled_listeners(config: Config) -> Iterator[tuple[str, int]]:
    mqtt = config.kaa.kpc.transports.mqtt
    yield "server.port", config.server.port
    yield "management.port", config.management.port
    prefix = "kaa.kpc.transports"
    transports = (("mqtt.tcp", mqtt.tcp), ("mqtt.tls", mqtt.tls),
                  ("mqtt.websocket", mqtt.websocket), ("http", config.kaa.kpc.transports.http))
    for key, listener in transports:
        if listener.enabled:
            yield f"{prefix}.{key}.port", listener.port


def _check_consistency(config: Config) -> None:
    where = config.source
    tls = config.kaa.kpc.transports.mqtt.tls
    for key, value in (("cert-file", tls.cert_file), ("key-file", tls.key_file)):
        if tls.enabled and not value:
            path = f"kaa.kpc.transports.mqtt.tls.{key}"
            raise ConfigError(f"{path}: required when kaa.kpc.transports.mqtt.tls.enabled is true "
                              f"(set it in the YAML file or env {env_var_name(path)})",
                              key_path=path)
    owners: dict[int, str] = {}
    for key_path, port in _enabled_listeners(config):
        if port == 0:  # 0 = any free port: never a clash
            continue
        if port in owners:
            raise ConfigError(f"{key_path}: port {port} is already used by {owners[port]}; "
                              f"enabled listeners need distinct ports (from {where})",
                              key_path=key_path)
        owners[port] = key_path
    applications_of: dict[str, str] = {}
    for app_name, application in config.kaa.applications.items():
        for version_name in application.versions:
            path = f"kaa.applications.{app_name}.versions.{version_name}"
            if version_name in applications_of:
                raise ConfigError(
                    f"{path}: application version {version_name!r} is already listed under "
                    f"kaa.applications.{applications_of[version_name]}; an application version "
                    f"belongs to exactly one application (from {where})", key_path=path)
            applications_of[version_name] = app_name
    _check_disconnect_settings(config)
    _check_nats_settings(config)


def _check_nats_settings(config: Config) -> None:
    nats = config.nats
    if nats.creds_file and nats.nkey_seed_file:
        raise ConfigError(f"nats.nkey-seed-file: set either nats.creds-file or "
                          f"nats.nkey-seed-file, not both (from {config.source})",
                          key_path="nats.nkey-seed-file")
    if bool(nats.tls.cert_file) != bool(nats.tls.key_file):
        key = "nats.tls.key-file" if nats.tls.cert_file else "nats.tls.cert-file"
        raise ConfigError(f"{key}: nats.tls.cert-file and nats.tls.key-file go together "
                          f"(set it in the YAML file or env {env_var_name(key)})", key_path=key)


def _check_disconnect_settings(config: Config) -> None:
    """Every application version needs a way to go offline: its client's disconnection or the
    idle timeout; otherwise its endpoints would stay connected forever.

    The application's own settings must pass alone (versions without overrides use them as is).
    """
    for app_name, application in config.kaa.applications.items():
        app_path = f"kaa.applications.{app_name}.disconnect"
        client_key, idle_key = f"{app_path}.on-client-disconnect", f"{app_path}.idle.enabled"
        _check_goes_offline(application.disconnect, f"application {app_name!r}",
                            client_key, idle_key, client_key, config.source)
        for version_name, version in application.versions.items():
            version_path = f"kaa.applications.{app_name}.versions.{version_name}.disconnect"
            override = version.disconnect
            version_client_key = (client_key if override.on_client_disconnect is None
                                  else f"{version_path}.on-client-disconnect")
            version_idle_key = (idle_key if override.idle.enabled is None
                                else f"{version_path}.idle.enabled")
            # blame a key this version sets: with both inherited, the application check raised
            blamed = version_client_key if version_client_key != client_key else version_idle_key
            _check_goes_offline(application.effective_disconnect(version_name),
                                f"application version {version_name!r}", version_client_key,
                                version_idle_key, blamed, config.source)


def _check_goes_offline(settings: DisconnectSettings, scope: str, client_key: str, idle_key: str,
                        blamed: str, where: str) -> None:
    if settings.on_client_disconnect or settings.idle.enabled:
        return
    raise ConfigError(
        f"{blamed}: {client_key} is false and {idle_key} is false, so endpoints of {scope} would "
        f"never be disconnected; enable idle disconnection or set on-client-disconnect to true "
        f"(from {where})", key_path=blamed)


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the YAML file, apply env overrides and validate; raise ConfigError on any problem.

    `path` None -> env APP_CONFIG_PATH; when that is unset too, /srv/kpc/service-config.yml if it
    exists, else the defaults. `env` None -> os.environ.
    """
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_PATH_ENV) or None
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    raw = _read_yaml(path) if path is not None else None
    source = path if path is not None else DEFAULTS_SOURCE
    config = attrs.evolve(_build(Config, raw, "", _Origin(source, env)), source=source)
    _check_consistency(config)
    return config


# ----------------------------------------------------------------------------------------------
# Rendering: the effective configuration and the reference table.


def _redact_credentials(urls: str) -> str:
    """Hide NATS passwords/tokens (`nats://user:secret@host`) in printed configuration."""

    def redact(match: re.Match[str]) -> str:
        user, colon, _ = match[1].partition(":")
        return f"//{user}:***@" if colon else "//***@"

    return re.sub(r"//([^@/]*)@", redact, urls)


def _plain(node: Any) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, field, kind in _config_fields(type(node)):
        value = getattr(node, field.name)
        if isinstance(kind, Section):
            plain[key] = _plain(value)
        elif isinstance(kind, NamedEntries):
            plain[key] = {name: _plain(entry) for name, entry in value.items()}
        else:
            plain[key] = list(value) if isinstance(value, tuple) else value
    return plain


def values_by_key(node: Any, path: str = "") -> dict[str, Any]:
    """Every key path of `node` with its value; a map of named entries (`kaa.applications`)
    is one value, in its YAML form."""
    values: dict[str, Any] = {}
    for key, field, kind in _config_fields(type(node)):
        key_path, value = _join(path, key), getattr(node, field.name)
        if isinstance(kind, Section):
            values.update(values_by_key(value, key_path))
        elif isinstance(kind, NamedEntries):
            values[key_path] = {name: _plain(entry) for name, entry in value.items()}
        else:
            values[key_path] = value
    return values


def with_value(node: Any, key_path: str, value: Any) -> Any:
    """A copy of `node` with the setting at `key_path` (outside named entries) set to `value`."""
    head, _, rest = key_path.partition(".")
    name = head.replace("-", "_")
    inner = with_value(getattr(node, name), rest, value) if rest else value
    return attrs.evolve(node, **{name: inner})


def render_effective_config(config: Config) -> str:
    """YAML of the effective configuration (loadable again; NATS credentials are masked)."""
    plain = _plain(config)
    plain["nats"]["urls"] = _redact_credentials(config.nats.urls)
    if config.kaa.oauth2.client_secret:
        plain["kaa"]["oauth2"]["client-secret"] = "***"
    body = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)
    return f"# kpc-trio effective configuration (source: {config.source})\n{body}"


def _reference_rows(node: type, path: str, with_env: bool) -> Iterator[tuple[str, str, str, str]]:
    for key, field, kind in _config_fields(node):
        key_path = _join(path, key)
        if isinstance(kind, Section):
            yield from _reference_rows(kind.node, key_path, with_env)
        elif isinstance(kind, NamedEntries):
            yield f"`{key_path}`", "`{}`", "–", f"{kind.help} (map: name → entry)"
            yield from _reference_rows(kind.node, _join(key_path, kind.placeholder), False)
        else:
            if kind.default_doc is not None:
                default = kind.default_doc
            else:
                default = f"`{kind.value_type.show(field.default)}`"
            env = f"`{env_var_name(key_path)}`" if with_env else "–"
            yield f"`{key_path}`", default, env, f"{kind.help} ({kind.value_type.label})"


def config_reference() -> str:
    """The markdown reference table of every key (key, default, env var, description)."""
    lines = ["| Key | Default | Env var | Description |", "|---|---|---|---|"]
    for row in _reference_rows(Config, "", True):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"
