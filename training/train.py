"""Train a registered model on a registered dataset (or a user's .npz) and write the run folder.

    x (raw) --standardize with training-split statistics--> model --> logits --> cross-entropy

The model itself sees standardized inputs; the exporter puts the same standardization in
front of it, so the served graph takes raw inputs (token ids are used as they are).

Every epoch ends by saving the whole training state (RUN/last.pt), so ``resume=True``
continues an interrupted run and ends with the same weights as an uninterrupted one.
``patience`` stops when the val loss has not improved for that many epochs and keeps the
best epoch's weights in RUN/checkpoint.pt.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

from bnserve.training.checkpoint import (
    CHECKPOINT_FILE,
    CURVES_FILE,
    METRICS_FILE,
    Checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from bnserve.training.config import ModelSpec, TrainConfig
from bnserve.training.curves import plot_training_curves
from bnserve.training.datasets import Dataset, InputStatistics, load_dataset, load_npz
from bnserve.training.errors import CheckpointError
from bnserve.training.models import MODEL_INPUTS, build_model, check_model_takes

logger = logging.getLogger(__name__)

VERIFICATION_SAMPLES = 64  # raw validation inputs kept in the checkpoint for export checks
HELD_OUT_ROWS = 1024  # validation inputs kept for the drift threshold's calibration at export


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]  # the content of metrics.json

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics["final"]["val_accuracy"])

    @property
    def seconds(self) -> float:
        return float(self.metrics["train_seconds"])


EpochCallback = Callable[[dict[str, Any]], None]


def load_training_data(config: TrainConfig) -> Dataset:
    """``config.data`` (a user's .npz) or the registered ``config.dataset``, checked against
    what ``config.model`` takes (``DatasetError`` with the reason when it cannot)."""
    if config.data:
        dataset = load_npz(config.data, MODEL_INPUTS.get(config.model) or ("tabular", "audio",
                                                                           "image", "text"))
    else:
        dataset = load_dataset(config.dataset)
    check_model_takes(config.model, dataset.modality, dataset.name)
    return dataset


def model_spec(config: TrainConfig, dataset: Dataset) -> ModelSpec:
    """The ModelSpec ``config.model`` gets for ``dataset``: what rebuilds it for export."""
    return ModelSpec(kind=config.model, sample_shape=dataset.sample_shape,
                     num_classes=dataset.num_classes, width=config.width,
                     batchnorm=config.batchnorm, norm=config.norm,
                     vocab_size=dataset.vocab_size)


def split_dataset(dataset: Dataset, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified split: every class keeps its share in train and validation."""
    return tuple(train_test_split(dataset.x, dataset.y, test_size=val_fraction,
                                  stratify=dataset.y, random_state=seed, shuffle=True))


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                *, batch_size: int, steps: int, generator: torch.Generator) -> tuple[float, float]:
    """One pass of ``steps`` full shuffled batches; returns mean loss and accuracy seen."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        xb, yb = x[idx], y[idx]  # (B, *sample_shape), (B,)
        logits = model(xb)  # (B, num_classes)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(yb)
        correct += int((logits.argmax(dim=1) == yb).sum())
        seen += len(yb)
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             *, batch_size: int = 1024) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode (BatchNorm uses its running statistics)."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = model(xb)  # (B, num_classes)
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def train(config: TrainConfig, run_dir: Path | str, *, progress: bool = True,
          resume: bool = False, on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train as ``config`` says and write ``run_dir`` (created; existing files replaced).

    ``resume``: continue from RUN/last.pt (its config must equal ``config``, threads aside).
    ``on_epoch_end``: called with each epoch's figures after its state is saved; an
    exception there (a KeyboardInterrupt, say) stops the run, and ``resume`` picks it up.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(config, Path(run_dir), progress=progress, resume=resume,
                      on_epoch_end=on_epoch_end)
    finally:
        torch.set_num_threads(previous_threads)


def _check_same_config(saved: dict[str, Any], config: TrainConfig) -> None:
    wanted = config.to_dict()
    differ = sorted(k for k in set(saved) | set(wanted)
                    if k != "num_threads" and saved.get(k) != wanted.get(k))
    if differ:
        raise CheckpointError(
            "cannot resume with a different configuration: "
            + ", ".join(f"{k} was {saved.get(k)!r}, now {wanted.get(k)!r}" for k in differ)
        )


def _train(config: TrainConfig, run_dir: Path, *, progress: bool, resume: bool,
           on_epoch_end: EpochCallback | None) -> TrainResult:
    dataset = load_training_data(config)
    x_train, x_val, y_train, y_val = split_dataset(dataset, config.val_fraction, config.seed)
    stats = InputStatistics.from_data(x_train)
    xt, xv = (torch.from_numpy(stats.standardize(a)) for a in (x_train, x_val))
    yt, yv = torch.from_numpy(y_train), torch.from_numpy(y_val)

    torch.manual_seed(config.seed)  # weight init and dropout
    shuffle = torch.Generator().manual_seed(config.seed)
    spec = model_spec(config, dataset)
    model = build_model(spec)

    batch_size = min(config.batch_size, len(xt))
    steps = len(xt) // batch_size  # full batches only: no tiny batch upsets BatchNorm
    epochs = config.epochs
    if config.dry_run:
        epochs, steps = 1, min(steps, config.dry_run_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                    total_steps=epochs * steps)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "val_loss": float("inf"), "state_dict": {}}
    elapsed, first_epoch, resumed_at = 0.0, 1, None
    if resume:
        state = load_training_state(run_dir)
        _check_same_config(state["config"], config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        shuffle.set_state(state["shuffle_rng"])
        history, best, elapsed = state["history"], state["best"], state["elapsed"]
        first_epoch = resumed_at = state["epoch"] + 1
        logger.info("resuming %s at epoch %d of %d", run_dir, first_epoch, epochs)

    run_dir.mkdir(parents=True, exist_ok=True)
    stopped_early = _stop(history, best, config.patience)
    bar = tqdm(range(first_epoch, epochs + 1), desc=f"train {config.model}/{dataset.name}",
               unit="epoch", disable=not progress, initial=first_epoch - 1, total=epochs)
    for epoch in bar:
        if stopped_early:
            break
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(model, xt, yt, optimizer, scheduler,
                                            batch_size=batch_size, steps=steps,
                                            generator=shuffle)
        val_loss, val_acc = evaluate(model, xv, yv)
        elapsed += time.perf_counter() - start
        history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc})
        if config.patience is not None and val_loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_loss,
                    "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
        stopped_early = _stop(history, best, config.patience)
        save_training_state({
            "config": config.to_dict(), "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "shuffle_rng": shuffle.get_state(),
            "history": history, "best": best, "elapsed": elapsed,
        }, run_dir)
        bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                        val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(history[-1])
    bar.close()

    kept = history[-1]
    if config.patience is not None:  # early stopping keeps the best epoch's weights
        model.load_state_dict(best["state_dict"])
        kept = history[best["epoch"] - 1]
    summary: dict[str, Any] = {
        "model": config.model,
        "dataset": dataset.name,
        "norm": config.norm,
        "seed": config.seed,
        "dry_run": config.dry_run,
        "epochs": len(history),
        "max_epochs": epochs,
        "steps_per_epoch": steps,
        "num_train": len(xt),
        "num_val": len(xv),
        "num_threads": config.num_threads,
        "train_seconds": round(elapsed, 3),
        "patience": config.patience,
        "stopped_early": stopped_early and len(history) < epochs,
        "resumed_at_epoch": resumed_at,
        "checkpoint_epoch": kept["epoch"],  # whose weights checkpoint.pt holds
        "final": {k: v for k, v in kept.items() if k != "epoch"},
        "best_val_accuracy": max(h["val_accuracy"] for h in history),
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],  # lowest val loss
    }
    model.eval()
    metrics = write_run_folder(run_dir, model=model, spec=spec, statistics=stats, dataset=dataset,
                               config=config, summary=summary, history=history, x_val=x_val,
                               title=f"{config.model} on {dataset.name} (seed {config.seed})")
    logger.info("trained %s on %s in %.1f s: val accuracy %.4f", config.model, dataset.name,
                elapsed, kept["val_accuracy"])
    return TrainResult(run_dir=run_dir, metrics=metrics)


def write_run_folder(run_dir: Path, *, model: nn.Module, spec: ModelSpec, statistics: InputStatistics,
                     dataset: Dataset, config: TrainConfig, summary: dict[str, Any],
                     history: list[dict[str, Any]], x_val: np.ndarray, title: str) -> dict[str, Any]:
    """Write checkpoint.pt (model in plain, eval-ready form), metrics.json and curves.png.

    Shared by ``train`` and the torchrun entry, so both produce run folders that ``export``,
    ``recalibrate`` and ``compare`` read the same way. Returns the metrics written.
    """
    metrics = {**summary, "history": history}
    save_checkpoint(
        Checkpoint(spec=spec, state_dict=model.state_dict(), statistics=statistics,
                   labels=dataset.labels, dataset=dataset.name, config=config.to_dict(),
                   metrics=summary, samples=x_val[:VERIFICATION_SAMPLES].copy(),
                   held_out=x_val[:HELD_OUT_ROWS].copy()),
        run_dir / CHECKPOINT_FILE,
    )
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    plot_training_curves(history, run_dir / CURVES_FILE, title=title,
                         kept_epoch=summary.get("checkpoint_epoch"))
    return metrics


def _stop(history: list[dict[str, Any]], best: dict[str, Any], patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have passed since the lowest val loss."""
    return patience is not None and bool(history) and history[-1]["epoch"] - best["epoch"] >= patience
