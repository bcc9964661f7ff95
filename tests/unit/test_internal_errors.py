"""The no-internal-error check of the integration and robustness tests finds what it must."""

from __future__ import annotations

import json
import logging
import sys

from tests.integration.internal_errors import internal_log_lines, internal_records

NONE: frozenset[str] = frozenset()


def record(event: str, level: int = logging.INFO, *, logger: str = "kpc_trio.session",
           traceback: bool = False) -> logging.LogRecord:
    exc_info = None
    if traceback:
        try:
            raise RuntimeError("bug")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord(logger, level, __file__, 1, event, None, exc_info)


def line(event: str, level: str = "info", **fields: str) -> str:
    return json.dumps({"level": level, "logger": "kpc_trio.session", "event": event, **fields})


def test_records_session_failed_tracebacks_and_errors_are_internal() -> None:
    records = [record("client_connected"), record("slow_consumer", logging.WARNING),
               record("session_failed", logging.INFO),
               record("odd", logging.WARNING, traceback=True),
               record("nats_handler_failed", logging.ERROR),
               record("sim_failure", logging.ERROR, logger="kpc_trio.simulator.extension"),
               record("paho", logging.ERROR, logger="paho")]
    found = internal_records(records, NONE)
    assert [text.split()[1] for text in found] == ["session_failed", "odd",
                                                   "nats_handler_failed"]
    assert "with a traceback" in found[1]


def test_declared_events_are_not_internal_even_with_a_traceback() -> None:
    records = [record("nats_handler_failed", logging.ERROR, traceback=True)]
    assert internal_records(records, frozenset({"nats_handler_failed"})) == []


def test_json_log_lines_and_bare_tracebacks() -> None:
    text = "\n".join([
        line("kpc_started"), line("connection_refused", "warning"),
        line("session_failed", "error", exc="Traceback ..."), line("tls_broken", "error"),
        line("client_disconnected", "info", exc="Traceback ..."),
        "Traceback (most recent call last):", "  File x", "not json, no traceback",
    ])
    found = internal_log_lines(text, frozenset({"tls_broken"}))
    assert [entry[:40] for entry in found] == [
        line("session_failed", "error", exc="Traceback ...")[:40],
        line("client_disconnected", "info", exc="Traceback ...")[:40],
        "Traceback (most recent call last):",
    ]
