"""Plain TCP transport and the accept loop shared by all transports."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from kpc_trio.net import Peer, serve_tcp
from kpc_trio.net.listeners import run_accept_loop
from tests.integration.waiting import within

HOST = "127.0.0.1"


async def test_tcp_connection_reaches_handler_which_owns_the_stream(
    nursery: trio.Nursery,
) -> None:
    peers: list[Peer] = []

    async def echo_once(stream: trio.abc.Stream, peer: Peer) -> None:
        peers.append(peer)
        async with stream:  # the handler closes the stream (the transport does not)
            await stream.send_all(await stream.receive_some())

    bound_host, port = await nursery.start(
        lambda task_status: serve_tcp(
            echo_once, host=HOST, port=0, handler_nursery=nursery, task_status=task_status
        )
    )
    assert bound_host == HOST
    assert port != 0

    async with await trio.open_tcp_stream(HOST, port) as client:
        await client.send_all(b"\x10\x00")
        with within(10, "the handler's echo"):
            assert await client.receive_some() == b"\x10\x00"
        with within(10, "the handler's close"):
            assert await client.receive_some() == b""  # the handler closed it
        client_port = client.socket.getsockname()[1]
    assert peers == [Peer(transport="tcp", address=f"{HOST}:{client_port}")]


class FlakyListener(trio.abc.Listener[trio.abc.Stream]):
    """Fails `accept` with the given errors first, then hands out memory streams."""

    def __init__(self, errors: list[OSError]) -> None:
        self.errors = errors
        self.accepted = 0

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        if self.accepted == 2:
            await trio.sleep_forever()
        self.accepted += 1
        return trio.testing.memory_stream_pair()[0]

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_errors_do_not_stop_the_listener(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = FlakyListener(
        [OSError(errno.EMFILE, "Too many open files"), OSError(errno.ENOBUFS, "No buffer space")]
    )
    handled = trio.Semaphore(0)

    async def on_accept(stream: trio.abc.Stream) -> None:
        handled.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_accept_loop(listener, on_accept, transport="tcp", handler_nursery=nursery)
        )
        await handled.acquire()
        await handled.acquire()
        nursery.cancel_scope.cancel()
    assert listener.errors == []
    assert listener.accepted == 2


async def test_listener_reports_address_in_use() -> None:
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(
            lambda task_status: serve_tcp(
                _never_called, host=HOST, port=0, handler_nursery=nursery, task_status=task_status
            )
        )
        with pytest.raises(OSError) as busy:
            await nursery.start(
                lambda task_status: serve_tcp(
                    _never_called,
                    host=HOST,
                    port=port,
                    handler_nursery=nursery,
                    task_status=task_status,
                )
            )
        assert busy.value.errno == errno.EADDRINUSE
        nursery.cancel_scope.cancel()


async def _never_called(stream: trio.abc.Stream, peer: Peer) -> None:
    raise AssertionError("no client connects in this test")
