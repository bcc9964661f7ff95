"""What a listener does with a new connection before its handler: admission control and the
client's real address from a PROXY protocol header.

The header is read with MSG_PEEK and then exactly its length is consumed, so the bytes behind
it (MQTT, or a TLS ClientHello that OpenSSL reads from the socket itself) stay in the kernel.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable

import attrs
import trio

from kpc_trio.logs import get_logger
from kpc_trio.net.admission import Slots, TokenBucket, connection_rate_bucket
from kpc_trio.net.forwarded import TrustedProxies
from kpc_trio.net.proxy_protocol import (
    ProxyHeader,
    ProxyHeaderError,
    length_hint,
    parse_header,
    starts_like_header,
)

log = get_logger(__name__)

#: A trusted proxy that sent part of its header: look again after this long (the kernel buffer
#: stays readable, so waiting for readability would spin).
PEEK_RETRY = 0.01
#: A v1 line, or a v2 header with its addresses and a few TLVs, in one look.
FIRST_PEEK = 232
#: Refusals a client can provoke at will are logged at most this often per listener and reason.
REFUSAL_LOG_INTERVAL = 10.0


class ProxyMode(enum.Enum):
    """`kaa.kpc.transports.mqtt.{tcp,tls}.proxy-protocol`."""

    OFF = "off"
    OPTIONAL = "optional"  # used when a trusted proxy sends one
    REQUIRED = "required"  # connections without a valid header from a trusted proxy are closed


#: Counts a refused connection: (transport, reason).
RefusalHook = Callable[[str, str], None]


def _ignore_refusal(transport: str, reason: str) -> None:
    """Default hook: refusals are still logged."""


@attrs.frozen
class EdgeSettings:
    """One listener's policy for new connections."""

    proxy_mode: ProxyMode = ProxyMode.OFF
    trusted_proxies: TrustedProxies = TrustedProxies()
    header_timeout: float = 10.0
    max_connection_rate: int = 0  # per second; 0 = unlimited
    connection_rate_burst: int = 0  # 0 = one second's worth
    max_concurrent_handshakes: int = 0  # TLS only; 0 = unlimited
    on_refused: RefusalHook = _ignore_refusal


NO_POLICY = EdgeSettings()


@attrs.define
class _RefusalLog:
    last: float = -REFUSAL_LOG_INTERVAL
    suppressed: int = 0


class Edge:
    """The state of one listener's policy (its token bucket, its handshakes under way)."""

    def __init__(self, settings: EdgeSettings, transport: str) -> None:
        self.settings = settings
        self.transport = transport
        self._bucket: TokenBucket | None = connection_rate_bucket(
            settings.max_connection_rate, settings.connection_rate_burst)
        self.handshakes = Slots(settings.max_concurrent_handshakes)
        self._refusal_logs: dict[str, _RefusalLog] = {}

    @property
    def reads_proxy_header(self) -> bool:
        return self.settings.proxy_mode is not ProxyMode.OFF

    def admit_nowait(self, *, handshake: bool = False) -> bool:
        """Whether to serve a connection just accepted; False: close it, nothing else.

        With `handshake`, a TLS handshake slot is taken too: `handshakes.release()` it after.
        """
        if self._bucket is not None and not self._bucket.take(trio.current_time()):
            self.refuse("connection_rate")
            return False
        if handshake and not self.handshakes.acquire_nowait():
            self.refuse("tls_handshakes")
            return False
        return True

    def refuse(self, reason: str, address: str | None = None, detail: str | None = None) -> None:
        self.settings.on_refused(self.transport, reason)
        # Anyone can provoke these as often as they like: one line per interval, with a count.
        entry = self._refusal_logs.setdefault(reason, _RefusalLog())
        now = trio.current_time()
        if now - entry.last < REFUSAL_LOG_INTERVAL:
            entry.suppressed += 1
            return
        log.warning("connection_refused", transport=self.transport, reason=reason,
                    address=address, detail=detail,
                    refused_since_last_log=entry.suppressed or None)
        entry.last, entry.suppressed = now, 0

    async def client_address(self, sock: socket.socket, address: str,
                             deadline: float) -> str | None:
        """The client's address: from the PROXY header of a trusted proxy, else `address`;
        None when the connection must be closed (already counted and logged).

        Call only when `reads_proxy_header`. The header must be complete by `deadline`.
        """
        required = self.settings.proxy_mode is ProxyMode.REQUIRED
        if not self.settings.trusted_proxies.trusts(address):
            if required:
                self.refuse("untrusted_proxy", address)
                return None
            return address  # not read at all: a header from here is just bad MQTT/TLS
        header: ProxyHeader | None = None
        try:
            with trio.move_on_at(deadline) as waiting:
                header = await receive_proxy_header(sock)
        except ProxyHeaderError as exc:
            self.refuse("proxy_header_malformed", address, str(exc))
            return None
        except (OSError, EOFError):
            return None  # the proxy went away (or only checked that the port is open)
        if waiting.cancelled_caught:
            self.refuse("proxy_header_timeout", address)
            return None
        if header is None:
            if required:
                self.refuse("proxy_header_missing", address)
                return None
            return address
        return header.source or address  # LOCAL / UNKNOWN: the proxy speaks for itself


async def receive_proxy_header(sock: socket.socket) -> ProxyHeader | None:
    """Consume the PROXY header at the start of `sock`'s input; None if it starts otherwise.

    Raises ProxyHeaderError (malformed, or the connection ended inside it), EOFError (ended
    before its first byte) or OSError.
    """
    want, seen = FIRST_PEEK, -1
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(want, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not data:
            if seen < 0:
                raise EOFError
            raise ProxyHeaderError("connection closed before the end of the PROXY header")
        if not starts_like_header(data):
            return None
        header = parse_header(data)
        if header is not None:
            consumed = sock.recv(header.length)
            assert len(consumed) == header.length  # peeked: already in the kernel buffer
            return header
        want = max(want, length_hint(data))
        if len(data) == seen:
            await trio.sleep(PEEK_RETRY)
        seen = len(data)

