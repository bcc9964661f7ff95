"""Throughput of the NATS gateway, counted by an independent nats-py subscriber.

    PYTHONPATH=. python benchmarks/gateway_bench.py [--messages 200000] [--publishers 16]

publish_confirmed: `--publishers` tasks each publish batches of 100 and wait for confirmation.
publish_nowait: one task fires messages, retrying after a checkpoint when the queue is full.
A run counts as finished when the subscriber has seen every message.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import trio
from nats.aio.client import Client
from nats.aio.msg import Msg

from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.nats.gateway import NatsGateway, OutboundMessage, open_nats_gateway

PAYLOAD = b"x" * 100
CONFIRMED_BATCH = 100


class CountingSubscriber:
    """nats-py on its own loop thread, counting what arrives on one subject."""

    def __init__(self, url: str, subject: str) -> None:
        self.count = 0
        self._loop = asyncio.new_event_loop()
        self._client = Client()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._subscribe(url, subject))

    def _run(self, coroutine: Awaitable[None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _subscribe(self, url: str, subject: str) -> None:
        async def count(_msg: Msg) -> None:
            self.count += 1

        await self._client.connect(url)
        await self._client.subscribe(subject, cb=count, pending_msgs_limit=-1,
                                     pending_bytes_limit=-1)
        await self._client.flush()

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


async def publish_confirmed(
    gateway: NatsGateway, subject: str, total: int, publishers: int
) -> None:
    batch = [OutboundMessage(subject, PAYLOAD)] * CONFIRMED_BATCH

    async def publisher(batches: int) -> None:
        for _ in range(batches):
            await gateway.publish_confirmed(batch)

    async with trio.open_nursery() as nursery:
        for _ in range(publishers):
            nursery.start_soon(publisher, total // CONFIRMED_BATCH // publishers)


async def publish_nowait(gateway: NatsGateway, subject: str, total: int, _publishers: int) -> None:
    message = OutboundMessage(subject, PAYLOAD)
    for _ in range(total):
        while not gateway.publish_nowait(message):
            await trio.lowlevel.checkpoint()


Scenario = Callable[[NatsGateway, str, int, int], Awaitable[None]]


async def measure(url: str, name: str, scenario: Scenario, total: int, publishers: int) -> None:
    subscriber = CountingSubscriber(url, name)
    try:
        async with open_nats_gateway([url]) as gateway:
            with trio.fail_after(10):
                while not gateway.connected:
                    await trio.sleep(0.01)
            started = time.perf_counter()
            await scenario(gateway, name, total, publishers)
            published = time.perf_counter() - started
            with trio.fail_after(60):
                while subscriber.count < total:
                    await trio.sleep(0.001)
            received = time.perf_counter() - started
            print(f"{name:18} {total / received:10,.0f} msg/s received "
                  f"({total / published:,.0f} msg/s accepted; {gateway.publish_batches} batches, "
                  f"avg {gateway.published_messages / gateway.publish_batches:.0f} msg/batch)")
    finally:
        subscriber.close()


async def main(total: int, publishers: int) -> None:
    with NatsServerProcess() as server:
        await measure(server.url, "publish_confirmed", publish_confirmed, total, publishers)
        await measure(server.url, "publish_nowait", publish_nowait, total, publishers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--publishers", type=int, default=16)
    args = parser.parse_args()
    trio.run(main, args.messages - args.messages % (CONFIRMED_BATCH * args.publishers),
             args.publishers)
