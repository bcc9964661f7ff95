"""Waiting for what a test cannot await directly, and reading the events it logged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trio


async def eventually(condition: Callable[[], bool], what: str = "the condition", *,
                     timeout: float = 10) -> None:
    """Poll `condition` until it holds; fail, naming `what`, after `timeout` seconds (a bound
    against a hang: it measures nothing)."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"never happened within {timeout} s: {what}"


@contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Bound a wait for something that must arrive (a reply, a packet, a close): past `seconds`
    the test fails naming `what` instead of hanging the suite."""
    with trio.move_on_after(seconds) as waiting:
        yield
    if waiting.cancelled_caught:
        raise AssertionError(f"never arrived within {seconds} s: {what}")


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    """The fields of every `event` logged so far, in order."""
    return [getattr(record, "kpc_fields", {}) for record in caplog.records
            if record.getMessage() == event]
