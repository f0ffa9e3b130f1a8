"""Which version a recalibration starts from, and its graphs.

Always the base version's statistics, never an earlier recalibration's: a version whose
card says it was recalibrated (``card.base_version``, either engine) is followed back to
the version it came from, until one that was exported. Recalibrating a recalibration
would stack each estimate's noise and bias on the last (RDumb, Press et al. 2023: resetting
to the source model beats adapting on top of adaptations); starting from the base, version
N+1 depends only on the base and the new data.

The graph whose statistics are re-estimated is the card's ``batchnorm.reference_graph``
(``unfolded.onnx``) when it names one, else ``model.onnx`` when that graph keeps its
BatchNormalization nodes (exported with ``--no-fold``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from bnserve.repository.batchnorm import BatchNormGraphError, batchnorm_layers
from bnserve.repository.card import CardError, ModelCard, read_card
from bnserve.repository.graph import batchnorm_nodes
from bnserve.repository.layout import METADATA_FILE, MODEL_FILE
from bnserve.repository.publish import PublishError, list_versions
from bnserve.server.errors import (
    RecalibrationDataError,
    RecalibrationRefused,
    RecalibrationSourceMissing,
    quoted,
)


@dataclass(frozen=True)
class BaseVersion:
    name: str
    requested: int  # the version asked for (default: the latest)
    version: int  # the version whose statistics recalibration starts from
    path: Path
    card: ModelCard | None
    card_data: dict[str, Any]  # metadata.json as written ({} without one)
    served: onnx.ModelProto  # model.onnx
    reference: onnx.ModelProto  # the graph with BatchNormalization nodes
    folded: bool  # the served graph is the reference with BatchNorm folded: refold
    sha256: str  # of model.onnx

    @property
    def served_batchnorm_nodes(self) -> int:
        return len(batchnorm_nodes(self.served))


def locate_base(repository: Path | str, name: str, version: int | None = None) -> BaseVersion:
    """The base version of ``name``/``version`` (default: the latest), read and checked."""
    try:
        versions = list_versions(repository, name)
    except PublishError as exc:  # a name that is not a plain folder name
        raise RecalibrationDataError(f"model: {exc}") from None
    if not versions:
        raise RecalibrationSourceMissing(f"model {quoted(name)} has no published version")
    requested = versions[-1] if version is None else version
    if requested not in versions:
        raise RecalibrationSourceMissing(
            f"model {quoted(name)} has no version {requested} (published: "
            f"{', '.join(map(str, versions[-8:]))})")
    current, seen = requested, set()
    while True:
        folder = Path(repository) / name / str(current)
        card = _card(folder, current)
        base = card.base_version if card else None
        if base is None:
            break
        seen.add(current)
        if base in seen or base not in versions:
            raise RecalibrationRefused(
                f"version {current} was recalibrated from version {base}, which is "
                + ("part of a cycle" if base in seen else "no longer in the repository"))
        current = base
    served = _load(folder / MODEL_FILE, current, MODEL_FILE)
    reference_file = card.reference_graph if card else None
    if reference_file is None:
        reference = served
    else:
        reference = _load(folder / reference_file, current, reference_file)
        recorded = (card.extra.get("batchnorm") or {}).get("reference_sha256") if card else None
        if recorded is not None and recorded != sha256_of(folder / reference_file):
            # Another graph than the one exported beside model.onnx: its weights could differ.
            raise RecalibrationRefused(f"version {current}'s {reference_file} is not the file "
                                       "its card records (sha256 differs)")
    try:
        layers = batchnorm_layers(reference)
    except BatchNormGraphError as exc:
        raise RecalibrationRefused(f"version {current}: {exc}") from None
    if not layers:
        raise RecalibrationRefused(
            f"version {current} has no graph with BatchNormalization nodes: its {MODEL_FILE} "
            "is folded and its card names no reference graph; export it again to publish "
            "the unfolded graph beside it")
    folded = len(batchnorm_nodes(served)) < len(layers)
    card_data = json.loads((folder / METADATA_FILE).read_bytes()) if card else {}
    return BaseVersion(name=name, requested=requested, version=current, path=folder, card=card,
                       card_data=card_data, served=served, reference=reference, folded=folded,
                       sha256=sha256_of(folder / MODEL_FILE))


def _card(folder: Path, version: int) -> ModelCard | None:
    try:
        return read_card(folder)
    except CardError as exc:
        raise RecalibrationRefused(f"version {version}'s {METADATA_FILE}: {exc}") from None


def _load(path: Path, version: int, what: str) -> onnx.ModelProto:
    if not path.is_file():
        raise RecalibrationRefused(f"version {version} has no {what}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and onnx's own; all mean "not a graph"
        raise RecalibrationRefused(f"version {version}'s {what} is not a readable ONNX "
                                   "graph") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise RecalibrationRefused(f"version {version}'s {what} keeps tensors in external "
                                   "files, which recalibration does not read")
    return model


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
