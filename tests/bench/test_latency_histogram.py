"""bench/serve_vs_inprocess.py's latency histogram: title, median and p99 lines, an axis
that one outlier cannot stretch, and a note for what it leaves out."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from serve_vs_inprocess import latency_histogram  # noqa: E402


def test_the_histogram_marks_median_and_p99_and_clips_an_outlier():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fast = list(rng.uniform(0.0009, 0.0011, 500))  # about 1 ms
    slow = list(rng.uniform(0.0019, 0.0021, 500)) + [0.5]  # about 2 ms, and one 500 ms call
    figure, axis = plt.subplots()
    left_out = latency_histogram(axis, {"a": fast, "b": slow}, title="batch 1")
    assert axis.get_title() == "batch 1" and left_out == 1
    labels = [line.get_label() for line in axis.get_lines()]
    assert any(label.startswith("a: median 1.0") for label in labels)
    assert any(label.startswith("b: p99 2.") for label in labels)
    assert axis.get_xlim()[1] < 10  # the 500 ms call does not set the scale
    (note,) = axis.texts
    assert "1 call(s) above" in note.get_text() and "slowest 500.00 ms" in note.get_text()
    plt.close(figure)
