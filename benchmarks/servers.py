"""The processes under test and their helpers: kpc_trio, the peers, NATS and the Kaa side.

Every server is a child process on 127.0.0.1 with ports chosen up front, logs in the run's work
directory, and a `pid` for RSS readings. A peer whose program is missing is skipped, not fatal.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs

from benchmarks.kaa_side import READY_LINE
from benchmarks.transports import HOST, WEBSOCKET_PATH
from benchmarks.workload import APP, APP_VERSION, EXTENSION

KPC = "kpc_trio"
START_TIMEOUT = 30.0
STOP_GRACE = 10.0
AMQTT_DEFAULT = Path(__file__).parent / ".venv-amqtt" / "bin" / "amqtt"


class ServerStartError(Exception):
    """A server under test exited or did not listen in time; its log tail is in the message."""


def is_kpc(server_name: str) -> bool:
    """kpc_trio with one worker (`kpc_trio`) or several (`kpc_trio-2w`)."""
    return server_name == KPC or server_name.startswith(f"{KPC}-")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ServerStartError(f"process {pid} reports no VmRSS (has it exited?)")


@attrs.define
class ServerProcess:
    """One broker under test; `port` is its plain MQTT listener."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] | None = None
    extra_ports: dict[str, int] = attrs.field(factory=dict)
    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerStartError(f"{self.name} exited with {self._process.returncode}: "
                                       f"{self._log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ServerStartError(f"{self.name} did not listen on {self.port} within "
                               f"{START_TIMEOUT:.0f} s: {self._log_tail()}")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _log_tail(self) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])


def kpc_server(workdir: Path, nats_url: str, cert_file: Path, key_file: Path,
               workers: int = 1) -> ServerProcess:
    """kpc_trio, named `kpc_trio` with one worker and `kpc_trio-<N>w` with N."""
    name = KPC if workers == 1 else f"{KPC}-{workers}w"
    ports = {name: free_port() for name in ("tcp", "tls", "ws", "management", "rest")}
    config = workdir / f"{name}-config.yml"
    config.write_text(f"""
server: {{port: {ports["rest"]}}}
management: {{port: {ports["management"]}}}
logging: {{level: WARNING}}
kaa:
  kpc:
    transports:
      mqtt:
        tcp: {{host: {HOST}, port: {ports["tcp"]}}}
        tls: {{enabled: true, host: {HOST}, port: {ports["tls"]},
               cert-file: {cert_file}, key-file: {key_file}}}
        websocket: {{enabled: true, host: {HOST}, port: {ports["ws"]}, path: {WEBSOCKET_PATH}}}
  applications:
    {APP}:
      versions:
        {APP_VERSION}:
          allowed-extension-instances: [{EXTENSION}]
  extension-instances:
    {EXTENSION}: {{endpoint-aware: true}}
""")
    return ServerProcess(
        name=name,
        argv=[_kpc_trio_command(), "--config", str(config), "run", "--workers", str(workers)],
        port=ports["tcp"], log_path=workdir / f"{name}.log", env={"NATS_URLS": nats_url},
        extra_ports={"tls": ports["tls"], "ws": ports["ws"]},
    )


def _kpc_trio_command() -> str:
    # The console script next to this interpreter, so a venv run benchmarks its own install.
    beside = Path(sys.executable).parent / "kpc-trio"
    return str(beside) if beside.exists() else "kpc-trio"


def mosquitto_server(workdir: Path, cert_file: Path, key_file: Path) -> ServerProcess | str:
    """mosquitto (plain and TLS listeners), or why it is skipped."""
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        return "mosquitto not installed (apt-get install -y mosquitto)"
    # mosquitto started as root runs as user mosquitto: it must reach the run's key files.
    workdir.chmod(0o711)
    for path in (cert_file, key_file):
        path.chmod(0o644)
    port, tls_port = free_port(), free_port()
    config = workdir / "mosquitto.conf"
    # No persistence, no queue limit that would drop the counter's QoS 0 stream, and Nagle off
    # like the other servers (mosquitto keeps it on by default: 40 ms stalls in the round trip).
    config.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n"
                      "max_queued_messages 0\nset_tcp_nodelay true\nlog_type error\n"
                      f"listener {tls_port} {HOST}\ncertfile {cert_file}\nkeyfile {key_file}\n")
    return ServerProcess(name="mosquitto", argv=[binary, "-c", str(config)], port=port,
                         log_path=workdir / "mosquitto.log", extra_ports={"tls": tls_port})


def amqtt_server(workdir: Path, binary: Path) -> ServerProcess | str:
    """amqtt (from its own venv: its pins must not touch ours), or why it is skipped."""
    if not binary.exists():
        return (f"amqtt not found at {binary} (python3 -m venv benchmarks/.venv-amqtt && "
                "benchmarks/.venv-amqtt/bin/pip install amqtt==0.12.1)")
    port = free_port()
    config = workdir / "amqtt.yaml"
    # Ingest-only: anonymous access, no $SYS publisher, no packet logging.
    config.write_text(f"""
listeners:
  default:
    type: tcp
    bind: {HOST}:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
""")
    return ServerProcess(name="amqtt", argv=[str(binary), "-c", str(config)], port=port,
                         log_path=workdir / "amqtt.log")


@attrs.define
class KaaSideProcess:
    """`python -m benchmarks.kaa_side` as a child; stopping closes its stdin."""

    nats_url: str
    options: list[str]
    _process: subprocess.Popen[str] | None = attrs.field(default=None, init=False)

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.kaa_side", self.nats_url, *self.options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).parent.parent,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if line != READY_LINE:
            self.stop()
            raise ServerStartError(f"simulated Kaa side {self.options} did not start "
                                   f"(said {line!r}); see its stderr above")

    def stop(self) -> None:
        if self._process is None:
            return
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
