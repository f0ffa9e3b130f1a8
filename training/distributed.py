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

The loop is ``bnserve.training.train.train`` itself, given the ``DataParallel`` strategy
below: the same refusal to overwrite a run, --resume (rank 0's RUN/last.pt holds every
rank's random state; resume with as many ranks, from a folder every rank can read), the
same --patience, the same "best" (lowest val loss, all-reduced over the ranks) and the
same summary, with a ``distributed`` section added.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from bnserve.training.cli import add_training_options, resolve_config
from bnserve.training.config import TrainConfig
from bnserve.training.errors import DistributedError, TrainingError, TrainingInterrupted
from bnserve.training.sync_batchnorm import is_sync_batchnorm, revert_sync_batchnorm, to_sync_batchnorm
from bnserve.training.train import (
    SingleProcess,
    TrainResult,
    describe_resume,
    evaluate,
    summary_line,
    train,
)

logger = logging.getLogger(__name__)

COMMAND = "torchrun --nproc_per_node=N -m bnserve.training.distributed"


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


class DataParallel(SingleProcess):
    """What a torchrun rank does differently inside the one loop of ``train``.

    DDP with synchronized BatchNorm, a DistributedSampler share of the rows per epoch,
    metrics all-reduced (every rank gets the same figures, so every rank makes the same
    early-stopping and NaN decisions), random states gathered so rank 0's RUN/last.pt
    resumes every rank, and only rank 0 writing the run folder.
    """

    def __init__(self, launch: Launch, device: torch.device, *, seed: int,
                 dump_state: Path | None = None) -> None:
        self.rank, self.world_size, self.device = launch.rank, launch.world_size, device
        self.label = f" x{launch.world_size}"
        self.title_note = f", {launch.world_size} ranks"
        self.command = COMMAND
        self.seed = seed  # of the sampler's global shuffle
        self.dump_state = dump_state
        self.sampler: DistributedSampler | None = None

    def plan(self, num_train: int, batch_size: int) -> tuple[int, int]:
        batch_size = min(batch_size, num_train)  # global, as in `bnserve train`
        if batch_size % self.world_size:
            raise DistributedError(f"--batch-size {batch_size} is the global batch; it must "
                                   f"divide evenly over {self.world_size} ranks")
        rank_batch = batch_size // self.world_size
        # Pads the split to a multiple of world_size, so every rank takes the same steps.
        self.sampler = DistributedSampler(range(num_train), num_replicas=self.world_size,
                                          rank=self.rank, shuffle=True, seed=self.seed)
        return rank_batch, len(self.sampler) // rank_batch  # full batches only

    def wrap(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        model = to_sync_batchnorm(model, self.device).to(self.device)
        # No buffer broadcast before each forward: synchronized BatchNorm keeps the running
        # statistics equal by itself (and the test that they are equal means something).
        ddp = DistributedDataParallel(model, device_ids=[self.device.index]
                                      if self.device.type == "cuda" else None,
                                      **_no_buffer_broadcast())
        return ddp, model

    def generator(self, seed: int) -> torch.Generator:
        torch.manual_seed(seed + self.rank)  # dropout: different masks for different rows
        return torch.Generator().manual_seed(seed + self.rank)  # order within this share

    def epoch_rows(self, epoch: int) -> torch.Tensor:
        assert self.sampler is not None  # plan() made it
        self.sampler.set_epoch(epoch)  # a new global shuffle each epoch, the same on every rank
        return torch.tensor(list(self.sampler), device=self.device)  # this rank's rows

    def mean(self, values: list[float]) -> list[float]:
        # Every rank saw steps * rank_batch rows: the global mean is the mean of the ranks.
        return [v / self.world_size for v in _all_reduce_sums(values, self.device)]

    def evaluate(self, model: torch.nn.Module, x: torch.Tensor,
                 y: torch.Tensor) -> tuple[float, float]:
        return evaluate_sharded(model, x, y, rank=self.rank, world_size=self.world_size,
                                device=self.device)

    def all_finite(self, value: float) -> bool:
        (bad,) = _all_reduce_sums([0.0 if math.isfinite(value) else 1.0], self.device)
        return bad == 0

    def rng_state(self, shuffle: torch.Generator) -> list[dict[str, Any]]:
        mine = super().rng_state(shuffle)[0]
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, mine)
        return states

    def set_rng_state(self, states: list[dict[str, Any]], shuffle: torch.Generator) -> None:
        super().set_rng_state(states, shuffle)
        if "cuda" in states[self.rank]:
            torch.cuda.set_rng_state(states[self.rank]["cuda"], self.device)

    def plain(self, model: torch.nn.Module) -> torch.nn.Module:
        plain = revert_sync_batchnorm(copy.deepcopy(model)).cpu().eval()
        assert not any(is_sync_batchnorm(m) for m in plain.modules())
        return plain

    def barrier(self) -> None:
        dist.barrier()

    def summary(self, batch_size: int) -> dict[str, Any]:
        return {"distributed": {"world_size": self.world_size, "backend": dist.get_backend(),
                                "batch_size": batch_size,
                                "batch_size_per_rank": batch_size // self.world_size}}

    def finished(self, model: torch.nn.Module) -> None:
        if self.dump_state is not None:
            self.dump_state.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), self.dump_state / f"rank{self.rank}.pt")


def train_distributed(config: TrainConfig, run_dir: Path | str, *, launch: Launch,
                      device: torch.device, progress: bool = True, resume: bool = False,
                      overwrite: bool = False, dump_state: Path | None = None,
                      state: dict[str, Any] | None = None) -> TrainResult:
    """``train`` as this rank of an initialized process group; rank 0 writes ``run_dir``.

    Every rank returns the same metrics. With ``dump_state``, each rank also saves the
    plain-BatchNorm state_dict it keeps as ``dump_state/rank{N}.pt`` (to check that the
    ranks agree).
    """
    strategy = DataParallel(launch, device, seed=config.seed, dump_state=dump_state)
    return train(config, run_dir, progress=progress, resume=resume, overwrite=overwrite,
                 strategy=strategy, state=state)


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
        "synchronized BatchNorm (NCCL on GPUs, gloo on CPU), with the same loop, --resume and "
        "--patience. Rank 0 writes RUN_DIR/checkpoint.pt (plain BatchNorm), last.pt, "
        "metrics.json and curves.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_options(parser, batch_help="GLOBAL rows per optimizer step, split evenly over "
                         "the ranks")
    parser.add_argument("--dump-state", type=Path, default=None, metavar="DIR",
                        help="each rank saves the state_dict it keeps (the best epoch's) "
                        "as DIR/rank{N}.pt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        launch = Launch.from_environment()
        logging.basicConfig(level=logging.WARNING,
                            format=f"[rank {launch.rank}] %(levelname)s %(name)s: %(message)s")
        config, resumed = resolve_config(args)
        if resumed is not None and launch.rank == 0:
            print(describe_resume(resumed, config), flush=True)
        torch.set_num_threads(config.num_threads)  # per rank; this process is ours alone
        with process_group(launch) as device:
            result = train_distributed(config, args.run_dir, launch=launch, device=device,
                                       resume=args.resume, overwrite=args.overwrite,
                                       dump_state=args.dump_state, state=resumed)
    except TrainingError as exc:
        print(f"bnserve.training.distributed: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"bnserve.training.distributed: {exc.hint(COMMAND)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        return 130
    if launch.rank == 0:
        print(summary_line(result.metrics))
        print(f"wrote {args.run_dir}/: checkpoint.pt, last.pt, metrics.json, curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
