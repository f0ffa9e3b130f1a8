"""The model card of a recalibrated version: the base's card, the new model's figures, and
a top-level ``recalibration`` record of what was done.

Kept from the base as written: labels, tensors, training metrics and the exporter's
``verification`` (they describe the weights, which are the base's bit for bit), and
``batchnorm.layers`` (the same nodes read the same tensors).

Replaced: ``version``; ``sha256`` and ``size_bytes`` (the new ``model.onnx``); ``created``;
``input_statistics`` when they were re-estimated; under ``batchnorm`` the folded-vs-unfolded
figures, ``reference_graph`` and ``reference_sha256``; the onnx and onnxruntime versions;
and the ``drift`` threshold, calibrated again for the new reference on the recalibration
inputs with ``reference_rows = n``. A reference from n rows is noisy itself: with the
base's threshold, traffic like the recalibration data trips the alarm in most windows after
a recalibration from 64 rows (the report's "alarms after" column). With fewer rows than a
window the base's threshold is kept, as the exporter calibrates none from too few rows.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

from bnserve.repository.card import CardError, ModelCard
from bnserve.repository.drift import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_WINDOW_ROWS,
    MEASURE,
    Prior,
    calibrate_threshold,
)
from bnserve.repository.graph import tensor_signature
from bnserve.repository.layout import REFERENCE_FILE
from bnserve.server.errors import RecalibrationRefused
from bnserve.server.recalibration_checks import Verification
from bnserve.server.recalibration_source import BaseVersion, sha256_of
from bnserve.server.reestimate import Estimate

ENGINE = "onnxruntime"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recalibration_record(base: BaseVersion, estimate: Estimate, verification: Verification, *,
                         source: str, source_sha256: str, seconds: float) -> dict[str, Any]:
    """The ``recalibration`` key of the new card."""
    threshold = base.card.drift.threshold if base.card and base.card.drift else None
    return {
        "engine": ENGINE,
        "base_version": base.version,
        "requested_version": base.requested,
        "base_sha256": base.sha256,
        "num_samples": estimate.rows,
        "data": {"source": source, "sha256": source_sha256},
        "prior_strength": estimate.prior_strength,
        "input_statistics": estimate.input_statistics,
        "passes": estimate.passes,
        "refolded": base.folded,
        "layers": [layer.to_dict() for layer in estimate.layers],
        "drift": {
            "measure": MEASURE,
            "on": "the recalibration inputs",
            "before": estimate.drift_before,  # against the base statistics
            "after": estimate.drift_after,  # against the new ones
            "threshold": threshold,  # the base's; threshold_after: the new card's
        },
        "verification": verification.to_dict(),
        "onnxruntime_version": onnxruntime.__version__,
        "onnxscript_version": _version_of("onnxscript"),
        "seconds": round(seconds, 3),
        "created": _now(),
    }


def recalibrated_card(base: BaseVersion, *, name: str, version: int, model_path: Path,
                      reference_path: Path | None, estimate: Estimate,
                      record: dict[str, Any]) -> dict[str, Any]:
    """The new version's ``metadata.json`` content, checked against the card schema."""
    card = copy.deepcopy(base.card_data) or ModelCard(
        inputs=tuple(tensor_signature(v) for v in _graph_inputs(base.served)),
        outputs=tuple(tensor_signature(v) for v in base.served.graph.output),
    ).to_dict()
    card.update(name=name, version=version, sha256=sha256_of(model_path),
                size_bytes=model_path.stat().st_size, created=record["created"],
                onnx_version=onnx.__version__, onnxruntime_version=onnxruntime.__version__)
    if estimate.input_statistics == "re-estimated" and card.get("input_statistics"):
        card["input_statistics"] = _input_statistics(card["input_statistics"], estimate)
    batchnorm = dict(card.get("batchnorm") or {})
    if reference_path is not None:
        batchnorm["reference_graph"] = REFERENCE_FILE
        batchnorm["reference_sha256"] = sha256_of(reference_path)
        verification = record["verification"]
        batchnorm["folded_vs_unfolded_max_abs_diff"] = verification["parity_max_abs_diff"]
        batchnorm["compared_samples"] = verification["parity_rows"]
    else:
        batchnorm["reference_graph"] = None  # the served graph is the reference
        batchnorm.pop("reference_sha256", None)
    card["batchnorm"] = batchnorm
    drift = _drift(card.get("drift"), estimate)
    if drift is not None:
        card["drift"] = drift
    record["drift"]["threshold_after"] = card["drift"]["threshold"] if card.get("drift") else None
    card["recalibration"] = record
    try:
        parsed = ModelCard.from_dict(card)
    except CardError as exc:
        raise RecalibrationRefused(f"the new model card is not valid: {exc}") from None
    if parsed.base_version != base.version:  # what the next recalibration will follow
        raise RecalibrationRefused("the new model card does not name its base version")
    return card


def _drift(base: dict[str, Any] | None, estimate: Estimate) -> dict[str, Any] | None:
    window = base["window_rows"] if base else DEFAULT_WINDOW_ROWS
    rate = base.get("false_alarm_rate") if base else None
    if estimate.rows < window:
        return base
    calibration = calibrate_threshold(estimate.new.layers, estimate.after, window_rows=window,
                                      false_alarm_rate=rate or DEFAULT_FALSE_ALARM_RATE,
                                      reference_rows=estimate.rows,
                                      prior=Prior(estimate.base.layers, estimate.prior_strength))
    section = calibration.to_dict()
    section["calibration"].update(reference_rows=estimate.rows,
                                  on="the recalibration inputs, against the new statistics")
    return section


def _input_statistics(stored: dict[str, Any], estimate: Estimate) -> dict[str, Any]:
    if len(estimate.new.standardization) != 1:
        return stored  # several standardized inputs: the card describes one (the exporter's)
    new = estimate.new.standardization[0]
    shape = tuple(stored["shape"])
    if int(np.prod(shape)) != new.mean.size:
        return stored
    return {"mean": new.mean.reshape(shape).astype(np.float32).tolist(),
            "std": new.std.reshape(shape).astype(np.float32).tolist(), "shape": list(shape)}


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
