"""Shared pieces of the end-to-end tests: a KPC configuration, a running service, real devices."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from kpc_trio.config import Config, load_config
from kpc_trio.kaa import records
from kpc_trio.simulator.token_provider import EndpointRecord
from tests.clients.paho_device import PahoDevice

APP = "demo_application"
APP_VERSION = "demo_application_v1"

ENDPOINTS = tuple(
    EndpointRecord(app_name=APP, token=f"token-{n}", endpoint_id=f"endpoint-{n}",
                   token_id=f"token-id-{n}")
    for n in range(1, 5)
)

BASE_CONFIG = f"""
kaa:
  kpc:
    transports:
      mqtt:
        tcp: {{host: 127.0.0.1, port: 0}}
    auth:
      request-timeout: 2
  applications:
    {APP}:
      versions:
        {APP_VERSION}:
          allowed-extension-instances: [dcx, cex, tsx, epmx]
  extension-instances:
    dcx: {{endpoint-aware: true}}
    cex: {{endpoint-aware: true}}
    epmx: {{endpoint-aware: true}}
    tsx:
management: {{port: 0}}
server: {{port: 0}}
"""


def make_config(tmp_path: Path, nats_url: str, extra_yaml: str = "",
                env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "service-config.yml"
    path.write_text(BASE_CONFIG + extra_yaml)
    return load_config(str(path), env={"NATS_URLS": nats_url, **(env or {})})


@contextlib.asynccontextmanager
async def open_device(port: int, **options: Any) -> AsyncIterator[PahoDevice]:
    """A connected paho device; blocking paho calls run in worker threads."""
    device = PahoDevice(port, **options)
    code = await trio.to_thread.run_sync(device.connect)
    assert code == 0, f"CONNACK {code}"
    try:
        yield device
    finally:
        await trio.to_thread.run_sync(device.close)


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking client call in a worker thread."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def push_data(endpoint_id: str | None, resource_path: str, payload: bytes | None, *,
              extension: str = "cex", request_id: int | None = None, status_code: int = 200,
              reason_phrase: str | None = None, timeout: int = 0,
              timestamp: int | None = None) -> records.ExtensionData:
    return records.ExtensionData(
        correlation_id=f"push-{time.monotonic_ns()}",
        timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
        timeout=timeout,
        app_version_name=APP_VERSION,
        extension_instance_name=extension,
        endpoint_id=endpoint_id,
        resource_path=resource_path,
        request_id=request_id,
        payload=payload,
        status_code=status_code,
        reason_phrase=reason_phrase,
    )
