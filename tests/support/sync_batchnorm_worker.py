"""One rank of the CPUSyncBatchNorm check; run by torchrun with 2 processes (gloo).

    python -m torch.distributed.run --nproc-per-node=2 sync_batchnorm_worker.py OUT_DIR

Both ranks build the same full batches from ``CASES`` (seeded), take their own rows (5 and
3: unequal on purpose), and run two training steps through a CPUSyncBatchNorm: a forward,
then a forward and a backward of sum(y * g). Each writes OUT_DIR/rank{N}.pt; the test
compares it with nn.BatchNorm on the whole batch in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bnserve.training.sync_batchnorm import to_sync_batchnorm

ROWS = {0: slice(0, 5), 1: slice(5, 8)}  # rank -> its rows of the 8-row batch

# name -> (BatchNorm class, layer options, shape of the full batch)
CASES: dict[str, tuple[type[nn.Module], dict[str, Any], tuple[int, ...]]] = {
    "2d": (nn.BatchNorm2d, {"momentum": 0.1}, (8, 3, 4, 4)),
    "1d_cumulative_no_affine": (nn.BatchNorm1d, {"momentum": None, "affine": False}, (8, 5)),
    "1d_sequence_no_bias": (nn.BatchNorm1d, {"eps": 1e-3, "bias": False}, (8, 4, 6)),
}


def case_inputs(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer (random affine parameters) and the full batches x1, x2 and upstream grad g."""
    cls, options, shape = CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    layer = cls(shape[1], **options)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    x1 = torch.randn(shape, generator=gen) * 3 + 2  # far from N(0, 1): the stats must move
    x2 = torch.randn(shape, generator=gen) * 0.5 - 1
    g = torch.randn(shape, generator=gen)
    return layer, x1, x2, g


def run_case(name: str, rank: int) -> dict[str, torch.Tensor | None]:
    layer, x1, x2, g = case_inputs(name)
    sync = to_sync_batchnorm(layer, "cpu").train()
    rows = ROWS[rank]
    sync(x1[rows])
    x = x2[rows].clone().requires_grad_(True)
    y = sync(x)
    (y * g[rows]).sum().backward()
    return {
        "y": y.detach(), "x_grad": x.grad,
        "weight_grad": None if sync.weight is None else sync.weight.grad,
        "bias_grad": None if sync.bias is None else sync.bias.grad,
        "running_mean": sync.running_mean, "running_var": sync.running_var,
        "num_batches_tracked": sync.num_batches_tracked,
    }


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        results = {name: run_case(name, rank) for name in CASES}
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
