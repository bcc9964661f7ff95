"""The simulated Kaa side as its own process, so it never competes with the bench for a GIL.

    python -m benchmarks.kaa_side NATS_URL [--token-provider] [--echo dcx]

Prints `ready` once subscribed and runs until stdin closes.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.workload import ENDPOINTS
from kpc_trio.logs import configure_logging
from kpc_trio.simulator import SimulatedKaa

READY_LINE = "ready"
# A provider name KPC never asks, for a process that must not answer token requests.
UNUSED_PROVIDER = "bench-unused-provider"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nats_url")
    parser.add_argument("--token-provider", action="store_true",
                        help="answer token validations for the bench endpoints")
    parser.add_argument("--echo", action="append", default=[], metavar="EXTENSION",
                        help="run an echo extension (repeatable)")
    args = parser.parse_args()
    configure_logging("WARNING")  # the simulator logs every message at INFO
    with SimulatedKaa(args.nats_url,
                      token_provider="cm" if args.token_provider else UNUSED_PROVIDER,
                      endpoints=ENDPOINTS if args.token_provider else (),
                      echo_extensions=args.echo):
        print(READY_LINE, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
