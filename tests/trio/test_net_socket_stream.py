"""`LeanSocketStream` against trio's own stream conformance checks, over real TCP sockets."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from kpc_trio.net.socket_stream import LeanSocketStream
from tests.integration.waiting import within


async def _connected_pair() -> tuple[LeanSocketStream, LeanSocketStream]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    await trio.lowlevel.checkpoint()
    return LeanSocketStream(client), LeanSocketStream(server)


async def _clogged_pair() -> tuple[LeanSocketStream, LeanSocketStream]:
    """A pair in which neither stream can send: both directions' kernel buffers are full."""
    pair = await _connected_pair()
    for stream in pair:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for stream in pair:
        while True:
            try:
                stream.socket.send(b"x" * 65536)
            except BlockingIOError:
                break
    return pair


async def test_lean_socket_stream_is_a_conforming_half_closeable_stream() -> None:
    await trio.testing.check_half_closeable_stream(_connected_pair, _clogged_pair)


async def test_take_over_keeps_the_connection_and_closes_the_trio_stream() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], await trio.open_tcp_stream("127.0.0.1", port) as client:
        accepted = await listeners[0].accept()
        stream = LeanSocketStream.take_over(accepted)
        assert accepted.socket.fileno() == -1
        await client.send_all(b"ping")
        with within(10, "the client's ping at the server"):
            assert await stream.receive_some() == b"ping"
        await stream.send_all(b"pong")
        with within(10, "the server's pong"):
            assert await client.receive_some() == b"pong"
        await stream.aclose()
        with within(10, "the server's close"):
            assert await client.receive_some() == b""


async def test_a_reset_connection_reads_as_broken() -> None:
    client, server = await _connected_pair()
    # SO_LINGER 0: close() sends RST instead of FIN.
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes([1, 0, 0, 0, 0, 0, 0, 0]))
    await client.aclose()
    with pytest.raises(trio.BrokenResourceError):
        with within(10, "the client's reset"):
            await server.receive_some()
    await server.aclose()


async def test_send_nowait_sends_what_the_kernel_takes_without_waiting() -> None:
    client, server = await _connected_pair()
    assert client.send_nowait(b"hello") == 5
    with within(10, "the client's hello"):
        assert await server.receive_some() == b"hello"
    clogged, _ = await _clogged_pair()
    assert clogged.send_nowait(b"more") == 0  # a full buffer: nothing sent, no waiting
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        client.send_nowait(b"late")
