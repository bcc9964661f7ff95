"""MQTT over TLS: each handshake runs in its own connection task under its own deadline.

The original KPC let one stalled handshake block every other TLS client until it timed out;
here a client that opens TCP and never finishes the handshake only holds its own task.
"""

from __future__ import annotations

import enum
import functools
import ssl
from collections.abc import Callable
from typing import NoReturn

import trio

from kpc_trio.logs import get_logger
from kpc_trio.net.certificate import parse_certificate
from kpc_trio.net.edge import NO_POLICY, Edge, EdgeSettings
from kpc_trio.net.listeners import (
    BoundAddress,
    ConnectionFailureHook,
    contain_failures,
    ignore_connection_failure,
    peer_address,
    serve_socket_listeners,
)
from kpc_trio.net.peer import ConnectionHandler, Peer
from kpc_trio.net.socket_stream import LeanSocketStream
from kpc_trio.net.tls_stream import TlsStream

log = get_logger(__name__)


class HandshakeFailureReason(enum.Enum):
    """Low-cardinality cause of a failed handshake (a metrics label)."""

    TIMEOUT = "timeout"
    CERTIFICATE_REJECTED = "certificate_rejected"  # untrusted, expired or missing when required
    PROTOCOL_ERROR = "protocol_error"  # not TLS, no common version or cipher, ...
    CONNECTION_LOST = "connection_lost"


HandshakeFailureHook = Callable[[HandshakeFailureReason], None]

# OpenSSL reasons that mean "the client certificate was not acceptable" without being a
# verification error (TLS 1.2 and 1.3 spell the missing-certificate case differently).
_CERTIFICATE_REASONS = frozenset(
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED", "NO_CERTIFICATE_RETURNED"}
)


class _HandshakeFailedError(Exception):
    def __init__(self, reason: HandshakeFailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _ignore_failure(reason: HandshakeFailureReason) -> None:
    """Default hook: failures are still logged."""


async def serve_tls(
    handler: ConnectionHandler,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext],
    handshake_timeout: float,
    handler_nursery: trio.Nursery,
    on_handshake_failure: HandshakeFailureHook = _ignore_failure,
    on_failure: ConnectionFailureHook = ignore_connection_failure,
    edge: EdgeSettings = NO_POLICY,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """MQTT/TLS: handshake (with client certificate verification per `ssl_context`), then
    `handler(stream, Peer(transport="tls", certificate=...))`.

    `edge` decides which connections get a handshake at all (connection rate, handshakes at
    once) and whether a PROXY protocol header comes first; header and handshake share the
    `handshake_timeout`. `on_handshake_failure` is called once per failed handshake (for a
    metrics counter); it runs in the connection task and must not raise. `on_failure` counts
    the connections ended by an unexpected error (logged once each).
    """
    policy = Edge(edge, "tls")

    async def on_accept(tcp_stream: LeanSocketStream) -> None:
        # The session gets a task of its own and this one ends: no frame of ours stays on the
        # stack of thousands of idle connections. The handler owns (closes) the TLS stream and
        # contains its own failures.
        secured = None
        async with contain_failures(Peer("tls", peer_address(tcp_stream) or "unknown"),
                                    on_failure):
            secured = await secure(tcp_stream)
        if secured is not None:
            handler_nursery.start_soon(handler, *secured, name="tls session")

    async def secure(tcp_stream: LeanSocketStream) -> tuple[TlsStream, Peer] | None:
        """The PROXY header and the handshake; None (the socket closed) if they fail."""
        try:
            address = peer_address(tcp_stream)
            deadline = trio.current_time() + handshake_timeout
            if address is not None and policy.reads_proxy_header:
                address = await policy.client_address(tcp_stream.socket, address, deadline)
            if address is None:
                await trio.aclose_forcefully(tcp_stream)
                return None
            # A callable gives the context of the moment (certificate rotation): each
            # handshake takes the newest, sessions already established keep theirs.
            context = ssl_context() if callable(ssl_context) else ssl_context
            tls_stream = TlsStream(tcp_stream, context)
            try:
                peer = await _handshake(tls_stream, address, deadline, handshake_timeout)
            except _HandshakeFailedError as failure:
                log.info("tls_handshake_failed", address=address, reason=failure.reason.value,
                         detail=failure.detail)
                on_handshake_failure(failure.reason)
                await trio.aclose_forcefully(tls_stream)
                return None
            return tls_stream, peer
        except BaseException:
            await trio.aclose_forcefully(tcp_stream)
            raise
        finally:
            policy.handshakes.release()  # taken by admit_nowait

    await serve_socket_listeners(
        on_accept,
        transport="tls",
        host=host,
        port=port,
        handler_nursery=handler_nursery,
        reuse_port=reuse_port,
        task_status=task_status,
        admit=functools.partial(policy.admit_nowait, handshake=True),
    )


async def _handshake(tls_stream: TlsStream, address: str, deadline: float,
                     allowed_s: float) -> Peer:
    with trio.move_on_at(deadline) as waiting:
        try:
            await tls_stream.do_handshake()
        except trio.BrokenResourceError as exc:
            raise _classify(exc.__cause__) from exc
    if waiting.cancelled_caught:
        raise _HandshakeFailedError(
            HandshakeFailureReason.TIMEOUT, f"no complete handshake within {allowed_s}s"
        )
    der = tls_stream.getpeercert(binary_form=True)
    certificate = parse_certificate(der) if der else None
    return Peer(transport="tls", address=address, certificate=certificate)


def _classify(cause: BaseException | None) -> _HandshakeFailedError:
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _HandshakeFailedError(
            HandshakeFailureReason.CERTIFICATE_REJECTED, cause.verify_message or str(cause)
        )
    if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or not isinstance(
        cause, ssl.SSLError
    ):
        return _HandshakeFailedError(HandshakeFailureReason.CONNECTION_LOST, str(cause))
    if cause.reason in _CERTIFICATE_REASONS:
        return _HandshakeFailedError(HandshakeFailureReason.CERTIFICATE_REJECTED, cause.reason)
    return _HandshakeFailedError(HandshakeFailureReason.PROTOCOL_ERROR, cause.reason or str(cause))
