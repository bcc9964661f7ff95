"""`kpc-trio run --workers N`: N service processes on the same ports, supervised by the parent.

Each worker is a whole KPC replica (`kpc-trio run` in a child process) with its own replica id
(`<replica id>-w<slot>`), binding every listener with SO_REUSEPORT so the kernel spreads new
connections over them; replica routing and roaming (`ConnectedEvent`) keep an endpoint's replies
on the worker that holds its connection. The parent serves nothing itself:

- without a configured NATS URL it starts one embedded nats-server for all workers;
- a worker that dies is logged and restarted after a pause that doubles while restarts keep
  failing fast (a worker that cannot start at all, exit code 2, stops the whole service);
- SIGTERM/SIGINT are passed on to every worker, which drain as a single process does; a second
  signal is passed on too (workers force their exit). The parent exits 0 when every worker did.
  SIGHUP is passed on as is: every worker reloads its configuration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence

import attrs
import trio

from kpc_trio.config import Config, ConfigError, env_var_name
from kpc_trio.logs import get_logger
from kpc_trio.nats.embedded import open_embedded_nats, terminate_with_parent

log = get_logger(__name__)

EXIT_STARTUP_ERROR = 2
EXIT_WORKER_FAILED = 1
#: First pause before restarting a dead worker; doubled (to RESTART_DELAY_MAX) while restarted
#: workers die within STABLE_AFTER seconds, so a crash loop costs little.
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0
REPLICA_ID_ENV = env_var_name("service.instance.replica.id")
NATS_URLS_ENV = env_var_name("nats.urls")


def shared_ports(config: Config) -> dict[str, int]:
    """Key path -> port of every listener the workers share."""
    transports = config.kaa.kpc.transports
    mqtt = transports.mqtt
    listeners = {
        "server.port": (True, config.server.port),
        "management.port": (True, config.management.port),
        "kaa.kpc.transports.mqtt.tcp.port": (mqtt.tcp.enabled, mqtt.tcp.port),
        "kaa.kpc.transports.mqtt.tls.port": (mqtt.tls.enabled, mqtt.tls.port),
        "kaa.kpc.transports.mqtt.websocket.port": (mqtt.websocket.enabled, mqtt.websocket.port),
        "kaa.kpc.transports.http.port": (transports.http.enabled, transports.http.port),
    }
    return {key: port for key, (enabled, port) in listeners.items() if enabled}


def check_ports_fixed(config: Config, workers: int) -> None:
    """Port 0 lets each worker pick its own port: devices would reach one worker only."""
    for key, port in shared_ports(config).items():
        if port == 0:
            raise ConfigError(f"{key}: --workers {workers} needs a fixed port, not 0 (each "
                              "worker would listen on a port of its own)", key_path=key)


def worker_replica_id(replica_id: str, slot: int) -> str:
    return f"{replica_id}-w{slot}"


@attrs.define
class Supervisor:
    """Runs `workers` copies of `argv` (a `kpc-trio ... run --worker-slot` command line)."""

    argv: Sequence[str]  # everything but the slot number, which goes last
    workers: int
    replica_id: str
    env: dict[str, str] = attrs.field(factory=dict)
    _stop_requested: trio.Event = attrs.field(factory=trio.Event)
    _running: dict[int, subprocess.Popen[bytes]] = attrs.field(factory=dict)
    _worker_failed: bool = False  # a worker ended non-zero after the stop was asked
    _startup_failed: bool = False

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def exit_code(self) -> int:
        if self._startup_failed:
            return EXIT_STARTUP_ERROR
        return EXIT_WORKER_FAILED if self._worker_failed else 0

    async def run(self) -> int:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pass_on_signals, signals)
                async with trio.open_nursery() as workers:
                    for slot in range(self.workers):
                        workers.start_soon(self._run_worker, slot)
                nursery.cancel_scope.cancel()
        return self.exit_code

    async def _pass_on_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            log.info("signal_received", signal=signal.Signals(signum).name, pid=os.getpid(),
                     workers=len(self._running))
            if signum == signal.SIGHUP:
                self._signal_all(signal.SIGHUP)  # each worker reloads its configuration
            else:
                self.stop()

    def stop(self) -> None:
        """Ask every worker to drain (again: to exit at once)."""
        self._stop_requested.set()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: signal.Signals) -> None:
        for process in self._running.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def _run_worker(self, slot: int) -> None:
        delay = RESTART_DELAY
        while not self.stopping:
            started = trio.current_time()
            code = await self._run_once(slot)
            if self.stopping:
                self._worker_failed |= code != 0
                return
            if code == EXIT_STARTUP_ERROR:
                log.error("worker_cannot_start", slot=slot, exit_code=code,
                          hint="see the worker's startup message above; stopping all workers")
                self._startup_failed = True
                self.stop()
                return
            fast = trio.current_time() - started < STABLE_AFTER
            delay = min(2 * delay, RESTART_DELAY_MAX) if fast else RESTART_DELAY
            log.warning("worker_died", slot=slot, exit_code=code, restart_in_s=delay)
            with trio.move_on_after(delay):
                await self._stop_requested.wait()

    async def _run_once(self, slot: int) -> int:
        """Start the worker in `slot` and wait for its exit code (negative: killed by signal)."""
        # Popen from this (main) thread, not trio's worker thread: the parent-death signal is
        # tied to the spawning thread. Own session: a Ctrl-C reaches the parent only, which
        # passes it on once.
        process = subprocess.Popen(  # noqa: ASYNC220 - a fork+exec, no waiting
            [*self.argv, str(slot)], stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **self.env,
                 REPLICA_ID_ENV: worker_replica_id(self.replica_id, slot)},
            preexec_fn=terminate_with_parent,
        )
        self._running[slot] = process
        log.info("worker_started", slot=slot, pid=process.pid,
                 replica_id=worker_replica_id(self.replica_id, slot))
        try:
            with exit_descriptor(process.pid) as pidfd:
                await trio.lowlevel.wait_readable(pidfd)
            code = process.wait()
        finally:
            del self._running[slot]
            if process.poll() is None:  # the parent itself is being torn down
                process.kill()
                process.wait()
        log.info("worker_exited", slot=slot, pid=process.pid, exit_code=code)
        return code


@contextlib.contextmanager
def exit_descriptor(pid: int) -> Iterator[int]:
    """A descriptor that becomes readable when the process `pid` exits (Linux 5.3+)."""
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


async def run_workers(config: Config, config_path: str | None, workers: int) -> int:
    """Supervise `workers` service processes until they all exited; returns the exit code."""
    check_ports_fixed(config, workers)
    argv = [sys.executable, "-m", "kpc_trio"]
    if config_path is not None:
        argv += ["--config", config_path]
    env = {}
    async with contextlib.AsyncExitStack() as stack:
        if not config.nats.urls.strip():
            env[NATS_URLS_ENV] = await stack.enter_async_context(open_embedded_nats())
            log.info("embedded_nats_started", url=env[NATS_URLS_ENV], workers=workers)
        supervisor = Supervisor([*argv, "run", "--worker-slot"], workers,
                                config.service.instance.replica.id, env)
        return await supervisor.run()
