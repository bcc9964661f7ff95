"""Summaries of a run: the console table, the JSON file and the PNG chart.

Medians are the headline, min-max the spread; ratios compare kpc_trio's median to each peer's.
The issue-6 targets are checked here so the table says plainly which are met.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

KPC = "kpc_trio"
PEERS = ("mosquitto", "amqtt")
SERVERS = (KPC, *PEERS)


@attrs.define
class Measurement:
    """All repeats of one figure of one case on one server."""

    case: str
    metric: str
    server: str
    values: list[float] = attrs.field(factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


Medians = Callable[[str], float | None]  # server -> median of this row, None when not measured


@attrs.frozen
class Target:
    text: str
    met: Callable[[Medians], bool | None]


def _at_least(floor: float, peer_factor: float = 0.0) -> Callable[[Medians], bool | None]:
    def met(median: Medians) -> bool | None:
        ours, amqtt = median(KPC), median("amqtt")
        if ours is None or (peer_factor and amqtt is None):
            return None  # not measured (a target relative to amqtt needs amqtt)
        return ours >= floor and (amqtt is None or ours >= peer_factor * amqtt)
    return met


def _at_most(ceiling: float) -> Callable[[Medians], bool | None]:
    def met(median: Medians) -> bool | None:
        ours = median(KPC)
        return None if ours is None else ours <= ceiling
    return met


# Issue 6, "Targets for kpc_trio".
TARGETS: dict[tuple[str, str], Target] = {
    ("qos1", "msg/s"): Target(">= 50k", _at_least(50_000)),
    # A broker's ingest is what it accepts: amqtt acknowledges far more than it delivers.
    ("qos1", "acked msg/s"): Target(">= 4x amqtt", _at_least(0, 4.0)),
    ("qos0", "msg/s"): Target(">= 80k", _at_least(80_000)),
    ("roundtrip", "p99 ms"): Target("<= 2 ms", _at_most(2.0)),
    ("rss", "KiB/conn"): Target("<= 8 KiB", _at_most(8.0)),
    ("rss", "total MiB"): Target("< 100 MiB at 10k", _at_most(100.0)),
    ("tls_ws", "tls/tcp"): Target(">= 0.5", _at_least(0.5)),
    ("tls_ws", "ws/tcp"): Target(">= 0.5", _at_least(0.5)),
}


@attrs.frozen
class Row:
    case: str
    metric: str
    by_server: dict[str, Measurement]

    def median(self, server: str) -> float | None:
        found = self.by_server.get(server)
        return found.median if found and found.values else None

    def ratio(self, peer: str) -> float | None:
        ours, theirs = self.median(KPC), self.median(peer)
        return None if ours is None or not theirs else ours / theirs

    def target(self) -> tuple[str, bool | None]:
        target = TARGETS.get((self.case, self.metric))
        return ("", None) if target is None else (target.text, target.met(self.median))


def rows(measurements: Sequence[Measurement]) -> list[Row]:
    grouped: dict[tuple[str, str], dict[str, Measurement]] = {}
    for m in measurements:
        grouped.setdefault((m.case, m.metric), {})[m.server] = m
    return [Row(case, metric, by_server) for (case, metric), by_server in grouped.items()]


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _cell(measurement: Measurement | None) -> str:
    if measurement is None or not measurement.values:
        return "-"
    spread = f" [{_number(min(measurement.values))}-{_number(max(measurement.values))}]"
    return _number(measurement.median) + (spread if len(measurement.values) > 1 else "")


def table(measurements: Sequence[Measurement]) -> str:
    header = ["case", "metric", *SERVERS, *(f"{KPC}/{p}" for p in PEERS), "target", "met"]
    lines = [header]
    for row in rows(measurements):
        text, met = row.target()
        lines.append([
            row.case, row.metric, *(_cell(row.by_server.get(s)) for s in SERVERS),
            *("-" if (r := row.ratio(p)) is None else f"{r:.2f}x" for p in PEERS),
            text, {True: "yes", False: "NO", None: "-"}[met],
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def write_json(path: Path, measurements: Sequence[Measurement], meta: dict[str, object]) -> None:
    path.write_text(json.dumps({
        **meta,
        "measurements": [attrs.asdict(m) | {"median": m.median} for m in measurements],
        "targets": {f"{row.case} {row.metric}": {"target": t, "met": met}
                    for row in rows(measurements) for t, met in [row.target()] if t},
    }, indent=2))


def write_chart(path: Path, measurements: Sequence[Measurement]) -> str | None:
    """One bar panel per row (median with min-max whiskers); returns why not drawn, if so."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart_rows = [row for row in rows(measurements) if row.median(KPC) is not None]
    columns = 3
    lines = -(-len(chart_rows) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.5 * columns, 3.2 * lines),
                                squeeze=False)
    for axis, row in zip(axes.flat, chart_rows, strict=True):
        present = [s for s in SERVERS if row.median(s) is not None]
        medians = [row.by_server[s].median for s in present]
        low = [m - min(row.by_server[s].values) for s, m in zip(present, medians, strict=True)]
        high = [max(row.by_server[s].values) - m for s, m in zip(present, medians, strict=True)]
        axis.bar(present, medians, yerr=[low, high], capsize=4,
                 color=["tab:green" if s == KPC else "tab:gray" for s in present])
        axis.set_title(f"{row.case}: {row.metric}", fontsize=10)
    for axis in list(axes.flat)[len(chart_rows):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
