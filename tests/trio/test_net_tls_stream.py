"""The lean server TLS stream (OpenSSL on the socket): bytes both ways in any chunking, records
larger than a read, close_notify as end of stream, a vanished peer as a broken stream."""

from __future__ import annotations

import os
import socket
import ssl

import pytest
import trio
import trustme

from kpc_trio.net.socket_stream import LeanSocketStream
from kpc_trio.net.tls_stream import TlsStream
from tests.integration.waiting import within


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def connected_pair(contexts: tuple[ssl.SSLContext, ssl.SSLContext]
                         ) -> tuple[TlsStream, trio.SSLStream[trio.SocketStream]]:
    server_context, client_context = contexts
    ours, theirs = socket.socketpair()
    server = TlsStream(LeanSocketStream(ours), server_context)
    client = trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
                            client_context, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int, chunk: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        with within(10, f"{size} bytes from the peer"):
            data = await stream.receive_some(chunk)
        assert data, "end of stream too early"
        received += data
    return bytes(received)


async def test_bytes_both_ways_in_small_reads(contexts):
    server, client = await connected_pair(contexts)
    upstream, downstream = os.urandom(100_000), os.urandom(100_000)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, upstream)
            # Reads far smaller than a TLS record: the rest waits inside OpenSSL, not the socket.
            assert await receive_exactly(server, len(upstream), 1000) == upstream
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, downstream)
            assert await receive_exactly(client, len(downstream), 65536) == downstream
    assert server.version() == "TLSv1.3"
    await client.aclose()
    await server.aclose()


async def test_close_notify_reads_as_end_of_stream(contexts):
    server, client = await connected_pair(contexts)
    await client.send_all(b"last words")
    with trio.fail_after(10):
        assert await receive_exactly(server, 10, 100) == b"last words"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.aclose)
            with within(10, "the client's close_notify"):
                assert await server.receive_some(100) == b""
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some(100)


async def test_peer_that_vanishes_breaks_the_stream(contexts):
    server, client = await connected_pair(contexts)
    await trio.aclose_forcefully(client.transport_stream)  # no close_notify
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await server.receive_some(100)
    await server.aclose()
