"""A minimal HTTP/1.1 server (h11 over trio) and the two apps KPC serves with it.

The server answers `GET`/`HEAD` on exact paths; everything else gets a JSON 404/405. It keeps
connections alive, bounds request headers, bodies and the time to receive a request (and, when
asked, the connections open at once and their rate, in the shared accept loop), and never sends
a traceback: a failing handler becomes a 500 and a log event.

Apps: `management_routes` (metrics/health/readiness, `management.port`) and `rest_routes` (the
TLS server certificate for clients' trust stores, `server.port`).
"""

from __future__ import annotations

import http
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final, NoReturn, TypeAlias
from urllib.parse import urlsplit

import attrs
import h11
import trio

from kpc_trio.health import Health
from kpc_trio.logs import get_logger, set_log_source
from kpc_trio.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kpc_trio.metrics import Metrics
from kpc_trio.net.admission import Slots
from kpc_trio.net.edge import NO_POLICY, Edge, EdgeSettings
from kpc_trio.net.forwarded import TrustedProxies, forwarded_client
from kpc_trio.net.listeners import peer_address, serve_socket_listeners
from kpc_trio.net.socket_stream import LeanSocketStream

log = get_logger(__name__)

Headers: TypeAlias = Sequence[tuple[str, str]]
#: What a handler returns: status code, headers (no Content-Length: the server sets it), body.
Response: TypeAlias = tuple[int, Headers, bytes]

_ALLOWED_METHODS: Final = ("GET", "HEAD")
_RECEIVE_SIZE: Final = 16384
_SERVER_HEADER: Final = ("server", "kpc-trio")


@attrs.frozen
class Request:
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: The client's "host:port", or the address a trusted proxy forwarded for it.
    client: str = ""


Handler: TypeAlias = Callable[[Request], Awaitable[Response]]


@attrs.frozen
class HttpLimits:
    """Bounds that keep one slow or hostile client from holding resources."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    #: Pieces (chunks of a chunked body, reads) one body may arrive in: each costs a parse, so
    #: a megabyte in 1-byte chunks would cost seconds of CPU.
    max_body_pieces: int = 4096
    #: Time allowed to receive one whole request; also how long an idle keep-alive connection
    #: stays open.
    read_timeout: float = 10.0
    write_timeout: float = 10.0
    #: After an error response, how long to drain the client's unread input before closing, so
    #: the kernel does not answer it with a RST that destroys the response in flight.
    linger_timeout: float = 1.0


class _BodyTooLargeError(Exception):
    pass


class _BodyTooFragmentedError(Exception):
    pass


def json_response(status: int, document: Mapping[str, Any]) -> Response:
    return status, [("content-type", "application/json")], json.dumps(document).encode()


def error_document(status: int, reason: str) -> Response:
    """The default error body: `{"error": reason}`."""
    return json_response(status, {"error": reason})


#: Renders the server's own error answers (400, 404, 408, 413, 500) for an app.
ErrorRenderer: TypeAlias = Callable[[int, str], Response]


async def serve_http(
    routes: Mapping[str, Handler],
    *,
    host: str | None,
    port: int,
    fallback: Handler | None = None,
    error_response: ErrorRenderer = error_document,
    limits: HttpLimits = HttpLimits(),
    handler_nursery: trio.Nursery | None = None,
    edge: EdgeSettings = NO_POLICY,
    max_connections: int = 0,
    name: str = "http",
    reuse_port: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve `routes` (exact path -> GET/HEAD handler) on `host:port` until cancelled.

    Requests for other paths go to `fallback` (any method; it answers 404/405 itself), or get
    a 404 without one.

    Reports the bound port through `task_status` (useful with `port=0`). `host=None` binds all
    interfaces; with `port=0` pass a literal address, since each resolved address would get its
    own ephemeral port. `reuse_port` shares the port with other workers (SO_REUSEPORT).
    `X-Forwarded-For` / `Forwarded` name the client only when sent by one of
    `edge.trusted_proxies`.

    Connections beyond `max_connections` open at once (0 = unlimited) or over `edge`'s
    connection rate are closed in the accept loop, before any task or read, and reported to
    `edge.on_refused` as (`name`, "max_connections" / "connection_rate"). Not a 503: the
    request is still unread then, and closing a socket with unread input makes the kernel
    answer with a RST that can destroy the response in flight; delivering one reliably needs
    a task that reads the request, which is what the cap is there to bound.
    """
    policy = Edge(edge, name)
    connections = Slots(max_connections)

    def admit() -> bool:
        if not connections.acquire_nowait():
            policy.refuse("max_connections")
            return False
        if policy.admit_nowait():
            return True
        connections.release()
        return False

    serve = partial(_serve_connection, routes=routes, fallback=fallback,
                    error_response=error_response, limits=limits,
                    trusted_proxies=edge.trusted_proxies, connections=connections)
    async with trio.open_nursery() as nursery:
        _, bound_port = await nursery.start(partial(
            serve_socket_listeners, serve, transport=name, host=host, port=port,
            handler_nursery=handler_nursery or nursery, reuse_port=reuse_port, admit=admit))
        log.info("http_listening", host=host or "*", port=bound_port, paths=",".join(routes))
        task_status.started(bound_port)
    raise AssertionError("serve_socket_listeners returned")  # it only ever raises


async def _serve_connection(
    stream: LeanSocketStream, *, routes: Mapping[str, Handler], fallback: Handler | None,
    error_response: ErrorRenderer, limits: HttpLimits, trusted_proxies: TrustedProxies,
    connections: Slots,
) -> None:
    try:
        address = peer_address(stream)
        if address is None:
            return
        connection = _HttpConnection(stream, routes, fallback, error_response, limits,
                                     trusted_proxies, address)
        set_log_source(connection)
        await connection.run()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away; nothing left to answer
    except trio.TooSlowError:
        log.info("http_client_not_reading", limit_seconds=limits.write_timeout)
    except Exception as exc:  # noqa: BLE001 - one broken connection must not stop the server
        log.error("http_connection_failed", error=repr(exc))
    finally:
        connections.release()  # taken by the accept loop's admit()
        await trio.aclose_forcefully(stream)


@attrs.define
class _HttpConnection:
    """One client connection: read a request, answer it, repeat while keep-alive allows."""

    stream: LeanSocketStream
    routes: Mapping[str, Handler]
    fallback: Handler | None
    error_response: ErrorRenderer
    limits: HttpLimits
    trusted_proxies: TrustedProxies
    address: str  # the socket's peer
    client: str = ""  # of the current request: `address` or what a trusted proxy forwarded
    h11_conn: h11.Connection = attrs.field(init=False)

    def log_fields(self) -> tuple[tuple[str, Any], ...]:
        return (("peer", self.client or self.address),)

    def __attrs_post_init__(self) -> None:
        self.h11_conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )

    async def run(self) -> None:
        while True:
            try:
                with trio.fail_after(self.limits.read_timeout):
                    request = await self._read_request()
            except trio.TooSlowError:
                if self._request_started():
                    await self._send_error_and_close(408, "request not received in time")
                return
            except h11.RemoteProtocolError as exc:
                await self._send_error_and_close(exc.error_status_hint, str(exc))
                return
            except _BodyTooLargeError:
                limit = self.limits.max_body_bytes
                await self._send_error_and_close(413, f"request body exceeds {limit} bytes")
                return
            except _BodyTooFragmentedError:
                pieces = self.limits.max_body_pieces
                await self._send_error_and_close(400, f"request body in more than {pieces} "
                                                      "pieces")
                return
            if request is None:
                return
            self.client = forwarded_client(request.headers, self.address,
                                           self.trusted_proxies) or self.address
            request = attrs.evolve(request, client=self.client)
            response = await self._respond(request)
            log.debug("http_request", method=request.method, path=request.path,
                      status=response[0])
            await self._send(response, with_body=request.method != "HEAD")
            if self.h11_conn.our_state is h11.MUST_CLOSE:
                return
            self.h11_conn.start_next_cycle()

    def _request_started(self) -> bool:
        buffered, _ = self.h11_conn.trailing_data
        return self.h11_conn.their_state is not h11.IDLE or bool(buffered)

    async def _read_request(self) -> Request | None:
        """The next complete request, or None when the client closed between requests."""
        head: h11.Request | None = None
        body = bytearray()
        pieces = 0
        while True:
            event = self.h11_conn.next_event()
            if event is h11.NEED_DATA:
                if self.h11_conn.they_are_waiting_for_100_continue:
                    await self._send_events([h11.InformationalResponse(status_code=100,
                                                                       headers=[])])
                self.h11_conn.receive_data(await self.stream.receive_some(_RECEIVE_SIZE))
            elif isinstance(event, h11.Request):
                if _declared_length(event) > self.limits.max_body_bytes:
                    raise _BodyTooLargeError
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                pieces += 1
                if len(body) > self.limits.max_body_bytes:
                    raise _BodyTooLargeError
                if pieces > self.limits.max_body_pieces:
                    raise _BodyTooFragmentedError
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None  # h11 emits Request before EndOfMessage
                return _to_request(head, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(self, request: Request) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            if self.fallback is None:
                return self.error_response(404, f"no resource at {request.path}")
            handler = self.fallback
        elif request.method not in _ALLOWED_METHODS:
            status, headers, body = self.error_response(
                405, f"method {request.method} not allowed"
            )
            return status, [*headers, ("allow", ", ".join(_ALLOWED_METHODS))], body
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - the client gets a 500, never a traceback
            log.error("http_handler_failed", path=request.path, error=repr(exc))
            return self.error_response(500, "internal server error")

    async def _send(
        self, response: Response, *, with_body: bool = True, close: bool = False
    ) -> None:
        status, headers, body = response
        all_headers = [*headers, _SERVER_HEADER, ("content-length", str(len(body)))]
        if close:
            all_headers.append(("connection", "close"))
        events: list[h11.Event] = [
            h11.Response(
                status_code=status, headers=all_headers, reason=_reason_phrase(status)
            )
        ]
        if with_body:  # HEAD gets GET's headers, never its body
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        log.debug("http_response", status=status)
        await self._send_events(events)

    async def _send_events(self, events: Sequence[h11.Event]) -> None:
        with trio.fail_after(self.limits.write_timeout):
            for event in events:
                data = self.h11_conn.send(event)
                if data:
                    await self.stream.send_all(data)

    async def _send_error_and_close(self, status: int, reason: str) -> None:
        log.info("http_request_rejected", status=status, reason=reason)
        if self.h11_conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response already started; the only thing left is to close
        try:
            await self._send(self.error_response(status, reason), close=True)
        except trio.TooSlowError:
            return
        await self._linger()

    async def _linger(self) -> None:
        with trio.move_on_after(self.limits.linger_timeout):
            await self.stream.send_eof()
            while await self.stream.receive_some(_RECEIVE_SIZE):
                pass


def _reason_phrase(status: int) -> str:
    """Extensions may answer with any status code; unknown ones get an empty phrase."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _declared_length(request: h11.Request) -> int:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has already rejected non-numeric values
    return 0


def _to_request(event: h11.Request, body: bytes) -> Request:
    target = urlsplit(event.target.decode("ascii", errors="replace"))
    return Request(
        method=event.method.decode("ascii"),
        path=target.path,
        query=target.query,
        headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers),
        body=body,
    )


# ---- apps ------------------------------------------------------------------------------------


def management_routes(metrics: Metrics, health: Health) -> dict[str, Handler]:
    """`/metrics`, `/health` (liveness) and `/ready` (readiness) for the management port."""

    async def get_metrics(request: Request) -> Response:
        return 200, [("content-type", METRICS_CONTENT_TYPE)], metrics.render()

    async def get_health(request: Request) -> Response:
        if health.live:
            return json_response(200, {"status": "UP"})
        return json_response(503, {"status": "DOWN"})

    async def get_ready(request: Request) -> Response:
        if health.ready:
            return json_response(200, {"status": "READY"})
        return json_response(503, {"status": "NOT_READY", "reasons": health.not_ready_reasons()})

    return {"/metrics": get_metrics, "/health": get_health, "/ready": get_ready}


_PEM_CERTIFICATE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL
)


def rest_routes(*, tls_cert_file: str | None) -> dict[str, Handler]:
    """The REST API of `server.port`.

    `tls_cert_file` is `kaa.kpc.transports.mqtt.tls.cert-file` when the TLS transport is enabled,
    else None. Only the CERTIFICATE blocks are served, so a cert file that also holds the private
    key does not leak it. The file is read per request to follow certificate rotation.
    """

    async def get_certificate(request: Request) -> Response:
        if tls_cert_file is None:
            return json_response(404, {"error": "MQTT over TLS is disabled: no server certificate"})
        try:
            pem = await trio.Path(tls_cert_file).read_bytes()
        except OSError as exc:
            log.error("certificate_unreadable", path=tls_cert_file, error=str(exc))
            return json_response(500, {"error": "server certificate unavailable"})
        certificates = _PEM_CERTIFICATE.findall(pem)
        if not certificates:
            log.error("certificate_missing_in_file", path=tls_cert_file)
            return json_response(500, {"error": "server certificate unavailable"})
        body = b"".join(cert + b"\n" for cert in certificates)
        return 200, [("content-type", "application/x-pem-file")], body

    return {"/api/v1/certificate": get_certificate, "/certificate": get_certificate}
