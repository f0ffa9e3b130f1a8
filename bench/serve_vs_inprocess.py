"""Benchmark: bnserve over gRPC vs onnxruntime in-process, same model, same batch, one run.

    python bench/serve_vs_inprocess.py [--repository models --model digits]

Prints medians side by side and their ratio, the concurrent throughput with dynamic
batching (and how many rows each onnxruntime run merged), and writes a latency
histogram PNG. The server runs as a subprocess on 127.0.0.1 so client and server do not
share a GIL; every loop is bounded by --requests. Timings on a shared machine are noisy:
compare the ratios, not the absolute numbers, and only within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import free_port, latest_version, model_repository, start_server
from tqdm import tqdm

from bnserve.repository.layout import MODEL_FILE


def timed(call, repeats: int, label: str) -> list[float]:
    call()  # warm-up
    samples = []
    for _ in tqdm(range(repeats), desc=label, leave=False):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


async def concurrent_rows(address: str, model: str, rows: np.ndarray, concurrency: int):
    from bnserve.client import AsyncClient

    latencies: list[float] = []
    async with AsyncClient(address) as client:
        await client.metadata(model)
        queue = list(range(len(rows)))

        async def worker() -> None:
            while queue:
                index = queue.pop()
                started = time.perf_counter()
                await client.predict(model, rows[index : index + 1])
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def scrape(metrics_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--requests", type=int, default=300, help="timed calls per case")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=1.0, help="server max queue delay")
    parser.add_argument("--plot", type=Path, default=Path("bench/results/latency.png"))
    args = parser.parse_args()

    import onnxruntime as ort

    from bnserve.client import Client

    args.repository, scratch = model_repository(args.repository, args.model)
    version = latest_version(args.repository, args.model)
    model_path = args.repository / args.model / str(version) / MODEL_FILE

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    meta_input = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in meta_input.shape]
    rng = np.random.default_rng(0)

    metrics_port = free_port()
    process, port = start_server(args.repository, "--metrics-port", str(metrics_port),
                                 "--max-queue-delay-ms", str(args.delay_ms))
    address = f"127.0.0.1:{port}"
    results = {}
    try:
        with Client(address) as client:
            for batch in (1, 32):
                x = rng.uniform(0, 16, size=[batch, *shape[1:]]).astype(np.float32)
                local = timed(lambda x=x: session.run(None, {meta_input.name: x}),
                              args.requests, f"in-process batch {batch}")
                remote = timed(lambda x=x: client.predict(args.model, x),
                               args.requests, f"server batch {batch}")
                results[batch] = (local, remote)
        rows = rng.uniform(0, 16, size=[args.requests * 4, *shape[1:]]).astype(np.float32)
        runs_before = scrape(metrics_port, "bnserve_batch_rows_count")
        latencies, elapsed = asyncio.run(
            concurrent_rows(address, args.model, rows, args.concurrency)
        )
        runs = scrape(metrics_port, "bnserve_batch_rows_count") - runs_before
        started = time.perf_counter()
        for index in range(len(rows)):
            session.run(None, {meta_input.name: rows[index : index + 1]})
        local_elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)
        if scratch:
            scratch.cleanup()

    print(f"\nmodel {args.model} v{version}, {args.requests} calls per case, medians:")
    print(f"{'batch':>5} {'in-process ms':>14} {'server ms':>10} {'ratio':>6}")
    for batch, (local, remote) in results.items():
        lm, rm = statistics.median(local) * 1e3, statistics.median(remote) * 1e3
        print(f"{batch:>5} {lm:>14.3f} {rm:>10.3f} {rm / lm:>6.1f}x")
    print(f"\n{len(rows)} single-row requests, {args.concurrency} concurrent:")
    print(f"  server:     {len(rows) / elapsed:8.0f} rows/s, median latency "
          f"{statistics.median(latencies) * 1e3:.2f} ms, p99 "
          f"{np.percentile(latencies, 99) * 1e3:.2f} ms, {len(rows) / max(runs, 1):.1f} rows "
          f"per onnxruntime run ({int(runs)} runs)")
    print(f"  in-process: {len(rows) / local_elapsed:8.0f} rows/s (one row per run, one thread)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, batch in zip(axes, results, strict=True):
        local, remote = results[batch]
        axis.hist(np.array(local) * 1e3, bins=40, alpha=0.7, label="in-process onnxruntime")
        axis.hist(np.array(remote) * 1e3, bins=40, alpha=0.7, label="bnserve over gRPC")
        axis.set(title=f"batch {batch}", xlabel="latency (ms)", ylabel="calls")
        axis.legend()
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=100)
    print(f"latency histogram: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
