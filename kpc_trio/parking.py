"""Idle sessions without a task of their own: most devices sit silent for minutes.

A session waiting for its client holds a trio task, its coroutine frames, trio's wait on the
socket and a cancel scope: about 3.9 KiB of an idle connection's 5 KiB (20 over TLS). A session
idle for `kaa.kpc.limits.park-idle-after` ends its task instead and *parks*: its socket goes
into one epoll set shared by all parked sessions, which one task watches. The session is
resumed, in a new task, when its socket turns readable (data, EOF, error), when its keepalive
deadline passes (the task then times it out as before, at most `TICK` late), or when the
service needs it (`Parking.resume`: takeover, revocation, shutdown).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import select
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

#: How often the keepalive deadlines of parked sessions are checked.
TICK = 1.0


class Parkable(Protocol):
    def resume(self) -> Awaitable[None]:
        """The body of the task that takes over again (a parked session's `run`)."""


class Parking:
    """The parked sessions of a service; `serve` must run for any to be resumed."""

    __slots__ = ("_epoll", "_parked", "_deadlines", "_order", "_nursery")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # fd -> (session, its park number): the number tells a deadline of this park from a
        # stale one (a session resumed by data leaves its deadline in the heap).
        self._parked: dict[int, tuple[Parkable, int]] = {}
        self._deadlines: list[tuple[float, int, int]] = []  # (deadline, park number, fd)
        self._order = itertools.count()
        self._nursery: trio.Nursery | None = None  # None: not serving, nothing parks

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, session: Parkable, fd: int, deadline: float) -> bool:
        """Hold `session` until `fd` is readable or `deadline` (trio time) passes; False if
        parking is not served (the caller keeps its task)."""
        if self._nursery is None:
            return False
        number = next(self._order)
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except OSError:  # closed meanwhile: the task carries on and finds out
            return False
        self._parked[fd] = (session, number)
        if deadline != math.inf:
            heapq.heappush(self._deadlines, (deadline, number, fd))
            if len(self._deadlines) > 2 * len(self._parked) + 64:  # stale ones are the bulk
                self._deadlines = [entry for entry in self._deadlines
                                   if self._parked.get(entry[2], (None, -1))[1] == entry[1]]
                heapq.heapify(self._deadlines)
        return True

    def resume(self, session: Parkable, fd: int) -> None:
        """Give `session` (parked on `fd`) its task again now."""
        parked = self._parked.get(fd)
        if parked is not None and parked[0] is session:
            self._resume(fd)

    def _resume(self, fd: int) -> None:
        session, _ = self._parked.pop(fd)
        # Gone from the set already if its socket was closed: the resumed task finds out.
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        assert self._nursery is not None
        self._nursery.start_soon(session.resume, name="resumed session")

    async def serve(self, nursery: trio.Nursery,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the parked sessions, resuming them in `nursery`; when cancelled, resume all
        (in a cancelled nursery their tasks only close them)."""
        self._nursery = nursery
        task_status.started()
        try:
            while True:
                with trio.move_on_after(TICK):
                    await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in self._epoll.poll(0):
                    if fd in self._parked:
                        self._resume(fd)
                now = trio.current_time()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, number, fd = heapq.heappop(self._deadlines)
                    parked = self._parked.get(fd)
                    if parked is not None and parked[1] == number:
                        self._resume(fd)
        finally:
            for fd in list(self._parked):
                self._resume(fd)
            self._nursery = None
            self._deadlines.clear()


def can_park(stream: object) -> bool:
    """Whether a session on `stream` can park (a socket stream, TLS or not; not WebSocket)."""
    return hasattr(stream, "idle_fileno")


def idle_fileno(stream: object) -> int | None:
    """The socket under `stream` if a parked session can wait on it (nothing buffered above
    it), else None."""
    fileno: Callable[[], int | None] | None = getattr(stream, "idle_fileno", None)
    return fileno() if fileno is not None else None
