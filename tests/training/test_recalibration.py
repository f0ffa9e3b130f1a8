"""Recalibration with the torch engine: shifted digits lose their accuracy; recalibrating wins it back.

The shift halves the contrast and brightens the background (x' = 0.5 x + 6, range 6..14).
The model is recalibrated on the shifted training-split images (inputs only) and scored,
through onnxruntime, on the shifted held-out split it never saw.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.config import TrainConfig
from bnserve.training.datasets import InputStatistics, load_dataset
from bnserve.training.errors import RecalibrationError
from bnserve.training.recalibrate import recalibrate_batchnorm, recalibrate_checkpoint
from bnserve.training.republish import accuracy, load_recalibration_data, recalibrate_version
from bnserve.training.train import split_dataset
from support.cli import CliResult, run_cli, run_cli_in_process

CONTRAST, OFFSET = 0.5, 6.0
STAT_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def shift(x: np.ndarray) -> np.ndarray:
    return np.clip(CONTRAST * x + OFFSET, 0.0, 16.0).astype(np.float32)


def onnx_accuracy(version_dir: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(version_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(axis=1) == y).mean())


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@dataclass(frozen=True)
class Published:
    repository: Path
    npz: Path
    x_recal: np.ndarray  # shifted training-split images: what recalibration sees
    x_test: np.ndarray  # shifted held-out images
    y_test: np.ndarray
    x_clean: np.ndarray  # the same held-out images, unshifted
    source_hashes_before: dict[str, str]
    cli: CliResult  # -> version 2: all statistics re-estimated
    bn_only_version: int  # -> version 3, Python API: input statistics kept from training

    def version(self, v: int) -> Path:
        return self.repository / "digits" / str(v)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, digits_repository: Path) -> Published:
    root = tmp_path_factory.mktemp("recalibration")
    repository = root / "models"
    # The session's digits CNN (TrainConfig's split; with checkpoint.pt, which the torch
    # engine rebuilds from), copied: this module publishes versions next to it.
    shutil.copytree(digits_repository, repository)
    source = repository / "digits" / "1"
    config = TrainConfig()
    x_train, x_val, y_train, y_val = split_dataset(load_dataset("digits"), config.val_fraction,
                                                   config.seed)
    npz = root / "shifted.npz"
    np.savez(npz, x=shift(x_train), y=y_train)  # y only makes the CLI report accuracy
    hashes = file_hashes(source)

    cli = run_cli("--log-level", "WARNING", "recalibrate", "--engine", "torch", "--model",
                  "digits", "--data", npz, "--repository", repository, timeout=240)
    bn_only = recalibrate_version(repository, "digits", shift(x_train), version=1,
                                  keep_input_statistics=True)
    return Published(repository, npz, shift(x_train), shift(x_val), y_val, x_val, hashes, cli,
                     bn_only.export.version)


def test_recalibrate_cli_wins_back_accuracy_on_shifted_digits(published: Published) -> None:
    p = published
    assert p.cli.returncode == 0, p.cli.stderr
    assert "recalibrated digits version 1 on 1437 samples of shifted.npz" in p.cli.stdout
    assert "accuracy on the given labels:" in p.cli.stdout
    assert "exported digits version 2" in p.cli.stdout
    assert "onnx.checker:        passed" in p.cli.stdout

    clean = onnx_accuracy(p.version(1), p.x_clean, p.y_test)
    before = onnx_accuracy(p.version(1), p.x_test, p.y_test)
    after = onnx_accuracy(p.version(2), p.x_test, p.y_test)
    bn_only = onnx_accuracy(p.version(p.bn_only_version), p.x_test, p.y_test)
    figures = (f"held-out digits, onnxruntime: clean {clean:.1%}; shifted (x' = {CONTRAST} x + "
               f"{OFFSET}): before {before:.1%}, after recalibrating BatchNorm only "
               f"{bn_only:.1%}, after BatchNorm + input statistics {after:.1%}")
    assert clean >= 0.95 and before <= 0.5, figures  # the shift really hurts
    assert bn_only >= before + 0.4 and bn_only >= 0.9, figures  # BatchNorm absorbs most of it
    assert after >= before + 0.4 and after >= clean - 0.03, figures  # the rest: input stats


def test_only_statistics_change_weights_stay_bit_identical(published: Published) -> None:
    source = load_checkpoint(published.version(1))
    for version in (2, published.bn_only_version):
        new = load_checkpoint(published.version(version))
        assert new.state_dict.keys() == source.state_dict.keys()
        stats = [k for k in source.state_dict if k.endswith(STAT_SUFFIXES)]
        weights = [k for k in source.state_dict if not k.endswith(STAT_SUFFIXES)]
        assert len(stats) == 7 * 3 and any(k.endswith(".weight") for k in weights)
        same = [k for k in weights if torch.equal(new.state_dict[k], source.state_dict[k])]
        assert same == weights, f"version {version}: weights changed"
        moved = [k for k in stats if not torch.equal(new.state_dict[k], source.state_dict[k])]
        assert "stem.1.running_mean" in moved and "stem.1.running_var" in moved

    kept = load_checkpoint(published.version(published.bn_only_version)).statistics
    refit = load_checkpoint(published.version(2)).statistics
    assert np.array_equal(kept.mean, source.statistics.mean)
    assert np.array_equal(kept.std, source.statistics.std)
    want = InputStatistics.from_data(published.x_recal)
    assert np.array_equal(refit.mean, want.mean) and np.array_equal(refit.std, want.std)


def test_source_version_untouched_and_card_records_the_recalibration(published: Published) -> None:
    p = published
    assert file_hashes(p.version(1)) == p.source_hashes_before
    source_card = json.loads((p.version(1) / "metadata.json").read_text())
    card = json.loads((p.version(2) / "metadata.json").read_text())
    record = card["metrics"]["recalibration"]
    assert record["source_version"] == 1
    assert record["source_sha256"] == source_card["sha256"]
    assert record["data_sha256"] == hashlib.sha256(p.npz.read_bytes()).hexdigest()
    assert record["num_samples"] == len(p.x_recal) == 1437
    assert record["input_statistics"] == "re-estimated"
    assert record["accuracy_after"] > record["accuracy_before"]
    assert [layer["name"] for layer in record["layers"]][0] == "stem.1"
    assert card["metrics"]["final"] == source_card["metrics"]["final"]  # training figures kept
    assert "recalibration" not in source_card["metrics"]
    bn_only = json.loads((p.version(p.bn_only_version) / "metadata.json").read_text())
    assert bn_only["metrics"]["recalibration"]["input_statistics"] == "kept from training"
    assert bn_only["metrics"]["recalibration"]["accuracy_before"] is None  # no labels given


def test_labels_play_no_part(published: Published) -> None:
    """The CLI had labels in its npz; recalibrating the same inputs without them is identical."""
    data = load_recalibration_data(published.npz)
    assert data.y is not None
    again, _ = recalibrate_checkpoint(load_checkpoint(published.version(1)), data.x)
    cli = load_checkpoint(published.version(2)).state_dict
    for key, value in again.state_dict.items():
        torch.testing.assert_close(value, cli[key], rtol=1e-5, atol=1e-6)


def blur(x: np.ndarray) -> np.ndarray:
    """Each pixel averaged with its 4 neighbours (zero outside the image): (N, 1, 8, 8)."""
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return ((p[..., 1:-1, 1:-1] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2]
             + p[..., 1:-1, 2:]) / 5).astype(np.float32)


def test_batchnorm_recovers_what_input_statistics_cannot(published: Published) -> None:
    """Blur keeps the mean and shrinks the std a little; the features deeper in change more."""
    config = TrainConfig()
    x_train, x_val, _, y_val = split_dataset(load_dataset("digits"), config.val_fraction,
                                             config.seed)
    source = load_checkpoint(published.version(1))
    inputs_only = replace(source, statistics=InputStatistics.from_data(blur(x_train)))
    full, _ = recalibrate_checkpoint(source, blur(x_train))
    before, after_inputs, after = (accuracy(c, blur(x_val), y_val)
                                   for c in (source, inputs_only, full))
    figures = (f"held-out blurred digits, PyTorch: before {before:.1%}, input statistics "
               f"re-estimated {after_inputs:.1%}, BatchNorm as well {after:.1%}")
    assert after >= before + 0.1 and after >= after_inputs + 0.04, figures


def test_statistics_are_the_plain_average_with_dropout_off() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9), nn.BatchNorm1d(3, momentum=0.1))
    x = torch.randn(512, 4) * 3 + 5  # (N, 4)
    with torch.no_grad():
        features = model[0](x)  # (N, 3): what BatchNorm sees when dropout is off
    weight = model[0].weight.clone()

    report = recalibrate_batchnorm(model, x, batch_size=128)  # 4 equal batches
    bn = model[2]
    assert report.num_batches == 4 and report.num_samples == 512
    torch.testing.assert_close(bn.running_mean, features.mean(dim=0), rtol=0, atol=1e-5)
    assert not model.training and not bn.training and bn.momentum == 0.1
    assert torch.equal(model[0].weight, weight)

    recalibrate_batchnorm(model, x, batch_size=512)  # one batch: the unbiased variance
    torch.testing.assert_close(bn.running_var, features.var(dim=0), rtol=1e-5, atol=1e-5)

    alone = nn.BatchNorm1d(4)  # the model is the BatchNorm layer itself
    report = recalibrate_batchnorm(alone, x)
    torch.testing.assert_close(alone.running_mean, x.mean(dim=0), rtol=0, atol=1e-5)
    assert report.layers[0].name == "" and report.layers[0].mean_shift > 1


def test_refusals_leave_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bad = torch.randn(64, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(RecalibrationError, match="NaN"):
        recalibrate_batchnorm(model, bad)
    with pytest.raises(RecalibrationError, match="at least 2 samples"):
        recalibrate_batchnorm(model, torch.randn(1, 4))
    with pytest.raises(RecalibrationError, match="no BatchNorm"):
        recalibrate_batchnorm(nn.Linear(4, 3), torch.randn(8, 4))

    class Drifting(nn.Module):  # a module that (wrongly) updates a weight in its forward
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.bn = nn.Linear(4, 3), nn.BatchNorm1d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.linear.bias.add_(1.0)
            return self.bn(self.linear(x))

    drifting = Drifting()
    drift_state = {k: v.clone() for k, v in drifting.state_dict().items()}
    with pytest.raises(RecalibrationError, match="linear.bias"):
        recalibrate_batchnorm(drifting, torch.randn(8, 4))
    for key, value in drifting.state_dict().items():
        assert torch.equal(value, drift_state[key]), key
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_data_that_does_not_fit_is_refused(published: Published, tmp_path: Path) -> None:
    ckpt = load_checkpoint(published.version(1))
    with pytest.raises(RecalibrationError, match=r"the model takes \(N, 1, 8, 8\)"):
        recalibrate_checkpoint(ckpt, published.x_recal[:, 0])  # (N, 8, 8): no channel axis
    np.savez(tmp_path / "no_x.npz", images=published.x_recal)
    with pytest.raises(RecalibrationError, match="has no array 'x'"):
        load_recalibration_data(tmp_path / "no_x.npz")
    with pytest.raises(RecalibrationError, match="no version 9"):
        recalibrate_version(published.repository, "digits", published.x_recal, version=9)

    before = sorted(p.name for p in (published.repository / "digits").iterdir())
    cli = run_cli_in_process("recalibrate", "--engine", "torch", "--model", "digits", "--data",
                             tmp_path / "no_x.npz", "--repository", published.repository)
    assert cli.returncode == 1 and "has no array 'x'" in cli.stderr, cli.stderr
    assert "nothing was written" in cli.stderr and "Traceback" not in cli.stderr
    assert sorted(p.name for p in (published.repository / "digits").iterdir()) == before
