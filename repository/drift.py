"""How far live activations are from a BatchNorm layer's reference, and when that is an alarm.

The measure (``MEASURE``): for each channel, the KL divergence KL(live || reference) between
two Gaussians, the live one with the window's mean and variance, the reference one with the
layer's running mean and variance (each plus the layer's epsilon, as BatchNorm divides by
sqrt(var + eps)); a layer's score is the mean over its channels, the model's the mean over
its layers. Why this one:

- it sees both ways BatchNorm's frozen statistics go stale: a mean shift adds
  (mu_live - mu_ref)^2 / (2 var_ref), a change of scale adds (r - 1 - log r) / 2 with
  r = var_live / var_ref; the standardized mean shift alone is blind to a contrast change;
- it is in units of each channel's own reference spread, so channels and layers of any
  scale are comparable and can be averaged;
- it is zero exactly when the live Gaussian is the reference one, which is what
  recalibration restores.

A channel's divergence is capped at ``CHANNEL_CAP`` nats so that one dead channel (a
variance near zero) cannot stand for the whole layer.

The alarm threshold is calibrated on clean held-out data (``calibrate_threshold``): the
score of many windows of ``window_rows`` rows drawn from it with replacement (a bootstrap
of what clean traffic gives), and the threshold at the quantile 1 - false-alarm rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from bnserve.repository.batchnorm import BatchNormLayer, RowMoments, moments_mean_var

MEASURE = "gaussian_kl"  # mean over channels of KL(live || reference), in nats
CHANNEL_CAP = 50.0
# Models without a calibrated threshold (not exported by bnserve): the divergence of a
# 0.32-standard-deviation mean shift in every channel. Clean windows of 128 rows of the
# digits CNN score 0.002-0.004 (p50-p99), a +3 brightness shift 0.05. Documented in the README.
DEFAULT_THRESHOLD = 0.05
DEFAULT_WINDOW_ROWS = 128
DEFAULT_FALSE_ALARM_RATE = 0.01


def gaussian_kl(live_mean: np.ndarray, live_var: np.ndarray, ref_mean: np.ndarray,
                ref_var: np.ndarray) -> np.ndarray:
    """KL(N(live_mean, live_var) || N(ref_mean, ref_var)) per channel, capped; variances > 0."""
    ratio = live_var / ref_var
    kl = 0.5 * (ratio - 1.0 - np.log(ratio) + (live_mean - ref_mean) ** 2 / ref_var)
    return np.minimum(kl, CHANNEL_CAP)


@dataclass(frozen=True)
class LayerDrift:
    name: str
    score: float  # mean over channels of KL(live || reference), nats
    mean_shift: float  # mean over channels of |mu_live - mu_ref| / sigma_ref
    std_ratio: float  # median over channels of sigma_live / sigma_ref
    live_mean: np.ndarray  # (C,)
    live_var: np.ndarray  # (C,)


def layer_drift(layer: BatchNormLayer, moments: Sequence[RowMoments]) -> LayerDrift:
    """One layer's drift over the rows of ``moments`` (at least 2 values per channel)."""
    mean, var, _ = moments_mean_var(moments)
    ref_var = layer.var + layer.epsilon
    live_var = var + layer.epsilon
    kl = gaussian_kl(mean, live_var, layer.mean, ref_var)
    return LayerDrift(
        name=layer.name,
        score=float(kl.mean()),
        mean_shift=float((np.abs(mean - layer.mean) / np.sqrt(ref_var)).mean()),
        std_ratio=float(np.median(np.sqrt(live_var / ref_var))),
        live_mean=mean,
        live_var=var,
    )


def model_score(layers: Sequence[LayerDrift]) -> float:
    """The model's drift: the mean of its layers' scores."""
    return float(np.mean([d.score for d in layers])) if layers else 0.0


@dataclass(frozen=True)
class Calibration:
    """An alarm threshold and where it came from (stored in the model card under ``drift``)."""

    threshold: float
    window_rows: int
    false_alarm_rate: float
    held_out_rows: int
    windows: int
    clean_median: float
    measure: str = MEASURE

    def to_dict(self) -> dict:
        return {"measure": self.measure, "threshold": self.threshold,
                "window_rows": self.window_rows, "false_alarm_rate": self.false_alarm_rate,
                "calibration": {"held_out_rows": self.held_out_rows, "windows": self.windows,
                                "clean_median_score": self.clean_median}}


def window_scores(layers: Sequence[BatchNormLayer], per_row: Sequence[RowMoments],
                  window_rows: int, windows: int, *, reference_rows: int | None = None,
                  prior: Prior | None = None, seed: int = 0) -> np.ndarray:
    """Model scores of ``windows`` windows of ``window_rows`` rows drawn with replacement
    from the rows of ``per_row`` (one RowMoments per layer, all over the same rows).

    ``reference_rows``: the layers' statistics were themselves estimated from that many rows
    of this distribution (a recalibrated version): each draw also re-draws a reference of
    that many rows, so the scores include the reference's own estimation noise; ``prior``:
    that estimate was blended with older statistics (``Prior``), and so is each re-draw."""
    rng = np.random.default_rng(seed)
    rows = per_row[0].rows
    scores = np.empty(windows)
    for w in range(windows):
        pick = rng.integers(0, rows, size=window_rows)
        if reference_rows is not None:
            base = rng.integers(0, rows, size=reference_rows)
            priors = prior.layers if prior is not None else [None] * len(layers)
            references = [_estimated(layer, m, base, old, prior)
                          for layer, m, old in zip(layers, per_row, priors, strict=True)]
        else:
            references = list(layers)
        drifts = [layer_drift(layer, [RowMoments(m.sum[pick], m.sumsq[pick], m.positions)])
                  for layer, m in zip(references, per_row, strict=True)]
        scores[w] = model_score(drifts)
    return scores


@dataclass(frozen=True)
class Prior:
    """Statistics a re-estimate from n rows was blended with, weighing ``strength`` rows:
    (strength * old + n * estimate) / (strength + n), for the mean and the variance."""

    layers: Sequence[BatchNormLayer]
    strength: float


def _estimated(layer: BatchNormLayer, moments: RowMoments, rows: np.ndarray,
               old: BatchNormLayer | None, prior: Prior | None) -> BatchNormLayer:
    mean, var, _ = moments_mean_var([RowMoments(moments.sum[rows], moments.sumsq[rows],
                                                moments.positions)])
    if old is not None and prior is not None and prior.strength > 0:
        n, weight = len(rows), prior.strength
        mean = (weight * old.mean + n * mean) / (weight + n)
        var = (weight * old.var + n * var) / (weight + n)
    return replace(layer, mean=mean, var=var)


def calibrate_threshold(layers: Sequence[BatchNormLayer], per_row: Sequence[RowMoments], *,
                        window_rows: int = DEFAULT_WINDOW_ROWS,
                        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                        windows: int = 1000, reference_rows: int | None = None,
                        prior: Prior | None = None, seed: int = 0) -> Calibration:
    """The threshold clean windows of ``window_rows`` rows exceed with probability
    ``false_alarm_rate``, estimated from clean held-out rows (``per_row``).

    ``reference_rows``: for a version whose statistics were re-estimated from that many rows
    (``per_row`` are those rows, measured with the new statistics): a reference from few
    rows is noisy itself, and clean traffic scores higher against it (see ``window_scores``);
    ``prior``: the estimate was blended with the base statistics, which biases it too."""
    if not 0 < false_alarm_rate < 1:
        raise ValueError("false_alarm_rate must lie in (0, 1)")
    scores = window_scores(layers, per_row, window_rows, windows,
                           reference_rows=reference_rows, prior=prior, seed=seed)
    return Calibration(threshold=float(np.quantile(scores, 1 - false_alarm_rate)),
                       window_rows=window_rows, false_alarm_rate=false_alarm_rate,
                       held_out_rows=per_row[0].rows, windows=windows,
                       clean_median=float(np.median(scores)))
