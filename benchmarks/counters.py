"""Independent message counters, each in its own process so counting never slows the server.

kpc_trio is counted where its work ends: `ClientData` arriving on NATS (a raw-protocol
subscriber).
The plain brokers are counted by an MQTT client subscribed to `kp1/#` (ingest-only cases
publish elsewhere); every relayed PUBLISH of a case has the same size, so that counter counts
bytes and divides.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import socket
import time
from collections.abc import Callable

import attrs

from benchmarks.loadgen import CONNACK_SIZE
from benchmarks.nats_frames import NatsFrameCounter, connect_nats
from benchmarks.transports import HOST, RECEIVE_SIZE
from benchmarks.workload import connect_packet, subscribe_packet

PUBLISH_INTERVAL = 0.02  # how often the child copies its count into shared memory
READY_TIMEOUT = 15.0
SUBACK_SIZE = 5
COUNTED_TOPICS = "kp1/#"


class CounterError(Exception):
    """The counter process could not subscribe."""


@attrs.define
class Counter:
    """Parent-side handle: the count so far and when the last counted message arrived."""

    process: multiprocessing.Process
    count_value: multiprocessing.sharedctypes.Synchronized[int]
    last_value: multiprocessing.sharedctypes.Synchronized[float]
    ready: multiprocessing.synchronize.Event

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def count(self) -> int:
        return self.count_value.value

    @property
    def last_arrival(self) -> float:
        """`time.monotonic()` of the last counted message (0 before the first)."""
        return self.last_value.value

    def wait_for(self, expected: int, stall: float, timeout: float) -> int:
        """Block until `expected` messages were counted, nothing arrived for `stall` s, or
        `timeout`; returns the count (a QoS 0 broker may drop some)."""
        deadline = time.monotonic() + timeout
        seen, progress_at = -1, time.monotonic()
        while self.count < expected and time.monotonic() < deadline:
            if self.count != seen:
                seen, progress_at = self.count, time.monotonic()
            elif time.monotonic() - progress_at > stall:
                break
            time.sleep(PUBLISH_INTERVAL)
        time.sleep(2 * PUBLISH_INTERVAL)  # let the child publish its final figures
        return self.count

    def close(self) -> None:
        self.process.terminate()
        self.process.join(5)


def start_nats_counter(url: str, subject: str) -> Counter:
    return _start(_count_nats, url, subject)


def start_mqtt_counter(port: int, message_size: int) -> Counter:
    return _start(_count_mqtt, port, message_size)


def _start(target: object, *args: object) -> Counter:
    context = multiprocessing.get_context("fork")
    count = context.Value("q", 0)
    last = context.Value("d", 0.0)
    ready = context.Event()
    process = context.Process(target=target, args=(*args, count, last, ready), daemon=True)
    process.start()
    if not ready.wait(READY_TIMEOUT):
        process.terminate()
        raise CounterError(f"counter {getattr(target, '__name__', target)} did not subscribe")
    return Counter(process, count, last, ready)


def _count_nats(url: str, subject: str, count: multiprocessing.sharedctypes.Synchronized[int],
                last: multiprocessing.sharedctypes.Synchronized[float],
                ready: multiprocessing.synchronize.Event) -> None:
    """A plain-socket NATS subscriber that only counts `MSG` frames.

    nats-py would spend ~10 µs per message (a Msg object and a callback each): at 60k msg/s most
    of a core taken from the server being measured on this 2-core machine. Counting frames on the
    raw protocol costs a tenth of that, like the byte-counting MQTT counter below. Not
    `kpc_trio.nats.protocol.ServerStreamParser` either: it builds two objects per message and
    validates every frame (2.5 against 0.7 µs per message here).
    """
    sock = connect_nats(url, subject)
    frames = NatsFrameCounter(sock)
    while not frames.ponged:
        frames.feed(sock.recv(RECEIVE_SIZE))
    ready.set()
    _tally_until_closed(sock, frames.feed, count, last)


def _count_mqtt(port: int, message_size: int,
                count: multiprocessing.sharedctypes.Synchronized[int],
                last: multiprocessing.sharedctypes.Synchronized[float],
                ready: multiprocessing.synchronize.Event) -> None:
    sock = socket.create_connection((HOST, port))
    sock.sendall(connect_packet("bench-counter") + subscribe_packet(COUNTED_TOPICS))
    handshake = b""
    while len(handshake) < CONNACK_SIZE + SUBACK_SIZE:
        handshake += sock.recv(RECEIVE_SIZE)
    ready.set()
    received = len(handshake) - CONNACK_SIZE - SUBACK_SIZE  # publishes that came with the SUBACK

    def tally(data: bytes) -> int:
        nonlocal received
        received += len(data)
        return received // message_size

    _tally_until_closed(sock, tally, count, last, initial=received // message_size)


def _tally_until_closed(sock: socket.socket, tally: Callable[[bytes], int],
                        count: multiprocessing.sharedctypes.Synchronized[int],
                        last: multiprocessing.sharedctypes.Synchronized[float],
                        initial: int = 0) -> None:
    """Receive until the server closes, `tally` turning each chunk into the count so far; the
    figures go to the parent every PUBLISH_INTERVAL."""
    seen = [initial, 0.0]
    published_at = 0.0
    # The timeout makes the last figures visible even when the stream goes quiet.
    sock.settimeout(PUBLISH_INTERVAL)
    while True:
        try:
            data = sock.recv(RECEIVE_SIZE)
        except TimeoutError:
            data = None
        if data == b"":
            return
        now = time.monotonic()
        if data:
            seen = [tally(data), now]
        if now - published_at >= PUBLISH_INTERVAL:
            _publish(count, last, seen)
            published_at = now


def _publish(count: multiprocessing.sharedctypes.Synchronized[int],
             last: multiprocessing.sharedctypes.Synchronized[float],
             seen: list[float]) -> None:
    if count.value == 0 and seen[0] == 0:
        return
    count.value = int(seen[0])
    last.value = seen[1]
