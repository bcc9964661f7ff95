"""What every simulated Kaa service shares: how it attaches to NATS and reads Avro messages."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from kpc_trio.kaa import records
from kpc_trio.logs import get_logger

log = get_logger(__name__)

R = TypeVar("R", bound=records.Record)

# Starts a reply task owned by the simulator's loop; replies run concurrently so a delayed
# answer does not hold back the next request on the same subscription.
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class SimulatedService(Protocol):
    async def attach(self, nc: NatsClient, spawn: Spawn) -> None:
        """Subscribe to the service's subjects on `nc`."""


def decode_message(record_type: type[R], msg: Msg) -> R | None:
    """The record in `msg`, or None (logged) when KPC sent bytes that do not match the schema."""
    try:
        return records.decode(record_type, msg.data)
    except records.RecordDecodeError as exc:
        log.warning("sim_undecodable_message", subject=msg.subject,
                    record=record_type.__name__, reason=str(exc))
        return None


def now_ms() -> int:
    return int(time.time() * 1000)
