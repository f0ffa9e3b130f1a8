"""Load one model version, from a folder on disk to a ``ServedModel`` ready for traffic.

    version folder --file_checks: model.onnx and external data are plain files inside it
                   --graph: no BatchNormalization in training mode
                   --model card (metadata.json), if any, well-formed; the labels and the
                     tokenizer in the graph's metadata (bnserve.labels, bnserve.tokenizer),
                     if any, well-formed
                   --onnxruntime session (threads from the model's settings and the usable
                     cores: bnserve.server.cpu_quota)
                   --plan: config.pbtxt checked against the graph (names, datatypes, dims,
                     max_batch_size), labels, input formats, the valid range of each
                     integer input that indexes a table (bnserve.server.input_ranges), the
                     tokenizer against that input (bnserve.server.text_inputs)
                   --batch independence proven on generated inputs (bnserve.server.independence)
                   --warm-up run at the largest batch
                   --drift reference (bnserve.server.drift_reference), if the version has
                     BatchNorm layers: a reference that cannot be built leaves the version
                     served without a monitor, and the drift report says why
                   --> ServedModel (not started), with its sampler, monitor and capture

Synchronous and slow (seconds for a big model): the controller runs it in a worker thread.
Every refusal is a ``ModelLoadError`` with a short reason a client may see; its detail
(paths, onnxruntime's text) goes to the log only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from bnserve.repository.card import CardError, ModelCard, read_card
from bnserve.repository.graph import training_mode_batchnorms
from bnserve.repository.graph_metadata import graph_labels as read_graph_labels
from bnserve.repository.layout import MODEL_FILE, model_name_problem
from bnserve.server.capture import InputCapture
from bnserve.server.cpu_quota import CpuBudget, cpu_budget, plan_threads
from bnserve.server.drift import CALIBRATED, DEFAULT, RECALIBRATED, DriftMonitor, MonitorPolicy
from bnserve.server.drift_reference import build_reference
from bnserve.server.errors import ConfigError, ModelLoadError, quoted
from bnserve.server.file_checks import read_checked_graph
from bnserve.server.independence import PROBE_ROWS, check_batch_independence, probe_inputs
from bnserve.server.input_ranges import input_ranges
from bnserve.server.model import ServedModel, ServingPlan
from bnserve.server.model_config import ModelSettings, TensorConfig
from bnserve.server.repository import VersionOnDisk
from bnserve.server.runtime import OnnxRuntimeSession, SessionTuning, TensorSpec
from bnserve.server.sampling import BatchSampler, Monitoring
from bnserve.server.settings import ServerSettings
from bnserve.server.text_inputs import check_tokenizer, read_tokenizer

log = logging.getLogger(__name__)

WARMUP_ROWS = 64
MAX_LABEL_FILE_BYTES = 4 * 1024 * 1024


def load_version(name: str, entry: VersionOnDisk, settings: ModelSettings,
                 server: ServerSettings, observer: Callable | None = None) -> ServedModel:
    """Load, check and warm up ``name`` version ``entry.version``; ModelLoadError says why not."""
    if entry.problem:
        raise ModelLoadError(entry.problem)
    directory = entry.directory
    graph = read_checked_graph(directory)
    problems = training_mode_batchnorms(graph)
    if problems:
        raise ModelLoadError(f"{problems[0]}: its outputs would depend on the other requests "
                             "in a batch (export the model in eval mode with frozen running "
                             "statistics)")
    try:
        card = read_card(directory)
    except CardError as exc:
        raise ModelLoadError(f"metadata.json is not a valid model card: {exc}") from None
    except OSError as exc:
        raise ModelLoadError("metadata.json cannot be read", f"{directory}: {exc}") from None
    try:
        graph_labels = read_graph_labels(graph)
    except CardError as exc:
        raise ModelLoadError(str(exc)) from None
    tokenizer = read_tokenizer(graph)
    tuning = session_tuning(settings, process_cpu_budget())
    log.info("model %r version %d: %d instance(s), %d intra-op thread(s) each, inter-op %d, "
             "%s execution, graph optimization %s, spinning intra %s / inter %s",
             name, entry.version, settings.instance_count, tuning.intra_op_threads,
             tuning.inter_op_threads, tuning.execution_mode, tuning.graph_optimization_level,
             _on(tuning.intra_op_spinning), _on(tuning.inter_op_spinning))
    session = OnnxRuntimeSession(directory / MODEL_FILE, device=server.device, tuning=tuning)
    plan = resolve_plan(session.inputs, session.outputs, settings, server, card,
                        directory.parent, name, graph_labels=graph_labels)
    plan = replace(plan, value_ranges=input_ranges(plan.inputs, graph, card))
    if tokenizer is not None:
        check_tokenizer(tokenizer, plan.inputs, plan.value_ranges)
        plan = replace(plan, tokenizer=tokenizer)
    plan = _prove_batch_independence(name, entry.version, session, plan, settings, card)
    _warm_up(session, plan, card)
    monitoring = build_monitoring(f"{name}/{entry.version}", directory, card, graph, session,
                                  plan, server)
    del graph  # the weights are onnxruntime's to hold from here
    model = ServedModel(name, entry.version, directory, session, plan, settings, card=card,
                        fingerprint=entry.fingerprint, observer=observer,
                        monitoring=monitoring)
    if settings.unhonoured:
        log.warning("model %r version %d: %s field(s) bnserve does not honour (ignored): %s",
                    name, entry.version, settings.source, ", ".join(settings.unhonoured))
    return model


@functools.cache
def process_cpu_budget() -> CpuBudget:
    """The usable cores, read once per process and logged once."""
    budget = cpu_budget()
    log.info("onnxruntime threads are sized for %s", budget.describe())
    return budget


def session_tuning(settings: ModelSettings, budget: CpuBudget) -> SessionTuning:
    """One instance's onnxruntime options: the model's settings, auto values filled for the
    usable cores (``plan_threads``)."""
    parallel = settings.execution_mode == "parallel"
    plan = plan_threads(budget.cores, settings.instance_count,
                        intra_op_threads=settings.intra_op_threads,
                        inter_op_threads=settings.inter_op_threads, parallel=parallel)
    return SessionTuning(
        intra_op_threads=plan.intra_op_threads,
        inter_op_threads=plan.inter_op_threads,
        graph_optimization_level=settings.graph_optimization_level,
        execution_mode=settings.execution_mode,
        intra_op_spinning=(plan.allow_spinning if settings.intra_op_spinning is None
                           else settings.intra_op_spinning),
        inter_op_spinning=(plan.allow_spinning if settings.inter_op_spinning is None
                           else settings.inter_op_spinning),
    )


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def build_monitoring(label: str, directory: Path, card: ModelCard | None,
                     graph: onnx.ModelProto, session: OnnxRuntimeSession, plan: ServingPlan,
                     server: ServerSettings) -> Monitoring:
    """The version's sampler, drift monitor and input capture, as the settings ask."""
    if server.drift_sample_rate == 0:
        return Monitoring(drift_problem="the drift monitor is off on this server "
                          "(--drift-sample-rate 0)")
    rows = min(PROBE_ROWS, plan.max_batch_size) if plan.max_batch_size > 0 else None
    probe = {n: np.ascontiguousarray(a) for n, a in
             probe_inputs(plan.inputs, rows, card, seed=2).items()}
    try:
        answers = session.run(probe)
    except Exception as exc:  # noqa: BLE001 - the model already ran such inputs; be safe
        log.warning("%s: serving without a drift monitor: generated inputs failed: %s",
                    label, exc)
        answers = None
    reference = "generated inputs could not run (see the server log)" if answers is None \
        else build_reference(directory, card, graph, plan.inputs, probe, answers)
    monitor, problem = None, ""
    if isinstance(reference, str):
        problem = reference
    else:
        calibrated = card.drift if card is not None else None
        policy = MonitorPolicy(
            window_rows=calibrated.window_rows if calibrated else server.drift_window_rows,
            threshold=calibrated.threshold if calibrated else server.drift_threshold,
            threshold_source=(DEFAULT if not calibrated
                              else RECALIBRATED if card.base_version is not None else CALIBRATED),
            sample_rate=server.drift_sample_rate, probe_budget=server.drift_probe_budget,
            history_points=server.drift_history_points,
            history_interval_s=server.drift_history_interval_s)
        try:
            monitor = DriftMonitor(reference, policy, label=label)
        except ValueError as exc:  # a window too large for its memory cap
            problem = str(exc)
            log.warning("%s: serving without a drift monitor: %s", label, problem)
    capture = None
    if server.capture_rows and plan.max_batch_size > 0:
        capture = InputCapture(server.capture_rows)
    if monitor is None and capture is None:
        return Monitoring(drift_problem=problem)
    sampler = BatchSampler(server.drift_sample_rate, server.drift_rows_per_sample,
                           monitor=monitor, capture=capture, batched=plan.max_batch_size > 0)
    return Monitoring(sampler, drift_problem=problem)


def resolve_plan(graph_inputs: list[TensorSpec], graph_outputs: list[TensorSpec],
                 settings: ModelSettings, server: ServerSettings, card: ModelCard | None,
                 model_dir: Path, name: str, *, graph_labels: tuple[str, ...] = ()
                 ) -> ServingPlan:
    """How the version is served: the graph's tensors, specialised and checked by the config.
    ``graph_labels``: the class labels in the graph's metadata (``bnserve.labels``)."""
    where = settings.source
    free_batch = [s for s in graph_inputs + graph_outputs if s.shape[:1] != (-1,)]
    if settings.max_batch_size is None:  # not configured: batch when the graph allows it
        max_batch = 0 if free_batch else server.max_batch_size
    else:
        max_batch = settings.max_batch_size
        if max_batch > 0 and free_batch:
            spec = free_batch[0]
            raise ConfigError(f"{where}: max_batch_size is {max_batch}, but {quoted(spec.name)} has "
                              f"shape {list(spec.shape)[:8]} with no free first (batch) "
                              "dimension; use max_batch_size: 0")
    batching = (max_batch > 1 if settings.dynamic_batching is None
                else settings.dynamic_batching and max_batch > 0)
    inputs = _apply(graph_inputs, settings.inputs, "input", max_batch, where, require_all=True)
    outputs = _apply(graph_outputs, settings.outputs, "output", max_batch, where,
                     require_all=False)
    formats = {t.name: t.format for t in settings.inputs if t.format != "FORMAT_NONE"}
    if not settings.inputs and card and card.extra.get("model", {}).get("kind") == "cnn":
        # bnserve's image models take (N, C, H, W): say so, as Triton's image clients expect.
        formats = {s.name: "FORMAT_NCHW" for s in inputs if len(s.shape) == 4}
    labels = _labels(outputs, settings.outputs, card, graph_labels, model_dir, max_batch)
    return ServingPlan(tuple(inputs), tuple(outputs), max_batch, batching, formats, labels)


def _apply(graph: list[TensorSpec], declared: tuple[TensorConfig, ...], kind: str,
           max_batch: int, where: str, *, require_all: bool) -> list[TensorSpec]:
    by_name = {s.name: s for s in graph}
    for config in declared:
        if config.name not in by_name:
            known = ", ".join(quoted(n) for n in list(by_name)[:10])
            raise ConfigError(f"{where}: {kind} {quoted(config.name)} is not an {kind} of the graph "
                              f"(it has {known})")
    if declared and require_all:
        listed = {c.name for c in declared}
        absent = [n for n in by_name if n not in listed]
        if absent:
            raise ConfigError(f"{where}: the graph's {kind} {quoted(absent[0])} is not listed")
    configs = {c.name: c for c in declared}
    resolved = []
    for spec in graph:
        config = configs.get(spec.name)
        if config is None:
            resolved.append(spec)
            continue
        if config.datatype is not None and config.datatype != spec.datatype:
            raise ConfigError(f"{where}: {kind} {quoted(spec.name)} is declared {config.datatype}, "
                              f"but the graph's is {spec.datatype}")
        graph_dims = spec.shape[1:] if max_batch > 0 else spec.shape
        if config.dims is None:
            resolved.append(spec)
            continue
        if len(config.dims) != len(graph_dims) or any(
            c != -1 and g != -1 and c != g for c, g in zip(config.dims, graph_dims, strict=False)
        ):
            convention = " (without the batch dimension)" if max_batch > 0 else ""
            raise ConfigError(f"{where}: {kind} {quoted(spec.name)} has dims {list(config.dims)}, "
                              f"but the graph's are {list(graph_dims)}{convention}")
        # A config may fix a dimension the graph leaves free; requests must then match it.
        dims = tuple(g if c == -1 else c for c, g in zip(config.dims, graph_dims, strict=True))
        resolved.append(TensorSpec(spec.name, spec.datatype,
                                   ((-1,) + dims) if max_batch > 0 else dims))
    return resolved


def _labels(outputs: list[TensorSpec], declared: tuple[TensorConfig, ...],
            card: ModelCard | None, graph_labels: tuple[str, ...], model_dir: Path,
            max_batch: int) -> dict[str, tuple[str, ...]]:
    """Output -> class labels: the config's label_filename, else the card's labels, else
    the graph's own (its metadata), for an output with one axis of that many classes."""
    labels = {}
    files = {c.name: c.label_filename for c in declared if c.label_filename}
    found = card.labels if card and card.labels else graph_labels
    for spec in outputs:
        if spec.name in files:
            labels[spec.name] = _read_labels(model_dir, files[spec.name])
        elif found:
            classes = spec.shape[1:] if max_batch > 0 else spec.shape
            if len(classes) == 1 and classes[0] == len(found):
                labels[spec.name] = found
    return labels


def _read_labels(model_dir: Path, filename: str) -> tuple[str, ...]:
    problem = model_name_problem(filename)  # one plain file name in the model folder
    if problem:
        raise ConfigError(f"label_filename {quoted(filename)} {problem}; it names a file in the "
                          "model folder")
    path = model_dir / filename
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"label_filename {quoted(filename)} is not a regular file in the model "
                          "folder")
    if path.stat().st_size > MAX_LABEL_FILE_BYTES:
        raise ConfigError(f"label_filename {quoted(filename)} is over "
                          f"{MAX_LABEL_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return tuple(path.read_text("utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"label_filename {quoted(filename)} is not readable UTF-8 text",
                          f"{path}: {exc}") from None


def _prove_batch_independence(name: str, version: int, session: OnnxRuntimeSession,
                              plan: ServingPlan, settings: ModelSettings,
                              card: ModelCard | None) -> ServingPlan:
    rows = min(PROBE_ROWS, plan.max_batch_size) if plan.max_batch_size > 0 else None
    feeds = probe_inputs(plan.inputs, rows, card)
    try:
        result = check_batch_independence(session.run, feeds, batched=rows is not None)
    except Exception as exc:  # onnxruntime's own errors: the detail is for the log only
        raise ModelLoadError("the batch-independence check could not run the model on generated "
                             "inputs (see the server log)",
                             f"model {name!r} version {version}: {exc}") from exc
    plan = replace(plan, independence=result)
    if result.independent:
        return plan
    if settings.batch_dependent == "serve_unbatched":
        log.warning("model %r version %d failed the batch-independence check (%s); serving it "
                    "without merging requests, as its config asks (batch_dependent: "
                    "serve_unbatched)", name, version, result.reason)
        return replace(plan, batching=False)
    raise ModelLoadError(f"failed the batch-independence check: {result.reason}")


def _warm_up(session: OnnxRuntimeSession, plan: ServingPlan, card: ModelCard | None) -> None:
    """One run at the largest batch, so the first request does not pay for memory set-up."""
    rows = min(plan.max_batch_size, WARMUP_ROWS) if plan.max_batch_size > 0 else None
    if rows is None or rows <= PROBE_ROWS:
        return  # the independence check already ran this size
    feeds = probe_inputs(plan.inputs, rows, card, seed=1)
    session.run({n: np.ascontiguousarray(a) for n, a in feeds.items()})
