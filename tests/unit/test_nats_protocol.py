"""The sans-IO NATS client protocol: frames, server stream parsing, URLs."""

from __future__ import annotations

from kpc_trio.nats_protocol import OutboundMessage, PubFrames


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

