"""BatchNorm ablation: train the same model with and without BatchNorm and compare them.

    for seed in seeds, for lr in lrs, for norm in (batch, none):
        train(config with that seed, lr and norm)  ->  OUT/runs/<norm>-lr<lr>-seed<seed>/
    OUT/comparison.json   every run's per-epoch val accuracy, val loss and wall time + summaries
    OUT/comparison.md     one row per (norm, lr): epochs to target, final/best accuracy, s/epoch
    OUT/comparison.png    val accuracy and val loss per epoch, one line per run

Both variants of a seed see the same split and the same batches in the same order (the
split and the shuffling generator are seeded by ``seed`` alone). Their initial weights
necessarily differ: where a BatchNorm is left out, the layer before it gets its bias back,
and drawing that bias moves the random stream every later layer is initialized from.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bnserve.training.comparison_plot import plot_comparison
from bnserve.training.config import TrainConfig
from bnserve.training.train import train

VARIANTS = ("batch", "none")  # the BatchNorm model first, its baseline second
JSON_FILE, TABLE_FILE, PLOT_FILE = "comparison.json", "comparison.md", "comparison.png"


@dataclass(frozen=True)
class ComparisonRun:
    """One training run of the ablation, as comparison.json keeps it."""

    norm: str
    lr: float
    seed: int
    run_dir: str  # relative to the comparison folder
    history: list[dict[str, Any]]  # metrics.json's per-epoch train/val loss and accuracy
    # Wall time from one epoch's end to the next: train + val pass + the trainer's per-epoch
    # state save (a few ms). Epoch 1 also counts loading the data and building the model.
    epoch_seconds: list[float]
    epochs_to_target: int | None  # first epoch at or above the target; None: never
    # The trainer's own clock (metrics.json train_seconds): train + val passes of every epoch,
    # no file writes. A cross-check where an epoch is so short that the state save shows.
    train_seconds: float


@dataclass(frozen=True)
class VariantSummary:
    """One row of the table: a (norm, lr) pair over every seed."""

    norm: str
    lr: float
    seeds: tuple[int, ...]
    epochs_to_target: tuple[int | None, ...]  # per seed, in ``seeds`` order
    final_accuracy: tuple[float, ...]  # last epoch's val accuracy, per seed
    best_accuracy: tuple[float, ...]  # highest val accuracy of any epoch, per seed
    # Median over every seed's epochs 2.. (epoch 1 carries setup and warm-up; it is used only
    # when it is the only one): robust to the odd slow epoch on a shared machine.
    seconds_per_epoch: float
    time_ratio: float  # seconds_per_epoch / the no-BatchNorm variant's at the same lr

    @property
    def median_epochs_to_target(self) -> float | None:
        """Median over seeds, a seed that never reached the target counting as infinitely
        late; None when that median is such a seed."""
        median = statistics.median(math.inf if e is None else e for e in self.epochs_to_target)
        return None if math.isinf(median) else median


@dataclass(frozen=True)
class ComparisonResult:
    out_dir: Path
    config: TrainConfig  # the base configuration; norm, lr and seed vary per run
    dataset: str  # its name as the runs report it (the file name for --data)
    target_accuracy: float
    runs: tuple[ComparisonRun, ...]
    summaries: tuple[VariantSummary, ...]  # (batch, lr1), (none, lr1), (batch, lr2), ...
    table: str  # the Markdown of comparison.md

    def summary(self, norm: str, lr: float | None = None) -> VariantSummary:
        """The row for ``norm`` at ``lr`` (default: the first learning rate)."""
        lr = self.summaries[0].lr if lr is None else lr
        return next(s for s in self.summaries if (s.norm, s.lr) == (norm, lr))


def epochs_to_target(history: Sequence[dict[str, Any]], target: float) -> int | None:
    """The first epoch whose val accuracy is at least ``target``; None if none is."""
    return next((h["epoch"] for h in history if h["val_accuracy"] >= target), None)


def compare_batchnorm(base_config: TrainConfig, out_dir: Path | str, *,
                      seeds: Sequence[int] = (0, 1, 2), target_accuracy: float = 0.95,
                      lrs: Sequence[float] | None = None, progress: bool = True) -> ComparisonResult:
    """Train ``base_config`` with norm batch and none for every seed (and every peak LR in
    ``lrs``, default ``base_config.lr``); write comparison.json, .md and .png to ``out_dir``."""
    seeds, lrs = tuple(seeds), tuple(lrs or (base_config.lr,))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target_accuracy}")
    out_dir = Path(out_dir)
    epochs = 1 if base_config.dry_run else base_config.epochs
    bar = tqdm(total=len(seeds) * len(lrs) * len(VARIANTS) * epochs, unit="epoch",
               desc=f"compare {base_config.model}", disable=not progress)
    runs = []
    # Variants alternate inside each seed, so a slow spell on a shared machine hits both.
    for seed in seeds:
        for lr in lrs:
            for norm in VARIANTS:
                config = replace(base_config, seed=seed, lr=lr, norm=norm)
                bar.set_postfix_str(f"norm={norm} lr={lr:g} seed={seed}")
                runs.append(_train_one(config, out_dir, target_accuracy, bar))
    bar.close()

    summaries = tuple(_summarize(runs, norm, lr, seeds) for lr in lrs for norm in VARIANTS)
    dataset = json.loads((out_dir / runs[0].run_dir / "metrics.json").read_text())["dataset"]
    table = format_table(summaries, base_config, target_accuracy, dataset=dataset)
    result = ComparisonResult(out_dir=out_dir, config=base_config, dataset=dataset,
                              target_accuracy=target_accuracy, runs=tuple(runs),
                              summaries=summaries, table=table)
    _write(result)
    return result


def _train_one(config: TrainConfig, out_dir: Path, target: float, bar: tqdm) -> ComparisonRun:
    run_dir = Path("runs") / f"{config.norm}-lr{config.lr:g}-seed{config.seed}"
    ticks = [time.perf_counter()]

    def on_epoch_end(_: dict[str, Any]) -> None:
        ticks.append(time.perf_counter())
        bar.update()

    # The comparison owns its run folders: running it again replaces them.
    result = train(config, out_dir / run_dir, progress=False, overwrite=True,
                   on_epoch_end=on_epoch_end)
    history = result.metrics["history"]
    return ComparisonRun(norm=config.norm, lr=config.lr, seed=config.seed, run_dir=str(run_dir),
                         history=history,
                         epoch_seconds=[round(b - a, 4) for a, b in pairwise(ticks)],
                         epochs_to_target=epochs_to_target(history, target),
                         train_seconds=result.seconds)


def _summarize(runs: Sequence[ComparisonRun], norm: str, lr: float,
               seeds: tuple[int, ...]) -> VariantSummary:
    def seconds(norm: str) -> float:
        mine = [r for r in runs if (r.norm, r.lr) == (norm, lr)]
        return statistics.median(s for r in mine for s in (r.epoch_seconds[1:] or r.epoch_seconds))

    by_seed = {r.seed: r for r in runs if (r.norm, r.lr) == (norm, lr)}
    ordered = [by_seed[s] for s in seeds]
    return VariantSummary(
        norm=norm, lr=lr, seeds=seeds,
        epochs_to_target=tuple(r.epochs_to_target for r in ordered),
        final_accuracy=tuple(r.history[-1]["val_accuracy"] for r in ordered),
        best_accuracy=tuple(max(h["val_accuracy"] for h in r.history) for r in ordered),
        seconds_per_epoch=seconds(norm),
        time_ratio=seconds(norm) / seconds("none"),
    )


def format_table(summaries: Sequence[VariantSummary], config: TrainConfig, target: float,
                 *, dataset: str) -> str:
    """The Markdown table of comparison.md, with a line that says what was compared."""
    lines = [
        f"{config.model} on {dataset}, {_describe(config, summaries[0].seeds)}, batch "
        f"{config.batch_size}, width {config.width}, {config.num_threads} torch thread(s); "
        "accuracies are mean ± std over seeds.",
        "",
        f"| norm | peak lr | epochs to {target:.0%} val acc: median (per seed) | final val acc "
        "| best val acc | s/epoch (median) | time vs no-BN |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        median = s.median_epochs_to_target
        reached = "not reached" if median is None else f"{median:g}"
        per_seed = ", ".join("–" if e is None else str(e) for e in s.epochs_to_target)
        lines.append(
            f"| {s.norm} | {s.lr:g} | {reached} ({per_seed}) | {_mean_std(s.final_accuracy)} "
            f"| {_mean_std(s.best_accuracy)} | {s.seconds_per_epoch:.3f} | {s.time_ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _describe(config: TrainConfig, seeds: Sequence[int]) -> str:
    epochs = "1 dry-run epoch" if config.dry_run else f"{config.epochs} epochs"
    return f"{epochs}, seeds {', '.join(map(str, seeds))}"


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0  # sample std over seeds
    return f"{statistics.fmean(values):.1%} ± {std:.1%}"


def _write(result: ComparisonResult) -> None:
    out = result.out_dir
    document = {
        "config": result.config.to_dict(),
        "dataset": result.dataset,
        "target_accuracy": result.target_accuracy,
        "summaries": [{**asdict(s), "median_epochs_to_target": s.median_epochs_to_target}
                      for s in result.summaries],
        "runs": [asdict(r) for r in result.runs],
    }
    (out / JSON_FILE).write_text(json.dumps(document, indent=2) + "\n")
    (out / TABLE_FILE).write_text(result.table)
    plot_comparison(result.runs, out / PLOT_FILE, target=result.target_accuracy,
                    title=f"{result.config.model} on {result.dataset}: BatchNorm vs none, "
                    f"{_describe(result.config, result.summaries[0].seeds)}")
