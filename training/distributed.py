"""Data-parallel training with synchronized BatchNorm, launched by torchrun.

    torchrun --nproc_per_node=N -m bnserve.training.distributed --run-dir RUN [train options]

Every rank loads the dataset, makes the same split and input statistics, and builds the
same model; its BatchNorm layers become synchronized ones (``sync_batchnorm``), so batch
statistics cover the global batch, and DistributedDataParallel averages the gradients.
A DistributedSampler deals each rank its share of the shuffled training split per epoch.

    --batch-size is the GLOBAL batch: each rank takes batch_size / N rows per step, and the
    synchronized BatchNorm normalizes over all batch_size rows, so a run on N ranks takes the
    same number of steps, each BatchNorm batch as large, as `bnserve train` on one process
    (the rows in each batch differ: the sampler shuffles per rank).

Backend: NCCL with one GPU per rank (cuda:LOCAL_RANK) when CUDA is available, else gloo on
CPU. Rank 0 writes the same run folder as ``bnserve train``, with BatchNorm{1,2,3}d layers
again, so ``bnserve export`` works unchanged.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset
from tqdm import tqdm

from bnserve.training.cli import add_training_options, config_from_args
from bnserve.training.config import TrainConfig
from bnserve.training.datasets import InputStatistics
from bnserve.training.errors import DistributedError, TrainingError
from bnserve.training.models import build_model
from bnserve.training.sync_batchnorm import is_sync_batchnorm, revert_sync_batchnorm, to_sync_batchnorm
from bnserve.training.train import (
    TrainResult,
    evaluate,
    load_training_data,
    model_spec,
    split_dataset,
    train_epoch,
    write_run_folder,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the job, as torchrun describes it in the environment."""

    rank: int  # 0 .. world_size - 1; rank 0 writes the run folder
    world_size: int
    local_rank: int  # index on this machine: the GPU this rank drives

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Launch:
        env = os.environ if environ is None else environ
        missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k not in env]
        if missing:
            raise DistributedError(
                f"{', '.join(missing)} not set: launch with `torchrun --nproc_per_node=N -m "
                "bnserve.training.distributed ...` (one process: `bnserve train`)")
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))


@contextmanager
def process_group(launch: Launch) -> Iterator[torch.device]:
    """Join the job (NCCL on cuda:LOCAL_RANK, else gloo on CPU); always leave it at exit."""
    if torch.cuda.is_available():
        if launch.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {launch.local_rank} has no GPU of its own: "
                                   f"{torch.cuda.device_count()} visible; start at most that "
                                   "many processes per machine (--nproc_per_node)")
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=launch.rank, world_size=launch.world_size,
                                device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=launch.rank, world_size=launch.world_size)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _all_reduce_sums(values: Sequence[float], device: torch.device) -> list[float]:
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def evaluate_sharded(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, rank: int,
                     world_size: int, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over all of ``x``: each rank evaluates every N-th row."""
    xs, ys = x[rank::world_size], y[rank::world_size]
    n = len(xs)
    loss, acc = evaluate(model, xs, ys) if n else (0.0, 0.0)
    loss_sum, correct, total = _all_reduce_sums([loss * n, acc * n, n], device)
    return loss_sum / total, correct / total


def train_distributed(config: TrainConfig, run_dir: Path | str, *, launch: Launch,
                      device: torch.device, progress: bool = True,
                      dump_state: Path | None = None) -> TrainResult:
    """Train this rank's share inside an initialized process group; rank 0 writes ``run_dir``.

    Every rank returns the same metrics. With ``dump_state``, each rank also saves its final
    plain-BatchNorm state_dict as ``dump_state/rank{N}.pt`` (to check that the ranks agree).
    """
    rank, world_size = launch.rank, launch.world_size
    run_dir = Path(run_dir)

    dataset = load_training_data(config)
    x_train, x_val, y_train, y_val = split_dataset(dataset, config.val_fraction, config.seed)
    stats = InputStatistics.from_data(x_train)  # same split on every rank: same statistics
    xt, xv = (torch.from_numpy(stats.standardize(a)).to(device) for a in (x_train, x_val))
    yt, yv = torch.from_numpy(y_train).to(device), torch.from_numpy(y_val).to(device)

    batch_size = min(config.batch_size, len(xt))  # global, as in `bnserve train`
    if batch_size % world_size:
        raise DistributedError(f"--batch-size {batch_size} is the global batch; it must divide "
                               f"evenly over {world_size} ranks")
    rank_batch = batch_size // world_size
    # Pads the split to a multiple of world_size, so every rank takes the same number of steps.
    sampler = DistributedSampler(TensorDataset(xt), num_replicas=world_size, rank=rank,
                                 shuffle=True, seed=config.seed)
    steps = len(sampler) // rank_batch  # full batches only, as in `bnserve train`
    epochs = config.epochs
    if config.dry_run:
        epochs, steps = 1, min(steps, config.dry_run_steps)

    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP checks)
    spec = model_spec(config, dataset)
    model = to_sync_batchnorm(build_model(spec), device).to(device)
    # No buffer broadcast before each forward: synchronized BatchNorm keeps the running
    # statistics equal by itself (and the test that they are equal means something).
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None, **_no_buffer_broadcast())
    torch.manual_seed(config.seed + rank)  # dropout: different masks for different rows
    shuffle = torch.Generator().manual_seed(config.seed + rank)  # order within this rank's share
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                    total_steps=epochs * steps)

    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=f"train {config.model}/{dataset.name} x{world_size}",
               unit="epoch", disable=not progress or rank != 0)
    for epoch in bar:
        sampler.set_epoch(epoch)  # a new global shuffle each epoch, the same on every rank
        share = torch.tensor(list(sampler))  # (len(sampler),) row indices of this rank
        train_loss, train_acc = train_epoch(ddp, xt[share], yt[share], optimizer, scheduler,
                                            batch_size=rank_batch, steps=steps,
                                            generator=shuffle)
        # Every rank saw steps * rank_batch rows: the global mean is the mean of the ranks.
        loss_sum, acc_sum = _all_reduce_sums([train_loss, train_acc], device)
        train_loss, train_acc = loss_sum / world_size, acc_sum / world_size
        val_loss, val_acc = evaluate_sharded(ddp.module, xv, yv, rank=rank,
                                             world_size=world_size, device=device)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc})
        bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                        val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
    seconds = time.perf_counter() - start

    plain = revert_sync_batchnorm(copy.deepcopy(ddp.module)).cpu().eval()
    assert not any(is_sync_batchnorm(m) for m in plain.modules())
    if dump_state is not None:
        dump_state.mkdir(parents=True, exist_ok=True)
        torch.save(plain.state_dict(), dump_state / f"rank{rank}.pt")

    best = max(history, key=lambda h: h["val_accuracy"])
    summary: dict[str, Any] = {
        "model": config.model,
        "dataset": dataset.name,
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
        "distributed": {"world_size": world_size, "backend": dist.get_backend(),
                        "batch_size": batch_size, "batch_size_per_rank": rank_batch},
    }
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = write_run_folder(
            run_dir, model=plain, spec=spec, statistics=stats, dataset=dataset, config=config,
            summary=summary, history=history, x_val=x_val,
            title=f"{config.model} on {dataset.name} (seed {config.seed}, {world_size} ranks)")
    else:
        metrics = {**summary, "history": history}
        logger.info("trained %s on %s with %d ranks in %.1f s: val accuracy %.4f", config.model,
                    dataset.name, world_size, seconds, history[-1]["val_accuracy"])
    return TrainResult(run_dir=run_dir, metrics=metrics)


def _no_buffer_broadcast() -> dict[str, bool]:
    # torch 2.13 (pinned here) calls it forward_sync_buffers and deprecates broadcast_buffers;
    # older releases (e.g. the CUDA build on a lent GPU machine) only know broadcast_buffers.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m bnserve.training.distributed",
        description="Train like `bnserve train`, on N processes: DistributedDataParallel with "
        "synchronized BatchNorm (NCCL on GPUs, gloo on CPU). Rank 0 writes RUN_DIR/"
        "checkpoint.pt (plain BatchNorm), metrics.json and curves.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_options(parser, batch_help="GLOBAL rows per optimizer step, split evenly over "
                         "the ranks")
    parser.add_argument("--dump-state", type=Path, default=None, metavar="DIR",
                        help="each rank saves its final state_dict as DIR/rank{N}.pt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    try:
        launch = Launch.from_environment()
        logging.basicConfig(level=logging.WARNING,
                            format=f"[rank {launch.rank}] %(levelname)s %(name)s: %(message)s")
        torch.set_num_threads(config.num_threads)  # per rank; this process is ours alone
        with process_group(launch) as device:
            result = train_distributed(config, args.run_dir, launch=launch, device=device,
                                       dump_state=args.dump_state)
    except TrainingError as exc:
        print(f"bnserve.training.distributed: error: {exc}", file=sys.stderr)
        return 1
    if launch.rank == 0:
        final = result.metrics["final"]
        print(f"trained {config.model} on {result.metrics['dataset']} with {launch.world_size} "
              f"rank{'s' if launch.world_size > 1 else ''} "
              f"({result.metrics['distributed']['backend']}) in {result.seconds:.1f} s "
              f"({result.metrics['epochs']} epochs): val accuracy {final['val_accuracy']:.2%} "
              f"(best {result.metrics['best_val_accuracy']:.2%}), val loss {final['val_loss']:.4f}")
        print(f"wrote {args.run_dir}/: checkpoint.pt, metrics.json, curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
