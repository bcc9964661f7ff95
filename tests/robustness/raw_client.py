"""A byte-level MQTT client for hostile tests: it sends whatever it is given, never retries and
never answers on its own, so the tests see exactly what the server does."""

from __future__ import annotations

import socket

import attrs
import trio

from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.packets import ConnAck, Connect, Packet

#: Deadline for anything the server must do promptly (closing, answering); a hang fails the test.
SERVER_DEADLINE = 10.0


def connect_packet(client_id: str, *, keepalive: int = 0) -> Connect:
    return Connect("MQTT", 4, client_id, clean_session=True, keepalive=keepalive)


@attrs.define(eq=False)
class RawClient:
    stream: trio.SocketStream
    decoder: Decoder = attrs.field(factory=lambda: Decoder(max_packet_size=1 << 24))
    eof: bool = False

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None) -> RawClient:
        """Connect over TCP; `receive_buffer` shrinks SO_RCVBUF so a non-reading client stalls
        the server's writes sooner."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    async def send(self, *items: Packet | bytes) -> None:
        """Send packets (encoded) and raw bytes in one write; a closed connection is ignored,
        the test then sees the close when it reads."""
        data = b"".join(item if isinstance(item, bytes) else encode(item) for item in items)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def send_eof(self) -> None:
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def next_packet(self) -> Packet | None:
        """The next packet from the server, or None once the server closed the connection."""
        while (packet := self.decoder.next_packet()) is None:
            if self.eof:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset by the server: closed all the same
                data = b""
            if not data:
                self.eof = True
            self.decoder.feed(data)
        return packet

    async def handshake(self, client_id: str, *, keepalive: int = 0) -> ConnAck | None:
        """CONNECT and wait for the CONNACK (None if the server closed instead)."""
        await self.send(connect_packet(client_id, keepalive=keepalive))
        with trio.fail_after(SERVER_DEADLINE):
            packet = await self.next_packet()
        assert packet is None or isinstance(packet, ConnAck), packet
        return packet

    async def packets_until_closed(self) -> list[Packet]:
        """Everything the server sends until it closes; fails if it never does."""
        received = []
        with trio.fail_after(SERVER_DEADLINE):
            while (packet := await self.next_packet()) is not None:
                received.append(packet)
        return received

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
