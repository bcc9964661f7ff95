"""Issue 17: the edge of the network, seen from the devices and the load balancer in front.

- PROXY protocol v1/v2 (hand-written headers) from a trusted proxy: the session and its log
  lines carry the forwarded address; from an untrusted address the header is refused
  (`required`) or never read (`optional`); `required` without a header closes, counted.
- X-Forwarded-For / Forwarded on WebSocket and HTTP: believed from a trusted proxy only.
- Connection-rate limit: a burst far over it is refused (closed, counted) while devices already
  connected keep their round trips.
- 1/KP over HTTP: connections over `max-connections` or the connection rate are closed unread,
  counted; those already open keep being served, and a closed one frees its place.
- Per-connection publish rate: a flooding device is slowed to it, not dropped, loses nothing.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pytest
import trio
import trustme
from trio_websocket import open_websocket_url

from kpc_trio.config import Config
from kpc_trio.mqtt.packets import ConnAck, ConnAckCode, PingResp, PubAck, Publish, QoS
from kpc_trio.service import KpcService, open_kpc
from tests.clients.http_client import HttpClient
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, make_config
from tests.integration.waiting import eventually, logged
from tests.robustness.conftest import LIMITS, sample
from tests.robustness.raw_client import SERVER_DEADLINE, RawClient

# CONNECT, MQTT 3.1.1, clean session, keepalive 0, client id "dev-1"; and its CONNACK.
CONNECT = bytes.fromhex("101100044d5154540402000000056465762d31")
CONNACK_ACCEPTED = bytes.fromhex("20020000")
# v1: the client 203.0.113.7:56324 reached the proxy's 192.0.2.1:1883.
PROXY_V1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 1883\r\n"
# v2: signature, PROXY command, TCP over IPv4, 12 address bytes:
# 198.51.100.9:40000 -> 192.0.2.1:8883.
PROXY_V2 = bytes.fromhex("0d0a0d0a000d0a515549540a" "21" "11" "000c"
                         "c6336409" "c0000201" "9c40" "22b3")
# v2 LOCAL (the proxy's own health check): no address.
PROXY_V2_LOCAL = bytes.fromhex("0d0a0d0a000d0a515549540a" "20" "00" "0000")
TRUSTED = {"KAA_KPC_TRANSPORTS_TRUSTED_PROXIES": "127.0.0.0/8"}
UNTRUSTED = {"KAA_KPC_TRANSPORTS_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"}


def with_proxy(mode: str, trust: dict[str, str]) -> dict[str, str]:
    return {**LIMITS, **trust, "KAA_KPC_TRANSPORTS_MQTT_TCP_PROXY_PROTOCOL": mode}


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> dict[str, str]:
    return getattr(request, "param", LIMITS)


async def connack_after(port: int, *chunks: bytes) -> tuple[bytes, RawClient]:
    """Send the chunks one by one; what the server answered before closing (or a CONNACK)."""
    client = await RawClient.open(port)
    for chunk in chunks:
        await client.send(chunk)
    received = b""
    with trio.fail_after(SERVER_DEADLINE):
        while len(received) < len(CONNACK_ACCEPTED):
            try:
                data = await client.stream.receive_some(64)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                break
            received += data
    return received, client


def session_addresses(kpc: KpcService) -> set[str]:
    return {session.peer.address for session in kpc.sessions}


@pytest.mark.parametrize("limits", [with_proxy("required", TRUSTED)], indirect=True)
@pytest.mark.parametrize(("header", "address"), [(PROXY_V1, "203.0.113.7:56324"),
                                                 (PROXY_V2, "198.51.100.9:40000")])
async def test_proxy_header_from_trusted_proxy_gives_the_client_address(
        kpc, port, caplog, header, address):
    caplog.set_level(logging.INFO)
    # Header and CONNECT in separate writes, and in one: both are read the same.
    for chunks in ((header, CONNECT), (header + CONNECT,)):
        received, client = await connack_after(port, *chunks)
        assert received == CONNACK_ACCEPTED
        await eventually(lambda: address in session_addresses(kpc), "session has the address")
        connected = logged(caplog, "client_connected")
        assert connected[-1]["peer"] == address and connected[-1]["client_id"] == "dev-1"
        await client.aclose()
        await eventually(lambda: not kpc.sessions, "session ended")


@pytest.mark.parametrize("limits", [with_proxy("required", TRUSTED)], indirect=True)
async def test_proxy_local_header_keeps_the_proxy_address(kpc, port):
    received, client = await connack_after(port, PROXY_V2_LOCAL + CONNECT)
    assert received == CONNACK_ACCEPTED
    await eventually(lambda: len(kpc.sessions) == 1, "session open")
    assert next(iter(session_addresses(kpc))).startswith("127.0.0.1:")
    await client.aclose()


@pytest.mark.parametrize("limits", [with_proxy("required", TRUSTED)], indirect=True)
@pytest.mark.parametrize(("first_bytes", "reason"), [
    (CONNECT, "proxy_header_missing"),
    (b"PROXY TCP4 203.0.113.7 nonsense\r\n" + CONNECT, "proxy_header_malformed"),
    (b"PROXY TCP4 999.0.113.7 192.0.2.1 1 2\r\n" + CONNECT, "proxy_header_malformed"),
    (bytes.fromhex("0d0a0d0a000d0a515549540a" "31" "11" "000c") + bytes(12),
     "proxy_header_malformed"),  # version 3
])
async def test_required_proxy_header_missing_or_malformed_closes_and_counts(
        kpc, port, first_bytes, reason):
    # Good connections before and after: one bad header affects nobody else.
    for attempt in range(2):
        received, client = await connack_after(port, first_bytes)
        assert received == b""
        await client.aclose()
        assert sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                      reason=reason) == attempt + 1
        received, client = await connack_after(port, PROXY_V1 + CONNECT)
        assert received == CONNACK_ACCEPTED
        await client.aclose()


@pytest.mark.parametrize("limits", [with_proxy("required", UNTRUSTED)], indirect=True)
async def test_required_proxy_header_from_untrusted_address_is_refused(kpc, port):
    received, client = await connack_after(port, PROXY_V1 + CONNECT)
    assert received == b""
    await client.aclose()
    assert sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                  reason="untrusted_proxy") == 1
    assert not kpc.sessions


@pytest.mark.parametrize("limits", [with_proxy("optional", UNTRUSTED)], indirect=True)
async def test_optional_proxy_header_from_untrusted_address_is_never_honoured(
        kpc, port, caplog):
    # A spoofed header is not read: it is not MQTT, so the connection ends as a bad client.
    received, client = await connack_after(port, PROXY_V1 + CONNECT)
    assert received == b""
    await client.aclose()
    assert all(fields.get("peer") != "203.0.113.7:56324"
               for fields in logged(caplog, "protocol_violation"))
    # A plain device from the same address is served with its socket address.
    received, client = await connack_after(port, CONNECT)
    assert received == CONNACK_ACCEPTED
    await eventually(lambda: len(kpc.sessions) == 1, "session open")
    assert next(iter(session_addresses(kpc))).startswith("127.0.0.1:")
    await client.aclose()


@pytest.mark.parametrize("limits", [with_proxy("optional", TRUSTED)], indirect=True)
async def test_optional_proxy_header_is_used_when_present(kpc, port):
    for chunks, address in (((PROXY_V2, CONNECT), "198.51.100.9:40000"),
                            ((CONNECT,), "127.0.0.1:")):
        received, client = await connack_after(port, *chunks)
        assert received == CONNACK_ACCEPTED
        await eventually(lambda: len(kpc.sessions) == 1, "session open")
        assert next(iter(session_addresses(kpc))).startswith(address)
        await client.aclose()
        await eventually(lambda: not kpc.sessions, "session ended")


def tls_config(nats_url: str, tmp_path: Path, **settings: str) -> tuple[Config, ssl.SSLContext]:
    """A KPC with its TLS listener (plus `settings`, env style) and a client context trusting it."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    config = make_config(tmp_path, nats_url, env={
        **LIMITS,
        "KAA_KPC_TRANSPORTS_MQTT_TLS_ENABLED": "true",
        "KAA_KPC_TRANSPORTS_MQTT_TLS_HOST": "127.0.0.1",
        "KAA_KPC_TRANSPORTS_MQTT_TLS_PORT": "0",
        "KAA_KPC_TRANSPORTS_MQTT_TLS_CERT_FILE": str(cert_file),
        "KAA_KPC_TRANSPORTS_MQTT_TLS_KEY_FILE": str(key_file),
        "KAA_KPC_TRANSPORTS_MQTT_TLS_CLIENT_AUTH": "none",
        **settings,
    })
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return config, context


async def tls_connack(port: int, context: ssl.SSLContext, header: bytes = b"") -> bytes:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    await tcp.send_all(header)
    tls = trio.SSLStream(tcp, context, server_hostname="localhost")
    try:
        with trio.fail_after(SERVER_DEADLINE):
            await tls.send_all(CONNECT)
            return await tls.receive_some(4)
    finally:
        await trio.aclose_forcefully(tls)


async def test_proxy_header_before_tls(nats_server, kaa, tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    config, context = tls_config(nats_server.url, tmp_path, **TRUSTED,
                                 KAA_KPC_TRANSPORTS_MQTT_TLS_PROXY_PROTOCOL="required")
    async with open_kpc(config) as kpc:
        port = kpc.ports["mqtt_tls"]
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(PROXY_V2)
        tls = trio.SSLStream(tcp, context, server_hostname="localhost")
        await tls.send_all(CONNECT)
        with trio.fail_after(SERVER_DEADLINE):
            assert await tls.receive_some(4) == CONNACK_ACCEPTED
        await eventually(lambda: "198.51.100.9:40000" in session_addresses(kpc), "session")
        assert logged(caplog, "client_connected")[-1]["peer"] == "198.51.100.9:40000"
        await trio.aclose_forcefully(tls)
        # Without the header: closed before any TLS, counted.
        with pytest.raises(trio.BrokenResourceError):
            await tls_connack(port, context)
        assert sample(kpc, "kpc_connect_refusals_total", transport="tls",
                      reason="proxy_header_missing") == 1


async def test_tls_handshakes_beyond_the_cap_are_refused_before_any_tls(
        nats_server, kaa, tmp_path: Path):
    config, context = tls_config(nats_server.url, tmp_path,
                                 KAA_KPC_TRANSPORTS_MQTT_TLS_MAX_CONCURRENT_HANDSHAKES="2")
    async with open_kpc(config) as kpc:
        port = kpc.ports["mqtt_tls"]
        # Two clients that never send their ClientHello hold both handshake slots.
        stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        with pytest.raises(trio.BrokenResourceError):
            await tls_connack(port, context)
        assert sample(kpc, "kpc_connect_refusals_total", transport="tls",
                      reason="tls_handshakes") == 1
        for stream in stalled:
            await stream.aclose()
        # Slots come back as the stalled handshakes end; a device then gets through.
        outcome = b""
        with trio.fail_after(SERVER_DEADLINE):
            while outcome != CONNACK_ACCEPTED:
                try:
                    outcome = await tls_connack(port, context)
                except trio.BrokenResourceError:
                    await trio.sleep(0.05)
        assert len(kpc.sessions) <= 1


RATE = 20


@pytest.mark.parametrize("limits", [{**LIMITS,
                                     "KAA_KPC_TRANSPORTS_MQTT_MAX_CONNECTION_RATE": str(RATE),
                                     "KAA_KPC_TRANSPORTS_MQTT_CONNECTION_RATE_BURST": "5"}],
                         indirect=True)
async def test_connection_burst_over_the_rate_is_refused_while_devices_keep_working(kpc, port):
    devices = []
    for n in range(2):
        device = await RawClient.open(port)
        assert await device.handshake(f"device-{n}") == ConnAck(ConnAckCode.ACCEPTED)
        devices.append(device)
    attempts, outcomes = 2000, {"accepted": 0, "refused": 0}
    round_trips = 0
    storm_over = trio.Event()

    async def attempt(limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            received, client = await connack_after(port, CONNECT)
            outcomes["accepted" if received == CONNACK_ACCEPTED else "refused"] += 1
            await client.aclose()

    async def keep_round_tripping(device: RawClient, n: int) -> None:
        nonlocal round_trips
        endpoint = ENDPOINTS[n]
        packet_id = 0
        while not storm_over.is_set() or packet_id < 5:
            packet_id += 1
            topic = f"kp1/{APP_VERSION}/dcx/{endpoint.token}/json/{packet_id}"
            await device.send(Publish(topic, b"{}", QoS.AT_LEAST_ONCE, packet_id=packet_id))
            answers = []
            with trio.fail_after(SERVER_DEADLINE):
                while len(answers) < 2:
                    packet = await device.next_packet()
                    assert packet is not None, "a connected device was dropped"
                    answers.append(packet)
            assert PubAck(packet_id) in answers
            assert any(isinstance(p, Publish) and p.topic == topic + "/status" for p in answers)
            round_trips += 1

    async with trio.open_nursery() as nursery:
        for n, device in enumerate(devices):
            nursery.start_soon(keep_round_tripping, device, n)
        async with trio.open_nursery() as storm:
            limiter = trio.CapacityLimiter(50)
            for _ in range(attempts):
                storm.start_soon(attempt, limiter)
        storm_over.set()
    assert outcomes["accepted"] + outcomes["refused"] == attempts
    assert outcomes["refused"] > attempts // 2, outcomes
    refused = sample(kpc, "kpc_connect_refusals_total", transport="tcp", reason="connection_rate")
    assert refused == outcomes["refused"]
    assert round_trips >= 10
    for device in devices:
        await device.aclose()


HTTP_CAP = 3
HTTP_LISTENER = {**LIMITS, "KAA_KPC_TRANSPORTS_HTTP_ENABLED": "true",
                 "KAA_KPC_TRANSPORTS_HTTP_HOST": "127.0.0.1",
                 "KAA_KPC_TRANSPORTS_HTTP_PORT": "0"}
DCX_OVER_HTTP = f"/kp1/{APP_VERSION}/dcx/{ENDPOINTS[0].token}/json"
DCX_REQUEST = (f"POST {DCX_OVER_HTTP} HTTP/1.1\r\nHost: kpc\r\nContent-Length: 2\r\n\r\n{{}}"
               .encode())


async def http_device(port: int) -> tuple[trio.SocketStream, HttpClient]:
    """A keep-alive HTTP connection whose first request was served."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = HttpClient(stream, "kpc")
    with trio.fail_after(SERVER_DEADLINE):
        assert (await client.request("POST", DCX_OVER_HTTP, b"{}")).status == 200
    return stream, client


async def closed_unanswered(port: int) -> bool:
    """Whether a new connection that sends a request is closed without an answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(SERVER_DEADLINE):
            await stream.send_all(DCX_REQUEST)
            return await stream.receive_some(64) == b""
    except trio.BrokenResourceError:
        return True  # closed with the request unread: a RST
    finally:
        await stream.aclose()


@pytest.mark.parametrize("limits", [{**HTTP_LISTENER, "KAA_KPC_TRANSPORTS_HTTP_MAX_CONNECTIONS":
                                     str(HTTP_CAP)}], indirect=True)
async def test_http_connections_over_the_cap_are_refused_while_open_ones_are_served(
        kpc, caplog):
    caplog.set_level(logging.INFO)
    port = kpc.ports["http"]
    devices = [await http_device(port) for _ in range(HTTP_CAP)]
    for attempt in range(1, 4):
        assert await closed_unanswered(port), "a connection over the cap was served"
        assert sample(kpc, "kpc_connect_refusals_total", transport="http",
                      reason="max_connections") == attempt
    # Logged once, then only counted.
    refusals = [fields for fields in logged(caplog, "connection_refused")
                if fields.get("transport") == "http"]
    assert [fields["reason"] for fields in refusals] == ["max_connections"]
    for _, client in devices:
        with trio.fail_after(SERVER_DEADLINE):
            assert (await client.request("POST", DCX_OVER_HTTP, b"{}")).status == 200
    # A device hangs up: its place is free once the server has closed its side.
    stream, _ = devices.pop()
    await stream.send_eof()
    with trio.fail_after(SERVER_DEADLINE):
        assert await stream.receive_some(64) == b"", "the server never closed its side"
    await stream.aclose()
    devices.append(await http_device(port))
    assert await closed_unanswered(port), "the cap no longer holds"
    assert sample(kpc, "kpc_connect_refusals_total", transport="http",
                  reason="max_connections") == 4
    for stream, _ in devices:
        await stream.aclose()


@pytest.mark.parametrize("limits", [{**HTTP_LISTENER,
                                     "KAA_KPC_TRANSPORTS_HTTP_MAX_CONNECTION_RATE": "1",
                                     "KAA_KPC_TRANSPORTS_HTTP_CONNECTION_RATE_BURST": "2"}],
                         indirect=True)
async def test_http_connections_over_the_rate_are_refused(kpc):
    port = kpc.ports["http"]
    # Five at once against a burst of two (a token a second): at least two are refused even
    # if this machine stalls for a second.
    outcomes = [await closed_unanswered(port) for _ in range(5)]
    assert outcomes[:2] == [False, False] and sum(outcomes) >= 2, outcomes
    assert sample(kpc, "kpc_connect_refusals_total", transport="http",
                  reason="connection_rate") == sum(outcomes)


PUBLISH_RATE = 40
FLOOD = 160


PUBLISH_LIMITS = {**LIMITS, "KAA_KPC_TRANSPORTS_MQTT_MAX_PUBLISH_RATE": str(PUBLISH_RATE)}


@pytest.mark.parametrize("limits", [PUBLISH_LIMITS], indirect=True)
async def test_device_over_its_publish_rate_is_slowed_not_dropped(kpc, kaa, port):
    device = await RawClient.open(port)
    assert await device.handshake("flooder") == ConnAck(ConnAckCode.ACCEPTED)
    topic = f"kp1/{APP_VERSION}/tsx/{ENDPOINTS[0].token}/json"
    started = trio.current_time()
    # Flat out: every PUBLISH in the socket at once, QoS 1.
    await device.send(*(Publish(topic, b'{"n": %d}' % n, QoS.AT_LEAST_ONCE, packet_id=n)
                        for n in range(1, FLOOD + 1)))
    relayed: list[tuple[float, int]] = []  # (seconds since start, ClientData seen on NATS)
    with trio.fail_after(SERVER_DEADLINE + FLOOD / PUBLISH_RATE):
        while not relayed or relayed[-1][1] < FLOOD:
            await trio.sleep(0.05)
            relayed.append((trio.current_time() - started, len(kaa.received("tsx"))))
    # The first second's burst, then the rate (a generous bound: this measures a limit).
    for elapsed, count in relayed:
        assert count <= PUBLISH_RATE * (1 + elapsed) * 1.25 + 10, (elapsed, count)
    assert relayed[-1][0] >= (FLOOD - PUBLISH_RATE) / PUBLISH_RATE * 0.75
    # Every message acknowledged, none lost, the connection still up.
    acknowledged = set()
    with trio.fail_after(SERVER_DEADLINE):
        while len(acknowledged) < FLOOD:
            packet = await device.next_packet()
            assert isinstance(packet, PubAck), packet
            acknowledged.add(packet.packet_id)
    assert acknowledged == set(range(1, FLOOD + 1))
    payloads = {record.payload for record in kaa.received("tsx")}
    assert payloads == {b'{"n": %d}' % n for n in range(1, FLOOD + 1)}
    assert len(kpc.sessions) == 1
    await device.send(bytes.fromhex("c000"))  # PINGREQ: still served
    with trio.fail_after(SERVER_DEADLINE):
        assert await device.next_packet() == PingResp()
    await device.aclose()


def with_listeners(trust: dict[str, str]) -> dict[str, str]:
    return {**LIMITS, **trust,
            "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_ENABLED": "true",
            "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_HOST": "127.0.0.1",
            "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_PORT": "0",
            "KAA_KPC_TRANSPORTS_HTTP_ENABLED": "true",
            "KAA_KPC_TRANSPORTS_HTTP_HOST": "127.0.0.1",
            "KAA_KPC_TRANSPORTS_HTTP_PORT": "0"}


FORWARDING = [
    # A client-written entry first, then what the trusted ingress appended.
    [("X-Forwarded-For", "192.0.2.66, 203.0.113.7")],
    [("Forwarded", 'for=192.0.2.66, for="203.0.113.7"')],
]


@pytest.mark.parametrize("limits", [with_listeners(TRUSTED), with_listeners(UNTRUSTED)],
                         ids=["trusted", "untrusted"], indirect=True)
@pytest.mark.parametrize("headers", FORWARDING, ids=["x-forwarded-for", "forwarded"])
async def test_forwarded_client_address_on_websocket_and_http(kpc, limits, headers, caplog):
    caplog.set_level(logging.DEBUG)
    trusted = "127.0.0.0/8" in limits.values()
    expected = "203.0.113.7" if trusted else "127.0.0.1:"
    url = f"ws://127.0.0.1:{kpc.ports['mqtt_websocket']}/ws"
    extra = [(name.encode(), value.encode()) for name, value in headers]
    async with open_websocket_url(url, subprotocols=["mqtt"], extra_headers=extra) as ws:
        await ws.send_message(CONNECT)
        with trio.fail_after(SERVER_DEADLINE):
            assert await ws.get_message() == CONNACK_ACCEPTED
        await eventually(lambda: len(kpc.sessions) == 1, "session open")
        assert next(iter(session_addresses(kpc))).startswith(expected)
        assert logged(caplog, "client_connected")[-1]["peer"].startswith(expected)
    # 1/KP over HTTP: every log line of the request carries the client.
    http = await trio.open_tcp_stream("127.0.0.1", kpc.ports["http"])
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    await http.send_all(f"POST /kp1/nope HTTP/1.1\r\nHost: kpc\r\nContent-Length: 0\r\n{head}"
                        "Connection: close\r\n\r\n".encode())
    response = b""
    with trio.fail_after(SERVER_DEADLINE):
        while chunk := await http.receive_some(4096):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 ")
    assert logged(caplog, "http_request")[-1]["peer"].startswith(expected)
    await http.aclose()


@pytest.mark.parametrize(("env", "host"), [({}, "*"), ({"MANAGEMENT_HOST": "127.0.0.1",
                                                         "SERVER_HOST": "127.0.0.1"},
                                                        "127.0.0.1")])
async def test_management_and_rest_bind_addresses(nats_server, kaa, tmp_path, caplog, env, host):
    caplog.set_level(logging.INFO)
    async with open_kpc(make_config(tmp_path, nats_server.url, env={**LIMITS, **env})) as kpc:
        for name in ("management", "rest"):
            with socket.create_connection(("127.0.0.1", kpc.ports[name]), timeout=5):
                pass
    assert [fields["host"] for fields in logged(caplog, "http_listening")][:2] == [host, host]


@pytest.mark.parametrize("limits", [with_proxy("required", TRUSTED)], indirect=True)
async def test_proxy_health_check_that_only_opens_the_port_is_not_a_refusal(kpc, port):
    # Load balancers check a port by opening and closing a connection without a byte.
    for _ in range(3):
        client = await RawClient.open(port)
        await client.aclose()
    client = await RawClient.open(port)
    await client.send(b"PROXY TCP4 1.2.3.4")  # then hangs up
    await client.aclose()
    # A header cut short waits out the header timeout (peeking never sees the end of stream
    # behind bytes it leaves in the socket).
    await eventually(lambda: sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                                    reason="proxy_header_timeout") == 1, "cut header counted")
    received, client = await connack_after(port, PROXY_V1 + CONNECT)
    assert received == CONNACK_ACCEPTED
    await client.aclose()
    assert sample(kpc, "kpc_connect_refusals_total", transport="tcp",
                  reason="proxy_header_missing") == 0
