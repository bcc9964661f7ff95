"""Giving freed memory back to the operating system.

glibc's malloc keeps what Python and OpenSSL free for reuse, so after a burst (hundreds of TLS
handshakes, a flood of large packets) the process would keep the burst's peak RSS for good,
although the memory is free. `run_memory_trimmer` asks malloc to return whole free pages
periodically (`malloc_trim(0)`: a few milliseconds for a heap of some hundred MiB). On a C
library without it (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import trio

from kpc_trio.logs import get_logger

log = get_logger(__name__)


def _malloc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def run_memory_trimmer(interval: float, on_trim: Callable[[], None]) -> None:
    """Task body: trim every `interval` seconds (0: never); `on_trim` counts the trims."""
    trim = _malloc_trim()
    if trim is None or interval <= 0:
        log.info("memory_trimmer_off", reason="no malloc_trim" if trim is None else "interval 0")
        return
    while True:
        await trio.sleep(interval)
        trim()
        on_trim()
