"""``bnserve recalibration-report``: how much accuracy recalibration wins back, measured.

For each subject (the digits CNN, the audio 1-D CNN)::

    dataset --stratified split--> test (held out) | rest --train (val = calibration split)
        --export--> version 1 (model.onnx folded, unfolded.onnx, drift threshold)
    clean calibration split --calibrate_threshold--> alarm threshold (window 128, rate 0.01)
    clean test windows --> the monitor's false-alarm rate
    for each corruption x severity:
        base accuracy on the corrupted test split; drift of its windows
        for n in 8..256, several draws: n corrupted calibration rows (no labels)
            --Reestimator.reestimate (the server's engine)--> accuracy on the corrupted and
            on the clean test split, drift of the corrupted test windows after
    at the highest severity: the same for other prior strengths and with the input
    statistics kept (what the engine's defaults were chosen from)
    one recalibration per subject published and verified by recalibrate_version_folder

The evaluation feeds the new statistics to one onnxruntime session of the unfolded graph
(``FedSession``) instead of writing, refolding and loading a graph per draw; the published
one checks that the served, refolded graph answers the same.

Writes OUT/recalibration.md, recalibration.json, recalibration.png (runs and models go to a
temporary folder).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bnserve.repository.batchnorm import RowMoments
from bnserve.repository.drift import calibrate_threshold, window_scores
from bnserve.repository.layout import MODEL_FILE
from bnserve.server.fed_session import FedSession
from bnserve.server.recalibration import (
    DEFAULT_INPUT_STATISTICS,
    DEFAULT_PRIOR_STRENGTH,
    recalibrate_version_folder,
)
from bnserve.server.recalibration_source import locate_base
from bnserve.server.reestimate import Reestimator, Statistics
from bnserve.training.corruptions import AUDIO, IMAGE, Corruption

logger = logging.getLogger(__name__)

NAME = "recalibration"


@dataclass(frozen=True)
class Subject:
    dataset: str
    model: str
    corruptions: tuple[Corruption, ...]
    # digits reaches ~98% and audio ~95% in 10 epochs at width 16 (a few seconds each).
    epochs: int = 10
    width: int = 16


SUBJECTS = (Subject("digits", "cnn", IMAGE), Subject("audio", "audio", AUDIO))


@dataclass(frozen=True)
class ReportConfig:
    # Recalibration sample sizes: from a handful of requests to a full reservoir.
    sample_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    severities: tuple[int, ...] = (1, 2, 3)
    # Draws of n rows per cell, averaged: at n = 8 one draw's accuracy swings by points.
    repeats: int = 5
    # 30% held out for the test split: ~540 digits, ~420 clips, so 1 point is 5 rows.
    test_fraction: float = 0.3
    # Of the rest, the calibration split (training's val split, never trained on): >= 256
    # rows, the largest n, for both subjects.
    calibration_fraction: float = 0.3
    window_rows: int = 128  # the drift monitor's window and false-alarm rate
    false_alarm_rate: float = 0.01
    monitor_windows: int = 500  # bootstrap windows per drift figure
    # The defaults' ablation, at the highest severity: prior strengths N0 and input statistics.
    ablation_priors: tuple[float, ...] = (0.0, 8.0, 16.0, 32.0)
    ablation_sizes: tuple[int, ...] = (8, 16, 64)
    # The target: at the highest severity, averaged over the corruptions that shift the
    # statistics (the monitor flags most windows), the share of lost accuracy won back.
    target_rows: int = 64
    target_share: float = 0.5
    # A cell lost accuracy when the base model dropped at least this much below clean.
    min_loss: float = 0.05
    seed: int = 0
    threads: int = 2
    epochs: int | None = None  # None: each subject's own
    subjects: tuple[Subject, ...] = SUBJECTS


# Under a minute: 6 epochs (digits ~97%, audio ~85%), the highest severity, one draw.
DRY_RUN = ReportConfig(severities=(3,), repeats=1, monitor_windows=100, ablation_priors=(0.0, 8.0),
                       ablation_sizes=(16,), epochs=6)


def _concat(chunks: list[list[RowMoments]]) -> list[RowMoments]:
    return [RowMoments(np.concatenate([c.sum for c in layer]),
                       np.concatenate([c.sumsq for c in layer]), layer[0].positions)
            for layer in chunks]


class Bench:
    """One exported version's unfolded graph: statistics re-estimated and fed, never written."""

    def __init__(self, version_dir: Path, threads: int) -> None:
        base = locate_base(version_dir.parent.parent, version_dir.parent.name, int(version_dir.name))
        self.reestimator = Reestimator(base.reference, intra_op_threads=threads)
        self.outputs = FedSession(self.reestimator.model, list(self.reestimator.base.values()),
                                  intra_op_threads=threads)
        self.base = self.reestimator.base

    def accuracy(self, x: np.ndarray, y: np.ndarray, statistics: Statistics) -> float:
        scores = self.outputs.run({"input": x}, statistics.values())[self.outputs.output_names[0]]
        return float((scores.argmax(axis=1) == y).mean())

    def row_moments(self, x: np.ndarray, statistics: Statistics) -> list[RowMoments]:
        return _concat(self.reestimator.moments({"input": x}, statistics))


def _monitor(bench: Bench, x: np.ndarray, statistics: Statistics, threshold: float,
             config: ReportConfig, seed: int) -> dict[str, float]:
    scores = window_scores(statistics.layers, bench.row_moments(x, statistics),
                           config.window_rows, config.monitor_windows, seed=seed)
    return {"median": float(np.median(scores)), "alarm_rate": float((scores > threshold).mean())}


def _train_and_export(subject: Subject, config: ReportConfig, work: Path):
    from sklearn.model_selection import train_test_split

    from bnserve.training.config import TrainConfig
    from bnserve.training.datasets import load_dataset
    from bnserve.training.export import export_run
    from bnserve.training.train import load_training_data, split_dataset, train

    data = load_dataset(subject.dataset)
    x_rest, x_test, y_rest, y_test = train_test_split(
        data.x, data.y, test_size=config.test_fraction, stratify=data.y,
        random_state=config.seed)
    npz = work / f"{subject.dataset}.npz"
    np.savez(npz, x=x_rest, y=y_rest, labels=np.asarray(data.labels))
    train_config = TrainConfig(model=subject.model, data=str(npz),
                               epochs=config.epochs or subject.epochs, width=subject.width,
                               val_fraction=config.calibration_fraction, seed=config.seed,
                               num_threads=config.threads)
    result = train(train_config, work / f"run-{subject.dataset}", progress=False,
                   overwrite=True)  # the report's own work folder
    _, x_cal, _, _ = split_dataset(load_training_data(train_config), train_config.val_fraction,
                                   train_config.seed)
    exported = export_run(result.run_dir, work / "models", subject.dataset)
    return exported.path, x_cal, x_test, y_test, result.metrics["num_train"]


def _recovered(after: float, base: float, clean: float, config: ReportConfig) -> float | None:
    lost = clean - base
    return None if lost < config.min_loss else (after - base) / lost


def _subject(subject: Subject, config: ReportConfig, work: Path, bar: tqdm) -> dict[str, Any]:
    version_dir, x_cal, x_test, y_test, num_train = _train_and_export(subject, config, work)
    bench = Bench(version_dir, config.threads)
    base = bench.base
    calibration = calibrate_threshold(base.layers, bench.row_moments(x_cal, base),
                                      window_rows=config.window_rows,
                                      false_alarm_rate=config.false_alarm_rate, seed=config.seed)
    threshold = calibration.threshold
    clean = bench.accuracy(x_test, y_test, base)
    false_alarms = _monitor(bench, x_test, base, threshold, config, config.seed + 1)
    top = max(config.severities)
    cells, ablation = [], []
    for c_index, corruption in enumerate(subject.corruptions):
        for severity in config.severities:
            rng = np.random.default_rng([config.seed, c_index, severity])
            stream, test = corruption(x_cal, severity, rng), corruption(x_test, severity, rng)
            before = bench.accuracy(test, y_test, base)
            drift_before = _monitor(bench, test, base, threshold, config, config.seed + 2)
            picks = {n: [rng.choice(len(stream), size=n, replace=False)
                         for _ in range(config.repeats)] for n in config.sample_sizes}
            after: dict[str, Any] = {}
            for n in config.sample_sizes:
                accs, cleans, monitor = [], [], None
                for r, pick in enumerate(picks[n]):
                    new = bench.reestimator.reestimate(
                        {"input": stream[pick]}, prior_strength=DEFAULT_PRIOR_STRENGTH,
                        input_statistics=DEFAULT_INPUT_STATISTICS).new
                    accs.append(bench.accuracy(test, y_test, new))
                    cleans.append(bench.accuracy(x_test, y_test, new))
                    if r == 0:
                        monitor = _monitor(bench, test, new, threshold, config, config.seed + 3)
                mean = float(np.mean(accs))
                after[str(n)] = {"accuracy": mean, "accuracy_std": float(np.std(accs)),
                                 "clean_accuracy": float(np.mean(cleans)),
                                 "drift_median": monitor["median"],
                                 "alarm_rate": monitor["alarm_rate"],
                                 "recovered": _recovered(mean, before, clean, config)}
                bar.update(1)
            cells.append({"corruption": corruption.name, "severity": severity,
                          "parameter": corruption.levels[severity - 1],
                          "base_accuracy": before, "drift_before": drift_before,
                          "shifts_statistics": drift_before["alarm_rate"] >= 0.5,
                          "after": after})
            if severity == top:
                ablation += _ablation(bench, corruption.name, stream, test, y_test, picks, before,
                                      clean, config)
    published = _publish_one(bench, version_dir, subject, x_cal, x_test, y_test, config)
    return {"dataset": subject.dataset, "model": subject.model, "clean_accuracy": clean,
            "train_rows": num_train, "calibration_rows": len(x_cal), "test_rows": len(x_test),
            "threshold": threshold, "clean_false_alarm_rate": false_alarms["alarm_rate"],
            "clean_drift_median": false_alarms["median"], "cells": cells,
            "ablation": ablation, "published": published}


def _ablation(bench: Bench, corruption: str, stream: np.ndarray, test: np.ndarray,
              y_test: np.ndarray, picks: dict[int, list[np.ndarray]], before: float,
              clean: float, config: ReportConfig) -> list[dict[str, Any]]:
    rows = []
    for prior in config.ablation_priors:
        for input_statistics in (True, False):
            for n in config.ablation_sizes:
                accs = [bench.accuracy(test, y_test, bench.reestimator.reestimate(
                            {"input": stream[pick]}, prior_strength=prior,
                            input_statistics=input_statistics).new)
                        for pick in picks[n]]
                mean = float(np.mean(accs))
                rows.append({"corruption": corruption, "prior_strength": prior,
                             "input_statistics": "re-estimated" if input_statistics else "kept",
                             "n": n, "accuracy": mean,
                             "recovered": _recovered(mean, before, clean, config)})
    return rows


def _publish_one(bench: Bench, version_dir: Path, subject: Subject, x_cal: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray, config: ReportConfig) -> dict[str, Any]:
    """The full path once: recalibrate_version_folder publishes version 2 from n rows of the
    first corruption at the highest severity; its served graph answers as the fed one."""
    import onnxruntime as ort

    corruption, severity, n = subject.corruptions[0], max(config.severities), config.target_rows
    rng = np.random.default_rng([config.seed, 99])
    stream, test = corruption(x_cal, severity, rng), corruption(x_test, severity, rng)
    outcome = recalibrate_version_folder(version_dir.parent.parent, subject.dataset,
                                         {"input": stream[:n]}, source=f"report {corruption.name}")
    session = ort.InferenceSession(str(outcome.path / MODEL_FILE),
                                   providers=["CPUExecutionProvider"])
    served = float((session.run(None, {"input": test})[0].argmax(axis=1) == y_test).mean())
    return {"corruption": corruption.name, "severity": severity, "n": n,
            "version": outcome.version, "served_accuracy": served,
            "fed_accuracy": bench.accuracy(test, y_test, outcome.estimate.new),
            "verification": outcome.verification.to_dict(), "seconds": outcome.seconds}


def target_summary(subjects: list[dict[str, Any]], config: ReportConfig) -> dict[str, Any]:
    """At the highest severity, over the corruptions that shift the statistics and lost
    accuracy: the mean share won back from ``target_rows`` rows (and from fewer)."""
    top = max(config.severities)
    per_n: dict[str, list[float]] = {str(n): [] for n in config.sample_sizes}
    counted = []
    for subject in subjects:
        for cell in subject["cells"]:
            if cell["severity"] != top or not cell["shifts_statistics"]:
                continue
            if cell["after"][str(config.sample_sizes[0])]["recovered"] is None:
                continue  # nothing lost
            counted.append(f"{subject['dataset']}/{cell['corruption']}")
            for n, figures in cell["after"].items():
                per_n[n].append(figures["recovered"])
    means = {n: (float(np.mean(v)) if v else None) for n, v in per_n.items()}
    reached = means.get(str(config.target_rows))
    return {"severity": top, "cells": counted, "mean_recovered": means,
            "target_rows": config.target_rows, "target_share": config.target_share,
            "met": reached is not None and reached >= config.target_share}


def recalibration_report(out: Path | str, *, dry_run: bool = False,
                         config: ReportConfig | None = None, progress: bool = True
                         ) -> dict[str, Any]:
    """Run the report into ``out``; returns what recalibration.json holds."""
    from bnserve.training.recalibration_plot import plot_report
    from bnserve.training.recalibration_table import format_report

    config = config or (DRY_RUN if dry_run else ReportConfig())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    steps = sum(len(s.corruptions) for s in config.subjects) * len(config.severities) * len(
        config.sample_sizes)
    subjects = []
    # Run folders and the models repository are scaffolding: only the report stays in OUT.
    with tempfile.TemporaryDirectory(prefix="bnserve-report-") as work, \
            tqdm(total=steps, desc="recalibration report", unit="cell",
                 disable=not progress) as bar:
        for subject in config.subjects:
            bar.set_postfix(subject=subject.dataset)
            subjects.append(_subject(subject, config, Path(work), bar))
    report = {"config": _config_dict(config, dry_run), "subjects": subjects,
              "target": target_summary(subjects, config),
              "seconds": round(time.perf_counter() - start, 1)}
    (out / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{NAME}.md").write_text(format_report(report) + "\n")
    plot_report(report, out / f"{NAME}.png")
    return report


def _config_dict(config: ReportConfig, dry_run: bool) -> dict[str, Any]:
    values = asdict(replace(config, subjects=()))
    values["subjects"] = [{"dataset": s.dataset, "model": s.model, "epochs": config.epochs or s.epochs,
                           "width": s.width,
                           "corruptions": {c.name: list(c.levels) for c in s.corruptions}}
                          for s in config.subjects]
    values.update(dry_run=dry_run, prior_strength=DEFAULT_PRIOR_STRENGTH,
                  input_statistics=("re-estimated" if DEFAULT_INPUT_STATISTICS else "kept"))
    return values
