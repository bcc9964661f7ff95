"""QoS 1 load from real paho devices, with a record of what the server acknowledged.

Each `CountingPublisher` publishes numbered payloads (`<name>-<n>`) from its own thread, keeping
at most `window` messages unacknowledged (paho queues without bound otherwise, which would hide
the server's backpressure inside the test process).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable

import paho.mqtt.client as mqtt

from tests.clients.paho_device import PahoDevice

#: How long the publishing thread waits for the oldest acknowledgement before checking `stop`.
_ACK_POLL = 0.05


class CountingPublisher:
    def __init__(self, device: PahoDevice, topic: str, name: str, *, window: int = 20) -> None:
        self.name = name
        self._device = device
        self._topic = topic
        self._window = window
        self._acknowledged: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"publisher-{name}", daemon=True)
        self.published = 0
        #: The longest time from a publish to its PUBACK seen so far (to within _ACK_POLL).
        self.longest_ack_delay = 0.0

    @property
    def acknowledged(self) -> list[bytes]:
        """Payloads whose PUBACK arrived so far."""
        with self._lock:
            return list(self._acknowledged)

    def start(self) -> CountingPublisher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop publishing; acknowledgements arriving until then are still recorded."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        in_flight: collections.deque[tuple[mqtt.MQTTMessageInfo, bytes, float]] = (
            collections.deque())
        while not self._stop.is_set():
            self._harvest(in_flight)
            if len(in_flight) >= self._window:
                _wait_quietly(in_flight[0][0])
                continue
            payload = f"{self.name}-{self.published}".encode()
            info = self._device.client.publish(self._topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # the connection is gone: what was acknowledged stays recorded
            self.published += 1
            in_flight.append((info, payload, time.monotonic()))
        self._harvest(in_flight)

    def _harvest(self, in_flight: collections.deque[tuple[mqtt.MQTTMessageInfo, bytes, float]]
                 ) -> None:
        done = [entry for entry in in_flight if entry[0].is_published()]
        now = time.monotonic()
        for entry in done:
            in_flight.remove(entry)
            self.longest_ack_delay = max(self.longest_ack_delay, now - entry[2])
        with self._lock:
            self._acknowledged.extend(payload for _, payload, _ in done)


def _wait_quietly(info: mqtt.MQTTMessageInfo) -> None:
    try:
        info.wait_for_publish(_ACK_POLL)
    except (RuntimeError, ValueError):  # paho: the message can no longer be sent
        time.sleep(_ACK_POLL)  # no busy loop while the connection is gone


def all_acknowledged(publishers: Iterable[CountingPublisher]) -> list[bytes]:
    return [payload for publisher in publishers for payload in publisher.acknowledged]
