"""The BatchNorm monitor's answers as plain data (``bnserve.v1.BatchNormMonitor``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnserve.proto import monitor_pb2 as mpb
from bnserve.proto.tensors import decode_raw

__all__ = ["DriftPoint", "DriftReport", "LayerDrift", "Recalibration"]


@dataclass(frozen=True)
class LayerDrift:
    name: str  # the layer's module path ("stem.1") when the exporter kept it
    input: str  # the graph tensor entering it
    channels: int
    score: float  # mean over channels of KL(live || reference), nats
    mean_shift: float  # mean over channels of |mu_live - mu_ref| / sigma_ref
    std_ratio: float  # median over channels of sigma_live / sigma_ref
    # Per channel, only when asked for (include_channels) and once the window has rows:
    reference_mean: np.ndarray | None = None
    reference_var: np.ndarray | None = None
    live_mean: np.ndarray | None = None
    live_var: np.ndarray | None = None


@dataclass(frozen=True)
class DriftPoint:
    seconds_ago: float
    score: float
    layer_scores: tuple[float, ...]  # in the order of DriftReport.layers


@dataclass(frozen=True)
class DriftReport:
    model: str
    version: str
    measure: str
    score: float
    threshold: float
    threshold_source: str  # "calibrated at export", "calibrated at recalibration" or "default"
    alarm: bool
    alarm_since: float  # Unix time the alarm was raised; 0.0 when there is none
    window_rows: int
    rows_in_window: int
    sampled_batches: int
    sampled_rows: int
    dropped_samples: int
    sample_rate: float
    layers: tuple[LayerDrift, ...]
    history: tuple[DriftPoint, ...]  # oldest first
    message: str

    @property
    def worst_layer(self) -> LayerDrift | None:
        return max(self.layers, key=lambda layer: layer.score, default=None)


def _channels(values) -> np.ndarray | None:
    return np.array(values, dtype=np.float64) if len(values) else None


def drift_report_from_response(response: mpb.DriftReportResponse) -> DriftReport:
    layers = tuple(
        LayerDrift(name=m.name, input=m.input, channels=m.channels, score=m.score,
                   mean_shift=m.mean_shift, std_ratio=m.std_ratio,
                   reference_mean=_channels(m.reference_mean),
                   reference_var=_channels(m.reference_var), live_mean=_channels(m.live_mean),
                   live_var=_channels(m.live_var))
        for m in response.layers)
    return DriftReport(
        model=response.model_name, version=response.model_version, measure=response.measure,
        score=response.score, threshold=response.threshold,
        threshold_source=response.threshold_source, alarm=response.alarm,
        alarm_since=response.alarm_since, window_rows=response.window_rows,
        rows_in_window=response.rows_in_window, sampled_batches=response.sampled_batches,
        sampled_rows=response.sampled_rows, dropped_samples=response.dropped_samples,
        sample_rate=response.sample_rate, layers=layers,
        history=tuple(DriftPoint(p.seconds_ago, p.score, tuple(p.layer_scores))
                      for p in response.history),
        message=response.message)


def captured_from_response(response: mpb.CapturedInputsResponse) -> dict[str, np.ndarray]:
    return {t.name: decode_raw(t.raw_contents, t.datatype, t.shape, name=t.name)
            for t in response.inputs}


def drift_request(model: str, version: str | int | None, include_channels: bool
                  ) -> mpb.DriftReportRequest:
    return mpb.DriftReportRequest(model_name=model, model_version=_version(version),
                                  include_channels=include_channels)


def captured_request(model: str, version: str | int | None, max_rows: int
                     ) -> mpb.CapturedInputsRequest:
    if max_rows < 0:
        raise ValueError("max_rows must be >= 0 (0: as many as the server holds)")
    return mpb.CapturedInputsRequest(model_name=model, model_version=_version(version),
                                     max_rows=max_rows)


@dataclass(frozen=True)
class Recalibration:
    """What a server's Recalibrate did: the version it published, from which base, on how
    many captured rows, and the drift of those rows against the old and the new statistics."""

    model: str
    base_version: str
    new_version: str
    samples: int
    drift_before: float
    drift_after: float
    threshold: float  # the new version's alarm threshold
    serving: bool  # the new version is ready
    message: str


def recalibrate_request(model: str, version: str | int | None, max_rows: int,
                        prior_strength: float | None, input_statistics: bool | None
                        ) -> mpb.RecalibrateRequest:
    if max_rows < 0:
        raise ValueError("max_rows must be >= 0 (0: every captured row)")
    request = mpb.RecalibrateRequest(model_name=model, model_version=_version(version),
                                     max_rows=max_rows)
    if prior_strength is not None:
        request.prior_strength = prior_strength
    if input_statistics is not None:
        request.input_statistics = input_statistics
    return request


def recalibration_from_response(response: mpb.RecalibrateResponse) -> Recalibration:
    return Recalibration(model=response.model_name, base_version=response.base_version,
                         new_version=response.new_version, samples=response.samples,
                         drift_before=response.drift_before, drift_after=response.drift_after,
                         threshold=response.threshold, serving=response.serving,
                         message=response.message)


def _version(version: str | int | None) -> str:
    return "" if version is None else str(version)
