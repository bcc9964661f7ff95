"""Which hops may name the client: trusted proxies, and the client address they forward in
`Forwarded` (RFC 7239) or `X-Forwarded-For` headers. Sans-IO.

Only the last hop is believed: each trusted proxy appends the address it received the request
from, so the rightmost entry that is not itself a trusted proxy is the client (anything left of
it may have been written by the client).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

import attrs

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class TrustedProxies:
    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def from_config(cls, cidrs: Iterable[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        """Whether `address` ("host:port", "[v6]:port" or a bare IP) is a trusted proxy."""
        try:
            ip = ipaddress.ip_address(host_of(address))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


NO_PROXIES = TrustedProxies()


def host_of(address: str) -> str:
    """The host part of "host:port" / "[v6]:port"; a bare IP as is."""
    if address.startswith("["):
        return address[1:address.find("]")]
    if address.count(":") == 1:
        return address.rpartition(":")[0]
    return address


_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]+)', re.IGNORECASE)


def forwarded_client(headers: Sequence[tuple[str, str]], proxy_address: str,
                     trusted: TrustedProxies) -> str | None:
    """The client's address the trusted proxy at `proxy_address` forwarded, or None.

    `Forwarded` wins over `X-Forwarded-For`. Entries that are not IP addresses (`unknown`,
    obfuscated identifiers) give None: the proxy's own address stays.
    """
    if not trusted.trusts(proxy_address):
        return None
    hops = _hops(headers, "forwarded") or _hops(headers, "x-forwarded-for")
    for hop in reversed(hops):
        if not trusted.trusts(hop):
            return hop if _is_address(hop) else None
    return None


def _hops(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    hops: list[str] = []
    for key, value in headers:
        if key.lower() != name:
            continue
        if name == "forwarded":
            hops += [match.strip('"') for match in _FORWARDED_FOR.findall(value)]
        else:
            hops += [item.strip() for item in value.split(",") if item.strip()]
    return hops


def _is_address(hop: str) -> bool:
    try:
        ipaddress.ip_address(host_of(hop))
    except ValueError:
        return False
    return True
