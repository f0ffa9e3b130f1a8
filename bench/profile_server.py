"""Where the server's time goes under load. First the CPU a request costs the server
process (all threads) and the load generator, for bnserve and for the transport floor in the
same scenario; then py-spy samples the ``bnserve serve`` subprocess while bench/loadgen.py
drives it, and this prints the functions that hold the most samples (self and inclusive).

    .venv/bin/python bench/profile_server.py --model mlp --scenario 1x32 --mode unary
    .venv/bin/python bench/profile_server.py --model resnet --scenario 32x4 --native

Output: bench/results/profile-<model>-<scenario>-<mode>.txt (the summary) and .collapsed
(py-spy's raw stacks: speedscope.app or inferno-flamegraph draw them). py-spy (PyPI, in the dev
extras) needs ptrace on the server process: root, or kernel.yama.ptrace_scope 0. The
samples cover every thread (event loop, onnxruntime callers, codec, grpc's poller); idle
threads are left out (--idle keeps them), so shares are of busy time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import MODELS, build_model  # noqa: E402
from common import start_server  # noqa: E402
from loadgen import build_requests, run_load  # noqa: E402
from serving import floor_answers, process_ticks, start_floor, stop  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_per_request(address: str, pid: int, requests: list[bytes], *, mode: str,
                    concurrency: int, rows: int, seconds: float) -> dict:
    """Rows/s under the closed loop, and the CPU the server process and this load generator
    spent per request (all threads, from /proc and os.times)."""
    asyncio.run(run_load(address, requests, mode=mode, concurrency=concurrency,
                         duration_s=0.5, warmup_s=0.3, rows_per_request=rows))
    server_before, mine_before = process_ticks(pid), os.times()
    started = time.perf_counter()
    result = asyncio.run(run_load(address, requests, mode=mode, concurrency=concurrency,
                                  duration_s=seconds, warmup_s=0.0, rows_per_request=rows))
    wall = time.perf_counter() - started
    tick = os.sysconf("SC_CLK_TCK")
    server_s = (process_ticks(pid) - server_before) / tick
    mine_after = os.times()
    generator_s = (mine_after.user + mine_after.system - mine_before.user - mine_before.system)
    calls = result.requests
    return {"rows_per_s": result.rows_per_s, "server_us": 1e6 * server_s / calls,
            "server_cores": server_s / wall, "generator_us": 1e6 * generator_s / calls,
            "generator_cores": generator_s / wall}


def summarize(collapsed: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks
    (``frame;frame;... count`` per line), and per thread."""
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        self_samples[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames[1:]}:
            inclusive[frame] += n
    if not total:
        return "no samples (is ptrace allowed?)\n"
    lines = [f"{total} samples", "", "by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(top)]
    lines += ["", "self (the function itself was on CPU):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self_samples.most_common(top)]
    lines += ["", "inclusive (the function or what it called):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``function (path/to/site-packages/pkg/mod.py:12)`` -> ``function (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=MODELS)
    parser.add_argument("--scenario", default="1x32", help="ROWSxINFLIGHT")
    parser.add_argument("--mode", default="unary", choices=["unary", "stream"])
    parser.add_argument("--seconds", type=float, default=8.0, help="sampled under load")
    parser.add_argument("--rate", type=int, default=250, help="samples a second")
    parser.add_argument("--native", action="store_true", help="C/C++ frames too (slower)")
    parser.add_argument("--idle", action="store_true", help="keep idle threads' samples")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (the dev extras have it)")
    batch, concurrency = (int(v) for v in args.scenario.split("x"))
    stem = f"profile-{args.model}-{args.scenario}-{args.mode}"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bnserve-profile-") as scratch:
        repository = Path(scratch) / "models"
        build_model(repository, args.model)
        from bnserve.server.runtime import OnnxRuntimeSession

        session = OnnxRuntimeSession(repository / args.model / "1" / "model.onnx")
        spec = session.inputs[0]
        requests = build_requests(args.model, spec.name, (batch, *spec.shape[1:]))
        floor_answers(Path(scratch) / "answers", args.model, session, {batch},
                      {batch: requests})
        floor, floor_port = start_floor(Path(scratch) / "answers")
        server, port = start_server(repository, "--drain-window-s", "0",
                                    "--shutdown-grace-s", "1", *args.server_arg)
        costs = {}
        try:
            for target, pid, at in (("bnserve", server.pid, port), ("floor", floor.pid,
                                                                   floor_port)):
                costs[target] = cpu_per_request(f"127.0.0.1:{at}", pid, requests,
                                                mode=args.mode, concurrency=concurrency,
                                                rows=batch, seconds=4.0)
        finally:
            stop(floor)
        try:
            asyncio.run(run_load(f"127.0.0.1:{port}", requests, mode=args.mode,
                                 concurrency=concurrency, duration_s=1.0, warmup_s=0.5,
                                 rows_per_request=batch))  # warm: sessions, channels, EWMAs
            collapsed = Path(scratch) / "stacks.txt"
            record = [py_spy, "record", "--pid", str(server.pid), "--rate", str(args.rate),
                      "--duration", str(int(args.seconds)), "--threads",
                      "--format", "raw", "--output", str(collapsed)]
            # --native must stop the process to read C stacks; plain sampling need not.
            record += ["--native"] if args.native else ["--nonblocking"]
            record += ["--idle"] * args.idle
            spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
            time.sleep(0.5)
            result = asyncio.run(run_load(f"127.0.0.1:{port}", requests, mode=args.mode,
                                          concurrency=concurrency, duration_s=args.seconds,
                                          warmup_s=0.0, rows_per_request=batch))
            _, errors = spy.communicate(timeout=60)
            if spy.returncode:
                raise SystemExit(f"py-spy failed: {errors.strip()[-500:]}")
        finally:
            server.terminate()
            server.wait(timeout=30)
        header = (f"{args.model} {args.scenario} {args.mode}: {result.rows_per_s:,.0f} rows/s, "
                  f"p50 {result.p50_ms:.2f} ms while sampled at {args.rate}/s "
                  f"(`bench/profile_server.py {' '.join(argv if argv is not None else sys.argv[1:])}`)\n\n")
        cost_lines = "".join(
            f"{target:8} {c['rows_per_s']:9,.0f} rows/s; server {c['server_us']:6.1f} us CPU a "
            f"request ({c['server_cores']:.2f} cores), load generator {c['generator_us']:6.1f} "
            f"us ({c['generator_cores']:.2f} cores)\n" for target, c in costs.items())
        text = header + "CPU per request, 4 s each, unsampled:\n" + cost_lines + "\n" + \
            summarize(collapsed, args.top)
        (args.out / f"{stem}.txt").write_text(text)
        shutil.copyfile(collapsed, args.out / f"{stem}.collapsed")
    print(text)
    print(f"wrote {args.out}/{stem}.txt and .collapsed")


if __name__ == "__main__":
    main()
