"""Shared fixtures. Each test module starts at most one real server (module scope)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple

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


class Zoo(NamedTuple):
    """Every zoo model, trained and exported once per session (``zoo``)."""
    runs: dict[str, Path]  # kind -> run folder (checkpoint, held-out rows)
    repository: Path  # kind -> version 1, one model per zoo kind
    exports: dict[str, Any]  # kind -> bnserve.training.export.ExportResult


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    """The model zoo (mlp, cnn, audio, text, rnn), trained and exported once for every export
    and serving test: width 8, a dry run each on its default dataset, except ``text``, trained
    with its defaults (width 32, 10 epochs: ~87% val accuracy in about a second more), so its
    answers are right and the text tests can check labels."""
    from bnserve.training.config import DEFAULT_DATASETS, TrainConfig
    from bnserve.training.export import export_run
    from bnserve.training.train import train

    runs, exports = {}, {}
    repository = tmp_path_factory.mktemp("zoo")
    for kind in sorted(DEFAULT_DATASETS):
        runs[kind] = tmp_path_factory.mktemp(f"run-{kind}")
        config = TrainConfig(model=kind, dataset=DEFAULT_DATASETS[kind], width=8, dry_run=True)
        if kind == "text":
            config = TrainConfig(model=kind, dataset=DEFAULT_DATASETS[kind])
        train(config, runs[kind], progress=False)
        exports[kind] = export_run(runs[kind], repository, kind)
    return Zoo(runs, repository, exports)


@pytest.fixture(scope="session")
def text_repository(zoo: Zoo, tmp_path_factory) -> Path:
    """A repository holding only the zoo's text BatchNorm model (token ids in, 4 topics out,
    its tokenizer in the graph) as ``text`` version 1: a copy, so a server on it loads that
    one model."""
    root = tmp_path_factory.mktemp("text-models")
    shutil.copytree(zoo.repository / "text", root / "text")
    return root


@pytest.fixture(scope="session")
def topics_export(tmp_path_factory):
    """A tiny custom text classifier with labels, exported by ``export_module`` (once)."""
    from support.topics_model import export_topics

    return export_topics(tmp_path_factory.mktemp("topics-models"))
