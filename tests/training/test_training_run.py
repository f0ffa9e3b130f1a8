"""Training: the run folder it writes, determinism, and real accuracy on digits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.config import TrainConfig
from bnserve.training.datasets import load_dataset
from bnserve.training.errors import CheckpointError
from bnserve.training.export import InferenceModel
from bnserve.training.train import TrainResult, train

DRY = TrainConfig(dry_run=True)
EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}


def test_dry_run_writes_the_run_folder(tmp_path: Path) -> None:
    result = train(DRY, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert result.run_dir == run
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dry_run"] is True
    assert metrics["epochs"] == 1 and metrics["steps_per_epoch"] == DRY.dry_run_steps
    assert [set(h) for h in metrics["history"]] == [EPOCH_KEYS]
    assert metrics["num_train"] + metrics["num_val"] == 1797

    ckpt = load_checkpoint(run)
    assert ckpt.labels == tuple(str(i) for i in range(10))
    assert ckpt.spec.kind == "cnn" and ckpt.spec.sample_shape == (1, 8, 8)
    assert ckpt.statistics.mean.shape == (1, 1, 1)
    assert 4.0 < ckpt.statistics.mean.item() < 6.0  # digits pixels average ~4.9 on 0..16
    assert ckpt.samples.shape == (64, 1, 8, 8) and ckpt.samples.max() > 1  # raw inputs
    last_epoch = {k: v for k, v in metrics["history"][-1].items() if k != "epoch"}
    assert ckpt.metrics["final"] == metrics["final"] == last_epoch
    assert not ckpt.build().training  # rebuilt in eval mode


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        train(replace(DRY, seed=seed), tmp_path / name, progress=False)
        return load_checkpoint(tmp_path / name).state_dict

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at .*train first"):
        load_checkpoint(tmp_path)


def test_real_training_reaches_95_percent(trained_run: TrainResult) -> None:
    metrics = trained_run.metrics
    assert trained_run.val_accuracy >= 0.95
    assert len(metrics["history"]) == metrics["epochs"] == 5
    best = min(metrics["history"], key=lambda h: h["val_loss"])  # "best": lowest val loss
    assert metrics["checkpoint_epoch"] == best["epoch"]
    assert trained_run.val_accuracy == best["val_accuracy"]  # the kept epoch's figures
    first, last = metrics["history"][0], metrics["history"][-1]
    assert last["train_loss"] < first["train_loss"]
    on_disk = json.loads((trained_run.run_dir / "metrics.json").read_text())
    assert on_disk == metrics


def test_checkpoint_with_its_statistics_classifies_raw_digits(trained_run: TrainResult) -> None:
    ckpt = load_checkpoint(trained_run.run_dir)
    model = InferenceModel(ckpt.build(), ckpt.statistics).eval()
    ds = load_dataset("digits")
    with torch.no_grad():
        probs = model(torch.from_numpy(ds.x)).numpy()  # raw inputs: standardization is inside
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == ds.y).mean() >= 0.95
