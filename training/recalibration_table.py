"""The recalibration report as markdown: one table per subject, the defaults' ablation, the
target's verdict (``recalibration_report`` computes; this only formats)."""

from __future__ import annotations

from typing import Any


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _subject_table(subject: dict[str, Any], sizes: list[str], target: str) -> list[str]:
    head = (["corruption", "sev", "base"] + [f"n={n}" for n in sizes]
            + [f"clean after (n={target})", f"drift before -> after (n={target})",
               f"alarms before -> after (n={target})"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in subject["cells"]:
        chosen = cell["after"][target]
        row = [cell["corruption"] + ("" if cell["shifts_statistics"] else " (not flagged)"),
               str(cell["severity"]), _pct(cell["base_accuracy"])]
        row += [_pct(cell["after"][n]["accuracy"]) for n in sizes]
        row += [_pct(chosen["clean_accuracy"]),
                f"{cell['drift_before']['median']:.4f} -> {chosen['drift_median']:.4f}",
                f"{cell['drift_before']['alarm_rate']:.0%} -> {chosen['alarm_rate']:.0%}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _ablation_table(subject: dict[str, Any]) -> list[str]:
    """Mean share of lost accuracy won back, over the corruptions that lost some."""
    groups: dict[tuple[float, str, int], list[float]] = {}
    for row in subject["ablation"]:
        if row["recovered"] is not None:
            groups.setdefault((row["prior_strength"], row["input_statistics"], row["n"]),
                              []).append(row["recovered"])
    sizes = sorted({key[2] for key in groups})
    lines = ["| prior N0 | input statistics | " + " | ".join(f"n={n}" for n in sizes) + " |",
             "|" + "---|" * (2 + len(sizes))]
    for prior, inputs in sorted({key[:2] for key in groups}, key=lambda k: (k[0], k[1] != "re-estimated")):
        cells = []
        for n in sizes:
            values = groups.get((prior, inputs, n), [])
            cells.append(f"{sum(values) / len(values):.0%}" if values else "-")
        lines.append(f"| {prior:g} | {inputs} | " + " | ".join(cells) + " |")
    return lines


def format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    sizes = [str(n) for n in config["sample_sizes"]]
    target = str(config["target_rows"])
    lines = [
        "# BatchNorm recalibration with onnxruntime: accuracy won back",
        "",
        f"Defaults: prior strength N0 = {config['prior_strength']:g}, input statistics "
        f"{config['input_statistics']}; {config['repeats']} draws of n unlabeled corrupted "
        "calibration rows per cell (mean accuracy on the corrupted test split). Drift: "
        f"median window score (gaussian_kl, windows of {config['window_rows']} test rows); "
        "alarms: share of those windows above the threshold calibrated on the clean "
        f"calibration split (false-alarm rate {config['false_alarm_rate']:g}). "
        "\"not flagged\": the monitor flags under half of its windows.",
    ]
    for subject in report["subjects"]:
        published = subject["published"]
        lines += [
            "",
            f"## {subject['dataset']} ({subject['model']}): clean test accuracy "
            f"{subject['clean_accuracy']:.1%}",
            "",
            f"{subject['train_rows']} training, {subject['calibration_rows']} calibration, "
            f"{subject['test_rows']} test rows. Alarm threshold {subject['threshold']:.4f}; "
            f"clean test windows above it: {subject['clean_false_alarm_rate']:.1%} (median "
            f"score {subject['clean_drift_median']:.4f}).",
            "",
            *_subject_table(subject, sizes, target),
            "",
            "Share of the lost accuracy won back at the highest severity (corruptions that "
            "lost some), by prior strength and input statistics:",
            "",
            *_ablation_table(subject),
            "",
            f"Published through `recalibrate_version_folder` ({published['corruption']}, "
            f"severity {published['severity']}, n={published['n']}): version "
            f"{published['version']}, served graph {published['served_accuracy']:.1%} vs fed "
            f"statistics {published['fed_accuracy']:.1%}; refolded vs unfolded max |diff| "
            f"{published['verification']['parity_max_abs_diff']:.1e}.",
        ]
    t = report["target"]
    shares = ", ".join(f"n={n}: {_pct(v)}" for n, v in t["mean_recovered"].items())
    lines += [
        "",
        "## Target",
        "",
        f"At severity {t['severity']}, over the corruptions the monitor flags that lost "
        f"accuracy ({', '.join(t['cells']) or 'none'}), mean share of the lost accuracy "
        f"won back: {shares}. Target: at least {t['target_share']:.0%} from "
        f"{t['target_rows']} samples: {'met' if t['met'] else 'NOT met'}.",
        "",
        f"({report['seconds']:.0f} s)",
    ]
    return "\n".join(lines)
