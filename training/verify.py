"""Check an exported ONNX graph against the PyTorch module it came from.

``verify_onnx_export(module, onnx_path, inputs)`` runs every check and returns a
``VerificationReport``; ``report.raise_for_failures()`` turns failures into a
``VerificationError``. The checks:

- ``onnx.checker`` accepts the model (full check, with shape inference);
- no BatchNormalization node is left in training mode (training_mode=1 normalizes each
  batch by its own statistics);
- parity: onnxruntime equals the module in eval mode within ``parity_atol`` for each batch size;
- batch independence: every row of a batch of 64 (real and random samples) is answered the
  same, within ``independence_atol``, as when it is sent alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bnserve.repository.graph import batchnorm_nodes, is_training_mode
from bnserve.training.errors import VerificationError

PARITY_ATOL = 1e-5
INDEPENDENCE_ATOL = 1e-6
BATCH_SIZES = (1, 7, 64)
INDEPENDENCE_BATCH = 64


@dataclass(frozen=True)
class VerificationReport:
    checker_passed: bool
    batchnorm_nodes: int  # BatchNormalization nodes left in the graph
    training_mode_batchnorm_nodes: int
    parity_max_abs_diff: dict[int, float]  # batch size -> max |onnxruntime - torch|
    batch_independence_max_abs_diff: float | None  # None when the graph could not run
    parity_atol: float
    independence_atol: float
    failures: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> None:
        if self.failures:
            raise VerificationError(
                "exported graph failed verification:\n  - " + "\n  - ".join(self.failures),
                self,
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "checker_passed": self.checker_passed,
            "batchnorm_nodes": self.batchnorm_nodes,
            "training_mode_batchnorm_nodes": self.training_mode_batchnorm_nodes,
            "parity_max_abs_diff": {str(b): d for b, d in self.parity_max_abs_diff.items()},
            "batch_independence_max_abs_diff": self.batch_independence_max_abs_diff,
            "parity_atol": self.parity_atol,
            "independence_atol": self.independence_atol,
            "failures": list(self.failures),
        }


def _torch_outputs(module: nn.Module, x: np.ndarray) -> np.ndarray:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    finally:
        module.train(was_training)


def verify_onnx_export(
    module: nn.Module,
    onnx_path: Path | str,
    inputs: np.ndarray,
    *,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    parity_atol: float = PARITY_ATOL,
    independence_atol: float = INDEPENDENCE_ATOL,
    seed: int = 0,
) -> VerificationReport:
    """Run every check of ``onnx_path`` against ``module`` (compared in eval mode).

    ``inputs`` are realistic samples, (N, *sample_shape), in the graph's own input space:
    float32 features, or int64 token ids; the checks draw batches from them (repeating rows
    when N is small) and add uniform random samples spanning their range (random ids in
    [min, max] for tokens). The graph has one input and one output.
    """
    tokens = np.issubdtype(np.asarray(inputs).dtype, np.integer)
    inputs = np.ascontiguousarray(inputs, dtype=np.int64 if tokens else np.float32)
    rng = np.random.default_rng(seed)
    failures: list[str] = []

    model = onnx.load(str(onnx_path))
    checker_passed = True
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        checker_passed = False
        failures.append(f"onnx.checker rejected the model: {exc}")
    bn = batchnorm_nodes(model)
    training_bn = [n for n in bn if is_training_mode(n)]
    if training_bn:
        failures.append(
            f"{len(training_bn)} BatchNormalization node(s) in training mode (training_mode=1): "
            f"{', '.join(n.name or '?' for n in training_bn)}; export the module in eval mode"
        )

    parity: dict[int, float] = {}
    independence: float | None = None
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        failures.append(f"onnxruntime cannot load the model: {exc}")
        return VerificationReport(checker_passed, len(bn), len(training_bn), parity, None,
                                  parity_atol, independence_atol, tuple(failures))
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    for size in batch_sizes:
        x = inputs[rng.choice(len(inputs), size=size, replace=len(inputs) < size)]
        got, want = run(x), _torch_outputs(module, x)
        diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        parity[size] = diff
        if not diff <= parity_atol:  # also catches NaN
            failures.append(f"batch {size}: onnxruntime differs from PyTorch eval by "
                            f"{diff:.3g} (> {parity_atol:g})")

    # Half real samples, half uniform noise over their range: a row must not see its neighbours.
    n_real = INDEPENDENCE_BATCH // 2
    real = inputs[rng.choice(len(inputs), size=n_real, replace=len(inputs) < n_real)]
    noise_shape = (INDEPENDENCE_BATCH - n_real, *inputs.shape[1:])
    if tokens:
        noise = rng.integers(inputs.min(), inputs.max() + 1, size=noise_shape)
    else:
        noise = rng.uniform(inputs.min(), inputs.max(), size=noise_shape)
    batch = rng.permutation(np.concatenate([real, noise.astype(inputs.dtype)]))
    batched = run(batch)
    alone = np.concatenate([run(batch[i:i + 1]) for i in range(len(batch))])
    same_shape = batched.shape == alone.shape
    independence = float(np.max(np.abs(batched - alone))) if same_shape else float("inf")
    if not (same_shape and np.allclose(batched, alone, rtol=0.0, atol=independence_atol)):
        failures.append(f"rows of a batch of {INDEPENDENCE_BATCH} differ from the same rows sent "
                        f"alone by up to {independence:.3g} (> {independence_atol:g}): the graph "
                        "depends on the batch (BatchNorm without frozen statistics?)")

    return VerificationReport(checker_passed, len(bn), len(training_bn), parity, independence,
                              parity_atol, independence_atol, tuple(failures))
