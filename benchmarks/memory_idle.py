"""Resident memory of a `kpc-trio run` process holding idle MQTT connections.

    python -m benchmarks.memory_idle [--connections 1000 10000] [--publish-bytes N]

Starts a nats-server and KPC (a real process, JSON logs, port 0), measures VmRSS when idle,
then after each step of raw MQTT 3.1.1 clients that CONNECT (keepalive 0), get their CONNACK and
stay silent. With `--publish-bytes`, each sends one QoS 0 PUBLISH of that many payload bytes
after its CONNACK first (a device that reported, then went quiet: what a connection keeps of
its last read shows). Steps above the open-file limit (minus a margin) are skipped and reported.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import trio

from kpc_trio.mqtt import codec
from kpc_trio.mqtt.packets import Connect, Publish
from kpc_trio.nats.embedded import NatsServerProcess
from tests.integration.kpc_harness import make_config
from tests.integration.kpc_process import running_kpc

CONNECT_CONCURRENCY = 100
FD_MARGIN = 200  # descriptors this process needs besides the clients
SETTLE_SECONDS = 2.0
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
#: Not a kp1 topic: KPC refuses it (logged once per connection) after reading it whole.
IDLE_TOPIC = "idle/telemetry"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def open_idle_clients(port: int, count: int, first_id: int,
                            into: list[trio.SocketStream], publish_bytes: int = 0) -> None:
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def connect_one(n: int) -> None:
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(codec.encode(Connect("MQTT", 4, f"idle-{n}", True, 0)))
            connack = b""
            while len(connack) < len(CONNACK_ACCEPTED):
                connack += await stream.receive_some(4 - len(connack))
            if connack != CONNACK_ACCEPTED:
                raise RuntimeError(f"client idle-{n} refused: {connack.hex()}")
            if publish_bytes:
                await stream.send_all(codec.encode(Publish(IDLE_TOPIC, bytes(publish_bytes))))
            into.append(stream)

    async with trio.open_nursery() as nursery:
        for n in range(first_id, first_id + count):
            nursery.start_soon(connect_one, n)


async def measure(port: int, pid: int, steps: list[int], publish_bytes: int) -> None:
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    await trio.sleep(SETTLE_SECONDS)
    baseline = rss_kib(pid)
    print(f"baseline (no clients): {baseline / 1024:.1f} MiB RSS")
    clients: list[trio.SocketStream] = []
    try:
        for total in steps:
            if total + FD_MARGIN > fd_limit:
                print(f"{total} connections: skipped (open-file limit {fd_limit}; raise ulimit -n)")
                continue
            started = time.perf_counter()
            await open_idle_clients(port, total - len(clients), len(clients), clients,
                                    publish_bytes)
            connected_in = time.perf_counter() - started
            await trio.sleep(SETTLE_SECONDS)
            rss = rss_kib(pid)
            print(f"{total} idle connections: {rss / 1024:.1f} MiB RSS, "
                  f"{(rss - baseline) / total:.1f} KiB per connection "
                  f"(connected in {connected_in:.1f} s)")
    finally:
        for stream in clients:
            await stream.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[1000, 10000],
                        help="cumulative connection counts to measure at")
    parser.add_argument("--publish-bytes", type=int, default=0,
                        help="payload of one QoS 0 PUBLISH each client sends before going idle")
    args = parser.parse_args()
    with NatsServerProcess() as nats, tempfile.TemporaryDirectory() as workdir:
        # INFO: the bound ports come from the kpc_started event (the log goes to a file).
        config = make_config(Path(workdir), nats.url, "logging: {format: json}\n")
        with running_kpc(config.source, Path(workdir) / "kpc.log",
                         {"NATS_URLS": nats.url}) as kpc:
            trio.run(measure, kpc.ports["mqtt_tcp"], kpc.process.pid, sorted(args.connections),
                     args.publish_bytes)


if __name__ == "__main__":
    main()
