"""A batch counts as confirmed only on a PONG from the connection it was written to."""

from __future__ import annotations

import asyncio

import pytest

from kpc_trio.nats_gateway import _ConnectionLostError, _NatsLink


class _ReconnectingClient:
    """What nats-py looks like once it has begun reconnecting: flush() returns at once (its
    loops are stopped) though no PONG came, and is_connected is False."""

    pending_data_size = 0
    is_connected = False

    async def flush(self, timeout: float) -> None:
        return None


def test_a_flush_while_nats_py_reconnects_is_no_confirmation() -> None:
    link = _NatsLink(("nats://127.0.0.1:4222",), "test", 1.0, lambda connected: None,
                     client=_ReconnectingClient())  # type: ignore[arg-type]

    async def confirm() -> None:
        link._down = asyncio.Event()
        await link._confirm(link._disconnects)

    # Before the fix this passed as a confirmation: messages were acknowledged to devices
    # while NATS had not received them (seen as a rare failure of the NATS restart test).
    with pytest.raises(_ConnectionLostError):
        asyncio.run(confirm())
