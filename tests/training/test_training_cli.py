"""`bnserve train` and `bnserve export` as a user runs them: the first story in child
processes, the rest in process (the same main(), without a torch import per step)."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import run_cli, run_cli_in_process


def test_train_dry_run_then_export_then_refuse_overwrite(tmp_path: Path) -> None:
    run_dir, repository = tmp_path / "run", tmp_path / "models"

    trained = run_cli("train", "--model", "cnn", "--dataset", "digits", "--run-dir", run_dir,
                      "--dry-run", "--seed", "3", "--batch-size", "32", "--lr", "0.01",
                      timeout=240)
    assert trained.returncode == 0, trained.stderr
    assert "trained cnn on digits" in trained.stdout
    assert "train cnn/digits" in trained.stderr  # the tqdm bar
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["dry_run"], metrics["seed"], metrics["epochs"]) == (True, 3, 1)
    assert {p.name for p in run_dir.iterdir()} == {"checkpoint.pt", "last.pt", "metrics.json",
                                                   "curves.png"}

    exported = run_cli("export", "--run-dir", run_dir, "--repository", repository,
                       "--name", "digits", timeout=240)
    assert exported.returncode == 0, exported.stderr
    assert "exported digits version 1" in exported.stdout
    assert "onnx.checker:        passed" in exported.stdout
    assert "(7 folded)" in exported.stdout
    model = repository / "digits" / "1" / "model.onnx"
    card = json.loads((repository / "digits" / "1" / "metadata.json").read_text())
    assert card["metrics"]["dry_run"] is True and card["version"] == 1
    before = model.read_bytes()

    again = run_cli_in_process("export", "--run-dir", run_dir, "--repository", repository,
                               "--name", "digits", "--version", "1")
    assert again.returncode == 1
    assert "digits version 1 already exists" in again.stderr
    assert "nothing was written" in again.stderr
    assert model.read_bytes() == before
    assert [p.name for p in (repository / "digits").iterdir()] == ["1"]


def test_bad_arguments_are_rejected_by_the_parser(tmp_path: Path) -> None:
    result = run_cli_in_process("export", "--run-dir", tmp_path, "--repository", tmp_path,
                                "--name", "digits", "--version", "0")
    assert result.returncode == 2
    assert "must be an integer >= 1, got 0" in result.stderr


def test_zoo_model_with_its_default_dataset_and_export_options(tmp_path: Path) -> None:
    run_dir, repository = tmp_path / "run", tmp_path / "models"
    trained = run_cli_in_process("train", "--model", "mlp", "--run-dir", run_dir, "--dry-run",
                                 "--bn-eps", "0.001", "--bn-momentum", "0.2", "--no-affine",
                                 "--width", "8")
    assert trained.returncode == 0, trained.stderr
    assert "trained mlp on wine (norm batch)" in trained.stdout  # mlp's default dataset

    exported = run_cli_in_process("export", "--run-dir", run_dir, "--repository", repository,
                                  "--name", "wine", "--no-fold", "--report", "--latency-runs",
                                  "3")
    assert exported.returncode == 0, exported.stderr
    assert "2 BatchNormalization nodes left (0 folded)" in exported.stdout
    assert "folded vs unfolded:" in exported.stdout and "no_bn" in exported.stdout
    card = json.loads((repository / "wine" / "1" / "metadata.json").read_text())
    assert set(card["latency"]) >= {"folded", "unfolded", "no_bn"}
    assert card["model"]["spec"]["batchnorm"] == {"eps": 0.001, "momentum": 0.2, "affine": False,
                                                  "track_running_stats": True}
