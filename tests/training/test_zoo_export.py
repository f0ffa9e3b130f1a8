"""Every zoo model: --norm none drops its BatchNorm, a dry run exports and fully verifies."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bnserve.repository.graph import batchnorm_nodes
from bnserve.training.checkpoint import load_checkpoint
from bnserve.training.config import DEFAULT_DATASETS, BatchNormOptions, ModelSpec
from bnserve.training.datasets import Dataset, load_dataset
from bnserve.training.export import ExportResult, export_run
from bnserve.training.models import batchnorm_layers, build_model
from bnserve.training.train import TrainResult

ZOO = ("mlp", "cnn", "audio", "text", "rnn")
# BatchNorm layers per model (width 8): mlp 2 blocks; cnn stem + 2 + 3 + head; audio 4 conv
# stages; text 2 conv layers; rnn the one sequence-wise BN on W_x x.
BN_LAYERS = {"mlp": 2, "cnn": 7, "audio": 4, "text": 2, "rnn": 1}


@functools.cache
def dataset_for(kind: str) -> Dataset:
    return load_dataset(DEFAULT_DATASETS[kind])


def spec_for(kind: str, norm: str = "batch") -> ModelSpec:
    ds = dataset_for(kind)
    return ModelSpec(kind=kind, sample_shape=ds.sample_shape, num_classes=ds.num_classes,
                     width=8, norm=norm, vocab_size=ds.vocab_size,
                     batchnorm=BatchNormOptions(eps=1e-3, momentum=0.2, affine=False))


@pytest.mark.parametrize("kind", ZOO)
def test_norm_none_builds_the_same_network_without_batchnorm(kind: str) -> None:
    with_bn, without = build_model(spec_for(kind)), build_model(spec_for(kind, "none"))
    layers = batchnorm_layers(with_bn)
    assert len(layers) == BN_LAYERS[kind] and batchnorm_layers(without) == []
    assert all((bn.eps, bn.momentum, bn.affine) == (1e-3, 0.2, False) for bn in layers)
    # Same layers otherwise: the BatchNorm slots hold Identity, nothing else moves.
    def structure(model: torch.nn.Module) -> list[tuple[str, str]]:
        return [(n, "Identity" if m in layers else type(m).__name__)
                for n, m in model.named_modules()]

    assert structure(with_bn) == structure(without)
    x = torch.from_numpy(dataset_for(kind).x[:3])
    with torch.no_grad():
        assert without.eval()(x).shape == with_bn.eval()(x).shape  # (3, num_classes)


@pytest.mark.parametrize("kind", ZOO)
def test_dry_run_exports_and_verifies(kind: str, zoo) -> None:
    run, result = zoo.runs[kind], zoo.exports[kind]  # dry runs, width 8 (text: its defaults)

    report = result.report
    assert report.ok and report.checker_passed
    assert set(report.parity_max_abs_diff) == {1, 7, 64}
    assert max(report.parity_max_abs_diff.values()) <= 1e-5
    assert report.batch_independence_max_abs_diff is not None
    assert report.batch_independence_max_abs_diff <= 1e-6

    card = result.card
    assert card["model"]["kind"] == kind and card["model"]["norm"] == "batch"
    assert card["dataset"] == DEFAULT_DATASETS[kind] and card["opset"] >= 17
    tokens = kind in ("text", "rnn")  # rnn defaults to the text data
    (signature,) = card["inputs"]
    assert signature["name"] == "input" and signature["shape"][0] == -1
    assert signature["datatype"] == ("INT64" if tokens else "FP32")
    assert (card["input_statistics"] is None) == tokens  # raw features are standardized inside
    assert card["outputs"][0]["name"] == "probabilities"
    bn = card["batchnorm"]
    assert bn["torch_layers"] == BN_LAYERS[kind]
    assert bn["folded"] == BN_LAYERS[kind] - bn["onnx_nodes"]
    assert bn["unfolded_onnx_nodes"] == BN_LAYERS[kind]
    assert bn["folded_vs_unfolded_max_abs_diff"] <= 1e-5

    # The served graph answers raw dataset rows like the checkpoint does.
    ds = dataset_for(kind)
    session = ort.InferenceSession(str(result.path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    probs = session.run(None, {"input": ds.x[:50]})[0]  # (50, num_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    ckpt = load_checkpoint(run)
    assert ckpt.samples.dtype == (np.int64 if tokens else np.float32)


def test_no_fold_keeps_batchnorm_nodes_that_agree_with_folded(trained_run: TrainResult,
                                                               exported: ExportResult,
                                                               tmp_path: Path) -> None:
    unfolded = export_run(trained_run.run_dir, tmp_path / "models", "digits", fold=False)
    nodes = batchnorm_nodes(onnx.load(str(unfolded.path / "model.onnx")))
    assert len(nodes) == 7 and unfolded.card["batchnorm"]["fold"] is False
    assert all(a.i == 0 for n in nodes for a in n.attribute if a.name == "training_mode")
    assert unfolded.report.ok and unfolded.card["batchnorm"]["onnx_nodes"] == 7
    assert exported.card["batchnorm"]["onnx_nodes"] == 0
    x = load_dataset("digits").x[:200]
    answers = [ort.InferenceSession(str(r.path / "model.onnx"), providers=["CPUExecutionProvider"])
               .run(None, {"input": x})[0] for r in (exported, unfolded)]
    assert np.max(np.abs(answers[0] - answers[1])) <= 1e-5


def test_report_measures_folded_unfolded_and_no_bn_latency(zoo, tmp_path: Path) -> None:
    from bnserve.training.export import format_summary

    assert DEFAULT_DATASETS["mlp"] == "wine"
    result = export_run(zoo.runs["mlp"], tmp_path / "models", "wine", report=True,
                        latency_runs=5)
    latency = result.card["latency"]
    assert {"folded", "unfolded", "no_bn"} <= set(latency)
    for variant in ("folded", "unfolded", "no_bn"):
        for setting in ("ort_optimized", "ort_disabled"):
            figures = latency[variant][setting]
            assert set(figures) == {"1", "32"} and all(v > 0 for v in figures.values())
    assert latency["settings"]["runs"] == 5 and latency["settings"]["intra_op_threads"] == 1
    assert "untrained" in latency["no_bn_note"]
    summary = format_summary(result)
    assert "ort_optimized batch 1" in summary and "no_bn" in summary
