"""The system the model test drives: a private nats-server (the model restarts it) and
`kpc-trio run` as a child process logging JSON, observed as an operator observes it: the log
file's events and the Prometheus `/metrics` page."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families

from kpc_trio.nats.embedded import NatsServerProcess
from tests.integration.kpc_harness import make_config
from tests.integration.kpc_process import KpcProcess, running_kpc

HTTP_TIMEOUT = 10.0


@attrs.define
class LogFollower:
    """The JSON events a log file gained since the last call (a partial last line waits)."""

    path: Path
    _offset: int = 0

    def new_events(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as log_file:
            log_file.seek(self._offset)
            data = log_file.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        events = []
        for line in complete.decode(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a traceback printed outside the logger
                events.append({"event": "unstructured_output", "level": "error", "line": line})
        return events


@attrs.define
class ModelSystem:
    nats: NatsServerProcess
    kpc: KpcProcess
    log: LogFollower

    @property
    def mqtt_port(self) -> int:
        return self.kpc.ports["mqtt_tcp"]

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the `/metrics` page (0 when the series does not exist yet)."""
        url = f"http://127.0.0.1:{self.kpc.ports['management']}/metrics"
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            page = response.read().decode()
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0


@contextlib.contextmanager
def running_system(folder: Path) -> Iterator[ModelSystem]:
    with NatsServerProcess() as nats:
        config = make_config(folder, nats.url, "logging: {format: json}\n")
        log_path = folder / "kpc.log"
        with running_kpc(config.source, log_path, {"NATS_URLS": nats.url}) as kpc:
            yield ModelSystem(nats, kpc, LogFollower(log_path))
