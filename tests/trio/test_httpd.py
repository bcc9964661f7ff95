"""The h11 server and its two apps over real loopback sockets (port 0)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import attrs
import h11
import pytest
import trio
import trustme

from kpc_trio.health import Health
from kpc_trio.httpd import (
    Handler,
    HttpLimits,
    Request,
    Response,
    json_response,
    management_routes,
    rest_routes,
    serve_http,
)
from kpc_trio.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kpc_trio.metrics import Metrics
from tests.integration.waiting import within


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class Client:
    """One HTTP/1.1 client connection (h11) for exchanging several requests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, *, body: bytes = b"", headers: Mapping[str, str] = {}
    ) -> Reply:
        framing = {} if "transfer-encoding" in headers else {"content-length": str(len(body))}
        all_headers = {"host": "test", **framing, **headers}
        for event in (
            h11.Request(method=method, target=target, headers=list(all_headers.items())),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            await self.stream.send_all(self.conn.send(event) or b"")
        reply = await read_reply(self.stream, self.conn)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return reply


async def read_reply(stream: trio.SocketStream, conn: h11.Connection) -> Reply:
    head: h11.Response | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.fail_after(10):  # a hang guard, not a timing assertion
                conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            headers = {n.decode(): v.decode() for n, v in head.headers}
            return Reply(head.status_code, headers, bytes(body))


async def read_raw_reply(stream: trio.SocketStream) -> Reply:
    """The reply to bytes sent without a client state machine (for malformed requests)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    return await read_reply(stream, conn)


async def start(nursery: trio.Nursery, routes: Mapping[str, Handler], **limits: float) -> int:
    port: int = await nursery.start(
        partial(serve_http, routes, host="127.0.0.1", port=0, limits=HttpLimits(**limits))
    )
    return port


async def connect(port: int) -> Client:
    return Client(await trio.open_tcp_stream("127.0.0.1", port))


async def get(port: int, target: str) -> Reply:
    client = await connect(port)
    try:
        return await client.request("GET", target)
    finally:
        await client.stream.aclose()


# ---- management app ----------------------------------------------------------------------------


async def test_health_is_up_while_live(nursery: trio.Nursery) -> None:
    health = Health()
    port = await start(nursery, management_routes(Metrics(), health))

    reply = await get(port, "/health")
    assert (reply.status, reply.json()) == (200, {"status": "UP"})
    assert reply.headers["content-type"] == "application/json"

    health.live = False
    assert (await get(port, "/health")).status == 503


async def test_ready_follows_nats_and_shutdown(nursery: trio.Nursery) -> None:
    health = Health()
    port = await start(nursery, management_routes(Metrics(), health))

    reply = await get(port, "/ready")
    assert (reply.status, reply.json()) == (
        503,
        {"status": "NOT_READY", "reasons": ["nats_disconnected"]},
    )

    health.nats_connected = True
    reply = await get(port, "/ready")
    assert (reply.status, reply.json()) == (200, {"status": "READY"})

    health.shutting_down = True
    reply = await get(port, "/ready")
    assert (reply.status, reply.json()) == (
        503,
        {"status": "NOT_READY", "reasons": ["shutting_down"]},
    )


async def test_metrics_are_served_in_prometheus_format(nursery: trio.Nursery) -> None:
    metrics = Metrics()
    metrics.endpoints_online.set(3)
    port = await start(nursery, management_routes(metrics, Health()))

    reply = await get(port, "/metrics")

    assert reply.status == 200
    assert reply.headers["content-type"] == METRICS_CONTENT_TYPE
    assert reply.headers["content-type"].startswith("text/plain; version=")
    assert b"kpc_endpoints_online 3.0\n" in reply.body


# ---- REST app ----------------------------------------------------------------------------------


@pytest.fixture
def cert_file(tmp_path: Path) -> tuple[Path, bytes]:
    """A cert file holding the private key too, as some deployments have it."""
    server_cert = trustme.CA().issue_cert("kpc.example")
    path = tmp_path / "server.pem"
    path.write_bytes(server_cert.private_key_pem.bytes() + server_cert.cert_chain_pems[0].bytes())
    return path, server_cert.cert_chain_pems[0].bytes()


@pytest.mark.parametrize("target", ["/api/v1/certificate", "/certificate"])
async def test_certificate_is_served_without_the_key(
    nursery: trio.Nursery, cert_file: tuple[Path, bytes], target: str
) -> None:
    path, certificate_pem = cert_file
    port = await start(nursery, rest_routes(tls_cert_file=str(path)))

    reply = await get(port, target)

    assert reply.status == 200
    assert reply.headers["content-type"] == "application/x-pem-file"
    assert reply.body.strip() == certificate_pem.strip()
    assert b"PRIVATE KEY" not in reply.body


async def test_certificate_is_404_when_tls_is_off(nursery: trio.Nursery) -> None:
    port = await start(nursery, rest_routes(tls_cert_file=None))

    reply = await get(port, "/api/v1/certificate")

    assert reply.status == 404
    assert "TLS is disabled" in reply.json()["error"]  # type: ignore[index]


async def test_unreadable_certificate_is_500_without_details(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    port = await start(nursery, rest_routes(tls_cert_file=str(tmp_path / "missing.pem")))

    reply = await get(port, "/api/v1/certificate")

    assert (reply.status, reply.json()) == (500, {"error": "server certificate unavailable"})


# ---- server behaviour --------------------------------------------------------------------------


async def echo(request: Request) -> Response:
    return json_response(200, {"path": request.path, "query": request.query})


async def explode(request: Request) -> Response:
    raise RuntimeError("secret internal detail")


async def test_unknown_path_is_404_and_wrong_method_is_405(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo})
    client = await connect(port)

    assert (await client.request("GET", "/nope")).status == 404
    reply = await client.request("POST", "/echo", body=b"{}")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


async def test_query_is_split_from_path_and_head_has_no_body(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo})
    client = await connect(port)

    reply = await client.request("GET", "/echo?verbose=1")
    assert reply.json() == {"path": "/echo", "query": "verbose=1"}
    head = await client.request("HEAD", "/echo?verbose=1")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(reply.body))


async def test_keep_alive_serves_two_requests_on_one_connection(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo})
    client = await connect(port)

    first = await client.request("GET", "/echo?n=1")
    second = await client.request("GET", "/echo?n=2")

    assert first.json() == {"path": "/echo", "query": "n=1"}
    assert second.json() == {"path": "/echo", "query": "n=2"}


async def test_declared_oversize_body_is_413_and_closes(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo}, max_body_bytes=100)
    stream = await trio.open_tcp_stream("127.0.0.1", port)

    await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 101\r\n\r\n")

    reply = await read_raw_reply(stream)
    assert reply.status == 413
    assert reply.headers["connection"] == "close"


async def test_chunked_body_is_limited_too(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo}, max_body_bytes=100)

    async def post_chunked(size: int) -> int:
        client = await connect(port)
        reply = await client.request(
            "POST", "/echo", body=bytes(size), headers={"transfer-encoding": "chunked"}
        )
        return reply.status

    # At the limit the body is accepted (and the method refused); one byte more is too large.
    assert (await post_chunked(100), await post_chunked(101)) == (405, 413)


async def test_body_in_too_many_chunks_is_400(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo}, max_body_pieces=8)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                          + b"1\r\nx\r\n" * 9)
    reply = await read_raw_reply(stream)
    assert reply.status == 400
    assert reply.headers["connection"] == "close"


async def test_expect_100_continue_is_answered_before_the_body(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo})
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
                          b"expect: 100-continue\r\n\r\n")
    received = b""
    with trio.fail_after(10):  # a hang guard: the client waits for the 100 to send its body
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some()
    assert received == b"HTTP/1.1 100 \r\n\r\n"
    await stream.send_all(b"{}")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x"),
                                                               ("content-length", "2")]))
    conn.send(h11.Data(data=b"{}"))
    conn.send(h11.EndOfMessage())
    assert (await read_reply(stream, conn)).status == 405  # /echo takes GET; the body was read


async def test_garbage_is_400_and_the_server_stays_up(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo})
    stream = await trio.open_tcp_stream("127.0.0.1", port)

    await stream.send_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n")

    assert (await read_raw_reply(stream)).status == 400
    assert (await get(port, "/echo")).status == 200


async def test_failing_handler_is_500_without_traceback(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/boom": explode, "/echo": echo})
    client = await connect(port)

    reply = await client.request("GET", "/boom")

    assert (reply.status, reply.json()) == (500, {"error": "internal server error"})
    assert b"secret" not in reply.body and b"Traceback" not in reply.body
    assert (await client.request("GET", "/echo")).status == 200


async def test_incomplete_request_is_408(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo}, read_timeout=0.2)
    stream = await trio.open_tcp_stream("127.0.0.1", port)

    await stream.send_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n")  # headers never finish

    reply = await read_raw_reply(stream)
    assert reply.status == 408


async def test_idle_keep_alive_connection_is_closed_silently(nursery: trio.Nursery) -> None:
    port = await start(nursery, {"/echo": echo}, read_timeout=0.2)
    client = await connect(port)
    await client.request("GET", "/echo")

    # EOF, no 408 for a request never begun
    with within(10, "the server closing an idle keep-alive connection"):
        assert await client.stream.receive_some(1024) == b""
