"""Structured log events carry the fields of their task's log source (a session); what a client
chooses or repeats cannot blow the log up."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import attrs
import pytest
import trio

from kpc_trio.logs import (
    JsonFormatter,
    KeyValueFormatter,
    RepeatedEvents,
    get_logger,
    set_log_source,
)

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


def test_client_supplied_values_are_cut_in_the_line(lines: list[str]) -> None:
    client_id = "c" * 65_536
    log.info("client_connected", client_id=client_id, topic="kp1/short")
    json_line = json.loads(JsonFormatter(max_value_length=100).format(_record(client_id)))
    (line,) = lines
    assert f'client_id="{"c" * 256}...(+65280 chars)" topic=kp1/short' in line
    assert len(line) < 400
    assert json_line["client_id"] == "c" * 100 + "...(+65436 chars)"


def _record(client_id: str) -> logging.LogRecord:
    record = logging.LogRecord("kpc_trio.test_logs", logging.INFO, __file__, 1,
                               "client_connected", None, None)
    record.kpc_fields = {"client_id": client_id}
    return record


def test_repeated_events_are_logged_once_per_interval_then_counted(lines: list[str]) -> None:
    repeated = RepeatedEvents(interval=10.0)
    for n in range(3_000):
        repeated.log(log, logging.INFO, "request_rejected", now=n / 1000, status_code=403)
    repeated.log(log, logging.WARNING, "publish_refused", now=5.0)
    repeated.log(log, logging.INFO, "request_rejected", now=12.0, status_code=404)  # next one
    repeated.flush(log)  # the connection ended
    fields = [line.split(" ", 3)[3] for line in lines]
    assert fields == [
        "event=request_rejected status_code=403",
        "event=publish_refused",
        "event=events_repeated repeated_event=request_rejected count=2999 interval_s=10.0",
        "event=request_rejected status_code=404",
    ]
