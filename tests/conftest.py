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


@pytest.fixture(scope="session")
def text_repository(tmp_path_factory) -> Path:
    """A repository holding the zoo's text BatchNorm model (token ids in, 4 topics out),
    trained for a dry run and exported once per session as ``text`` version 1."""
    from bnserve.training.config import TrainConfig
    from bnserve.training.export import export_run
    from bnserve.training.train import train

    run_dir = tmp_path_factory.mktemp("run-text")
    train(TrainConfig(model="text", dataset="text", width=8, dry_run=True), run_dir,
          progress=False)
    root = tmp_path_factory.mktemp("text-models")
    export_run(run_dir, root, "text")
    return root


@pytest.fixture(scope="session")
def topics_export(tmp_path_factory):
    """A tiny custom text classifier with labels, exported by ``export_module`` (once)."""
    from support.topics_model import export_topics

    return export_topics(tmp_path_factory.mktemp("topics-models"))
