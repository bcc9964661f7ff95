"""PROXY protocol v1 and v2 headers (haproxy's proxy-protocol.txt), sans-IO.

A load balancer that speaks it writes one header before the client's bytes, naming the client's
address. `starts_like_header` tells whether a connection may begin with one; `parse_header`
then says: more bytes needed, or the header and its length. The caller consumes exactly that
many bytes, so whatever follows (MQTT, or a TLS ClientHello) is untouched.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

from kpc_trio.net.peer import format_address

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the longest v1 line, CRLF included (spec 2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16  # signature, version/command, family/protocol, address length

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_TCP4, _V2_TCP6 = 0x11, 0x21
_V1_FAMILIES = {"TCP4": 4, "TCP6": 6}


class ProxyHeaderError(Exception):
    """The bytes start like a PROXY header but are not a valid one."""


@attrs.frozen
class ProxyHeader:
    length: int  # bytes the header takes on the wire
    source: str | None  # the client's "host:port"; None for LOCAL/UNKNOWN (the proxy itself)


def starts_like_header(data: bytes) -> bool:
    """Whether `data` (at least one byte) may be the start of a PROXY header."""
    return (data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]
            or data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)])


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data` (which `starts_like_header`), or None: more bytes
    needed. Raises ProxyHeaderError for a malformed header."""
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data) if len(data) >= V2_HEADER_LENGTH else None
    return _parse_v1(data)


def length_hint(data: bytes) -> int:
    """How many bytes to look at to see the whole header that `data` starts (when
    `parse_header` needs more)."""
    if len(data) >= V2_HEADER_LENGTH and data.startswith(V2_SIGNATURE):
        return V2_HEADER_LENGTH + int.from_bytes(data[14:16], "big")
    return V1_MAX_LENGTH


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"v1 header without CRLF in its first {V1_MAX_LENGTH} bytes")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    if fields[1:2] == ["UNKNOWN"]:
        return ProxyHeader(end + 2, None)
    if len(fields) != 6 or fields[1] not in _V1_FAMILIES:
        raise ProxyHeaderError("v1 header is not 'PROXY TCP4|TCP6 <src> <dst> <sport> <dport>'")
    _, family, source, destination, source_port, destination_port = fields
    try:
        host = ipaddress.ip_address(source)
        ipaddress.ip_address(destination)
        port = _v1_port(source_port)
        _v1_port(destination_port)
    except ValueError as exc:
        raise ProxyHeaderError(f"v1 header has a bad address or port: {exc}") from None
    if host.version != _V1_FAMILIES[family]:
        raise ProxyHeaderError(f"v1 header announces {family} with address {source}")
    return ProxyHeader(end + 2, format_address((str(host), port)))


def _v1_port(text: str) -> int:
    # Decimal without sign or leading zeros (int() alone would take "+1" and "0x...").
    if not text.isdigit() or (text != "0" and text.startswith("0")) or int(text) > 0xFFFF:
        raise ValueError(f"port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    version_command, family, address_length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"v2 header with version {version_command >> 4}")
    command = version_command & 0xF
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"v2 header with unknown command {command}")
    length = V2_HEADER_LENGTH + address_length
    if len(data) < length:
        return None
    if command == _V2_LOCAL or family not in (_V2_TCP4, _V2_TCP6):
        # A health check by the proxy itself, or a family that has no TCP address (spec 2.2).
        return ProxyHeader(length, None)
    size = 4 if family == _V2_TCP4 else 16
    if address_length < 2 * size + 4:
        raise ProxyHeaderError(f"v2 address block of {address_length} bytes is too short")
    block = data[V2_HEADER_LENGTH:length]
    host = ipaddress.ip_address(block[:size])
    (port,) = struct.unpack_from("!H", block, 2 * size)
    return ProxyHeader(length, format_address((str(host), port)))
