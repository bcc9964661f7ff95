"""A small HTTP/1.1 client (h11 over trio) for KPC's own REST calls: Tekton and Keycloak.

One request per connection (`Connection: close`): KPC calls these services a handful of times
per configuration change, so a connection pool would be code without a benefit. Every request
runs under the caller's timeout and reads at most `max_body_bytes` of the answer.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import attrs
import h11
import trio

_RECEIVE_SIZE = 65536
DEFAULT_MAX_BODY = 16 * 1024 * 1024


class HttpClientError(Exception):
    """The request got no HTTP answer (refused, timed out, garbled, too large)."""


@attrs.frozen
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


async def http_request(
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """Send one request and read the whole answer; raises HttpClientError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpClientError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    try:
        with trio.fail_after(timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
            if parts.scheme == "https":
                stream = trio.SSLStream(stream, ssl_context or ssl.create_default_context(),
                                        server_hostname=parts.hostname)
            async with stream:
                return await _exchange(stream, method, target, host_header, headers, body,
                                       max_body_bytes)
    except trio.TooSlowError:
        raise HttpClientError(f"{method} {url}: no complete answer within {timeout:g}s") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise HttpClientError(f"{method} {url}: {exc}") from None
    except h11.ProtocolError as exc:
        raise HttpClientError(f"{method} {url}: malformed HTTP answer: {exc}") from None


async def _exchange(stream: trio.abc.Stream, method: str, target: str, host: str,
                    headers: Sequence[tuple[str, str]], body: bytes,
                    max_body_bytes: int) -> HttpResponse:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method=method, target=target, headers=[
        ("host", host), ("connection", "close"), ("content-length", str(len(body))),
        ("user-agent", "kpc-trio"), *headers])
    await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body))
                          + conn.send(h11.EndOfMessage()))
    head: h11.Response | None = None
    received = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(_RECEIVE_SIZE))
            if not data and head is None:
                raise HttpClientError(f"{method} {target}: connection closed without an answer")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            received += event.data
            if len(received) > max_body_bytes:
                raise HttpClientError(f"answer to {method} {target} exceeds "
                                      f"{max_body_bytes} bytes")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            assert head is not None  # h11 emits the Response first; a close before: see above
            return HttpResponse(
                head.status_code,
                {name.decode("latin-1").lower(): value.decode("latin-1")
                 for name, value in head.headers},
                bytes(received))
