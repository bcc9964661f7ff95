"""Micro-benchmark of the MQTT decoder's hot path.

Decodes 100k QoS 1 PUBLISH packets (30-byte topic, 64-byte payload) fed in 64 KiB chunks and
prints the throughput. Run from the repository root: `PYTHONPATH=. python benchmarks/codec_bench.py`
(or without PYTHONPATH after `pip install -e .`).
"""

from __future__ import annotations

import time

from kpc_trio.mqtt.codec import Decoder, encode
from kpc_trio.mqtt.packets import Publish, QoS

PACKETS = 100_000
CHUNK_SIZE = 64 * 1024
TOPIC = "kp1/app-v1/dcx/token-0123/json"  # 30 bytes
PAYLOAD = bytes(range(64))


def build_stream() -> bytes:
    return b"".join(
        encode(Publish(TOPIC, PAYLOAD, QoS.AT_LEAST_ONCE, packet_id=index % 65535 + 1))
        for index in range(PACKETS)
    )


def decode_all(stream: bytes) -> int:
    decoder = Decoder(max_packet_size=1_048_576)
    decoded = 0
    for offset in range(0, len(stream), CHUNK_SIZE):
        decoder.feed(stream[offset:offset + CHUNK_SIZE])
        while decoder.next_packet() is not None:
            decoded += 1
    return decoded


def main() -> None:
    assert len(TOPIC) == 30
    stream = build_stream()
    started = time.perf_counter()
    decoded = decode_all(stream)
    elapsed = time.perf_counter() - started
    assert decoded == PACKETS, decoded
    print(f"decoded {decoded} QoS 1 PUBLISH ({len(stream)} bytes) in {elapsed:.3f} s: "
          f"{decoded / elapsed:,.0f} packets/s")


if __name__ == "__main__":
    main()
