"""`kpc-trio run` as a real child process, for tests of signals, exit codes and startup checks.

The configuration uses port 0 everywhere; the bound ports are read from the `kpc_started` log
event (JSON log format), so there is no window in which another process could take them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from tests.integration.internal_errors import watch_child_log

STARTUP_TIMEOUT = 20.0


class KpcProcessError(Exception):
    """The child process did not start as expected; the message carries its log tail."""


def kpc_command(*args: str) -> list[str]:
    """The `kpc-trio` console script, run with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "kpc_trio", *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without KPC variables a developer may have set, plus `extra`."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("KAA_", "APP_CONFIG_PATH", "NATS_URLS"))}
    # No load balancer watches /ready here: a SIGTERM need not wait for one (tests may set it).
    return {"SERVICE_SHUTDOWN_UNREADY_DELAY": "0s", **env, **extra}


@attrs.define
class KpcProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = attrs.field(factory=dict)

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events written so far (lines that are not JSON are skipped)."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events

    def named(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.events() if entry.get("event") == event]

    def send_signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _await_started(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            started = self.named("kpc_started")
            if started:
                self.ports = {key.removesuffix("_port"): value
                              for key, value in started[0].items() if key.endswith("_port")}
                return
            if self.process.poll() is not None:
                raise KpcProcessError(f"kpc-trio exited with {self.process.returncode} during "
                                      f"startup:\n{self.log_tail()}")
            time.sleep(0.02)
        raise KpcProcessError(f"kpc-trio did not log kpc_started within {STARTUP_TIMEOUT}s:\n"
                              f"{self.log_tail()}")


@contextlib.contextmanager
def running_kpc(config_path: str, log_path: Path, env: Mapping[str, str],
                command: tuple[str, ...] = ("run",)) -> Iterator[KpcProcess]:
    """Start `kpc-trio run` (or `command`) and wait until it listens; killed at exit if still
    running.

    The configuration must select `logging.format: json`. The log goes to a file, not a pipe
    (an unread pipe would block the service once full).
    """
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            kpc_command("--config", config_path, *command), env=child_env(env),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    kpc = KpcProcess(process, log_path)
    watch_child_log(log_path)
    try:
        kpc._await_started()
        yield kpc
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
