"""The NATS server pool: order, discovery from INFO connect_urls, backoff (trio's clock)."""

from __future__ import annotations

import trio

from kpc_trio.nats.connection import MAX_POOL, ServerPool
from kpc_trio.nats.protocol import parse_url

A, B = parse_url("nats://kpc:secret@nats-a:4222"), parse_url("nats://nats-b:4222")


def ordered(*servers: object) -> ServerPool:
    return ServerPool(list(servers), randomize=False, reconnect_wait=2.0)  # type: ignore[arg-type]


async def test_servers_are_taken_in_turn_and_a_broken_one_goes_last() -> None:
    pool = ordered(A, B)
    first, wait = pool.take()
    assert first.address == A and wait == 0
    first.last_attempt = trio.current_time()
    pool.learn(["10.0.0.3:4222"], via=A)
    pool.demote(A)
    assert pool.servers == ["nats-b:4222", "10.0.0.3:4222", "nats-a:4222"]


async def test_discovered_servers_inherit_credentials_and_tls_name_and_follow_info() -> None:
    pool = ordered(parse_url("tls://kpc:secret@nats.example:4222"))
    used = pool.take()[0]
    used.last_attempt = trio.current_time()  # as the connecting loop does
    via = used.address
    assert pool.learn(["10.0.0.1:4222", "10.0.0.2:4222"], via=via) == [
        "10.0.0.1:4222", "10.0.0.2:4222"]
    entry, _ = pool.take()
    assert entry.address.host == "10.0.0.1" and entry.address.tls
    assert entry.address.credentials() == {"user": "kpc", "pass": "secret"}
    assert entry.address.tls_name == "nats.example"
    # A later INFO without 10.0.0.2 drops it; the configured server stays.
    assert pool.learn(["10.0.0.1:4222"], via=via) == []
    assert sorted(pool.servers) == ["10.0.0.1:4222", "nats.example:4222"]


async def test_the_pool_is_bounded() -> None:
    pool = ordered(A)
    pool.learn([f"10.0.{n // 250}.{n % 250}:4222" for n in range(1000)], via=A)
    assert len(pool.servers) == MAX_POOL


async def test_failures_back_off_with_jitter_up_to_eight_times() -> None:
    pool = ordered(A)
    waits = []
    for _ in range(6):
        entry, wait = pool.take()
        waits.append(wait)
        entry.last_attempt = trio.current_time()
        entry.failures += 1
    assert waits[0] == 0
    for wait, base in zip(waits[1:], (2, 4, 8, 16, 16), strict=True):
        assert base <= wait <= base * 1.2


async def test_a_lame_duck_is_avoided_while_another_server_exists() -> None:
    pool = ordered(A, B)
    assert pool.take(avoid=A)[0].address == B
    assert ordered(A).take(avoid=A)[0].address == A  # nothing else: the only one
