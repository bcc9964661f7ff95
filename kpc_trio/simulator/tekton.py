"""Simulated Tekton (REST API v1 + 17/SCMP events) and Keycloak (client credentials tokens).

One h11 server (kpc_trio.httpd) on trio serves both: `/api/v1/...` as Tekton and
`/auth/realms/<realm>/protocol/openid-connect/token` as Keycloak. The JSON bodies are the shapes
kpc_trio.tekton_adapter guesses (its docstring says why they are guesses). Tests change the
model directly (`create_application`, `delete_app_version`, ...) and then announce the change
on NATS with `announce`, as Tekton does after a change made in the Web Dashboard.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote

import attrs
import trio

from kpc_trio.httpd import Request, Response, json_response, serve_http
from kpc_trio.kaa import scmp
from kpc_trio.logs import get_logger

log = get_logger(__name__)

TOKEN_PATH = "/auth/realms/kaa/protocol/openid-connect/token"
#: Publishes (subject, payload) on NATS and returns once the server has it (blocking; e.g.
#: `SimulatedKaa.publish`, run in a worker thread).
Publish = Callable[[str, bytes], None]


@attrs.define
class SimulatedApplication:
    tenant_id: str
    config: dict[str, Any] | None = None  # KPC's application-level ("Base") configuration
    versions: dict[str, dict[str, Any] | None] = attrs.field(factory=dict)


@attrs.define
class SimulatedKeycloak:
    """Client credentials grant for the clients in `clients` (id -> secret)."""

    clients: dict[str, str] = attrs.field(factory=lambda: {"kpc": "kpc-secret"})
    token_lifetime: int = 300
    issued: set[str] = attrs.field(factory=set)
    requests: int = 0

    def valid(self, authorization: str | None) -> bool:
        return authorization is not None and authorization.removeprefix("Bearer ") in self.issued

    def token(self, request: Request) -> Response:
        self.requests += 1
        form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        client_id = form.get("client_id", "")
        if form.get("grant_type") != "client_credentials":
            return json_response(400, {"error": "unsupported_grant_type"})
        if client_id not in self.clients or self.clients[client_id] != form.get("client_secret"):
            log.info("sim_keycloak_refused", client_id=client_id)
            return json_response(401, {"error": "unauthorized_client",
                                       "error_description": "Invalid client secret"})
        token = secrets.token_urlsafe(16)
        self.issued.add(token)
        return json_response(200, {"access_token": token, "expires_in": self.token_lifetime,
                                   "token_type": "Bearer", "not-before-policy": 0,
                                   "scope": "profile email"})


class SimulatedTekton:
    """The model behind the REST API, with switches for outages."""

    def __init__(self, *, keycloak: SimulatedKeycloak | None = None, publish: Publish | None = None,
                 provider: str = "tekton") -> None:
        self.applications: dict[str, SimulatedApplication] = {}
        self.keycloak = keycloak  # None: no Authorization required (API security off)
        self.available = True  # False: every Tekton request answers 503
        self.provider = provider
        self.requests: list[str] = []  # paths asked, in order
        self.publish = publish  # may be set later, once the NATS side is up
        self.url = ""  # http://127.0.0.1:<port>, once serving

    # --- the model (what an administrator does in the Web Dashboard) ---------------------------
    def create_application(self, app_name: str, *, tenant_id: str = "tenant-1",
                           config: dict[str, Any] | None = None) -> None:
        self.applications[app_name] = SimulatedApplication(tenant_id, config)

    def create_app_version(self, app_name: str, version: str,
                           config: dict[str, Any] | None = None) -> None:
        self.applications[app_name].versions[version] = config

    def delete_app_version(self, app_name: str, version: str) -> None:
        del self.applications[app_name].versions[version]

    def delete_application(self, app_name: str) -> None:
        del self.applications[app_name]

    async def announce(self, update_type: str, app_name: str | None = None,
                       app_version: str | None = None, *, delivery: str = "broadcast",
                       generation: int = 2, target_instance: str = "kpc") -> None:
        """Publish the 17/SCMP event Tekton sends after a change (returns once NATS has it)."""
        if self.publish is None:
            raise RuntimeError("SimulatedTekton has no NATS publisher (set `publish`)")
        tenant = self.applications[app_name].tenant_id if app_name in self.applications \
            else ("tenant-1" if app_name else None)
        legacy = generation == 1
        subject = (scmp.broadcast_subject(self.provider, update_type, legacy=legacy)
                   if delivery == "broadcast"
                   else scmp.targeted_subject(target_instance, update_type, legacy=legacy))
        update = scmp.ConfigurationUpdate(
            update_type, f"sim-scmp-{secrets.token_hex(4)}", tenant_id=tenant,
            app_name=app_name, app_version=app_version, generation=generation, delivery=delivery)
        payload = scmp.encode(update, timestamp=int(time.time() * 1000),
                              originator_replica_id="sim-tekton-1")
        await trio.to_thread.run_sync(self.publish, subject, payload)
        log.info("sim_scmp_announced", subject=subject, app_name=app_name,
                 app_version=app_version)

    # --- HTTP ------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        if request.path == TOKEN_PATH and self.keycloak is not None:
            if request.method != "POST":
                return json_response(405, {"error": "method not allowed"})
            return self.keycloak.token(request)
        if not request.path.startswith("/api/v1/"):
            return json_response(404, {"message": "not found"})
        self.requests.append(request.path)
        if not self.available:
            return json_response(503, {"message": "Tekton is down (simulated outage)"})
        if self.keycloak is not None and not self.keycloak.valid(
                dict(request.headers).get("authorization")):
            return json_response(401, {"message": "Unauthorized"})
        if request.method != "GET":
            return json_response(405, {"message": "read-only simulation"})
        return self._read(tuple(unquote(p) for p in request.path[len("/api/v1/"):].split("/")))

    def _read(self, path: tuple[str, ...]) -> Response:
        missing = json_response(404, {"message": "Application or application version name is "
                                                 "not found, or access is denied"})
        match path:
            case ("applications",):
                return _json([{"name": name, "tenantId": app.tenant_id}
                              for name, app in self.applications.items()])
            case ("applications", app_name, "app-versions") if app_name in self.applications:
                return _json([{"name": version}
                              for version in self.applications[app_name].versions])
            case ("app-configs", "applications", app_name) if app_name in self.applications:
                return _json(self.applications[app_name].config)
            case ("app-configs", "applications", app_name, "app-versions", version) \
                    if version in self.applications.get(app_name, _NO_APP).versions:
                return _json(self.applications[app_name].versions[version])
        return missing

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> NoReturn:
        """Serve on 127.0.0.1 (a free port) until cancelled; reports the base URL."""

        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                serve_http, {}, host="127.0.0.1", port=0, fallback=self.handle))
            self.url = f"http://127.0.0.1:{port}"
            log.info("sim_tekton_listening", url=self.url)
            task_status.started(self.url)
        raise AssertionError("serve_http returned")


_NO_APP = SimulatedApplication("")


def _json(document: object) -> Response:
    """200 with any JSON document (a list, or null for a level without configuration)."""
    return 200, [("content-type", "application/json")], json.dumps(document).encode()
