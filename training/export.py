"""Export a trained run (or any BatchNorm ``nn.Module``) to ONNX, verify it, publish it.

    checkpoint --build, eval()--> InferenceModel: raw x -> (x - mean) / std -> net -> softmax
               --torch.onnx.export (dynamo, opset 18, BatchNorm folded)--> temp model.onnx
               (+ the other variant, unfolded or folded, to show both give the same answers)
               --verify_onnx_export--> fails loudly, nothing published
               [--report: onnxruntime latency of folded, unfolded and no-BN graphs]
               --stage_version--> REPOSITORY/NAME/<version>/{model.onnx, metadata.json}
                  (in model.onnx's metadata_props: the class labels, bnserve.labels,
                   and a text model's tokenizer, bnserve.tokenizer)
               [--include-checkpoint: + checkpoint.pt without data rows, for the torch
                recalibration engine; the run's validation rows never leave the run folder]

Two entry points share that path: ``export_run`` for a zoo run folder, and
``export_module`` for a user's own module::

    from bnserve.training.export import export_module
    net.load_state_dict(torch.load("my_checkpoint.pt"))   # any module with BatchNorm
    result = export_module(net.eval(), x_val[:64], "models", "mine",
                           input_statistics=InputStatistics.from_data(x_train),
                           labels=("cat", "dog"))
    print(format_summary(result))

Token-id models (``text``, ``rnn`` on text) take an INT64 (B, L) input and no
standardization; every other model takes FP32 raw features. The output is always FP32
softmax probabilities (B, num_classes) named ``probabilities``. A token-id model trained on
a dataset with a vocabulary (or given ``tokenizer=``) carries its tokenizer spec in the
graph, its one home: no file beside it can disagree with it, and the card's sha256 covers it.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnserve.proto.tokenizer import TOKENIZER_KEY, Tokenizer
from bnserve.repository.graph import batchnorm_nodes, index_input_bounds
from bnserve.repository.graph_metadata import set_graph_labels, set_graph_tokenizer
from bnserve.repository.layout import (
    METADATA_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
)
from bnserve.repository.publish import (
    check_model_name,
    check_new_version,
    serving_note,
    stage_version,
)
from bnserve.training.card import build_model_card, sha256_of
from bnserve.training.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from bnserve.training.datasets import InputStatistics
from bnserve.training.errors import ExportError, TrainingModeError
from bnserve.training.models import batchnorm_layers, build_model, require_running_statistics
from bnserve.training.verify import VerificationReport, verify_onnx_export

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
OPSET = 18  # the dynamo exporter's native opset; the server's onnxruntime must support it


class InferenceModel(nn.Module):
    """What is served: raw inputs in, class probabilities out, statistics frozen inside.

    With identity statistics (token ids) or none, the input goes to ``net`` unchanged.
    """

    def __init__(self, net: nn.Module, statistics: InputStatistics | None) -> None:
        super().__init__()
        self.net = net
        self.standardize = statistics is not None and not statistics.is_identity
        if statistics is not None and self.standardize:
            self.register_buffer("mean", torch.from_numpy(statistics.mean.copy()))
            self.register_buffer("std", torch.from_numpy(statistics.std.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *sample_shape) raw
        if self.standardize:
            x = (x - self.mean) / self.std
        logits = self.net(x)  # (B, num_classes)
        return torch.softmax(logits, dim=-1)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, optimizer passes, deprecations)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(model: nn.Module, path: Path, sample_shape: tuple[int, ...],
                *, opset: int = OPSET, fold: bool = True,
                input_dtype: torch.dtype = torch.float32) -> None:
    """Export ``model`` in eval mode with a dynamic batch axis to one self-contained file.

    ``fold``: fold each BatchNorm into the Conv/Gemm before it; ``fold=False`` keeps
    BatchNormalization nodes (inference mode). ``input_dtype``: torch.int64 for token ids.
    Puts ``model`` in eval mode (``export_module`` refuses a training-mode module instead).
    Raises ``RunningStatisticsError`` when a BatchNorm layer has nothing to freeze.
    """
    export_onnx_variants(model, {"folded" if fold else "unfolded": Path(path)}, sample_shape,
                         opset=opset, input_dtype=input_dtype)


def export_onnx_variants(model: nn.Module, paths: dict[str, Path], sample_shape: tuple[int, ...],
                         *, opset: int = OPSET,
                         input_dtype: torch.dtype = torch.float32) -> None:
    """Write the ``"folded"`` and/or ``"unfolded"`` graph of ``model`` to ``paths``.

    The dynamo exporter traces once; the trace is optimized twice, with and without the
    rewrite rule that folds BatchNorm into the preceding Conv/Gemm. A module holding an
    ``nn.RNNBase`` (the zoo's ``rnn``) goes through the legacy TorchScript exporter
    instead: it maps nn.GRU/nn.LSTM to one ONNX GRU/LSTM node in ~1 s, where the dynamo
    exporter unrolls the recurrence op by op (~370 nodes, ~10 s per export for 24 steps).
    """
    require_running_statistics(model)
    model.eval()
    # Batch 2: torch.export specializes sizes 0 and 1, which would pin the batch axis.
    example = torch.zeros(2, *sample_shape, dtype=input_dtype)  # (2, *sample_shape)
    try:
        with _quiet_exporter():
            if any(isinstance(m, nn.RNNBase) for m in model.modules()):
                for variant, path in paths.items():
                    _legacy_export(model, example, path, fold=variant == "folded", opset=opset)
            else:
                _dynamo_export(model, example, paths, opset=opset)
    except Exception as exc:  # the exporters raise many types; all mean "no graph"
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    for path in paths.values():
        _strip_node_metadata(path)


def _dynamo_export(model: nn.Module, example: torch.Tensor, paths: dict[str, Path], *,
                   opset: int) -> None:
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    from onnxscript import optimizer

    program = torch.onnx.export(
        model, (example,), None, dynamo=True, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=opset, optimize=False, verbose=False,
    )
    passes.NameFixPass()(program.model)  # the raw trace may reuse a name ("mean") twice
    raw = ir.serde.serialize_model(program.model)
    for variant, path in paths.items():
        graph = ir.serde.deserialize_model(raw)
        if variant == "folded":
            optimizer.optimize(graph)  # what optimize=True runs: BatchNorm folded
        else:
            _optimize_keeping_batchnorm(graph)
        ir.save(graph, str(path))


def _legacy_export(model: nn.Module, example: torch.Tensor, path: Path, *, fold: bool,
                   opset: int) -> None:
    # EVAL runs the eval peephole that folds Conv + BatchNorm; PRESERVE (of an eval-mode
    # model) skips it and writes BatchNormalization nodes in inference mode.
    mode = torch.onnx.TrainingMode.EVAL if fold else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():  # its notes on batch_first GRUs and constant folding
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # nn.GRU's size checks
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, training=mode,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, do_constant_folding=True,
        )


def _optimize_keeping_batchnorm(model: Any) -> None:
    """The exporter's optimize step (constant folding + rewrite rules) minus BatchNorm fusion.

    ``model`` is the exporter's in-memory ``onnx_ir.Model``, changed in place. onnxscript
    exposes no switch for one rule, so this names its private rule list; with torch pinned,
    the names are stable. Without it the unfolded graph would also keep the exporter's raw
    Constant/Reshape chatter and time slower for reasons other than BatchNorm.
    """
    import onnx_ir.passes.common as passes
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter import _fuse_batchnorm

    fusions = set(_fuse_batchnorm.rules.rules)
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if r not in fusions]
    optimizer.fold_constants(model)
    rewriter.rewrite(model, pattern_rewrite_rules=rules)
    for cleanup in (passes.RemoveUnusedNodesPass(),
                    passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                    passes.DeduplicateInitializersPass(),
                    passes.CommonSubexpressionEliminationPass(),
                    passes.NameFixPass()):
        cleanup(model)


def _strip_node_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (FX nodes, source paths and line numbers).

    It would publish this machine's file paths, and make the sha256 of the same weights
    change whenever a line of the model code moves.
    """
    model = onnx.load(str(path))
    for nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in nodes:
            del node.metadata_props[:]
    onnx.save(model, str(path))


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    path: Path  # REPOSITORY/NAME/<version>
    report: VerificationReport
    card: dict[str, Any]  # the content of metadata.json
    seconds: float
    tokenizer: Tokenizer | None = None  # written into model.onnx (bnserve.tokenizer)

    @property
    def latency(self) -> dict[str, Any] | None:
        """onnxruntime latency per variant (``--report``), else None."""
        return self.card.get("latency")


@dataclass(frozen=True)
class _Source:
    """What the shared export path needs, from a run folder or from export_module."""

    model: InferenceModel  # in eval mode
    no_bn_model: nn.Module  # the same architecture without BatchNorm, for latency only
    samples: np.ndarray  # (K, *sample_shape) raw inputs, float32 or int64 tokens
    num_classes: int
    card_args: dict[str, Any]  # build_model_card's description of the model
    checkpoint: Checkpoint | None  # published (without its data rows) when given
    held_out: np.ndarray | None = None  # clean rows never trained on: the drift threshold
    labels: tuple[str, ...] = ()  # class names, written into the graph's metadata too
    tokenizer: Tokenizer | None = None  # text -> token ids, written into the graph's metadata
    vocab_size: int | None = None  # the ids the model takes, when the spec says (zoo runs)


def export_run(run_dir: Path | str, repository: Path | str, name: str,
               version: int | None = None, *, fold: bool = True, report: bool = False,
               latency_runs: int | None = None,
               include_checkpoint: bool = False) -> ExportResult:
    """Export the run's model into ``repository`` as ``name``/``version`` (default: next).

    ``fold=False`` keeps BatchNormalization nodes in the published graph. ``report=True``
    also measures onnxruntime latency of the folded, unfolded and no-BN graphs into the
    card's ``latency``. ``include_checkpoint``: also publish checkpoint.pt, stripped of
    the run's data rows (weights, statistics and figures only), which ``bnserve
    recalibrate --engine torch`` rebuilds the model from; without it the version folder
    holds graphs and the card only. The validation rows that verify the export and
    calibrate the drift threshold are read from the run folder and never published.
    Fails loudly (``ExportError`` or ``RepositoryError``) with nothing written to the
    repository when the model has no running statistics, the export does not verify, or
    the version exists.
    """
    start = time.perf_counter()
    check_model_name(name)
    if version is not None:
        check_new_version(repository, name, version)  # fail before the slow part
    ckpt = load_checkpoint(Path(run_dir))
    if not ckpt.has_rows:
        raise ExportError(f"{Path(run_dir) / CHECKPOINT_FILE} holds no validation rows to "
                          "verify the export with (a published copy, not a run's): export "
                          "from the run folder")
    model = InferenceModel(ckpt.build(), ckpt.statistics).eval()
    no_bn = InferenceModel(build_model(replace(ckpt.spec, norm="none")), ckpt.statistics)
    source = _Source(model=model, no_bn_model=no_bn.eval(), samples=ckpt.samples,
                     num_classes=ckpt.spec.num_classes, card_args={"checkpoint": ckpt},
                     checkpoint=ckpt.without_rows() if include_checkpoint else None,
                     held_out=ckpt.held_out, labels=tuple(ckpt.labels),
                     tokenizer=_checked_tokenizer(ckpt.tokenizer, ckpt.samples),
                     vocab_size=ckpt.spec.vocab_size or None)
    return _publish(source, repository, name, version, fold=fold, report=report,
                    latency_runs=latency_runs, start=start)


def export_module(module: nn.Module, sample_input: torch.Tensor | np.ndarray,
                  repository: Path | str, name: str, *,
                  input_statistics: InputStatistics | None = None,
                  labels: tuple[str, ...] | list[str] | None = None, fold: bool = True,
                  version: int | None = None, report: bool = False,
                  latency_runs: int | None = None, dataset: str | None = None,
                  metrics: dict[str, Any] | None = None,
                  calibration_input: torch.Tensor | np.ndarray | None = None,
                  tokenizer: Tokenizer | None = None) -> ExportResult:
    """Export a user's own ``module`` the way zoo models are: verified, into the repository.

    ``module`` maps a batch (B, *sample_shape) to (B, num_classes) logits; the served
    graph adds softmax, so it answers probabilities. It must be in eval mode (call
    ``module.eval()`` after loading its checkpoint): a module in training mode is refused
    with ``TrainingModeError`` rather than switched silently, since its BatchNorm would
    otherwise have normalized by batch statistics and the caller's module state is theirs.
    A BatchNorm without running statistics is refused with ``RunningStatisticsError``.

    ``sample_input`` (N, *sample_shape): realistic raw inputs (float, or integer token
    ids), used as the export example and for verification (parity at batches 1, 7 and
    64 and batch independence). ``input_statistics``: when given, the graph standardizes
    raw inputs with them before ``module`` (clients send raw features). ``labels``: class
    names (default "0", "1", ...). ``fold``, ``report``: as for ``export_run``.
    ``calibration_input`` (M, *sample_shape): clean raw inputs the module was never trained
    on (a validation split, at least 128 rows); the drift alarm's threshold is calibrated on
    them (without them the server uses its default threshold). ``tokenizer``: for a module
    taking token ids (N, L), how text becomes them (``bnserve.proto.tokenizer``); written
    into the graph, so clients can send text (``bnserve predict --text``).
    """
    start = time.perf_counter()
    check_model_name(name)
    if version is not None:
        check_new_version(repository, name, version)
    training = [n or type(module).__name__ for n, m in module.named_modules() if m.training]
    if training:
        raise TrainingModeError(
            f"{type(module).__name__} is in training mode ({len(training)} submodule(s), e.g. "
            f"{training[0]}): its BatchNorm would use each batch's statistics; call "
            "module.eval() before exporting"
        )
    require_running_statistics(module)
    samples = _as_rows(sample_input)
    tokenizer = _checked_tokenizer(tokenizer, samples)  # before the module runs on them
    held_out = None if calibration_input is None else _as_rows(calibration_input)
    model = InferenceModel(module, input_statistics).eval()
    with torch.no_grad():
        num_classes = int(model(torch.from_numpy(samples[:2])).shape[-1])
    labels = tuple(labels) if labels is not None else tuple(str(i) for i in range(num_classes))
    if len(labels) != num_classes:
        raise ExportError(f"{len(labels)} labels for a module with {num_classes} outputs")
    no_bn = InferenceModel(without_batchnorm(module), input_statistics).eval()
    card_args = {"model": {"kind": f"custom:{type(module).__name__}",
                           "norm": "batch" if batchnorm_layers(module) else "none",
                           "spec": None},
                 "dataset": dataset, "labels": labels, "statistics": input_statistics,
                 "metrics": metrics}
    source = _Source(model=model, no_bn_model=no_bn, samples=samples, num_classes=num_classes,
                     card_args=card_args, checkpoint=None, held_out=held_out,
                     labels=labels, tokenizer=tokenizer)
    return _publish(source, repository, name, version, fold=fold, report=report,
                    latency_runs=latency_runs, start=start)


def _as_rows(data: torch.Tensor | np.ndarray) -> np.ndarray:
    """Inputs as the graph takes them: int64 token ids or float32 features."""
    rows = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data)
    return rows.astype(np.int64 if np.issubdtype(rows.dtype, np.integer) else np.float32)


def without_batchnorm(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every BatchNorm layer replaced by Identity."""
    stripped = copy.deepcopy(module)
    for parent in list(stripped.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, _BatchNorm):
                setattr(parent, child_name, nn.Identity())
    return stripped


def _publish(source: _Source, repository: Path | str, name: str, version: int | None, *,
             fold: bool, report: bool, latency_runs: int | None, start: float) -> ExportResult:
    model, samples = source.model, source.samples
    require_running_statistics(model)
    num_bn = len(batchnorm_layers(model))
    sample_shape = tuple(samples.shape[1:])
    dtype = torch.int64 if samples.dtype == np.int64 else torch.float32
    tokenizer = source.tokenizer  # checked against the samples where the source was built

    with tempfile.TemporaryDirectory(prefix="bnserve-export-") as tmp:
        graphs = {"folded": Path(tmp) / "folded.onnx", "unfolded": Path(tmp) / "unfolded.onnx"}
        export_onnx_variants(model, graphs, sample_shape, input_dtype=dtype)
        onnx_path = graphs["folded" if fold else "unfolded"]
        verification = verify_onnx_export(model, onnx_path, samples)
        verification.raise_for_failures()
        if tokenizer is not None:
            _check_tokenizer_ids(tokenizer, onnx_path, source.vocab_size)
        comparison = _compare_graphs(graphs["folded"], graphs["unfolded"], samples)
        latency = None
        if report:
            from bnserve.training.latency import RUNS, measure_latency

            graphs["no_bn"] = Path(tmp) / "no_bn.onnx"
            export_onnx(source.no_bn_model, graphs["no_bn"], sample_shape, input_dtype=dtype)
            latency = measure_latency(graphs, samples, runs=latency_runs or RUNS)
            latency["no_bn_note"] = ("the same architecture without BatchNorm (--norm none), "
                                     "untrained weights: for timing only")
        with stage_version(repository, name, version) as staged:
            staged_onnx = staged.path / MODEL_FILE
            shutil.copyfile(onnx_path, staged_onnx)
            _write_graph_metadata(staged_onnx, source.labels, tokenizer)  # before the sha256
            reference = _write_reference(staged.path, graphs["unfolded"], fold=fold,
                                         held_out=source.held_out)
            if source.checkpoint is not None:
                # Asked for (--include-checkpoint): the PyTorch weights travel with the
                # version, for `recalibrate --engine torch`; no data row does (the server
                # ignores the file).
                save_checkpoint(source.checkpoint, staged.path / CHECKPOINT_FILE)
            extra = {"latency": latency} if latency is not None else {}
            card = build_model_card(name=name, version=staged.version, onnx_path=staged_onnx,
                                    report=verification, torch_batchnorm_layers=num_bn,
                                    extra=extra, **source.card_args)
            card["batchnorm"].update(fold=fold, **comparison, **reference["batchnorm"])
            if reference["drift"] is not None:
                card["drift"] = reference["drift"]
            _check_signature(card, sample_shape, source.num_classes,
                             "int64" if dtype == torch.int64 else "float32")
            text = json.dumps(card, indent=2) + "\n"
            (staged.path / METADATA_FILE).write_text(text)
            card = json.loads(text)  # exactly what readers of metadata.json get
    seconds = time.perf_counter() - start
    logger.info("exported %s version %d to %s in %.1f s", name, staged.version,
                staged.final_path, seconds)
    return ExportResult(name=name, version=staged.version, path=staged.final_path,
                        report=verification, card=card, seconds=seconds, tokenizer=tokenizer)


def _checked_tokenizer(tokenizer: Tokenizer | None, samples: np.ndarray) -> Tokenizer | None:
    """``tokenizer`` for the exported graph's input, or ``ExportError`` when it cannot be the
    rules of this model's inputs (not token ids, another sequence length)."""
    if tokenizer is None:
        return None
    if samples.dtype != np.int64 or samples.ndim != 2:
        raise ExportError(f"a tokenizer goes with a model taking token ids (N, L); this one "
                          f"takes {samples.dtype} rows of shape {list(samples.shape[1:])}")
    if tokenizer.sequence_length != samples.shape[1]:
        raise ExportError(f"the tokenizer makes rows of {tokenizer.sequence_length} token ids, "
                          f"but the model takes {samples.shape[1]}")
    return tokenizer if tokenizer.input == INPUT_NAME else replace(tokenizer, input=INPUT_NAME)


def _check_tokenizer_ids(tokenizer: Tokenizer, graph: Path, vocab_size: int | None) -> None:
    """``ExportError`` when the tokenizer can make an id the graph's embedding has no row for
    (the server would refuse every text using it)."""
    limits = [rows for rows in (vocab_size, index_input_bounds(onnx.load(str(graph))).get(INPUT_NAME))
              if rows is not None]
    if limits and tokenizer.vocab_size > min(limits):
        raise ExportError(f"the tokenizer's vocabulary has {tokenizer.vocab_size} words, but the "
                          f"model takes token ids below {min(limits)} only")


def _write_graph_metadata(path: Path, labels: tuple[str, ...], tokenizer: Tokenizer | None) -> None:
    """The class labels (``bnserve.labels``) and the tokenizer (``bnserve.tokenizer``) into
    the served graph's metadata_props, so the graph says what it answers and how to feed it
    without its card (``bnserve.repository.graph_metadata``)."""
    if not labels and tokenizer is None:
        return
    model = onnx.load(str(path))
    if labels:
        set_graph_labels(model, labels)
    if tokenizer is not None:
        set_graph_tokenizer(model, tokenizer)
    onnx.save(model, str(path))


def _write_reference(version_dir: Path, unfolded: Path, *, fold: bool,
                     held_out: np.ndarray | None) -> dict[str, Any]:
    """The BatchNorm reference beside the served graph (``bnserve.training.reference``): the
    unfolded graph when the served one is folded (else the served graph is the reference),
    its layer table, and the drift threshold calibrated on the clean held-out rows."""
    from bnserve.training.reference import calibrate_drift, layer_table

    section: dict[str, Any] = {"layers": layer_table(unfolded), "reference_graph": None}
    if fold:
        shutil.copyfile(unfolded, version_dir / REFERENCE_FILE)
        section["reference_graph"] = REFERENCE_FILE
        section["reference_sha256"] = sha256_of(version_dir / REFERENCE_FILE)
    drift = None
    if held_out is not None and section["layers"]:
        drift = calibrate_drift(unfolded, {INPUT_NAME: held_out})
    return {"batchnorm": section, "drift": drift}


def _compare_graphs(folded: Path, unfolded: Path, samples: np.ndarray) -> dict[str, Any]:
    """BatchNormalization nodes in each graph, and how far apart their answers are."""
    import onnxruntime as ort

    answers = []
    for path in (folded, unfolded):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        answers.append(session.run(None, {INPUT_NAME: samples})[0])
    return {
        "folded_onnx_nodes": len(batchnorm_nodes(onnx.load(str(folded)))),
        "unfolded_onnx_nodes": len(batchnorm_nodes(onnx.load(str(unfolded)))),
        "folded_vs_unfolded_max_abs_diff": float(np.max(np.abs(answers[0] - answers[1]))),
        "compared_samples": len(samples),
    }


def _check_signature(card: dict[str, Any], sample_shape: tuple[int, ...],
                     num_classes: int, input_dtype: str = "float32") -> None:
    want_in = {"name": INPUT_NAME, "shape": [-1, *sample_shape], "dtype": input_dtype}
    want_out = {"name": OUTPUT_NAME, "shape": [-1, num_classes], "dtype": "float32"}
    for kind, got, want in (("input", card["inputs"], want_in),
                            ("output", card["outputs"], want_out)):
        if len(got) != 1 or any(got[0][k] != v for k, v in want.items()):
            raise ExportError(f"exported graph has {kind}s {got}, expected one like {want}")


def _drift_line(card: dict[str, Any]) -> str:
    bn, drift = card["batchnorm"], card.get("drift")
    where = (f"reference graph {bn['reference_graph']}" if bn.get("reference_graph")
             else "the served graph is the reference")
    if not bn.get("layers"):
        return "no BatchNorm layer to watch"
    if drift is None:
        return (f"{len(bn['layers'])} layers ({where}); no held-out rows to calibrate a "
                "threshold: the server's default applies")
    calibration = drift["calibration"]
    return (f"{len(bn['layers'])} layers ({where}); alarm above {drift['threshold']:.4f} "
            f"({drift['measure']}, {drift['false_alarm_rate']:.0%} false alarms per window of "
            f"{drift['window_rows']} rows, from {calibration['held_out_rows']} held-out rows)")


def format_summary(result: ExportResult) -> str:
    """A few lines for the terminal: what was verified, what was folded, what was written."""
    r, bn = result.report, result.card["batchnorm"]
    parity = ", ".join(f"{d:.1e} (batch {b})" for b, d in r.parity_max_abs_diff.items())
    lines = [
        f"exported {result.name} version {result.version} in {result.seconds:.1f} s",
        "  onnx.checker:        " + ("passed" if r.checker_passed else "FAILED"),
        f"  parity vs PyTorch:   max |diff| {parity}; limit {r.parity_atol:g}",
        f"  batch independence:  max |diff| {r.batch_independence_max_abs_diff:.1e} "
        f"over 64 rows alone vs batched; limit {r.independence_atol:g}",
        f"  BatchNorm:           {bn['torch_layers']} layers in PyTorch, {bn['onnx_nodes']} "
        f"BatchNormalization nodes left ({bn['folded']} folded), "
        f"{r.training_mode_batchnorm_nodes} in training mode"
        + ("" if bn["fold"] else " (--no-fold)"),
        f"  folded vs unfolded:  max |diff| {bn['folded_vs_unfolded_max_abs_diff']:.1e} over "
        f"{bn['compared_samples']} samples ({bn['folded_onnx_nodes']} vs "
        f"{bn['unfolded_onnx_nodes']} BatchNormalization nodes)",
        "  drift monitor:       " + _drift_line(result.card),
        f"  wrote:               {result.path / MODEL_FILE} "
        f"({result.card['size_bytes'] / 1024:.0f} KiB, sha256 {result.card['sha256'][:12]}...) "
        f"and {METADATA_FILE}",
    ]
    if result.tokenizer is not None:
        t = result.tokenizer
        lines.append(f"  tokenizer:           {t.vocab_size} words, rows of {t.sequence_length} "
                     f"ids (split {t.split}{', lower-cased' if t.lowercase else ''}), in "
                     f"{MODEL_FILE}'s metadata {TOKENIZER_KEY}")
    lines.append("  serving:             " + serving_note(result.path.parent, result.version))
    if result.latency is not None:
        from bnserve.training.latency import format_latency_table

        lines += ["  onnxruntime latency (no_bn: " + result.latency["no_bn_note"] + "):",
                  *("    " + line for line in format_latency_table(result.latency).splitlines())]
    return "\n".join(lines)
