"""Thread-safe logs of what the simulated services saw.

The services append on the simulator's asyncio thread; tests read and wait on their own thread.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class WaitTimeoutError(Exception):
    """A test waited for more simulated traffic than arrived; the message lists what did arrive."""


class Recording(Generic[T]):
    """An append-only list that other threads can snapshot or wait on."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._items: list[T] = []
        self._changed = threading.Condition()

    def append(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def snapshot(self) -> list[T]:
        with self._changed:
            return list(self._items)

    def wait_for(self, count: int, timeout: float) -> list[T]:
        """Block until at least `count` items were recorded; return all of them."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._items) >= count, timeout):
                raise WaitTimeoutError(
                    f"expected {count} {self._what} within {timeout}s, got {len(self._items)}: "
                    f"{self._items!r}; is KPC connected to the same NATS server and instance names?"
                )
            return list(self._items)
