"""Datasets keyed by ``--dataset``: each loader returns raw float32 inputs, class ids, labels.

Adding a dataset is one function::

    @register_dataset("mine")
    def load_mine() -> Dataset:
        return Dataset("mine", x=..., y=..., labels=(...))

Inputs stay raw (no scaling here): the training-data statistics become part of the
exported graph, so a client sends exactly what the dataset holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.training.errors import RegistryError


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray  # (N, *sample_shape) float32, raw
    y: np.ndarray  # (N,) int64 class ids in [0, len(labels))
    labels: tuple[str, ...]  # class id -> name

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.y.dtype != np.int64:
            raise TypeError(f"dataset {self.name}: x must be float32 and y int64, "
                            f"got {self.x.dtype} and {self.y.dtype}")
        if self.x.ndim < 2 or len(self.x) != len(self.y):
            raise ValueError(f"dataset {self.name}: x {self.x.shape} and y {self.y.shape} "
                             "must have the same number of rows")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.labels)):
            raise ValueError(f"dataset {self.name}: class ids outside [0, {len(self.labels)})")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)


DatasetLoader = Callable[[], Dataset]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a loader under ``name`` (the value of ``--dataset``)."""

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(name: str) -> Dataset:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise RegistryError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader()


@register_dataset("digits")
def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images, pixel values 0..16, 10 classes."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return Dataset("digits", x=x, y=y, labels=tuple(str(t) for t in bunch.target_names))


@dataclass(frozen=True)
class InputStatistics:
    """Per-channel (axis 1) mean and std of the training inputs, shaped to broadcast on a sample.

    For images (N, C, H, W) they have shape (C, 1, 1); for feature vectors (N, F), shape (F,).
    """

    mean: np.ndarray  # float32
    std: np.ndarray  # float32, > 0

    @classmethod
    def from_data(cls, x: np.ndarray) -> InputStatistics:
        axes = (0, *range(2, x.ndim))  # everything but the channel axis
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = x.std(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = np.where(std > 1e-6, std, 1.0)  # a constant channel is left unscaled
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "shape": list(self.mean.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputStatistics:
        return cls(np.asarray(data["mean"], dtype=np.float32),
                   np.asarray(data["std"], dtype=np.float32))
