"""One NATS connection (`Link`): writes wait their turn, and a connection lost meanwhile fails
them instead of leaving a confirmation to wait for a PONG that cannot come."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kpc_trio.nats.connection import ConnectionLostError, Link
from kpc_trio.nats.protocol import ServerInfo, ServerStreamParser, parse_url


async def test_a_write_waiting_for_its_turn_fails_once_the_connection_is_lost() -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()  # a write waits for the server to read
    link = Link(ours, parse_url("nats://127.0.0.1:4222"), ServerStreamParser(), ServerInfo())
    outcome: list[BaseException] = []

    async def confirm_after_the_first_write() -> None:
        try:
            await link.confirm(b"PUB b 1\r\nb\r\n")
        except ConnectionLostError as exc:
            outcome.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.write, b"PUB a 1\r\na\r\n")
            await trio.testing.wait_all_tasks_blocked()  # the first write holds the lock
            nursery.start_soon(confirm_after_the_first_write)
            await trio.testing.wait_all_tasks_blocked()  # the confirmation waits for it
            link.lose()  # e.g. the watchdog: no PONG within CONFIRM_TIMEOUT
            assert await theirs.receive_some() == b"PUB a 1\r\na\r\n"
            # Nothing more is written to the lost connection, and the confirmation fails.
            with trio.move_on_after(0.2):
                data = await theirs.receive_some()
                pytest.fail(f"written to a lost connection: {data!r}")
    assert len(outcome) == 1
