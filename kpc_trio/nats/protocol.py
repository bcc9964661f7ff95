"""The NATS client protocol, sans-IO: server addresses, the frames a client sends, and a parser
that turns the bytes a server sends into events (https://docs.nats.io/reference/reference-protocols/nats-protocol).

Nothing here awaits or touches a socket; `nats_gateway` does the I/O. KPC asks the server for no
headers, so messages arrive as `MSG`; an `HMSG` (a server status such as 503 "no responders") is
still parsed, and dropped when it carries a status.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import attrs

DEFAULT_PORT = 4222
DEFAULT_MAX_PAYLOAD = 1 << 20  # the server default, until its INFO says otherwise
#: A control line longer than this is a broken server (INFO with a long cluster URL list is the
#: largest one, a few KiB).
MAX_CONTROL_LINE = 64 * 1024

PING = b"PING\r\n"
PONG = b"PONG\r\n"
_CRLF = b"\r\n"
_SUBJECT_FORBIDDEN = frozenset(" \t\r\n")


class NatsProtocolError(Exception):
    """The server sent something that is not the NATS protocol: the connection must be dropped."""


class NatsUrlError(ValueError):
    """A NATS URL that cannot be used; the message names the URL (without its password)."""


# -- messages ------------------------------------------------------------------------------------


class OutboundMessage(NamedTuple):
    """A message for NATS. A named tuple, not an attrs class: one is built per relayed PUBLISH
    and a frozen attrs instance costs several times more to create."""

    subject: str
    payload: bytes
    reply: str = ""


class InboundMessage(NamedTuple):
    subject: str
    reply: str
    payload: bytes


def subject_problem(subject: str) -> str | None:
    """Why `subject` cannot go on the NATS wire, or None if it can."""
    if not subject:
        return "subject is empty"
    if not _SUBJECT_FORBIDDEN.isdisjoint(subject):
        return f"subject {subject!r} contains whitespace"
    return None


# -- servers -------------------------------------------------------------------------------------


@attrs.frozen
class NatsServerAddress:
    """One entry of NATS_URLS: where to connect and with which credentials."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    user: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    token: str | None = attrs.field(default=None, repr=False)
    #: The name to verify the TLS certificate against when `host` is a discovered IP address.
    tls_name: str = ""

    @property
    def display(self) -> str:
        """host:port, for logs."""
        return f"{self.host}:{self.port}"

    def credentials(self) -> dict[str, str]:
        """The CONNECT fields that authenticate this client."""
        if self.token is not None:
            return {"auth_token": self.token}
        if self.user is not None:
            return {"user": self.user, "pass": self.password or ""}
        return {}


def parse_url(url: str) -> NatsServerAddress:
    """`nats://[user:pass@|token@]host[:port]`, `tls://...`, or a bare `host[:port]`."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.scheme not in ("nats", "tls"):
        raise NatsUrlError(f"NATS URL {redact_url(url)!r}: the scheme must be nats:// or tls://")
    try:
        port = DEFAULT_PORT if parts.port is None else parts.port
        if port == 0:
            raise ValueError
    except ValueError:
        raise NatsUrlError(f"NATS URL {redact_url(url)!r}: the port is not a number "
                           "from 1 to 65535") from None
    if not parts.hostname:
        raise NatsUrlError(f"NATS URL {redact_url(url)!r} names no host")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    token = user if user is not None and password is None else None
    return NatsServerAddress(parts.hostname, port, parts.scheme == "tls",
                             None if token else user, password, token)


def redact_url(url: str) -> str:
    """The URL without its password (or token), for logs."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return parts._replace(netloc=f"{user}@{host}").geturl()


# -- what the client sends -----------------------------------------------------------------------


def connect_frame(name: str, version: str, credentials: Mapping[str, str], *,
                  tls: bool = False) -> bytes:
    """CONNECT: no +OK per command (verbose off), no headers; `protocol: 1` lets the server send
    INFO updates (cluster changes, lame duck mode)."""
    options: dict[str, Any] = {
        "verbose": False, "pedantic": False, "tls_required": tls, "name": name,
        "lang": "python-trio", "version": version, "protocol": 1, "echo": True,
        "headers": False, "no_responders": False, **credentials,
    }
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + _CRLF


def sub_frame(subject: str, queue: str, sid: int) -> bytes:
    return (f"SUB {subject} {queue} {sid}\r\n" if queue else f"SUB {subject} {sid}\r\n").encode()


def unsub_frame(sid: int) -> bytes:
    return b"UNSUB %d\r\n" % sid


class PubFrames:
    """NATS `PUB` frames for a batch; the head of each (subject, reply) pair is encoded once.

    Pairs are checked with `subject_problem` before their first use (`checked`, `add`).
    """

    MAX_HEADS = 10_000  # subjects are a handful of extensions and replicas: this is a leak guard

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str], bytes] = {}

    def checked(self, subject: str, reply: str) -> bool:
        return (subject, reply) in self._heads

    def add(self, subject: str, reply: str) -> bytes:
        """Remember a pair whose subjects are valid; returns its encoded head."""
        if len(self._heads) >= self.MAX_HEADS:
            self._heads.clear()
        head = self._heads[subject, reply] = (
            f"PUB {subject} {reply} " if reply else f"PUB {subject} ").encode()
        return head

    def append_checked(self, parts: list[bytes], messages: Sequence[OutboundMessage],
                       max_payload: int) -> bool:
        """Append the frames of `messages` to `parts` if each pair was checked before and each
        payload fits `max_payload`: the common case, one look-up per message. Otherwise append
        nothing and return False (the caller checks them one by one)."""
        heads = self._heads
        start = len(parts)
        # Messages of one read usually share their subject and reply: the same strings.
        last_subject = last_reply = head = None
        for subject, payload, reply in messages:
            if subject is not last_subject or reply is not last_reply:
                head = heads.get((subject, reply))
                last_subject, last_reply = subject, reply
            size = len(payload)
            if head is None or size > max_payload:
                del parts[start:]
                return False
            parts += (head, b"%d\r\n" % size, payload, _CRLF)
        return True

    def frames(self, messages: Sequence[OutboundMessage]) -> bytes:
        heads = self._heads
        parts: list[bytes] = []
        append = parts.append
        for subject, payload, reply in messages:
            # A pair is missing only if the bound was hit after it was checked.
            append(heads.get((subject, reply)) or self.add(subject, reply))
            append(b"%d\r\n" % len(payload))
            append(payload)
            append(_CRLF)
        return b"".join(parts)


# -- what the server sends -----------------------------------------------------------------------


@attrs.frozen
class ServerInfo:
    """The fields of INFO that KPC acts on."""

    max_payload: int = DEFAULT_MAX_PAYLOAD
    tls_required: bool = False
    server_name: str = ""
    tls_available: bool = False  # TLS offered but optional (nats-server `allow_non_tls`)
    #: The cluster's client URLs (`host:port`), for the server pool; None when INFO has none.
    connect_urls: tuple[str, ...] | None = None
    #: Lame duck mode: the server is about to shut down; move to another one.
    lame_duck: bool = False
    #: What an nkey/JWT client signs in CONNECT.
    nonce: str = ""

    def offers_tls(self) -> bool:
        return self.tls_required or self.tls_available

    @classmethod
    def from_json(cls, text: bytes) -> ServerInfo:
        try:
            fields = json.loads(text)
            max_payload = int(fields.get("max_payload", DEFAULT_MAX_PAYLOAD))
            urls = fields.get("connect_urls")
            connect_urls = None if urls is None else tuple(str(url) for url in urls)
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise NatsProtocolError(f"unreadable INFO from the server: {exc}") from None
        return cls(max_payload, bool(fields.get("tls_required", False)),
                   str(fields.get("server_name", fields.get("server_id", ""))),
                   bool(fields.get("tls_available", False)), connect_urls,
                   bool(fields.get("ldm", False)), str(fields.get("nonce", "")))


@attrs.frozen
class Ping:
    """The server checks that the client is alive: answer PONG."""


@attrs.frozen
class Pong:
    """The answer to the oldest PING this client sent."""


@attrs.frozen
class ServerError:
    """-ERR: the text of the error (most close the connection, some only refuse one command)."""

    message: str

    @property
    def kind(self) -> str:
        """A short, bounded name for metrics and logs (`other` for what is not known here)."""
        lowered = self.message.lower()
        for needle, kind in _ERROR_KINDS:
            if needle in lowered:
                return kind
        return "other"

    @property
    def refused_publish(self) -> str | None:
        """The subject of a publish the server refused (the connection stays open), or None."""
        match = _PUBLISH_VIOLATION.match(self.message)
        return match[1] if match else None

    @property
    def refused_subscription(self) -> str | None:
        """The subject of a subscription the server refused (the connection stays open)."""
        match = _SUBSCRIPTION_VIOLATION.match(self.message)
        return match[1] if match else None


# nats-server's texts (server/errors.go, client.go); the first match wins.
_ERROR_KINDS = (
    ("permissions violation for publish", "publish_permission"),
    ("permissions violation for subscription", "subscription_permission"),
    ("authorization violation", "authorization_violation"),
    ("authentication expired", "authentication_expired"),
    ("authentication timeout", "authentication_timeout"),
    ("maximum connections exceeded", "maximum_connections"),
    ("maximum account active connections exceeded", "maximum_connections"),
    ("maximum payload", "maximum_payload"),
    ("maximum subscriptions exceeded", "maximum_subscriptions"),
    ("stale connection", "stale_connection"),
    ("slow consumer", "slow_consumer"),
    ("secure connection", "tls_required"),
    ("invalid subject", "invalid_subject"),
    ("unknown protocol", "protocol"),
)
_PUBLISH_VIOLATION = re.compile(r'Permissions Violation for Publish to "([^"]*)"',
                                re.IGNORECASE)
_SUBSCRIPTION_VIOLATION = re.compile(r'Permissions Violation for Subscription to "([^"]*)"',
                                     re.IGNORECASE)


class Delivery(NamedTuple):
    """A message for subscription `sid`."""

    sid: int
    message: InboundMessage


ServerEvent = ServerInfo | Ping | Pong | ServerError | Delivery

_PING_EVENT = Ping()
_PONG_EVENT = Pong()


class ServerStreamParser:
    """Bytes from the server in, events out. Incomplete frames stay buffered until more arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        # The server refuses larger publishes, so a larger MSG is a broken server: refused
        # rather than buffered without bound. Follows max_payload of the server's INFO.
        self._max_message = DEFAULT_MAX_PAYLOAD

    def feed(self, data: bytes | bytearray) -> list[ServerEvent]:
        """Parse everything complete; raises NatsProtocolError for bytes that are not NATS."""
        buffer = self._buffer
        buffer += data
        events: list[ServerEvent] = []
        position = 0
        try:
            while True:
                end = buffer.find(_CRLF, position)
                if end < 0:
                    if len(buffer) - position > MAX_CONTROL_LINE:
                        raise NatsProtocolError(
                            f"control line longer than {MAX_CONTROL_LINE} bytes")
                    break
                line = bytes(buffer[position:end])
                op, _, arguments = line.partition(b" ")
                op = op.upper()
                if op == b"MSG" or op == b"HMSG":
                    frame = _message_frame(op, arguments, buffer, end + 2, self._max_message)
                    if frame is None:
                        break  # the payload has not fully arrived
                    event, position = frame
                    if event is not None:
                        events.append(event)
                    continue
                position = end + 2
                if op == b"PING":
                    events.append(_PING_EVENT)
                elif op == b"PONG":
                    events.append(_PONG_EVENT)
                elif op == b"INFO":
                    info = ServerInfo.from_json(arguments)
                    self._max_message = info.max_payload
                    events.append(info)
                elif op == b"-ERR":
                    events.append(ServerError(arguments.decode(errors="replace").strip(" '")))
                elif op != b"+OK":
                    raise NatsProtocolError(f"unknown operation {line[:40]!r}")
        finally:
            del buffer[:position]
        return events


def _message_frame(op: bytes, arguments: bytes, buffer: bytearray, start: int,
                   max_message: int) -> tuple[Delivery | None, int] | None:
    """A MSG/HMSG whose control line ended at `start`: (event or None if dropped, next position),
    or None while the payload is incomplete."""
    fields = arguments.split()
    headers_size = 0
    try:
        if op == b"HMSG":
            headers_size = int(fields[-2])
            del fields[-2]
        total = int(fields[-1])
        sid = int(fields[1])
        if len(fields) not in (3, 4) or not 0 <= headers_size <= total:
            raise ValueError
    except (ValueError, IndexError):
        raise NatsProtocolError(f"malformed {op.decode()} {arguments[:80]!r}") from None
    if total > max_message:
        raise NatsProtocolError(f"{op.decode()} of {total} bytes exceeds the server's "
                                f"max_payload of {max_message} bytes")
    end = start + total
    if len(buffer) < end + 2:
        return None
    if buffer[end:end + 2] != _CRLF:
        raise NatsProtocolError(f"{op.decode()} payload is not followed by CRLF")
    if headers_size and _is_status(buffer[start:start + headers_size]):
        return None, end + 2
    # nats-server relays subjects that are not UTF-8: the message still goes to its subscription
    # (matched by sid), its subject shown with replacement characters.
    reply = fields[2].decode(errors="replace") if len(fields) == 4 else ""
    message = InboundMessage(fields[0].decode(errors="replace"), reply,
                             bytes(buffer[start + headers_size:end]))
    return Delivery(sid, message), end + 2


def _is_status(headers: bytearray) -> bool:
    """`NATS/1.0 503` and the like: a status from the server, not a message of any Kaa protocol."""
    first_line = bytes(headers).split(_CRLF, 1)[0]
    return len(first_line.split()) > 1
