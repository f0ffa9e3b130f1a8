"""The serving benchmark's smoke test: one ~1 s scenario against a real bnserve and the floor,
and the shape of the JSON it writes (bench/serving.py; the benchmark itself is `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serving.py"


def test_one_scenario_writes_the_report(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(BENCH), "--models", "mlp", "--scenarios", "1x4",
                    "--modes", "unary", "stream", "--duration", "0.4", "--warmup", "0.1",
                    "--repeat", "1",
                    "--out", str(tmp_path)], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    report = json.loads((tmp_path / "serving.json").read_text())
    assert set(report["machine"]) >= {"loadavg_1_5_15", "cpu_count", "cgroup_cpu_quota"}
    (model,) = report["models"]
    assert model["model"]["name"] == "mlp"
    assert set(model["limit"]) == {"1", "32"}
    assert all(v["rows_per_s"] > 0 for v in model["limit"].values())
    runs = {(r["target"], r["mode"]): r for r in model["runs"]}
    targets = ("bnserve", "bnserve-no-drift", "floor")
    assert set(runs) == {(t, m) for t in targets for m in ("unary", "stream")}
    for run in runs.values():
        assert run["batch"] == 1 and run["concurrency"] == 4
        assert run["requests"] > 0 and run["errors"] == 0
        assert run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"]
        assert run["vs_limit"] > 0
    assert runs["bnserve", "unary"]["vs_floor"] > 0
    assert runs["floor", "unary"]["vs_floor"] is None
    # The drift monitor's cost: bnserve against itself with the monitor off, per scenario.
    cost = runs["bnserve", "unary"]["drift_cost"]
    assert cost == 1 - runs["bnserve", "unary"]["rows_per_s"] / runs[
        "bnserve-no-drift", "unary"]["rows_per_s"]
    assert runs["bnserve-no-drift", "unary"]["drift_cost"] is None
    assert (tmp_path / "serving.md").read_text().startswith("# bnserve serving benchmark")
    assert (tmp_path / "serving.png").stat().st_size > 0
