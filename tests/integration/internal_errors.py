"""No internal error, anywhere: a test fails when the service it ran logged one.

An internal error is `session_failed`, any traceback, or any error-level event of KPC that the
test did not declare with `@pytest.mark.expected_errors("event", ...)` (a test that provokes
one on purpose: a NATS server that answers garbage, a handler made to fail). Declared events
may also carry a traceback.

Both ways tests run KPC are covered: in process (`open_kpc`: the log records of the `kpc_trio`
loggers, simulated Kaa services excepted, through pytest's `caplog`) and as a child process
(`running_kpc` registers its JSON log file here). The `no_internal_error` fixture is autouse in
the integration and robustness conftests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

#: Logged when a session ends on a bug of KPC's: never expected unless declared.
ALWAYS_INTERNAL = frozenset({"session_failed"})
TRACEBACK = "Traceback (most recent call last)"

_child_logs: list[Path] = []


def watch_child_log(path: Path) -> None:
    """Check the JSON log of a `kpc-trio` child process when the running test ends."""
    _child_logs.append(path)


def _is_service_record(record: logging.LogRecord) -> bool:
    # The simulated Kaa services are the test's side, not the service's.
    return record.name.startswith("kpc_trio") and not record.name.startswith(
        "kpc_trio.simulator")


def _internal(event: str, level: str, traceback: bool, expected: frozenset[str]) -> bool:
    if event in expected:
        return False
    return event in ALWAYS_INTERNAL or traceback or level in ("error", "critical")


def internal_records(records: Iterable[logging.LogRecord],
                     expected: frozenset[str]) -> list[str]:
    """The internal errors among in-process log records, one line each."""
    return [
        f"{record.levelname.lower()} {record.getMessage()} "
        f"{getattr(record, 'kpc_fields', {})}" + (" (with a traceback)" if record.exc_info else "")
        for record in records
        if _is_service_record(record) and _internal(
            record.getMessage(), record.levelname.lower(), bool(record.exc_info), expected)
    ]


def internal_log_lines(text: str, expected: frozenset[str]) -> list[str]:
    """The internal errors in a JSON log (one event per line; anything else a process printed,
    such as a bare traceback on stderr, only counts if it is a traceback)."""
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if TRACEBACK in line:
                found.append(line)
            continue
        if not isinstance(event, dict):
            continue
        if str(event.get("logger", "")).startswith("kpc_trio.simulator"):
            continue
        if _internal(str(event.get("event")), str(event.get("level")), "exc" in event,
                     expected):
            found.append(line)
    return found


def expected_errors(item: pytest.Item) -> frozenset[str]:
    return frozenset(event for marker in item.iter_markers("expected_errors")
                     for event in marker.args)


@pytest.fixture(autouse=True)
def no_internal_error(request: pytest.FixtureRequest,
                      caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if KPC logged an internal error while it ran (see the module docstring).

    Autouse fixtures are set up first, so this one is torn down last: what the service logs
    while it shuts down counts too."""
    children_before = len(_child_logs)
    yield
    expected = expected_errors(request.node)
    problems = internal_records(
        (record for phase in ("setup", "call", "teardown")
         for record in caplog.get_records(phase)),  # type: ignore[arg-type]
        expected)
    for path in _child_logs[children_before:]:
        if path.exists():
            problems += [f"{path.name}: {line}"
                         for line in internal_log_lines(path.read_text(errors="replace"),
                                                        expected)]
    del _child_logs[children_before:]
    if problems:
        pytest.fail("the service logged internal errors (declare deliberate ones with "
                    "@pytest.mark.expected_errors(\"<event>\")):\n" + "\n".join(problems),
                    pytrace=False)
