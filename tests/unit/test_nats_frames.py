"""PUB frames written by the gateway, and the nats-py internals it writes them through."""

from __future__ import annotations

import inspect

from nats.aio.client import Client

from kpc_trio.nats_gateway import OutboundMessage, PubFrames


def test_frames_follow_the_nats_protocol() -> None:
    frames = PubFrames()
    frames.add("kaa.v1.service.dcx.esp.ClientData", "kaa.v1.replica.r1.esp.ExtensionData")
    frames.add("kaa.v1.events.kpc.endpoint.connectivity.connected", "")
    batch = [
        OutboundMessage("kaa.v1.service.dcx.esp.ClientData", b"\x00ab\r\n",
                        "kaa.v1.replica.r1.esp.ExtensionData"),
        OutboundMessage("kaa.v1.events.kpc.endpoint.connectivity.connected", b""),
    ]
    assert frames.frames(batch) == (
        b"PUB kaa.v1.service.dcx.esp.ClientData kaa.v1.replica.r1.esp.ExtensionData 5\r\n"
        b"\x00ab\r\n\r\n"
        b"PUB kaa.v1.events.kpc.endpoint.connectivity.connected 0\r\n\r\n"
    )


def test_frames_of_a_pair_forgotten_at_the_bound_are_still_written() -> None:
    frames = PubFrames()
    frames.add("a", "")
    for index in range(PubFrames.MAX_HEADS):
        frames.add(f"s{index}", "r")
    assert not frames.checked("a", "")
    assert frames.frames([OutboundMessage("a", b"x")]) == b"PUB a 1\r\nx\r\n"


def test_the_nats_py_write_queue_the_gateway_uses_is_still_there() -> None:
    # Private API (nats-py has no batch publish): an upgrade that changes it must fail here.
    assert inspect.iscoroutinefunction(Client._send_command)
    assert list(inspect.signature(Client._send_command).parameters)[:2] == ["self", "cmd"]
    assert inspect.iscoroutinefunction(Client._flush_pending)

