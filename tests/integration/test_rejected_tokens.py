"""A device that keeps using a token the provider rejected, as a mis-provisioned device does.

The first message with the token asks the provider; every later one is answered from the
negative cache. Both must be answered the same way: an `/error` for each message with a request
id, the acknowledgements of the read, and the connection left up.
"""

from __future__ import annotations

import json
import logging

import pytest
import trio

from kpc_trio.mqtt.packets import PubAck, Publish
from tests.integration.kpc_harness import APP_VERSION, ENDPOINTS, call, open_device
from tests.integration.waiting import logged, within
from tests.robustness.raw_client import RawClient

EP1 = ENDPOINTS[0]
REJECTED = "not-a-token"


@pytest.mark.parametrize("qos", [0, 1])
async def test_every_message_with_a_rejected_token_is_answered_and_the_connection_stays(
        kaa, kpc, caplog, qos):
    caplog.set_level(logging.INFO, logger="kpc_trio")  # client_disconnected is an info event
    rejected = f"kp1/{APP_VERSION}/dcx/{REJECTED}/json"
    valid = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json"
    async with open_device(kpc.ports["mqtt_tcp"]) as device:
        # Rejected with and without request id, interleaved with valid requests; `publish`
        # waits for the PUBACK of each QoS 1 message (a lost one raises).
        sent = []
        for n in range(1, 5):
            await call(device.publish, f"{rejected}/{n}", b"{}", qos=qos)
            await call(device.publish, rejected, b"{}", qos=qos)  # no request id: no answer
            await call(device.publish, f"{valid}/{100 + n}", b"ok", qos=qos)
            sent += [f"{rejected}/{n}/error", f"{valid}/{100 + n}/status"]
        got = [await call(device.expect) for _ in sent]
        # KPC's own errors go out as the messages are read, before the extension's replies
        # to later ones: an error for a message without request id would come before this.
        await call(device.publish, f"{valid}/999", b"end", qos=qos)
        last = await call(device.expect)
        assert not device.wait_disconnected(timeout=0)
        assert not logged(caplog, "client_disconnected")  # the same connection all along
    assert sorted(message.topic for message in got) == sorted(sent)
    assert last.topic == f"{valid}/999/status"
    for message in got:
        if message.topic.endswith("/error"):
            assert json.loads(message.payload)["statusCode"] == 401
    assert [cd.payload for cd in kaa.received("dcx")] == [b"ok"] * 4 + [b"end"]
    assert not logged(caplog, "session_failed")


async def test_a_rejected_token_stays_rejected_across_reconnects(kaa, kpc, caplog):
    """The device reconnects (same client id) and tries the token again each time: every
    connection gets the 401, its valid requests still go through, and the provider is asked once
    (the rejection is cached for the service, not for one connection)."""
    rejected = f"kp1/{APP_VERSION}/dcx/{REJECTED}/json"
    valid = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json"
    for n in range(1, 4):
        async with open_device(kpc.ports["mqtt_tcp"], client_id="misprovisioned") as device:
            await call(device.publish, f"{rejected}/{n}", b"{}", qos=1)
            error = await call(device.expect)
            await call(device.publish, f"{valid}/{n}", b"ok", qos=1)
            status = await call(device.expect)
        assert error.topic == f"{rejected}/{n}/error"
        assert json.loads(error.payload)["statusCode"] == 401
        assert status.topic == f"{valid}/{n}/status"
    assert [r.token for r in kaa.token_requests].count(REJECTED) == 1
    assert [cd.payload for cd in kaa.received("dcx")] == [b"ok"] * 3
    assert not logged(caplog, "session_failed")


async def test_rejected_tokens_in_one_read_are_each_answered(kaa, kpc):
    """Several messages in one TCP read: the cached rejections of a read and its valid messages
    are all answered, and the QoS 1 ones all acknowledged."""
    rejected = f"kp1/{APP_VERSION}/dcx/{REJECTED}/json"
    valid = f"kp1/{APP_VERSION}/dcx/{EP1.token}/json"
    client = await RawClient.open(kpc.ports["mqtt_tcp"])
    async with client.stream:
        assert (await client.handshake("rejected-burst")).return_code == 0
        # Prime the negative cache, then one burst.
        await client.send(_publish(f"{rejected}/1", qos=1, packet_id=1))
        with within(10, "the PUBACK and /error of the first rejected PUBLISH"):
            first = [await client.next_packet(), await client.next_packet()]
        burst = [_publish(f"{rejected}/2", qos=1, packet_id=2), _publish(rejected, qos=0),
                 _publish(f"{valid}/3", qos=1, packet_id=3),
                 _publish(f"{rejected}/4", qos=0), _publish(rejected, qos=1, packet_id=5)]
        await client.send(b"".join(burst))
        with trio.fail_after(10):
            rest = [await client.next_packet() for _ in range(6)]
    names = sorted(_describe(p) for p in first + rest)
    assert names == sorted([
        "PUBACK 1", f"PUBLISH {rejected}/1/error",
        "PUBACK 2", "PUBACK 3", "PUBACK 5",
        f"PUBLISH {rejected}/2/error", f"PUBLISH {valid}/3/status", f"PUBLISH {rejected}/4/error",
    ])


def _publish(topic: str, *, qos: int, packet_id: int | None = None) -> bytes:
    """A PUBLISH written by hand: fixed header, topic, packet id (QoS 1), payload `{}`."""
    body = len(topic).to_bytes(2, "big") + topic.encode()
    if qos:
        assert packet_id is not None
        body += packet_id.to_bytes(2, "big")
    body += b"{}"
    assert len(body) < 128
    return bytes([0x30 | qos << 1, len(body)]) + body


def _describe(packet: object) -> str:
    if isinstance(packet, PubAck):
        return f"PUBACK {packet.packet_id}"
    assert isinstance(packet, Publish), packet
    return f"PUBLISH {packet.topic}"
