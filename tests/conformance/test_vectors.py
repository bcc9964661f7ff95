"""Every conformance vector against a live KPC (real nats-server, simulated Kaa side), over TCP
and over WebSocket: the bytes are the vectors' own, the replies compared byte for byte."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator.credentials import BasicCredentials
from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from tests.conformance.steps import (
    AnyOrder,
    Closed,
    Expect,
    Relayed,
    Send,
    Step,
    Subprotocol,
    Vector,
)
from tests.conformance.vectors import VECTORS
from tests.conformance.wire import (
    SERVER_DEADLINE,
    TcpWire,
    WebSocketWire,
    Wire,
    split_packets,
    wire_bytes,
)
from tests.integration.kpc_harness import ENDPOINTS, make_config
from tests.integration.waiting import eventually, logged

WEBSOCKET = {
    "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_ENABLED": "true",
    "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_HOST": "127.0.0.1",
    "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_PORT": "0",
}


@pytest.fixture
async def kaa(nats_server) -> AsyncIterator[SimulatedKaa]:
    user = BasicCredentials(username="user", password="pass", credentials_id="cred-user")
    async with open_simulated_kaa(nats_server.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx", "cex", "tsx"),
                                  basic_credentials=[user]) as kaa:
        yield kaa


class Device:
    """One connection of a vector: the bytes received and not yet matched by a step."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.received = bytearray()
        self.eof = False

    async def read_at_least(self, count: int) -> None:
        """Read until `count` bytes are held or the server closed (or the deadline passed)."""
        with trio.move_on_after(SERVER_DEADLINE):
            while len(self.received) < count and not self.eof:
                data = await self.wire.receive_some()
                self.eof = not data
                self.received += data

    def take(self, count: int) -> bytes:
        data = bytes(self.received[:count])
        del self.received[:count]
        return data


def _hex(data: bytes) -> str:
    return data.hex(" ") or "(nothing)"


class Run:
    def __init__(self, vector: Vector, transport: str, kpc: KpcService, kaa: SimulatedKaa,
                 caplog: pytest.LogCaptureFixture) -> None:
        self.vector = vector
        self.transport = transport
        self.kpc = kpc
        self.kaa = kaa
        self.caplog = caplog
        self.devices: dict[str, Device] = {}
        self.closes_seen: Counter[str] = Counter()  # close reasons matched by Closed steps

    async def device(self, name: str) -> Device:
        if name not in self.devices:
            if self.transport == "tcp":
                wire: Wire = await TcpWire.open(self.kpc.ports["mqtt_tcp"])
            else:
                wire = await WebSocketWire.open(self.kpc.ports["mqtt_websocket"])
            self.devices[name] = Device(wire)
        return self.devices[name]

    async def step(self, index: int, step: Step) -> None:
        where = f"step {index} {step!r}"
        if isinstance(step, Relayed):
            def count() -> int:
                return sum(data.payload == step.payload
                           for data in self.kaa.received(step.extension))
            await eventually(lambda: count() >= step.count, timeout=SERVER_DEADLINE)
            assert count() == step.count, where
            return
        device = await self.device(step.on)
        if isinstance(step, Send):
            await self.send(device, step)
        elif isinstance(step, Expect):
            expected = wire_bytes(step.data)
            await device.read_at_least(len(expected))
            got = device.take(len(expected))
            assert got == expected, f"{where}: got {_hex(got)}, expected {_hex(expected)}"
        elif isinstance(step, AnyOrder):
            packets = [wire_bytes(packet) for packet in step.packets]
            await device.read_at_least(sum(map(len, packets)))
            got = device.take(sum(map(len, packets)))
            assert sorted(split_packets(got)) == sorted(packets), (
                f"{where}: got {_hex(got)}, expected {[_hex(p) for p in packets]} in any order")
        elif isinstance(step, Closed):
            await device.read_at_least(sys.maxsize)  # until the server closes
            assert device.eof, f"{where}: the connection is still open"
            assert not device.received, f"{where}: got {_hex(bytes(device.received))} first"
            # Each close its own log line: a second close for the same reason needs a second.
            self.closes_seen[step.reason] += 1
            await eventually(lambda: self.close_reasons().count(step.reason)
                             >= self.closes_seen[step.reason], timeout=SERVER_DEADLINE)
            await device.wire.aclose()
        else:
            assert isinstance(step, Subprotocol)
            if isinstance(device.wire, WebSocketWire):
                assert device.wire.subprotocol == step.name, where

    async def send(self, device: Device, step: Send) -> None:
        data = wire_bytes(step.data)
        if step.text:
            await device.wire.send_text(data)
            return
        piece = step.piece or len(data)
        for start in range(0, len(data), piece):
            try:
                await device.wire.send(data[start:start + piece])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # closed by the server: the next step sees it

    def close_reasons(self) -> list[object]:
        return [fields.get("reason") for fields in logged(self.caplog, "client_disconnected")]


def _cases() -> list[object]:
    return [pytest.param(vector, transport, id=f"{transport}-{vector.name}")
            for vector in VECTORS for transport in vector.transports]


@pytest.mark.parametrize(("vector", "transport"), _cases())
async def test_vector(vector: Vector, transport: str, kaa: SimulatedKaa, nats_server,
                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # close reasons are logged at info
    config = make_config(tmp_path, nats_server.url, env={**WEBSOCKET, **dict(vector.env)})
    async with open_kpc(config) as kpc:
        run = Run(vector, transport, kpc, kaa, caplog)
        try:
            for index, step in enumerate(vector.steps):
                await run.step(index, step)
            for name, device in run.devices.items():
                assert not device.received, f"device {name} got {_hex(bytes(device.received))}"
            # Whatever the vector did, the service still takes a new device.
            await run.step(-1, Send("10 11 00 04 'MQTT' 04 02 00 00 00 05 'probe'", "probe"))
            await run.step(-1, Expect("20 02 00 00", "probe"))
        finally:
            for device in run.devices.values():
                await device.wire.aclose()
    failures = [record for record in caplog.records
                if record.levelname in ("ERROR", "CRITICAL") or record.exc_info
                or record.getMessage() == "session_failed"]
    assert not failures, [record.getMessage() for record in failures]
