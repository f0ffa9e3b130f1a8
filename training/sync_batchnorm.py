"""BatchNorm synchronized across processes, on CUDA and on CPU, and back to plain BatchNorm.

    BatchNorm{1,2,3}d --to_sync_batchnorm--> nn.SyncBatchNorm (CUDA) | CPUSyncBatchNorm (CPU)
                      <--revert_sync_batchnorm-- (the class each layer had, its state copied)

Why a CPU version: torch 2.13's ``nn.SyncBatchNorm`` raises ``ValueError: SyncBatchNorm
expected input tensor to be on GPU or XPU`` in a training forward on CPU tensors once a
process group is initialized (even a group of one), its kernels (``aten::batch_norm_stats``
and friends) have no CPU implementation, and ``DistributedDataParallel`` refuses a CPU
module that contains one ("SyncBatchNorm layers only work with GPU modules").
``CPUSyncBatchNorm`` does the same arithmetic with one all-reduce per layer in each
direction, so a gloo run normalizes over the global batch exactly as a CUDA run does:

    forward:  all_reduce(sum x, sum x^2, count) -> global mean, biased var -> normalize;
              running_var gets the unbiased var (count / (count - 1)), like nn.BatchNorm
    backward: all_reduce(sum dy, sum dy * x_hat) ->
              dx = weight * invstd * (dy - sum_dy / n - x_hat * sum_dy_xhat / n)

It is a ``_BatchNorm`` but deliberately not an ``nn.SyncBatchNorm`` subclass, because DDP
rejects those on CPU. Eval mode never synchronizes: it uses the running statistics.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Set on every converted layer: the BatchNorm class that revert_sync_batchnorm rebuilds.
# nn.SyncBatchNorm accepts any input rank, so the layer itself no longer knows it.
REVERTS_TO = "reverts_to"


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalization over the inputs of every rank of ``group``; see the module doc."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                eps: float, momentum: float, group: Any) -> torch.Tensor:
        channels = x.size(1)
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, channels] + [1] * (x.dim() - 2)  # broadcasts a (C,) vector over x
        # Squares and sums in float64: var = E[x^2] - mean^2 cancels badly when the mean is
        # large against the spread, and float32 squares would lose the difference first.
        x64 = x.double()
        local = torch.cat([x64.sum(dims), (x64 * x64).sum(dims),
                           x.new_full((1,), x.numel() // max(channels, 1), dtype=torch.float64)])
        dist.all_reduce(local, group=group)  # (2C + 1,) sums over all ranks
        total, total_sq, count = local[:channels], local[channels:2 * channels], local[-1]
        n = float(count)
        if n <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got {n:g}")
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_min(0)  # biased: what normalizes the batch
        if running_mean is not None and running_var is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            unbiased = (var * (n / (n - 1))).to(running_var.dtype)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        invstd = (var + eps).rsqrt().to(x.dtype)  # (C,)
        x_hat = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)  # (B, C, *)
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.count, ctx.group = n, group
        if weight is None:
            return x_hat
        out = x_hat * weight.view(shape)
        return out + bias.view(shape) if bias is not None else out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_hat, weight, invstd = ctx.saved_tensors
        channels = x_hat.size(1)
        dims = [0, *range(2, x_hat.dim())]
        shape = [1, channels] + [1] * (x_hat.dim() - 2)
        sum_dy = grad_out.sum(dims)  # (C,) this rank's rows
        sum_dy_xhat = (grad_out * x_hat).sum(dims)  # (C,)
        # Local sums: DDP all-reduces parameter gradients itself.
        grad_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # Every row moved the shared mean and var, so each rank needs the global sums.
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both, group=ctx.group)
            sum_dy, sum_dy_xhat = both[:channels] / ctx.count, both[channels:] / ctx.count
            scale = invstd if weight is None else invstd * weight
            grad_x = scale.view(shape) * (grad_out - sum_dy.view(shape)
                                          - x_hat * sum_dy_xhat.view(shape))
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of all ranks; CPU tensors, gloo."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group: Any = None,
                 device: Any = None, dtype: Any = None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self.process_group = process_group  # None: the default (world) group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # (B, C, *)
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return super().forward(input)  # eval mode, or nobody to synchronize with
        if input.device.type != "cpu":
            raise ValueError(f"CPUSyncBatchNorm got a {input.device.type} tensor; "
                             "use nn.SyncBatchNorm there (to_sync_batchnorm picks it)")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, *running, self.eps,
                                            factor, self.process_group)


def _copy_layer(layer: _BatchNorm, cls: type[_BatchNorm], **extra: Any) -> _BatchNorm:
    """A ``cls`` layer with the options, parameters, buffers and mode of ``layer``."""
    tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
    like = next((t for t in tensors if t.is_floating_point()), None)
    if "bias" in inspect.signature(cls.__init__).parameters:
        # torch 2.13 BatchNorm can drop its bias; older releases' classes have no such option.
        extra["bias"] = layer.bias is not None
    copy = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
               track_running_stats=layer.track_running_stats,
               device=None if like is None else like.device,
               dtype=None if like is None else like.dtype, **extra)
    copy.load_state_dict(layer.state_dict())  # weight, bias, running stats, num_batches_tracked
    for name, param in layer.named_parameters(recurse=False):
        getattr(copy, name).requires_grad_(param.requires_grad)
    copy.train(layer.training)
    return copy


def to_sync_batchnorm(module: nn.Module, device: torch.device | str,
                      process_group: Any = None) -> nn.Module:
    """Replace every BatchNorm layer with the synchronized one for ``device``, state copied.

    CUDA gets ``nn.SyncBatchNorm`` (torch's fused kernels, NCCL); anything else
    ``CPUSyncBatchNorm``. Each new layer remembers its class for ``revert_sync_batchnorm``.
    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, children are replaced in place and the
    (possibly new) root is returned. Build the optimizer afterwards: parameters are new.
    """
    sync_class = nn.SyncBatchNorm if torch.device(device).type == "cuda" else CPUSyncBatchNorm
    if isinstance(module, _BatchNorm) and not is_sync_batchnorm(module):
        synced = _copy_layer(module, sync_class, process_group=process_group)
        setattr(synced, REVERTS_TO, type(module))
        return synced
    for name, child in module.named_children():
        module.add_module(name, to_sync_batchnorm(child, device, process_group))
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every synchronized BatchNorm with the BatchNorm{1,2,3}d it was converted from.

    The copy keeps weight, bias, running_mean, running_var, num_batches_tracked, eps,
    momentum, affine, track_running_stats and the train/eval mode. In place, like
    ``to_sync_batchnorm``; returns the (possibly new) root.
    """
    if is_sync_batchnorm(module):
        cls = getattr(module, REVERTS_TO, None)
        if cls is None:
            raise ValueError(f"{type(module).__name__} layer does not record which BatchNorm "
                             "class it replaced; convert with to_sync_batchnorm")
        assert isinstance(module, _BatchNorm)
        return _copy_layer(module, cls)
    for name, child in module.named_children():
        module.add_module(name, revert_sync_batchnorm(child))
    return module


def is_sync_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, (nn.SyncBatchNorm, CPUSyncBatchNorm))


__all__ = ["CPUSyncBatchNorm", "is_sync_batchnorm", "revert_sync_batchnorm",
           "to_sync_batchnorm"]
