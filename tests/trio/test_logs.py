"""Structured log events carry the fields of their task's log source (a session)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import attrs
import pytest
import trio

from kpc_trio.logs import KeyValueFormatter, get_logger, set_log_source

log = get_logger("kpc_trio.test_logs")


@attrs.define
class FakeSession:
    client_id: str | None = None

    def log_fields(self) -> Iterable[tuple[str, Any]]:
        return (("client_id", self.client_id), ("peer", "10.0.0.1:5000"))


@pytest.fixture
def lines() -> Iterable[list[str]]:
    captured: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: captured.append(KeyValueFormatter().format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("kpc_trio.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield captured
    logger.removeHandler(handler)


async def test_events_carry_the_source_fields_read_when_logged(lines: list[str]) -> None:
    session = FakeSession()

    async def child() -> None:
        log.info("from_child", extra_field=1)

    async def session_task() -> None:
        set_log_source(session)
        log.info("before_connect")
        session.client_id = "dev-1"
        log.info("after_connect", peer="overridden:1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session_task)
    log.info("elsewhere")
    fields = [line.split(" ", 3)[3] for line in lines]  # drop ts, level, logger
    assert fields == [
        "event=before_connect peer=10.0.0.1:5000",  # None values are left out
        "event=after_connect client_id=dev-1 peer=overridden:1",
        "event=from_child client_id=dev-1 peer=10.0.0.1:5000 extra_field=1",
        "event=elsewhere",
    ]
