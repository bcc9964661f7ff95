"""The service's idle disconnection on trio's mock clock: a realistic 5-minute duration, no waiting.

Real NATS and paho threads cannot run on the autojump clock (it jumps while threads work), so this
drives the pieces the service wires together, each the real one: the YAML configuration's
per-appversion policy (`Config.disconnect_policy`), `IdleTracker`, `run_idle_sweeper`,
`KpcService._on_idle_endpoints`, the `Hub` and `ConnectivityEvents`, whose Avro
`DisconnectedEvent`s are captured by a recording stand-in for the NATS gateway. It proves that a
configured duration of 300 s turns into exactly one event at exactly the deadline (nothing a
second before), that one sweep reports all endpoints due together, that activity postpones the
deadline, and that an endpoint still held by a connected session stops being routed to it.
tests/integration/test_idle_disconnect.py covers the same path over real NATS with 1 s durations.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import trio
import trio.testing

from kpc_trio.config import Config, load_config
from kpc_trio.connectivity import ConnectivityEvents
from kpc_trio.hub import Hub
from kpc_trio.kaa import records, subjects
from kpc_trio.nats.gateway import OutboundMessage
from kpc_trio.presence import IdleTracker, run_idle_sweeper
from kpc_trio.service import KpcService

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


@attrs.define
class RecordingGateway:
    """What ConnectivityEvents publishes, with the (mock) time it was published at."""

    published: list[tuple[float, OutboundMessage]] = attrs.field(factory=list)

    def publish_nowait(self, message: OutboundMessage) -> bool:
        self.published.append((trio.current_time(), message))
        return True

    def disconnected_events(self) -> list[tuple[float, dict[str, str]]]:
        subject = subjects.disconnected_event("kpc")
        assert {message.subject for _, message in self.published} <= {subject}
        return [(at, records.decode(records.DisconnectedEvent, message.payload).endpoints)
                for at, message in self.published]


@attrs.define
class ConnectedSession:
    """Stands in for a Session whose client is still connected."""

    hub: Hub
    forgotten: list[str] = attrs.field(factory=list)

    def forget_endpoint(self, endpoint_id: str) -> None:
        # As Session.forget_endpoint: stop addressing it, and drop the hub route if still ours.
        self.forgotten.append(endpoint_id)
        self.hub.unbind_endpoint(endpoint_id, self)


@attrs.frozen
class EventsContext:
    """The one part of SessionContext that `_on_idle_endpoints` reads."""

    events: ConnectivityEvents


def load(tmp_path: Path) -> Config:
    path = tmp_path / "service-config.yml"
    path.write_text(CONFIG)
    return load_config(str(path), env={})


async def test_configured_idle_duration_disconnects_at_exactly_the_deadline(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    config = load(tmp_path)
    assert config.disconnect_policy("lorawan_v2").idle_timeout == IDLE  # inherited override
    gateway = RecordingGateway()
    service = KpcService(config)
    # The service sets its context when it starts serving; only its events are used here.
    service._context = EventsContext(ConnectivityEvents(  # type: ignore[assignment]
        gateway, kpc_instance="kpc", replica_id="kpc-test"))  # type: ignore[arg-type]
    tracker = IdleTracker(config.disconnect_policy)
    session = ConnectedSession(service.hub)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_idle_sweeper, tracker, service._on_idle_endpoints)
        start = trio.current_time()
        service.hub.bind_endpoint("sensor-1", session)  # type: ignore[arg-type]
        tracker.touch("sensor-1", "lorawan_v1", start)
        tracker.touch("gateway-device", "lorawan_v2", start)
        assert tracker.detach("gateway-device")  # its client left; it stays online until idle
        await trio.sleep(100)
        service.hub.bind_endpoint("sensor-2", session)  # type: ignore[arg-type]
        tracker.touch("sensor-2", "lorawan_v1", trio.current_time())
        await trio.sleep(IDLE - 100 - 1)
        assert gateway.published == []  # a second before the deadline
        await trio.sleep(1 + 100 + 50)
        nursery.cancel_scope.cancel()
    assert gateway.disconnected_events() == [
        (start + IDLE, {"sensor-1": "lorawan_v1", "gateway-device": "lorawan_v2"}),
        (start + 100 + IDLE, {"sensor-2": "lorawan_v1"}),
    ]
    assert session.forgotten == ["sensor-1", "sensor-2"]
    assert service.hub.session_for_endpoint("sensor-1") is None
    assert service.hub.endpoint_count == 0
