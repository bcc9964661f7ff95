"""Applications from Tekton: the first load, 17/SCMP events, resyncs, and outages.

```
TektonSource.serve        first load (retried with backoff; the service opens no listener
│                         before it succeeds), then:
├─ run_refreshes          pending scopes -> debounce -> fetch -> new catalogue published
└─ run_resyncs            a full load every `resync-interval`
```
17/SCMP events (and a NATS reconnect, after which events may have been missed) only mark a
scope pending: the event says what changed, never how, so the scope is re-fetched and the
answer decides (an application that answers 404 is gone, whatever the update type said).
Events are never acknowledged (RFC 17). One task fetches, so fetches never overlap and the
last one wins. A failed fetch keeps the last good catalogue and the scope pending, retried
with exponential backoff; `kpc_tekton_last_success_timestamp_seconds` and the
`tekton_refresh_failed` log say how stale the configuration is.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote, urlencode

import attrs
import trio

from kpc_trio import tekton_adapter
from kpc_trio.applications import AppVersionSettings
from kpc_trio.config import ConfigError, TektonSettings
from kpc_trio.http_client import HttpClientError, http_request
from kpc_trio.kaa import scmp
from kpc_trio.keycloak import ServiceTokens, TokenError
from kpc_trio.logs import get_logger
from kpc_trio.metrics import Metrics
from kpc_trio.nats.gateway import InboundMessage

log = get_logger(__name__)

BACKOFF_FIRST: Final = 0.5
BACKOFF_MAX: Final = 30.0
#: Applications marked for re-fetching at most; beyond, a full load is done instead.
MAX_PENDING_SCOPES: Final = 1000

#: app name -> appversion name -> settings
Catalogue = Mapping[str, Mapping[str, AppVersionSettings]]


class TektonError(Exception):
    """Tekton could not be read (unreachable, refused, unreadable answer)."""


class TektonUnavailableError(ConfigError):
    """The first load did not succeed within `kaa.tekton.initial-load-timeout`: a startup
    error (one line, exit code 2), like a configuration that cannot be used."""


@attrs.frozen
class _Everything:
    """The pending scope "reload all" (all-null events, reconnects, resyncs)."""


EVERYTHING: Final = _Everything()
Scope = _Everything | str  # an application name, or everything


class TektonClient:
    """GETs on Tekton's REST API v1 with the service token; 404 is None."""

    def __init__(self, settings: TektonSettings, tokens: ServiceTokens) -> None:
        self._base = settings.url.rstrip("/") + "/api/v1"
        self._timeout = settings.request_timeout
        self._tokens = tokens

    async def get(self, path: str, **query: str) -> Any:
        url = self._base + path + (f"?{urlencode(query)}" if query else "")
        for attempt in (1, 2):
            headers = [("accept", "application/json"), *await self._tokens.authorization()]
            try:
                response = await http_request("GET", url, headers=headers, timeout=self._timeout)
            except HttpClientError as exc:
                raise TektonError(str(exc)) from None
            if response.status == 401 and self._tokens.enabled and attempt == 1:
                self._tokens.invalidate()  # expired or revoked early: one new token, one retry
                continue
            break
        if response.status == 404:
            return None
        if response.status == 401:
            raise TektonError(f"GET {url}: 401 with a fresh token (is Tekton in the same "
                              "Keycloak realm as kaa.oauth2.token-url?)")
        if response.status == 403:
            raise TektonError(f"GET {url}: 403: KPC's service account lacks "
                              "kaa:application:read / kaa:tenant:configuration:read")
        if not 200 <= response.status < 300:
            raise TektonError(f"GET {url}: HTTP {response.status}")
        if not response.body.strip():
            return None
        try:
            return json.loads(response.body)
        except ValueError as exc:
            raise TektonError(f"GET {url}: the answer is not JSON ({exc})") from None


class TektonSource:
    """Keeps the catalogue of applications in step with Tekton; publishes each new one."""

    def __init__(
        self,
        settings: TektonSettings,
        client: TektonClient,
        *,
        instance: str,
        extension_instances: Callable[[], Iterable[str]],
        on_catalogue: Callable[[Catalogue], None],
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._client = client
        self._instance = instance
        self._extension_instances = extension_instances
        self._on_catalogue = on_catalogue
        self._metrics = metrics
        self._catalogue: dict[str, Mapping[str, AppVersionSettings]] = {}
        self._pending: set[Scope] = set()
        self._wake = trio.Event()
        self._last_success: float | None = None  # wall clock
        self._limiter = trio.CapacityLimiter(settings.max_concurrency)

    # --- what other tasks call (never blocking) ----------------------------------------------
    def on_scmp_message(self, message: InboundMessage) -> None:
        """A 17/SCMP event (in the NATS reading task): note its scope; no reply, ever."""
        try:
            update = scmp.decode(message.subject, message.payload)
        except scmp.ScmpDecodeError as exc:
            self._metrics.scmp_events.labels("bad").inc()
            log.warning("scmp_event_undecodable", subject=message.subject, reason=str(exc))
            return
        self._metrics.scmp_events.labels(update.update_type).inc()
        log.info("scmp_event", update_type=update.update_type, delivery=update.delivery,
                 generation=update.generation, tenant_id=update.tenant_id,
                 app_name=update.app_name, app_version=update.app_version,
                 correlation_id=update.correlation_id)
        self.request(EVERYTHING if update.app_name is None else update.app_name)

    def request(self, scope: Scope) -> None:
        """Re-fetch `scope` soon (debounced)."""
        if len(self._pending) >= MAX_PENDING_SCOPES:
            scope = EVERYTHING  # a flood of events: one full load covers them all, bounded
        if scope is EVERYTHING:
            self._pending.clear()
        elif EVERYTHING in self._pending:
            return
        self._pending.add(scope)
        self._wake.set()

    # --- tasks ---------------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        await self._first_load()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run_refreshes)
            if self._settings.resync_interval > 0:
                nursery.start_soon(self.run_resyncs)

    async def _first_load(self) -> None:
        timeout = self._settings.initial_load_timeout
        deadline = trio.current_time() + timeout if timeout > 0 else float("inf")
        delay = BACKOFF_FIRST
        while True:
            self._pending.discard(EVERYTHING)  # events before now are covered by this load
            try:
                await self._refresh({EVERYTHING})
                return
            except (TektonError, TokenError) as exc:
                self._failed(exc, delay)
            if trio.current_time() + delay > deadline:
                raise TektonUnavailableError(
                    f"kaa.tekton.url: no applications loaded from {self._settings.url} within "
                    f"kaa.tekton.initial-load-timeout ({timeout:g}s); see the "
                    "tekton_refresh_failed log lines for the cause", key_path="kaa.tekton.url")
            await trio.sleep(_jittered(delay))
            delay = min(delay * 2, BACKOFF_MAX)

    async def run_refreshes(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            await self._wake.wait()
            await trio.sleep(self._settings.debounce)
            self._wake = trio.Event()
            scopes, self._pending = self._pending, set()
            try:
                await self._refresh(scopes)
            except (TektonError, TokenError) as exc:
                self._pending |= scopes
                self._failed(exc, delay)
                await trio.sleep(_jittered(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                self._wake.set()
            else:
                delay = BACKOFF_FIRST

    async def run_resyncs(self) -> None:
        while True:
            await trio.sleep(self._settings.resync_interval)
            self.request(EVERYTHING)

    # --- loading -------------------------------------------------------------------------------
    async def _refresh(self, scopes: set[Scope]) -> None:
        if EVERYTHING in scopes:
            names = _names(await self._get("/applications"), "/applications")
            catalogue = await self._load_applications(names)
        else:
            catalogue = dict(self._catalogue)
            loaded = await self._load_applications([s for s in scopes if isinstance(s, str)])
            for app_name in scopes:
                assert isinstance(app_name, str)
                catalogue.pop(app_name, None)  # gone unless loaded again
            catalogue.update(loaded)
        self._catalogue = catalogue
        self._last_success = time.time()
        self._metrics.tekton_last_success.set(self._last_success)
        self._on_catalogue(catalogue)

    async def _load_applications(self, names: Iterable[str]
                                 ) -> dict[str, Mapping[str, AppVersionSettings]]:
        loaded: dict[str, Mapping[str, AppVersionSettings] | None] = {}

        async def load(app_name: str) -> None:
            loaded[app_name] = await self._load_application(app_name)

        await _concurrently(load, dict.fromkeys(names))
        return {name: versions for name, versions in loaded.items() if versions is not None}

    async def _load_application(self, app_name: str) -> Mapping[str, AppVersionSettings] | None:
        """The application's appversions with their settings; None when it is gone."""
        app = quote(app_name, safe="")
        listing = await self._get(f"/applications/{app}/app-versions")
        if listing is None:
            return None
        version_names = _names(listing, f"/applications/{app_name}/app-versions")
        base = await self._configuration(f"/app-configs/applications/{app}")
        documents: dict[str, dict[str, Any]] = {}

        async def load(version: str) -> None:
            documents[version] = await self._configuration(
                f"/app-configs/applications/{app}/app-versions/{quote(version, safe='')}")

        await _concurrently(load, version_names)
        extensions = tuple(self._extension_instances())
        return {
            version: tekton_adapter.app_version_settings(
                app_name, version, tekton_adapter.merged(base, documents[version]),
                all_extensions=extensions,
                allow_all_by_default=self._settings.default_allow_all_extensions)
            for version in version_names
        }

    async def _configuration(self, path: str) -> dict[str, Any]:
        document = await self._get(path, serviceInstanceName=self._instance)
        try:
            return tekton_adapter.configuration(document, self._instance)
        except tekton_adapter.UnreadableDocumentError as exc:
            raise TektonError(f"{path}: {exc}") from None

    async def _get(self, path: str, **query: str) -> Any:
        async with self._limiter:
            document = await self._client.get(path, **query)
        return document

    def _failed(self, exc: Exception, retry_in: float) -> None:
        reason = "keycloak" if isinstance(exc, TokenError) else "tekton"
        self._metrics.tekton_refresh_failures.labels(reason).inc()
        stale = None if self._last_success is None else round(time.time() - self._last_success, 1)
        log.warning("tekton_refresh_failed", reason=reason, error=str(exc),
                    serving="last good configuration" if stale is not None else "nothing yet",
                    stale_seconds=stale, retry_in=round(retry_in, 2))


async def _concurrently(load: Callable[[str], Awaitable[None]], names: Iterable[str]) -> None:
    """`load` every name at once; the first failure is raised as itself, not as a trio
    ExceptionGroup, which the retry loops' `except (TektonError, TokenError)` would miss."""
    errors: list[Exception] = []

    async def guarded(name: str) -> None:
        try:
            await load(name)
        except (TektonError, TokenError) as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(guarded, name)
    if errors:
        raise errors[0]


def _names(document: object, path: str) -> list[str]:
    if document is None:
        raise TektonError(f"{path}: 404 (is kaa.tekton.url Tekton's base URL?)")
    try:
        return tekton_adapter.names(document, path)
    except tekton_adapter.UnreadableDocumentError as exc:
        raise TektonError(str(exc)) from None


def _jittered(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)
