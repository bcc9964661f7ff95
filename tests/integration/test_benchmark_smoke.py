"""Smoke run of the benchmark harness: it starts everything, measures, and prints numbers.

Only checks that `python -m benchmarks.run` works end to end (kpc_trio only, tiny counts); the
figures themselves are too noisy for CI.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from benchmarks.nats_frames import NatsFrameCounter

ROOT = Path(__file__).resolve().parents[2]


def _row_value(table: str, case: str, metric: str) -> float:
    match = re.search(rf"^{case}\s+{re.escape(metric)}\s+([0-9][0-9,.]*)", table, re.MULTILINE)
    assert match, f"no {case} {metric} row with a number in:\n{table}"
    return float(match.group(1).replace(",", ""))


def test_quick_benchmark_prints_positive_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--cases",
         "qos1,roundtrip,roundtrip_floor", "--repeat", "1", "--no-peers", "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _row_value(done.stdout, "qos1", "msg/s") > 0
    assert _row_value(done.stdout, "qos1", "relayed %") == 100.0  # the NATS counter is exact
    assert _row_value(done.stdout, "roundtrip", "p50 ms") > 0
    assert _row_value(done.stdout, "roundtrip", "p99 ms") > 0
    assert _row_value(done.stdout, "roundtrip", "p99.9 ms") > 0
    assert _row_value(done.stdout, "roundtrip_floor", "p99 ms") > 0
    assert "round trip p50 / p99 / p99.9 ms: through kpc_trio" in done.stdout
    # CPU accounting from /proc: present for every measured case (tiny runs may round to 0).
    assert _row_value(done.stdout, "qos1", "server µs/msg") >= 0
    assert _row_value(done.stdout, "roundtrip", "server µs/req") >= 0
    assert _row_value(done.stdout, "qos1", "idle cores") >= 0
    assert "co-limits" in done.stdout


def test_nats_frame_counter_counts_frames_split_anywhere_and_answers_pings() -> None:
    stream = (b"INFO {}\r\n+OK\r\nPONG\r\n"
              b"MSG kaa.v1.service.dcx.esp.ClientData 1 kaa.v1.replica.r.esp.ExtensionData 4\r\n"
              b"a\r\nb\r\nPING\r\nMSG s 1 0\r\n\r\n" * 3)
    ours, server = socket.socketpair()
    with ours, server:
        counter = NatsFrameCounter(ours)
        for start in range(0, len(stream), 7):
            counter.feed(stream[start:start + 7])
        assert (counter.messages, counter.ponged) == (6, True)
        assert server.recv(100) == b"PONG\r\n" * 3


def test_nats_frame_counter_keeps_the_subjects_of_whole_frames_only() -> None:
    ours, server = socket.socketpair()
    with ours, server:
        counter = NatsFrameCounter(ours, keep_subjects=True)
        counter.feed(b"MSG bench.rt.3.17 1 2\r\nok\r\nMSG bench.rt.4.18 1 2\r\no")
        assert counter.take_subjects() == [b"bench.rt.3.17"]
        counter.feed(b"k\r\n")
        assert counter.take_subjects() == [b"bench.rt.4.18"]
        assert counter.take_subjects() == []
