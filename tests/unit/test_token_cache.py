"""The token validation cache: bounded in entries and bytes, expired entries reclaimed."""

from __future__ import annotations

from kpc_trio.token_cache import TtlCache

POSITIVE_TTL = 600.0
NEGATIVE_TTL = 30.0


def weigh(key: str, value: str) -> int:
    return len(key) + 100


def test_expired_entries_are_reclaimed_whatever_their_neighbours_ttl() -> None:
    cache: TtlCache[str, str] = TtlCache(1_000, 1_000_000, weigh)
    cache.put("valid", "endpoint-1", POSITIVE_TTL, now=0.0)  # first in, expires last
    for n in range(100):
        cache.put(f"rejected-{n}", "401", NEGATIVE_TTL, now=1.0)
    assert cache.reclaim(now=NEGATIVE_TTL + 1.0) == 100
    assert len(cache) == 1
    assert cache.size_bytes == weigh("valid", "endpoint-1")
    assert cache.get("valid", now=NEGATIVE_TTL + 1.0) == "endpoint-1"


def test_a_put_reclaims_what_has_expired() -> None:
    cache: TtlCache[str, str] = TtlCache(1_000, 1_000_000, weigh)
    for n in range(100):
        cache.put(f"rejected-{n}", "401", NEGATIVE_TTL, now=0.0)
    cache.put("later", "endpoint-2", POSITIVE_TTL, now=NEGATIVE_TTL)
    assert len(cache) == 1


def test_bytes_bound_evicts_what_expires_first() -> None:
    cache: TtlCache[str, str] = TtlCache(1_000, 10_000, weigh)
    cache.put("valid", "endpoint-1", POSITIVE_TTL, now=0.0)
    for n in range(1_000):
        cache.put(f"{n:04d}" + "x" * 996, "401", NEGATIVE_TTL, now=1.0)  # 1,100 bytes each
        assert cache.size_bytes <= 10_000
    assert cache.get("valid", now=2.0) == "endpoint-1"  # the rejections expire sooner
    assert len(cache) == 1 + (10_000 - weigh("valid", "")) // 1_100


def test_entries_bound_and_replacing_an_entry_keeps_the_accounting() -> None:
    cache: TtlCache[str, str] = TtlCache(3, 1_000_000, weigh)
    for n in range(5):
        cache.put(f"k{n}", "v", POSITIVE_TTL, now=float(n))
    cache.put("k4", "v2", NEGATIVE_TTL, now=5.0)
    assert len(cache) == 3
    assert cache.size_bytes == 3 * weigh("k0", "v")
    assert cache.get("k4", now=5.0) == "v2"
    assert cache.get("k4", now=5.0 + NEGATIVE_TTL) is None
    assert cache.evict_where(lambda key, value: True) == ["k2", "k3"]
    assert cache.size_bytes == 0
