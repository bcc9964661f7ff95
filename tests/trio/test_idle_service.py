"""The service's idle disconnection on trio's mock clock: a realistic 5-minute duration, no waiting.

Real NATS and paho threads cannot run on the autojump clock (it jumps while threads work), so this
drives the pieces the service wires together, each the real one: the YAML configuration's
per-appversion policy (`Config.disconnect_policy`), the service's hub and its endpoint lifecycle,
`run_idle_sweeper` and `ConnectivityEvents`, whose Avro `DisconnectedEvent`s reach the in-memory
NATS. It proves that a configured duration of 300 s turns into exactly one event at exactly the
deadline (nothing a second before), that one sweep reports all endpoints due together, that
activity postpones the deadline, and that an endpoint still held by a connected session stops
being routed to it. tests/integration/test_idle_disconnect.py covers the same path over real NATS
with 1 s durations.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import trio
import trio.testing

from kpc_trio.config import Config, load_config
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.kaa import records, subjects
from kpc_trio.presence import run_idle_sweeper
from kpc_trio.service import KpcService
from tests.fake_nats import FakeNats

CONFIG = """
kaa:
  applications:
    lorawan:
      disconnect:
        idle: {enabled: true, duration: 5m}
      versions:
        lorawan_v1:
          allowed-extension-instances: [dcx]
        lorawan_v2:
          allowed-extension-instances: [dcx]
          disconnect: {on-client-disconnect: false}
  extension-instances:
    dcx: {endpoint-aware: true}
"""
IDLE = 300.0


@attrs.define(eq=False)
class ConnectedSession:
    """Stands in for a Session whose client is still connected."""

    forgotten: list[str] = attrs.field(factory=list)

    def forget_endpoint(self, endpoint_id: str) -> None:
        self.forgotten.append(endpoint_id)


def disconnected_events(nats: FakeNats) -> list[tuple[float, dict[str, str]]]:
    subject = subjects.disconnected_event("kpc")
    return [(at, records.decode(records.DisconnectedEvent, message.payload).endpoints)
            for at, message in zip(nats.published_at, nats.published, strict=True)
            if message.subject == subject]


def load(tmp_path: Path) -> Config:
    path = tmp_path / "service-config.yml"
    path.write_text(CONFIG)
    return load_config(str(path), env={})


async def test_configured_idle_duration_disconnects_at_exactly_the_deadline(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    config = load(tmp_path)
    assert config.disconnect_policy("lorawan_v2").idle_timeout == IDLE  # inherited override
    nats = FakeNats()
    service = KpcService(config)
    endpoints = service.hub.endpoints
    events = ConnectivityEvents(nats, kpc_instance="kpc", replica_id="kpc-test")
    session, gateway_session = ConnectedSession(), ConnectedSession()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run)
        nursery.start_soon(run_idle_sweeper, endpoints, events.publish)
        start = trio.current_time()
        events.publish(endpoints.identified("sensor-1", session, "lorawan_v1", start))
        events.publish(endpoints.identified("gateway-device", gateway_session, "lorawan_v2",
                                            start))
        # its client left; it stays online until idle
        assert not endpoints.client_gone(gateway_session, ["gateway-device"])
        await trio.sleep(100)
        events.publish(endpoints.identified("sensor-2", session, "lorawan_v1",
                                            trio.current_time()))
        await trio.sleep(IDLE - 100 - 1)
        assert disconnected_events(nats) == []  # a second before the deadline
        await trio.sleep(1 + 100 + 50)
        nursery.cancel_scope.cancel()
    assert disconnected_events(nats) == [
        (start + IDLE, {"sensor-1": "lorawan_v1", "gateway-device": "lorawan_v2"}),
        (start + 100 + IDLE, {"sensor-2": "lorawan_v1"}),
    ]
    assert session.forgotten == ["sensor-1", "sensor-2"] and gateway_session.forgotten == []
    assert service.hub.session_for_endpoint("sensor-1") is None
    assert service.hub.endpoint_count == 0
