"""A real nats-server stopped and restarted under QoS 1 load, KPC running in-process throughout.

KPC reaches NATS through `NatsGate`, a TCP forwarder the test can close: after the restart the
simulated extensions must be subscribed again before KPC reconnects, otherwise NATS (at most
once, no subscriber yet) would lose what KPC publishes first and the count would blame KPC.
"""

from __future__ import annotations

import collections
import json

import attrs
import trio

from kpc_trio.mqtt import codec
from kpc_trio.mqtt.packets import Connect, Publish, QoS
from kpc_trio.service import open_kpc
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.integration.http_probe import http_get, metric_value
from tests.integration.kpc_harness import (
    APP_VERSION,
    ENDPOINTS,
    call,
    make_config,
    open_device,
    push_data,
)
from tests.integration.qos1_load import CountingPublisher, all_acknowledged
from tests.integration.waiting import eventually

#: Bytes of QoS 1 PUBLISHes a raw client tries to push into KPC during the outage.
FLOOD_BYTES = 4 * 1024 * 1024
#: KPC reads 64 KiB at a time and then waits for NATS: this much reading at most is "stopped".
READ_DURING_OUTAGE_LIMIT = 256 * 1024


@attrs.define
class NatsGate:
    """Forwards TCP connections to nats-server while open; refuses them (closes) while shut."""

    upstream_port: int
    is_open: bool = True
    _connections: set[trio.CancelScope] = attrs.field(factory=set)

    def cut(self) -> None:
        """Shut and drop the forwarded connections: KPC loses NATS, NATS itself stays up."""
        self.is_open = False
        for scope in self._connections:
            scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._forward, listeners)

    async def _forward(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.is_open:
                return
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            except OSError:
                return
            with trio.CancelScope() as connection:
                self._connections.add(connection)
                try:
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(_pump, server, client, nursery.cancel_scope)
                finally:
                    self._connections.discard(connection)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream,
                both: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except trio.BrokenResourceError:
        pass
    both.cancel()  # either side gone: the whole forwarded connection ends


async def wait_for(predicate, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)
        return
    missing = getattr(_arrived, "missing", [])
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f"; missing {len(missing)}: {missing[:10]}" if missing else ""))


async def metrics_text(kpc) -> bytes:
    return (await call(http_get, kpc.ports["management"], "/metrics")).body


async def ready(kpc) -> int:
    return (await call(http_get, kpc.ports["management"], "/ready")).status


async def tcp_bytes_read(kpc) -> float:
    return metric_value(await metrics_text(kpc), "kpc_received_bytes_total",
                        transport="tcp") or 0.0


async def flood(port: int, topic: str) -> trio.SocketStream:
    """A raw client that sends QoS 1 PUBLISHes until KPC stops reading (or FLOOD_BYTES)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(codec.encode(Connect("MQTT", 4, "flooder", True, 0)))
    packets = b"".join(
        codec.encode(Publish(topic, b"flood-%d" % n + b"." * 1000, QoS.AT_LEAST_ONCE,
                             packet_id=n % 65535 + 1))
        for n in range(FLOOD_BYTES // 1024))
    with trio.move_on_after(1.0):  # TCP backpressure makes this block: that is the point
        await stream.send_all(packets)
    return stream


async def test_nats_restart_under_load(nats_server_factory, tmp_path, nursery):
    nats = nats_server_factory()
    gate = NatsGate(nats.port)
    gate_port = await nursery.start(gate.serve)
    tokens = [endpoint.token for endpoint in ENDPOINTS]
    async with open_simulated_kaa(nats.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx",)) as kaa, \
            open_kpc(make_config(tmp_path, f"nats://127.0.0.1:{gate_port}")) as kpc:
        port = kpc.ports["mqtt_tcp"]
        topic = f"kp1/{APP_VERSION}/dcx/{{}}/json"
        async with open_device(port) as first, open_device(port) as second, \
                open_device(port) as third, open_device(port) as probe:
            # Validate the tokens first: a validation slowed down by a busy machine would
            # otherwise answer an early message with a 504 (rejected, so not relayed).
            for device, token in zip((first, second, third), tokens, strict=False):
                await call(device.publish, topic.format(token) + "/1", b"warm-up", qos=1)
                assert (await call(device.expect, 15)).topic.endswith("/1/status")
            publishers = [CountingPublisher(device, topic.format(token), f"dev{n}").start()
                          for n, (device, token) in enumerate(zip((first, second, third),
                                                                  tokens, strict=False))]
            try:
                await wait_for(lambda: _all_have(publishers, 100), 20, "load before the outage")
                before = len(all_acknowledged(publishers))

                # KPC loses NATS first; what NATS confirmed reaches the extension, and only then
                # is the server killed (core NATS keeps nothing for a subscriber when it dies:
                # that loss would be NATS's, not KPC's).
                gate.cut()
                await wait_for(lambda: _equals(ready(kpc), 503), 10, "/ready 503")
                # Batches already confirmed may still settle: wait for the count to stand still.
                await wait_for(lambda: _settled(publishers), 10, "acknowledgements to stop")
                at_outage = len(all_acknowledged(publishers))
                await wait_for(lambda: _arrived(kaa, all_acknowledged(publishers)), 15,
                               "what NATS confirmed before the outage at the extension")
                await trio.to_thread.run_sync(nats.stop)
                per_device_at_outage = [len(p.acknowledged) for p in publishers]
                read_at_outage = await tcp_bytes_read(kpc)
                flooder = await flood(port, topic.format(tokens[0]))
                await trio.sleep(1.0)
                assert len(all_acknowledged(publishers)) == at_outage, "acknowledged w/o NATS"
                assert await tcp_bytes_read(kpc) - read_at_outage < READ_DURING_OUTAGE_LIMIT

                # QoS 0 with a cached token: dropped and counted, never delivered later.
                await call(probe.publish, topic.format(tokens[0]), b"qos0-in-outage", qos=0)
                await wait_for(lambda: _dropped_for_nats(kpc), 10, "the QoS 0 drop metric")
                # An unvalidated token: an immediate 503 /error instead of a request timeout.
                request_topic = topic.format(tokens[3]) + "/77"
                await call(probe.publish, request_topic, b"{}", qos=1)
                reply = await call(probe.expect, 5)
                assert reply.topic == request_topic + "/error"
                assert json.loads(reply.payload)["statusCode"] == 503

                await trio.to_thread.run_sync(nats.start)
                # push() returns once the simulator is reconnected and subscribed again.
                await call(kaa.push, "dcx", push_data(None, "/probe", b""),
                           subject="outage-test.probe")
                gate.is_open = True
                await wait_for(lambda: _equals(ready(kpc), 200), 15, "/ready 200 again")
                await wait_for(lambda: _all_grew(publishers, per_device_at_outage, 100), 20,
                               "load after the restart")
                await flooder.aclose()
            finally:
                for publisher in publishers:
                    await trio.to_thread.run_sync(publisher.stop)
        acknowledged = all_acknowledged(publishers)
        await wait_for(lambda: _arrived(kaa, acknowledged), 15,
                       "every acknowledged message at the extension")
        received = [cd.payload for cd in kaa.received("dcx")]
    assert b"qos0-in-outage" not in received
    arrivals = collections.Counter(payload for payload in received
                                   if payload.startswith(b"dev"))
    duplicates = {payload: n for payload, n in arrivals.items() if n > 1}
    print(f"\nNATS restart: {before} acknowledged before the outage, {at_outage} when it "
          f"began, {len(acknowledged)} in total; {sum(arrivals.values())} arrivals "
          f"({len(duplicates)} payloads duplicated, {sum(duplicates.values()) - len(duplicates)}"
          f" extra copies)")


async def _all_have(publishers: list[CountingPublisher], count: int) -> bool:
    await trio.lowlevel.checkpoint()
    return all(len(publisher.acknowledged) >= count for publisher in publishers)


async def _all_grew(publishers: list[CountingPublisher], counts: list[int], more: int) -> bool:
    await trio.lowlevel.checkpoint()
    return all(len(p.acknowledged) >= count + more
               for p, count in zip(publishers, counts, strict=True))


async def _equals(status, expected: int) -> bool:
    return await status == expected


async def _settled(publishers: list[CountingPublisher]) -> bool:
    count = len(all_acknowledged(publishers))
    await trio.sleep(0.5)
    return len(all_acknowledged(publishers)) == count


async def _dropped_for_nats(kpc) -> bool:
    value = metric_value(await metrics_text(kpc), "kpc_messages_dropped_total",
                         reason="nats_unavailable")
    return value == 1.0


async def _arrived(kaa, acknowledged: list[bytes]) -> bool:
    await trio.lowlevel.checkpoint()
    missing = set(acknowledged) - {cd.payload for cd in kaa.received("dcx")}
    if missing:
        _arrived.missing = sorted(missing)  # type: ignore[attr-defined]  # for the failure
    return not missing


async def test_a_validation_pending_when_nats_goes_away_fails_at_once(nats_server_factory,
                                                                      tmp_path):
    nats = nats_server_factory()
    async with open_simulated_kaa(nats.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx",)) as kaa:
        kaa.set_token_delay(30)  # the provider sits on the request
        config = make_config(tmp_path, nats.url, env={"KAA_KPC_AUTH_REQUEST_TIMEOUT": "120"})
        async with open_kpc(config) as kpc, open_device(kpc.ports["mqtt_tcp"]) as device:
            topic = f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json/9"
            await call(device.publish, topic, b"{}", qos=0)
            await call(kaa.wait_token_requests, 1)
            await trio.to_thread.run_sync(nats.stop)
            # Answered when the connection drops, not when the 120 s request timeout ends.
            reply = await call(device.expect, 20)
    assert reply.topic == topic + "/error"
    assert json.loads(reply.payload) == {"statusCode": 503,
                                         "reasonPhrase": "Endpoint token provider unavailable"}


async def test_disconnected_event_of_an_outage_arrives_after_nats_returns(
        nats_server_factory, tmp_path, nursery):
    nats = nats_server_factory()
    gate = NatsGate(nats.port)
    gate_port = await nursery.start(gate.serve)
    leaving, staying = ENDPOINTS[0], ENDPOINTS[1]
    topic = f"kp1/{APP_VERSION}/dcx/{{}}/json/1"
    async with open_simulated_kaa(nats.url, endpoints=ENDPOINTS,
                                  echo_extensions=("dcx",)) as kaa, \
            open_kpc(make_config(tmp_path, f"nats://127.0.0.1:{gate_port}")) as kpc, \
            open_device(kpc.ports["mqtt_tcp"]) as stays:
        async with open_device(kpc.ports["mqtt_tcp"]) as leaves:
            for device, endpoint in ((leaves, leaving), (stays, staying)):
                await call(device.publish, topic.format(endpoint.token), b"{}", qos=1)
                assert (await call(device.expect)).topic.endswith("/1/status")
            await kaa.await_events("connectivity.connected", 2)
            gate.cut()
            await wait_for(lambda: _equals(ready(kpc), 503), 10, "/ready 503")
        # the device left while NATS was away: KPC took it offline, the event waits
        await eventually(lambda: kpc.hub.endpoint_count == 1)
        assert kaa.events("connectivity.disconnected") == []
        assert metric_value(await metrics_text(kpc), "kpc_connectivity_events_queued") == 1
        gate.is_open = True
        [event] = await kaa.await_events("connectivity.disconnected", 1, timeout=15)
        assert event.endpoints == {leaving.endpoint_id: APP_VERSION}
        assert event.originator_replica_id == kpc.replica_id
        assert kpc.hub.session_for_endpoint(staying.endpoint_id) is not None
