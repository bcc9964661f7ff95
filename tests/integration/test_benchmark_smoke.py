"""Smoke run of the benchmark harness: it starts everything, measures, and prints numbers.

Only checks that `python -m benchmarks.run` works end to end (kpc_trio only, tiny counts); the
figures themselves are too noisy for CI.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _row_value(table: str, case: str, metric: str) -> float:
    match = re.search(rf"^{case}\s+{re.escape(metric)}\s+([0-9][0-9,.]*)", table, re.MULTILINE)
    assert match, f"no {case} {metric} row with a number in:\n{table}"
    return float(match.group(1).replace(",", ""))


def test_quick_benchmark_prints_positive_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--cases", "qos1,roundtrip",
         "--repeat", "1", "--no-peers"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _row_value(done.stdout, "qos1", "msg/s") > 0
    assert _row_value(done.stdout, "roundtrip", "p50 ms") > 0
    assert _row_value(done.stdout, "roundtrip", "p99 ms") > 0
