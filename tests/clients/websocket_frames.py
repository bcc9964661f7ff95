"""WebSocket frames written by hand (RFC 6455), for clients that misbehave on purpose.

Client frames are masked; an all-zero masking key leaves the payload as written, so each frame
below reads as its bytes.
"""

from __future__ import annotations

import trio

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
TEXT_FRAME = bytes.fromhex("81 81 00000000 41")  # FIN text "A"
PING = bytes.fromhex("89 80 00000000")  # FIN ping, empty
CLOSE_1000 = bytes.fromhex("88 82 00000000 03e8")  # FIN close, code 1000
BINARY_FIRST_60 = bytes.fromhex("02 bc 00000000") + b"\x00" * 60  # binary, not FIN, 60 bytes
LAST_10 = bytes.fromhex("80 8a 00000000") + b"\x00" * 10  # continuation, FIN, 10 bytes
BINARY_FIRST_1 = bytes.fromhex("02 81 00000000 30")  # binary, not FIN, 1 byte
ONE_BYTE_CONTINUATION = bytes.fromhex("00 81 00000000 00")  # continuation, not FIN, 1 byte
CLOSE_FRAME_TYPE = 0x88  # FIN close, as the server sends it (unmasked)
BINARY, CONTINUATION = 0x2, 0x0


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (all-zero key) of any size, for frames too long to spell out."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def raw_upgrade(port: int, host: str = "127.0.0.1") -> trio.SocketStream:
    """A TCP connection upgraded to WebSocket on /ws, with nothing read past the 101."""
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(UPGRADE)
    response = b""
    with trio.fail_after(10):  # a hang guard
        while b"\r\n\r\n" not in response:
            response += await stream.receive_some(1)  # byte by byte: nothing past the head
    assert response.startswith(b"HTTP/1.1 101"), response
    return stream


async def close_code(stream: trio.SocketStream) -> int:
    """The code of the server's Close frame (read as soon as it is complete)."""
    received = b""
    with trio.fail_after(10):
        while len(received) < 4:
            chunk = await stream.receive_some()
            assert chunk, f"hung up without a Close frame after {received!r}"
            received += chunk
    assert received[0] == CLOSE_FRAME_TYPE, received
    return int.from_bytes(received[2:4], "big")


async def hang_up(stream: trio.SocketStream) -> None:
    """Read until the server closes the TCP connection."""
    with trio.fail_after(10):
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:  # reset: closed all the same
            pass
