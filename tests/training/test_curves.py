"""The training-curve figure: whole-epoch ticks, the kept epoch marked, a note for what a NaN
run could not draw."""

from __future__ import annotations

import math

from bnserve.training.curves import plot_training_curves, training_figure


def _history(epochs: int, *, nan_from: int | None = None) -> list[dict]:
    history = []
    for epoch in range(1, epochs + 1):
        bad = nan_from is not None and epoch >= nan_from
        loss = math.nan if bad else 1.0 / epoch
        history.append({"epoch": epoch, "train_loss": loss, "val_loss": loss,
                        "train_accuracy": math.nan if bad else 0.5, "val_accuracy": 0.5})
    return history


def test_ticks_are_whole_epochs_and_the_kept_epoch_is_marked(tmp_path):
    figure = training_figure(_history(3), title="run", kept_epoch=2)
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        marks = [line for line in ax.get_lines() if line.get_label() == "kept: epoch 2"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]
        assert not ax.texts  # nothing missing, no note
    plot_training_curves(_history(3), tmp_path / "curves.png", title="run", kept_epoch=2)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_nan_run_says_what_it_could_not_draw():
    loss_ax, accuracy_ax = training_figure(_history(4, nan_from=2), title="nan").axes
    (note,) = loss_ax.texts
    assert "train: 3 of 4 epoch(s) not finite" in note.get_text()
    assert "val: 3 of 4 epoch(s) not finite" in note.get_text()
    (note,) = accuracy_ax.texts
    assert "train: 3 of 4" in note.get_text() and "val:" not in note.get_text()
