"""Accept loops shared by every transport, the plain TCP transport, and stream ownership.

Layout (as `trio.serve_listeners`): accept loops run in the listener's own nursery, connection
tasks in the caller's `handler_nursery`, so shutdown can stop accepting first and let sessions
finish.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import NoReturn, TypeVar

import trio

from kpc_trio.logs import get_logger
from kpc_trio.net.edge import NO_POLICY, Edge, EdgeSettings
from kpc_trio.net.peer import ConnectionHandler, Peer, format_address
from kpc_trio.net.socket_stream import LeanSocketListener, LeanSocketStream

log = get_logger(__name__)

StreamT = TypeVar("StreamT", bound=trio.abc.AsyncResource)

# Out of descriptors/memory is usually transient (connections are closing); retrying at once
# would spin the CPU, giving up would take the whole listener down.
ACCEPT_RETRY_DELAY = 0.1
# Time allowed for a polite close (TLS close_notify, WebSocket close handshake) before the
# socket is closed anyway.
GRACEFUL_CLOSE_TIMEOUT = 5.0

BoundAddress = tuple[str, int]
#: Called with the transport name once per connection ended by an unexpected error.
ConnectionFailureHook = Callable[[str], None]
#: Longest exception text logged for a failed connection (it may quote client bytes).
MAX_FAILURE_REASON = 200


def ignore_connection_failure(transport: str) -> None:
    """Default hook: failures are still logged."""


@asynccontextmanager
async def contain_failures(peer: Peer, on_failure: ConnectionFailureHook) -> AsyncIterator[None]:
    """End one connection, and only it, on whatever its block raises (a transport library's
    bug a client can trigger must not reach the sessions nursery, which only ever sees
    cancellation). Logged once with the reason and counted by `on_failure`."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - everything but cancellation stays here
        failure, rest = _split_failure(exc)
        if failure is not None:
            log.error("connection_failed", transport=peer.transport, peer=peer.address,
                      reason=_describe(failure)[:MAX_FAILURE_REASON])
            on_failure(peer.transport)
        if rest is exc:
            raise
        if rest is not None:
            raise rest from None


def _describe(exc: BaseException) -> str:
    """The leaf errors of `exc` (nurseries wrap them in groups), with their types."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _split_failure(
    exc: BaseException,
) -> tuple[Exception | None, BaseException | None]:
    """(the errors, what else must propagate: cancellation, KeyboardInterrupt)."""
    if isinstance(exc, BaseExceptionGroup):
        errors, rest = exc.split(Exception)
        return errors, rest
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


@asynccontextmanager
async def closing_stream(stream: StreamT) -> AsyncIterator[StreamT]:
    """Own `stream` for the block: close it politely after a normal exit, forcefully otherwise.

    After cancellation or an error the peer is gone or we are shutting down, so we do not wait
    for it.
    """
    try:
        yield stream
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    # aclose() closes the resource even when the timeout cancels it (trio's AsyncResource rule).
    with trio.move_on_after(GRACEFUL_CLOSE_TIMEOUT):
        await stream.aclose()


def peer_address(stream: LeanSocketStream) -> str | None:
    """The client's "host:port", or None if it already disconnected."""
    try:
        return format_address(stream.socket.getpeername())
    except OSError:
        return None


async def open_tcp_listeners(port: int, *, host: str | None,
                             reuse_port: bool = False) -> list[trio.SocketListener]:
    """`trio.open_tcp_listeners`, or with `reuse_port` sockets bound with SO_REUSEPORT, so the
    processes of `kpc-trio run --workers N` share each port (the kernel spreads connections)."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    addresses = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)
    sockets = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as trio: one socket per family, not dual-stack
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(socket.SOMAXCONN)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return [trio.SocketListener(sock) for sock in sockets]


async def run_accept_loop(
    listener: trio.abc.Listener[StreamT],
    on_accept: Callable[[StreamT], Awaitable[None]],
    *,
    transport: str,
    handler_nursery: trio.Nursery,
    admit: Callable[[], bool] | None = None,
) -> NoReturn:
    """Accept forever, starting `on_accept(stream)` in `handler_nursery` for each connection
    that `admit()` lets in (the others are closed at once: no task, no reading)."""
    task_name = f"{transport} connection"
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.warning(
                    "accept_failed",
                    transport=transport,
                    errno=errno.errorcode.get(exc.errno or 0, exc.errno),
                    reason=exc.strerror or str(exc),
                    retry_in_s=ACCEPT_RETRY_DELAY,
                )
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if admit is not None and not admit():
                await trio.aclose_forcefully(stream)
                continue
            # A shared name: trio would otherwise build one string per connection task.
            handler_nursery.start_soon(on_accept, stream, name=task_name)


async def serve_socket_listeners(
    on_accept: Callable[[LeanSocketStream], Awaitable[None]],
    *,
    transport: str,
    host: str | None,
    port: int,
    handler_nursery: trio.Nursery,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[BoundAddress],
    admit: Callable[[], bool] | None = None,
) -> NoReturn:
    """Bind `host:port` (None: every interface; shared with other processes when `reuse_port`)
    and run one accept loop per bound socket.

    Reports the first bound (host, port) through `task_status`; with port 0 and a `host` that
    resolves to several addresses each socket may get a different port, so give one address.
    """
    listeners = [LeanSocketListener(listener)
                 for listener in await open_tcp_listeners(port, host=host, reuse_port=reuse_port)]
    async with trio.open_nursery() as accept_nursery:
        for listener in listeners:
            bound_host, bound_port = listener.socket.getsockname()[:2]
            log.info("listener_started", transport=transport, host=bound_host, port=bound_port)
            accept_nursery.start_soon(
                partial(
                    run_accept_loop,
                    listener,
                    on_accept,
                    transport=transport,
                    handler_nursery=handler_nursery,
                    admit=admit,
                )
            )
        task_status.started(tuple(listeners[0].socket.getsockname()[:2]))
        await trio.sleep_forever()


async def serve_tcp(
    handler: ConnectionHandler,
    *,
    host: str,
    port: int,
    handler_nursery: trio.Nursery,
    edge: EdgeSettings = NO_POLICY,
    reuse_port: bool = False,
    on_failure: ConnectionFailureHook = ignore_connection_failure,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Plain MQTT over TCP: each connection `edge` admits goes to `handler` as is, after its
    PROXY protocol header if `edge` asks for one (a failure reading it is `on_failure`'s, like
    the other transports'; the session contains its own)."""
    policy = Edge(edge, "tcp")

    def on_accept(stream: LeanSocketStream) -> Awaitable[None]:
        # The connection's task runs the handler itself, which owns (closes) the stream: no
        # coroutine of ours stays on the stack of thousands of idle connections.
        address = peer_address(stream)
        if address is None:
            return trio.aclose_forcefully(stream)  # noqa: ASYNC105 - awaited by the caller
        if policy.reads_proxy_header:
            return _serve_proxied(stream, address)
        return handler(stream, Peer(transport="tcp", address=address))

    async def _serve_proxied(stream: LeanSocketStream, address: str) -> None:
        client = None
        async with contain_failures(Peer(transport="tcp", address=address), on_failure):
            deadline = trio.current_time() + edge.header_timeout
            client = await policy.client_address(stream.socket, address, deadline)
        if client is None:
            await trio.aclose_forcefully(stream)
            return
        # A task of its own, as without the header: no frame of ours under an idle session.
        handler_nursery.start_soon(handler, stream, Peer(transport="tcp", address=client),
                                   name="tcp session")

    await serve_socket_listeners(
        on_accept,
        transport="tcp",
        host=host,
        port=port,
        handler_nursery=handler_nursery,
        reuse_port=reuse_port,
        task_status=task_status,
        admit=policy.admit_nowait if edge.max_connection_rate else None,
    )
