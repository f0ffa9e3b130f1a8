"""A published version folder holds no training data: the run's validation rows (export's
checks, the drift threshold's calibration) stay in the run folder, and --include-checkpoint
publishes weights and statistics only, which the torch recalibration engine still works from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.errors import ExportError, RecalibrationError
from bnserve.training.export import ExportResult, export_run
from bnserve.training.republish import recalibrate_version
from bnserve.training.train import TrainResult
from support.cli import run_cli_in_process


def holds_rows(folder: Path, rows: np.ndarray) -> list[str]:
    """Files of ``folder`` whose bytes contain any of ``rows`` (each row's raw bytes)."""
    return [p.name for p in sorted(folder.iterdir())
            if any(row.tobytes() in p.read_bytes() for row in rows)]


def test_export_publishes_no_rows_and_still_calibrates_drift(trained_run: TrainResult,
                                                             exported: ExportResult) -> None:
    ckpt = load_checkpoint(trained_run.run_dir)  # the run folder keeps them
    assert len(ckpt.samples) == 64 and ckpt.held_out is not None
    assert sorted(p.name for p in exported.path.iterdir()) == ["metadata.json", "model.onnx",
                                                               "unfolded.onnx"]
    assert holds_rows(exported.path, ckpt.samples[:8]) == []
    drift = exported.card["drift"]  # calibrated on the held-out rows read from the run
    assert drift["calibration"]["held_out_rows"] == len(ckpt.held_out)
    assert exported.card["verification"]["failures"] == []


def test_include_checkpoint_publishes_weights_without_rows_for_the_torch_engine(
        trained_run: TrainResult, exported: ExportResult, tmp_path: Path) -> None:
    run_ckpt = load_checkpoint(trained_run.run_dir)
    repository = tmp_path / "models"
    done = run_cli_in_process("export", "--run-dir", trained_run.run_dir, "--repository",
                              repository, "--name", "digits", "--include-checkpoint")
    assert done.returncode == 0, done.stderr
    version = repository / "digits" / "1"
    published = load_checkpoint(version)
    assert published.samples.shape == (0, 1, 8, 8) and published.held_out is None
    assert all(torch.equal(published.state_dict[k], v) for k, v in run_ckpt.state_dict.items())
    assert holds_rows(version, run_ckpt.samples[:8]) == []
    with pytest.raises(ExportError, match="holds no validation rows .* export from the run "
                                          "folder"):
        export_run(version, tmp_path / "other", "digits")

    # The torch engine rebuilds from it; the new version carries a row-free one as well.
    shifted = run_ckpt.held_out[:256] * 0.5 + 6.0  # (256, 1, 8, 8) raw digits, shifted
    result = recalibrate_version(repository, "digits", shifted)
    assert result.export.version == 2 and result.export.report.ok
    again = load_checkpoint(repository / "digits" / "2")
    assert len(again.samples) == 0 and again.held_out is None
    assert holds_rows(repository / "digits" / "2", shifted[:8]) == []

    # A version exported without it: the torch engine says how to get one.
    without = exported.path.parent.parent
    with pytest.raises(RecalibrationError, match="has no checkpoint.pt.*--engine onnxruntime.*"
                                                 "--include-checkpoint"):
        recalibrate_version(without, "digits", shifted)
