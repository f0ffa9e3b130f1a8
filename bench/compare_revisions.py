"""Is the hot path as fast as it was? This tree's server against another git revision's, in one run.

    python bench/compare_revisions.py --base REV [--repository models --model digits]

Builds REV into a scratch folder (``git worktree`` + ``pip install --no-deps --target``),
starts both servers on 127.0.0.1, and interleaves the same load on both so that the shared
machine's drift hits them alike: single-row requests one at a time (median latency), then
rounds of single-row requests from --concurrency clients (median rows/s over the rounds).
Medians of many alternations, never one run each: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import model_repository, rows_per_second, start_server

ROOT = Path(__file__).resolve().parents[1]


def build(revision: str, scratch: Path) -> dict[str, str]:
    """The environment that imports bnserve from ``revision`` instead of this tree."""
    tree, site = scratch / "tree", scratch / "site"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree),
                    revision], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(tree)], check=True)
    return {**os.environ, "PYTHONPATH": str(site)}


def start_base(repository: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    # Revisions before bnserve.cli ran the command from bnserve.client.cli.
    site = Path(env["PYTHONPATH"])
    module = "bnserve.cli" if (site / "bnserve" / "cli").is_dir() else "bnserve.client.cli"
    return start_server(repository, env=env, module=module)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--calls", type=int, default=1500, help="sequential calls per server")
    parser.add_argument("--rounds", type=int, default=10, help="concurrent rounds per server")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    from bnserve.client import Client

    repository, model_scratch = model_repository(args.repository, args.model)
    with tempfile.TemporaryDirectory(prefix="bnserve-base-") as scratch:
        env = build(args.base, Path(scratch))
        servers = {"base": start_base(repository, env), "this tree": start_server(repository)}
        try:
            addresses = {k: f"127.0.0.1:{port}" for k, (_, port) in servers.items()}
            clients = {k: Client(a) for k, a in addresses.items()}
            name = clients["base"].metadata(args.model).inputs[0].name
            x = np.random.default_rng(0).random((1, *[abs(d) for d in clients["base"].metadata(
                args.model).inputs[0].shape[1:]]), dtype=np.float32)
            latency: dict[str, list[float]] = {k: [] for k in clients}
            for _ in range(50):  # warm-up
                for client in clients.values():
                    client.infer(args.model, {name: x})
            for i in range(args.calls):
                for key in (list(clients) if i % 2 else list(clients)[::-1]):
                    started = time.perf_counter()
                    clients[key].infer(args.model, {name: x})
                    latency[key].append(time.perf_counter() - started)
            throughput: dict[str, list[float]] = {k: [] for k in clients}
            for r in range(args.rounds):
                for key in (list(clients) if r % 2 else list(clients)[::-1]):
                    throughput[key].append(asyncio.run(rows_per_second(
                        addresses[key], args.model, x, 1200, args.concurrency)))
            for client in clients.values():
                client.close()
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(Path(scratch) / "tree")], check=False)
    if model_scratch:
        model_scratch.cleanup()
    print(f"model {args.model}; base = {args.base}; interleaved, medians")
    print(f"{'server':<10} {'batch-1 latency ms':>19} {f'rows/s at {args.concurrency} clients':>24}")
    for key in latency:
        print(f"{key:<10} {statistics.median(latency[key]) * 1e3:>19.3f} "
              f"{statistics.median(throughput[key]):>24.0f}")
    base, this = (statistics.median(latency[k]) for k in ("base", "this tree"))
    print(f"this tree / base: latency {this / base:.3f}x, throughput "
          f"{statistics.median(throughput['this tree']) / statistics.median(throughput['base']):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
