"""Train a registered model on a registered dataset (or a user's .npz) and write the run folder.

    x (raw) --standardize with training-split statistics--> model --> logits --> cross-entropy

The model itself sees standardized inputs; the exporter puts the same standardization in
front of it, so the served graph takes raw inputs (token ids are used as they are).

One loop (``train``) serves ``bnserve train`` and the torchrun entry
(``bnserve.training.distributed``); what differs between one process and N is a small
``SingleProcess`` strategy (the distributed one subclasses it): how the model is wrapped,
which rows a process trains on, how per-process figures combine, who writes the run folder.

    RUN must be new (or empty): a folder holding a run is refused unless ``overwrite``
    (start again) or ``resume`` (continue it).
    Every epoch ends by saving the whole training state (RUN/last.pt), so ``resume=True``
    continues an interrupted run and ends with the same weights as an uninterrupted one;
    with more ``epochs`` than the run had, it continues to the new total (the one-cycle
    schedule is stretched to it).
    "Best" means one thing: the epoch with the lowest validation loss. RUN/checkpoint.pt
    holds that epoch's weights, and the summary reports that epoch's figures.
    ``patience`` stops when the val loss has not improved for that many epochs.
    A NaN/Inf loss stops training (``DivergenceError``, no checkpoint.pt); Ctrl-C stops it
    with ``TrainingInterrupted``, RUN/last.pt holding the last finished epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
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
    HELD_OUT_ROWS,
    METRICS_FILE,
    TRAINING_STATE_FILE,
    VERIFICATION_SAMPLES,
    Checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from bnserve.training.config import ModelSpec, TrainConfig
from bnserve.training.curves import plot_training_curves
from bnserve.training.datasets import (
    Dataset,
    InputStatistics,
    check_finite_rows,
    load_dataset,
    load_npz,
    rows_for_split,
)
from bnserve.training.errors import (
    CheckpointError,
    ConfigError,
    DivergenceError,
    RunExistsError,
    TrainingInterrupted,
)
from bnserve.training.models import MODEL_INPUTS, build_model, check_model_takes

logger = logging.getLogger(__name__)

RUN_FILES = (CHECKPOINT_FILE, TRAINING_STATE_FILE, METRICS_FILE, CURVES_FILE)
BEST = "lowest val loss"  # what "best epoch" means, everywhere


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


class SingleProcess:
    """The parts of the loop that differ between one process and a torchrun job; this one
    process trains on every row and writes the run folder. See ``distributed.DataParallel``."""

    rank = 0
    world_size = 1
    device = torch.device("cpu")
    label = ""  # appended to the progress bar's description
    title_note = ""  # appended to the training curves' title
    command = "bnserve train"  # what the user runs, for the messages that say what to run

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (and shows the progress bar)."""
        return self.rank == 0

    def plan(self, num_train: int, batch_size: int) -> tuple[int, int]:
        """(rows per step in this process, full steps per epoch) for ``batch_size`` rows per
        optimizer step. Full batches only: no tiny last batch upsets BatchNorm."""
        batch_size = min(batch_size, num_train)
        return batch_size, num_train // batch_size

    def wrap(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(the module the optimizer steps, the model inside it whose state is saved):
        ``model`` itself twice here; DDP around a synchronized-BatchNorm copy in a job."""
        return model, model

    def generator(self, seed: int) -> torch.Generator:
        """The shuffling generator of this process (after the weights are initialized)."""
        return torch.Generator().manual_seed(seed)

    def epoch_rows(self, epoch: int) -> torch.Tensor | None:
        """Indices of the training rows this process sees in ``epoch`` (None: all)."""
        return None

    def mean(self, values: list[float]) -> list[float]:
        """Per-process means -> means over every process (each saw as many rows)."""
        return values

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        return evaluate(model, x, y)

    def all_finite(self, value: float) -> bool:
        """Whether ``value`` is finite in every process (they must stop together)."""
        return math.isfinite(value)

    def rng_state(self, shuffle: torch.Generator) -> list[dict[str, Any]]:
        """Each process's random state (dropout, shuffling), by rank; in a job every rank
        calls it (a collective) and all get the list."""
        return [{"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}]

    def set_rng_state(self, states: list[dict[str, Any]], shuffle: torch.Generator) -> None:
        torch.set_rng_state(states[self.rank]["torch"])
        shuffle.set_state(states[self.rank]["shuffle"])

    def plain(self, model: nn.Module) -> nn.Module:
        """``model`` as the checkpoint stores it: plain BatchNorm, on the CPU."""
        return model

    def barrier(self) -> None:
        """Wait for every process (after rank 0 changed the run folder)."""

    def summary(self, batch_size: int) -> dict[str, Any]:
        """What metrics.json says about how the run was spread (nothing for one process)."""
        return {}

    def finished(self, model: nn.Module) -> None:
        """Called on every process with the kept (best) plain model, before writing."""


def load_training_data(config: TrainConfig) -> Dataset:
    """``config.data`` (a user's .npz) or the registered ``config.dataset``, checked against
    what ``config.model`` takes and for NaN/Inf rows (``DatasetError`` with the reason)."""
    if config.data:
        dataset = load_npz(config.data, MODEL_INPUTS.get(config.model) or ("tabular", "audio",
                                                                           "image", "text"))
    else:
        dataset = load_dataset(config.dataset)
        check_finite_rows(dataset.x, f"dataset {dataset.name}: array 'x'")
    check_model_takes(config.model, dataset.modality, dataset.name)
    return dataset


def check_split(dataset: Dataset, val_fraction: float) -> None:
    """``ConfigError`` with the numbers when the stratified split cannot give every class a
    row in both parts (what scikit-learn would refuse, said in the run's terms)."""
    n, classes = len(dataset.y), dataset.num_classes
    need = rows_for_split(classes, val_fraction)  # the one rule (datasets.py)
    num_val = math.ceil(val_fraction * n)  # how train_test_split rounds test_size
    num_train = n - num_val
    counts = np.bincount(dataset.y, minlength=classes)
    problems = []
    if n < need:
        problems.append(f"val_fraction {val_fraction:g} of {n} rows gives {num_train} training "
                        f"and {num_val} validation rows, and each needs one row of each of the "
                        f"{classes} classes")
    if counts.min() < 2:
        problems.append(f"class {dataset.labels[int(counts.argmin())]!r} has "
                        f"{int(counts.min())} row(s); each class needs at least 2")
    if problems:
        raise ConfigError(f"{dataset.name}: too few rows for the validation split: "
                          + "; ".join(problems) + f" (at least {need} rows, 2 per class)")


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


@dataclass(frozen=True)
class WordDropout:
    """Replace a random ``rate`` of a token batch's words (not its padding) by the
    unknown-word id (``TrainConfig.unknown_word_rate``), drawn from the shuffling generator
    so a resumed run draws what an uninterrupted one would."""

    rate: float
    unknown_id: int
    pad_id: int

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        draw = torch.rand(tokens.shape, generator=generator, device=generator.device)  # (B, L)
        hit = (draw.to(tokens.device) < self.rate) & (tokens != self.pad_id)
        return torch.where(hit, torch.full_like(tokens, self.unknown_id), tokens)


def word_dropout(config: TrainConfig, dataset: Dataset) -> WordDropout | None:
    """The run's word dropout: for token data whose tokenizer has an unknown-word id."""
    tokenizer, rate = dataset.tokenizer, config.word_dropout_rate
    if not rate or tokenizer is None or tokenizer.unknown_id is None:
        return None
    return WordDropout(rate, tokenizer.unknown_id, tokenizer.pad_id)


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                *, batch_size: int, steps: int, generator: torch.Generator, epoch: int = 0,
                all_finite: Callable[[float], bool] = math.isfinite,
                unknown_words: WordDropout | None = None) -> tuple[float, float]:
    """One pass of ``steps`` full shuffled batches; returns mean loss and accuracy seen.

    A NaN/Inf loss raises ``DivergenceError`` naming ``epoch`` and the batch, before the
    step that would spread it into the weights. ``unknown_words``: token batches get some
    words replaced by ``<unk>`` first.
    """
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        xb, yb = x[idx], y[idx]  # (B, *sample_shape), (B,)
        if unknown_words is not None:
            xb = unknown_words(xb, generator)  # (B, L) some words -> <unk>
        logits = model(xb)  # (B, num_classes)
        loss = F.cross_entropy(logits, yb)
        value = loss.item()
        if not all_finite(value):
            raise DivergenceError(
                f"the training loss became "
                f"{value if not math.isfinite(value) else 'NaN/Inf in another process'} "
                f"at epoch {epoch}, batch {step + 1} of {steps}: training stopped, no "
                "checkpoint written; lower --lr, or check the data's scale", epoch=epoch,
                batch=step + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += value * len(yb)
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
          resume: bool = False, overwrite: bool = False,
          on_epoch_end: EpochCallback | None = None,
          strategy: SingleProcess | None = None,
          state: dict[str, Any] | None = None) -> TrainResult:
    """Train as ``config`` says and write ``run_dir``.

    ``run_dir`` must not hold a run (checkpoint.pt, last.pt, metrics.json): that is a
    ``RunExistsError`` unless ``overwrite`` (the old run's files are removed once the data
    and configuration checked out) or ``resume``. ``resume``: continue from RUN/last.pt; its
    config must equal ``config`` except ``epochs`` (a new total, at least the epochs done)
    and ``num_threads``. ``on_epoch_end``: called with each epoch's figures after its state
    is saved; an exception there stops the run (a KeyboardInterrupt becomes
    ``TrainingInterrupted``), and ``resume`` picks it up. ``strategy``: one process (default)
    or a torchrun job's rank (``bnserve.training.distributed``). ``state``: RUN/last.pt as
    the caller already read it for ``resume`` (the CLI does, to describe the resume).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(config, Path(run_dir), progress=progress, resume=resume,
                      overwrite=overwrite, on_epoch_end=on_epoch_end,
                      strategy=strategy or SingleProcess(), state=state)
    finally:
        torch.set_num_threads(previous_threads)


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool,
                  command: str = "bnserve train") -> None:
    """Refuse to start a new run over an existing one (``RunExistsError``, the ways out)."""
    if resume or overwrite or not run_dir.is_dir():
        return
    found = [name for name in RUN_FILES[:3] if (run_dir / name).exists()]
    if found:
        what = "a finished run" if (run_dir / CHECKPOINT_FILE).exists() else "an unfinished run"
        raise RunExistsError(
            f"{run_dir} already holds {what} ({', '.join(found)}); not overwriting it: "
            f"continue it with `{command} --run-dir {run_dir} --resume`, or replace it with "
            "--overwrite (or choose another --run-dir)")


def _check_same_config(saved: dict[str, Any], config: TrainConfig) -> None:
    wanted = config.to_dict()
    saved = TrainConfig.from_dict(saved).to_dict()  # with the defaults of knobs added since
    differ = sorted(k for k in set(saved) | set(wanted)
                    if k not in ("num_threads", "epochs") and saved.get(k) != wanted.get(k))
    if differ:
        raise CheckpointError(
            "cannot resume with a different configuration: "
            + ", ".join(f"{k} was {saved.get(k)!r}, now {wanted.get(k)!r}" for k in differ)
            + " (only --epochs and --threads may change; start a new run for the rest)"
        )


def describe_resume(state: dict[str, Any], config: TrainConfig) -> str:
    """One line: where a resumed run continues, and what a new epoch count does to it."""
    done, planned = int(state["epoch"]), int(state["config"]["epochs"])
    total = 1 if config.dry_run else config.epochs
    if state.get("stopped_early"):
        return (f"resuming: the run stopped early after epoch {done} (patience "
                f"{config.patience}); nothing left to train, rewriting its run folder")
    if done >= total:
        more = "" if config.dry_run else f"; --epochs N with N > {done} trains further"
        return f"resuming: all {total} epochs are done, nothing left to train{more}"
    if total != planned and not config.dry_run:
        return (f"resuming at epoch {done + 1}, now of {total} (the run planned {planned}); "
                f"the one-cycle learning-rate schedule is stretched to {total} epochs from "
                f"where it stands")
    return f"resuming at epoch {done + 1} of {total}"


def _stretch_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler,
                      saved: dict[str, Any]) -> None:
    """Load ``saved`` into ``scheduler`` (built for the new total steps), keeping its step
    count and taking the new total's phases: the rest of the run follows the one-cycle
    curve of the new length, from the step it reached (and the next step's rate is set)."""
    fresh = scheduler.state_dict()
    stretched = saved["total_steps"] != fresh["total_steps"]
    if stretched:
        saved = {**saved, "total_steps": fresh["total_steps"],
                 "_schedule_phases": fresh["_schedule_phases"]}
    scheduler.load_state_dict(saved)
    if stretched:
        with warnings.catch_warnings():  # get_lr outside step(): what we mean here
            warnings.simplefilter("ignore", UserWarning)
            rates = scheduler.get_lr()
        for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate


def _train(config: TrainConfig, run_dir: Path, *, progress: bool, resume: bool,
           overwrite: bool, on_epoch_end: EpochCallback | None,
           strategy: SingleProcess, state: dict[str, Any] | None) -> TrainResult:
    check_run_dir(run_dir, resume=resume, overwrite=overwrite, command=strategy.command)
    if not resume:
        state = None
    elif state is None:
        state = load_training_state(run_dir)
    dataset = load_training_data(config)
    check_split(dataset, config.val_fraction)
    x_train, x_val, y_train, y_val = split_dataset(dataset, config.val_fraction, config.seed)
    stats = InputStatistics.from_data(x_train)  # same split everywhere: same statistics
    device = strategy.device
    xt, xv = (torch.from_numpy(stats.standardize(a)).to(device) for a in (x_train, x_val))
    yt, yv = torch.from_numpy(y_train).to(device), torch.from_numpy(y_val).to(device)

    batch_size = min(config.batch_size, len(xt))  # rows per optimizer step, all processes
    process_batch, steps = strategy.plan(len(xt), config.batch_size)
    epochs = config.epochs
    if config.dry_run:
        epochs, steps = 1, min(steps, config.dry_run_steps)

    torch.manual_seed(config.seed)  # weight init: the same in every process
    spec = model_spec(config, dataset)
    model = build_model(spec)
    trained, model = strategy.wrap(model)  # what the optimizer steps; `model` is inside it
    shuffle = strategy.generator(config.seed)  # a torchrun rank also reseeds its dropout
    unknown_words = word_dropout(config, dataset)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                    total_steps=epochs * steps)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "val_loss": float("inf"), "state_dict": {}}
    elapsed, first_epoch, resumed_at = 0.0, 1, None
    if state is not None:
        _check_same_config(state["config"], config)
        saved_world = int(state.get("world_size", 1))
        if saved_world != strategy.world_size:
            raise CheckpointError(
                f"{run_dir} was trained by {saved_world} process(es); resume it with as many "
                f"({'bnserve train' if saved_world == 1 else f'torchrun --nproc_per_node={saved_world}'}"
                f"), not {strategy.world_size}")
        if state["epoch"] > epochs:
            raise ConfigError(f"{run_dir} has already trained {state['epoch']} epochs; "
                              f"--epochs {epochs} would mean going back (give at least "
                              f"{state['epoch']})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _stretch_schedule(scheduler, state["scheduler"])
        strategy.set_rng_state(state["rng"], shuffle)
        history, best, elapsed = state["history"], state["best"], state["elapsed"]
        first_epoch = resumed_at = state["epoch"] + 1
        if first_epoch > epochs or state.get("stopped_early"):  # nothing to train: as it was
            resumed_at = state.get("resumed_at_epoch")
        logger.info("resuming %s at epoch %d of %d", run_dir, first_epoch, epochs)

    if strategy.writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:  # only now: a bad config or data kept the old run
            for name in (*RUN_FILES, TRAINING_STATE_FILE + ".partial"):
                (run_dir / name).unlink(missing_ok=True)
    strategy.barrier()

    saved_epoch = first_epoch - 1 or None
    stopped_early = _stop(history, best, config.patience)
    bar = tqdm(range(first_epoch, epochs + 1),
               desc=f"train {config.model}/{dataset.name}{strategy.label}", unit="epoch",
               disable=not (progress and strategy.writes), initial=first_epoch - 1, total=epochs)
    try:
        for epoch in bar:
            if stopped_early:
                break
            start = time.perf_counter()
            rows = strategy.epoch_rows(epoch)
            x_epoch, y_epoch = (xt, yt) if rows is None else (xt[rows], yt[rows])
            train_loss, train_acc = train_epoch(trained, x_epoch, y_epoch, optimizer, scheduler,
                                                batch_size=process_batch, steps=steps,
                                                generator=shuffle, epoch=epoch,
                                                all_finite=strategy.all_finite,
                                                unknown_words=unknown_words)
            train_loss, train_acc = strategy.mean([train_loss, train_acc])
            val_loss, val_acc = strategy.evaluate(model, xv, yv)
            if not math.isfinite(val_loss):  # the same figure in every process
                raise DivergenceError(
                    f"the validation loss became {val_loss} at epoch {epoch}: training "
                    "stopped, no checkpoint written; lower --lr, or check the data's scale",
                    epoch=epoch, batch=None)
            elapsed += time.perf_counter() - start
            history.append({"epoch": epoch, "train_loss": train_loss,
                            "train_accuracy": train_acc, "val_loss": val_loss,
                            "val_accuracy": val_acc})
            if val_loss < best["val_loss"]:  # the one meaning of "best"
                best = {"epoch": epoch, "val_loss": val_loss,
                        "state_dict": {k: v.detach().clone() for k, v in
                                       model.state_dict().items()}}
            stopped_early = _stop(history, best, config.patience)
            rng = strategy.rng_state(shuffle)
            if strategy.writes:
                save_training_state({
                    "config": config.to_dict(), "epoch": epoch, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng, "world_size": strategy.world_size, "history": history,
                    "best": best, "elapsed": elapsed, "stopped_early": stopped_early,
                    "resumed_at_epoch": resumed_at,
                }, run_dir)
            saved_epoch = epoch
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                            val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(history[-1])
        bar.close()  # before the summary prints; `finally` closes it on the way out of a failure
        return _finish(config, run_dir, strategy=strategy, model=model, spec=spec,
                       stats=stats, dataset=dataset, history=history, best=best,
                       stopped_early=stopped_early, epochs=epochs, steps=steps,
                       batch_size=batch_size, elapsed=elapsed, resumed_at=resumed_at,
                       num_train=len(xt), num_val=len(xv), x_val=x_val)
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        raise TrainingInterrupted(run_dir, saved_epoch, epochs) from None
    finally:
        bar.close()


def _finish(config: TrainConfig, run_dir: Path, *, strategy: SingleProcess, model: nn.Module,
            spec: ModelSpec, stats: InputStatistics, dataset: Dataset,
            history: list[dict[str, Any]], best: dict[str, Any], stopped_early: bool,
            epochs: int, steps: int, batch_size: int, elapsed: float, resumed_at: int | None,
            num_train: int, num_val: int, x_val: np.ndarray) -> TrainResult:
    """Keep the best epoch, summarize, and (in the writing process) write the run folder."""
    plain = strategy.plain(model)
    plain.load_state_dict(best["state_dict"])  # the best epoch's weights, always
    plain.eval()
    strategy.finished(plain)
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
        "batch_size": batch_size,
        "num_train": num_train,
        "num_val": num_val,
        "num_threads": config.num_threads,
        "train_seconds": round(elapsed, 3),
        "patience": config.patience,
        "stopped_early": stopped_early and len(history) < epochs,
        "resumed_at_epoch": resumed_at,
        "best": BEST,  # how best_epoch was chosen
        "best_epoch": kept["epoch"],
        "checkpoint_epoch": kept["epoch"],  # whose weights checkpoint.pt holds: the best
        "final": {k: v for k, v in kept.items() if k != "epoch"},  # the checkpoint's figures
        **strategy.summary(batch_size),
    }
    title = f"{config.model} on {dataset.name} (seed {config.seed}{strategy.title_note})"
    if strategy.writes:
        metrics = write_run_folder(run_dir, model=plain, spec=spec, statistics=stats,
                                   dataset=dataset, config=config, summary=summary,
                                   history=history, x_val=x_val, title=title)
    else:
        metrics = {**summary, "history": history}
    logger.info("trained %s on %s in %.1f s: kept epoch %d, val accuracy %.4f", config.model,
                dataset.name, elapsed, kept["epoch"], kept["val_accuracy"])
    return TrainResult(run_dir=run_dir, metrics=metrics)


def summary_line(metrics: dict[str, Any]) -> str:
    """The run in one line: what trained, how long, and the epoch the checkpoint keeps."""
    spread = metrics.get("distributed")
    ranks = (f" with {spread['world_size']} rank{'s' if spread['world_size'] > 1 else ''} "
             f"({spread['backend']})" if spread else "")
    n = metrics["epochs"]
    notes = [f"{n} epoch{'s' if n != 1 else ''}"]
    if metrics.get("resumed_at_epoch"):
        notes.append(f"resumed at epoch {metrics['resumed_at_epoch']}")
    if metrics["stopped_early"]:
        notes.append(f"stopped early, patience {metrics['patience']}")
    final = metrics["final"]
    return (f"trained {metrics['model']} on {metrics['dataset']}{ranks} (norm {metrics['norm']}) "
            f"in {metrics['train_seconds']:.2f} s ({', '.join(notes)}): kept epoch "
            f"{metrics['checkpoint_epoch']} ({BEST}): val loss {final['val_loss']:.4f}, "
            f"val accuracy {final['val_accuracy']:.2%}")


def write_run_folder(run_dir: Path, *, model: nn.Module, spec: ModelSpec, statistics: InputStatistics,
                     dataset: Dataset, config: TrainConfig, summary: dict[str, Any],
                     history: list[dict[str, Any]], x_val: np.ndarray, title: str) -> dict[str, Any]:
    """Write checkpoint.pt (model in plain, eval-ready form), metrics.json and curves.png.

    The checkpoint holds raw validation rows (for export's checks and the drift threshold):
    it is the run folder's, and export does not publish them. Returns the metrics written.
    """
    metrics = {**summary, "history": history}
    save_checkpoint(
        Checkpoint(spec=spec, state_dict=model.state_dict(), statistics=statistics,
                   labels=dataset.labels, dataset=dataset.name, config=config.to_dict(),
                   metrics=summary, samples=x_val[:VERIFICATION_SAMPLES].copy(),
                   held_out=x_val[:HELD_OUT_ROWS].copy(), tokenizer=dataset.tokenizer),
        run_dir / CHECKPOINT_FILE,
    )
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    plot_training_curves(history, run_dir / CURVES_FILE, title=title,
                         kept_epoch=summary.get("checkpoint_epoch"))
    return metrics


def _stop(history: list[dict[str, Any]], best: dict[str, Any], patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have passed since the lowest val loss."""
    return patience is not None and bool(history) and history[-1]["epoch"] - best["epoch"] >= patience
