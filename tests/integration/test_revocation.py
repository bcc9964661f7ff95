"""RevocationListener against a real nats-server, fed by the simulated CM/CCM (real Avro)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import attrs
import trio

from kpc_trio.nats.embedded import NatsServerProcess
from kpc_trio.nats.gateway import NatsGateway, OutboundMessage, open_nats_gateway
from kpc_trio.revocation import RevocationListener
from kpc_trio.simulator import SimulatedKaa
from kpc_trio.simulator.kaa_side import open_simulated_kaa
from tests.integration.waiting import eventually


@attrs.define
class RecordingHandler:
    """The service's side of the callback interface, remembering every call in order."""

    calls: list[tuple[str, ...]] = attrs.field(factory=list)

    def on_tokens_revoked(self, app_name: str, endpoint_id: str, token_ids: frozenset[str]) -> None:
        self.calls.append(("tokens", app_name, endpoint_id, *sorted(token_ids)))

    def on_credentials_revoked(self, credentials_id: str, tenant_id: str | None) -> None:
        self.calls.append(("credentials", credentials_id, str(tenant_id)))


async def _synced(gateway: NatsGateway) -> None:
    """Return once the server processed our SUBs: it answers a flush only after them."""
    await gateway.publish_confirmed([OutboundMessage("revocation-test.sync", b"")])


@contextlib.asynccontextmanager
async def open_listener(url: str) -> AsyncIterator[tuple[RevocationListener, RecordingHandler,
                                                         NatsGateway]]:
    handler = RecordingHandler()
    listener = RevocationListener(handler)
    async with open_nats_gateway([url]) as gateway:
        await eventually(lambda: gateway.connected)
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run, gateway)
            await _synced(gateway)
            yield listener, handler, gateway
            nursery.cancel_scope.cancel()


async def call(kaa: SimulatedKaa, method: str, *args: object, **kwargs: object) -> None:
    """Run a blocking simulator method in a worker thread (the gateway keeps running)."""
    await trio.to_thread.run_sync(lambda: getattr(kaa, method)(*args, **kwargs))


async def test_every_revocation_event_is_decoded_and_dispatched(
    nats_server: NatsServerProcess,
) -> None:
    async with open_simulated_kaa(nats_server.url, echo_extensions=()) as kaa, \
            open_listener(nats_server.url) as (listener, handler, _):
        await call(kaa, "revoke_tokens", "app-1", "endpoint-1", ["token-id-1", "token-id-2"])
        await call(kaa, "revoke_basic_credentials", "tenant-a", "cred-basic")
        await call(kaa, "revoke_certificate_credentials", "tenant-b", "cred-cert")
        await call(kaa, "revoke_client_credential", "cred-ecap")
        await eventually(lambda: len(handler.calls) == 4)
    # One subscription per subject: order across subjects is not guaranteed.
    assert sorted(handler.calls) == sorted([
        ("tokens", "app-1", "endpoint-1", "token-id-1", "token-id-2"),
        ("credentials", "cred-basic", "tenant-a"),
        ("credentials", "cred-cert", "tenant-b"),
        ("credentials", "cred-ecap", "None"),
    ])
    assert (listener.dispatched, listener.undecodable) == (4, 0)


async def test_events_from_any_provider_instance_are_heard(
    nats_server: NatsServerProcess,
) -> None:
    async with open_simulated_kaa(nats_server.url, echo_extensions=()) as kaa, \
            open_listener(nats_server.url) as (_, handler, _gateway):
        await call(kaa, "revoke_tokens", "app-1", "endpoint-9", ["t9"], originator="cm-eu")
        await call(kaa, "revoke_basic_credentials", "tenant-a", "cred-9", originator="ccm-2")
        await eventually(lambda: len(handler.calls) == 2)
    assert sorted(handler.calls) == [("credentials", "cred-9", "tenant-a"),
                                     ("tokens", "app-1", "endpoint-9", "t9")]


async def test_every_replica_gets_each_event(nats_server: NatsServerProcess) -> None:
    async with open_simulated_kaa(nats_server.url, echo_extensions=()) as kaa, \
            open_listener(nats_server.url) as (_, first, _gw1), \
            open_listener(nats_server.url) as (_, second, _gw2):
        await call(kaa, "revoke_client_credential", "cred-shared")
        await eventually(lambda: len(first.calls) == 1 and len(second.calls) == 1)
    assert first.calls == second.calls == [("credentials", "cred-shared", "None")]


async def test_undecodable_events_are_counted_and_later_ones_still_dispatched(
    nats_server: NatsServerProcess,
) -> None:
    async with open_simulated_kaa(nats_server.url, echo_extensions=()) as kaa, \
            open_listener(nats_server.url) as (listener, handler, gateway):
        await gateway.publish_confirmed([
            OutboundMessage("kaa.v1.events.cm.endpoint.token.revoked", b"\xff not avro"),
            OutboundMessage("kaa.v1.events.ccm.client-credentials.basic.revoked", b""),
        ])
        await eventually(lambda: listener.undecodable == 2)
        await call(kaa, "revoke_tokens", "app-1", "endpoint-1", ["token-id-1"])
        await eventually(lambda: len(handler.calls) == 1)
    assert handler.calls == [("tokens", "app-1", "endpoint-1", "token-id-1")]
    assert (listener.dispatched, listener.undecodable) == (1, 2)


async def test_other_events_are_not_revocations(nats_server: NatsServerProcess) -> None:
    async with open_simulated_kaa(nats_server.url, echo_extensions=()) as kaa, \
            open_listener(nats_server.url) as (listener, handler, gateway):
        await gateway.publish_confirmed([
            OutboundMessage("kaa.v1.events.cm.endpoint.token.issued", b"x"),
            OutboundMessage("kaa.v1.events.ccm.client-credentials.basic.created", b"x"),
        ])
        # A revocation published after them arrives after them on the token subscription.
        await call(kaa, "revoke_tokens", "app-1", "endpoint-1", ["token-id-1"])
        await eventually(lambda: len(handler.calls) == 1)
    assert (listener.dispatched, listener.undecodable) == (1, 0)
