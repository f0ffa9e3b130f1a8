"""Training every zoo model: accuracy floors, resume, early stopping, seeds, a user's .npz."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bnserve.training.checkpoint import load_checkpoint, load_training_state
from bnserve.training.config import DEFAULT_DATASETS, TrainConfig
from bnserve.training.errors import CheckpointError, DatasetError
from bnserve.training.train import TrainResult, train

# Real short runs with the default settings (10 epochs; cnn: the session run of conftest).
# Floors sit well under what seed 0 reaches (mlp 97%, audio 97%, text 87%, rnn 77%) and far
# above chance (wine 40% majority class, audio 1/7, text 1/4).
FLOORS = {"mlp": 0.85, "audio": 0.8, "text": 0.7, "rnn": 0.6}
CHANCE = {"mlp": 0.4, "audio": 1 / 7, "text": 0.25, "rnn": 0.25}
DRY = TrainConfig(dry_run=True, width=8)


@pytest.mark.parametrize("kind", sorted(FLOORS))
def test_short_real_training_beats_chance(kind: str, tmp_path: Path) -> None:
    result = train(replace(TrainConfig(), model=kind, dataset=DEFAULT_DATASETS[kind]),
                   tmp_path / "run", progress=False)
    history = result.metrics["history"]
    assert result.val_accuracy >= FLOORS[kind] > CHANCE[kind] + 0.3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.metrics["dataset"] == DEFAULT_DATASETS[kind]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir).state_dict


def test_resumed_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    config = replace(TrainConfig(), model="mlp", dataset="wine", epochs=4, width=8)
    whole = train(config, tmp_path / "whole", progress=False)

    def interrupt(epoch: dict) -> None:
        if epoch["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "split", progress=False, on_epoch_end=interrupt)
    assert load_training_state(tmp_path / "split")["epoch"] == 2
    resumed = train(config, tmp_path / "split", progress=False, resume=True)

    a, b = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["resumed_at_epoch"] == 3
    assert resumed.metrics["history"] == whole.metrics["history"]
    with pytest.raises(CheckpointError, match="different configuration: lr was"):
        train(replace(config, lr=0.1), tmp_path / "split", progress=False, resume=True)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(config, tmp_path / "empty", progress=False, resume=True)


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    # A large constant-ish LR on 142 wine rows overfits fast: the val loss turns up early.
    config = replace(TrainConfig(), model="mlp", dataset="wine", epochs=60, lr=0.05,
                     width=64, patience=3)
    result = train(config, tmp_path / "run", progress=False)
    metrics, history = result.metrics, result.metrics["history"]
    best = min(history, key=lambda h: h["val_loss"])
    assert metrics["stopped_early"] and len(history) < 60
    assert history[-1]["epoch"] == best["epoch"] + 3  # stopped `patience` epochs after the best
    assert metrics["checkpoint_epoch"] == metrics["best_epoch"] == best["epoch"]
    assert metrics["final"]["val_loss"] == best["val_loss"]
    # The checkpoint holds the best epoch's weights: its val loss is that epoch's.
    from bnserve.training.train import evaluate, load_training_data, split_dataset

    ckpt = load_checkpoint(tmp_path / "run")
    _, x_val, _, y_val = split_dataset(load_training_data(config), config.val_fraction, 0)
    loss, _ = evaluate(ckpt.build(), torch.from_numpy(ckpt.statistics.standardize(x_val)),
                       torch.from_numpy(y_val))
    assert loss == pytest.approx(best["val_loss"], rel=1e-5)


def test_same_seed_same_weights_for_a_recurrent_model(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(replace(DRY, model="rnn", dataset="text", seed=seed), tmp_path / name,
              progress=False)
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _npz(path: Path, x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> Path:
    np.savez(path, x=x, y=y, **extra)
    return path


@pytest.mark.parametrize(("kind", "x_shape", "sample_shape"), [
    ("mlp", (90, 5), (5,)),
    ("cnn", (90, 6, 6), (1, 6, 6)),
    ("audio", (90, 2, 256), (2, 256)),
    ("rnn", (90, 128), (1, 128)),
    ("text", (90, 12), (12,)),
])
def test_user_npz_for_every_kind_of_data(kind: str, x_shape: tuple[int, ...],
                                         sample_shape: tuple[int, ...], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    if kind == "text":
        x = rng.integers(0, 40, size=x_shape)  # token ids
    else:
        x = (rng.normal(size=x_shape) + y.reshape(-1, *[1] * (len(x_shape) - 1))).astype(
            np.float64)
    data = _npz(tmp_path / "mine.npz", x, y, labels=np.array(["a", "b", "c"]))
    result = train(replace(DRY, model=kind, data=str(data)), tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.spec.sample_shape == sample_shape and ckpt.labels == ("a", "b", "c")
    assert ckpt.dataset == result.metrics["dataset"] == "mine.npz"
    assert ckpt.spec.vocab_size == (int(x.max()) + 1 if kind == "text" else 0)
    assert ckpt.samples.dtype == (np.int64 if kind == "text" else np.float32)


def test_npz_without_labels_and_bad_files_and_pairs_are_clear_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    data = _npz(tmp_path / "plain.npz", x, np.repeat([10, 20], 30))  # classes 10, 20
    train(replace(DRY, model="mlp", data=str(data)), tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run").labels == ("10", "20")

    no_y = tmp_path / "no_y.npz"
    np.savez(no_y, x=x)
    cases = [
        (replace(DRY, model="mlp", data=str(no_y)), r"has no array\(s\) \['y'\]"),
        (replace(DRY, model="mlp", data=str(tmp_path / "missing.npz")), "cannot read"),
        (replace(DRY, model="cnn", data=str(data)), r"this model takes images \(N, C, H, W\)"),
        (replace(DRY, model="mlp", dataset="digits"),
         r"model 'mlp' takes feature vectors .* dataset 'digits' holds images .*models for it: cnn"),
        (replace(DRY, model="text", dataset="audio"), r"holds waveforms .*: audio, rnn"),
    ]
    for config, message in cases:
        with pytest.raises(DatasetError, match=message):
            train(config, tmp_path / "bad", progress=False)


def test_session_cnn_run_is_the_digits_default(trained_run: TrainResult) -> None:
    assert DEFAULT_DATASETS["cnn"] == trained_run.metrics["dataset"] == "digits"
    assert trained_run.val_accuracy >= 0.95
