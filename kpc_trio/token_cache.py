"""A TTL cache for endpoint token validation results (positive and negative), bounded in entries
and in bytes.

Pure: the caller passes the current time, so trio's clock (and `autojump_clock` in tests) drives
expiry.

Expired entries are reclaimed, not only skipped: entries put with the same TTL expire in the
order they were put, so each TTL has its own queue and the expired ones are always at the front
of theirs (`reclaim`, also run by every `put`). When a bound is hit, the entry that would expire
first goes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

V = TypeVar("V")
K = TypeVar("K")

#: Estimated bytes of one cached entry for a key and value: callers know what they store.
Weigher = Callable[[K, V], int]


@attrs.define(slots=True)
class _Entry(Generic[V]):
    expires_at: float
    value: V
    size: int
    ttl: float


class TtlCache(Generic[K, V]):
    def __init__(self, max_entries: int, max_bytes: int | None = None,
                 weigh: Weigher[K, V] | None = None) -> None:
        self._entries: dict[K, _Entry[V]] = {}
        # Per TTL, the keys in the order they expire.
        self._queues: dict[float, OrderedDict[K, None]] = {}
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._weigh = weigh
        self._bytes = 0

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._remove(key)
            return None
        return entry.value

    def put(self, key: K, value: V, ttl: float, now: float) -> None:
        if ttl <= 0 or self._max_entries <= 0:
            return
        self.reclaim(now)
        size = self._weigh(key, value) if self._weigh is not None else 0
        if self._max_bytes is not None and size > self._max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(now + ttl, value, size, ttl)
        self._queues.setdefault(ttl, OrderedDict())[key] = None
        self._bytes += size
        while len(self._entries) > self._max_entries or (
                self._max_bytes is not None and self._bytes > self._max_bytes):
            self._remove(self._first_to_expire())

    def reclaim(self, now: float) -> int:
        """Drop every expired entry; returns how many went."""
        reclaimed = 0
        for queue in list(self._queues.values()):
            while queue:
                key = next(iter(queue))
                if self._entries[key].expires_at > now:
                    break
                self._remove(key)
                reclaimed += 1
        return reclaimed

    def evict(self, key: K) -> None:
        if key in self._entries:
            self._remove(key)

    def evict_where(self, predicate: Callable[[K, V], bool]) -> list[K]:
        doomed = [k for k, entry in self._entries.items() if predicate(k, entry.value)]
        for key in doomed:
            self._remove(key)
        return doomed

    def _first_to_expire(self) -> K:
        fronts = [next(iter(queue)) for queue in self._queues.values()]
        return min(fronts, key=lambda key: self._entries[key].expires_at)

    def _remove(self, key: K) -> None:
        entry = self._entries.pop(key)
        queue = self._queues[entry.ttl]
        del queue[key]
        if not queue:
            del self._queues[entry.ttl]  # TTLs come from the configuration: a handful
        self._bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes
