"""Training protects runs and data: a run folder is never silently replaced, --resume honours a
new epoch count, NaN/Inf stops training with the row or the epoch and batch, every
hyperparameter is checked, "best" means the lowest val loss, Ctrl-C leaves a resumable run."""

from __future__ import annotations

import json
import math
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bnserve.training.checkpoint import load_checkpoint, load_training_state
from bnserve.training.config import BatchNormOptions, TrainConfig
from bnserve.training.errors import (
    ConfigError,
    DatasetError,
    DivergenceError,
    RunExistsError,
    TrainingError,
)
from bnserve.training.train import (
    TrainResult,
    evaluate,
    load_training_data,
    split_dataset,
    summary_line,
    train,
)
from support.cli import BNSERVE, CliResult, run_cli_in_process
from support.waiting import wait_for

DRY = TrainConfig(dry_run=True, width=8)
WINE = replace(TrainConfig(), model="mlp", dataset="wine", width=8)  # ~10 ms an epoch


def stderr_lines(done: CliResult | str) -> list[str]:
    """stderr without the progress bar's redraws (tqdm writes them with \\r)."""
    text = done if isinstance(done, str) else done.stderr
    return [line for line in text.splitlines() if line.strip() and not line.startswith("train ")]


def npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x=x, y=y)
    return path


def features(rows: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(rows) % 2
    return (rng.normal(size=(rows, 4)) + y[:, None]).astype(np.float32), y


def test_a_finished_run_is_never_overwritten_without_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(DRY, run, progress=False)
    before = (run / "checkpoint.pt").read_bytes()

    with pytest.raises(RunExistsError, match="already holds a finished run"):
        train(replace(DRY, seed=1), run, progress=False)
    refused = run_cli_in_process("train", "--run-dir", run, "--dry-run", "--width", "8", "--seed", "1")
    assert refused.returncode == 1
    assert stderr_lines(refused) == [
        f"bnserve train: error: {run} already holds a finished run (checkpoint.pt, last.pt, "
        f"metrics.json); not overwriting it: continue it with `bnserve train --run-dir {run} "
        "--resume`, or replace it with --overwrite (or choose another --run-dir)"]
    assert (run / "checkpoint.pt").read_bytes() == before

    # --overwrite removes the old run only once the new one's data and config check out.
    with pytest.raises(DatasetError):
        train(replace(DRY, model="mlp", data=str(tmp_path / "missing.npz")), run,
              overwrite=True, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before
    train(replace(DRY, seed=1), run, overwrite=True, progress=False)  # in process: seconds less
    assert load_checkpoint(run).config["seed"] == 1
    both = run_cli_in_process("train", "--run-dir", run, "--resume", "--overwrite")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_resume_with_more_epochs_continues_to_the_new_total(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = train(replace(WINE, epochs=3), run, progress=False)
    steps = first.metrics["steps_per_epoch"]

    resumed = train(replace(WINE, epochs=5), run, progress=False, resume=True)
    history = resumed.metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[:3] == first.metrics["history"]
    assert (resumed.metrics["resumed_at_epoch"], resumed.metrics["max_epochs"]) == (4, 5)
    state = load_training_state(run)
    assert state["config"]["epochs"] == load_checkpoint(run).config["epochs"] == 5
    assert state["scheduler"]["total_steps"] == 5 * steps  # the schedule was stretched
    assert state["scheduler"]["last_epoch"] == 5 * steps
    with pytest.raises(ConfigError, match="already trained 5 epochs; --epochs 4 would mean"):
        train(replace(WINE, epochs=4), run, progress=False, resume=True)

    more = run_cli_in_process("train", "--run-dir", run, "--resume", "--epochs", "7")
    assert more.returncode == 0, more.stderr
    assert ("resuming at epoch 6, now of 7 (the run planned 5); the one-cycle learning-rate "
            "schedule is stretched to 7 epochs") in more.stdout
    assert "(7 epochs, resumed at epoch 6)" in more.stdout
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 7

    again = run_cli_in_process("train", "--run-dir", run, "--resume")
    assert again.returncode == 0, again.stderr
    assert "all 7 epochs are done, nothing left to train" in again.stdout
    assert "(7 epochs, resumed at epoch 6)" in again.stdout  # the run as it was
    changed = run_cli_in_process("train", "--run-dir", run, "--resume", "--lr", "0.1")
    assert changed.returncode == 1
    assert "cannot resume with a different configuration: lr was 0.003, now 0.1" in \
        changed.stderr


def test_nan_or_inf_in_x_stops_before_training_naming_the_row(tmp_path: Path) -> None:
    x, y = features()
    x[17, 2], x[40, 0] = np.nan, np.inf
    data = npz(tmp_path / "mine.npz", x, y)
    with pytest.raises(DatasetError, match=r"mine.npz: array 'x' holds NaN or Inf values: "
                                           r"first in row 17 \(2 of 60 rows\)"):
        train(replace(DRY, model="mlp", data=str(data)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()

    big, _ = features()
    big = big.astype(np.float64)
    big[5, 1] = 1e300  # fine in float64, Inf as the float32 the model trains on
    cli = run_cli_in_process("train", "--model", "mlp", "--data", npz(tmp_path / "big.npz", big, y),
                             "--run-dir", tmp_path / "run", "--dry-run")
    assert cli.returncode == 1
    assert stderr_lines(cli) == [f"bnserve train: error: {tmp_path / 'big.npz'}: array 'x' "
                                 "holds NaN or Inf values: first in row 5 (1 of 60 rows); "
                                 "drop or repair those rows"]


def test_a_nan_loss_stops_training_naming_the_epoch_and_batch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"loss became nan at epoch 1, batch 2 of 22: "
                                              "training stopped, no checkpoint written") as info:
        train(replace(TrainConfig(), epochs=2, width=8, lr=1e30), run, progress=False)
    assert (info.value.epoch, info.value.batch) == (1, 2)
    assert not (run / "checkpoint.pt").exists() and not (run / "metrics.json").exists()

    cli = run_cli_in_process("train", "--run-dir", tmp_path / "cli", "--epochs", "2", "--width", "8",
                             "--lr", "1e30")
    assert cli.returncode == 1
    [line] = stderr_lines(cli)
    assert line.startswith("bnserve train: error: the training loss became nan at epoch 1, "
                           "batch 2")
    assert not (tmp_path / "cli" / "checkpoint.pt").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"lr": math.nan}, r"lr \(--lr\) must be a finite number > 0, got nan"),
    ({"lr": math.inf}, r"lr \(--lr\) must be a finite number > 0, got inf"),
    ({"lr": 0.0}, r"lr \(--lr\) must be a finite number > 0, got 0.0"),
    ({"lr": -1e-3}, "lr .* got -0.001"),
    ({"batch_size": 0}, r"batch_size \(--batch-size\) must be an integer >= 1, got 0"),
    ({"batch_size": 1}, r"batch_size \(--batch-size\) must be >= 2 with BatchNorm"),
    ({"epochs": 0}, r"epochs \(--epochs\) must be an integer >= 1, got 0"),
    ({"patience": 0}, r"patience \(--patience\) must be an integer >= 1, got 0"),
    ({"width": 0}, r"width \(--width\) must be"),
    ({"weight_decay": math.nan}, "weight_decay .* must be a finite number >= 0"),
    ({"val_fraction": 1.0}, "val_fraction must be between 0 and 1"),
    ({"norm": "layer"}, r"norm \(--norm\) must be one of batch, none"),
    ({"batchnorm": BatchNormOptions(eps=0.0)}, r"batchnorm.eps \(--bn-eps\)"),
    ({"batchnorm": BatchNormOptions(momentum=2.0)}, r"batchnorm.momentum \(--bn-momentum\)"),
])
def test_every_hyperparameter_is_validated(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        replace(TrainConfig(), **changes)
    assert isinstance(info.value, TrainingError)


def test_bad_hyperparameters_and_too_few_rows_are_one_line_each(tmp_path: Path) -> None:
    # A flag's value is refused by the parser: a usage error, exit 2.
    cli = run_cli_in_process("train", "--run-dir", tmp_path / "run", "--lr", "nan", "--dry-run")
    assert cli.returncode == 2
    assert stderr_lines(cli) == ["bnserve train: error: argument --lr: must be a finite "
                                 "number > 0, got nan (see bnserve train --help)"]
    assert not (tmp_path / "run").exists()

    x, y = features(5)
    data = npz(tmp_path / "tiny.npz", x, y)
    with pytest.raises(ConfigError, match=r"tiny.npz: too few rows for the validation split: "
                       r"val_fraction 0.2 of 5 rows gives 4 training and 1 validation rows, "
                       r"and each needs one row of each of the 2 classes \(at least 6 rows"):
        train(replace(DRY, model="mlp", data=str(data)), tmp_path / "run", progress=False)


def test_best_is_the_lowest_val_loss_and_the_checkpoint_holds_it(tmp_path: Path) -> None:
    # A large LR on wine without patience: the val loss bottoms out before the last epoch.
    config = replace(WINE, epochs=12, lr=0.05, width=64)
    result = train(config, tmp_path / "run", progress=False)
    metrics, history = result.metrics, result.metrics["history"]
    best = min(history, key=lambda h: h["val_loss"])
    assert best["epoch"] < len(history)  # so keeping the last epoch would differ
    assert metrics["best"] == "lowest val loss" and "best_val_accuracy" not in metrics
    assert metrics["best_epoch"] == metrics["checkpoint_epoch"] == best["epoch"]
    assert metrics["final"] == {k: v for k, v in best.items() if k != "epoch"}
    assert f"kept epoch {best['epoch']} (lowest val loss): val loss {best['val_loss']:.4f}" in \
        summary_line(metrics)

    ckpt = load_checkpoint(tmp_path / "run")
    _, x_val, _, y_val = split_dataset(load_training_data(config), config.val_fraction, 0)
    loss, _ = evaluate(ckpt.build(), torch.from_numpy(ckpt.statistics.standardize(x_val)),
                       torch.from_numpy(y_val))
    assert loss == pytest.approx(best["val_loss"], rel=1e-5)


def test_the_session_run_keeps_its_lowest_val_loss_epoch(trained_run: TrainResult) -> None:
    history = trained_run.metrics["history"]
    best = min(history, key=lambda h: h["val_loss"])
    assert trained_run.metrics["checkpoint_epoch"] == best["epoch"]
    assert load_checkpoint(trained_run.run_dir).metrics["checkpoint_epoch"] == best["epoch"]


def test_ctrl_c_leaves_a_resumable_run_and_says_how_to_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [*BNSERVE, "--log-level", "WARNING", "train", "--run-dir", str(run), "--epochs",
               "6", "--width", "16"]  # ~0.4 s an epoch: SIGINT lands long before the end
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run / "last.pt").exists() or proc.poll() is not None, timeout=120,
                 what="epoch 1's last.pt")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    state = load_training_state(run)
    assert 1 <= state["epoch"] < 6
    assert stderr_lines(err) == [
        f"bnserve train: interrupted; {run}/last.pt holds epoch {state['epoch']} of 6: resume "
        f"with `bnserve train --run-dir {run} --resume`"]
    assert not (run / "checkpoint.pt").exists()  # nothing claims a finished run

    fresh = run_cli_in_process("train", "--run-dir", run, "--epochs", "6", "--width", "16")
    assert fresh.returncode == 1 and "already holds an unfinished run (last.pt)" in fresh.stderr
    resumed = run_cli_in_process("train", "--run-dir", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at epoch {state['epoch'] + 1} of 6" in resumed.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 7))
    assert metrics["resumed_at_epoch"] == state["epoch"] + 1
