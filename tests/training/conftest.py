"""Shared, session-scoped artifacts: one real training run and its export."""

from __future__ import annotations

import pytest

from bnserve.training.config import TrainConfig
from bnserve.training.export import ExportResult, export_run
from bnserve.training.train import TrainResult, train

# Short but real: the one-cycle schedule over 5 epochs reaches ~99% on digits in ~2 s.
SESSION_EPOCHS = 5


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    run_dir = tmp_path_factory.mktemp("run")
    return train(TrainConfig(epochs=SESSION_EPOCHS), run_dir, progress=False)


@pytest.fixture(scope="session")
def exported(trained_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    repository = tmp_path_factory.mktemp("models")
    return export_run(trained_run.run_dir, repository, "digits")
