"""Translation between 1/KP (MQTT topics and payloads) and 4/ESP (Avro records on NATS).

Pure: builds `ClientData` messages for a parsed route and turns an `ExtensionData` into the topic
and payload the client receives. No I/O and no routing state: sessions and the hub own that.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from http import HTTPStatus

import attrs

from kpc_trio.kaa import kp1, records, subjects
from kpc_trio.kaa.affinity import Affinity
from kpc_trio.kaa.kp1 import ApplicationRegistry, Kp1Error, Route
from kpc_trio.nats.gateway import OutboundMessage

MAX_REMEMBERED_ROUTES = 10_000
_new_tuple = tuple.__new__
#: The 1/KP answer to a request NATS refused to take (a publish permissions violation): 502, as
#: from a gateway whose upstream refused; retrying cannot help until the NATS permissions change.
REFUSED_BY_NATS_STATUS = 502
REFUSED_BY_NATS_REASON = "Bad Gateway: NATS refused the message (publish permission denied)"
#: What one remembered route costs besides its topic's characters: the dict slot, the `Route`
#: and its strings' headers (measured with tracemalloc, rounded up).
ROUTE_OVERHEAD_BYTES = 400
#: Likewise for the `ClientData` template of a route and endpoint, besides its encoded fields.
TEMPLATE_OVERHEAD_BYTES = 300


@attrs.frozen
class TopicLimits:
    """kaa.kpc.limits: checked before a topic is parsed, remembered or relayed."""

    max_topic_length: int = 1024  # UTF-8 bytes
    max_token_length: int = 256  # UTF-8 bytes
    route_memory_bytes: int = 8 * 1024 * 1024


def utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@attrs.frozen
class ClientMessage:
    """What KPC publishes to the client for one `ExtensionData`."""

    topic: str
    payload: bytes


class UndeliverableError(Exception):
    """An `ExtensionData` that cannot be turned into a 1/KP topic (missing names)."""


def reason_for(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"


class Relay:
    def __init__(
        self,
        registry: ApplicationRegistry,
        *,
        replica_id: str,
        message_timeout_ms: int = 0,
        with_config_name: bool = True,
        limits: TopicLimits = TopicLimits(),
        affinity: Affinity | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits
        #: Where an endpoint's ClientData go when an extension replica answered it (trio's clock
        #: is not needed: TTLs are minutes, `time.monotonic()` serves).
        self.affinity = affinity if affinity is not None else Affinity(ttl=0, max_bytes=0)
        self._affinity_entries = self.affinity.entries
        self._reply_to = subjects.extension_data_replica(replica_id)
        self._timeout = message_timeout_ms
        self._with_config_name = with_config_name
        # Correlation ids: unique per process start and cheap (no uuid per message).
        self._id_prefix = f"{replica_id}-{os.urandom(4).hex()}-"
        self._id_prefix_bytes = self._id_prefix.encode()
        self._ids = itertools.count()
        self._subjects: dict[str, str] = {}
        self._routes: dict[str, Route] = {}
        self._routes_bytes = 0  # estimated memory of `_routes` and `_templates`
        # id(route) -> (route, endpoint id, its ClientData template), for remembered routes only
        # (the entry holds the route, so its id cannot be reused while the entry lives).
        self._templates: dict[int, tuple[Route, str | None, records.ClientDataTemplate]] = {}

    def use_registry(self, registry: ApplicationRegistry) -> None:
        """Serve another set of applications from now on (a configuration reload); routes
        parsed against the old one are forgotten."""
        self.registry = registry
        self._forget_routes()

    def _forget_routes(self) -> None:
        self._routes.clear()
        self._templates.clear()
        self._routes_bytes = 0

    def route(self, topic: str) -> Route:
        """Parse a client topic; raises `kp1.Kp1Error` with the status to answer.

        Devices publish to the same few topics over and over: parsed routes are remembered,
        bounded in topics and in bytes. Errors are not, so a flood of bad topics cannot fill the
        memory, and neither are requests: their topic ends in a new request id each time, and
        would only push the repeating topics out.
        """
        route = self._routes.get(topic)
        if route is None:
            route = self._parse(topic)
            if route.request_id is None:
                cost = 2 * len(topic) + ROUTE_OVERHEAD_BYTES  # the topic and its parts
                if self._make_room(len(self._routes), cost):
                    self._routes[topic] = route
        return route

    def _parse(self, topic: str) -> Route:
        """`kp1.parse_topic` within the configured lengths (checked first: a long topic costs
        nothing but this check)."""
        limits = self.limits
        if len(topic) > limits.max_topic_length or utf8_length(topic) > limits.max_topic_length:
            raise Kp1Error(414, "Topic too long", kp1.trailing_request_id(topic),
                           f"{utf8_length(topic)} bytes, at most {limits.max_topic_length}")
        route = kp1.parse_topic(topic, self.registry)
        if route.token is not None and utf8_length(route.token) > limits.max_token_length:
            raise Kp1Error(401, "Endpoint token too long", route.request_id,
                           f"{utf8_length(route.token)} bytes, at most {limits.max_token_length}")
        return route

    @property
    def remembered_routes_bytes(self) -> int:
        return self._routes_bytes

    def next_correlation_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def client_data_message(
        self, route: Route, endpoint_id: str | None, payload: bytes, correlation_id: str
    ) -> OutboundMessage:
        """The `ClientData` of one client message, on its way to the route's extension.

        The fields that repeat for a route and endpoint are encoded once (`ClientDataTemplate`)
        for remembered routes; requests (a new route each) are encoded whole."""
        # The common cases of `_template_for` and `_subject_for` inline: two calls less per
        # message (QoS 1 relays one message at a time).
        entry = self._templates.get(id(route))
        if entry is not None and entry[0] is route and entry[1] == endpoint_id:
            template = entry[2]
        else:
            template = self._template(route, endpoint_id)
        subject = None
        if endpoint_id is None or not self._affinity_entries:
            subject = self._subjects.get(route.extension)
        if subject is None:
            subject = self._subject_for(route, endpoint_id)
        datum = records.fill_client_data(template, correlation_id, time.time_ns() // 1_000_000,
                                         payload)
        # tuple.__new__ skips the named tuple's Python-level constructor (one per message)
        return _new_tuple(OutboundMessage, (subject, datum, self._reply_to))

    def client_data_run(self, route: Route, endpoint_id: str | None, payloads: Sequence[bytes],
                        max_payload: int) -> list[OutboundMessage]:
        """`client_data_message` for each of `payloads` (consecutive messages of one topic;
        not a request), with one timestamp, in order; stops before the first whose `ClientData`
        would exceed `max_payload` (the caller refuses that one as a lone message)."""
        first_id = next(self._ids)
        self._ids = itertools.count(first_id + len(payloads))  # the run takes them all
        datums = records.fill_client_data_run(
            self._template_for(route, endpoint_id), self._id_prefix_bytes, first_id,
            time.time_ns() // 1_000_000, payloads)
        if max(map(len, datums)) > max_payload:
            datums = list(itertools.takewhile(lambda datum: len(datum) <= max_payload, datums))
        subject, reply = self._subject_for(route, endpoint_id), self._reply_to
        return [_new_tuple(OutboundMessage, (subject, datum, reply)) for datum in datums]

    def _template_for(self, route: Route, endpoint_id: str | None
                      ) -> records.ClientDataTemplate:
        entry = self._templates.get(id(route))
        if entry is not None and entry[0] is route and entry[1] == endpoint_id:
            return entry[2]
        return self._template(route, endpoint_id)

    def _subject_for(self, route: Route, endpoint_id: str | None) -> str:
        subject = None
        if endpoint_id is not None and self._affinity_entries:  # none: no clock reading
            subject = self.affinity.subject_for(endpoint_id, route.extension, time.monotonic())
        if subject is None:
            subject = self._subjects.get(route.extension)
        if subject is None:
            subject = self._subjects[route.extension] = subjects.client_data(route.extension)
        return subject

    def _template(self, route: Route, endpoint_id: str | None) -> records.ClientDataTemplate:
        template = records.client_data_template(
            self._timeout, route.app_version, endpoint_id, route.resource_path, route.request_id,
            with_config_name=self._with_config_name)
        if route.request_id is None:  # requests are new routes each time: nothing to reuse
            stale = self._templates.pop(id(route), None)
            if stale is not None:  # the route's endpoint changed (its token was bound anew)
                self._routes_bytes -= len(stale[2].middle) + TEMPLATE_OVERHEAD_BYTES
            cost = len(template.middle) + TEMPLATE_OVERHEAD_BYTES
            if self._make_room(len(self._templates), cost):
                self._templates[id(route)] = (route, endpoint_id, template)
        return template

    def _make_room(self, remembered: int, cost: int) -> bool:
        """Account for one more remembered route or template of `cost` bytes, in a table of
        `remembered` entries; False if it cannot be remembered at all. A full table or byte
        budget forgets everything (the repeating topics come back at once)."""
        if (remembered >= MAX_REMEMBERED_ROUTES
                or self._routes_bytes + cost > self.limits.route_memory_bytes):
            self._forget_routes()
        if cost > self.limits.route_memory_bytes:
            return False
        self._routes_bytes += cost
        return True

    @staticmethod
    def client_message(
        data: records.ExtensionData, token: str | None, fallback_app_version: str | None
    ) -> ClientMessage:
        """The `/status` or `/error` PUBLISH for an `ExtensionData` (spec 4.5)."""
        app_version = data.app_version_name or fallback_app_version
        if not app_version or not data.extension_instance_name:
            raise UndeliverableError(
                "ExtensionData without appVersionName or extensionInstanceName")
        success = kp1.is_success(data.status_code)
        topic = kp1.response_topic(
            app_version, data.extension_instance_name, token, data.resource_path,
            data.request_id, success=success,
        )
        if success:
            return ClientMessage(topic, data.payload or b"")
        reason = data.reason_phrase or reason_for(data.status_code)
        return ClientMessage(topic, kp1.error_payload(data.status_code, reason))


def is_expired(data: records.ExtensionData, now_ms: int) -> bool:
    """4/ESP: `timeout` ms after `timestamp` the message is void; 0 means it never expires."""
    return data.timeout > 0 and data.timestamp + data.timeout < now_ms
