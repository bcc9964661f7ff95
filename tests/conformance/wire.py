"""The device side of the conformance vectors: bytes written by hand, sent over TCP or WebSocket.

Nothing here uses kpc_trio's MQTT code. `wire_bytes` reads the vectors' notation, the WebSocket
client frames RFC 6455 by hand, and `split_packets` knows of MQTT only the fixed header (type
byte and remaining length), enough to compare packets that may arrive in either order.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

import trio

#: Deadline for anything the server must do promptly; a hang fails the vector, never passes it.
SERVER_DEADLINE = 10.0

_TOKEN = re.compile(r"\s*(?:(?P<hex>[0-9a-fA-F]{2})|'(?P<text>[^']*)'|\((?P<group>[^()]*)\))"
                    r"(?:\*(?P<times>\d+))?")


def wire_bytes(notation: str) -> bytes:
    """Hex bytes as written in the vectors: `10 0d 00 04 'MQTT' 04`. A quoted run stands for its
    UTF-8 bytes; `'x'*3` and `(00 01 'a' 00)*100` repeat what precedes the `*`."""
    data = bytearray()
    position = 0
    notation = notation.rstrip()
    while position < len(notation):
        match = _TOKEN.match(notation, position)
        if match is None:
            raise ValueError(f"bad wire notation at {notation[position:position + 20]!r}")
        if match["hex"] is not None:
            item = bytes((int(match["hex"], 16),))
        elif match["text"] is not None:
            item = match["text"].encode()
        else:
            item = wire_bytes(match["group"])
        data += item * int(match["times"] or 1)
        position = match.end()
    return bytes(data)


def split_packets(data: bytes) -> list[bytes]:
    """Whole MQTT packets in `data` by their fixed header; a partial last packet is kept as is."""
    packets = []
    position = 0
    while position < len(data):
        length, multiplier, index = 0, 1, position + 1
        while index < len(data):
            digit = data[index]
            length += (digit & 0x7F) * multiplier
            multiplier <<= 7
            index += 1
            if not digit & 0x80:
                break
        end = min(index + length, len(data))
        packets.append(data[position:end])
        position = end
    return packets


class TcpWire:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    @classmethod
    async def open(cls, port: int) -> TcpWire:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def send_text(self, data: bytes) -> None:
        raise NotImplementedError("TCP has no text frames")

    async def receive_some(self) -> bytes:
        """Bytes from the server; b"" once it closed (a reset counts as a close)."""
        try:
            return await self._stream.receive_some(65536)
        except trio.BrokenResourceError:
            return b""

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


_OPCODE_CONTINUATION, _OPCODE_TEXT, _OPCODE_BINARY = 0x0, 0x1, 0x2
_OPCODE_CLOSE, _OPCODE_PING, _OPCODE_PONG = 0x8, 0x9, 0xA
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocketWire:
    """An RFC 6455 client over a TCP stream, framed by hand (client frames masked, as required).

    MQTT bytes go out in binary frames; a server Close frame reads as the end of the stream.
    """

    def __init__(self, stream: trio.SocketStream, buffered: bytes, subprotocol: str) -> None:
        self._stream = stream
        self._buffer = bytearray(buffered)
        self._closed = False
        self.subprotocol = subprotocol

    @classmethod
    async def open(cls, port: int, path: str = "/ws") -> WebSocketWire:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        response = b""
        with trio.fail_after(SERVER_DEADLINE):
            while b"\r\n\r\n" not in response:
                chunk = await stream.receive_some(4096)
                assert chunk, f"closed during the WebSocket upgrade: {response!r}"
                response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        assert status.startswith("HTTP/1.1 101"), status
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines)}
        accept = base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest()).decode()
        assert headers.get("sec-websocket-accept") == accept, headers
        return cls(stream, rest, headers.get("sec-websocket-protocol", ""))

    async def _send_frame(self, opcode: int, payload: bytes, *, final: bool = True) -> None:
        mask = os.urandom(4)
        first = (0x80 if final else 0) | opcode
        length = len(payload)
        if length < 126:
            header = bytes((first, 0x80 | length))
        elif length < 1 << 16:
            header = bytes((first, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((first, 0x80 | 127)) + length.to_bytes(8, "big")
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        try:
            await self._stream.send_all(header + mask + masked)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the test sees the close when it reads

    async def send(self, data: bytes) -> None:
        await self._send_frame(_OPCODE_BINARY, data)

    async def send_text(self, data: bytes) -> None:
        await self._send_frame(_OPCODE_TEXT, data)

    async def send_fragments(self, data: bytes, cut: int) -> None:
        """One binary message in two frames, cut at `cut`."""
        await self._send_frame(_OPCODE_BINARY, data[:cut], final=False)
        await self._send_frame(_OPCODE_CONTINUATION, data[cut:])

    async def _fill(self, count: int) -> bool:
        while len(self._buffer) < count:
            try:
                chunk = await self._stream.receive_some(65536)
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                return False
            self._buffer += chunk
        return True

    async def receive_some(self) -> bytes:
        """The payload of the next data frame; b"" once the server closed."""
        while not self._closed:
            if not await self._fill(2):
                break
            opcode, length = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F
            assert not self._buffer[1] & 0x80, "a server must not mask its frames"
            offset = 2
            if length == 126:
                if not await self._fill(4):
                    break
                length, offset = int.from_bytes(self._buffer[2:4], "big"), 4
            elif length == 127:
                if not await self._fill(10):
                    break
                length, offset = int.from_bytes(self._buffer[2:10], "big"), 10
            if not await self._fill(offset + length):
                break
            payload = bytes(self._buffer[offset:offset + length])
            del self._buffer[:offset + length]
            if opcode == _OPCODE_CLOSE:
                self._closed = True
                await self._send_frame(_OPCODE_CLOSE, payload[:2])
                break
            if opcode == _OPCODE_PING:
                await self._send_frame(_OPCODE_PONG, payload)
            elif opcode in (_OPCODE_BINARY, _OPCODE_CONTINUATION) and payload:
                return payload
            else:
                assert opcode in (_OPCODE_BINARY, _OPCODE_CONTINUATION, _OPCODE_PONG), opcode
        self._closed = True
        return b""

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


Wire = TcpWire | WebSocketWire
