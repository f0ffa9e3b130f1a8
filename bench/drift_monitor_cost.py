"""What the BatchNorm drift monitor costs: throughput with it on (the default sampling) and off.

    python bench/drift_monitor_cost.py [--repository R --model digits] [--rows 1 16 64]

Two servers from this tree on 127.0.0.1, one with the defaults (the monitor samples
``drift_sample_rate`` of the batches), one with the monitor off
(``BNSERVE_DRIFT_SAMPLE_RATE=0``). The same load alternates between them, round after
round, so the shared machine's drift hits both alike: --concurrency clients sending
requests of --rows rows. Reported: median rows/s over the rounds, and the median and
quartiles of each round's ratio on / off. On this shared 2-core machine an A/A run (both
servers with the monitor on) moves that ratio by 5-10%: the probes' own CPU time
(``bench/drift_overhead.py``) is the figure the noise does not blur.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

import numpy as np
from common import model_repository, rows_per_second, start_server

OFF = {"BNSERVE_DRIFT_SAMPLE_RATE": "0"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--repository", type=Path, default=None,
                        help="a repository whose model has a BatchNorm reference (default: a "
                        "quick digits CNN trained and exported now)")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64],
                        help="rows per request (one measurement each)")
    parser.add_argument("--rounds", type=int, default=10, help="alternations per row count")
    parser.add_argument("--requests", type=int, default=600, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    from bnserve.client import Client

    repository, scratch = model_repository(args.repository or Path("/nonexistent"), args.model)
    servers = {"monitor on": start_server(repository),
               "monitor off": start_server(repository, env={**os.environ, **OFF})}
    results: dict[int, dict[str, list[float]]] = {}
    try:
        addresses = {k: f"127.0.0.1:{port}" for k, (_, port) in servers.items()}
        with Client(addresses["monitor on"]) as client:
            spec = client.metadata(args.model).inputs[0]
            drift = client.drift_report(args.model)
        print(f"model {args.model}: monitor on samples {drift.sample_rate:.0%} of batches; "
              f"{len(drift.layers)} BatchNorm layers")
        sample_shape = [abs(d) for d in spec.shape[1:]]
        for rows in args.rows:
            x = np.random.default_rng(0).random((rows, *sample_shape), dtype=np.float32)
            for address in addresses.values():  # warm-up
                asyncio.run(rows_per_second(address, args.model, x, 200, args.concurrency))
            results[rows] = {k: [] for k in addresses}
            for r in range(args.rounds):
                for key in (list(addresses) if r % 2 else list(addresses)[::-1]):
                    results[rows][key].append(asyncio.run(rows_per_second(
                        addresses[key], args.model, x, args.requests, args.concurrency)))
            with Client(addresses["monitor on"]) as client:
                drift = client.drift_report(args.model)
            on, off = (statistics.median(results[rows][k]) for k in ("monitor on",
                                                                     "monitor off"))
            # Each round's two runs are next to each other in time: their ratio cancels
            # most of the machine's slow drift, which the medians alone do not.
            paired = sorted(a / b for a, b in zip(results[rows]["monitor on"],
                                                  results[rows]["monitor off"], strict=True))
            low, high = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
            print(f"{rows:>3} rows/request: monitor on {on:,.0f} rows/s, off {off:,.0f} rows/s; "
                  f"on/off per round: median {statistics.median(paired):.3f} (quartiles "
                  f"{low:.3f}-{high:.3f}); {drift.sampled_batches} batches measured so far",
                  flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    if scratch:
        scratch.cleanup()
    print(f"interleaved, medians of {args.rounds} rounds, {args.concurrency} clients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
