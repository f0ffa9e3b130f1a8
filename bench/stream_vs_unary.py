"""One client, N one-row requests: sent one after another as unary calls, then through one
ModelStreamInfer stream (``Client.stream``), against the same server, interleaved over
rounds; median rows/s of each, and rows per onnxruntime run while streaming.

    .venv/bin/python bench/stream_vs_unary.py [--repository models] [--model digits]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model_repository, start_server  # noqa: E402

from bnserve.client import Client  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    repository, _scratch = model_repository(args.repository, args.model)
    process, port = start_server(repository, "--drain-window-s", "0")
    try:
        with Client(f"127.0.0.1:{port}") as client:
            meta = client.metadata(args.model)
            shape = [1 if d == -1 else d for d in meta.inputs[0].shape]
            rows = [np.random.default_rng(i).random(shape, np.float32)
                    for i in range(args.requests)]
            name = meta.inputs[0].name
            unary, stream, per_run = [], [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                for x in rows:
                    client.infer(args.model, {name: x})
                unary.append(len(rows) / (time.perf_counter() - started))
                before = client.statistics(args.model)[0]
                started = time.perf_counter()
                answers = list(client.stream(args.model, ({name: x} for x in rows)))
                stream.append(len(answers) / (time.perf_counter() - started))
                after = client.statistics(args.model)[0]
                runs = int(after["execution_count"]) - int(before["execution_count"])
                per_run.append(len(rows) / max(runs, 1))
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"{args.requests} one-row requests, {args.rounds} rounds, medians")
    print(f"  unary, one after another: {statistics.median(unary):7.0f} rows/s")
    print(f"  one stream:               {statistics.median(stream):7.0f} rows/s, "
          f"{statistics.median(per_run):.1f} rows per onnxruntime run")
    print(f"  stream / unary:           {statistics.median(stream) / statistics.median(unary):.2f}x")


if __name__ == "__main__":
    main()
