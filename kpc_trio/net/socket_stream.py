"""A TCP stream that holds as little as possible per connection: most clients sit idle for hours.

`trio.SocketStream` waits for data through a trio socket, a non-blocking helper, two context
managers and their coroutines: about 1.4 KB per idle connection, a sixth of its memory. This
stream keeps the stdlib socket and waits on it with `trio.lowlevel.wait_readable` directly. The
contract is trio's `HalfCloseableStream` (tests run trio's own conformance checks on it) and the
error mapping is `SocketStream`'s: EBADF means closed, any other `OSError` means broken.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable

import trio

DEFAULT_RECEIVE_SIZE = 65536
# As `trio.SocketStream`: bound the kernel's unsent data so `send_all` waits instead of queueing.
NOTSENT_LOWAT = 2**14


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class WaitsForWritable:
    """`wait_send_all_might_not_block` for a stream over one socket that flags a send under way
    in `_sending` and waits on its socket with `_wait` (mapping errors its own way)."""

    __slots__ = ("_sending",)

    _sending: bool
    _wait: Callable[[Callable[[socket.socket], Awaitable[None]]], Awaitable[None]]

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending on this stream")
        self._sending = True
        try:
            await self._wait(trio.lowlevel.wait_writable)
        finally:
            self._sending = False


class LeanSocketStream(WaitsForWritable, trio.abc.HalfCloseableStream):
    """`trio.abc.HalfCloseableStream` over a connected stdlib TCP socket, which it owns."""

    __slots__ = ("socket", "_eof_sent", "_drained")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if hasattr(socket, "TCP_NOTSENT_LOWAT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        self.socket = sock
        self._sending = False  # receiving needs no flag: wait_readable refuses a second waiter
        self._eof_sent = False
        self._drained = False  # the last read took less than asked: the socket is empty

    @classmethod
    def take_over(cls, stream: trio.SocketStream) -> LeanSocketStream:
        """The connection of a freshly accepted `stream`, which is left closed."""
        trio_socket = stream.socket
        return cls(socket.socket(trio_socket.family, trio_socket.type, trio_socket.proto,
                                 fileno=trio_socket.detach()))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        # After a read that emptied the socket, wait first: a recv now would only fail (EAGAIN
        # and an exception) before the wait anyway, on every message.
        waited = self._drained
        if not waited:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if waited:
                # Inline, not `_wait`: idle connections wait here, and every frame counts.
                if self.socket.fileno() == -1:
                    raise trio.ClosedResourceError("this socket was already closed")
                try:
                    await trio.lowlevel.wait_readable(self.socket)
                except OSError as exc:
                    raise _stream_error(exc) from exc
            try:
                data = self.socket.recv(max_bytes)
            except BlockingIOError:
                waited = True  # and wait outside this block: the exception would stay alive
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            self._drained = len(data) < max_bytes
            # As trio's sockets: the wait was the schedule point; without one, yield here
            # (a second yield would cost a whole scheduler round on every message).
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def idle_fileno(self) -> int | None:
        """The socket's descriptor, to wait on without a task (`kpc_trio.parking`); None once
        closed."""
        fileno = self.socket.fileno()
        return fileno if fileno != -1 else None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            with memoryview(data) as view:
                if not view and self.socket.fileno() == -1:
                    raise trio.ClosedResourceError("this socket was already closed")
                sent = 0
                while sent < len(view):
                    # Views released at once: a live export would stop the caller resizing data.
                    with view[sent:] as remaining:
                        try:
                            sent += self.socket.send(remaining)
                            continue
                        except BlockingIOError:
                            pass
                        except OSError as exc:
                            raise _stream_error(exc) from exc
                    await self._wait(trio.lowlevel.wait_writable)
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def send_nowait(self, data: bytes) -> int:
        """Send what the kernel takes right now, without a checkpoint; returns the bytes sent.

        For a writer that would otherwise start a task per message (a response to a device):
        usually the socket takes it all. Raises as `send_all`; 0 while another send is under way.
        """
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        if self._sending:
            return 0
        try:
            return self.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._eof_sent:
            return  # idempotent
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _stream_error(exc) from exc
        self._eof_sent = True

    async def aclose(self) -> None:
        if self.socket.fileno() != -1:
            # Tasks waiting on the socket get ClosedResourceError instead of waiting forever.
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
        await trio.lowlevel.checkpoint()

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        if self.socket.fileno() == -1:
            raise trio.ClosedResourceError("this socket was already closed")
        try:
            await wait(self.socket)
        except OSError as exc:
            raise _stream_error(exc) from exc


class LeanSocketListener(trio.abc.Listener[LeanSocketStream]):
    """A `trio.SocketListener` that hands out `LeanSocketStream`s."""

    __slots__ = ("_listener",)

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._listener.socket

    async def accept(self) -> LeanSocketStream:
        return LeanSocketStream.take_over(await self._listener.accept())

    async def aclose(self) -> None:
        await self._listener.aclose()
