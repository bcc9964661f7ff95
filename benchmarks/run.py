"""Benchmark kpc_trio against mosquitto and amqtt on this machine, side by side.

    python -m benchmarks.run [--quick] [--cases qos1,qos0,...,tls_idle,tls_ws] [--repeat N]
                             [--workers 1,2] [--no-peers] [--amqtt PATH]

Starts nats-server, the simulated Kaa side, kpc_trio (once per --workers count) and the peers as
child processes, runs every case --repeat times per server, prints medians, spread, ratios, CPU
per message and what co-limited each case, and writes benchmarks/results/<timestamp>.json and
.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import resource
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trustme

from benchmarks import report
from benchmarks.cases import CASES, QUICK, Bench, CaseError, Sizes
from benchmarks.counters import Counter, start_mqtt_counter, start_nats_counter
from benchmarks.servers import (
    AMQTT_DEFAULT,
    KaaSideProcess,
    ServerProcess,
    amqtt_server,
    is_kpc,
    kpc_server,
    mosquitto_server,
)
from benchmarks.workload import EXTENSION, wire_size_qos0
from kpc_trio.kaa import subjects
from kpc_trio.nats.embedded import NatsServerProcess

RESULTS = Path(__file__).parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks it works")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case and server")
    parser.add_argument("--workers", default="1,2",
                        help="kpc_trio's --workers counts to run side by side (default 1,2)")
    parser.add_argument("--no-peers", action="store_true", help="benchmark kpc_trio only")
    parser.add_argument("--amqtt", type=Path, default=AMQTT_DEFAULT,
                        help="the amqtt executable (in its own venv)")
    return parser


def _raise_file_limit() -> None:
    # 10k idle connections need 10k descriptors in the server; children inherit the limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start_everything(stack: contextlib.ExitStack, workdir: Path, args: argparse.Namespace,
                      ) -> tuple[list[ServerProcess], Bench, str]:
    """NATS, the token provider and the servers; `stack` stops them all."""
    nats = NatsServerProcess()
    nats.start()
    stack.callback(nats.stop)
    authority = trustme.CA()
    cert = authority.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = workdir / "server.pem", workdir / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    token_provider = KaaSideProcess(nats.url, ["--token-provider"])
    token_provider.start()
    stack.callback(token_provider.stop)
    candidates: list[ServerProcess | str] = [
        kpc_server(workdir, nats.url, cert_file, key_file, workers)
        for workers in sorted({int(count) for count in args.workers.split(",")})]
    if not args.no_peers:
        candidates += [mosquitto_server(workdir, cert_file, key_file),
                       amqtt_server(workdir, args.amqtt)]
    servers: list[ServerProcess] = []
    for candidate in candidates:
        if isinstance(candidate, str):
            print(f"note: skipping a peer: {candidate}", file=sys.stderr)
            continue
        candidate.start()
        stack.callback(candidate.stop)
        servers.append(candidate)

    def start_counter(server: ServerProcess) -> Counter:
        if is_kpc(server.name):  # kpc_trio's work ends on NATS, in `ClientData`
            return start_nats_counter(nats.url, subjects.client_data(EXTENSION))
        return start_mqtt_counter(server.port, wire_size_qos0(0))

    helpers = {"nats": [nats.pid], "kaa": [token_provider.pid]}
    return servers, Bench(sizes=QUICK if args.quick else Sizes(), nats_url=nats.url,
                          start_counter=start_counter,
                          helper_pids=helpers), nats.url


def _measure(bench: Bench, name: str, server: ServerProcess, nats_url: str, repeat: int,
             measurements: dict[tuple[str, str, str], report.Measurement],
             failures: list[str]) -> None:
    """Run one case `repeat` times on one server, adding figures or the failure."""
    info = CASES[name]
    echo = KaaSideProcess(nats_url, ["--echo", EXTENSION])
    if info.needs_echo and is_kpc(server.name):
        echo.start()
        bench.helper_pids["kaa"].append(echo.pid)
    try:
        for attempt in range(repeat):
            print(f"{name} on {server.name} ({attempt + 1}/{repeat})", file=sys.stderr,
                  flush=True)
            for metric, value in info.run(bench, server).items():
                measurements.setdefault(
                    (name, metric, server.name), report.Measurement(name, metric, server.name),
                ).values.append(value)
    except CaseError as exc:
        failures.append(str(exc))
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
    finally:
        echo.stop()
        bench.helper_pids["kaa"][1:] = []


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    selected = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in selected if name not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; choose from {','.join(CASES)}", file=sys.stderr)
        return 2
    _raise_file_limit()
    measurements: dict[tuple[str, str, str], report.Measurement] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kpc-bench-") as tmp, contextlib.ExitStack() as stack:
        servers, bench, url = _start_everything(stack, Path(tmp), args)
        for name in selected:
            takers = [server for server in servers
                      if (CASES[name].kpc if is_kpc(server.name) else CASES[name].peers)]
            for server in takers[:1] if CASES[name].once else takers:
                _measure(bench, name, server, url, args.repeat, measurements, failures)
    collected = list(measurements.values())
    print(report.table(collected))
    print(report.cpu_summary(collected))
    print(report.latency_floor(collected))
    print(report.limits(collected))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report.write_json(RESULTS / f"{stamp}.json", collected, {
        "quick": args.quick, "repeat": args.repeat, "cases": selected, "workers": args.workers,
        "machine": platform.platform(), "failures": failures,
    })
    problem = report.write_chart(RESULTS / f"{stamp}.png", collected)
    print(f"results: {RESULTS / stamp}.json" + ("" if problem else " and .png"))
    if problem:
        print(f"note: {problem}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run())
