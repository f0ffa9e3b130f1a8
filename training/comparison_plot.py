"""Draw a BatchNorm comparison: val accuracy and val loss per epoch, one line per run.

One row of two panels per peak learning rate; BatchNorm runs in blue, no-BatchNorm runs in
orange, one line per seed, the target accuracy dashed. (matplotlib's Agg canvas: no pyplot.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnserve.training.compare import ComparisonRun

COLORS = {"batch": "tab:blue", "none": "tab:orange"}
LABELS = {"batch": "BatchNorm", "none": "no BatchNorm"}


def plot_comparison(runs: Sequence[ComparisonRun], path: Path, *, target: float,
                    title: str) -> None:
    """Write the figure for ``runs`` (in any order) as a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lrs = list(dict.fromkeys(r.lr for r in runs))
    fig = Figure(figsize=(10, 3.4 * len(lrs) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(lrs), 2, squeeze=False)
    for (acc_ax, loss_ax), lr in zip(axes, lrs, strict=True):
        labelled: set[str] = set()
        for run in (r for r in runs if r.lr == lr):
            epochs = [h["epoch"] for h in run.history]
            label = None if run.norm in labelled else LABELS.get(run.norm, run.norm)
            labelled.add(run.norm)
            style = {"color": COLORS.get(run.norm), "marker": "o", "markersize": 3,
                     "linewidth": 1.2, "alpha": 0.8}
            acc_ax.plot(epochs, [h["val_accuracy"] for h in run.history], label=label, **style)
            loss_ax.plot(epochs, [h["val_loss"] for h in run.history], label=label, **style)
        acc_ax.axhline(target, color="gray", linestyle="--", linewidth=1,
                       label=f"target {target:.0%}")
        acc_ax.set(xlabel="epoch", ylabel="val accuracy", ylim=(0, 1.01),
                   title=f"val accuracy, peak lr {lr:g}")
        loss_ax.set(xlabel="epoch", ylabel="val cross-entropy (log)", yscale="log",
                    title=f"val loss, peak lr {lr:g}")
        for ax in (acc_ax, loss_ax):
            ax.grid(alpha=0.3)
    # One legend for every panel, below them, where it hides no line.
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    fig.suptitle(f"{title} (one line per seed)")
    fig.savefig(path, dpi=100)
