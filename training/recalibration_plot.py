"""The recalibration report's figure: accuracy against the number of unlabeled samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(report: dict[str, Any], path: Path) -> None:
    """One panel per subject at the highest severity: each corruption's accuracy after
    recalibrating from n samples (solid), before (dotted, same colour), clean (black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = report["subjects"]
    sizes = report["config"]["sample_sizes"]
    top = max(report["config"]["severities"])
    fig, axes = plt.subplots(1, len(subjects), figsize=(6 * len(subjects), 4.2), squeeze=False)
    for ax, subject in zip(axes[0], subjects, strict=True):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        cells = [c for c in subject["cells"] if c["severity"] == top]
        for color, cell in zip(colors, cells, strict=False):
            ax.plot(sizes, [cell["after"][str(n)]["accuracy"] for n in sizes], "o-",
                    color=color, label=cell["corruption"])
            ax.axhline(cell["base_accuracy"], color=color, linestyle=":", linewidth=1)
        ax.axhline(subject["clean_accuracy"], color="black", linestyle="--", linewidth=1,
                   label="clean")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("unlabeled samples recalibrated on (n)")
        ax.set_ylabel("accuracy on the corrupted test split")
        ax.set_title(f"{subject['dataset']} ({subject['model']}), severity {top}; dotted: before")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
