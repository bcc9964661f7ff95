"""TektonClient and ServiceTokens against the simulated Tekton and Keycloak over loopback HTTP:
tokens cached, renewed once after a 401, Keycloak's refusal and Tekton's errors reported."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import trio

from kpc_trio.applications import AppVersionSettings
from kpc_trio.config import OAuth2Settings, TektonSettings
from kpc_trio.http_client import HttpClientError, http_request
from kpc_trio.keycloak import ServiceTokens, TokenError
from kpc_trio.metrics import Metrics
from kpc_trio.simulator.tekton import TOKEN_PATH, SimulatedKeycloak, SimulatedTekton
from kpc_trio.tekton import (
    MAX_PENDING_SCOPES,
    Catalogue,
    TektonClient,
    TektonError,
    TektonSource,
    TektonUnavailableError,
)
from tests.integration.waiting import eventually


@contextlib.asynccontextmanager
async def open_tekton(secret: str = "pw") -> AsyncIterator[tuple[SimulatedTekton, TektonClient]]:
    tekton = SimulatedTekton(keycloak=SimulatedKeycloak(clients={"kpc": "pw"}))
    tekton.create_application("app")
    tekton.create_app_version("app", "app-v1", {"allowed-extension-instances": ["dcx"]})
    async with trio.open_nursery() as nursery:
        url = await nursery.start(tekton.serve)
        settings = TektonSettings(enabled=True, url=url, request_timeout=2.0,
                                  initial_load_timeout=0.3)
        tokens = ServiceTokens(OAuth2Settings(token_url=url + TOKEN_PATH, client_secret=secret),
                               request_timeout=2.0)
        yield tekton, TektonClient(settings, tokens)
        nursery.cancel_scope.cancel()


async def test_the_token_is_cached_and_renewed_once_after_a_401() -> None:
    async with open_tekton() as (tekton, client):
        assert await client.get("/applications") == [{"name": "app", "tenantId": "tenant-1"}]
        assert await client.get("/applications/app/app-versions") == [{"name": "app-v1"}]
        assert tekton.keycloak is not None and tekton.keycloak.requests == 1
        tekton.keycloak.issued.clear()  # revoked before its expiry
        assert await client.get("/applications/nope/app-versions") is None  # 404
        assert tekton.keycloak.requests == 2


async def test_a_refused_secret_is_a_token_error_naming_the_client() -> None:
    async with open_tekton(secret="wrong") as (_, client):
        with pytest.raises(TokenError, match="Keycloak refused client 'kpc': HTTP 401 "
                                             "Invalid client secret .check kaa.oauth2"):
            await client.get("/applications")


async def test_tekton_errors_say_what_failed() -> None:
    async with open_tekton() as (tekton, client):
        tekton.available = False
        with pytest.raises(TektonError, match="HTTP 503"):
            await client.get("/applications")


async def test_the_first_load_gives_up_after_the_initial_load_timeout() -> None:
    async with open_tekton() as (tekton, client):
        tekton.available = False
        settings = TektonSettings(enabled=True, url=tekton.url, initial_load_timeout=0.3)
        source = TektonSource(settings, client, instance="kpc", extension_instances=lambda: (),
                              on_catalogue=lambda catalogue: None, metrics=Metrics())
        with pytest.raises(TektonUnavailableError) as failure:
            await source.serve()
        assert failure.value.key_path == "kaa.tekton.url"


async def test_an_unreadable_appversion_configuration_is_retried_not_a_crash() -> None:
    async with open_tekton() as (tekton, client):
        tekton.create_app_version("app", "app-v2", cast(Any, ["not", "an", "object"]))
        settings = TektonSettings(enabled=True, url=tekton.url, initial_load_timeout=0.3)
        source = TektonSource(settings, client, instance="kpc", extension_instances=lambda: (),
                              on_catalogue=lambda catalogue: None, metrics=Metrics())
        # Concurrent loads of appversions must fail as a TektonError (retried, then this
        # startup error), never as an ExceptionGroup escaping the retry loop.
        with pytest.raises(TektonUnavailableError):
            await source.serve()


async def test_the_first_load_publishes_the_catalogue() -> None:
    published: list[Catalogue] = []
    async with open_tekton() as (tekton, client):
        source = TektonSource(attrs.evolve(TektonSettings(), url=tekton.url), client,
                              instance="kpc", extension_instances=lambda: ("dcx",),
                              on_catalogue=published.append, metrics=Metrics())
        async with trio.open_nursery() as nursery:
            await nursery.start(source.serve)
            nursery.cancel_scope.cancel()
    assert published == [{"app": {"app-v1": AppVersionSettings("app", ("dcx",))}}]


async def test_without_oauth2_tekton_is_called_without_authorization() -> None:
    tekton = SimulatedTekton()  # API security off: no Keycloak
    tekton.create_application("app")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(tekton.serve)
        tokens = ServiceTokens(OAuth2Settings(enabled=False, token_url="http://unused:1/"),
                               request_timeout=1.0)
        client = TektonClient(TektonSettings(enabled=True, url=url), tokens)
        assert await client.get("/applications") == [{"name": "app", "tenantId": "tenant-1"}]
        nursery.cancel_scope.cancel()


async def test_the_secret_file_is_read_at_each_token_request(tmp_path: Path) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("old\n")
    async with open_tekton() as (tekton, _):
        assert tekton.keycloak is not None
        settings = OAuth2Settings(token_url=tekton.url + TOKEN_PATH,
                                  client_secret_file=str(secret))
        tokens = ServiceTokens(settings, request_timeout=2.0)
        with pytest.raises(TokenError, match="HTTP 401"):
            await tokens.authorization()
        secret.write_text("pw\n")  # the mounted secret was updated
        [(name, value)] = await tokens.authorization()
        assert name == "authorization" and value.removeprefix("Bearer ") in tekton.keycloak.issued
        secret.unlink()
        tokens.invalidate()
        with pytest.raises(TokenError, match="kaa.oauth2.client-secret-file: cannot read"):
            await tokens.authorization()


async def answer_with(reply: bytes, stream: trio.SocketStream) -> None:
    await stream.receive_some(65536)
    await stream.send_all(reply)
    await stream.aclose()


@pytest.mark.parametrize(("reply", "problem"), [
    (b"garbage\r\n\r\n", "malformed HTTP answer"),
    (b"", "without an answer"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n" + b"x" * 70000, "exceeds"),
], ids=["garbage", "closed", "too-large"])
async def test_broken_answers_are_http_client_errors(reply: bytes, problem: str) -> None:
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(
            trio.serve_tcp, functools.partial(answer_with, reply), 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        with pytest.raises(HttpClientError, match=problem):
            await http_request("GET", f"http://127.0.0.1:{port}/x", timeout=5,
                               max_body_bytes=65536)
        nursery.cancel_scope.cancel()


async def test_an_unreachable_tekton_is_a_tekton_error() -> None:
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    tokens = ServiceTokens(OAuth2Settings(enabled=False), request_timeout=1.0)
    client = TektonClient(TektonSettings(enabled=True, url=f"http://127.0.0.1:{port}"), tokens)
    with pytest.raises(TektonError, match=f"GET http://127.0.0.1:{port}/api/v1/applications"):
        await client.get("/applications")


async def test_a_flood_of_events_collapses_into_one_full_load() -> None:
    async with open_tekton() as (tekton, client):
        loads: list[Catalogue] = []
        source = TektonSource(TektonSettings(enabled=True, url=tekton.url, debounce=0.05),
                              client, instance="kpc", extension_instances=lambda: (),
                              on_catalogue=loads.append, metrics=Metrics())
        async with trio.open_nursery() as nursery:
            await nursery.start(source.serve)
            tekton.requests.clear()
            for n in range(MAX_PENDING_SCOPES + 500):
                source.request(f"app-{n}")
            await eventually(lambda: len(loads) == 2)
            nursery.cancel_scope.cancel()
    # One full load: the list, then the one application's versions and configurations.
    assert tekton.requests[0] == "/api/v1/applications"
    assert len(tekton.requests) == 4
