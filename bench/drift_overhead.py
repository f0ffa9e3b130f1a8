"""What the BatchNorm drift monitor costs: served rows/s with it off and on (the defaults),
in-process (ServedModel's run path with onnxruntime, no gRPC: the worst case, since gRPC's
own cost per batch would hide part of it), interleaved over rounds; median of each. Also
the probes' own CPU time over the time the monitored runs took: the cost without the noise
of a shared machine (the throughput ratio moves by several % from round to round).

    .venv/bin/python bench/drift_overhead.py [--repository models] [--model digits]
        [--rows 1 8 64] [--seconds 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import latest_version, model_repository  # noqa: E402

from bnserve.server.loader import load_version  # noqa: E402
from bnserve.server.model_config import default_settings  # noqa: E402
from bnserve.server.repository import ModelRepository  # noqa: E402
from bnserve.server.settings import ServerSettings  # noqa: E402


def rows_per_second(model, feeds: dict[str, np.ndarray], seconds: float) -> float:
    rows = next(iter(feeds.values())).shape[0]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model._run(feeds)  # noqa: SLF001 - the batch path, where the monitor hooks in
        done += rows
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    repository, _scratch = model_repository(args.repository, args.model)
    entry = ModelRepository(repository).snapshot(args.model).versions[
        latest_version(repository, args.model)]
    models = {}
    for label, rate in (("off", 0.0), ("on", ServerSettings().drift_sample_rate)):
        settings = ServerSettings(repository=repository, drift_sample_rate=rate)
        models[label] = load_version(args.model, entry, default_settings(settings), settings)
    monitor = models["on"].monitoring.monitor
    if monitor is None:
        sys.exit(f"{args.model} has no drift monitor: {models['on'].monitoring.drift_problem}")
    defaults = ServerSettings()
    print(f"monitor defaults: sample rate {defaults.drift_sample_rate}, "
          f"{defaults.drift_rows_per_sample} rows per sample, probe budget "
          f"{defaults.drift_probe_budget} of a core; {len(monitor.reference.layers)} layers")
    spec = models["on"].inputs[0]
    print(f"{'rows/batch':>10}  {'off rows/s':>11}  {'on rows/s':>11}  {'change':>6}  "
          f"{'probe CPU':>9}  sampled  dropped")
    for rows in args.rows:
        shape = [rows if d == -1 else d for d in spec.shape]
        feeds = {spec.name: np.random.default_rng(0).normal(8, 4, shape).astype(np.float32)}
        before = (monitor.sampled_batches, monitor.dropped_samples, monitor.probe_cpu_s)
        results = {"off": [], "on": []}
        monitored_s = 0.0
        for _ in range(args.rounds):
            for label in ("off", "on"):
                started = time.perf_counter()
                results[label].append(rows_per_second(models[label], feeds, args.seconds))
                if label == "on":
                    monitor.wait_idle()
                    monitored_s += time.perf_counter() - started
        off, on = (statistics.median(results[k]) for k in ("off", "on"))
        share = (monitor.probe_cpu_s - before[2]) / monitored_s
        print(f"{rows:>10}  {off:>11.0f}  {on:>11.0f}  {on / off - 1:>+6.1%}  {share:>9.2%}  "
              f"{monitor.sampled_batches - before[0]:>7}  "
              f"{monitor.dropped_samples - before[1]:>7}")


if __name__ == "__main__":
    main()
