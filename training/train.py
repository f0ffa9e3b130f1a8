"""Train a registered model on a registered dataset and write the run folder.

    x (raw) --standardize with training-split statistics--> model --> logits --> cross-entropy

The model itself sees standardized inputs; the exporter puts the same standardization in
front of it, so the served graph takes raw inputs.
"""

from __future__ import annotations

import json
import logging
import time
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
    save_checkpoint,
)
from bnserve.training.config import ModelSpec, TrainConfig
from bnserve.training.curves import plot_training_curves
from bnserve.training.datasets import Dataset, InputStatistics, load_dataset
from bnserve.training.models import build_model

logger = logging.getLogger(__name__)

VERIFICATION_SAMPLES = 64  # raw validation inputs kept in the checkpoint for export checks


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


def train(config: TrainConfig, run_dir: Path | str, *, progress: bool = True) -> TrainResult:
    """Train as ``config`` says and write ``run_dir`` (created; existing files replaced)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(config, Path(run_dir), progress=progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, run_dir: Path, *, progress: bool) -> TrainResult:
    dataset = load_dataset(config.dataset)
    x_train, x_val, y_train, y_val = split_dataset(dataset, config.val_fraction, config.seed)
    stats = InputStatistics.from_data(x_train)
    xt, xv = (torch.from_numpy(stats.standardize(a)) for a in (x_train, x_val))
    yt, yv = torch.from_numpy(y_train), torch.from_numpy(y_val)

    torch.manual_seed(config.seed)  # weight init and dropout
    shuffle = torch.Generator().manual_seed(config.seed)
    spec = ModelSpec(kind=config.model, sample_shape=dataset.sample_shape,
                     num_classes=dataset.num_classes, width=config.width,
                     batchnorm=config.batchnorm)
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
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=f"train {config.model}/{config.dataset}",
               unit="epoch", disable=not progress)
    for epoch in bar:
        train_loss, train_acc = train_epoch(model, xt, yt, optimizer, scheduler,
                                            batch_size=batch_size, steps=steps,
                                            generator=shuffle)
        val_loss, val_acc = evaluate(model, xv, yv)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc})
        bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                        val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
    seconds = time.perf_counter() - start

    best = max(history, key=lambda h: h["val_accuracy"])
    summary: dict[str, Any] = {
        "model": config.model,
        "dataset": config.dataset,
        "seed": config.seed,
        "dry_run": config.dry_run,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "num_train": len(xt),
        "num_val": len(xv),
        "num_threads": config.num_threads,
        "train_seconds": round(seconds, 3),
        "final": {k: v for k, v in history[-1].items() if k != "epoch"},
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
    }
    metrics = {**summary, "history": history}

    run_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    save_checkpoint(
        Checkpoint(spec=spec, state_dict=model.state_dict(), statistics=stats,
                   labels=dataset.labels, dataset=dataset.name, config=config.to_dict(),
                   metrics=summary, samples=x_val[:VERIFICATION_SAMPLES].copy()),
        run_dir / CHECKPOINT_FILE,
    )
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    plot_training_curves(history, run_dir / CURVES_FILE,
                         title=f"{config.model} on {config.dataset} (seed {config.seed})")
    logger.info("trained %s on %s in %.1f s: val accuracy %.4f", config.model, config.dataset,
                seconds, history[-1]["val_accuracy"])
    return TrainResult(run_dir=run_dir, metrics=metrics)
