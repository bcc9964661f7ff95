"""Shared fixtures. Keep this file small: one fixture per shared resource."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kpc_trio.nats.embedded import NatsServerProcess


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServerProcess]:
    """One nats-server for the whole run: tests must use their own subjects and never stop it."""
    with NatsServerProcess() as server:
        yield server


@pytest.fixture
def nats_server_factory() -> Iterator[Callable[..., NatsServerProcess]]:
    """Start private nats-servers (e.g. to stop and restart one); all are stopped at teardown.

    Keyword arguments go to `NatsServerProcess` (`user=`, `password=`, `port=`, `config=`).
    """
    servers: list[NatsServerProcess] = []

    def start(**options: object) -> NatsServerProcess:
        server = NatsServerProcess(**options)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
