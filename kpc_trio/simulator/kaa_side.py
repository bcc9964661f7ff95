"""`SimulatedKaa`: the Kaa services behind NATS (token and client credentials providers,
extensions, event listener) and the revocation events CM/CCM broadcast.

They are small nats-py programs on their own asyncio loop in one background thread, so trio tests
and the `kpc-trio demo` command can run them next to KPC. Methods are called from other threads;
what the services saw is kept in thread-safe `Recording`s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any

import nats
import nats.errors
import trio
from nats.aio.client import Client as NatsClient

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.simulator import credentials
from kpc_trio.simulator.credentials import (
    BasicCredentials,
    CertificateCredentials,
    CredentialsProvider,
    CredentialsRequest,
)
from kpc_trio.simulator.events import EndpointEvent, EventListener
from kpc_trio.simulator.extension import EchoExtension, ExtensionBehaviour
from kpc_trio.simulator.service import SimulatedService
from kpc_trio.simulator.token_provider import EndpointRecord, TokenProvider

log = get_logger(__name__)

_CONNECT_TIMEOUT = 5.0
_START_TIMEOUT = 10.0
_CALL_TIMEOUT = 5.0


class SimulatorError(Exception):
    """The simulated Kaa side could not do what a test asked (not started, unknown extension)."""


class SimulatedKaa:
    """Context manager: a thread with an asyncio loop, one NATS connection and the services."""

    def __init__(
        self,
        nats_url: str,
        *,
        token_provider: str = "cm",
        endpoints: Iterable[EndpointRecord] = (),
        invalid_token_status: int = 401,
        echo_extensions: Iterable[str] = ("dcx",),
        kpc_instance: str = "kpc",
        client_provider: str = "ccm",
        basic_credentials: Iterable[BasicCredentials] = (),
        certificate_credentials: Iterable[CertificateCredentials] = (),
        unknown_credentials_status: int = 401,
    ) -> None:
        self.nats_url = nats_url
        self.kpc_instance = kpc_instance
        self._provider = TokenProvider(
            token_provider, endpoints, invalid_token_status=invalid_token_status
        )
        self._extensions = {
            name: EchoExtension(name, kpc_instance=kpc_instance) for name in echo_extensions
        }
        self._credentials = CredentialsProvider(
            client_provider, basic_credentials, certificate_credentials,
            unknown_status=unknown_credentials_status,
        )
        self._events = EventListener(kpc_instance)
        self._services: list[SimulatedService] = [
            self._provider, self._credentials, *self._extensions.values(), self._events
        ]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: NatsClient | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe; returns once every subscription is registered on the server."""
        if self._thread is not None:
            raise SimulatorError("SimulatedKaa was already started; create a new one per test")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_loop, args=(started,), name="simulated-kaa", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=_START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drain the NATS connection and stop the thread; idempotent."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already finished
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_START_TIMEOUT)
        if self._thread.is_alive():
            log.warning("sim_thread_did_not_stop", nats_url=self.nats_url)
        self._loop = self._nc = None

    def __enter__(self) -> SimulatedKaa:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run_loop(self, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop, started))
        finally:
            loop.close()

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, started: concurrent.futures.Future[None]
    ) -> None:
        replies: set[asyncio.Task[None]] = set()

        def spawn(reply: Coroutine[Any, Any, None]) -> None:
            task = loop.create_task(reply)
            replies.add(task)
            task.add_done_callback(_forget_reply(replies))

        try:
            nc = await self._connect()
            for service in self._services:
                await service.attach(nc, spawn)
            await nc.flush()
        except BaseException as exc:
            started.set_exception(exc)
            return
        self._loop, self._nc, self._stop = loop, nc, asyncio.Event()
        started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            for task in replies:
                task.cancel()
            await asyncio.gather(*replies, return_exceptions=True)
            await _drain_or_close(nc)

    async def _connect(self) -> NatsClient:
        # nats-py retries the first connect forever when reconnecting is allowed (it must be:
        # outage tests restart the server), so the deadline here is what reports a bad URL.
        try:
            return await asyncio.wait_for(
                nats.connect(
                    self.nats_url,
                    name="kpc-trio-simulated-kaa",
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    drain_timeout=2,
                    error_cb=_log_nats_error,
                    disconnected_cb=_log_nats_state("sim_nats_disconnected"),
                    reconnected_cb=_log_nats_state("sim_nats_reconnected"),
                ),
                _CONNECT_TIMEOUT,
            )
        except TimeoutError:
            raise SimulatorError(
                f"no NATS server answered at {self.nats_url} within {_CONNECT_TIMEOUT}s; "
                "start nats-server first or fix the URL"
            ) from None

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the simulator's loop and wait for it (from any other thread)."""
        if self._loop is None:
            coro.close()
            raise SimulatorError("SimulatedKaa is not running; use it as a context manager")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    # ---- extensions --------------------------------------------------------------------------

    def _extension(self, name: str) -> EchoExtension:
        try:
            return self._extensions[name]
        except KeyError:
            raise SimulatorError(
                f"extension {name!r} is not simulated; pass it in echo_extensions "
                f"(simulated: {sorted(self._extensions)})"
            ) from None

    def received(self, extension: str) -> list[records.ClientData]:
        """ClientData the extension got so far, in arrival order."""
        return self._extension(extension).received.snapshot()

    def wait_received(
        self, extension: str, count: int, timeout: float = 5.0
    ) -> list[records.ClientData]:
        """Block until the extension got at least `count` ClientData; raises WaitTimeoutError."""
        return self._extension(extension).received.wait_for(count, timeout)

    async def await_received(
        self, extension: str, count: int, timeout: float = 5.0
    ) -> list[records.ClientData]:
        """`wait_received` for trio code: waits in a worker thread so KPC keeps running."""
        return await trio.to_thread.run_sync(
            functools.partial(self.wait_received, extension, count, timeout),
            abandon_on_cancel=True,
        )

    def arrival_subject(self, extension: str, correlation_id: str) -> str:
        """The NATS subject a ClientData reached the extension on (service or replica)."""
        return self._extension(extension).arrived_on[correlation_id]

    def replica_subject(self, extension: str) -> str:
        """The ClientData subject of the extension's simulated replica (session affinity)."""
        return self._extension(extension).replica_subject

    def set_extension_behaviour(self, extension: str, behaviour: ExtensionBehaviour) -> None:
        """How the extension answers from now on (status, payload, delay, silence)."""
        self._extension(extension).behaviour = behaviour

    def push(
        self, extension: str, data: records.ExtensionData, *, subject: str | None = None
    ) -> None:
        """Publish `data` as `extension` would, by default to the KPC instance subject; returns
        after the NATS server has it. The record is sent as given, inconsistencies included."""
        target = subject or subjects.extension_data_service(self.kpc_instance)
        self._call(self._publish(target, records.encode(data)))
        log.info("sim_extension_data_pushed", extension=extension, subject=target,
                 endpoint_id=data.endpoint_id, resource_path=data.resource_path,
                 status=data.status_code)

    def publish(self, subject: str, payload: bytes) -> None:
        """Publish raw bytes on `subject` (e.g. a simulated Tekton's 17/SCMP event); returns
        once the NATS server has them."""
        self._call(self._publish(subject, payload))

    async def _publish(self, subject: str, payload: bytes) -> None:
        assert self._nc is not None  # set before the loop accepts calls
        await self._nc.publish(subject, payload)
        await self._nc.flush()

    # ---- token provider ----------------------------------------------------------------------

    @property
    def token_requests(self) -> list[records.EndpointTokenValidationRequest]:
        """What the token provider was asked so far."""
        return self._provider.requests.snapshot()

    def wait_token_requests(
        self, count: int, timeout: float = 5.0
    ) -> list[records.EndpointTokenValidationRequest]:
        return self._provider.requests.wait_for(count, timeout)

    def set_token_delay(self, seconds: float) -> None:
        """Answer token requests after `seconds` from now on (for validation timeout tests)."""
        self._provider.delay = seconds

    # ---- client credentials provider (22/CAP and 16/ECAP) ------------------------------------

    @property
    def credentials_requests(self) -> list[CredentialsRequest]:
        """What the client credentials provider was asked so far, in arrival order."""
        return self._credentials.requests.snapshot()

    def wait_credentials_requests(
        self, count: int, timeout: float = 5.0
    ) -> list[CredentialsRequest]:
        return self._credentials.requests.wait_for(count, timeout)

    def set_credentials_delay(self, seconds: float) -> None:
        """Answer client authentication requests after `seconds` from now on."""
        self._credentials.delay = seconds

    def set_credentials_status(self, status: int | None) -> None:
        """Answer every client authentication request with `status` (None: per the table)."""
        self._credentials.status = status

    # ---- revocation events (as CM and CCM broadcast them) -------------------------------------

    def revoke_tokens(
        self, app_name: str, endpoint_id: str, token_ids: Iterable[str], *, originator: str = "cm"
    ) -> None:
        """Revoke the tokens as CM does: the token provider rejects them from now on, then a
        16/ECAP EndpointTokenRevokedEvent is published; returns once NATS has it."""
        token_ids = tuple(token_ids)
        self._provider.revoke(app_name, token_ids)
        self._broadcast(credentials.token_revoked(app_name, endpoint_id, token_ids,
                                                  originator=originator))

    def revoke_basic_credentials(
        self, tenant_id: str, credentials_id: str, *, originator: str = "ccm"
    ) -> None:
        """Publish a 22/CAP ClientCredentialsRevokedEvent for basic credentials."""
        self._broadcast(credentials.basic_credentials_revoked(tenant_id, credentials_id,
                                                              originator=originator))

    def revoke_certificate_credentials(
        self, tenant_id: str, credentials_id: str, *, originator: str = "ccm"
    ) -> None:
        """Publish a 22/CAP ClientCredentialsRevokedEvent for a client certificate."""
        self._broadcast(credentials.certificate_credentials_revoked(tenant_id, credentials_id,
                                                                    originator=originator))

    def revoke_client_credential(self, credential_id: str, *, originator: str = "cm") -> None:
        """Publish a 16/ECAP ClientCredentialRevokedEvent (Kaa 1.0/1.1)."""
        self._broadcast(credentials.client_credential_revoked(credential_id,
                                                              originator=originator))

    def _broadcast(self, event: tuple[str, records.Record]) -> None:
        subject, record = event
        self._call(self._publish(subject, records.encode(record)))
        log.info("sim_revocation_published", subject=subject,
                 correlation_id=record.correlation_id)

    # ---- endpoint events ---------------------------------------------------------------------

    def events(self, subject_suffix: str) -> list[EndpointEvent]:
        """Decoded events seen under `kaa.v1.events.<kpc>.endpoint.<subject_suffix>`,
        e.g. `connectivity.connected`."""
        return self._events.recording(subject_suffix).snapshot()

    def wait_events(
        self, subject_suffix: str, count: int, timeout: float = 5.0
    ) -> list[EndpointEvent]:
        return self._events.recording(subject_suffix).wait_for(count, timeout)

    async def await_events(
        self, subject_suffix: str, count: int, timeout: float = 5.0
    ) -> list[EndpointEvent]:
        return await trio.to_thread.run_sync(
            functools.partial(self.wait_events, subject_suffix, count, timeout),
            abandon_on_cancel=True,
        )

    def online_endpoints(self) -> dict[str, str]:
        """Endpoint id -> appversion of endpoints connected per the events seen."""
        return self._events.online_endpoints()


@contextlib.asynccontextmanager
async def open_simulated_kaa(nats_url: str, **options: Any) -> AsyncIterator[SimulatedKaa]:
    """`SimulatedKaa` for trio code: starting and stopping happen in a worker thread."""
    kaa = SimulatedKaa(nats_url, **options)
    await trio.to_thread.run_sync(kaa.start)
    try:
        yield kaa
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(kaa.close)


async def _drain_or_close(nc: NatsClient) -> None:
    """Drain when connected; while NATS is away (reconnecting) just close."""
    try:
        await nc.drain()
    except nats.errors.Error:
        await nc.close()


def _forget_reply(replies: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def forget(task: asyncio.Task[None]) -> None:
        replies.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sim_reply_failed", reason=repr(task.exception()))
    return forget


async def _log_nats_error(exc: Exception) -> None:
    log.info("sim_nats_error", reason=repr(exc))  # routine while NATS restarts in outage tests


def _log_nats_state(event: str) -> Callable[[], Awaitable[None]]:
    async def callback() -> None:
        log.info(event)
    return callback
