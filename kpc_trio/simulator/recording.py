"""Thread-safe logs of what the simulated services saw.

The services append on the simulator's asyncio thread; tests read and wait on their own thread.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class WaitTimeoutError(Exception):
    """A test waited for more simulated traffic than arrived; the message lists what did arrive."""


#: Items a recording keeps: the demo and the benchmark's echo extension run for hours, and
#: tests look at far fewer.
RECORDING_LIMIT = 100_000


class Recording(Generic[T]):
    """An append-only log that other threads can snapshot or wait on. It keeps the newest
    `limit` items and counts them all."""

    def __init__(self, what: str, limit: int = RECORDING_LIMIT) -> None:
        self._what = what
        self._items: deque[T] = deque(maxlen=limit)
        self._total = 0
        self._changed = threading.Condition()

    def append(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._total += 1
            self._changed.notify_all()

    def snapshot(self) -> list[T]:
        with self._changed:
            return list(self._items)

    def wait_for(self, count: int, timeout: float) -> list[T]:
        """Block until at least `count` items were recorded; return those kept."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._total >= count, timeout):
                raise WaitTimeoutError(
                    f"expected {count} {self._what} within {timeout}s, got {self._total}: "
                    f"the last {list(self._items)[-10:]!r}; is KPC connected to the same NATS "
                    "server and instance names?"
                )
            return list(self._items)
