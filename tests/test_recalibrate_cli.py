"""``bnserve recalibrate`` with its default engine, onnxruntime, in a process where torch (and
the rest of the training extra) cannot be imported: the serving image's situation."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from support.cli import CliResult, run_cli

WITHOUT_TRAINING = r"""
import importlib.abc, sys
BLOCKED = {"torch", "sklearn", "tqdm", "matplotlib"}

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
"""


def bnserve(*args: object) -> CliResult:
    """``bnserve recalibrate ...`` where the training extra cannot be imported."""
    return run_cli("--log-level", "WARNING", *map(str, args), before=WITHOUT_TRAINING,
                   timeout=180)


def accuracy_line(stdout: str) -> tuple[float, float]:
    found = re.search(r"accuracy on the given labels: ([\d.]+)% -> ([\d.]+)%", stdout)
    assert found, stdout
    return float(found.group(1)) / 100, float(found.group(2)) / 100


@pytest.fixture(scope="module")
def setup(digits_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("recalibrate-cli")
    models = root / "models"
    shutil.copytree(digits_repository, models)
    data = load_digits()
    x = data.images.astype(np.float32)[:, None]
    x_train, _, y_train, _ = train_test_split(x, data.target, test_size=0.2,
                                              stratify=data.target, random_state=0)
    shifted = np.clip(0.5 * x_train + 6, 0, 16)  # float64: the CLI casts to the model's FP32
    np.savez(root / "shifted.npz", x=shifted, y=y_train)
    np.save(root / "shifted.npy", shifted[:64])
    return root, models


def test_recalibrate_runs_without_torch_and_wins_back_accuracy(setup):
    root, models = setup
    done = bnserve("recalibrate", "--model", "digits", "--data", root / "shifted.npz",
                   "--repository", models)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "recalibrated digits version 1 on 1437 samples of shifted.npz" in out
    assert "with onnxruntime" in out and "input statistics re-estimated" in out
    before, after = accuracy_line(out)
    assert before <= 0.5 and after >= 0.9, out
    assert "published digits version 2" in out and "onnx.checker:        passed" in out
    assert "model.onnx, unfolded.onnx and metadata.json" in out
    record = json.loads((models / "digits" / "2" / "metadata.json").read_text())["recalibration"]
    assert record["data"]["source"] == "file shifted.npz" and record["num_samples"] == 1437


def test_npy_prior_and_kept_input_statistics_start_from_the_base(setup):
    root, models = setup
    done = bnserve("recalibrate", "--model", "digits", "--data", root / "shifted.npy",
                   "--repository", models, "--prior-strength", "16", "--keep-input-statistics")
    assert done.returncode == 0, done.stderr
    latest = max(int(p.name) for p in (models / "digits").iterdir() if p.name.isdigit())
    assert f"published digits version {latest}" in done.stdout
    assert "(from its base version 1" in done.stdout  # the latest was a recalibration
    record = json.loads((models / "digits" / str(latest) / "metadata.json").read_text())
    assert record["recalibration"]["prior_strength"] == 16
    assert record["recalibration"]["input_statistics"] == "kept"
    assert record["recalibration"]["base_version"] == 1
    assert "accuracy on the given labels" not in done.stdout  # a .npy has no labels


def test_refusals_are_one_line_and_write_nothing(setup, tmp_path):
    _, models = setup
    before = sorted(p.name for p in (models / "digits").iterdir())
    np.savez(tmp_path / "images.npz", images=np.zeros((8, 1, 8, 8), np.float32))
    done = bnserve("recalibrate", "--model", "digits", "--data", tmp_path / "images.npz",
                   "--repository", models)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "images.npz has no array 'input'" in done.stderr
    assert "nothing was written" in done.stderr
    np.save(tmp_path / "rows.npy", np.zeros((8, 64), np.float32))
    done = bnserve("recalibrate", "--model", "digits", "--data", tmp_path / "rows.npy",
                   "--repository", models)
    assert done.returncode == 1 and "shape [8, 64], expected [N, 1, 8, 8]" in done.stderr
    torch_prior = run_cli("recalibrate", "--engine", "torch", "--model", "digits", "--data",
                          tmp_path / "rows.npy", "--prior-strength", "4")
    assert torch_prior.returncode == 2 and "--prior-strength needs --engine onnxruntime" in \
        torch_prior.stderr
    assert sorted(p.name for p in (models / "digits").iterdir()) == before
