"""The simulated Kaa side against a real nats-server, with a plain nats-py client playing KPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import attrs
import nats
import pytest
import trio
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from kpc_trio.kaa import records
from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.simulator import (
    INVALID_TOKEN_REASON,
    EndpointRecord,
    ExtensionBehaviour,
    SimulatedKaa,
    SimulatorError,
    UnknownEventError,
    open_simulated_kaa,
    run_demo_side,
)

ENDPOINT = EndpointRecord(
    app_name="demo_application",
    token="JTjdbENzHh",
    endpoint_id="7ad263ec-3347-4c7d-af89-50c67061367a",
    token_id="t1",
)
APP_VERSION = "demo_application_v1"
KPC_SERVICE_SUBJECT = "kaa.v1.service.kpc.esp.ExtensionData"
REPLY_TIMEOUT = 5.0


@pytest.fixture
def nats_url(nats_server_factory: Callable[..., NatsServerProcess]) -> str:
    # A private server: the simulator uses KPC's well-known subjects (kpc, cm, dcx), which the
    # shared server's other users may use too.
    return nats_server_factory().url


# ---- KPC's side: plain nats-py, run on a private asyncio loop ----------------------------------


def as_kpc(nats_url: str, scenario: Callable[[NatsClient], Awaitable[None]]) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            await scenario(nc)
            await nc.flush()
        finally:
            await nc.close()  # not drain: unread replies would hold it until its timeout

    asyncio.run(main())


def token_request(app_name: str, token: str, correlation_id: str) -> bytes:
    return records.encode(
        records.EndpointTokenValidationRequest(
            correlation_id=correlation_id, timestamp=1, timeout=0, app_name=app_name, token=token
        )
    )


def client_data(request_id: int | None) -> records.ClientData:
    return records.ClientData(
        correlation_id=f"cd-{request_id}",
        timestamp=1_700_000_000_000,
        timeout=0,
        app_version_name=APP_VERSION,
        endpoint_id=ENDPOINT.endpoint_id,
        resource_path="/json",
        request_id=request_id,
        payload=b'[{"temperature":23}]',
    )


def expected_reply(request: records.ClientData, **changes: object) -> dict[str, object]:
    """The fields of the echo extension's answer to `request`, timestamp left out."""
    expected: dict[str, object] = dict(
        correlation_id=request.correlation_id, timeout=0,
        app_version_name=request.app_version_name, extension_instance_name="dcx",
        endpoint_id=request.endpoint_id, resource_path=request.resource_path,
        request_id=request.request_id, payload=request.payload, status_code=200,
        reason_phrase=None,
    )
    expected.update(changes)
    return expected


def without_timestamp(data: records.ExtensionData) -> dict[str, object]:
    fields = attrs.asdict(data)
    del fields["timestamp"]
    return fields


async def next_extension_data(sub: Subscription) -> records.ExtensionData:
    msg = await sub.next_msg(timeout=REPLY_TIMEOUT)
    return records.decode(records.ExtensionData, msg.data)


# ---- token provider ---------------------------------------------------------------------------


def test_token_provider_answers_known_and_unknown_tokens(nats_url: str) -> None:
    responses: list[records.EndpointTokenValidationResponse] = []

    async def scenario(nc: NatsClient) -> None:
        subject = "kaa.v1.service.cm.ecap.ep-token-request"
        for app_name, token, correlation_id in [
            (ENDPOINT.app_name, ENDPOINT.token, "c-valid"),
            (ENDPOINT.app_name, "no-such-token", "c-unknown"),
            ("other_application", ENDPOINT.token, "c-other-app"),  # tokens are per application
        ]:
            msg = await nc.request(subject, token_request(app_name, token, correlation_id),
                                   timeout=REPLY_TIMEOUT)
            responses.append(records.decode(records.EndpointTokenValidationResponse, msg.data))

    with SimulatedKaa(nats_url, endpoints=[ENDPOINT], invalid_token_status=403) as kaa:
        as_kpc(nats_url, scenario)
        asked = kaa.token_requests

    valid, unknown, other_app = responses
    assert (valid.correlation_id, valid.status_code, valid.token_id, valid.endpoint_id) == (
        "c-valid", 200, "t1", ENDPOINT.endpoint_id
    )
    for rejected, correlation_id in [(unknown, "c-unknown"), (other_app, "c-other-app")]:
        assert rejected.correlation_id == correlation_id
        assert (rejected.status_code, rejected.reason_phrase) == (403, INVALID_TOKEN_REASON)
        assert (rejected.token_id, rejected.endpoint_id) == (None, None)
    assert [(r.app_name, r.token) for r in asked] == [
        (ENDPOINT.app_name, ENDPOINT.token),
        (ENDPOINT.app_name, "no-such-token"),
        ("other_application", ENDPOINT.token),
    ]


def test_token_delay_lets_later_requests_overtake(nats_url: str) -> None:
    first_answered: list[str] = []

    async def scenario(nc: NatsClient) -> None:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        subject = "kaa.v1.service.cm.ecap.ep-token-request"
        await nc.publish(subject, token_request(ENDPOINT.app_name, ENDPOINT.token, "slow"), inbox)
        await nc.flush()
        await asyncio.to_thread(kaa.wait_token_requests, 1, REPLY_TIMEOUT)
        kaa.set_token_delay(0)
        await nc.publish(subject, token_request(ENDPOINT.app_name, ENDPOINT.token, "fast"), inbox)
        msg = await sub.next_msg(timeout=REPLY_TIMEOUT)
        first_answered.append(
            records.decode(records.EndpointTokenValidationResponse, msg.data).correlation_id
        )

    with SimulatedKaa(nats_url, endpoints=[ENDPOINT]) as kaa:
        kaa.set_token_delay(30)  # never answered within the test: close() cancels it
        as_kpc(nats_url, scenario)

    assert first_answered == ["fast"]


# ---- echo extension ---------------------------------------------------------------------------


def test_echo_extension_answers_requests_only(nats_url: str) -> None:
    fire_and_forget, request = client_data(None), client_data(42)
    replies: list[records.ExtensionData] = []

    async def scenario(nc: NatsClient) -> None:
        reply_to = "kaa.v1.replica.kpc-r1.esp.ExtensionData"
        sub = await nc.subscribe(reply_to)
        for data in (fire_and_forget, request):
            await nc.publish("kaa.v1.service.dcx.esp.ClientData", records.encode(data), reply_to)
        # Requests are answered in order, so the first reply proves none came for the first one.
        replies.append(await next_extension_data(sub))

    with SimulatedKaa(nats_url) as kaa:
        as_kpc(nats_url, scenario)
        received = kaa.wait_received("dcx", 2)

    assert received == [fire_and_forget, request]
    assert without_timestamp(replies[0]) == expected_reply(request)


def test_extension_without_reply_to_answers_on_kpc_service_subject(nats_url: str) -> None:
    request = client_data(3)
    replies: list[records.ExtensionData] = []

    async def scenario(nc: NatsClient) -> None:
        sub = await nc.subscribe("kaa.v1.service.kpc-east.esp.ExtensionData")
        await nc.publish("kaa.v1.service.dcx.esp.ClientData", records.encode(request))
        replies.append(await next_extension_data(sub))

    with SimulatedKaa(nats_url, kpc_instance="kpc-east"):
        as_kpc(nats_url, scenario)

    assert without_timestamp(replies[0]) == expected_reply(request)


def test_extension_behaviour_changes_status_payload_and_silence(nats_url: str) -> None:
    silenced, failing, fire_and_forget = client_data(1), client_data(2), client_data(None)
    replies: list[records.ExtensionData] = []

    async def scenario(nc: NatsClient) -> None:
        reply_to = nc.new_inbox()
        sub = await nc.subscribe(reply_to)

        async def send(data: records.ClientData, then: ExtensionBehaviour) -> None:
            seen = len(kaa.received("cmx"))
            await nc.publish("kaa.v1.service.cmx.esp.ClientData", records.encode(data), reply_to)
            await asyncio.to_thread(kaa.wait_received, "cmx", seen + 1)
            kaa.set_extension_behaviour("cmx", then)

        kaa.set_extension_behaviour("cmx", ExtensionBehaviour(silent=True))
        await send(silenced, ExtensionBehaviour(status_code=500, reason_phrase="Boom",
                                                reply_payload=None))
        await send(failing, ExtensionBehaviour(status_code=400, reason_phrase="Bad data",
                                               reply_without_request_id=True))
        await send(fire_and_forget, ExtensionBehaviour())
        replies.extend([await next_extension_data(sub), await next_extension_data(sub)])

    with SimulatedKaa(nats_url, echo_extensions=["dcx", "cmx"]) as kaa:
        as_kpc(nats_url, scenario)

    assert [without_timestamp(r) for r in replies] == [
        expected_reply(failing, extension_instance_name="cmx", status_code=500,
                  reason_phrase="Boom", payload=None),
        expected_reply(fire_and_forget, extension_instance_name="cmx", status_code=400,
                  reason_phrase="Bad data"),
    ]


def test_delayed_reply_does_not_hold_back_the_next_one(nats_url: str) -> None:
    slow, fast = client_data(1), client_data(2)
    first_reply: list[records.ExtensionData] = []

    async def scenario(nc: NatsClient) -> None:
        reply_to = nc.new_inbox()
        sub = await nc.subscribe(reply_to)
        await nc.publish("kaa.v1.service.dcx.esp.ClientData", records.encode(slow), reply_to)
        await asyncio.to_thread(kaa.wait_received, "dcx", 1)
        kaa.set_extension_behaviour("dcx", ExtensionBehaviour())
        await nc.publish("kaa.v1.service.dcx.esp.ClientData", records.encode(fast), reply_to)
        first_reply.append(await next_extension_data(sub))

    with SimulatedKaa(nats_url) as kaa:
        kaa.set_extension_behaviour("dcx", ExtensionBehaviour(delay=30))
        as_kpc(nats_url, scenario)

    assert first_reply[0].request_id == 2


def test_unknown_names_are_reported_with_the_known_ones() -> None:
    kaa = SimulatedKaa("nats://never-started.invalid:4222", echo_extensions=["dcx"])
    with pytest.raises(SimulatorError, match=r"'epmx' is not simulated.*\['dcx'\]"):
        kaa.received("epmx")
    with pytest.raises(UnknownEventError, match="connectivity.connected"):
        kaa.events("connected")
    with pytest.raises(SimulatorError, match="not running"):
        kaa.push("cex", reboot_push())


# ---- pushes -----------------------------------------------------------------------------------


def reboot_push(endpoint_id: str = ENDPOINT.endpoint_id) -> records.ExtensionData:
    return records.ExtensionData(
        correlation_id="push-1", timestamp=1_700_000_000_000, timeout=0,
        app_version_name=APP_VERSION, extension_instance_name="cex", endpoint_id=endpoint_id,
        resource_path="/command/reboot", request_id=None, payload=b'[{"id":1}]',
        status_code=200,
    )


def test_push_reaches_the_kpc_service_and_replica_subjects(nats_url: str) -> None:
    to_service, to_replica = reboot_push(), reboot_push("other-endpoint")
    pushed: dict[str, records.ExtensionData] = {}

    async def scenario(nc: NatsClient) -> None:
        service = await nc.subscribe(KPC_SERVICE_SUBJECT)
        replica = await nc.subscribe("kaa.v1.replica.kpc-r1.esp.ExtensionData")
        await nc.flush()
        await asyncio.to_thread(kaa.push, "cex", to_service)
        await asyncio.to_thread(
            kaa.push, "cex", to_replica, subject="kaa.v1.replica.kpc-r1.esp.ExtensionData"
        )
        pushed["service"] = await next_extension_data(service)
        pushed["replica"] = await next_extension_data(replica)

    with SimulatedKaa(nats_url) as kaa:
        as_kpc(nats_url, scenario)

    assert pushed == {"service": to_service, "replica": to_replica}


# ---- endpoint events --------------------------------------------------------------------------


def test_endpoint_events_are_decoded_per_subject(nats_url: str) -> None:
    def connectivity(
        event_type: type[records.ConnectedEvent | records.DisconnectedEvent],
        endpoints: dict[str, str],
    ) -> records.ConnectedEvent | records.DisconnectedEvent:
        return event_type(correlation_id="e", timestamp=1, timeout=0, endpoints=endpoints,
                          originator_replica_id="kpc-r1")

    connected = connectivity(records.ConnectedEvent, {"ep-1": "av1", "ep-2": "av2"})
    disconnected = connectivity(records.DisconnectedEvent, {"ep-1": "av1"})
    traffic = records.TrafficReportEvent(
        tenant_traffic_stats={"t": {"demo_application": {"ep-2": records.TrafficStat(5, 6, 1, 2)}}},
        time_from=1_000_000_000, time_to=2_000_000_000, correlation_id="tr",
        originator_replica_id="kpc-r1", timestamp=1, timeout=0,
    )
    elsewhere = connectivity(records.ConnectedEvent, {"ep-9": "av9"})

    async def scenario(nc: NatsClient) -> None:
        events = "kaa.v1.events.kpc.endpoint"
        await nc.publish("kaa.v1.events.kpc-other.endpoint.connectivity.connected",
                         records.encode(elsewhere))
        await nc.publish(f"{events}.connectivity.connected", records.encode(connected))
        await nc.publish(f"{events}.connectivity.disconnected", records.encode(disconnected))
        await nc.publish(f"{events}.traffic-reporting.payload", records.encode(traffic))

    with SimulatedKaa(nats_url) as kaa:
        as_kpc(nats_url, scenario)
        assert kaa.wait_events("traffic-reporting.payload", 1) == [traffic]
        # One publisher's messages arrive in order: the earlier ones are in too.
        assert kaa.events("connectivity.connected") == [connected]
        assert kaa.events("connectivity.disconnected") == [disconnected]
        assert kaa.online_endpoints() == {"ep-2": "av2"}


# ---- from trio --------------------------------------------------------------------------------


async def test_trio_code_waits_without_blocking_its_loop(nats_url: str) -> None:
    request = client_data(None)

    def publish_as_kpc() -> None:
        async def scenario(nc: NatsClient) -> None:
            await nc.publish("kaa.v1.service.dcx.esp.ClientData", records.encode(request))

        as_kpc(nats_url, scenario)

    async with open_simulated_kaa(nats_url) as kaa:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, publish_as_kpc)
            assert await kaa.await_received("dcx", 1) == [request]


async def test_demo_side_pushes_reboot_to_connected_endpoints(nats_url: str) -> None:
    pushed: list[records.ExtensionData] = []

    def kpc_announces_endpoint_until_pushed() -> None:
        connected = records.ConnectedEvent(
            correlation_id="c", timestamp=1, timeout=0,
            endpoints={ENDPOINT.endpoint_id: APP_VERSION}, originator_replica_id="kpc-r1",
        )

        async def scenario(nc: NatsClient) -> None:
            sub = await nc.subscribe(KPC_SERVICE_SUBJECT)
            # The demo side has no readiness signal: announce until it has subscribed and pushed.
            for _ in range(100):
                await nc.publish("kaa.v1.events.kpc.endpoint.connectivity.connected",
                                 records.encode(connected))
                try:
                    pushed.append(records.decode(records.ExtensionData,
                                                 (await sub.next_msg(timeout=0.1)).data))
                    return
                except nats.errors.TimeoutError:
                    continue

        as_kpc(nats_url, scenario)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_demo_side(nats_url, push_interval=0.05))
        await trio.to_thread.run_sync(kpc_announces_endpoint_until_pushed)
        nursery.cancel_scope.cancel()

    assert len(pushed) == 1
    command = pushed[0]
    assert (command.extension_instance_name, command.endpoint_id, command.app_version_name) == (
        "cex", ENDPOINT.endpoint_id, APP_VERSION
    )
    assert (command.resource_path, command.request_id, command.status_code) == (
        "/command/reboot", None, 200
    )
    assert json.loads(command.payload or b"")[0]["id"] >= 1
