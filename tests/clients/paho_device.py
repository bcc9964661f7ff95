"""A device built on paho-mqtt, the client the official Kaa Python library uses.

paho runs its network loop in a thread; the blocking calls here are meant for
`trio.to_thread.run_sync` (see `Device` helpers in tests) or plain threads.
"""

from __future__ import annotations

import queue
import ssl
import threading
from typing import Any

import attrs
import paho.mqtt.client as mqtt


@attrs.frozen
class Received:
    topic: str
    payload: bytes
    qos: int


class PahoDevice:
    def __init__(
        self,
        port: int,
        *,
        client_id: str = "",
        host: str = "127.0.0.1",
        transport: str = "tcp",
        protocol: int = mqtt.MQTTv311,
        keepalive: int = 60,
        tls: ssl.SSLContext | None = None,
        ws_path: str = "/ws",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
            transport=transport, clean_session=True,
        )
        if transport == "websockets":
            self.client.ws_set_options(path=ws_path)
        if tls is not None:
            self.client.tls_set_context(tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connack: queue.Queue[Any] = queue.Queue()
        self._disconnected = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._host, self._port, self._keepalive = host, port, keepalive

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(message.topic, bytes(message.payload), message.qos))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack.put(reason)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._disconnected.set()

    def connect(self, timeout: float = 10.0) -> int:
        """Connect and return the CONNACK return code (0 = accepted)."""
        self.client.connect(self._host, self._port, keepalive=self._keepalive)
        self.client.loop_start()
        reason = self._connack.get(timeout=timeout)
        return int(reason.value) if hasattr(reason, "value") else int(reason)

    def publish(self, topic: str, payload: bytes, qos: int = 0, timeout: float = 10.0) -> None:
        """Publish and wait until the server acknowledged it (PUBACK / PUBCOMP for QoS 1/2)."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=timeout)
        if not info.is_published():
            raise TimeoutError(f"no acknowledgement for {topic} (qos {qos})")

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        self.client.subscribe(topic_filter, qos)

    def expect(self, timeout: float = 10.0) -> Received:
        return self.messages.get(timeout=timeout)

    def expect_none(self, timeout: float = 0.5) -> None:
        try:
            got = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {got}")

    def wait_disconnected(self, timeout: float = 10.0) -> bool:
        return self._disconnected.wait(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
