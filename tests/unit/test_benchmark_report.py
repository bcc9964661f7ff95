"""The benchmark's CPU accounting and what its report concludes from it (issue 16).

The figures themselves belong to benchmarks/, not to tests; these check the arithmetic and the
verdicts: a target met or not, a co-limited case flagged, /proc read as the kernel writes it.
"""

from __future__ import annotations

import os
import time

from benchmarks import cpu, report
from benchmarks.report import Measurement


def measurement(case: str, metric: str, server: str, *values: float) -> Measurement:
    return Measurement(case, metric, server, list(values))


def test_cpu_summary_checks_kpc_against_twice_mosquitto_ingest() -> None:
    summary = report.cpu_summary([
        measurement("qos1", "server µs/msg", "kpc_trio", 8.0, 8.4, 9.0),
        measurement("qos1", "server µs/msg", "mosquitto", 11.0),
        measurement("qos1_ingest", "server µs/msg", "mosquitto", 5.0),
        measurement("qos0", "server µs/msg", "kpc_trio", 7.0),
        measurement("qos0_ingest", "server µs/msg", "mosquitto", 1.0),
        measurement("roundtrip", "server µs/req", "kpc_trio", 300.0),
        measurement("roundtrip", "server µs/req", "mosquitto", 40.0),
    ])
    qos1, qos0, roundtrip = summary.splitlines()[2:]
    assert qos1.split()[0] == "qos1" and "1.68x" in qos1 and qos1.endswith("yes")
    assert "0.76x" in qos1  # against mosquitto pub->sub
    assert "7.00x" in qos0 and qos0.endswith("NO")
    assert "7.50x" in roundtrip and roundtrip.endswith("-")  # no ingest floor for a round trip


def test_cpu_summary_says_when_nothing_was_measured() -> None:
    assert report.cpu_summary([measurement("rss", "KiB/conn", "kpc_trio", 3.0)]) == \
        "(no CPU per message measured)"


def test_co_limited_cases_are_flagged_in_the_table_and_listed() -> None:
    measurements = [
        measurement("qos1", "msg/s", "kpc_trio", 80_000.0),
        measurement("qos1", "gen cores", "kpc_trio", 0.1),
        measurement("qos1", "foreign cores", "kpc_trio", 1.2, 1.0, 0.2),
        measurement("qos1", "idle cores", "kpc_trio", 0.05),
        measurement("qos1", "msg/s", "mosquitto", 50_000.0),
        measurement("qos1", "gen cores", "mosquitto", 0.9),
        measurement("qos1", "foreign cores", "mosquitto", 0.1),
        measurement("qos1", "idle cores", "mosquitto", 0.3),
    ]
    table = report.table(measurements)
    assert "1! [0.2-1.2]" in table  # the median is over the limit, so the cell is flagged
    assert "0.9!" in table
    foreign_row = next(line for line in table.splitlines() if "foreign cores" in line)
    assert "x" not in foreign_row.split("!")[-1]  # no ratios for the load picture
    assert report.limits(measurements).splitlines()[1:] == [
        "  qos1 on kpc_trio: co-limited by foreign load 1.00 cores (machine idle 0.05 cores)",
        "  qos1 on mosquitto: co-limited by generator 0.90 cores (machine idle 0.30 cores)",
    ]


def test_no_co_limit_is_said_plainly() -> None:
    assert report.limits([measurement("qos1", "gen cores", "kpc_trio", 0.2),
                          measurement("qos1", "foreign cores", "kpc_trio", 0.1)]
                         ).startswith("co-limits: none")


def test_proc_accounting_sees_this_process_burn_cpu() -> None:
    before = cpu.tree_seconds([os.getpid()])
    idle_before, total_before = cpu.machine_seconds()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    used = cpu.tree_seconds([os.getpid()]) - before
    idle_after, total_after = cpu.machine_seconds()
    assert used >= 0.15  # clock ticks of 10 ms
    assert total_after - total_before >= used - 0.02
    assert idle_after >= idle_before
    assert cpu.process_seconds(2**22 + 12345) == 0.0  # no such process: nothing to count


def test_a_cpu_window_turns_seconds_into_per_message_figures() -> None:
    parties = cpu.Parties(server=(os.getpid(),), helpers={"nats": ()}, counter=())
    with cpu.measure_cpu(parties) as window:
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
    figures = window.figures(messages=1000)
    assert figures["server µs/msg"] >= 150  # >= 0.15 s over 1000 messages
    assert figures["nats µs/msg"] == 0
    assert 0 < figures["server cores"] <= cpu.CORES
    assert set(figures) == {"server µs/msg", "nats µs/msg", "server cores", "gen cores",
                            "idle cores", "foreign cores"}
