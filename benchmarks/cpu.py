"""CPU accounting for a benchmark run, from /proc: what each party used, and what was left.

Rates on a shared 2-core machine move by 2x between runs; CPU time per message moves least, so
every throughput and latency case records, over its measuring window:

- each party's CPU (utime + stime of its processes, from /proc/<pid>/stat): the server under
  test (its whole process tree: `--workers N` forks), and for kpc_trio the nats-server and the
  simulated Kaa side separately;
- the load generator's CPU (its processes are reaped inside the window, so the kernel's
  children rusage holds exactly theirs) and the counter's;
- the machine's idle CPU (/proc/stat), and from it the "foreign" CPU: busy time none of the
  above accounts for (other users of the machine).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
# Flags: a generator above this many cores competes with the server for the 2 cores; foreign
# load above this many cores took enough from the run that its rates are understated.
GENERATOR_LIMIT = 0.8
FOREIGN_LIMIT = 0.25


def process_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # Fields after the command (which may hold spaces), counted from field 3 (state).
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def tree_pids(pids: Sequence[int]) -> list[int]:
    """The processes and all their live descendants."""
    children = _children_map()
    found, pending = [], list(pids)
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children.get(pid, [])
    return found


def tree_seconds(pids: Sequence[int]) -> float:
    """CPU of the processes and all their live descendants."""
    return sum(process_seconds(pid) for pid in tree_pids(pids))


def machine_seconds() -> tuple[float, float]:
    """(idle, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return (fields[3] + fields[4]) / TICKS, sum(fields[:8]) / TICKS


def _reaped_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@attrs.frozen
class Parties:
    """The pids to account for: each party's processes (trees)."""

    server: tuple[int, ...]
    helpers: Mapping[str, tuple[int, ...]]  # e.g. "nats", "kaa": reported for kpc_trio only
    counter: tuple[int, ...]

    def seconds(self) -> dict[str, float]:
        return {"server": tree_seconds(self.server), "counter": tree_seconds(self.counter),
                **{name: tree_seconds(pids) for name, pids in self.helpers.items()}}


@attrs.define
class CpuWindow:
    """CPU used between entering and leaving `measure_cpu`; `figures()` after it closed."""

    parties: Parties
    _start: dict[str, float] = attrs.field(factory=dict)
    _used: dict[str, float] = attrs.field(factory=dict)

    def open(self) -> None:
        self._start = self._sample()

    def close(self) -> None:
        end = self._sample()
        self._used = {name: end[name] - self._start[name] for name in end}

    def _sample(self) -> dict[str, float]:
        idle, total = machine_seconds()
        return {**self.parties.seconds(), "generator": _reaped_seconds(), "bench": _own_seconds(),
                "idle": idle, "total": total, "wall": time.monotonic()}

    def figures(self, messages: int) -> dict[str, float]:
        """Per-message CPU of the server (and its helpers) and the load picture in cores."""
        used, wall = self._used, self._used["wall"]
        ours = sum(used[name] for name in used if name not in ("idle", "total", "wall"))
        busy = used["total"] - used["idle"]
        figures = {"server µs/msg": used["server"] / messages * 1e6}
        figures |= {f"{name} µs/msg": used[name] / messages * 1e6
                    for name in self.parties.helpers}
        return figures | {
            "server cores": used["server"] / wall,
            "gen cores": used["generator"] / wall,
            "idle cores": used["idle"] / wall,
            "foreign cores": max(0.0, busy - ours) / wall,
        }


@contextmanager
def measure_cpu(parties: Parties) -> Iterator[CpuWindow]:
    window = CpuWindow(parties)
    window.open()
    try:
        yield window
    finally:
        window.close()


def limits(gen_cores: float | None, foreign_cores: float | None) -> list[str]:
    """Why a case's figures may be co-limited by something other than the server."""
    found = []
    if gen_cores is not None and gen_cores >= GENERATOR_LIMIT:
        found.append(f"generator {gen_cores:.2f} cores")
    if foreign_cores is not None and foreign_cores >= FOREIGN_LIMIT:
        found.append(f"foreign load {foreign_cores:.2f} cores")
    return found
