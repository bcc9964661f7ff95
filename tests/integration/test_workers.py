"""`kpc-trio run --workers 2` as devices and an operator see it (issue 16, item 4).

Two worker processes share the MQTT port (SO_REUSEPORT) behind one supervisor, which starts the
embedded nats-server since no NATS URL is configured. Which worker a connection reaches is the
kernel's choice (a hash of the connection's addresses): every connection's `ConnectedEvent` names
the worker's replica id, so the test sees both serve.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from kpc_trio.simulator.kaa_side import SimulatedKaa, open_simulated_kaa
from tests.integration.internal_errors import watch_child_log
from tests.integration.kpc_harness import APP_VERSION, BASE_CONFIG, ENDPOINTS, call, open_device
from tests.integration.kpc_process import KpcProcess, child_env, kpc_command
from tests.integration.waiting import eventually

STARTUP_TIMEOUT = 30
REPLICA_ID = "kpc-workers"
REPLICAS = {f"{REPLICA_ID}-w0", f"{REPLICA_ID}-w1"}
# Sequential connections, each reaching either worker: all on one has odds 2 ** -(n - 1).
CONNECTIONS = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, mqtt_port: int) -> Path:
    """Fixed ports: with port 0 each worker would bind a port of its own."""
    config = tmp_path / "service-config.yml"
    config.write_text(
        BASE_CONFIG
        .replace("tcp: {host: 127.0.0.1, port: 0}",
                 f"tcp: {{host: 127.0.0.1, port: {mqtt_port}}}")
        .replace("management: {port: 0}", f"management: {{port: {free_port()}}}")
        .replace("server: {port: 0}", f"server: {{port: {free_port()}}}")
        + "logging: {format: json}\n")
    return config


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[KpcProcess]:
    """`kpc-trio run --workers 2` on a free MQTT port."""
    config = write_config(tmp_path, free_port())
    log_path = tmp_path / "kpc.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            kpc_command("--config", str(config), "run", "--workers", "2"),
            env=child_env({"SERVICE_INSTANCE_REPLICA_ID": REPLICA_ID}),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    kpc = KpcProcess(process, log_path)
    watch_child_log(log_path)  # supervisor and workers: no internal error logged by any
    try:
        yield kpc
    finally:
        if process.poll() is None:  # its workers get SIGTERM from the kernel (parent death)
            process.kill()
            process.wait()


def started_replicas(kpc: KpcProcess) -> set[str]:
    return {event["replica_id"] for event in kpc.named("kpc_started")}


async def await_serving(kpc: KpcProcess, count: int) -> None:
    """Until `count` `kpc_started` were logged (a worker that is restarted logs another)."""
    await eventually(lambda: len(kpc.named("kpc_started")) >= count
                     or kpc.process.poll() is not None, timeout=STARTUP_TIMEOUT)
    assert kpc.process.poll() is None, kpc.log_tail()


async def round_trips(kaa: SimulatedKaa, port: int, connections: int, first: int) -> None:
    """One connection after another, each a request through the echo extension."""
    for n in range(first, first + connections):
        endpoint = ENDPOINTS[n % len(ENDPOINTS)]
        topic = f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json/{n}"
        async with open_device(port) as device:
            await call(device.publish, topic, b"%d" % n, qos=1)
            reply = await call(device.expect)
        assert (reply.topic, reply.payload) == (topic + "/status", b"%d" % n)


def serving_replicas(kaa: SimulatedKaa) -> set[str]:
    return {event.originator_replica_id
            for event in kaa.events("connectivity.connected")}


async def test_two_workers_share_the_port_reload_restart_when_killed_and_drain_on_sigterm(
        supervisor: KpcProcess) -> None:
    await await_serving(supervisor, 2)
    assert started_replicas(supervisor) == REPLICAS
    port = supervisor.named("kpc_started")[0]["mqtt_tcp_port"]
    assert {e["mqtt_tcp_port"] for e in supervisor.named("kpc_started")} == {port}
    [nats] = supervisor.named("embedded_nats_started")
    async with open_simulated_kaa(nats["url"], endpoints=ENDPOINTS,
                                  echo_extensions=("dcx",)) as kaa:
        await round_trips(kaa, port, CONNECTIONS, 0)
        assert serving_replicas(kaa) == REPLICAS  # both workers served connections

        # SIGHUP reaches every worker (each reloads its configuration), not the supervisor alone.
        supervisor.send_signal(signal.SIGHUP)
        await eventually(lambda: len(supervisor.named("config_reloaded")) == 2, timeout=10)
        assert supervisor.process.poll() is None

        # A dead worker is logged and replaced under the same replica id; the port keeps serving.
        victim = supervisor.named("worker_started")[1]
        os.kill(victim["pid"], signal.SIGKILL)
        await eventually(lambda: bool(supervisor.named("worker_died")), timeout=10)
        [died] = supervisor.named("worker_died")
        assert (died["slot"], died["exit_code"]) == (victim["slot"], -signal.SIGKILL)
        await await_serving(supervisor, 3)
        restarted = supervisor.named("worker_started")[-1]
        assert restarted["slot"] == victim["slot"] and restarted["pid"] != victim["pid"]
        assert started_replicas(supervisor) == REPLICAS
        await round_trips(kaa, port, 4, CONNECTIONS)

    supervisor.send_signal(signal.SIGTERM)
    code = await trio.to_thread.run_sync(supervisor.process.wait, 30)
    assert code == 0, supervisor.log_tail()
    exits = supervisor.named("worker_exited")
    final = {e["slot"]: e["exit_code"] for e in exits if e["pid"] != victim["pid"]}
    assert final == {0: 0, 1: 0}  # both drained and exited cleanly
    assert len(supervisor.named("kpc_stopped")) == 2
    assert supervisor.named("nats_server_stopped")


@pytest.mark.expected_errors("worker_cannot_start")
def test_a_worker_that_cannot_start_stops_all_with_exit_2(tmp_path: Path) -> None:
    log_path = tmp_path / "kpc.log"
    watch_child_log(log_path)
    with socket.socket() as taken:  # bound without SO_REUSEPORT: no worker can share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, taken.getsockname()[1])
        with log_path.open("wb") as log_file:
            code = subprocess.run(
                kpc_command("--config", str(config), "run", "--workers", "2"),
                env=child_env({}), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, timeout=60).returncode
    output = log_path.read_text()
    assert code == 2, output[-2000:]
    assert "kpc-trio: cannot start:" in output  # the worker's one-line reason
    assert "worker_cannot_start" in output
    assert "worker_died" not in output  # not restarted in a loop


def test_workers_must_be_at_least_one() -> None:
    done = subprocess.run(kpc_command("run", "--workers", "0"), env=child_env({}),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--workers: must be 1 or more, not 0" in done.stderr


def test_workers_need_fixed_ports(tmp_path: Path) -> None:
    config = write_config(tmp_path, 0)
    done = subprocess.run(kpc_command("--config", str(config), "run", "--workers", "2"),
                          env=child_env({}), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert ("kpc-trio: cannot start: kaa.kpc.transports.mqtt.tcp.port: --workers 2 needs a "
            "fixed port, not 0") in done.stderr
