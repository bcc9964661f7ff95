"""A real nats-server cluster on loopback: members joined by routes, for failover tests."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

from kpc_trio.nats.embedded import HOST, NatsServerProcess

FORMATION_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def client_urls_seen(port: int) -> list[str]:
    """The `connect_urls` of the INFO the member on `port` greets a client with."""
    with socket.create_connection((HOST, port), timeout=2) as connection:
        data = b""
        while b"\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return []
            data += chunk
    info = json.loads(data.split(b"\r\n", 1)[0].removeprefix(b"INFO "))
    return list(info.get("connect_urls", []))


@contextlib.contextmanager
def nats_cluster(size: int = 3, extra_config: str = "") -> Iterator[list[NatsServerProcess]]:
    """`size` members routed to each other; yields once every member lists every member."""
    route_ports = [free_port() for _ in range(size)]
    routes = ", ".join(f"nats-route://{HOST}:{port}" for port in route_ports)
    members = [
        NatsServerProcess(config=(
            f"server_name: member{index}\n"
            f"cluster {{ name: kpc-test, listen: \"{HOST}:{port}\", routes: [{routes}] }}\n"
            + extra_config))
        for index, port in enumerate(route_ports)
    ]
    try:
        for member in members:
            member.launch()
        for member in members:
            member.await_ready()
        deadline = time.monotonic() + FORMATION_TIMEOUT
        while not all(len(client_urls_seen(m.port)) == size for m in members):
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not form within {FORMATION_TIMEOUT}s")
            time.sleep(0.05)
        yield members
    finally:
        for member in members:
            member.stop()
