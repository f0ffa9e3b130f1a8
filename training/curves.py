"""Draw the training curves of a run (matplotlib's Agg canvas: no display, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path, *, title: str,
                         kept_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch, train against validation, side by side, as a PNG;
    ``kept_epoch`` (the one whose weights the checkpoint holds) marked on both."""
    training_figure(history, title=title, kept_epoch=kept_epoch).savefig(path, dpi=100)


def training_figure(history: Sequence[dict[str, Any]], *, title: str,
                    kept_epoch: int | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric, label in ((loss_ax, "loss", "cross-entropy"), (acc_ax, "accuracy", "accuracy")):
        missing = []
        for split in ("train", "val"):
            values = [h[f"{split}_{metric}"] for h in history]
            ax.plot(epochs, values, marker="o", label=split)  # NaN points leave gaps
            unfinished = sum(1 for v in values if not math.isfinite(v))
            if unfinished:
                missing.append(f"{split}: {unfinished} of {len(values)} epoch(s) not finite")
        if missing:
            # A NaN run would otherwise draw an empty panel and leave the reader guessing.
            ax.text(0.5, 0.5, "not drawn:\n" + "\n".join(missing), transform=ax.transAxes,
                    ha="center", va="center", color="tab:red", fontsize=9)
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="tab:green", linestyle="--", alpha=0.7,
                       label=f"kept: epoch {kept_epoch}")
        ax.set(xlabel="epoch", ylabel=label, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(0, 1.01)
    loss_ax.legend(loc="upper right", fontsize=8)
    acc_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    return fig
