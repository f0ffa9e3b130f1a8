"""`bnserve train` and `bnserve export` as a user runs them: a subprocess each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def bnserve(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bnserve.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=240)


def test_train_dry_run_then_export_then_refuse_overwrite(tmp_path: Path) -> None:
    run_dir, repository = tmp_path / "run", tmp_path / "models"

    trained = bnserve("train", "--model", "cnn", "--dataset", "digits", "--run-dir", run_dir,
                      "--dry-run", "--seed", "3", "--batch-size", "32", "--lr", "0.01")
    assert trained.returncode == 0, trained.stderr
    assert "trained cnn on digits" in trained.stdout
    assert "train cnn/digits" in trained.stderr  # the tqdm bar
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["dry_run"], metrics["seed"], metrics["epochs"]) == (True, 3, 1)
    assert {p.name for p in run_dir.iterdir()} == {"checkpoint.pt", "last.pt", "metrics.json",
                                                   "curves.png"}

    exported = bnserve("export", "--run-dir", run_dir, "--repository", repository,
                       "--name", "digits")
    assert exported.returncode == 0, exported.stderr
    assert "exported digits version 1" in exported.stdout
    assert "onnx.checker:        passed" in exported.stdout
    assert "(7 folded)" in exported.stdout
    model = repository / "digits" / "1" / "model.onnx"
    card = json.loads((repository / "digits" / "1" / "metadata.json").read_text())
    assert card["metrics"]["dry_run"] is True and card["version"] == 1
    before = model.read_bytes()

    again = bnserve("export", "--run-dir", run_dir, "--repository", repository,
                    "--name", "digits", "--version", "1")
    assert again.returncode == 1
    assert "digits version 1 already exists" in again.stderr
    assert "nothing was written" in again.stderr
    assert model.read_bytes() == before
    assert [p.name for p in (repository / "digits").iterdir()] == ["1"]


def test_bad_arguments_are_rejected_by_the_parser(tmp_path: Path) -> None:
    result = bnserve("export", "--run-dir", tmp_path, "--repository", tmp_path,
                     "--name", "digits", "--version", "0")
    assert result.returncode == 2
    assert "must be a positive integer" in result.stderr


def test_zoo_model_with_its_default_dataset_and_export_options(tmp_path: Path) -> None:
    run_dir, repository = tmp_path / "run", tmp_path / "models"
    trained = bnserve("train", "--model", "mlp", "--run-dir", run_dir, "--dry-run",
                      "--bn-eps", "0.001", "--bn-momentum", "0.2", "--no-affine", "--width", "8")
    assert trained.returncode == 0, trained.stderr
    assert "trained mlp on wine (norm batch)" in trained.stdout  # mlp's default dataset

    exported = bnserve("export", "--run-dir", run_dir, "--repository", repository,
                       "--name", "wine", "--no-fold", "--report", "--latency-runs", "3")
    assert exported.returncode == 0, exported.stderr
    assert "2 BatchNormalization nodes left (0 folded)" in exported.stdout
    assert "folded vs unfolded:" in exported.stdout and "no_bn" in exported.stdout
    card = json.loads((repository / "wine" / "1" / "metadata.json").read_text())
    assert set(card["latency"]) >= {"folded", "unfolded", "no_bn"}
    assert card["model"]["spec"]["batchnorm"] == {"eps": 0.001, "momentum": 0.2, "affine": False,
                                                  "track_running_stats": True}
