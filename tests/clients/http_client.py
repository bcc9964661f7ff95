"""A small HTTP/1.1 client over trio and h11 (keep-alive, exact control over each request)."""

from __future__ import annotations

import attrs
import h11
import trio

from tests.integration.waiting import within

#: Longest wait for the next bytes of a response: past KPC's default 30 s request-timeout.
REPLY_DEADLINE = 40.0


@attrs.frozen
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpClient:
    """One keep-alive connection; `request()` may be called repeatedly."""

    def __init__(self, stream: trio.abc.Stream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> HttpClient:
        return cls(await trio.open_tcp_stream(host, port), f"{host}:{port}")

    async def request(self, method: str, path: str, body: bytes = b"") -> HttpReply:
        if self._conn.our_state is h11.DONE:
            self._conn.start_next_cycle()
        headers = [("host", self._host), ("content-length", str(len(body)))]
        for event in (h11.Request(method=method, target=path, headers=headers),
                      h11.Data(data=body), h11.EndOfMessage()):
            await self._stream.send_all(self._conn.send(event) or b"")
        response: h11.Response | None = None
        received = bytearray()
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                with within(REPLY_DEADLINE, f"the rest of the response to {method} {path}"):
                    self._conn.receive_data(await self._stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None, "connection closed before a response"
        return HttpReply(
            response.status_code,
            {k.decode(): v.decode() for k, v in response.headers},
            bytes(received),
        )

    async def aclose(self) -> None:
        await self._stream.aclose()


async def post(port: int, path: str, body: bytes = b"", method: str = "POST") -> HttpReply:
    """One request on a fresh connection."""
    client = await HttpClient.connect(port)
    try:
        return await client.request(method, path, body)
    finally:
        await client.aclose()
