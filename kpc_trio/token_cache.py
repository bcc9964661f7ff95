"""A bounded TTL cache for endpoint token validation results (positive and negative).

Pure: the caller passes the current time, so trio's clock (and `autojump_clock` in tests) drives
expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
K = TypeVar("K")


class TtlCache(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._max_entries = max_entries

    def get(self, key: K, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= now:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, ttl: float, now: float) -> None:
        if ttl <= 0 or self._max_entries <= 0:
            return
        self._entries[key] = (now + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def evict(self, key: K) -> None:
        self._entries.pop(key, None)

    def evict_where(self, predicate: Callable[[K, V], bool]) -> list[K]:
        doomed = [k for k, (_, v) in self._entries.items() if predicate(k, v)]
        for key in doomed:
            del self._entries[key]
        return doomed

    def __len__(self) -> int:
        return len(self._entries)
