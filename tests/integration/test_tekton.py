"""Applications from Tekton, end to end: a real nats-server, the simulated Tekton and Keycloak
(REST over h11, 17/SCMP events published with nats-py), the simulated Kaa services and paho
devices. KPC runs in-process; every test uses its own instance and provider names, so the
shared nats-server carries no event of another test.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trio

from kpc_trio.config import Config, load_config
from kpc_trio.kaa import scmp
from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.nats.gateway import OutboundMessage
from kpc_trio.service import KpcService, open_kpc
from kpc_trio.simulator import DEMO_ENDPOINTS, SimulatedKaa
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from kpc_trio.simulator.tekton import TOKEN_PATH, SimulatedKeycloak, SimulatedTekton
from kpc_trio.simulator.token_provider import EndpointRecord
from tests.clients.paho_device import PahoDevice
from tests.integration.http_probe import http_get
from tests.integration.kpc_harness import call, open_device
from tests.integration.kpc_process import child_env, kpc_command, running_kpc
from tests.integration.waiting import eventually, logged

APP, VERSION, OTHER_VERSION = "fleet", "fleet-v1", "fleet-v2"
NEW_APP, NEW_VERSION = "meters", "meters-v1"
DEVICE = EndpointRecord(app_name=APP, token="fleet-token", endpoint_id="fleet-ep-1",
                        token_id="fleet-tid-1")
NEW_DEVICE = EndpointRecord(app_name=NEW_APP, token="meter-token", endpoint_id="meter-ep-1",
                            token_id="meter-tid-1")
ALLOW_DCX = {"allowed-extension-instances": ["dcx"]}
#: The issue's bound: devices of a new application are served within 1 s of its event.
SERVED_WITHIN = 1.0

CONFIG = """
kaa:
  kpc:
    transports:
      mqtt:
        tcp: {{host: 127.0.0.1, port: 0}}
    auth: {{request-timeout: 2}}
  tekton: {{enabled: true, url: "{url}", debounce: 50ms, request-timeout: 2s,
            initial-load-timeout: 20s}}
  oauth2: {{token-url: "{url}{token_path}", client-id: kpc}}
  extension-instances:
    dcx: {{endpoint-aware: true}}
management: {{port: 0}}
server: {{port: 0}}
"""


@attrs.frozen
class Setup:
    kpc: KpcService
    tekton: SimulatedTekton
    kaa: SimulatedKaa

    @property
    def port(self) -> int:
        return self.kpc.ports["mqtt_tcp"]


@contextlib.asynccontextmanager
async def open_tekton_and_kaa(tmp_path: Path, nats_url: str, **env: str
                              ) -> AsyncIterator[tuple[SimulatedTekton, SimulatedKaa, Config]]:
    """Tekton holding APP with VERSION and OTHER_VERSION, the Kaa side, and KPC's config
    (`env`: more environment overrides)."""
    instance, provider = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("kpc", "tekton"))
    async with open_simulated_kaa(nats_url, endpoints=(DEVICE, NEW_DEVICE),
                                  echo_extensions=("dcx",), kpc_instance=instance) as kaa, \
            trio.open_nursery() as nursery:
        tekton = SimulatedTekton(keycloak=SimulatedKeycloak(clients={"kpc": "s3cret"}),
                                 publish=kaa.publish, provider=provider)
        tekton.create_application(APP)
        tekton.create_app_version(APP, VERSION, ALLOW_DCX)
        tekton.create_app_version(APP, OTHER_VERSION, ALLOW_DCX)
        url = await nursery.start(tekton.serve)
        path = tmp_path / "service-config.yml"
        path.write_text(CONFIG.format(url=url, token_path=TOKEN_PATH))
        config = load_config(str(path), env={
            "NATS_URLS": nats_url, "SERVICE_INSTANCE_NAME": instance,
            "KAA_SCMP_CONSUMER_PROVIDER_SERVICE_INSTANCE_NAME": provider,
            "KAA_OAUTH2_CLIENT_SECRET": "s3cret", **env})
        yield tekton, kaa, config
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def open_setup(tmp_path: Path, nats_url: str) -> AsyncIterator[Setup]:
    """KPC started from the simulated Tekton."""
    async with open_tekton_and_kaa(tmp_path, nats_url) as (tekton, kaa, config), \
            open_kpc(config) as kpc:
        yield Setup(kpc, tekton, kaa)


async def request(device: PahoDevice, app_version: str, token: str, request_id: int
                  ) -> tuple[str, dict[str, object] | bytes]:
    """A QoS 1 request with a request id; returns ("status" | "error", answer)."""
    topic = f"kp1/{app_version}/dcx/{token}/json/{request_id}"
    await call(device.publish, topic, b'{"n":1}', qos=1)
    answer = await call(device.expect, 5.0)
    assert answer.topic.startswith(topic + "/"), answer
    outcome = answer.topic.rsplit("/", 1)[1]
    return outcome, json.loads(answer.payload) if outcome == "error" else answer.payload


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


async def test_application_created_in_tekton_is_served_within_a_second_of_its_event(
    tmp_path: Path, nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port, client_id="meter-1") as device:
        assert await request(device, NEW_VERSION, NEW_DEVICE.token, 1) == (
            "error", {"statusCode": 404, "reasonPhrase": "Application version not found"})
        setup.tekton.create_application(NEW_APP, config={"disconnect": {"idle": {
            "enabled": False}}})
        setup.tekton.create_app_version(NEW_APP, NEW_VERSION, ALLOW_DCX)
        await setup.tekton.announce("upsert", NEW_APP, NEW_VERSION)
        announced = time.monotonic()
        await eventually(lambda: any(NEW_VERSION in str(fields.get("added"))
                                     for fields in logged(caplog, "applications_changed")),
                         timeout=SERVED_WITHIN)
        outcome, _ = await request(device, NEW_VERSION, NEW_DEVICE.token, 2)
        assert outcome == "status"
        served_after = time.monotonic() - announced
        # The same connection kept being served: no restart, no reconnect.
        assert await request(device, VERSION, DEVICE.token, 3) == ("status", b'{"n":1}')
        print(f"new application served {served_after:.3f}s after its 17/SCMP event")
        # A pre-2020 targeted event (v1 schema, app-configuration subject) is followed too.
        setup.tekton.create_app_version(NEW_APP, "meters-v2", ALLOW_DCX)
        await setup.tekton.announce("upsert", NEW_APP, "meters-v2", delivery="targeted",
                                    generation=1, target_instance=setup.kaa.kpc_instance)
        await eventually(lambda: "meters-v2" in setup.kpc.applications.current.versions)
    events = logged(caplog, "scmp_event")
    assert [(e["delivery"], e["generation"]) for e in events] == [("broadcast", 2),
                                                                   ("targeted", 1)]


async def test_deleted_appversion_releases_its_endpoints_and_keeps_the_connection(
    tmp_path: Path, nats_server: NatsServerProcess,
) -> None:
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port, client_id="fleet-1") as device:
        assert (await request(device, VERSION, DEVICE.token, 1))[0] == "status"
        await setup.kaa.await_events("connectivity.connected", 1)
        setup.tekton.delete_app_version(APP, VERSION)
        await setup.tekton.announce("delete", APP, VERSION)
        [event] = await setup.kaa.await_events("connectivity.disconnected", 1)
        assert event.endpoints == {DEVICE.endpoint_id: VERSION}
        # The connection stays: the removed appversion is refused, the other one is served.
        assert await request(device, VERSION, DEVICE.token, 2) == (
            "error", {"statusCode": 404, "reasonPhrase": "Application version not found"})
        assert (await request(device, OTHER_VERSION, DEVICE.token, 3))[0] == "status"
        assert not device._disconnected.is_set()


async def test_tekton_down_at_an_event_keeps_the_last_configuration_and_catches_up(
    tmp_path: Path, nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port, client_id="fleet-2") as device:
        setup.tekton.available = False
        setup.tekton.create_application(NEW_APP)
        setup.tekton.create_app_version(NEW_APP, NEW_VERSION, ALLOW_DCX)
        await setup.tekton.announce("upsert", NEW_APP)
        await eventually(lambda: bool(logged(caplog, "tekton_refresh_failed")))
        failure = logged(caplog, "tekton_refresh_failed")[0]
        assert failure["reason"] == "tekton" and "503" in str(failure["error"])
        assert failure["serving"] == "last good configuration"
        # Still serving on the last good configuration, and still ready.
        assert (await request(device, VERSION, DEVICE.token, 1))[0] == "status"
        assert setup.kpc.health.ready
        assert b"kpc_tekton_refresh_failures_total{reason=\"tekton\"}" in \
            setup.kpc.metrics.render()
        setup.tekton.available = True
        await eventually(lambda: NEW_VERSION in setup.kpc.applications.current.versions)
        assert (await request(device, NEW_VERSION, NEW_DEVICE.token, 2))[0] == "status"


async def test_keycloak_rejecting_the_secret_is_logged_and_the_service_keeps_running(
    tmp_path: Path, nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port, client_id="fleet-3") as device:
        keycloak = setup.tekton.keycloak
        assert keycloak is not None
        keycloak.clients["kpc"] = "rotated-elsewhere"  # KPC's secret is now wrong
        keycloak.issued.clear()  # and its token revoked: Tekton answers 401
        await setup.tekton.announce("upsert")  # all null: reload everything
        await eventually(lambda: any(f["reason"] == "keycloak"
                                     for f in logged(caplog, "tekton_refresh_failed")))
        failure = next(f for f in logged(caplog, "tekton_refresh_failed")
                       if f["reason"] == "keycloak")
        assert "Keycloak refused client 'kpc': HTTP 401 Invalid client secret" in \
            str(failure["error"])
        assert "s3cret" not in caplog.text
        assert (await request(device, VERSION, DEVICE.token, 1))[0] == "status"
        assert setup.kpc.health.ready


async def test_undecodable_scmp_event_is_logged_counted_and_never_answered(
    tmp_path: Path, nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port, client_id="fleet-4") as device:
        provider = setup.tekton.provider
        assert setup.kpc._context is not None
        gateway = setup.kpc._context.gateway
        inbox = await gateway.subscribe("scmp-test-inbox")
        await gateway.publish_confirmed([OutboundMessage(
            f"kaa.v1.events.{provider}.service.configuration.upsert", b"\xff\x00garbage",
            "scmp-test-inbox")])
        await eventually(lambda: bool(logged(caplog, "scmp_event_undecodable")))
        # A good event asking for a reply: still no acknowledgement (RFC 17).
        good = scmp.ConfigurationUpdate("upsert", "c-1", tenant_id="tenant-1", app_name=APP,
                                        app_version=None, generation=2, delivery="broadcast")
        await gateway.publish_confirmed([OutboundMessage(
            scmp.broadcast_subject(provider, "upsert"), scmp.encode(good, timestamp=1),
            "scmp-test-inbox")])
        await eventually(lambda: bool(logged(caplog, "scmp_event")))
        with trio.move_on_after(0.3):
            unexpected = await inbox.receive()
            raise AssertionError(f"KPC answered an SCMP event: {unexpected}")
        assert (await request(device, VERSION, DEVICE.token, 1))[0] == "status"
        assert b'kpc_scmp_events_total{result="bad"} 1.0' in setup.kpc.metrics.render()


async def test_a_nats_reconnect_reloads_everything_since_events_may_have_been_lost(
    tmp_path: Path, nats_server_factory: Callable[..., NatsServerProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    nats = nats_server_factory()
    async with open_setup(tmp_path, nats.url) as setup:
        await trio.to_thread.run_sync(nats.stop)
        await eventually(lambda: not setup.kpc.health.nats_connected)
        # Created while KPC cannot hear the event: only the reload after reconnecting shows it.
        setup.tekton.create_application(NEW_APP)
        setup.tekton.create_app_version(NEW_APP, NEW_VERSION, ALLOW_DCX)
        await trio.to_thread.run_sync(nats.start)
        await eventually(lambda: NEW_VERSION in setup.kpc.applications.current.versions)
        async with open_device(setup.port, client_id="meter-2") as device:
            await eventually(lambda: setup.kpc.health.ready)
            assert (await request(device, NEW_VERSION, NEW_DEVICE.token, 1))[0] == "status"
    assert not logged(caplog, "scmp_event")


async def test_demo_with_tekton_serves_the_seeded_application_and_follows_a_change(
    tmp_path: Path,
) -> None:
    demo_config = str(importlib.resources.files("kpc_trio") / "demo.yml")
    env = {"LOGGING_FORMAT": "json", "KAA_KPC_TRANSPORTS_MQTT_TCP_PORT": "0",
           "MANAGEMENT_PORT": "0", "SERVER_PORT": "0"}
    with running_kpc(demo_config, tmp_path / "demo.log", env, ("demo", "--tekton")) as demo:
        async with open_device(demo.ports["mqtt_tcp"], client_id="demo-device") as device:
            outcome, _ = await request(device, "demo_application_v1", DEMO_ENDPOINTS[0].token, 1)
            assert outcome == "status"
            await eventually(lambda: bool(demo.named("demo_tekton_change")), timeout=20)
            await eventually(lambda: any(event.get("added") == "demo_application_v2"
                                         for event in demo.named("applications_changed")))
            outcome, _ = await request(device, "demo_application_v2", DEMO_ENDPOINTS[0].token, 2)
            assert outcome == "status"
        assert demo.named("scmp_event"), demo.log_tail()
        assert not demo.named("file_applications_ignored")


async def test_listeners_open_only_after_the_first_load_and_not_ready_before(
    tmp_path: Path, nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_tekton_and_kaa(tmp_path, nats_server.url) as (tekton, _, config), \
            trio.open_nursery() as nursery:
        tekton.available = False
        kpc = KpcService(config)
        nursery.start_soon(kpc.serve)
        await eventually(lambda: bool(logged(caplog, "tekton_refresh_failed")))
        assert logged(caplog, "tekton_refresh_failed")[0]["serving"] == "nothing yet"
        ready = await call(http_get, kpc.ports["management"], "/ready")
        assert ready.status == 503 and b"configuration_not_loaded" in ready.body
        assert "mqtt_tcp" not in kpc.ports
        tekton.available = True
        await eventually(lambda: "mqtt_tcp" in kpc.ports)
        assert (await call(http_get, kpc.ports["management"], "/ready")).status == 200
        assert VERSION in kpc.applications.current.versions
        kpc.request_shutdown(unready_delay=0.0)


async def test_a_narrower_extension_list_applies_to_the_next_message_of_a_live_session(
    tmp_path: Path, nats_server: NatsServerProcess,
) -> None:
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port, client_id="fleet-5") as device:
        assert (await request(device, VERSION, DEVICE.token, 1))[0] == "status"
        setup.tekton.applications[APP].config = {"allowed-extension-instances": []}
        setup.tekton.create_app_version(APP, VERSION, None)  # inherits the application's
        await setup.tekton.announce("upsert", APP, VERSION, delivery="targeted",
                                    target_instance=setup.kaa.kpc_instance)
        await eventually(lambda: setup.kpc.applications.current.versions[VERSION]
                         .allowed_extension_instances == ())
        assert await request(device, VERSION, DEVICE.token, 2) == (
            "error", {"statusCode": 403, "reasonPhrase": "Extension not allowed"})
        assert (await request(device, OTHER_VERSION, DEVICE.token, 3))[0] == "status"


async def test_a_deleted_appversion_releases_endpoints_kept_online_after_their_client_left(
    tmp_path: Path, nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_tekton_and_kaa(tmp_path, nats_server.url) as (tekton, kaa, config):
        tekton.applications[APP].config = {"disconnect": {
            "on-client-disconnect": False, "idle": {"enabled": True, "duration": "1h"}}}
        async with open_kpc(config) as kpc:
            async with open_device(kpc.ports["mqtt_tcp"], client_id="gateway-1") as device:
                assert (await request(device, VERSION, DEVICE.token, 1))[0] == "status"
            await eventually(lambda: any(fields.get("client_id") == "gateway-1" for fields
                                         in logged(caplog, "client_disconnected")))
            assert kaa.events("connectivity.disconnected") == []  # online until idle
            tekton.delete_app_version(APP, VERSION)
            await tekton.announce("delete", APP, VERSION)
            [event] = await kaa.await_events("connectivity.disconnected", 1)
            assert event.endpoints == {DEVICE.endpoint_id: VERSION}


async def test_an_appversion_removed_while_a_token_is_validated_is_not_bound(
    tmp_path: Path, nats_server: NatsServerProcess,
) -> None:
    async with open_setup(tmp_path, nats_server.url) as setup, \
            open_device(setup.port, client_id="fleet-6") as device:
        await call(setup.kaa.set_token_delay, 1.5)
        topic = f"kp1/{VERSION}/dcx/{DEVICE.token}/json/1"
        await call(device.publish, topic, b"{}", qos=0)  # QoS 1 would wait for the token
        await call(setup.kaa.wait_token_requests, 1)
        setup.tekton.delete_app_version(APP, VERSION)
        await setup.tekton.announce("delete", APP, VERSION)
        await eventually(lambda: VERSION not in setup.kpc.applications.current.versions)
        answer = await call(device.expect, 5.0)
        assert (answer.topic, json.loads(answer.payload)) == (topic + "/error", {
            "statusCode": 404, "reasonPhrase": "Application version not found"})
        assert setup.kaa.events("connectivity.connected") == []
        assert setup.kpc.hub.endpoint_count == 0


async def test_a_periodic_resync_catches_a_change_whose_event_was_lost(
    tmp_path: Path, nats_server: NatsServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_tekton_and_kaa(tmp_path, nats_server.url,
                                   KAA_TEKTON_RESYNC_INTERVAL="300ms") as (tekton, _, config), \
            open_kpc(config) as kpc:
        tekton.delete_application(APP)  # and no event
        await eventually(lambda: not kpc.applications.current.versions)
        assert logged(caplog, "applications_changed")[-1]["removed"] == f"{VERSION},{OTHER_VERSION}"


def test_no_first_load_within_the_timeout_ends_startup_with_a_line_naming_the_key(
    tmp_path: Path, nats_server: NatsServerProcess,
) -> None:
    path = tmp_path / "service-config.yml"
    path.write_text(CONFIG.format(url="http://127.0.0.1:9", token_path=TOKEN_PATH))
    done = subprocess.run(
        kpc_command("--config", str(path), "run"), capture_output=True, text=True, timeout=60,
        env=child_env({"NATS_URLS": nats_server.url, "KAA_TEKTON_INITIAL_LOAD_TIMEOUT": "1s",
                       "KAA_OAUTH2_ENABLED": "false"}))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "kpc-trio: cannot start: kaa.tekton.url: no applications loaded from "
        "http://127.0.0.1:9 within kaa.tekton.initial-load-timeout (1s)")
    assert "Traceback" not in done.stderr
