"""Sans-IO pieces of the network edge: PROXY headers (hand-written bytes), forwarding headers,
the connection token bucket and the per-connection read pacer."""

from __future__ import annotations

import pytest

from kpc_trio.net.admission import ReadPacer, Slots, TokenBucket
from kpc_trio.net.forwarded import TrustedProxies, forwarded_client
from kpc_trio.net.proxy_protocol import (
    ProxyHeader,
    ProxyHeaderError,
    parse_header,
    starts_like_header,
)

V2_TCP6 = bytes.fromhex(
    "0d0a0d0a000d0a515549540a" "21" "21" "0024"
    "20010db8000000000000000000000001" "20010db8000000000000000000000002" "1f90" "22b3")


@pytest.mark.parametrize(("data", "header"), [
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 1883\r\nMQTT",
     ProxyHeader(45, "203.0.113.7:56324")),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 8080 8883\r\n", ProxyHeader(46, "[2001:db8::1]:8080")),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(15, None)),
    (V2_TCP6 + b"\x16\x03", ProxyHeader(52, "[2001:db8::1]:8080")),
    # TLVs after the addresses are skipped with them.
    (bytes.fromhex("0d0a0d0a000d0a515549540a2111000f" "c6336409c00002019c4022b3" "040000"),
     ProxyHeader(31, "198.51.100.9:40000")),
])
def test_valid_headers(data: bytes, header: ProxyHeader) -> None:
    assert starts_like_header(data)
    assert parse_header(data) == header
    # Any shorter prefix asks for more bytes.
    for end in range(1, header.length):
        assert starts_like_header(data[:end])
        assert parse_header(data[:end]) is None


@pytest.mark.parametrize("data", [b"\x10\x11\x00\x04MQTT", b"\x16\x03\x01", b"PROXI", b"GET /"])
def test_other_protocols_are_not_headers(data: bytes) -> None:
    assert not starts_like_header(data)


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",
    b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY " + b"x" * 120,
    bytes.fromhex("0d0a0d0a000d0a515549540a" "22" "11" "000c") + bytes(12),  # command 2
    bytes.fromhex("0d0a0d0a000d0a515549540a" "21" "11" "0004") + bytes(4),  # too short
])
def test_malformed_headers(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(data)


TRUSTED = TrustedProxies.from_config(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(("proxy", "headers", "client"), [
    ("10.1.2.3:5000", [("X-Forwarded-For", "198.51.100.1, 203.0.113.7")], "203.0.113.7"),
    ("10.1.2.3:5000", [("x-forwarded-for", "203.0.113.7, 10.9.9.9")], "203.0.113.7"),
    ("[fd00::1]:80", [("Forwarded", 'for="[2001:db8::7]:4711";proto=https')],
     "[2001:db8::7]:4711"),
    ("10.1.2.3:5000", [("Forwarded", "for=unknown")], None),
    ("10.1.2.3:5000", [], None),
    ("192.0.2.1:5000", [("X-Forwarded-For", "203.0.113.7")], None),  # not a trusted proxy
])
def test_forwarded_client(proxy: str, headers: list[tuple[str, str]],
                          client: str | None) -> None:
    assert forwarded_client(headers, proxy, TRUSTED) == client


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1) and not bucket.take(0.1)


def test_slots() -> None:
    slots = Slots(limit=1)
    assert slots.acquire_nowait() and not slots.acquire_nowait()
    slots.release()
    assert slots.acquire_nowait()
    assert all(Slots(limit=0).acquire_nowait() for _ in range(100))


def test_read_pacer_waits_out_both_rates() -> None:
    pacer = ReadPacer(publish_rate=10, receive_rate=1000)
    assert pacer.delay(0.0, publishes=10, received_bytes=500) == 0  # the first second's burst
    assert pacer.delay(0.0, publishes=5, received_bytes=0) == pytest.approx(0.5)
    assert pacer.delay(0.5, publishes=0, received_bytes=1500) == pytest.approx(0.5)
    assert pacer.publishes_per_slice == 1
