"""build_digits_repository: the real exported BN model other packages' tests start from."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort

from bnserve.training.datasets import load_dataset
from bnserve.training.quick import build_digits_repository


def test_quick_repository_holds_a_working_digits_model(tmp_path: Path) -> None:
    version_dir = build_digits_repository(tmp_path / "models")
    assert version_dir == tmp_path / "models" / "digits" / "1"
    card = json.loads((version_dir / "metadata.json").read_text())
    assert card["batchnorm"]["torch_layers"] == 7 and card["batchnorm"]["onnx_nodes"] == 0
    session = ort.InferenceSession(str(version_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    ds = load_dataset("digits")
    probs = session.run(None, {"input": ds.x})[0]
    assert (probs.argmax(axis=1) == ds.y).mean() >= 0.9
