"""Thin trio adapters for the transports: TCP, TLS, WebSocket.

Every transport hands a plain `trio.abc.Stream` of MQTT bytes and a `Peer` to one
`ConnectionHandler`, which owns the stream and closes it; TLS and WebSocket also close their
layers when the handler returns.
"""

from kpc_trio.net.certificate import ClientCertificate, parse_certificate
from kpc_trio.net.edge import EdgeSettings, ProxyMode
from kpc_trio.net.forwarded import TrustedProxies
from kpc_trio.net.listeners import BoundAddress, serve_tcp
from kpc_trio.net.peer import ConnectionHandler, Peer
from kpc_trio.net.tls import HandshakeFailureHook, HandshakeFailureReason, serve_tls
from kpc_trio.net.tls_context import ClientAuth, TlsConfigError, build_server_ssl_context
from kpc_trio.net.websocket import WebSocketStream, serve_websocket

__all__ = [
    "BoundAddress",
    "ClientAuth",
    "ClientCertificate",
    "ConnectionHandler",
    "EdgeSettings",
    "HandshakeFailureHook",
    "HandshakeFailureReason",
    "Peer",
    "ProxyMode",
    "TlsConfigError",
    "TrustedProxies",
    "WebSocketStream",
    "build_server_ssl_context",
    "parse_certificate",
    "serve_tcp",
    "serve_tls",
    "serve_websocket",
]
