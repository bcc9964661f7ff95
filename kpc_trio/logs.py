"""Structured logging: one event per line, `key=value` (default) or JSON.

Usage::

    log = get_logger(__name__)
    log.info("client_connected", client_id="dev-1", transport="tcp")

A task can name a `LogSource` with `set_log_source(...)`: its fields (a session's peer,
transport and client id) are read at each event and added to every event logged from that task
and the tasks it starts (contextvars follow trio tasks).

A client must not be able to turn the log against the service (a disk or a log pipeline fills
long before memory does): every field value is cut to `logging.max-value-length` characters in
the line (client ids, usernames, topics, filters and tokens are the client's choice), and the
events a client can repeat at will go through a `RepeatedEvents` of its connection, which logs
the first of a kind per interval and a count of the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol


class LogSource(Protocol):
    def log_fields(self) -> Iterable[tuple[str, Any]]: ...


# The source object itself, not a copy of its fields: every idle connection's task holds one,
# and the fields (the client id) may change after it is set.
_source: contextvars.ContextVar[LogSource | None] = contextvars.ContextVar(
    "kpc_log_source", default=None
)


def set_log_source(source: LogSource) -> None:
    """Add `source`'s fields to every event of the rest of the current task (and its children)."""
    _source.set(source)


@contextlib.contextmanager
def logging_for(source: LogSource) -> Iterator[None]:
    """Add `source`'s fields to the events logged inside the block (work done for a session
    by another task, such as NATS's reading task)."""
    token = _source.set(source)
    try:
        yield
    finally:
        _source.reset(token)


class EventLogger:
    """A thin wrapper over a stdlib logger that takes an event name and key/value fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            source = _source.get()
            merged = dict(source.log_fields()) if source is not None else {}
            merged.update(fields)
            self._logger.log(level, event, extra={"kpc_fields": merged}, exc_info=exc_info)

    def log(self, level: int, event: str, **fields: Any) -> None:
        self._log(level, event, fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the traceback of the exception being handled (a bug of ours)."""
        self._log(logging.ERROR, event, fields, exc_info=True)

    def is_debug(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name))


class RepeatedEvents:
    """What one connection can repeat at will (rejected requests, unidentified subscriptions,
    refused publishes): the first event of each kind per `interval` seconds is logged in full,
    the others are only counted, and the count is logged as `events_repeated` once the interval
    is over (at the next such event, or at `flush` when the connection ends). Metrics still
    count every event: this bounds the log, not the accounting."""

    __slots__ = ("_interval", "_interval_end", "_counts")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._interval_end = -math.inf
        self._counts: dict[str, int] = {}  # event -> repeats not logged, this interval

    def log(self, logger: EventLogger, level: int, event: str, now: float,
            **fields: Any) -> None:
        if now >= self._interval_end:
            self.flush(logger)
            self._interval_end = now + self._interval
        repeats = self._counts.get(event)
        if repeats is None:
            self._counts[event] = 0
            logger.log(level, event, **fields)
        else:
            self._counts[event] = repeats + 1

    def flush(self, logger: EventLogger) -> None:
        for event, repeats in self._counts.items():
            if repeats:
                logger.info("events_repeated", repeated_event=event, count=repeats,
                            interval_s=self._interval)
        self._counts.clear()


#: logging.max-value-length: characters of one field value in a line.
DEFAULT_MAX_VALUE_LENGTH = 256


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def _format_value(value: Any, limit: int) -> str:
    text = clip(str(value), limit)
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, max_value_length: int = DEFAULT_MAX_VALUE_LENGTH) -> None:
        super().__init__()
        self._limit = max_value_length

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_format_value(record.getMessage(), self._limit)}",
        ]
        fields: Mapping[str, Any] = getattr(record, "kpc_fields", {})
        parts.extend(f"{k}={_format_value(v, self._limit)}"
                     for k, v in fields.items() if v is not None)
        if record.exc_info:  # ours, not the client's: never cut
            parts.append(f"exc={json.dumps(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def __init__(self, max_value_length: int = DEFAULT_MAX_VALUE_LENGTH) -> None:
        super().__init__()
        self._limit = max_value_length

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields: Mapping[str, Any] = getattr(record, "kpc_fields", {})
        event.update((k, clip(v, self._limit) if isinstance(v, str) else v)
                     for k, v in fields.items() if v is not None)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure_logging(level: str = "INFO", fmt: str = "kv",
                      max_value_length: int = DEFAULT_MAX_VALUE_LENGTH) -> None:
    """Install the formatter on the root logger; `fmt` is `kv` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter if fmt == "json" else KeyValueFormatter
    handler.setFormatter(formatter(max_value_length))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py and trio-websocket log tracebacks at INFO/ERROR for routine network events.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("trio-websocket").setLevel(logging.WARNING)
