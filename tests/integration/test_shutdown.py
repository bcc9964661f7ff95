"""Graceful shutdown of a real `kpc-trio run` process under QoS 1 load (SIGTERM, second signal).

Each test runs its own nats-server so the connectivity events it counts are its own.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpc_trio.simulator import ExtensionBehaviour
from kpc_trio.simulator.kaa_side import SimulatedKaa
from tests.clients.paho_device import PahoDevice
from tests.integration.http_probe import http_get, metric_value
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, make_config
from tests.integration.kpc_process import KpcProcess, running_kpc
from tests.integration.qos1_load import CountingPublisher, all_acknowledged

GRACEFUL_SHUTDOWN = 10.0
#: A forced exit must come long before any graceful period used here ends.
FORCED_EXIT_TIMEOUT = 5.0
JSON_LOGS = "service: {graceful-shutdown: %ss}\nlogging: {format: json}\n"


@pytest.fixture
def nats(nats_server_factory):
    return nats_server_factory()


@pytest.fixture
def kaa(nats) -> Iterator[SimulatedKaa]:
    with SimulatedKaa(nats.url, endpoints=ENDPOINTS, echo_extensions=("dcx",)) as kaa:
        yield kaa


def start_kpc(tmp_path: Path, nats_url: str, graceful: float, **env: str):
    config = make_config(tmp_path, nats_url, JSON_LOGS % graceful)
    return running_kpc(config.source, tmp_path / "kpc.log", {"NATS_URLS": nats_url, **env})


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def ready_status(kpc: KpcProcess) -> int:
    return http_get(kpc.ports["management"], "/ready").status


def connected_devices(port: int, count: int) -> list[PahoDevice]:
    devices = []
    for n in range(count):
        device = PahoDevice(port, client_id=f"shutdown-device-{n}")
        assert device.connect() == 0
        devices.append(device)
    return devices


def close_all(devices: list[PahoDevice]) -> None:
    for device in devices:
        device.close()


def test_sigterm_under_load_loses_no_acknowledged_message(tmp_path, nats, kaa):
    with start_kpc(tmp_path, nats.url, GRACEFUL_SHUTDOWN) as kpc:
        assert http_get(kpc.ports["management"], "/ready").status == 200
        devices = connected_devices(kpc.ports["mqtt_tcp"], len(ENDPOINTS))
        publishers = [
            CountingPublisher(device, f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json",
                              f"dev{n}").start()
            for n, (device, endpoint) in enumerate(zip(devices, ENDPOINTS, strict=True))
        ]
        try:
            kaa.wait_events("connectivity.connected", len(ENDPOINTS), timeout=10)
            wait_until(lambda: all(len(p.acknowledged) >= 100 for p in publishers), 20,
                       "every device to have 100 messages acknowledged")
            signalled = time.monotonic()
            kpc.send_signal(signal.SIGTERM)
            exit_code = kpc.process.wait(GRACEFUL_SHUTDOWN)
            shutdown_seconds = time.monotonic() - signalled
        finally:
            for publisher in publishers:
                publisher.stop()
            close_all(devices)

    assert exit_code == 0, kpc.log_tail()
    acknowledged = all_acknowledged(publishers)
    wait_until(lambda: set(acknowledged) <= {cd.payload for cd in kaa.received("dcx")}, 10,
               "every acknowledged message at the extension")
    arrivals = collections.Counter(cd.payload for cd in kaa.received("dcx"))
    duplicates = sum(count - 1 for count in arrivals.values())
    endpoint_ids = {endpoint.endpoint_id for endpoint in ENDPOINTS}
    wait_until(lambda: endpoint_ids <= {endpoint for event in kaa.events(
        "connectivity.disconnected") for endpoint in event.endpoints}, 10,
        "a DisconnectedEvent for every connected endpoint")
    print(f"\nshutdown under load: {shutdown_seconds:.3f} s from SIGTERM to exit; "
          f"{len(acknowledged)} acknowledged, {sum(arrivals.values())} arrived "
          f"({duplicates} duplicates), {sum(p.published for p in publishers)} published")


def test_second_sigterm_forces_a_prompt_exit(tmp_path, nats, kaa):
    # A token validation the provider never answers in time keeps a session busy: the first
    # SIGTERM would wait the whole graceful period for it.
    kaa.set_token_delay(60)
    with start_kpc(tmp_path, nats.url, 60, KAA_KPC_AUTH_REQUEST_TIMEOUT="60") as kpc:
        [device] = connected_devices(kpc.ports["mqtt_tcp"], 1)
        try:
            device.client.publish(f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json/1", b"{}",
                                  qos=1)
            kaa.wait_token_requests(1)
            kpc.send_signal(signal.SIGTERM)
            wait_until(lambda: ready_status(kpc) == 503, 5,
                       "/ready to turn 503 after the first SIGTERM")
            assert kpc.process.poll() is None, "the busy session should hold the shutdown"
            kpc.send_signal(signal.SIGTERM)
            kpc.process.wait(FORCED_EXIT_TIMEOUT)
        finally:
            close_all([device])
    assert [entry["signal"] for entry in kpc.named("forced_exit")] == ["SIGTERM"]


def test_not_ready_during_shutdown_and_the_graceful_period_ends_it(tmp_path, nats, kaa):
    # Under plain load the whole shutdown takes milliseconds, too short to poll /ready reliably;
    # a session held by a slow token validation keeps the service shutting down for the period.
    kaa.set_token_delay(60)
    with start_kpc(tmp_path, nats.url, 3, KAA_KPC_AUTH_REQUEST_TIMEOUT="60") as kpc:
        [device] = connected_devices(kpc.ports["mqtt_tcp"], 1)
        try:
            device.client.publish(f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json/1", b"{}",
                                  qos=1)
            kaa.wait_token_requests(1)
            assert ready_status(kpc) == 200
            kpc.send_signal(signal.SIGTERM)
            wait_until(lambda: ready_status(kpc) == 503, 3, "/ready to turn 503 after SIGTERM")
            body = http_get(kpc.ports["management"], "/ready").body
            assert b"shutting_down" in body
            exit_code = kpc.process.wait(FORCED_EXIT_TIMEOUT + 3)
        finally:
            close_all([device])
    assert exit_code == 0, kpc.log_tail()
    assert kpc.named("forced_exit") == []


def test_graceful_period_bounds_a_shutdown_while_nats_is_down(tmp_path, nats, kaa):
    with start_kpc(tmp_path, nats.url, 2) as kpc:
        [device] = connected_devices(kpc.ports["mqtt_tcp"], 1)
        publisher = CountingPublisher(
            device, f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json", "held").start()
        try:
            wait_until(lambda: len(publisher.acknowledged) >= 20, 10, "20 acknowledged messages")
            kaa.close()
            nats.stop()
            wait_until(lambda: ready_status(kpc) == 503, 10, "/ready to report NATS down")
            kpc.send_signal(signal.SIGTERM)
            exit_code = kpc.process.wait(2 + FORCED_EXIT_TIMEOUT)
        finally:
            publisher.stop()
            close_all([device])
    assert exit_code == 0, kpc.log_tail()


def test_sigterm_delivers_late_replies_then_disconnects_at_the_rate(tmp_path, nats, kaa):
    rate = 2  # connections closed per second: three take at least one second
    kaa.set_extension_behaviour("dcx", ExtensionBehaviour(delay=2.0))
    extra = ("service: {graceful-shutdown: 10s, shutdown: {unready-delay: 0.3s, "
             f"disconnect-rate: {rate}}}}}\nlogging: {{format: json}}\n")
    config = make_config(tmp_path, nats.url, extra)
    with running_kpc(config.source, tmp_path / "kpc.log", {"NATS_URLS": nats.url}) as kpc:
        devices = connected_devices(kpc.ports["mqtt_tcp"], 3)
        try:
            asking, *idle = devices
            for device, endpoint in zip(idle, ENDPOINTS[1:], strict=False):
                # no request id: identifies the endpoint, nothing to wait for
                device.client.publish(f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json", b"{}",
                                      qos=1)
            kaa.wait_events("connectivity.connected", 2, timeout=10)
            asking.client.publish(f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json/7",
                                  b'{"late":1}', qos=1)
            kaa.wait_received("dcx", 3, timeout=10)  # relayed: the answer comes in 2 s
            kpc.send_signal(signal.SIGTERM)
            reply = asking.expect(timeout=10)
            exit_code = kpc.process.wait(10)
        finally:
            close_all(devices)
    assert exit_code == 0, kpc.log_tail()
    assert (reply.topic, reply.payload) == (
        f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json/7/status", b'{"late":1}')
    phases = {entry["phase"]: entry for entry in kpc.named("shutdown_phase")}
    assert list(phases) == ["unready", "stop_accepting", "stop_reading", "await_replies",
                            "disconnect", "disconnected_events", "nats_drain"]
    assert phases["await_replies"]["requests"] == 1
    assert phases["disconnect"]["connections"] == 3
    closed = [entry["ts"] for entry in kpc.named("client_disconnected")
              if entry["reason"] == "shutdown"]
    assert len(closed) == 3
    assert max(closed) - min(closed) >= (len(closed) - 1) / rate - 0.1  # paced, not at once
    # every reply was delivered before the first connection closed
    assert min(closed) >= kpc.named("shutdown_phase")[4]["ts"]
    endpoint_ids = {endpoint.endpoint_id for endpoint in ENDPOINTS[:3]}
    wait_until(lambda: endpoint_ids <= {endpoint for event in kaa.events(
        "connectivity.disconnected") for endpoint in event.endpoints}, 10,
        "a DisconnectedEvent for every endpoint")
    assert kpc.named("shutdown_cut_short") == []


def test_replies_that_never_come_still_leave_time_for_the_paced_disconnection(
        tmp_path, nats, kaa):
    kaa.set_extension_behaviour("dcx", ExtensionBehaviour(silent=True))
    extra = ("service: {graceful-shutdown: 3s, shutdown: {unready-delay: 0s, "
             "disconnect-rate: 2}}\nlogging: {format: json}\n")
    config = make_config(tmp_path, nats.url, extra)
    with running_kpc(config.source, tmp_path / "kpc.log", {"NATS_URLS": nats.url}) as kpc:
        devices = connected_devices(kpc.ports["mqtt_tcp"], 2)
        try:
            devices[0].client.publish(f"kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json/5",
                                      b"{}", qos=1)
            kaa.wait_received("dcx", 1, timeout=10)
            kpc.send_signal(signal.SIGTERM)
            exit_code = kpc.process.wait(10)
        finally:
            close_all(devices)
    assert exit_code == 0, kpc.log_tail()
    [disconnect] = [entry for entry in kpc.named("shutdown_phase")
                    if entry["phase"] == "disconnect"]
    assert (disconnect["connections"], disconnect["replies_abandoned"]) == (2, 1)
    assert [entry["reason"] for entry in kpc.named("client_disconnected")] == ["shutdown"] * 2
    assert kpc.named("shutdown_cut_short") == []


def test_sigterm_ends_parked_idle_connections(tmp_path, nats, kaa):
    with start_kpc(tmp_path, nats.url, GRACEFUL_SHUTDOWN,
                   KAA_KPC_LIMITS_PARK_IDLE_AFTER="0.5s") as kpc:
        devices = connected_devices(kpc.ports["mqtt_tcp"], 2)
        try:
            wait_until(lambda: metric_value(http_get(kpc.ports["management"], "/metrics").body,
                                            "kpc_parked_connections") == 2,
                       10, "both idle connections parked")
            kpc.send_signal(signal.SIGTERM)
            exit_code = kpc.process.wait(GRACEFUL_SHUTDOWN)
        finally:
            close_all(devices)
    assert exit_code == 0, kpc.log_tail()
    closed = [entry["reason"] for entry in kpc.named("client_disconnected")]
    assert closed == ["shutdown", "shutdown"]
    assert kpc.named("shutdown_cut_short") == []
