"""Summaries of a run: the console table, CPU per message, the JSON file and the PNG chart.

Medians are the headline, min-max the spread; ratios compare kpc_trio's median to each peer's.
The targets of issues 6 and 16 are checked here so the table says plainly which are met, and a
case co-limited by the load generator or by foreign load is flagged (`!`) and listed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from benchmarks import cpu
from benchmarks.servers import KPC, is_kpc

PEERS = ("mosquitto", "amqtt")


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


ROUND_TRIP_P99_TARGET = 1.0  # ms, issue 16

# Issue 6, "Targets for kpc_trio", and issue 16 (round trip p99 <= 1 ms).
TARGETS: dict[tuple[str, str], Target] = {
    ("qos1", "msg/s"): Target(">= 50k", _at_least(50_000)),
    # A broker's ingest is what it accepts: amqtt acknowledges far more than it delivers.
    ("qos1", "acked msg/s"): Target(">= 4x amqtt", _at_least(0, 4.0)),
    ("qos0", "msg/s"): Target(">= 80k", _at_least(80_000)),
    ("roundtrip", "p99 ms"): Target("<= 1 ms", _at_most(ROUND_TRIP_P99_TARGET)),
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


# The load picture of a case, not a figure of the server: no ratios.
LOAD_METRICS = frozenset({"gen cores", "idle cores", "foreign cores"})
# Cells over these medians are flagged: the case was co-limited by something not the server.
FLAG_LIMITS = {"gen cores": cpu.GENERATOR_LIMIT, "foreign cores": cpu.FOREIGN_LIMIT}


def _cell(measurement: Measurement | None) -> str:
    if measurement is None or not measurement.values:
        return "-"
    spread = f" [{_number(min(measurement.values))}-{_number(max(measurement.values))}]"
    limit = FLAG_LIMITS.get(measurement.metric)
    flag = "!" if limit is not None and measurement.median >= limit else ""
    return _number(measurement.median) + flag + (spread if len(measurement.values) > 1 else "")


def servers(measurements: Sequence[Measurement]) -> list[str]:
    """kpc_trio first, then its multi-worker runs, then the peers, as measured."""
    seen = list(dict.fromkeys(m.server for m in measurements))
    return sorted(seen, key=lambda s: (not is_kpc(s), s != KPC, PEERS.index(s)
                                       if s in PEERS else 0, s))


def _render(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                .rstrip() for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def table(measurements: Sequence[Measurement]) -> str:
    names = servers(measurements)
    header = ["case", "metric", *names, *(f"{KPC}/{p}" for p in PEERS), "target", "met"]
    lines = [header]
    for row in rows(measurements):
        text, met = row.target()
        lines.append([
            row.case, row.metric, *(_cell(row.by_server.get(s)) for s in names),
            *("-" if (r := row.ratio(p)) is None or row.metric in LOAD_METRICS
              else f"{r:.2f}x" for p in PEERS),
            text, {True: "yes", False: "NO", None: "-"}[met],
        ])
    return _render(lines)


# Issue 16: CPU per relayed message <= 2x mosquitto's ingest-only CPU per message.
CPU_TARGET_FACTOR = 2.0


def cpu_summary(measurements: Sequence[Measurement]) -> str:
    """Server CPU per message (per request for the round trip), kpc_trio against the peers'
    pub->sub (round trip: loopback) and ingest-only floors."""
    found = {(m.case, m.metric, m.server): m for m in measurements}

    def median(case: str, metric: str, server: str) -> float | None:
        m = found.get((case, metric, server))
        return m.median if m and m.values else None

    kpcs = [s for s in servers(measurements) if is_kpc(s)]
    columns: list[tuple[str, str, str, str]] = [  # header, case suffix, metric, server
        *((s, "", "server", s) for s in kpcs),
        ("nats-server", "", "nats", KPC), ("Kaa side", "", "kaa", KPC),
        *((f"{p} {label}", suffix, "server", p) for p in PEERS
          for label, suffix in (("pub->sub", ""), ("ingest", "_ingest"))),
    ]
    header = ["CPU µs per msg (req)", *(c[0] for c in columns), f"{KPC}/mosquitto pub->sub",
              f"{KPC}/mosquitto ingest", f"{KPC}/amqtt ingest",
              f"target <= {CPU_TARGET_FACTOR:g}x mosquitto ingest"]
    lines = [header]
    for case, unit in (("qos1", "msg"), ("qos0", "msg"), ("roundtrip", "req")):
        cells = [median(case + suffix, f"{party} µs/{unit}", server)
                 for _, suffix, party, server in columns]
        if all(cell is None for cell in cells):
            continue
        metric = f"server µs/{unit}"
        ours = median(case, metric, KPC)
        ratios = [None if ours is None or not theirs else ours / theirs
                  for theirs in (median(case, metric, "mosquitto"),
                                 median(f"{case}_ingest", metric, "mosquitto"),
                                 median(f"{case}_ingest", metric, "amqtt"))]
        met = None if ratios[1] is None else ratios[1] <= CPU_TARGET_FACTOR
        lines.append([case, *("-" if c is None else _number(c) for c in cells),
                      *("-" if r is None else f"{r:.2f}x" for r in ratios),
                      {True: "yes", False: "NO", None: "-"}[met]])
    if len(lines) == 1:
        return "(no CPU per message measured)"
    return _render(lines)


def latency_floor(measurements: Sequence[Measurement]) -> str:
    """The round trip through kpc_trio next to the same requests without it (`roundtrip_floor`):
    what KPC adds, and whether the p99 target is above what nats-server and the extension take
    alone on this machine."""
    found = {(m.case, m.metric): m.median for m in measurements if m.server == KPC and m.values}
    cuts = ("p50 ms", "p99 ms", "p99.9 ms")
    through = [found.get(("roundtrip", cut)) for cut in cuts]
    floor = [found.get(("roundtrip_floor", cut)) for cut in cuts]
    if None in through or None in floor:
        return "round trip floor: not measured (--cases roundtrip,roundtrip_floor)"
    line = ("round trip p50 / p99 / p99.9 ms: through kpc_trio "
            + " / ".join(_number(v) for v in through if v is not None)
            + ", without KPC " + " / ".join(_number(v) for v in floor if v is not None)
            + ", medians' difference " + " / ".join(
                _number(t - f) for t, f in zip(through, floor, strict=True)
                if t is not None and f is not None))
    p99_floor = floor[1]
    if p99_floor is not None and p99_floor > ROUND_TRIP_P99_TARGET:
        line += (f"\n  the p99 target (<= {ROUND_TRIP_P99_TARGET:g} ms) is below the floor: "
                 "nats-server and the extension alone take longer here")
    return line


def limits(measurements: Sequence[Measurement]) -> str:
    """One line per case and server whose figures were co-limited, or a line saying none was."""
    found = {(m.case, m.metric, m.server): m.median for m in measurements if m.values}
    notes = []
    for case, server in dict.fromkeys((m.case, m.server) for m in measurements):
        idle = found.get((case, "idle cores", server))
        why = cpu.limits(found.get((case, "gen cores", server)),
                     found.get((case, "foreign cores", server)))
        if why:
            notes.append(f"  {case} on {server}: co-limited by {' and '.join(why)}"
                         f" (machine idle {idle:.2f} cores)" if idle is not None else "")
    if not notes:
        return "co-limits: none (no generator or foreign load over the flag limits)"
    return "co-limits (medians; rates of these cases understate the server):\n" + "\n".join(notes)


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
    for axis, row in zip(axes.flat, chart_rows, strict=False):
        present = [s for s in servers(measurements) if row.median(s) is not None]
        medians = [row.by_server[s].median for s in present]
        low = [m - min(row.by_server[s].values) for s, m in zip(present, medians, strict=True)]
        high = [max(row.by_server[s].values) - m for s, m in zip(present, medians, strict=True)]
        axis.bar(present, medians, yerr=[low, high], capsize=4,
                 color=["tab:green" if is_kpc(s) else "tab:gray" for s in present])
        axis.set_title(f"{row.case}: {row.metric}", fontsize=10)
    for axis in list(axes.flat)[len(chart_rows):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
