"""A TLS stream that holds as little as possible per connection: OpenSSL on the socket itself.

`trio.SSLStream` runs OpenSSL over two `MemoryBIO`s and moves the bytes itself; idle, it holds
the BIOs' buffers (a BIO keeps the largest chunk it ever held: the server's handshake flight),
three locks and two conflict detectors: about 5 KiB of a 25 KiB idle TLS connection (measured
with glibc's mallinfo and OpenSSL's allocation hooks). Here OpenSSL reads and writes the
non-blocking socket directly (the `_ssl` socket object of `SSLContext._wrap_socket`, as
`ssl.SSLSocket` uses it, without that class's Python attributes), and the stream waits for
readability or writability when OpenSSL asks for it: what is left is OpenSSL's own per
connection state (`SSL`, about 7.5 KiB; cipher contexts and session, about 5 KiB), with the
record buffers released between reads (`SSL_MODE_RELEASE_BUFFERS`, on in CPython's contexts).

The contract is trio's `Stream`; errors map as `trio.SSLStream`'s: an unexpected EOF or a TLS
error is `BrokenResourceError`, a close_notify reads as end of stream.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from kpc_trio.net.socket_stream import LeanSocketStream, WaitsForWritable

DEFAULT_RECEIVE_SIZE = 65536


class TlsStream(WaitsForWritable, trio.abc.Stream):
    """Server-side TLS over `tcp`'s socket, which it owns; `do_handshake()` first."""

    __slots__ = ("_tcp", "_tls", "_receiving", "_drained")

    def __init__(self, tcp: LeanSocketStream, context: ssl.SSLContext) -> None:
        self._tcp = tcp
        # The C-level TLS connection object: ssl.SSLSocket minus its Python-level state.
        self._tls: Any = context._wrap_socket(tcp.socket, True)  # type: ignore[attr-defined]
        self._sending = False
        self._receiving = False
        self._drained = True  # nothing buffered yet: wait before the first read

    @property
    def transport_stream(self) -> LeanSocketStream:
        return self._tcp

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._tls.getpeercert(binary_form)

    def version(self) -> str | None:
        version: str | None = self._tls.version()
        return version

    def idle_fileno(self) -> int | None:
        """The socket's descriptor if OpenSSL holds nothing unread (so readable bytes can only
        come from the socket), to wait on without a task (`kpc_trio.parking`); else None."""
        fileno = self._tcp.socket.fileno()
        if fileno == -1 or not self._drained or self._receiving or self._tls.pending():
            return None
        return fileno

    async def do_handshake(self) -> None:
        """Complete the handshake; raises `trio.BrokenResourceError` with the `ssl` error as
        its cause if it fails."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._retry(self._tls.do_handshake)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is currently receiving on this stream")
        self._receiving = True
        try:
            # As LeanSocketStream: after a read that emptied everything, wait first (a read now
            # would only fail with an exception before the wait anyway). The wait is then the
            # checkpoint; without one, yield after the read.
            waited = self._drained
            if waited:
                # Inline, not `_wait`: idle connections wait here, and every frame counts.
                sock = self._tcp.socket
                if sock.fileno() == -1:
                    raise trio.ClosedResourceError("this TLS stream was closed")
                try:
                    await trio.lowlevel.wait_readable(sock)
                except OSError as exc:
                    raise trio.BrokenResourceError(f"TLS connection broken: {exc}") from exc
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data: bytes = await self._retry(self._tls.read, max_bytes)
            except trio.BrokenResourceError as exc:
                if isinstance(exc.__cause__, ssl.SSLZeroReturnError):
                    data = b""  # close_notify: a clean end of stream
                else:
                    raise
            self._drained = len(data) < max_bytes and not self._tls.pending()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if data:
                # OpenSSL writes it all or asks to be called again with the same bytes.
                await self._retry(self._tls.write, data)
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Send close_notify if the socket takes it now (never wait for the peer's), close."""
        if self._tcp.socket.fileno() != -1:
            try:
                self._tls.shutdown()
            except (ssl.SSLError, OSError, ValueError):
                pass  # half done or the peer is gone: closing the socket is all that is left
        await self._tcp.aclose()

    async def _retry(self, operation: Any, *args: Any) -> Any:
        """Run an OpenSSL call, waiting for the socket whenever it says it must."""
        while True:
            try:
                return operation(*args)
            except ssl.SSLWantReadError:
                if self._receiving or not self._sending:
                    await self._wait(trio.lowlevel.wait_readable)
                else:
                    # A write that must read first (TLS 1.2 renegotiation, which the context
                    # refuses anyway) while the reader waits on the socket: let it read.
                    await trio.sleep(0.01)
            except ssl.SSLWantWriteError:
                await self._wait(trio.lowlevel.wait_writable)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            except OSError as exc:
                if self._tcp.socket.fileno() == -1:
                    raise trio.ClosedResourceError("this TLS stream was closed") from exc
                raise trio.BrokenResourceError(f"TLS connection broken: {exc}") from exc

    async def _wait(self, wait: Any) -> None:
        sock = self._tcp.socket
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("this TLS stream was closed")
        try:
            await wait(sock)
        except OSError as exc:
            raise trio.BrokenResourceError(f"TLS connection broken: {exc}") from exc
