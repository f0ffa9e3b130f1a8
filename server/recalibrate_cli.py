"""``bnserve recalibrate`` with the onnxruntime engine (the default): no torch needed.

    --data x.npy (a single-input model) or x.npz (arrays named after the inputs, or ``x``
    for a single-input model; ``--labels-key`` for accuracy before and after)
      --recalibrate_version_folder--> REPOSITORY/NAME/<next version>

Arrays are cast to the model's dtype when that loses nothing a client could mean (float64
to float32 features, int32 to int64 token ids), as a client library would before sending.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnserve.proto.datatypes import BY_NAME
from bnserve.repository.graph import tensor_signature
from bnserve.repository.layout import METADATA_FILE, MODEL_FILE, REFERENCE_FILE
from bnserve.repository.publish import serving_note
from bnserve.server.errors import RecalibrationDataError, RecalibrationFailed
from bnserve.server.recalibration import RecalibrationOutcome, recalibrate_version_folder
from bnserve.server.recalibration_source import locate_base


@dataclass(frozen=True)
class RecalibrationFile:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str  # of the file


def load_recalibration_file(path: Path, input_names: list[str], dtypes: dict[str, np.dtype], *,
                            labels_key: str = "y") -> RecalibrationFile:
    """The inputs of ``path`` (.npy or .npz) by input name, and labels when present."""
    try:
        if path.suffix == ".npy":
            if len(input_names) != 1:
                raise RecalibrationDataError(
                    f"{path.name}: a .npy file holds one array; the model takes "
                    f"{len(input_names)} inputs ({', '.join(input_names)}): use an .npz "
                    "with one array per input")
            arrays, labels = {input_names[0]: np.load(path, allow_pickle=False)}, None
        else:
            with np.load(path, allow_pickle=False) as npz:
                files = set(npz.files)
                if len(input_names) == 1 and input_names[0] not in files and "x" in files:
                    arrays = {input_names[0]: npz["x"]}
                else:
                    missing = [n for n in input_names if n not in files]
                    if missing:
                        raise RecalibrationDataError(
                            f"{path.name} has no array {', '.join(map(repr, missing))} (it has: "
                            f"{', '.join(sorted(files)) or 'nothing'})")
                    arrays = {n: npz[n] for n in input_names}
                labels = npz[labels_key] if labels_key in files else None
    except (OSError, ValueError) as exc:  # missing file, not numpy, pickled objects
        raise RecalibrationDataError(f"cannot read {path.name} as .npy or .npz: {exc}") from None
    inputs = {n: _as_model_dtype(a, dtypes[n]) for n, a in arrays.items()}
    return RecalibrationFile(inputs=inputs, labels=labels, sha256=_sha256(path))


def _as_model_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if dtype.kind == "f" and array.dtype.kind in "biuf":
        return array.astype(dtype)
    if dtype.kind in "iu" and array.dtype.kind in "iu" and (
            not array.size or (np.iinfo(dtype).min <= array.min() and array.max() <= np.iinfo(dtype).max)):
        return array.astype(dtype)
    return array  # the engine says what it expected


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def accuracy(model_path: Path, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Share of rows whose highest-scoring class is the label, with onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    rows = len(labels)
    correct = 0
    for start in range(0, rows, 1024):
        chunk = {n: a[start:start + 1024] for n, a in inputs.items()}
        scores = session.run(None, chunk)[0]  # (B, num_classes)
        correct += int((scores.argmax(axis=1) == labels[start:start + 1024]).sum())
    return correct / rows


def _labels(labels: np.ndarray | None, rows: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (rows,) or labels.dtype.kind not in "iu":
        raise RecalibrationDataError(f"labels must be {rows} integer class ids, got "
                                     f"{labels.dtype} {labels.shape}")
    return labels


def format_outcome(outcome: RecalibrationOutcome, data_name: str, sha256: str,
                   accuracy_before: float | None, accuracy_after: float | None) -> str:
    e, v, rec = outcome.estimate, outcome.verification, outcome.record
    base = (f"version {outcome.requested_version}" if outcome.base_version == outcome.requested_version
            else f"version {outcome.requested_version} (from its base version {outcome.base_version}: "
            "a recalibration always starts from the exported statistics)")
    drift = rec["drift"]
    alarm = f", alarm above {drift['threshold']:.4f}" if drift["threshold"] is not None else ""
    lines = [
        f"recalibrated {outcome.name} {base} on {e.rows} samples of {data_name} (sha256 "
        f"{sha256[:12]}...) with onnxruntime in {e.passes} passes; input statistics "
        f"{e.input_statistics}; prior strength {e.prior_strength:g}",
        "  BatchNorm running statistics, new vs old (drift of these inputs before -> after):",
        *(f"    {layer.name:<22} mean moved {layer.mean_shift:5.2f} old std, std "
          f"x{layer.std_ratio:.2f}   drift {layer.drift_before:.4f} -> {layer.drift_after:.4f}"
          for layer in e.layers),
        f"  drift ({drift['measure']}{alarm}): {e.drift_before:.4f} before -> "
        f"{e.drift_after:.4f} after",
    ]
    if accuracy_before is not None and accuracy_after is not None:
        lines.append(f"  accuracy on the given labels: {accuracy_before:.2%} -> "
                     f"{accuracy_after:.2%} (labels are only used for this line)")
    files = f"{MODEL_FILE}, {REFERENCE_FILE} and {METADATA_FILE}" if rec["refolded"] \
        else f"{MODEL_FILE} (BatchNorm unfolded, as its base) and {METADATA_FILE}"
    parity = ("refolded vs unfolded: max |diff| "
              f"{v.parity_max_abs_diff:.1e} over {v.parity_rows} samples ("
              f"{v.served_batchnorm_nodes} vs {v.reference_batchnorm_nodes} BatchNormalization "
              "nodes)") if v.parity_max_abs_diff is not None else "served graph unfolded: no refold"
    lines += [
        f"published {outcome.name} version {outcome.version} in {outcome.seconds:.1f} s",
        "  onnx.checker:        " + ("passed" if v.checker_passed else "FAILED"),
        f"  {parity}",
        f"  batch independence:  max |diff| {v.batch_independence_max_abs_diff:.1e} over "
        f"{v.batch_independence_rows} rows alone vs batched",
        f"  wrote:               {outcome.path}/: {files}",
        "  serving:             " + serving_note(outcome.path.parent, outcome.version),
    ]
    return "\n".join(lines)


def run_onnxruntime(args: argparse.Namespace) -> int:
    """The handler of ``bnserve recalibrate --engine onnxruntime``."""
    try:
        base = locate_base(args.repository, args.model, args.version)
        initializers = {t.name for t in base.reference.graph.initializer}
        declared = [tensor_signature(v) for v in base.reference.graph.input
                    if v.name not in initializers]
        dtypes = {t.name: BY_NAME[t.datatype].dtype for t in declared}
        data = load_recalibration_file(args.data, [t.name for t in declared], dtypes,
                                       labels_key=args.labels_key)
        rows = len(next(iter(data.inputs.values())))
        labels = _labels(data.labels, rows)
        outcome = recalibrate_version_folder(
            args.repository, args.model, data.inputs, version=args.version,
            prior_strength=args.prior_strength,
            input_statistics=not args.keep_input_statistics,
            source=f"file {args.data.name}", source_sha256=data.sha256,
            chunk_rows=args.batch_size)
    except RecalibrationFailed as exc:
        print(f"bnserve recalibrate: error: {exc}", file=sys.stderr)
        print("bnserve recalibrate: nothing was written to the repository", file=sys.stderr)
        return 1
    before = after = None
    if labels is not None:
        requested = Path(args.repository) / args.model / str(outcome.requested_version)
        before = accuracy(requested / MODEL_FILE, data.inputs, labels)
        after = accuracy(outcome.path / MODEL_FILE, data.inputs, labels)
    print(format_outcome(outcome, args.data.name, data.sha256, before, after))
    return 0
