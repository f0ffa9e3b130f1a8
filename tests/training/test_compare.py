"""`bnserve compare`: the same model with and without BatchNorm, same seeds, one table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.compare import (
    ComparisonResult,
    VariantSummary,
    compare_batchnorm,
    epochs_to_target,
)
from bnserve.training.config import TrainConfig
from bnserve.training.models import batchnorm_layers
from support.cli import run_cli, run_cli_in_process

SEEDS, LRS = (0, 1), (0.003, 0.03)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def history(*accuracies: float) -> list[dict[str, float]]:
    return [{"epoch": i, "val_accuracy": a, "val_loss": 1 - a} for i, a in enumerate(accuracies, 1)]


def summary(*reached: int | None) -> VariantSummary:
    n = len(reached)
    return VariantSummary(norm="batch", lr=0.01, seeds=tuple(range(n)), epochs_to_target=reached,
                          final_accuracy=(0.9,) * n, best_accuracy=(0.9,) * n,
                          seconds_per_epoch=0.1, time_ratio=1.0)


def test_epochs_to_target_is_the_first_epoch_at_or_above_it() -> None:
    assert epochs_to_target(history(0.4, 0.8, 0.95, 0.91, 0.97), 0.95) == 3  # a later dip is ignored
    assert epochs_to_target(history(0.4, 0.8, 0.94, 0.949), 0.95) is None
    assert epochs_to_target(history(0.96), 0.95) == 1
    assert epochs_to_target([], 0.95) is None


def test_median_counts_a_seed_that_never_reached_the_target_as_infinitely_late() -> None:
    assert summary(3, 5, 4).median_epochs_to_target == 4
    assert summary(3, None, 5).median_epochs_to_target == 5
    assert summary(2, 5).median_epochs_to_target == 3.5
    assert summary(3, None, None).median_epochs_to_target is None


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> ComparisonResult:
    # Dry runs reach ~10-20% val accuracy in their one epoch, so a 5% target is met at epoch 1.
    return compare_batchnorm(TrainConfig(dry_run=True, width=8), tmp_path_factory.mktemp("compare"),
                             seeds=SEEDS, lrs=LRS, target_accuracy=0.05, progress=False)


def test_writes_json_table_and_plot_with_a_row_per_variant_and_lr(comparison: ComparisonResult) -> None:
    out = comparison.out_dir
    assert (out / "comparison.png").read_bytes()[:8] == PNG_SIGNATURE
    table = (out / "comparison.md").read_text()
    assert table == comparison.table
    rows = [line for line in table.splitlines() if line.startswith(("| batch ", "| none "))]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| batch", "0.003"], ["| none", "0.003"], ["| batch", "0.03"], ["| none", "0.03"]]
    assert all(row.split(" | ")[2] == "1 (1, 1)" for row in rows)  # epochs to the 5% target

    document = json.loads((out / "comparison.json").read_text())
    assert document["dataset"] == "digits" and document["target_accuracy"] == 0.05
    assert [(s["norm"], s["lr"]) for s in document["summaries"]] == [
        ("batch", 0.003), ("none", 0.003), ("batch", 0.03), ("none", 0.03)]
    assert len(document["runs"]) == len(SEEDS) * len(LRS) * 2
    for run in document["runs"]:
        assert (out / run["run_dir"] / "checkpoint.pt").is_file()
        assert run["epochs_to_target"] == 1 and len(run["history"]) == 1


def test_the_no_batchnorm_runs_really_have_no_batchnorm(comparison: ComparisonResult) -> None:
    for run in comparison.runs:
        model = load_checkpoint(comparison.out_dir / run.run_dir).build()
        assert (len(batchnorm_layers(model)) > 0) == (run.norm == "batch"), run.run_dir


def test_both_variants_of_a_seed_see_the_same_split(comparison: ComparisonResult) -> None:
    def checkpoint(norm: str, lr: float, seed: int):
        run = next(r for r in comparison.runs if (r.norm, r.lr, r.seed) == (norm, lr, seed))
        return load_checkpoint(comparison.out_dir / run.run_dir)

    for lr in LRS:
        for seed in SEEDS:
            bn, plain = checkpoint("batch", lr, seed), checkpoint("none", lr, seed)
            # The same seed (hence split, shuffling) and hyperparameters; only norm differs.
            assert {k for k in bn.config if bn.config[k] != plain.config[k]} == {"norm"}
            assert (bn.config["seed"], bn.config["lr"]) == (seed, lr)
            np.testing.assert_array_equal(bn.samples, plain.samples)  # the first val rows
            np.testing.assert_array_equal(bn.statistics.mean, plain.statistics.mean)
    assert not np.array_equal(checkpoint("batch", LRS[0], 0).samples,
                              checkpoint("batch", LRS[0], 1).samples)


def test_time_per_epoch_is_measured_and_compared_to_no_batchnorm(comparison: ComparisonResult) -> None:
    assert all(s > 0 for run in comparison.runs for s in run.epoch_seconds)
    assert all(run.train_seconds > 0 for run in comparison.runs)
    for lr in LRS:
        bn, plain = comparison.summary("batch", lr), comparison.summary("none", lr)
        assert bn.seconds_per_epoch > 0 and plain.time_ratio == 1.0
        assert bn.time_ratio == pytest.approx(bn.seconds_per_epoch / plain.seconds_per_epoch)
        assert bn.seeds == plain.seeds == SEEDS


@pytest.mark.parametrize("options", [{"seeds": ()}, {"seeds": (1, 1)}, {"target_accuracy": 1.5}])
def test_refuses_bad_options_before_training(tmp_path: Path, options: dict) -> None:
    with pytest.raises(ValueError):
        compare_batchnorm(TrainConfig(dry_run=True), tmp_path, progress=False, **options)
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_the_table_and_writes_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "compare"
    done = run_cli("compare", "--model", "mlp", "--dataset", "breast_cancer", "--out", out,
                   "--seeds", "3", "--target", "0.999", "--width", "8", "--dry-run", timeout=240)
    assert done.returncode == 0, done.stderr
    assert "mlp on breast_cancer, 1 dry-run epoch, seeds 3" in done.stdout
    assert "| batch | 0.003 | not reached (–) |" in done.stdout
    assert "| none | 0.003 | not reached (–) |" in done.stdout
    assert "compare mlp" in done.stderr  # the tqdm bar
    assert {p.name for p in out.iterdir()} == {"comparison.json", "comparison.md", "comparison.png",
                                               "runs"}
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["batch-lr0.003-seed3",
                                                                "none-lr0.003-seed3"]

    refused = run_cli_in_process("compare", "--out", out, "--seeds", "0,0")
    assert refused.returncode == 2 and "repeated value" in refused.stderr
