"""Shared fixtures. Each test module starts at most one real server (module scope)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def digits_repository(tmp_path_factory) -> Path:
    """A repository holding a real trained-and-exported digits BatchNorm CNN (version 1),
    with its checkpoint.pt (no data rows) for the torch recalibration engine's tests."""
    from bnserve.training.quick import build_digits_repository

    root = tmp_path_factory.mktemp("models")
    build_digits_repository(root, name="digits", include_checkpoint=True)
    return root


@pytest.fixture(scope="session")
def digits_data():
    """Raw digits images (N, 1, 8, 8) float32 and labels, as a client would send them."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype("float32")[:, None, :, :], data.target
