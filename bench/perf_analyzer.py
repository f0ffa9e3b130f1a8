"""Triton's own load generator, perf_analyzer (from the tritonclient wheel), against bnserve.

    python bench/perf_analyzer.py [--repository models --model digits] [-- perf_analyzer args]

perf_analyzer reads the model's ModelMetadata and ModelConfig, sends ModelInfer over gRPC
at each concurrency, and reads ModelStatistics before and after each step for its
server-side breakdown (queue, compute input/infer/output): it only runs against a server
that answers Triton's extensions the way Triton does. It needs no GPU, but its binary links
libb64 (Debian: ``apt-get install libb64-0d``) and libcudart.so.12 (PyPI:
``pip install nvidia-cuda-runtime-cu12``); this script finds the latter in the venv.
The output goes to the terminal and bench/results/perf_analyzer.txt.
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import model_repository, start_server


def cuda_runtime_dir() -> Path | None:
    for entry in sys.path:
        candidate = Path(entry) / "nvidia" / "cuda_runtime" / "lib"
        if (candidate / "libcudart.so.12").exists():
            return candidate
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency-range", default="1:8:7")
    parser.add_argument("--out", type=Path, default=Path("bench/results/perf_analyzer.txt"))
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]

    binary = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(binary).exists():
        print("perf_analyzer not found: pip install 'tritonclient[grpc]==2.41.*'", file=sys.stderr)
        return 1
    cudart = cuda_runtime_dir()
    if cudart is None:
        print("perf_analyzer links libcudart.so.12: pip install nvidia-cuda-runtime-cu12",
              file=sys.stderr)
        return 1
    if ctypes.util.find_library("b64") is None:
        print("perf_analyzer links libb64.so.0d: apt-get install libb64-0d", file=sys.stderr)
        return 1

    repository, scratch = model_repository(args.repository, args.model)
    process, port = start_server(repository)
    env = {**os.environ,
           "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")}
    command = [binary, "-m", args.model, "-u", f"127.0.0.1:{port}", "-i", "grpc",
               "--concurrency-range", args.concurrency_range, "--measurement-interval", "3000",
               *extra]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    finally:
        process.terminate()
        process.wait(timeout=30)
        if scratch:
            scratch.cleanup()
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"$ perf_analyzer {' '.join(command[1:])}\n{done.stdout}")
    print(f"wrote {args.out}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
