"""``bnserve drift --plot``: the score history per layer, and the worst layer's channels.

Imports matplotlib (Agg, no display): only ``--plot`` loads this module.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bnserve.client.monitor import DriftReport  # noqa: E402


def plot_report(report: DriftReport, path: str) -> None:
    """Left: each layer's score (thin) and the model's (thick) over the history, with the
    threshold; right: reference vs live mean per channel of the worst layer, with the
    reference's standard deviation as a band."""
    figure, (history, channels) = plt.subplots(1, 2, figsize=(13, 4.5))
    if report.history:
        seconds = np.array([-p.seconds_ago for p in report.history])
        for index, layer in enumerate(report.layers):
            history.plot(seconds, [p.layer_scores[index] for p in report.history],
                         linewidth=1, label=layer.name)
        model = [p.score for p in report.history]
        history.plot(seconds, model, color="black", linewidth=2.5, label="model")
        scores = [s for p in report.history for s in (p.score, *p.layer_scores) if s > 0]
        if scores and max(scores) > 100 * min(scores):
            history.set_yscale("log")  # clean (~1e-3) and drifted (~1) on one plot
    else:
        history.text(0.5, 0.5, "no history yet", ha="center", transform=history.transAxes)
    history.axhline(report.threshold, color="red", linestyle="--",
                    label=f"threshold ({report.threshold_source})")
    history.set_xlabel("seconds (0 = now)")
    history.set_ylabel(f"drift ({report.measure}, nats)")
    history.set_title(f"{report.model} v{report.version}: "
                      f"{'ALARM' if report.alarm else 'ok'} (score {report.score:.4f})")
    history.legend(fontsize="small", ncol=2)
    worst = report.worst_layer
    if worst is not None and worst.reference_mean is not None:
        index = np.arange(worst.channels)
        spread = np.sqrt(worst.reference_var) if worst.reference_var is not None else 0
        channels.fill_between(index, worst.reference_mean - spread,
                              worst.reference_mean + spread, alpha=0.2, color="tab:blue",
                              label="reference ± 1 sd")
        channels.plot(index, worst.reference_mean, "o-", color="tab:blue", label="reference mean")
        if worst.live_mean is not None:
            if worst.live_var is not None:
                live_spread = np.sqrt(worst.live_var)
                channels.fill_between(index, worst.live_mean - live_spread,
                                      worst.live_mean + live_spread, alpha=0.2,
                                      color="tab:orange", label="live ± 1 sd")
            channels.plot(index, worst.live_mean, "s-", color="tab:orange", label="live mean")
        channels.set_title(f"worst layer {worst.name} (score {worst.score:.4f})")
        channels.set_xlabel("channel")
        channels.set_ylabel("mean of the layer's input")
        channels.legend(fontsize="small")
    else:
        channels.text(0.5, 0.5, "no per-channel moments", ha="center",
                      transform=channels.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
