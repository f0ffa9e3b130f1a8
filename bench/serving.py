"""Serving benchmark: bnserve against the transport floor and the in-process limit.

    .venv/bin/python bench/serving.py                 # full run (make bench), ~12 min
    .venv/bin/python bench/serving.py --quick         # ~1 s a scenario
    .venv/bin/python bench/serving.py --pin           # server and generator on separate cores

For each model (built here, bench/bench_models.py) it measures
  limit    the same model.onnx in onnxruntime in this process, the better of two thread
           plans (one run on every core, the server's default, or one single-thread run per
           core; only the first under --pin or --intra-op-threads): rows/s at batch 1 and
           32, p50 of the run;
  bnserve  ``bnserve serve`` (a subprocess on 127.0.0.1) under bench/loadgen.py's closed loop;
  bnserve-no-drift  the same with the drift monitor off (the monitor's cost, per scenario);
  floor    bench/floor_server.py (a bare grpc.aio server, pre-serialised answers, no model)
           under the same load generator, the same requests;
in each scenario (rows a request x requests in flight, unary and streaming), and writes
bench/results/serving.{md,json,png}. The load generator is one Python process: unless
--pin, it shares the machine's cores with the server, so every figure includes its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import MODELS, build_model  # noqa: E402
from common import start_server  # noqa: E402
from loadgen import build_requests, run_load  # noqa: E402

from bnserve.proto import open_inference_pb2 as pb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("1x1", "1x8", "1x32", "1x128", "32x4")  # rows a request x requests in flight
LIMIT_BATCHES = (1, 32)
NO_DRIFT = "bnserve-no-drift"  # bnserve with --drift-sample-rate 0: what the monitor costs


@dataclass
class Durations:
    measure_s: float
    warmup_s: float


def machine_load() -> dict:
    """What the machine was doing when the run started."""
    load = {"loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(), "usable_cpus": sorted(os.sched_getaffinity(0)),
            "cgroup_cpu_quota": None}
    v2 = Path("/sys/fs/cgroup/cpu.max")
    v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    if v2.exists():
        quota, period = v2.read_text().split()
        load["cgroup_cpu_quota"] = None if quota == "max" else round(int(quota) / int(period), 2)
    elif v1.exists() and int(v1.read_text()) > 0:
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        load["cgroup_cpu_quota"] = round(int(v1.read_text()) / period, 2)
    return load


def _busy_ticks() -> int:
    """Clock ticks every CPU spent busy since boot (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return user + nice + system + irq + softirq + steal


def process_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


class OtherLoad:
    """Cores kept busy by processes other than this one and ``server_pid`` over an interval:
    on a shared machine, the figure that says whether a scenario's numbers can be trusted."""

    def __init__(self, *server_pids: int) -> None:
        self.pids = tuple({os.getpid(), *server_pids})
        self.started = (time.perf_counter(), _busy_ticks(), sum(map(process_ticks, self.pids)))

    def cores(self) -> float:
        wall, busy, ours = self.started
        others = (_busy_ticks() - busy) - (sum(map(process_ticks, self.pids)) - ours)
        # max(0): ticks are counted per CPU at different moments, so a quiet interval can
        # read a hair below zero.
        return max(0.0, round(others / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - wall), 2))


def split_cpus(cpus: list[int]) -> tuple[list[int], list[int]]:
    """--pin: the server (and the limit) get the first half, the generator the rest."""
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 usable CPUs")
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


def pin(pid: int, cpus: list[int]) -> None:
    """Every thread of ``pid`` (onnxruntime's pool is started by then) onto ``cpus``."""
    subprocess.run(["taskset", "-a", "-c", "-p", ",".join(map(str, cpus)), str(pid)],
                   check=True, stdout=subprocess.DEVNULL)


def start_floor(answers: Path) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "floor_server.py"),
                                str(answers)], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError("the floor server did not start")
    return process, int(line)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def floor_answers(folder: Path, model: str, session, batches: set[int],
                  requests: dict[int, list[bytes]]) -> None:
    """``<request length>.bin``: the answer bnserve would give, zeros of the output shape."""
    folder.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        response = pb.ModelInferResponse(model_name=model, model_version="1")
        for spec in session.outputs:
            shape = [batch, *spec.shape[1:]]
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            response.raw_output_contents.append(np.zeros(shape, np.float32).tobytes())
        (folder / f"{len(requests[batch][0])}.bin").write_bytes(response.SerializeToString())


def _timed_runs(session, feeds: dict, durations: Durations, threads: int) -> tuple[float, list[float]]:
    """``threads`` Python threads calling ``session.run`` back to back (onnxruntime runs
    concurrently on one session and releases the GIL); runs/s over all, and each run's time."""
    import threading

    warm_until = time.perf_counter() + durations.warmup_s
    while time.perf_counter() < warm_until:
        session.run(feeds)
    times: list[float] = []
    start = time.perf_counter()

    def worker() -> None:
        while (began := time.perf_counter()) < start + durations.measure_s:
            session.run(feeds)
            times.append(time.perf_counter() - began)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(times) / (time.perf_counter() - start), times


def measure_limit(sessions: dict[str, tuple], input_name: str, sample_shape: tuple[int, ...],
                  durations: Durations) -> dict[str, dict]:
    """onnxruntime in this process, back to back, at each of LIMIT_BATCHES, under each
    thread plan of ``sessions`` (label -> (session, concurrent runs)); the best plan is
    the limit, the others are kept for the record."""
    rng = np.random.default_rng(0)
    limit = {}
    for batch in LIMIT_BATCHES:
        feeds = {input_name: rng.standard_normal((batch, *sample_shape), dtype=np.float32)}
        plans = {}
        for label, (session, runs_at_once) in sessions.items():
            other = OtherLoad()
            runs_per_s, times = _timed_runs(session, feeds, durations, runs_at_once)
            # rows_per_s_at_p50: rows in flight / median run time, which a neighbour's bursts
            # move less.
            plans[label] = {"rows_per_s": runs_per_s * batch,
                            "rows_per_s_at_p50": runs_at_once * batch / float(np.median(times)),
                            "p50_ms": float(np.median(times) * 1e3), "runs": len(times),
                            "other_load_cores": other.cores()}
        best = max(plans, key=lambda label: plans[label]["rows_per_s"])
        limit[str(batch)] = {**plans[best], "plan": best, "plans": plans}
    return limit


def bench_model(name: str, work: Path, args, durations: Durations, server_cpus, gen_cpus) -> dict:
    from bnserve.server.runtime import OnnxRuntimeSession

    repository = work / name / "models"
    info = build_model(repository, name)
    print(f"[{name}] exported: {info}", flush=True)
    # The limit runs the model with the session options the server would give it (the same
    # thread plan for the usable cores), unless --pin or --intra-op-threads say otherwise.
    from bnserve.server.cpu_quota import cpu_budget
    from bnserve.server.loader import session_tuning
    from bnserve.server.model_config import default_settings
    from bnserve.server.settings import ServerSettings

    threads = len(server_cpus) if server_cpus else args.intra_op_threads
    defaults = default_settings(ServerSettings(intra_op_threads=threads))
    tuning = session_tuning(defaults, cpu_budget())
    model_file = repository / name / "1" / "model.onnx"
    session = OnnxRuntimeSession(model_file, tuning=tuning)
    # The limit is the better of two plans a config can choose (one instance on every
    # core, the default, or instance_group count = cores, one thread each); a thread count
    # fixed by --pin or --intra-op-threads leaves the first alone.
    sessions = {f"1 run x {tuning.intra_op_threads} threads": (session, 1)}
    if not threads and (cores := cpu_budget().cores) > 1:
        per_core = replace(defaults, instance_count=cores)
        sessions[f"{cores} runs x 1 thread"] = (
            OnnxRuntimeSession(model_file, tuning=session_tuning(per_core, cpu_budget())), cores)
    spec = session.inputs[0]
    sample_shape = tuple(spec.shape[1:])
    scenarios = [tuple(int(v) for v in s.split("x")) for s in args.scenarios]
    batches = {b for b, _ in scenarios}
    requests = {b: build_requests(name, spec.name, (b, *sample_shape)) for b in batches}
    floor_answers(work / name / "answers", name, session, batches, requests)

    if server_cpus:
        os.sched_setaffinity(0, server_cpus)
    limit = measure_limit(sessions, spec.name, sample_shape, durations)
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)
    del session, sessions
    print(f"[{name}] limit: " + ", ".join(
        f"batch {b}: {v['rows_per_s']:.0f} rows/s ({v['plan']}), p50 {v['p50_ms']:.3f} ms"
        for b, v in limit.items()), flush=True)

    # Serving settings are the defaults; only shutdown is made quick (no drain window).
    server_args = ["--intra-op-threads", str(threads), "--drain-window-s", "0",
                   "--shutdown-grace-s", "1", *args.server_arg]
    runs = []
    # Every target's server is up for the whole model and the scenarios go round the
    # targets in turn: the shared machine's drift then moves the compared figures alike.
    processes: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for target in args.targets:
            if target == "floor":
                processes[target] = start_floor(work / name / "answers")
            else:
                drift = ["--drift-sample-rate", "0"] if target == NO_DRIFT else []
                processes[target] = start_server(repository, *server_args, *drift)
            if server_cpus:
                pin(processes[target][0].pid, server_cpus)
        for batch, concurrency in scenarios:
            for mode in args.modes:
                measured: dict[str, list[dict]] = {target: [] for target in processes}
                for _ in range(args.repeat):
                    for target, (process, port) in processes.items():
                        other = OtherLoad(process.pid)
                        result = asyncio.run(run_load(
                            f"127.0.0.1:{port}", requests[batch], mode=mode,
                            concurrency=concurrency, duration_s=durations.measure_s,
                            warmup_s=durations.warmup_s, rows_per_request=batch))
                        measured[target].append({**result.to_dict(),
                                                 "other_load_cores": other.cores()})
                for target, repeats in measured.items():
                    row = {"model": name, "target": target, "batch": batch,
                           **median_of(repeats)}
                    runs.append(row)
                    print(f"[{name}] {target:16} batch {batch:2} x {concurrency:3} {mode:6} "
                          f"{row['rows_per_s']:9.0f} rows/s  p50 {row['p50_ms']:7.2f} ms  "
                          f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}  "
                          f"other load {row['other_load_cores']} cores  "
                          f"(median of {len(repeats)})", flush=True)
    finally:
        for process, _ in processes.values():
            stop(process)
    add_ratios(runs, limit)
    return {"model": info, "input": {"name": spec.name, "shape": list(sample_shape)},
            "intra_op_threads": threads, "server_args": server_args, "limit": limit,
            "runs": runs}


MEDIAN_FIELDS = ("requests_per_s", "rows_per_s", "p50_ms", "p90_ms", "p99_ms")


def median_of(repeats: list[dict]) -> dict:
    """One scenario's figures over its repeats: the median of each rate and latency, the
    sums of requests and errors, the worst other load, and every repeat's rows/s."""
    row = dict(repeats[0])
    for name in MEDIAN_FIELDS:
        row[name] = float(np.median([r[name] for r in repeats]))
    row["requests"] = sum(r["requests"] for r in repeats)
    row["errors"] = sum(r["errors"] for r in repeats)
    row["error_codes"] = {code: sum(r["error_codes"].get(code, 0) for r in repeats)
                          for code in {c for r in repeats for c in r["error_codes"]}}
    row["other_load_cores"] = max(r["other_load_cores"] for r in repeats)
    row["repeats"] = len(repeats)
    row["rows_per_s_each"] = [r["rows_per_s"] for r in repeats]
    return row


def add_ratios(runs: list[dict], limit: dict[str, dict]) -> None:
    """vs_floor: bnserve rows/s over the floor's in the same scenario; vs_limit: over the
    in-process rows/s at the same batch (batch-32 limit for batch 32, else batch 1);
    drift_cost (bnserve rows): 1 - its rows/s over those of bnserve without the monitor."""
    def by_target(target: str) -> dict[tuple, float]:
        return {(r["batch"], r["concurrency"], r["mode"]): r["rows_per_s"]
                for r in runs if r["target"] == target}

    floor, no_drift = by_target("floor"), by_target(NO_DRIFT)
    for r in runs:
        key = (r["batch"], r["concurrency"], r["mode"])
        reference = limit.get(str(r["batch"]))
        r["vs_limit"] = r["rows_per_s"] / reference["rows_per_s"] if reference else None
        base = floor.get(key)
        r["vs_floor"] = (r["rows_per_s"] / base if base and r["target"] != "floor" else None)
        unmonitored = no_drift.get(key)
        r["drift_cost"] = (1 - r["rows_per_s"] / unmonitored
                           if unmonitored and r["target"] == "bnserve" else None)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.0f}%"


def _ratio(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def _limit_text(batch: str, v: dict) -> str:
    at_median = (f" ({v['rows_per_s_at_p50']:,.0f} at the median run)"
                 if "rows_per_s_at_p50" in v else "")
    others = "; ".join(f"{label} {p['rows_per_s']:,.0f}" for label, p in v.get("plans", {}).items()
                       if label != v.get("plan"))
    return (f"batch {batch}: {v['rows_per_s']:,.0f} rows/s{at_median} with "
            f"{v.get('plan', 'the server plan')}{f' (vs {others})' if others else ''}, p50 "
            f"{v['p50_ms']:.3f} ms (other load {v['other_load_cores']} cores)")


def markdown(report: dict) -> str:
    load, setup = report["machine"], report["setup"]
    lines = [
        "# bnserve serving benchmark", "",
        f"`{setup['command']}`, {setup['started']}", "",
        f"Machine at start: load average {load['loadavg_1_5_15']}, {load['cpu_count']} CPUs "
        f"(usable {load['usable_cpus']}), cgroup CPU quota {load['cgroup_cpu_quota']}; "
        f"load average at the end {load.get('loadavg_at_end')}. "
        + (f"Pinned: server and limit on CPUs {setup['server_cpus']}, load generator on "
           f"{setup['generator_cpus']}." if setup["server_cpus"] else
           "The load generator and the server share these cores (--pin separates them)."),
        f"{setup['measure_s']} s measured after {setup['warmup_s']} s warm-up, "
        f"{setup.get('repeat', 1)} time(s) per scenario and target, the targets in turn "
        "(figures: medians); "
        "closed loop, raw FP32 contents, pre-serialised requests (bench/loadgen.py: unary "
        "calls 16 to a connection, streams 64 in flight each).", "",
    ]
    for model in report["models"]:
        info, limit = model["model"], model["limit"]
        flops = f", {info['mflop_per_row']} MFLOP/row" if "mflop_per_row" in info else ""
        lines += [f"## {info['name']}: {info['description']}{flops}", "",
                  "In-process limit (onnxruntime in the bench's process"
                  + (", the better of two thread plans" if any(
                      len(v.get("plans", {})) > 1 for v in limit.values()) else "")
                  + "): " + "; ".join(
                      _limit_text(b, v) for b, v in limit.items()), "",
                  "| rows x in flight | mode | target | req/s | rows/s | p50 ms | p90 ms | "
                  "p99 ms | errors | vs floor | vs limit | drift cost | other load |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(model["runs"], key=lambda r: (r["batch"], r["concurrency"], r["mode"],
                                                       r["target"])):
            lines.append(
                f"| {r['batch']} x {r['concurrency']} | {r['mode']} | {r['target']} | "
                f"{r['requests_per_s']:,.0f} | {r['rows_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                f"{_ratio(r['vs_floor'])} | {_ratio(r['vs_limit'])} | "
                f"{_percent(r.get('drift_cost'))} | {r['other_load_cores']} |")
        lines.append("")
    costs = [r["drift_cost"] for m in report["models"] for r in m["runs"]
             if r.get("drift_cost") is not None]
    if costs:
        lines += [f"Drift monitor at its default rate (bnserve vs {NO_DRIFT}, same scenario, "
                  f"medians of {report['setup'].get('repeat', 1)}): median cost "
                  f"{100 * float(np.median(costs)):+.1f}% over "
                  f"{len(costs)} points, from {100 * min(costs):+.0f}% to "
                  f"{100 * max(costs):+.0f}% (the spread is the shared machine's noise as much "
                  "as the monitor).", ""]
    lines += ["vs floor: bnserve rows/s / floor rows/s, same scenario. vs limit: rows/s / "
              "in-process rows/s at the same batch. drift cost: 1 - bnserve rows/s / "
              f"{NO_DRIFT} rows/s. other load: cores kept busy by processes "
              "other than the bench and its server during the scenario (/proc/stat); well "
              "above 0 on a 2-core machine, that row's figures are not the server's own.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for target, colour in (("bnserve", "tab:blue"), ("floor", "tab:grey")):
            for mode, marker in (("unary", "o"), ("stream", "s")):
                rows = sorted((r for r in model["runs"] if r["target"] == target
                               and r["mode"] == mode and r["batch"] == 1),
                              key=lambda r: r["concurrency"])
                if not rows:
                    continue
                x = [r["concurrency"] for r in rows]
                ax.plot(x, [r["p50_ms"] for r in rows], marker=marker, color=colour,
                        label=f"{target} {mode} p50")
                ax.plot(x, [r["p99_ms"] for r in rows], marker=marker, color=colour,
                        linestyle="--", alpha=0.6, label=f"{target} {mode} p99")
        if "1" in model["limit"]:
            ax.axhline(model["limit"]["1"]["p50_ms"], color="tab:green", linestyle=":",
                       label="in-process p50, batch 1")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("requests in flight (1 row each)")
        ax.set_ylabel("latency, ms")
        ax.set_title(model["model"]["name"])
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s a scenario, 0.3 s warm-up")
    parser.add_argument("--duration", type=float,
                        help="seconds measured per scenario and repeat (default 2, --quick 1)")
    parser.add_argument("--warmup", type=float,
                        help="seconds of warm-up per scenario and repeat (default 0.5, --quick 0.3)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS),
                        help="ROWSxINFLIGHT, e.g. 1x32 32x4")
    parser.add_argument("--modes", nargs="+", default=["unary", "stream"],
                        choices=["unary", "stream"])
    parser.add_argument("--targets", nargs="+", default=["bnserve", NO_DRIFT, "floor"],
                        choices=["bnserve", NO_DRIFT, "floor"])
    parser.add_argument("--repeat", type=int, help="measurements per scenario and target, "
                        "interleaved; the tables show medians (default 3, --quick 1)")
    parser.add_argument("--pin", action="store_true",
                        help="taskset: server and limit on half the CPUs, generator on the rest")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="onnxruntime threads for the server and the limit (0: auto)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `bnserve serve` argument (repeat), "
                        "e.g. --server-arg=--max-queue-delay-ms=2")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for serving.{md,json,png}")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    durations = Durations(args.duration or (1.0 if args.quick else 2.0),
                          args.warmup if args.warmup is not None else (0.3 if args.quick else 0.5))
    args.repeat = args.repeat or (1 if args.quick else 3)
    server_cpus = gen_cpus = None
    if args.pin:
        if not shutil.which("taskset"):
            raise SystemExit("--pin needs taskset (util-linux)")
        server_cpus, gen_cpus = split_cpus(sorted(os.sched_getaffinity(0)))
    machine = machine_load()
    print(f"machine: {machine}", flush=True)
    started = time.perf_counter()
    report = {
        "machine": machine,
        "setup": {"command": " ".join(["bench/serving.py", *(argv if argv is not None
                                                             else sys.argv[1:])]),
                  "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "measure_s": durations.measure_s, "warmup_s": durations.warmup_s,
                  "repeat": args.repeat,
                  "server_cpus": server_cpus, "generator_cpus": gen_cpus,
                  "shared_cores": not args.pin},
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="bnserve-bench-") as scratch:
        for name in args.models:
            report["models"].append(bench_model(name, Path(scratch), args, durations,
                                                server_cpus, gen_cpus))
    report["setup"]["wall_s"] = round(time.perf_counter() - started, 1)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "serving.md").write_text(markdown(report))
    if not args.no_plot:
        plot(report, args.out / "serving.png")
    print(markdown(report))
    print(f"wrote {args.out}/serving.{{md,json{',png' if not args.no_plot else ''}}} "
          f"in {report['setup']['wall_s']} s")


if __name__ == "__main__":
    main()
