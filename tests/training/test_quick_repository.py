"""build_digits_repository: the real exported BN model other packages' tests start from.

The session's ``digits_repository`` fixture is that function's output (with
``include_checkpoint=True``); it is checked here rather than trained a second time."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort

from bnserve.training.datasets import load_dataset


def test_quick_repository_holds_a_working_digits_model(digits_repository: Path) -> None:
    assert sorted(p.name for p in digits_repository.iterdir()) == ["digits"]
    version_dir = digits_repository / "digits" / "1"
    assert sorted(p.name for p in (digits_repository / "digits").iterdir()) == ["1"]
    assert {"model.onnx", "metadata.json", "checkpoint.pt"} <= {p.name for p in version_dir.iterdir()}
    card = json.loads((version_dir / "metadata.json").read_text())
    assert card["batchnorm"]["torch_layers"] == 7 and card["batchnorm"]["onnx_nodes"] == 0
    session = ort.InferenceSession(str(version_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    ds = load_dataset("digits")
    probs = session.run(None, {"input": ds.x})[0]
    assert (probs.argmax(axis=1) == ds.y).mean() >= 0.9
