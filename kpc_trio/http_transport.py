"""1/KP over plain HTTP (Kaa 1.2+): `POST /kp1/<appversion>/<extension>/<token>/<path>`.

Synchronous request/response (spec 2.5): KPC validates the token, relays the body as a
`ClientData` with a request id of its own, waits for the extension's `ExtensionData` and answers
with its status code and payload (the 1/KP error JSON for non-2xx). No client authentication on
HTTP, as documented; endpoint token identification only.

HTTP devices are endpoints like any other: a request marks its endpoint online (the endpoint
lifecycle publishes the ConnectedEvent the first time), it goes offline after
`kaa.kpc.transports.http.idle-timeout` without requests, and the bytes both ways are counted in
the traffic reports (under the default tenant: HTTP has no client authentication).
"""

from __future__ import annotations

import itertools
import os
from typing import Any
from urllib.parse import unquote

import attrs
import trio

from kpc_trio.auth import EndpointIdentity, EndpointTokenResolver, TokenValidationError
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.httpd import Request, Response
from kpc_trio.kaa import kp1, records
from kpc_trio.kaa.endpoints import Endpoints
from kpc_trio.kaa.kp1 import Kp1Error
from kpc_trio.logs import get_logger
from kpc_trio.metrics import Metrics
from kpc_trio.nats.gateway import NatsPort, NatsUnavailableError
from kpc_trio.relay import REFUSED_BY_NATS_REASON, REFUSED_BY_NATS_STATUS, Relay, reason_for
from kpc_trio.traffic import TrafficMeter

log = get_logger(__name__)

#: Request ids KPC generates for HTTP requests start high, away from the small ids devices use
#: over MQTT for the same endpoint and extension (4/ESP has no other way to tell them apart), and
#: from those it gives MQTT requests (below `hub.REQUEST_ID_LIMIT`).
HTTP_REQUEST_ID_BASE = 1 << 30


@attrs.frozen
class ReplyKey:
    extension: str
    endpoint_id: str | None
    request_id: int


@attrs.define(eq=False)
class _Waiter:
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: records.ExtensionData | None = None


class ReplyWaiters:
    """HTTP requests waiting for their `ExtensionData`, matched on (extension, endpoint, id)."""

    def __init__(self) -> None:
        self._waiting: dict[ReplyKey, _Waiter] = {}

    def expect(self, key: ReplyKey) -> _Waiter:
        waiter = self._waiting[key] = _Waiter()
        return waiter

    def cancel(self, key: ReplyKey) -> None:
        self._waiting.pop(key, None)

    def deliver(self, data: records.ExtensionData) -> bool:
        """Complete the matching request; False when no HTTP request waits for `data`."""
        if data.request_id is None or data.extension_instance_name is None:
            return False
        waiter = self._waiting.pop(
            ReplyKey(data.extension_instance_name, data.endpoint_id, data.request_id), None)
        if waiter is None:
            return False
        waiter.reply = data
        waiter.done.set()
        return True

    def __len__(self) -> int:
        return len(self._waiting)


def kp1_topic(path: str) -> str:
    """The 1/KP topic a request path names: without the leading '/', each level percent-decoded
    (a token or resource path level may need escaping in a URL). `%2F` is data within a level
    (RFC 3986), and a 1/KP level cannot hold a '/': such a path is refused, as is one that does
    not decode to UTF-8."""
    try:
        levels = [unquote(level, errors="strict") for level in path[1:].split("/")]
    except UnicodeDecodeError:
        raise Kp1Error(400, "Bad resource path", detail="percent-encoded bytes are not UTF-8"
                       ) from None
    if any("/" in level or "\0" in level for level in levels):
        raise Kp1Error(400, "Bad resource path", detail="a level decodes to '/' or NUL")
    return "/".join(levels)


def kp1_error_response(status: int, reason: str) -> Response:
    """Every HTTP error of this transport carries the 1/KP error JSON."""
    return status, [("content-type", "application/json")], kp1.error_payload(status, reason)


class HttpTransport:
    def __init__(
        self,
        *,
        relay: Relay,
        resolver: EndpointTokenResolver,
        gateway: NatsPort,
        waiters: ReplyWaiters,
        metrics: Metrics,
        request_timeout: float,
        endpoints: Endpoints[Any],
        events: ConnectivityEvents,
        traffic: TrafficMeter | None,
    ) -> None:
        self._endpoints = endpoints
        self._events = events
        self._traffic = traffic
        self._relay = relay
        self._resolver = resolver
        self._gateway = gateway
        self._waiters = waiters
        self._metrics = metrics
        self._timeout = request_timeout
        start = int.from_bytes(os.urandom(3), "big")
        self._request_ids = (HTTP_REQUEST_ID_BASE + (start + n) % HTTP_REQUEST_ID_BASE
                             for n in itertools.count())

    async def handle(self, request: Request) -> Response:
        """The `serve_http` fallback: every path is a 1/KP resource path."""
        response = await self._answer(request)
        self._metrics.http_requests.labels(str(response[0])).inc()
        return response

    async def _answer(self, request: Request) -> Response:
        if not request.path.startswith("/kp1/"):
            return kp1_error_response(400, "Bad resource path")
        if request.method != "POST":
            status, headers, body = kp1_error_response(405, "Only POST is supported")
            return status, [*headers, ("allow", "POST")], body
        try:
            route = self._relay.route(kp1_topic(request.path))
            identity = await self._identify(route) if route.token is not None else None
        except Kp1Error as err:
            return kp1_error_response(err.status_code, err.reason_phrase)
        except TokenValidationError as err:
            return kp1_error_response(err.status_code, err.reason_phrase)
        endpoint_id = app_name = None
        if identity is not None:
            endpoint_id = identity.endpoint_id
            app_name = self._relay.registry.app_name(route.app_version)
            self._events.publish(self._endpoints.http_request(endpoint_id, route.app_version,
                                                              trio.current_time()))
        request_id = next(self._request_ids)
        route = attrs.evolve(route, request_id=request_id)
        key = ReplyKey(route.extension, endpoint_id, request_id)
        waiter = self._waiters.expect(key)
        correlation_id = self._relay.next_correlation_id()
        try:
            message = self._relay.client_data_message(route, endpoint_id, request.body,
                                                      correlation_id)
            if len(message.payload) > self._gateway.max_payload:
                # As over MQTT: NATS would refuse it, the client learns why.
                self._metrics.messages_dropped.labels("too_large_for_nats").inc()
                return kp1_error_response(413, "Payload too large: NATS takes "
                                               f"{self._gateway.max_payload} bytes per message")
            try:
                refused = await self._gateway.publish_confirmed([message], fail_fast=True)
            except NatsUnavailableError:
                return kp1_error_response(503, "Service unavailable: NATS is not connected")
            if refused:
                self._relay.affinity.forget_subject(message.subject)
                return kp1_error_response(REFUSED_BY_NATS_STATUS, REFUSED_BY_NATS_REASON)
            self._metrics.relayed_to(route.extension).inc()
            if self._traffic is not None and endpoint_id is not None and app_name is not None:
                self._traffic.received(None, app_name, endpoint_id, len(request.body))
            with trio.move_on_after(self._timeout):
                await waiter.done.wait()
        finally:
            self._waiters.cancel(key)
        if waiter.reply is None:
            log.info("http_extension_timeout", extension=route.extension,
                     endpoint_id=endpoint_id, correlation_id=correlation_id)
            return kp1_error_response(504, "Extension did not answer in time")
        response = self._response_for(waiter.reply)
        if self._traffic is not None and endpoint_id is not None and app_name is not None:
            self._traffic.sent(None, app_name, endpoint_id, len(response[2]))
        return response

    async def _identify(self, route: kp1.Route) -> EndpointIdentity:
        assert route.token is not None
        app_name = self._relay.registry.app_name(route.app_version)
        assert app_name is not None  # parse_topic rejects unknown appversions
        identity = self._resolver.identify_cached(app_name, route.token)
        if identity is None:
            identity = await self._resolver.identify(app_name, route.token)
        else:
            self._resolver.record_cache_hits(1)
        return identity

    @staticmethod
    def _response_for(data: records.ExtensionData) -> Response:
        status = data.status_code
        if not kp1.is_success(status):
            return kp1_error_response(status, data.reason_phrase or reason_for(status))
        payload = data.payload or b""
        content_type = ("application/json" if payload[:1] in (b"{", b"[")
                        else "application/octet-stream")
        return status, [("content-type", content_type)], payload
