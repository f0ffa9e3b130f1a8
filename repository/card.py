"""The model card, ``metadata.json`` beside each ``model.onnx``: one schema for both sides.

The exporter writes it (``ModelCard.to_dict``), the server reads it (``read_card``) and
uses what it needs: class labels (classification), the input statistics (the inputs of the
batch-independence check at load) and integer input ranges (token ids). Every other key
the exporter writes (metrics, verification, BatchNorm counts, versions of the tools...) is
kept as is in ``extra``. The card is optional; one that is there but malformed is an error,
never silently half-read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnserve.proto.datatypes import BY_NAME
from bnserve.repository.layout import METADATA_FILE, MODEL_FILE, PLATFORM, model_name_problem

SCHEMA_VERSION = 1
MAX_CARD_BYTES = 16 * 1024 * 1024  # a card is text about a model, never the model
MAX_LABELS = 1_000_000
MAX_LABEL_CHARS = 1024


class CardError(ValueError):
    """A ``metadata.json`` that is not a model card; the message says which field and why."""


@dataclass(frozen=True)
class TensorSignature:
    name: str
    datatype: str  # protocol datatype, e.g. "FP32"
    shape: tuple[int, ...]  # -1: a free axis
    value_range: tuple[int, int] | None = None  # integer inputs: lowest and highest valid value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape),
                               "dtype": BY_NAME[self.datatype].dtype.name,
                               "datatype": self.datatype}
        if self.value_range is not None:
            out["range"] = list(self.value_range)
        return out


@dataclass(frozen=True)
class StoredStatistics:
    """Mean and std of the training inputs, nested lists shaped ``shape`` (broadcast on a sample)."""

    mean: Any
    std: Any
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelCard:
    labels: tuple[str, ...] = ()
    inputs: tuple[TensorSignature, ...] = ()
    outputs: tuple[TensorSignature, ...] = ()
    input_statistics: StoredStatistics | None = None
    name: str | None = None
    version: int | None = None
    platform: str = PLATFORM
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # every other key, as written

    @property
    def drift(self) -> DriftCard | None:
        """The drift monitor's calibrated threshold (``drift``), or None."""
        return _drift(self.extra.get("drift"))

    @property
    def reference_graph(self) -> str | None:
        """The unfolded graph's file name in the version folder (``batchnorm.reference_graph``):
        the served graph with its BatchNormalization nodes kept, for the drift monitor and
        recalibration. None: the served graph is the reference (or there is none)."""
        return _reference_graph(self.extra.get("batchnorm"))

    @property
    def base_version(self) -> int | None:
        """The version this one was recalibrated from, or None for an original export."""
        return _base_version(self.extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "platform": self.platform,
            "labels": list(self.labels),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "input_statistics": None if self.input_statistics is None
            else self.input_statistics.to_dict(),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError("the card is not a JSON object")
        known = {"schema_version", "name", "version", "platform", "labels", "inputs", "outputs",
                 "input_statistics"}
        schema = data.get("schema_version", SCHEMA_VERSION)
        if not isinstance(schema, int) or isinstance(schema, bool) or schema > SCHEMA_VERSION:
            raise CardError(f"schema_version must be an integer up to {SCHEMA_VERSION}")
        card = cls(
            labels=parse_labels(data.get("labels", [])),
            inputs=_signatures(data.get("inputs", []), "inputs"),
            outputs=_signatures(data.get("outputs", []), "outputs"),
            input_statistics=_statistics(data.get("input_statistics")),
            name=_optional(data.get("name"), str, "name"),
            version=_optional(data.get("version"), int, "version"),
            platform=_optional(data.get("platform", PLATFORM), str, "platform") or PLATFORM,
            schema_version=schema,
            extra={k: v for k, v in data.items() if k not in known},
        )
        card.drift, card.reference_graph, card.base_version  # noqa: B018 (raise CardError now)
        return card


@dataclass(frozen=True)
class DriftCard:
    """``drift`` in the card: the alarm threshold the exporter calibrated on clean held-out
    data (``bnserve.repository.drift.calibrate_threshold``)."""

    measure: str
    threshold: float
    window_rows: int
    false_alarm_rate: float | None


MAX_WINDOW_ROWS = 1 << 20


def _drift(value: Any) -> DriftCard | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CardError("drift must be null or an object")
    measure, threshold = value.get("measure"), value.get("threshold")
    window, rate = value.get("window_rows"), value.get("false_alarm_rate")
    if not isinstance(measure, str) or len(measure) > 64:
        raise CardError("drift.measure must be a short string")
    if not _is_number(threshold) or not threshold > 0:
        raise CardError("drift.threshold must be a positive finite number")
    if not _is_int(window) or not 2 <= window <= MAX_WINDOW_ROWS:
        raise CardError(f"drift.window_rows must be an integer from 2 to {MAX_WINDOW_ROWS}")
    if rate is not None and (not _is_number(rate) or not 0 < rate < 1):
        raise CardError("drift.false_alarm_rate must be a number in (0, 1)")
    return DriftCard(measure, float(threshold), window, None if rate is None else float(rate))


def _reference_graph(batchnorm: Any) -> str | None:
    if not isinstance(batchnorm, dict) or batchnorm.get("reference_graph") is None:
        return None
    name = batchnorm["reference_graph"]
    if (not isinstance(name, str) or model_name_problem(name) or not name.endswith(".onnx")
            or name == MODEL_FILE):
        raise CardError("batchnorm.reference_graph must be the plain name of an .onnx file "
                        f"beside {MODEL_FILE}")
    return name


def _base_version(extra: dict[str, Any]) -> int | None:
    record = extra.get("recalibration")
    key = "base_version"
    if record is None:  # the torch path's record travels in the training metrics
        metrics = extra.get("metrics")
        record = metrics.get("recalibration") if isinstance(metrics, dict) else None
        key = "source_version"
    if record is None:
        return None
    value = record.get(key) if isinstance(record, dict) else None
    if not _is_int(value) or value < 1:
        raise CardError(f"recalibration.{key} must be a positive integer")
    return value


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def read_card(version_dir: Path) -> ModelCard | None:
    """The card of a version folder; None when it has none; CardError when it is malformed."""
    path = version_dir / METADATA_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_CARD_BYTES:
        raise CardError(f"{METADATA_FILE} is over {MAX_CARD_BYTES // (1024 * 1024)} MiB")
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:  # also UnicodeDecodeError
        raise CardError(f"{METADATA_FILE} is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    return ModelCard.from_dict(data)


def _optional(value: Any, kind: type, name: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CardError(f"{name} must be a {kind.__name__}")
    return value


def parse_labels(value: Any) -> tuple[str, ...]:
    """Class labels as the card holds them (also read from the graph's metadata:
    ``bnserve.repository.graph_metadata``); CardError unless a list of short strings."""
    if not isinstance(value, list) or len(value) > MAX_LABELS or not all(
        isinstance(v, str) and len(v) <= MAX_LABEL_CHARS for v in value
    ):
        raise CardError(f"labels must be a list of strings of at most {MAX_LABEL_CHARS} characters")
    return tuple(value)


def _signatures(value: Any, where: str) -> tuple[TensorSignature, ...]:
    if not isinstance(value, list):
        raise CardError(f"{where} must be a list")
    out = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise CardError(f"{at} must be an object with a name")
        datatype = item.get("datatype")
        if datatype not in BY_NAME:
            raise CardError(f"{at}.datatype must be one of {', '.join(BY_NAME)}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= -1 for d in shape):
            raise CardError(f"{at}.shape must be a list of integers >= -1")
        value_range = item.get("range")
        if value_range is not None:
            if (not isinstance(value_range, list) or len(value_range) != 2
                    or not all(_is_int(v) for v in value_range) or value_range[0] > value_range[1]):
                raise CardError(f"{at}.range must be [lowest, highest] integers")
            value_range = (value_range[0], value_range[1])
        out.append(TensorSignature(item["name"], datatype, tuple(shape), value_range))
    return tuple(out)


def _statistics(value: Any) -> StoredStatistics | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not {"mean", "std", "shape"} <= set(value):
        raise CardError("input_statistics must be null or an object with mean, std and shape")
    shape = value["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 1 for d in shape):
        raise CardError("input_statistics.shape must be a list of positive integers")
    for key in ("mean", "std"):
        if not _nested(value[key], shape):
            raise CardError(f"input_statistics.{key} must be finite numbers nested as {shape}")
    return StoredStatistics(value["mean"], value["std"], tuple(shape))


def _nested(value: Any, shape: list[int]) -> bool:
    if not shape:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return (isinstance(value, list) and len(value) == shape[0]
            and all(_nested(v, shape[1:]) for v in value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
