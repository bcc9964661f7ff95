"""Structured logging: one event per line, `key=value` (default) or JSON.

Usage::

    log = get_logger(__name__)
    log.info("client_connected", client_id="dev-1", transport="tcp")

A task can name a `LogSource` with `set_log_source(...)`: its fields (a session's peer,
transport and client id) are read at each event and added to every event logged from that task
and the tasks it starts (contextvars follow trio tasks).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
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


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_format_value(record.getMessage())}",
        ]
        fields: Mapping[str, Any] = getattr(record, "kpc_fields", {})
        parts.extend(f"{k}={_format_value(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            parts.append(f"exc={_format_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields: Mapping[str, Any] = getattr(record, "kpc_fields", {})
        event.update((k, v) for k, v in fields.items() if v is not None)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure_logging(level: str = "INFO", fmt: str = "kv") -> None:
    """Install the formatter on the root logger; `fmt` is `kv` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py and trio-websocket log tracebacks at INFO/ERROR for routine network events.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("trio-websocket").setLevel(logging.WARNING)
