"""BatchNorm recalibration with onnxruntime alone: a version's frozen statistics re-estimated
on unlabeled inputs and published as the next version. No torch, no gradient, no labels.

    REPOSITORY/NAME/<v> --locate_base--> base version (a recalibrated v is followed back to
                                         the version it came from) and its unfolded graph
        inputs --check_inputs--> --Reestimator.reestimate--> new running mean/var (layer by
               layer, in graph order) and input mean/std
        --with_statistics--> unfolded graph --refold (when the base served graph is folded)-->
        --verify_recalibrated (checker, parity, batch independence)-->
        --stage_version--> NAME/<highest + 1>/{model.onnx, unfolded.onnx, metadata.json}

The server calls ``recalibrate_version_folder`` from a worker thread; ``recalibrate_graphs``
is the same work without writing (the report uses ``Reestimator`` directly). Every refusal
is a ``RecalibrationFailed`` (``bnserve.server.errors``) whose message a client can be
shown; its subclass carries the gRPC status. Nothing is published unless every check passed.

Defaults, from ``bnserve recalibration-report`` (docs-recal.md has the figures):
``DEFAULT_PRIOR_STRENGTH`` and ``DEFAULT_INPUT_STATISTICS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bnserve.repository.graph import tensor_signature
from bnserve.repository.graph_metadata import copy_graph_metadata
from bnserve.repository.layout import METADATA_FILE, MODEL_FILE, REFERENCE_FILE
from bnserve.repository.publish import PublishError, stage_version
from bnserve.server.errors import RecalibrationDataError, RecalibrationRefused, quoted
from bnserve.server.fed_session import CHUNK_ROWS, ORT_ERRORS
from bnserve.server.recalibration_card import recalibrated_card, recalibration_record
from bnserve.server.recalibration_checks import (
    Verification,
    check_reference_matches,
    verify_recalibrated,
)
from bnserve.server.recalibration_inputs import check_inputs
from bnserve.server.recalibration_source import BaseVersion, locate_base
from bnserve.server.reestimate import Estimate, Reestimator
from bnserve.server.refold import refold, with_statistics

log = logging.getLogger(__name__)

# N0 = 8 rows: measured at the highest severities (bnserve recalibration-report, where a
# prior pulling toward the stale statistics should cost most), N0 = 8 won back as much as
# N0 = 0 from 16 and 64 rows and more from 8 (digits 56% vs 46% of the lost accuracy); 16
# and 32 lost up to 30 points at n <= 16. From a full reservoir (256 rows) it weighs 3%.
# It also keeps a 2-row request from replacing the statistics outright. docs-recal.md.
DEFAULT_PRIOR_STRENGTH = 8.0
# Re-estimate the input mean/std in front of the graph too: a frozen normalization just
# like BatchNorm's, and the one a brightness or gain change moves first. Measured: as good
# or better than keeping them in every ablation cell (by 0-9 points of the lost accuracy,
# most with a prior); see docs-recal.md.
DEFAULT_INPUT_STATISTICS = True
MAX_PRIOR_STRENGTH = 1e9


@dataclass(frozen=True)
class Recalibrated:
    """A recalibration computed and verified, not yet written."""

    base: BaseVersion
    estimate: Estimate
    unfolded: onnx.ModelProto  # the reference graph with the new statistics
    served: onnx.ModelProto  # what model.onnx becomes: refolded, or ``unfolded`` itself
    verification: Verification


@dataclass(frozen=True)
class RecalibrationOutcome:
    name: str
    version: int  # the version published
    base_version: int  # whose statistics it started from
    requested_version: int  # the version that was asked for
    path: Path
    estimate: Estimate
    verification: Verification
    record: dict[str, Any]  # the card's ``recalibration``
    seconds: float


def recalibrate_graphs(base: BaseVersion, inputs: Mapping[str, Any], *,
                       prior_strength: float = DEFAULT_PRIOR_STRENGTH,
                       input_statistics: bool = DEFAULT_INPUT_STATISTICS,
                       chunk_rows: int = CHUNK_ROWS, intra_op_threads: int = 1) -> Recalibrated:
    """Re-estimate, write into the graph, refold and verify; raises ``RecalibrationFailed``."""
    if (isinstance(prior_strength, bool) or not isinstance(prior_strength, (int, float))
            or not 0 <= prior_strength <= MAX_PRIOR_STRENGTH):
        raise RecalibrationDataError(f"prior_strength: expected a number from 0 to "
                                     f"{MAX_PRIOR_STRENGTH:g}")
    declared = [tensor_signature(v) for v in base.reference.graph.input
                if v.name not in {t.name for t in base.reference.graph.initializer}]
    served_inputs = [tensor_signature(v) for v in base.served.graph.input
                     if v.name not in {t.name for t in base.served.graph.initializer}]
    if [(t.name, t.datatype) for t in declared] != [(t.name, t.datatype) for t in served_inputs]:
        raise RecalibrationRefused(f"version {base.version}: the reference graph's inputs are "
                                   f"not those of its {MODEL_FILE}")
    checked = check_inputs(declared, inputs, base.card)
    if base.folded:
        check_reference_matches(base.served, base.reference, checked)
    try:
        estimator = Reestimator(base.reference, intra_op_threads=intra_op_threads,
                                chunk_rows=chunk_rows)
        estimate = estimator.reestimate(checked, prior_strength=float(prior_strength),
                                        input_statistics=input_statistics)
    except (ValueError, *ORT_ERRORS) as exc:
        # The inputs were checked: the graph itself cannot run them. The log gets why.
        log.warning("recalibration of version %d could not run: %s", base.version, exc)
        raise RecalibrationRefused(f"version {base.version}: onnxruntime could not run the "
                                   "statistics graph on these inputs") from None
    unfolded = with_statistics(estimator.model, estimate.new.values())
    served = refold(unfolded) if base.folded else unfolded
    verification = verify_recalibrated(served, unfolded if base.folded else None, checked,
                                       expected_batchnorm_nodes=base.served_batchnorm_nodes)
    return Recalibrated(base=base, estimate=estimate, unfolded=unfolded, served=served,
                        verification=verification)


def inputs_sha256(inputs: Mapping[str, np.ndarray]) -> str:
    """sha256 over the inputs as the model takes them: names in order, dtype, shape, bytes."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def recalibrate_version_folder(repository: Path | str, name: str, inputs: Mapping[str, Any], *,
                               version: int | None = None,
                               prior_strength: float = DEFAULT_PRIOR_STRENGTH,
                               input_statistics: bool = DEFAULT_INPUT_STATISTICS,
                               source: str = "reservoir", source_sha256: str | None = None,
                               chunk_rows: int = CHUNK_ROWS,
                               intra_op_threads: int = 1) -> RecalibrationOutcome:
    """Recalibrate ``name``/``version`` (default: the latest) on ``inputs`` (input name ->
    array (N, ...)) and publish the next version; the base version is never touched.

    Starts from the base version's statistics (see ``recalibration_source``). ``source``
    says where the inputs came from in the card ("reservoir", "file x.npz"), with
    ``source_sha256`` (default: ``inputs_sha256``). Blocking: call it off the event loop.
    """
    start = time.perf_counter()
    base = locate_base(repository, name, version)
    done = recalibrate_graphs(base, inputs, prior_strength=prior_strength,
                              input_statistics=input_statistics, chunk_rows=chunk_rows,
                              intra_op_threads=intra_op_threads)
    checked = {n: np.asarray(a) for n, a in inputs.items()}
    sha = source_sha256 or inputs_sha256(checked)
    try:
        with stage_version(repository, name) as staged:
            # The new statistics change no label and no word: the base graph's bnserve.*
            # metadata (labels, tokenizer) goes with them, before the card's sha256.
            copy_graph_metadata(base.served, done.served)
            onnx.save(done.served, str(staged.path / MODEL_FILE))
            reference = staged.path / REFERENCE_FILE if base.folded else None
            if reference is not None:
                onnx.save(done.unfolded, str(reference))
            record = recalibration_record(base, done.estimate, done.verification, source=source,
                                          source_sha256=sha, seconds=time.perf_counter() - start)
            card = recalibrated_card(base, name=name, version=staged.version,
                                     model_path=staged.path / MODEL_FILE,
                                     reference_path=reference, estimate=done.estimate,
                                     record=record)
            (staged.path / METADATA_FILE).write_text(json.dumps(card, indent=2) + "\n")
    except PublishError as exc:  # another writer took the version meanwhile
        raise RecalibrationRefused(f"model {quoted(name)}: the next version was published by another "
                                   "writer meanwhile; try again") from exc
    seconds = time.perf_counter() - start
    log.info("recalibrated %s version %d (base %d) on %d rows: published version %d in %.2f s",
             name, base.requested, base.version, done.estimate.rows, staged.version, seconds)
    return RecalibrationOutcome(name=name, version=staged.version, base_version=base.version,
                                requested_version=base.requested, path=staged.final_path,
                                estimate=done.estimate, verification=done.verification,
                                record=record, seconds=seconds)
