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
        latency_histogram(axis, {"in-process onnxruntime": local, "bnserve over gRPC": remote},
                          title=f"batch {batch}")
    figure.suptitle(f"Latency per call, {args.model}: in-process onnxruntime vs bnserve")
    figure.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=100)
    print(f"latency histogram: {args.plot}")
    return 0


def latency_histogram(axis, series: dict[str, list[float]], *, title: str,
                      clip_factor: float = 1.5) -> int:
    """Histograms of call latencies (seconds) in ms on ``axis``, each with its median (solid)
    and p99 (dashed) line. The axis stops at ``clip_factor`` x the largest p99, so that one
    outlier cannot squeeze the distributions into a corner; the calls beyond are counted in
    a note. Returns how many calls were left out."""
    ms = {label: np.asarray(values) * 1e3 for label, values in series.items()}
    limit = clip_factor * max(float(np.percentile(v, 99)) for v in ms.values())
    left_out = 0
    for (label, values), colour in zip(ms.items(), ("tab:blue", "tab:orange", "tab:green"),
                                       strict=False):
        shown = values[values <= limit]
        left_out += int(values.size - shown.size)
        median, p99 = float(np.median(values)), float(np.percentile(values, 99))
        axis.hist(shown, bins=40, range=(0, limit), alpha=0.6, color=colour, label=label)
        axis.axvline(median, color=colour, linestyle="-",
                     label=f"{label}: median {median:.2f} ms")
        axis.axvline(p99, color=colour, linestyle="--", label=f"{label}: p99 {p99:.2f} ms")
    axis.set(title=title, xlabel="latency (ms)", ylabel="calls", xlim=(0, limit))
    if left_out:
        largest = max(float(v.max()) for v in ms.values())
        axis.text(0.98, 0.6, f"{left_out} call(s) above {limit:.2f} ms not shown\n"
                  f"(slowest {largest:.2f} ms)", transform=axis.transAxes, ha="right",
                  fontsize=8)
    axis.legend(fontsize=7)
    return left_out


if __name__ == "__main__":
    sys.exit(main())
